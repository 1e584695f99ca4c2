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


class GuessEnv(RLRFEnv):
    """Gymnasium style: guess a secret number from 10 to 99 in ``max_turns`` tries.

    The seed picks the secret; the env keeps the game (secret, chat, turn) on the instance and
    says "higher" or "lower" after each wrong guess, in ``info["feedback"]`` and in the chat.
    """

    max_turns = 3

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)  # only seeds self.np_random
        self.secret = int(self.np_random.integers(10, 100))
        self.turn = 0
        self.chat = [{"role": "user", "content": "Guess my number (10 to 99). Reply with it."}]
        return list(self.chat), {"task_id": f"secret-{self.secret}"}

    def step(self, action):
        self.turn += 1
        self.chat.append({"role": "assistant", "content": action})
        digits = "".join(c for c in action if c.isdigit())[:6]
        if digits and int(digits) == self.secret:
            return list(self.chat), 1.0, True, False, {"feedback": ()}
        if not digits:
            hint = Feedback(FeedbackKind.FORMAT, "Reply with a number.")
        else:
            word = "Higher" if int(digits) < self.secret else "Lower"
            hint = Feedback(FeedbackKind.WRONG_ANSWER, f"{word} than {int(digits)}.")
        self.chat.append({"role": "user", "content": hint.text})
        truncated = self.turn >= self.max_turns
        return list(self.chat), 0.0, False, truncated, {"feedback": (hint,)}

    def gold_answer(self, task_id):
        return task_id.removeprefix("secret-")
