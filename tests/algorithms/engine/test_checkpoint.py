"""Runs lose nothing: killed (SIGKILL, Ctrl-C, a full disk, a torn file) and resumed, a run
ends bit-identical (CPU) to an uninterrupted one, with every log line exactly once."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from algorithms.engine.checkpoint import (
    CheckpointError,
    CheckpointWarning,
    OldCheckpointError,
    RunInterrupted,
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    log_position,
    restore_log,
    restore_rng,
    save_checkpoint,
)
from algorithms.engine.checkpoint import main as convert_main
from algorithms.engine.trainer import Trainer
from algorithms.grpo.config import GRPOTrainConfig
from algorithms.testing import TargetCharEnv, tiny_model, tiny_tokenizer
from rlrf.errors import ConfigError
from rlrf.trajectory import Group, Trajectory, TrajectoryWriter, Turn, read_trajectories

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import safetensors.torch
    from algorithms.sdpo.config import SDPOTrainConfig
    from algorithms.testing import TargetCharEnv, tiny_model, tiny_tokenizer
    from algorithms.engine.trainer import Trainer

    out, resume, slow = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3])
    cfg = SDPOTrainConfig(
        steps=6, questions_per_step=2, rollouts_per_question=3, max_new_tokens=8,
        micro_batch_size=2, mini_batches=2, epochs=2, lr=1e-3, eval_every=3, eval_tasks=2,
        eval_k=2, checkpoint_every=1, keep_checkpoints=2, output_dir=out, resume=resume,
        progress=False, seed=5,
    )
    trainer = Trainer(cfg, env=TargetCharEnv(targets="ab"), model=tiny_model(3),
                      tokenizer=tiny_tokenizer())
    if slow:
        original = trainer.train_step
        def paced():
            metrics = original()
            time.sleep(slow)
            return metrics
        trainer.train_step = paced
        save_file = safetensors.torch.save_file
        def slow_save(*args, **kwargs):  # widen the window in which a save can be killed
            save_file(*args, **kwargs)
            time.sleep(slow / 2)
        safetensors.torch.save_file = slow_save
    trainer.train()
    """
)


def _run(script: Path, out: Path, resume: bool, slow: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    return subprocess.Popen(
        [sys.executable, str(script), str(out), "1" if resume else "0", str(slow)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _final_state(out: Path) -> dict:
    return load_checkpoint(latest_checkpoint(out / "checkpoints"))


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _step_records(path: Path) -> list[dict]:
    """The step records of metrics.jsonl (the alarm records of the monitors left out)."""
    records = [json.loads(x) for x in _lines(path)]
    return [r for r in records if not any(k.startswith("alarm/") for k in r)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    script = tmp / "run.py"
    script.write_text(SCRIPT)
    ref = _run(script, tmp / "ref", resume=False)
    assert ref.wait(timeout=300) == 0, ref.stdout.read().decode()
    return script, tmp / "ref"


def _groups_logged(out: Path) -> int:
    path = out / "trajectories.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


# when to kill the run: after a checkpoint, in the middle of writing one, and in the middle
# of a step (its trajectories logged, its metrics and checkpoint not yet)
KILL_POINTS = {
    "after_checkpoint": lambda out: (out / "checkpoints" / "step_000003" / "DONE").exists(),
    "mid_save": lambda out: (
        (out / "checkpoints" / "step_000002").exists()
        and any((out / "checkpoints").glob(".tmp_step_*"))
    ),
    "mid_step": lambda out: (
        (out / "checkpoints" / "step_000003").exists() and _groups_logged(out) >= 8
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_sigkill_and_resume_is_bit_identical(reference, tmp_path, point):
    script, ref_out = reference
    out = tmp_path / "killed"
    victim = _run(script, out, resume=False, slow=1.0)
    deadline = time.time() + 240
    while not KILL_POINTS[point](out):
        assert victim.poll() is None, victim.stdout.read().decode()
        assert time.time() < deadline, f"the run never reached {point}"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (out / "checkpoints" / "step_000006").exists()
    if point == "mid_step":  # as if killed while writing a line: a torn UTF-8 character too
        with (out / "trajectories.jsonl").open("ab") as f:
            f.write('{"schema_version": 1, "type": "group", "task_id": "\u00e9'.encode()[:-1])
    resumed = _run(script, out, resume=True)
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read().decode()
    log = resumed.stdout.read().decode()
    # it continued from the killed run's checkpoint, not from scratch, and said so
    assert int(log.split("resuming from step ")[1].split()[0]) >= 2, log

    a, b = _final_state(ref_out), _final_state(out)
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["objective"]["teacher"]["module"]:
        assert torch.equal(
            a["objective"]["teacher"]["module"][key], b["objective"]["teacher"]["module"][key]
        ), key
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for i in sa:
        assert torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"])
    assert a["sampler"] == b["sampler"]
    ref_lines = _lines(ref_out / "metrics.jsonl")
    out_lines = _lines(out / "metrics.jsonl")
    assert len(ref_lines) == len(out_lines)  # alarm records included, each once
    assert len(_step_records(out / "metrics.jsonl")) == 7

    def strip(line):
        return {k: v for k, v in json.loads(line).items() if "timing" not in k}

    assert [strip(x) for x in ref_lines] == [strip(x) for x in out_lines]
    # every group exactly once, the same as the uninterrupted run's
    ref_groups = [g.to_dict() for g in read_trajectories(ref_out / "trajectories.jsonl")]
    out_groups = [g.to_dict() for g in read_trajectories(out / "trajectories.jsonl")]
    for g in ref_groups + out_groups:
        for t in g["trajectories"]:
            t.pop("timings")
    assert len(ref_groups) == 12 and out_groups == ref_groups


# --- in-process runs ------------------------------------------------------------------

SMALL = dict(
    questions_per_step=2, rollouts_per_question=2, max_new_tokens=6, micro_batch_size=4,
    eval_every=0, progress=False, lr=1e-3, seed=1,
)  # fmt: skip


def _trainer(out: Path, **kw) -> Trainer:
    cfg = GRPOTrainConfig(output_dir=str(out), **{**SMALL, **kw})
    return Trainer(cfg, env=TargetCharEnv(targets="ab"), model=tiny_model(2),
                   tokenizer=tiny_tokenizer())  # fmt: skip


@pytest.mark.slow
def test_resume_after_a_lost_checkpoint_logs_each_group_once(tmp_path, capsys):
    _trainer(tmp_path, steps=3, checkpoint_every=1, keep_checkpoints=3).train()
    # killed after step 3 was logged but before its checkpoint was complete
    (tmp_path / "checkpoints" / "step_000003" / "DONE").unlink()
    _trainer(tmp_path, steps=3, checkpoint_every=1, resume=True).train()
    assert "resuming from step 2 of 3" in capsys.readouterr().err
    steps = [r["step"] for r in _step_records(tmp_path / "metrics.jsonl")]
    assert steps == [1, 2, 3]
    groups = list(read_trajectories(tmp_path / "trajectories.jsonl"))
    versions = [g.trajectories[0].policy_version for g in groups]
    assert versions == [0, 0, 1, 1, 2, 2]


@pytest.mark.slow
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, capsys):
    _trainer(tmp_path, steps=2, checkpoint_every=1).train()
    broken = tmp_path / "checkpoints" / "step_000002" / "model.safetensors"
    broken.write_bytes(broken.read_bytes()[:100])  # truncated (a full disk, a bad copy)
    with pytest.warns(CheckpointWarning, match=rf"{re.escape(str(broken))}.*falling back"):
        _trainer(tmp_path, steps=2, checkpoint_every=1, resume=True).train()
    assert "resuming from step 1 of 2" in capsys.readouterr().err
    assert [r["step"] for r in _step_records(tmp_path / "metrics.jsonl")] == [1, 2]
    # an empty state.json, a truncated state.safetensors: both named, no raw exception
    (tmp_path / "checkpoints" / "step_000002" / "state.json").write_bytes(b"")
    torn = tmp_path / "checkpoints" / "step_000001" / "state.safetensors"
    torn.write_bytes(torn.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"no checkpoint .* readable") as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointWarning)
            _trainer(tmp_path, steps=2, resume=True).train()
    assert "step_000002/state.json is unreadable (JSONDecodeError" in str(info.value)
    assert "step_000001/state.safetensors is unreadable" in str(info.value)


def test_resume_without_a_checkpoint_is_an_error_and_touches_nothing(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "trajectories.jsonl").write_text("precious\n")
    folder = re.escape(str(tmp_path / "checkpoints"))
    with pytest.raises(ConfigError, match=rf"{folder} holds no complete.*resume: false"):
        _trainer(tmp_path, steps=1, resume=True).train()
    assert (tmp_path / "trajectories.jsonl").read_text() == "precious\n"
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'


@pytest.mark.slow
def test_ctrl_c_during_a_save_finishes_it_then_says_how_to_resume(tmp_path, monkeypatch):
    save_file = safetensors.torch.save_file
    calls = []

    def interrupted_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the model file of the second checkpoint
            os.kill(os.getpid(), signal.SIGINT)
        save_file(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted_save)
    # Ctrl-C is deferred only under Python's own SIGINT handler; a handler left behind by
    # anything that ran earlier in this process would make this test meaningless
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(RunInterrupted) as info:
            _trainer(tmp_path, steps=4, checkpoint_every=1).train()
    except pytest.fail.Exception:
        raise AssertionError(
            f"no RunInterrupted: {len(calls)} save_file calls; SIGINT handler before the test: "
            f"{previous!r}"
        ) from None
    finally:
        signal.signal(signal.SIGINT, previous)
    ckpt = tmp_path / "checkpoints" / "step_000002"
    message = str(info.value)
    assert f"interrupted at step 2; the newest complete checkpoint is {ckpt}" in message
    assert f"rlrf train --config {tmp_path / 'config.yaml'} --resume true" in message
    assert load_checkpoint(ckpt)["step"] == 2  # finished, not half-written
    assert not list((tmp_path / "checkpoints").glob(".*"))
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    result = _trainer(tmp_path, steps=4, checkpoint_every=1, resume=True).train()
    assert result.steps == 4
    assert len(list(read_trajectories(tmp_path / "trajectories.jsonl"))) == 8


@pytest.mark.slow
def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_file = safetensors.torch.save_file
    calls = []

    def failing_save(tensors, filename, metadata=None):
        calls.append(1)
        if len(calls) == 4:  # the second checkpoint's optimizer state: half, then ENOSPC
            Path(filename).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(CheckpointError, match=r"step 2 .*No space left.*step_000001"):
        _trainer(tmp_path, steps=3, checkpoint_every=1).train()
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000001"]  # no partial folder
    assert load_checkpoint(latest_checkpoint(ckpts))["step"] == 1
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    _trainer(tmp_path, steps=3, checkpoint_every=1, resume=True).train()
    assert [r["step"] for r in _step_records(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_checkpoints_store_tensors_once_in_safetensors(tmp_path):
    trainer = _trainer(tmp_path, steps=1, checkpoint_every=1)
    model = trainer.unwrapped
    model.lm_head.weight = model.get_input_embeddings().weight  # tied, as in SmolLM2
    path = trainer.save()
    assert sorted(p.name for p in path.iterdir()) == [
        "DONE",
        "model.safetensors",
        "state.json",
        "state.safetensors",
    ]
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    on_disk = (path / "model.safetensors").stat().st_size
    assert model_bytes <= on_disk < model_bytes + 20_000  # the tied matrix once
    assert (path / "state.json").stat().st_size < 20_000  # no tensors in the plain data
    state = load_checkpoint(path)
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value), key
    fresh = _trainer(tmp_path / "b", steps=1)
    fresh.unwrapped.lm_head.weight = fresh.unwrapped.get_input_embeddings().weight
    fresh.load(path)
    for a, b in zip(fresh.unwrapped.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_every_zero_writes_only_the_final_model(tmp_path):
    result = _trainer(tmp_path, steps=2, checkpoint_every=0).train()
    assert not (tmp_path / "checkpoints").exists()
    tokenizer = ("token", "chat_template", "vocab", "merges")
    names = {p.name for p in result.final_model_dir.iterdir()}
    model_files = {n for n in names if not any(t in n for t in tokenizer)}
    assert model_files == {"config.json", "generation_config.json", "model.safetensors"}
    assert not list(tmp_path.glob(".*"))  # no temporary folder left


# --- checkpoints load nothing executable ---------------------------------------------------


class _RunsCode:
    """Unpickling this runs ``touch MARKER``: what a crafted state.pt in a shared folder does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (
            type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
        )  # fmt: skip
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def test_the_plain_part_of_a_checkpoint_round_trips_exactly(tmp_path):
    capture_rng()  # Python's, NumPy's (a uint32 array) and torch's RNG states
    state = {
        "step": 3,
        "rng": capture_rng(),
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0)}},
            "param_groups": [{"betas": (0.9, 0.999), "params": [0], "foreach": None, "lr": 1e-3}],
        },
        "floats": [float("nan"), float("inf"), -0.0, 1 / 3, 10**30],
        "keys": {(1, "a"): b"\x00\xff", None: True, 2.5: "x", "__rlrf_tuple__": "a user key"},
        "big": 2**200,
        "text": "é → 日本 \u0000",
    }
    loaded = load_checkpoint(save_checkpoint(tmp_path, 3, state))
    assert _same(state, loaded)
    restore_rng(loaded["rng"])  # accepted as they are


def test_state_that_is_not_plain_data_is_refused_when_saving(tmp_path):
    with pytest.raises(CheckpointError, match=r"state\['sampler'\]\['ids'\]: a builtins.set"):
        save_checkpoint(tmp_path, 1, {"sampler": {"ids": {1, 2}}})
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    "text",
    [
        '{"format": "rlrf-checkpoint", "version": 1, "state": {"a": {"__rlrf_tensor__": 5}}}',
        '{"format": "rlrf-checkpoint", "version": 1, "state": {"a": {"__rlrf_evil__": 5}}}',
        '{"format": "rlrf-checkpoint", "version": 1, "state": {"a": {"__rlrf_ndarray__": '
        '{"dtype": "|O", "shape": [1], "data": ""}}}}',
        '{"format": "rlrf-checkpoint", "version": 1, "state": {"a": {"__rlrf_dict__": '
        "[[[1], 2]]}}}",
        '{"format": "rlrf-checkpoint", "version": 1, "state": {"a": ' + "9" * 5000 + "}}",
        '{"format": "rlrf-checkpoint", "version": 1, "state": '
        + "[" * 100_000
        + "]" * 100_000
        + "}",
        '{"format": "rlrf-checkpoint", "version": 2, "state": {}}',
        "[1, 2]",
        "\udcff",
    ],
    ids=["ref", "tag", "object-array", "list-key", "digits", "nesting", "version", "list", "utf8"],
)
def test_a_malformed_state_json_is_named_never_a_traceback(tmp_path, text):
    folder = save_checkpoint(tmp_path, 1, {"step": 1, "w": torch.ones(2)})
    (folder / "state.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match=re.escape(str(folder / "state.json"))):
        load_checkpoint(folder)


def _to_old_format(folder: Path) -> dict:
    """Rewrite a checkpoint as older rlrf versions did: the rest of the state in a pickled
    state.pt, the model's tensors as references into model.safetensors, the others inline."""
    state = load_checkpoint(folder)
    old = {
        **state,
        "model": {k: {"__rlrf_tensor__": ["model.safetensors", k]} for k in state["model"]},
    }
    torch.save(old, folder / "state.pt")
    (folder / "state.json").unlink()
    (folder / "state.safetensors").unlink()
    return state


@pytest.mark.slow
def test_a_crafted_state_pt_runs_nothing_on_resume_or_convert(tmp_path, capsys):
    _trainer(tmp_path, steps=2, checkpoint_every=1).train()
    marker = tmp_path.parent / f"{tmp_path.name}-code-ran"
    newest = tmp_path / "checkpoints" / "step_000002"
    # beside a current state.json, a state.pt is never opened
    torch.save({"step": _RunsCode(marker)}, newest / "state.pt")
    assert load_checkpoint(newest)["step"] == 2 and not marker.exists()
    # instead of it: refused with the command that converts it, and the run stops
    (newest / "state.json").unlink()
    command = f"python -m algorithms.engine.checkpoint convert {tmp_path}"
    with pytest.raises(
        OldCheckpointError, match=rf"unpickling .* can run any code.*{re.escape(command)}"
    ):
        _trainer(tmp_path, steps=3, checkpoint_every=1, resume=True).train()
    assert not marker.exists()
    # the converter loads with weights_only=True only: it refuses the file, unloaded
    assert convert_main(["convert", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"refused to convert {newest / 'state.pt'}" in err and "posix.system" in err
    assert not marker.exists() and (newest / "state.pt").exists()


@pytest.mark.slow
def test_an_old_checkpoint_converts_exactly_and_resumes(tmp_path, capsys):
    _trainer(tmp_path, steps=2, checkpoint_every=1, keep_checkpoints=3).train()
    _trainer(tmp_path / "ref", steps=3, checkpoint_every=1).train()  # uninterrupted
    (tmp_path / "checkpoints" / "step_000002" / "DONE").unlink()  # resume from step 1
    one = tmp_path / "checkpoints" / "step_000001"
    state = _to_old_format(one)
    with pytest.raises(OldCheckpointError, match="from an older rlrf"):
        load_checkpoint(one)
    assert convert_main(["convert", str(tmp_path)]) == 0
    assert f"converted {one}" in capsys.readouterr().out
    assert not (one / "state.pt").exists() and _same(state, load_checkpoint(one))
    assert convert_main(["convert", str(one)]) == 0  # again: nothing to do
    assert "nothing to convert" in capsys.readouterr().out
    _trainer(tmp_path, steps=3, checkpoint_every=1, resume=True).train()
    a = _final_state(tmp_path / "ref")
    b = _final_state(tmp_path)
    assert a["step"] == b["step"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


# --- logs cut at every byte ---------------------------------------------------------------


def _group(i: int) -> Group:
    t = Trajectory("env", f"t{i}", ({"role": "user", "content": "é → 日本"},),
                   [Turn(f"réponse {i} ✓", reward=1.0)], policy_version=i)  # fmt: skip
    return Group("env", f"t{i}", [t])


@pytest.mark.slow
def test_logs_cut_at_any_byte_resume_without_duplicates(tmp_path):
    path = tmp_path / "trajectories.jsonl"
    with TrajectoryWriter(path) as w:
        for i in range(3):
            w.write(_group(i))
    checkpointed = path.stat().st_size  # what a checkpoint at step 3 records
    with TrajectoryWriter(path, append=True) as w:
        for i in range(3, 5):
            w.write(_group(i))
    full = path.read_bytes()
    expected = [_group(i).to_dict() for i in range(5)]
    for cut in range(len(full) + 1):
        path.write_bytes(full[:cut])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read = [g.to_dict() for g in read_trajectories(path)]  # never raises
        # every complete line (a last one missing only its newline counts), nothing else
        assert read == expected[: len(read)]
        assert len(read) - full[:cut].count(b"\n") == (full[cut : cut + 1] == b"\n")
        if cut < checkpointed:
            continue  # a checkpoint's logs are fsynced before it completes
        if cut % 5 and b"\n" not in full[cut - 4 : cut + 4]:
            continue  # resume (an fsync each) at every 5th byte and around every line end
        restore_log(path, checkpointed)
        assert path.read_bytes() == full[:checkpointed]
        with TrajectoryWriter(path, append=True) as w:  # the resumed run re-logs steps 4, 5
            for i in range(3, 5):
                w.write(_group(i))
        assert [g.to_dict() for g in read_trajectories(path)] == expected, cut


def test_logs_without_a_recorded_size_are_cut_by_step(tmp_path):
    path = tmp_path / "trajectories.jsonl"
    with TrajectoryWriter(path) as w:
        for i in range(4):
            w.write(_group(i))
    full = path.read_bytes()
    keep = [n for n in range(1, len(full)) if not full[:n].endswith(b"\n")]
    for cut in keep[::7]:
        path.write_bytes(full[:cut])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointWarning)
            restore_log(path, None, lambda r: r["trajectories"][0]["policy_version"] < 2)
        versions = [g.trajectories[0].policy_version for g in read_trajectories(path)]
        assert versions == [0, 1][: full[:cut].count(b"\n")]


def test_a_corrupted_middle_line_is_dropped_with_a_warning_naming_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n{"step": 2, "x": \xff\n{"step": 3}\n{"step": 4}\n')
    with pytest.warns(CheckpointWarning, match=rf"{re.escape(str(path))}:2: corrupted line"):
        assert restore_log(path, None, lambda r: r["step"] <= 3) == 2
    assert path.read_text() == '{"step": 1}\n{"step": 3}\n'


def test_the_command_line_turns_ctrl_c_into_a_resume_hint(tmp_path, monkeypatch, capsys):
    from algorithms.commands import train as cli
    from algorithms.engine import trainer as trainer_module

    class Interrupted:
        def __init__(self, config, **kwargs):
            pass

        def train(self):
            raise RunInterrupted("interrupted at step 3; ... Resume with: rlrf train ...")

    monkeypatch.setattr(trainer_module, "Trainer", Interrupted)
    assert cli.main(["--algo", "grpo", "--output-dir", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "Resume with: rlrf train" in err and "Traceback" not in err


# ---- resume continues the run in the folder (issue 27 item 1) ------------------------------


@pytest.fixture
def grpo_run(tmp_path):
    """A 2-step GRPO run on a registered toy env, trained through the command line."""
    import rlrf
    from algorithms.commands import train as cli
    from algorithms.testing import save_tiny

    rlrf.register("resumetest/TargetChar-v0", "algorithms.testing:TargetCharEnv", override=True)
    model = save_tiny(tmp_path / "tiny")
    out = tmp_path / "run"
    argv = [
        "--algo", "grpo", "--env", "resumetest/TargetChar-v0", "--env-kwargs", "targets=ab",
        "--model", str(model), "--steps", "2", "--questions-per-step", "2",
        "--rollouts-per-question", "2", "--max-new-tokens", "4", "--eval-every", "0",
        "--checkpoint-every", "1", "--lr", "1e-3", "--progress", "false",
        "--output-dir", str(out),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    return out


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_resume_on_the_command_line_continues_the_saved_run(grpo_run, capsys):
    from algorithms.commands import train as cli

    saved = (grpo_run / "config.yaml").read_text()
    # nothing but the folder and the new length: the saved algorithm, env, model and shapes
    assert cli.main(["--output-dir", str(grpo_run), "--resume", "true", "--steps", "3"]) == 0
    assert "resuming from step 2 of 3" in capsys.readouterr().err
    now = (grpo_run / "config.yaml").read_text()
    assert now == saved.replace("steps: 2\n", "steps: 3\n", 1).replace(
        "resume: false", "resume: true"
    )
    groups = list(read_trajectories(grpo_run / "trajectories.jsonl"))
    assert len(groups) == 6 and {g.env_id for g in groups} == {"resumetest/TargetChar-v0"}
    (change,) = _lines(grpo_run / "config_changes.jsonl")
    assert json.loads(change) == {"step": 2, "changes": {"steps": {"saved": 2, "given": 3}}}


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--env", "rlrf/Arithmetic-v0"], "env: saved 'resumetest/TargetChar-v0', given "
         "'rlrf/Arithmetic-v0'"),
        (["--algo", "sdpo"], "resume continues the 'grpo' run saved in"),
        (["--lr", "1e-5"], "lr: saved 0.001, given 1e-05"),
        (["--rollouts-per-question", "8", "--max-new-tokens", "256"],
         "max_new_tokens: saved 4, given 256; rollouts_per_question: saved 2, given 8"),
    ],
)  # fmt: skip
def test_resume_refuses_what_would_change_the_run(grpo_run, capsys, flags, named):
    from algorithms.commands import train as cli

    before = _snapshot(grpo_run)
    argv = ["--output-dir", str(grpo_run), "--resume", "true", "--steps", "4", *flags]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert named in err and "another output_dir" in err
    assert _snapshot(grpo_run) == before


def test_resume_in_python_behaves_as_the_command_line(grpo_run):
    from algorithms.engine.trainer import train

    with pytest.raises(ConfigError, match=r"env: saved 'resumetest/TargetChar-v0', given 'x/Y-v0'"):
        train("x/Y-v0", resume=True, output_dir=str(grpo_run), steps=3)
    result = train(resume=True, output_dir=str(grpo_run), steps=3, progress=False)
    assert result.steps == 3
    assert "algorithm: grpo" in (grpo_run / "config.yaml").read_text()
    assert json.loads(_lines(grpo_run / "config_changes.jsonl")[0])["changes"] == {
        "steps": {"saved": 2, "given": 3}
    }


def test_resume_of_a_folder_without_a_run_says_so(tmp_path, capsys):
    from algorithms.commands import train as cli

    assert cli.main(["--output-dir", str(tmp_path), "--resume", "true"]) == 2
    assert f"{tmp_path / 'config.yaml'} does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_trainer_resumed_with_another_config_is_refused(tmp_path):
    _trainer(tmp_path, steps=1, checkpoint_every=1).train()
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError, match=r"lr: saved 0.001, given 0.01\. Drop them"):
        _trainer(tmp_path, steps=2, resume=True, lr=1e-2).train()
    assert _snapshot(tmp_path) == before


def test_an_earlier_line_edited_since_the_checkpoint_loses_no_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(f'{{"step": {i}}}\n' for i in range(1, 6)))
    position = log_position(path)  # what the checkpoint of step 5 records
    # a collaborator's edit makes line 2 longer (or shorter): the byte position moves
    for edited in ('{"step": 2, "note": "checked by hand"}', '{"step":2}'):
        with path.open("a") as f:
            f.write('{"step": 6}\n{"step": 7, "torn')  # the killed run's next step
        text = path.read_text().splitlines(keepends=True)
        text[1] = edited + "\n"
        path.write_text("".join(text))
        with pytest.warns(CheckpointWarning) as caught:
            assert restore_log(path, position) == 2
        message = str(caught[0].message)
        assert f"{path}: its first 5 lines are" in message and "dropped lines 6-7" in message
        kept = [json.loads(x) for x in _lines(path)]
        assert [r["step"] for r in kept] == [1, 2, 3, 4, 5] and kept[1] == json.loads(edited)


@pytest.mark.slow
def test_resume_after_an_earlier_line_was_edited_keeps_every_record(tmp_path):
    _trainer(tmp_path, steps=3, checkpoint_every=1, keep_checkpoints=3).train()
    (tmp_path / "checkpoints" / "step_000003" / "DONE").unlink()  # resume from step 2
    for name, old, new in (
        ("metrics.jsonl", '{"step": 1', '{"step": 1, "note": "edited"'),
        ("trajectories.jsonl", '"schema_version": 1', '"schema_version":   1'),
    ):
        lines = (tmp_path / name).read_text().splitlines(keepends=True)
        lines[0] = lines[0].replace(old, new, 1)
        (tmp_path / name).write_text("".join(lines))
    with pytest.warns(CheckpointWarning, match=r"a line before the checkpoint was edited since"):
        _trainer(tmp_path, steps=3, checkpoint_every=1, resume=True).train()
    metrics = _step_records(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2, 3] and metrics[0]["note"] == "edited"
    groups = list(read_trajectories(tmp_path / "trajectories.jsonl"))
    assert [g.trajectories[0].policy_version for g in groups] == [0, 0, 1, 1, 2, 2]


def _edit_state(folder: Path, edit) -> None:
    document = json.loads((folder / "state.json").read_text())
    edit(document["state"])
    (folder / "state.json").write_text(json.dumps(document))


@pytest.mark.slow
@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.update(step="three"),
        lambda s: s.pop("sampler"),
        lambda s: s["rng"].update(python=5),
        lambda s: s.update(config=[1, 2]),
        lambda s: s["model"].popitem(),
        lambda s: s["optimizer"].update(param_groups=[]),
    ],
    ids=["string-step", "no-sampler", "bad-rng", "list-config", "missing-weight", "optimizer"],
)
def test_a_state_json_with_the_wrong_content_is_named_on_resume(tmp_path, edit):
    _trainer(tmp_path, steps=1, checkpoint_every=1).train()
    folder = tmp_path / "checkpoints" / "step_000001"
    _edit_state(folder, edit)
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {folder / 'state.json'}")):
        _trainer(tmp_path, steps=2, checkpoint_every=1, resume=True).train()


def test_log_lines_without_a_usable_step_are_dropped_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": "x"}\n{"no": 1}\n{"step": 1e999}\n{"step": 2}\n')
    with pytest.warns(CheckpointWarning, match=r"metrics.jsonl:3: line dropped, it has no usable"):
        dropped = restore_log(path, None, lambda r: int(r["step"]) <= 1)
    assert dropped == 4 and path.read_text() == '{"step": 1}\n'
