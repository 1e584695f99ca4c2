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
# info is free-form but for the keys rlrf reads back, whose types the reader checks.
free_keys = text.filter(lambda k: k != "teacher_context")
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
    st.dictionaries(free_keys, json_value, max_size=3),
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
    st.dictionaries(free_keys, json_value, max_size=3),
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


# ---- untrusted files (issue 26): anything wrong is a TrajectoryFormatError naming file:line --


def _record(**changes):
    """A valid trajectory record as a dict, with ``changes`` applied at dotted paths."""
    d = {"schema_version": SCHEMA_VERSION, "type": "trajectory", **_traj().to_dict()}
    d["info"]["teacher_context"] = [{"role": "user", "content": "q"}]
    d["error"] = {"method": "step", "turn": 1, "error_type": "EnvError", "message": "m"}
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = d
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return d


_RAW = "@@RAW@@"
BAD_LINES = {
    # name: (the bad line, what the error must say after "t.jsonl:2: ")
    "a list": ("[1, 2]", "not an rlrf trajectory record"),
    "a 400-digit reward": (
        json.dumps(_record(**{"turns.0.reward": _RAW})).replace(f'"{_RAW}"', "9" * 400),
        "field turns[0].reward must be a finite number or null, got an integer of 1329 bits",
    ),
    "a 5000-digit integer": (
        json.dumps(_record(**{"seed": _RAW})).replace(f'"{_RAW}"', "9" * 5000),
        "not valid JSON (Exceeds the limit",
    ),
    "deep nesting": (
        json.dumps(_record(**{"info.x": _RAW})).replace(f'"{_RAW}"', "[" * 5000 + "]" * 5000),
        "nested 5002 levels deep",
    ),
    "teacher_context=[5]": (
        json.dumps(_record(**{"info.teacher_context": [5]})),
        "field info.teacher_context[0] must be a message object, got 5",
    ),
    "a string turn index": (
        json.dumps(_record(**{"error.turn": "1"})),
        "field error.turn must be an integer >= 0, got '1'",
    ),
    "an integer response": (
        json.dumps(_record(**{"turns.0.response": 5})),
        "field turns[0].response must be a string, got 5",
    ),
    "a missing reward key": (
        json.dumps(_record()).replace('"reward": 1.0, ', ""),
        "field turns[0].reward is missing",
    ),
    "a bool token id": (
        json.dumps(_record(**{"turns.0.response_token_ids": [1, True]})),
        "field turns[0].response_token_ids[1] must be a token id >= 0, got True",
    ),
    "a feedback detail of the wrong type": (
        json.dumps(
            _record(
                **{
                    "turns.0.feedback": [
                        {"kind": "runtime_error", "text": "t", "details": {
                            "type": "error", "error_type": "E", "message": "m", "line": "7",
                        }},
                    ]
                }
            )
        ),
        "field turns[0].feedback[0].details.line must be int or None, got '7'",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BAD_LINES))
def test_bad_content_is_an_error_naming_the_file_and_line(tmp_path, name):
    line, message = BAD_LINES[name]
    good = json.dumps(_record())
    path = tmp_path / "t.jsonl"
    path.write_text(f"{good}\n{line}\n{good}\n")
    with pytest.raises(TrajectoryFormatError) as caught:
        list(read_trajectories(path))
    assert str(caught.value).startswith(f"{path}:2: {message}"), str(caught.value)


# Raw JSON texts put in place of one value of a valid record.
HOSTILE_JSON = [
    "9" * 400, "-" + "9" * 5000, "1e999", "NaN", "-Infinity", "[" * 3000 + "]" * 3000,
    "[5]", "{}", '{"role": 5}', "true", "null", "-1", '"x"', '"\\ud800"', "0.5", "[[]]",
]  # fmt: skip


def _paths(node, at=()):
    """Every path (a tuple of keys and indices) to a value inside ``node``."""
    yield at
    if isinstance(node, (dict, list)):
        for k, v in node.items() if isinstance(node, dict) else enumerate(node):
            yield from _paths(v, (*at, k))


def _check_typed(record):
    """What the reader returns has the types the format promises."""
    trajectories = record.trajectories if isinstance(record, Group) else [record]
    for t in trajectories:
        assert isinstance(t.env_id, str) and isinstance(t.task_id, str)
        assert all(isinstance(m["role"], str) and isinstance(m["content"], str) for m in t.prompt)
        assert t.seed is None or isinstance(t.seed, int)
        assert isinstance(t.success, bool) and isinstance(t.policy_version, int)
        assert t.reward is None or isinstance(t.reward, float)
        ctx = t.info.get("teacher_context")
        assert ctx is None or isinstance(ctx, str) or all(isinstance(m, dict) for m in ctx)
        for turn in t.turns:
            assert isinstance(turn.response, str)
            assert all(isinstance(i, int) for i in turn.response_token_ids or ())
            assert all(isinstance(f, Feedback) for f in turn.feedback)


@settings(max_examples=300, deadline=None)
@given(
    base=groups | trajectories,
    where=st.integers(0, 10**6),
    raw=st.sampled_from(HOSTILE_JSON) | st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    raw_line=st.booleans(),
)
def test_fuzz_the_reader_never_raises_anything_but_a_format_error(
    tmp_path_factory, base, where, raw, raw_line
):
    # A valid record with one value replaced by something hostile, or a whole hostile line.
    d = {"schema_version": SCHEMA_VERSION, "type": "group", **base.to_dict()}
    if isinstance(base, Trajectory):
        d["type"] = "trajectory"
    if raw_line:
        line = raw.encode("utf-8", "surrogateescape")
    else:
        paths = list(_paths(d))[1:]
        node = d
        *parents, last = paths[where % len(paths)]
        for p in parents:
            node = node[p]
        node[last] = _RAW
        line = (
            json.dumps(d, ensure_ascii=False).replace(f'"{_RAW}"', raw).encode("utf-8", "replace")
        )
    path = tmp_path_factory.mktemp("fuzz") / "t.jsonl"
    path.write_bytes(line.replace(b"\n", b" ") + b"\n")
    try:
        records = list(read_trajectories(path))
    except TrajectoryFormatError as e:
        assert str(e).startswith(f"{path}:1: "), str(e)
        return
    for record in records:
        _check_typed(record)
