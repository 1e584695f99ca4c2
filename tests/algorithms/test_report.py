import json
import re
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from algorithms.commands.report import main
from algorithms.report import _examples, _stability, load_run, write_report
from rlrf import Feedback, FeedbackKind, Group, Trajectory, TrajectoryWriter, Turn
from rlrf.errors import RLRFError


def _run(tmp_path, name, accs):
    run = tmp_path / name
    run.mkdir()
    lines = []
    for step, acc in enumerate(accs):
        lines.append(
            {
                "step": step,
                "generations": 8 * step,
                "eval/accuracy": acc,
                "rollout/reward_mean": acc / 2,
                "rollout/response_tokens_mean": 40 - step,
                "train/divergence": 0.5 / (step + 1),
            }
        )
    (run / "metrics.jsonl").write_text(
        "\n".join(json.dumps(x) for x in lines) + '\n{"step": 9, "gen'
    )
    (run / "config.yaml").write_text(
        f"algorithm: {name}\nenv: rlrf/Arithmetic-v0\nsteps: {len(accs)}\n"
    )
    t = Trajectory(
        "rlrf/Arithmetic-v0",
        "train-1",
        ({"role": "user", "content": "What is 2 + 3?"},),
        [Turn("7", 0.0, (Feedback(FeedbackKind.WRONG_ANSWER, "Your answer 7 is too high."),))],
        info={
            "teacher_context": [{"role": "user", "content": "What is 2 + 3?\n\nFeedback: too high"}]
        },
    )
    with TrajectoryWriter(run / "trajectories.jsonl") as w:
        w.write(Group(t.env_id, t.task_id, [t]))
    return run


def test_single_run_report(tmp_path):
    run = _run(tmp_path, "sdpo", [0.1, 0.2, 0.3])
    report = write_report([run])
    assert report == run / "report" / "report.md"
    text = report.read_text()
    assert "| sdpo | 16 | 0.100 → 0.300 | 0.050 → 0.150 |" in text
    for png in ("accuracy.png", "reward.png", "response_length.png", "divergence.png"):
        data = (run / "report" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and f"![{png}]({png})" in text
    assert "Your answer 7 is too high." in text and "Feedback: too high" in text


def test_overlay_needs_out_and_writes_both(tmp_path, capsys):
    a, b = _run(tmp_path, "grpo", [0.1, 0.1]), _run(tmp_path, "sdpo", [0.1, 0.4])
    with pytest.raises(RLRFError, match="needs --output-dir"):
        write_report([a, b])
    assert main([str(a), str(b), "--output-dir", str(tmp_path / "cmp")]) == 0
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert "| grpo |" in text and "| sdpo |" in text


def test_not_a_run_folder(tmp_path):
    with pytest.raises(RLRFError, match="is not a run folder: metrics.jsonl is missing"):
        write_report([tmp_path])


def test_a_multi_turn_example_shows_each_turn_with_its_own_feedback_and_context(tmp_path):
    run = _run(tmp_path, "sdpo", [0.1, 0.2])
    prompt = ({"role": "user", "content": "Guess the number."},)

    def ctx(text):
        return [{"role": "user", "content": text}]

    turns = [
        Turn("5", 0.0, (Feedback(FeedbackKind.WRONG_ANSWER, "too low (turn 1)"),),
             info={"teacher_context": ctx("context of turn 1")}),
        Turn("9", 0.0, (Feedback(FeedbackKind.WRONG_ANSWER, "too high (turn 2)"),),
             info={"teacher_context": ctx("context of turn 2")}),
        Turn("7", 1.0, (), info={"teacher_context": None}),
    ]  # fmt: skip
    t = Trajectory("rlrf/Guess-v0", "g-3", prompt, turns, policy_version=1,
                   info={"teacher_context": ctx("context of turn 1")})  # fmt: skip
    (run / "trajectories.jsonl").unlink()
    with TrajectoryWriter(run / "trajectories.jsonl") as w:
        w.write(Group(t.env_id, t.task_id, [t]))
    text = write_report([run]).read_text()
    example = text.split("example rollouts with feedback")[1]
    # the trajectory was sampled after 1 update and fed metrics.jsonl's step 2
    assert "**Task g-3** (step 2, reward 1.0, 3 turns)" in example
    blocks = [example.index(f"Turn {k}") for k in (1, 2, 3)]
    turn1, turn2, turn3 = (example[a:b] for a, b in zip(blocks, [*blocks[1:], None], strict=True))
    for turn, mine, others in [
        (turn1, ("5", "too low (turn 1)", "context of turn 1"), ("too high", "context of turn 2")),
        (turn2, ("9", "too high (turn 2)", "context of turn 2"), ("too low", "context of turn 1")),
    ]:
        assert all(m in turn for m in mine) and not any(o in turn for o in others), turn
    assert "```text\n7\n```" in turn3 and "Feedback: none" in turn3
    assert "Teacher context: none" in turn3 and "too" not in turn3


# --- a run folder from someone else: read as untrusted ------------------------------------


def _line(path, n, edit):
    """Replace line ``n`` (1-based) of ``path`` by ``edit(line)`` (bytes)."""
    lines = path.read_bytes().split(b"\n")
    lines[n - 1] = edit(lines[n - 1])
    path.write_bytes(b"\n".join(lines))


def _traj(edit):
    """Edit the first trajectory of the first group record (as JSON)."""

    def apply(raw):
        record = json.loads(raw)
        edit(record["trajectories"][0])
        return json.dumps(record).encode()

    return apply


DEEP = b"[" * 5000 + b"]" * 5000
CRAFTED = {  # what a collaborator's folder may hold: (file, line named, how it is made)
    "metrics line is a list": ("metrics.jsonl", 2, lambda r: _line(r / "metrics.jsonl", 2, lambda _: b"[1, 2]")),
    "metrics 400-digit integer": ("metrics.jsonl", 2, lambda r: _line(r / "metrics.jsonl", 2, lambda _: b'{"step": 1, "eval/accuracy": 1' + b"0" * 400 + b"}")),
    "metrics 5000-digit integer": ("metrics.jsonl", 1, lambda r: _line(r / "metrics.jsonl", 1, lambda _: b'{"step": ' + b"9" * 5000 + b"}")),
    "metrics invalid UTF-8": ("metrics.jsonl", 2, lambda r: _line(r / "metrics.jsonl", 2, lambda _: b'{"step": 1, "x": "\xff\xfe"}')),
    "metrics deep nesting": ("metrics.jsonl", 3, lambda r: _line(r / "metrics.jsonl", 3, lambda _: b'{"step": 1, "x": ' + DEEP + b"}")),
    "metrics nesting past MAX_DEPTH": ("metrics.jsonl", 1, lambda r: _line(r / "metrics.jsonl", 1, lambda _: b'{"x": ' + b"[" * 200 + b"]" * 200 + b"}")),
    "metrics bad JSON mid-file": ("metrics.jsonl", 2, lambda r: _line(r / "metrics.jsonl", 2, lambda _: b'{"step": 1,')),
    "config !!python tag": ("config.yaml", 2, lambda r: (r / "config.yaml").write_text("algorithm: x\nenv: !!python/object/apply:os.system ['touch " + str(r / "ran") + "']\n")),
    "config is a list": ("config.yaml", 1, lambda r: (r / "config.yaml").write_text("- algorithm\n- grpo\n")),
    "config invalid UTF-8": ("config.yaml", 2, lambda r: (r / "config.yaml").write_bytes(b"algorithm: x\nenv: \xff\n")),
    "config 5000-digit integer": ("config.yaml", None, lambda r: (r / "config.yaml").write_text("steps: " + "9" * 5000 + "\n")),
    "config deep nesting": ("config.yaml", None, lambda r: (r / "config.yaml").write_bytes(b"env: " + DEEP + b"\n")),
    "teacher_context=[5]": ("trajectories.jsonl", 1, lambda r: _line(r / "trajectories.jsonl", 1, _traj(lambda t: t["info"].update(teacher_context=[5])))),
    "a string turn": ("trajectories.jsonl", 1, lambda r: _line(r / "trajectories.jsonl", 1, _traj(lambda t: t.update(turns=["0"])))),
    "an integer response": ("trajectories.jsonl", 1, lambda r: _line(r / "trajectories.jsonl", 1, _traj(lambda t: t["turns"][0].update(response=5)))),
    "a 400-digit reward": ("trajectories.jsonl", 1, lambda r: _line(r / "trajectories.jsonl", 1, lambda raw: raw.replace(b'"reward": 0.0', b'"reward": 1' + b"0" * 400))),
    "trajectories invalid UTF-8": ("trajectories.jsonl", 1, lambda r: _line(r / "trajectories.jsonl", 1, lambda raw: raw.replace(b"What", b"\xffhat"))),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_run_folder_gives_an_error_naming_file_and_line(tmp_path, case, capsys):
    run = _run(tmp_path, "sdpo", [0.1, 0.2, 0.3])
    name, lineno, craft = CRAFTED[case]
    craft(run)
    where = str(run / name) + ("" if lineno is None else f":{lineno}")
    with pytest.raises(RLRFError, match=re.escape(where)):
        write_report([run])
    assert main([str(run)]) == 1  # the command: one line, no traceback
    err = capsys.readouterr().err
    assert err.startswith(f"rlrf report: error: {where}") and "Traceback" not in err
    assert not (run / "ran").exists()  # no YAML tag built anything


@pytest.mark.parametrize(
    "line",
    [
        b'{"step": 3, "generations": Infinity, "eval/accuracy": NaN}',
        b'{"step": "3", "generations": true, "eval/accuracy": 1e308, "rollout/reward_mean": [1]}',
        b'{"step": 3, "generations": 1' + b"0" * 300 + b', "train/entropy": -1e308}',
    ],
)
def test_odd_but_valid_metrics_give_a_report(tmp_path, line):
    run = _run(tmp_path, "sdpo", [0.1, 0.2])
    _line(run / "metrics.jsonl", 2, lambda _: line)
    # a name that is bad math markup for matplotlib; a list and a mapping as values
    (run / "config.yaml").write_text("run_name: x$\\frac{$y\nalgorithm: [1, 2]\nenv: {a: 1}\n")
    text = write_report([run]).read_text()
    assert "| x$\\frac{$y |" in text and "env:" not in text  # no mapping printed as a value


def test_a_linked_report_folder_is_refused_and_nothing_is_written_outside(tmp_path):
    run = _run(tmp_path, "sdpo", [0.1, 0.2])
    outside = tmp_path / "outside"
    outside.mkdir()
    (run / "report").symlink_to(outside)
    with pytest.raises(
        RLRFError, match=rf"output folder {re.escape(str(run / 'report'))} is a symbolic link"
    ):
        write_report([run])
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("name", ["report.md", "accuracy.png"])
def test_a_linked_report_file_is_refused_and_its_target_untouched(tmp_path, name):
    run = _run(tmp_path, "sdpo", [0.1, 0.2])
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (run / "report").mkdir()
    (run / "report" / name).symlink_to(victim)
    with pytest.raises(
        RLRFError, match=rf"{re.escape(str(run / 'report' / name))} is a symbolic link"
    ):
        write_report([run])
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in (run / "report").iterdir()) == [name]  # nothing else written


def test_a_file_linked_after_the_check_is_replaced_not_written_through(tmp_path, monkeypatch):
    from algorithms import report as module

    run = _run(tmp_path, "sdpo", [0.1, 0.2])
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    real = module._output_dir

    def then_link(out):  # a collaborator's process plants the link between check and write
        folder = real(out)
        (folder / "report.md").symlink_to(victim)
        return folder

    monkeypatch.setattr(module, "_output_dir", then_link)
    report = write_report([run])
    assert victim.read_text() == "precious"
    assert not report.is_symlink() and report.read_text().startswith("# rlrf run report")


# --- fuzz: the run-folder readers never raise anything but an rlrf error ------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=12,
)  # fmt: skip
_KEYS = st.sampled_from(
    ["step", "generations", "eval/accuracy", "rollout/reward_mean", "train/entropy",
     "train/divergence", "rollout/response_tokens_mean", "run_name", "algorithm", "env"]
) | st.text(max_size=6)  # fmt: skip
_LINES = st.one_of(
    st.dictionaries(_KEYS, _JSON, max_size=6).map(lambda d: json.dumps(d).encode()),
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40),
    st.integers(min_value=300, max_value=6000).map(lambda n: b'{"step": ' + b"7" * n + b"}"),
    st.integers(min_value=50, max_value=3000).map(lambda n: b"[" * n + b"]" * n),
)
_YAML = st.one_of(
    st.dictionaries(_KEYS, _JSON, max_size=5).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=60),
    st.text(max_size=60).map(str.encode),
    st.sampled_from([b"!!python/name:os.system", b"a: &x [*x]\nrun_name: *x", b"- 1\n- 2",
                     b"a: !!binary xx", b"env: " + b"[" * 3000]),
)  # fmt: skip


def _mutate(raw: bytes, cut: int, junk: bytes) -> bytes:
    cut = cut % (len(raw) + 1)
    return raw[:cut] + junk + raw[cut:]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    metrics=st.lists(_LINES, max_size=5),
    newline=st.booleans(),
    config=st.none() | _YAML,
    traj_cut=st.integers(min_value=0, max_value=10_000),
    traj_junk=st.binary(max_size=12),
)
def test_fuzz_the_run_folder_readers(
    tmp_path_factory, metrics, newline, config, traj_cut, traj_junk
):
    """Whatever metrics.jsonl, config.yaml and trajectories.jsonl hold, load_run and the
    examples (rlrf.read_trajectories) give records or an RLRFError: nothing else escapes."""
    run = _run(tmp_path_factory.mktemp("fuzz"), "sdpo", [0.1, 0.2])
    (run / "metrics.jsonl").write_bytes(b"\n".join(metrics) + (b"\n" if newline else b""))
    if config is not None:
        (run / "config.yaml").write_bytes(config)
    traj = run / "trajectories.jsonl"
    traj.write_bytes(_mutate(traj.read_bytes(), traj_cut, traj_junk))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a torn last trajectory line is skipped with one
            loaded = load_run(run)
            _stability(loaded)
            _examples(loaded)
    except RLRFError:
        pass


_NUMBERS = st.floats() | st.integers(min_value=-(10**320), max_value=10**320) | st.booleans()


@pytest.mark.slow
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=st.lists(st.dictionaries(_KEYS, _NUMBERS | _JSON, max_size=8), max_size=6))
def test_fuzz_whole_reports_from_odd_metrics(tmp_path_factory, records):
    """Any JSON-object lines (huge, NaN, infinite numbers; wrong types) give a report or an
    RLRFError: the plots and the tables included."""
    run = _run(tmp_path_factory.mktemp("fuzz"), "sdpo", [0.1])
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    try:
        write_report([run])
    except RLRFError:
        pass


def test_the_example_step_is_metrics_jsonl_step_also_after_rollbacks():
    from types import SimpleNamespace

    from algorithms.report import _metrics_step

    def rollback(step, restored, n):  # guard.py writes one record per alarm it acted on
        r = {"step": step, "alarm/action": "rollback", "alarm/restored_step": restored}
        return [{**r, "alarm/kind": kind, "alarm/rollbacks": n} for kind in ("a", "b")]

    # steps 1-6, back to 3 (3 discarded), steps 4-7 again, back to 5 (2 more), steps 6-...
    records = [{"step": s} for s in range(1, 7)] + rollback(6, 3, 1)
    records += [{"step": s} for s in range(4, 8)] + rollback(7, 5, 2) + [{"step": 6}]
    run = SimpleNamespace(records=records)
    # policy_version = the step sampled at + the steps discarded so far (guard.py)
    expected = {0: 1, 5: 6, 6: 4, 9: 7, 10: 6, 11: 7}
    assert {v: _metrics_step(run, v) for v in expected} == expected
    assert _metrics_step(SimpleNamespace(records=[]), 4) == 5
