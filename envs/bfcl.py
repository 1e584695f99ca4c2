"""BFCL function-calling tasks as a :class:`~envs.tool_use.ToolUseEnv` (``rlrf/BFCL-v0``).

The Berkeley Function Calling Leaderboard's questions, function specs and possible answers
ship as JSON-lines files inside the ``bfcl-eval`` package. Install it **without** its
dependencies (``pip install --no-deps bfcl-eval``): only its data files are read, none of
its modules are imported (its answer checker needs packages rlrf does not want), so the
comparison is :mod:`envs.tool_use`'s re-implementation of BFCL's AST checker semantics.

Categories: ``simple`` (one function, one call; ``simple_python`` in BFCL v4),
``multiple`` (several functions, one call), ``parallel`` (one function, several calls, any
order) and ``parallel_multiple``. The newest ``BFCL_v*`` file of each category is used.
BFCL has no train/test split: a stable hash of the task id puts ``test_fraction`` of the
tasks in ``"test"``.

Rewards and feedback are those of :class:`~envs.tool_use.ToolUseEnv`.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envs.tool_use import ToolTask, ToolUseEnv, task_from_json
from rlrf.errors import ConfigError

__all__ = ["CATEGORIES", "BFCLEnv", "bfcl_data_dir", "load_bfcl"]

#: The categories with ground truth that :func:`load_bfcl` reads, with their file stems.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "simple": ("simple_python", "simple"),
    "multiple": ("multiple",),
    "parallel": ("parallel",),
    "parallel_multiple": ("parallel_multiple",),
}
_INSTALL_HINT = "pip install --no-deps bfcl-eval"


def bfcl_data_dir() -> Path:
    """Return the ``data`` folder of the installed ``bfcl-eval`` package (without importing it).

    Raises:
        ConfigError: ``bfcl-eval`` is not installed or holds no data folder.

    """
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"BFCL data needs the bfcl-eval package; install it with `{_INSTALL_HINT}` "
            "(--no-deps: only its data files are used)"
        )
    for location in spec.submodule_search_locations:
        data = Path(location) / "data"
        if (data / "possible_answer").is_dir():
            return data
    raise ConfigError(
        f"bfcl-eval is installed at {list(spec.submodule_search_locations)} but has no "
        f"data/possible_answer folder; reinstall it with `{_INSTALL_HINT}`"
    )


def _category_file(data: Path, category: str) -> Path:
    found: list[tuple[int, Path]] = []
    for stem in CATEGORIES[category]:
        for path in data.glob(f"BFCL_v*_{stem}.json"):
            m = re.fullmatch(rf"BFCL_v(\d+)_{re.escape(stem)}\.json", path.name)
            if m and (data / "possible_answer" / path.name).is_file():
                found.append((int(m.group(1)), path))
        if found:
            break  # prefer the first stem that exists (v4's simple_python over v3's simple)
    if not found:
        raise ConfigError(
            f"no BFCL file with ground truth for category {category!r} in {data}; "
            f"reinstall bfcl-eval with `{_INSTALL_HINT}`"
        )
    return max(found)[1]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_bfcl(
    categories: Sequence[str] = ("simple", "multiple", "parallel"),
    *,
    test_fraction: float = 0.2,
    limit: int | None = None,
) -> list[ToolTask]:
    """Load BFCL tasks with their ground truth.

    Args:
        categories: Any of ``"simple"``, ``"multiple"``, ``"parallel"``,
            ``"parallel_multiple"``.
        test_fraction: The share of tasks hashed into the ``"test"`` split.
        limit: Keep at most this many tasks per category (the first ones), e.g. for tests.

    Raises:
        ConfigError: An unknown category, or ``bfcl-eval`` missing (the message says how to
            install it).

    """
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ConfigError(f"unknown BFCL categories {unknown}; choose from {sorted(CATEGORIES)}")
    data = bfcl_data_dir()
    tasks: list[ToolTask] = []
    for category in categories:
        path = _category_file(data, category)
        answers = {
            r["id"]: r["ground_truth"] for r in _read_jsonl(data / "possible_answer" / path.name)
        }
        records = _read_jsonl(path)
        if limit is not None:
            records = records[:limit]
        for lineno, rec in enumerate(records, 1):
            if rec["id"] not in answers:
                continue
            rec = {**rec, "ground_truth": answers[rec["id"]], "ordered": False}
            task = task_from_json(rec, f"{path}:{lineno}", test_fraction)
            tasks.append(task)
    return tasks


class BFCLEnv(ToolUseEnv):
    """BFCL's single-turn categories, graded like :class:`~envs.tool_use.ToolUseEnv`.

    Args:
        categories: Which categories to load (see :func:`load_bfcl`).
        test_fraction: The share of tasks in ``"test"``.
        limit: At most this many tasks per category.
        **kwargs: Passed to :class:`~envs.tool_use.ToolUseEnv` (``reveal_gold``,
            ``partial_credit``, ``strict_arguments``, ``system_prompt``).

    """

    def __init__(
        self,
        categories: Sequence[str] = ("simple", "multiple", "parallel"),
        *,
        test_fraction: float = 0.2,
        limit: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(load_bfcl(categories, test_fraction=test_fraction, limit=limit), **kwargs)
