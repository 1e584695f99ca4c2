"""How often the untrained embedded model succeeds: the figures behind the demo's setting.

Prints, for SmolLM2-135M-Instruct at temperature 1 (seeded):

- the success rate on one-digit additions (the demo's task) and on two-digit arithmetic;
- the teacher probe: the same one-digit questions with the gold answer shown as SDPO's
  "Correct solution:" section (the teacher prompt), against without it. A self-teacher
  can only teach what it gets right when shown the answer;
- with ``--code``, the success rate on the easy problems of ``rlrf/Code-v0``.

    python benchmarks/base_rates.py            # about 2 minutes on one CPU thread
    python benchmarks/base_rates.py --code     # plus Code-v0 (256 new tokens; a few minutes)
"""

from __future__ import annotations

import argparse
import time

import rlrf
from algorithms import sdpo
from algorithms.sampling.hf import HFPolicy, SamplingParams
from rlrf.env import Message, Outcome, RLRFEnv
from rlrf.rollout import collect_groups


class _WithSolution(RLRFEnv):
    """An env whose prompts are SDPO teacher prompts holding the gold answer."""

    def __init__(self, env: RLRFEnv) -> None:
        super().__init__()
        self.env = env

    def task_ids(self, split: str = "train") -> list[str]:
        return list(self.env.task_ids(split))

    def prompt(self, task_id: str) -> list[Message]:
        messages = sdpo.build_teacher_messages(
            self.env.prompt(task_id), solution=self.env.gold_answer(task_id), feedback=None
        )
        assert messages is not None
        return messages

    def evaluate(self, task_id: str, response: str, history: object = ()) -> Outcome:
        return self.env.evaluate(task_id, response)


def success_rate(
    policy: HFPolicy, env: RLRFEnv, questions: int, samples: int, max_new_tokens: int
) -> tuple[int, int]:
    """(successes, attempts) over the first ``questions`` train tasks."""
    tasks = list(env.task_ids("train"))[:questions]
    params = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens, seed=0)
    groups, _ = collect_groups(env, policy, tasks, samples, params)
    wins = sum(t.success for g in groups for t in g.trajectories)
    return wins, sum(len(g.trajectories) for g in groups)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--code", action="store_true", help="also Code-v0's easy problems")
    ap.add_argument("--smoke", action="store_true", help="CI's tiny run")
    args = ap.parse_args()
    if args.smoke:  # a tiny random model, 2 questions x 2 samples, 4 tokens; Code-v0 too
        import tempfile
        from pathlib import Path

        from algorithms.testing import save_tiny

        args.model, args.code = str(save_tiny(Path(tempfile.mkdtemp()) / "tiny")), True
    policy = HFPolicy.from_pretrained(args.model)
    one_digit = rlrf.make("rlrf/Arithmetic-v0", digits=1, ops="+")
    rows = [
        ("one-digit +, 16 questions x 4, 48 tokens", one_digit, 16, 4, 48),
        ("  same, gold answer shown as the solution", _WithSolution(one_digit), 16, 4, 48),
        ("two-digit +-*, 16 questions x 4, 48 tokens", rlrf.make("rlrf/Arithmetic-v0"), 16, 4, 48),
    ]
    if args.code:
        code = rlrf.make("rlrf/Code-v0", difficulty="easy")
        rows.append(("Code-v0 easy, 16 problems x 4, 256 tokens", code, 16, 4, 256))
    if args.smoke:
        rows = [(label, env, 2, 2, 4) for label, env, *_ in rows]
    for label, env, questions, samples, tokens in rows:
        t0 = time.perf_counter()
        wins, n = success_rate(policy, env, questions, samples, tokens)
        print(f"{label}: {wins}/{n} = {wins / n:.3f}  ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
