"""Small real environments shared by the tests."""

from collections.abc import Sequence

from rlrf import Feedback, FeedbackKind, Outcome, RLRFEnv


class EchoEnv(RLRFEnv):
    """Reward 1 for repeating the task id; feedback says what to say."""

    def __init__(self, n_train: int = 5, n_test: int = 2):
        self._ids = {
            "train": [f"t{i}" for i in range(n_train)],
            "test": [f"h{i}" for i in range(n_test)],
        }

    def task_ids(self, split: str = "train") -> Sequence[str]:
        return self._ids[split]

    def prompt(self, task_id):
        return [{"role": "user", "content": f"Repeat the word {task_id[::-1]} reversed."}]

    def gold_answer(self, task_id):
        return task_id

    def evaluate(self, task_id, response, history=()):
        if response.strip() == task_id:
            return Outcome(1.0)
        return Outcome(0.0, Feedback(FeedbackKind.WRONG_ANSWER, "Reverse the word.", source="echo"))


class CountdownEnv(RLRFEnv):
    """Multi-turn: the env counts down; each turn's feedback names the turn."""

    max_turns = 3

    def task_ids(self, split="train"):
        return ["only"]

    def prompt(self, task_id):
        return [{"role": "user", "content": "Say 'go' when ready."}]

    def evaluate(self, task_id, response, history=()):
        turn = sum(m["role"] == "assistant" for m in history) + 1
        if response == "go":
            return Outcome(1.0)
        return Outcome(
            0.0,
            Feedback(FeedbackKind.OTHER, f"turn {turn}: say go"),
            done=False,
            observation=({"role": "user", "content": f"Still waiting ({turn})."},),
        )
