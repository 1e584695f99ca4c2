import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlrf import (
    Feedback,
    FeedbackKind,
    Group,
    TestCaseDetails,
    Trajectory,
    TrajectoryWriter,
    Turn,
    read_trajectories,
)
from rlrf.errors import TrajectoryFormatError
from rlrf.trajectory import SCHEMA_VERSION, TruncatedFileWarning

text = st.text(max_size=30)
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_value = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3),
    max_leaves=8,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": text}
    ),
    max_size=3,
)
feedbacks = st.builds(
    Feedback,
    st.sampled_from(list(FeedbackKind)),
    text,
    st.none() | st.builds(TestCaseDetails, text, st.none() | text, st.none() | text),
    text,
)
turns = st.builds(
    Turn,
    text,
    st.none() | st.floats(allow_nan=False, allow_infinity=False),
    st.lists(feedbacks, max_size=2).map(tuple),
    st.none() | st.lists(st.integers(0, 50000), max_size=8).map(tuple),
    st.none()
    | st.lists(st.floats(max_value=0, allow_nan=False, allow_infinity=False), max_size=8).map(
        tuple
    ),
    messages.map(tuple),
    st.dictionaries(text, json_value, max_size=3),
)
trajectories = st.builds(
    Trajectory,
    text,
    text,
    messages.map(tuple),
    st.lists(turns, min_size=0, max_size=3),
    st.none() | st.integers(0, 2**31),
    st.booleans(),
    st.integers(0, 10**6),
    st.dictionaries(text, st.floats(0, 100), max_size=2),
    st.dictionaries(text, json_value, max_size=3),
)
groups = st.builds(Group, text, text, st.lists(trajectories, max_size=3))


@settings(max_examples=60, deadline=None)
@given(st.lists(groups | trajectories, max_size=4))
def test_round_trip_is_exact(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("traj") / "t.jsonl"
    with TrajectoryWriter(path) as w:
        for r in records:
            w.write(r)
    assert list(read_trajectories(path)) == records


def _traj(i=0):
    return Trajectory(
        "e", f"task{i}", ({"role": "user", "content": "q"},), [Turn("a", 1.0)], success=True
    )


def test_properties():
    t = Trajectory("e", "x", (), [Turn("a", 1.0, (Feedback("other", "f1"),)), Turn("b", 0.5)])
    assert t.reward == 1.5 and t.response == "b" and [f.text for f in t.feedback] == ["f1"]
    t.turns.append(Turn("c", None))
    assert t.reward is None
    assert Group("e", "x", [t, _traj()]).rewards == [None, 1.0]


def test_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "t.jsonl"
    record = {"schema_version": SCHEMA_VERSION + 1, "type": "trajectory", **_traj().to_dict()}
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(
        TrajectoryFormatError,
        match=r"t.jsonl:1: written with trajectory schema version 2.*upgrade rlrf",
    ):
        list(read_trajectories(path))


def test_truncated_last_line_warns_and_keeps_complete_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path) as w:
        w.write(_traj(0))
        w.write(_traj(1))
    full = path.read_text()
    path.write_text(full + full.splitlines()[0][:37])  # a crash in the middle of the third write
    with pytest.warns(TruncatedFileWarning, match="last line is incomplete.*kept the 2 line"):
        records = list(read_trajectories(path))
    assert [r.task_id for r in records] == ["task0", "task1"]


def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(
        json.dumps({"schema_version": 1, "type": "trajectory", **_traj().to_dict()}) + "\n{oops\n"
    )
    with pytest.raises(TrajectoryFormatError, match=r"t.jsonl:2: not valid JSON"):
        list(read_trajectories(path))


def test_unserializable_info_is_a_clear_error(tmp_path):
    t = _traj()
    t.info["tensor"] = object()
    with (
        TrajectoryWriter(tmp_path / "t.jsonl") as w,
        pytest.raises(TrajectoryFormatError, match="task 'task0'.*JSON-native"),
    ):
        w.write(t)


def test_writer_streams_and_appends(tmp_path):
    path = tmp_path / "t.jsonl"
    w = TrajectoryWriter(path)
    w.write(_traj(0))
    assert len(path.read_text().splitlines()) == 1  # flushed before close
    w.close()
    with TrajectoryWriter(path, append=True) as w2:
        w2.write(_traj(1))
    assert [r.task_id for r in read_trajectories(path)] == ["task0", "task1"]


def test_a_utf8_character_torn_at_the_end_is_a_truncated_line_not_an_error(tmp_path):
    path = tmp_path / "t.jsonl"
    t = _traj(0)
    t.info["note"] = "é日本"
    with TrajectoryWriter(path) as w:
        w.write(t)
        w.write(_traj(1))
    full = path.read_bytes()
    first_end = full.index(b"\n") + 1
    torn = full[: full.index("日".encode()) + 1]  # inside the 3-byte character
    # every cut of the first line's multi-byte characters, after one complete line
    for cut in range(len(torn) - 4, len(torn) + 4):
        path.write_bytes(full[first_end:] + full[:cut])
        with pytest.warns(TruncatedFileWarning, match=r"t.jsonl:2: last line is incomplete"):
            assert [r.task_id for r in read_trajectories(path)] == ["task1"]


def test_invalid_utf8_in_a_middle_line_names_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path) as w:
        w.write(_traj(0))
    line = path.read_bytes()
    path.write_bytes(line + line.replace(b"task0", b"task\xff") + line)
    with pytest.raises(TrajectoryFormatError, match=r"t.jsonl:2: not valid UTF-8"):
        list(read_trajectories(path))


def test_appending_removes_a_torn_last_line_first(tmp_path):
    path = tmp_path / "t.jsonl"
    t = _traj(0)
    t.info["note"] = "日本"
    with TrajectoryWriter(path) as w:
        w.write(t)
    full = path.read_bytes()
    path.write_bytes(full + full[: full.index("本".encode()) + 2])  # killed mid-character
    with pytest.warns(TruncatedFileWarning, match=r"removed its \d+ byte"):
        with TrajectoryWriter(path, append=True) as w:
            w.write(_traj(1))
    assert [r.task_id for r in read_trajectories(path)] == ["task0", "task1"]
