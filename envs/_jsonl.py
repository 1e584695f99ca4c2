"""Reading the envs' JSONL task files, and the stable hash split of tasks without one."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from envs._numbers import json_error_message, loads_json
from rlrf.errors import ConfigError


def jsonl_records(path: str | os.PathLike[str], what: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, record)`` for each non-blank line (``where`` is ``file:line``).

    Args:
        path: The JSONL file.
        what: What the file holds, for the error messages ("judge task file").

    Raises:
        ConfigError: The file does not exist, or a line is not a JSON object (the message
            names the file and line).

    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist; pass an existing JSONL file")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(f"{where}: not UTF-8 ({e}); save the file as UTF-8") from e
            if not line.strip():
                continue
            try:
                rec = loads_json(line)
            except (ValueError, RecursionError) as e:  # also integers over the digit cap
                raise ConfigError(f"{where}: not valid JSON ({json_error_message(e)})") from e
            if not isinstance(rec, dict):
                raise ConfigError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            yield where, rec


def hash_split(key: str, test_fraction: float) -> str:
    """``"test"`` for a stable ``test_fraction`` of keys (by SHA-256), else ``"train"``."""
    h = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < test_fraction else "train"
