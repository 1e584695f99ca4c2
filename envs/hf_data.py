"""Hugging Face datasets as task sources: hub ids, saved folders, Parquet and JSONL files.

The envs that hold the paper's settings (:mod:`envs.science`, :mod:`envs.tool_use`,
:mod:`envs.code`) read their tasks through :func:`load_rows`, which accepts

* a hub id (``"hicai-zju/SciKnowEval"``) with an optional config, split and revision;
* a local folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
* a ``.parquet``, ``.jsonl`` or ``.json`` file (or a folder of them).

Each env maps the dataset's columns onto its own fields with :class:`ColumnMap`: the paper's
datasets have a built-in mapping (SciKnowEval, the paper's ToolAlpaca split, LiveCodeBench's
``code_generation_lite``), another dataset passes ``columns={"field": "its column", ...}``
(merged over the env's default mapping, so only the columns that differ need naming). A
column path may reach into a struct with dots (``"details.level"``).

No hang without a network: before a hub id is fetched, the hub's host is probed with a short
TCP connect (:data:`HUB_PROBE_TIMEOUT_S`, or ``RLRF_HUB_TIMEOUT_S``); when nothing answers,
or ``HF_HUB_OFFLINE=1`` is set, only the local cache is read, and a dataset that is not in it
raises :class:`DatasetUnavailableError` naming the cache folder to fill and how.

``datasets`` is an optional dependency (``pip install 'rlrf[data]'``); it is imported only
when a dataset is loaded.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rlrf.errors import ConfigError, MissingExtraError

__all__ = [
    "HUB_PROBE_TIMEOUT_S",
    "ColumnMap",
    "DatasetColumnsError",
    "DatasetSource",
    "DatasetUnavailableError",
    "SkipCounter",
    "load_rows",
    "resolve_columns",
]

#: Seconds the hub's host gets to accept a TCP connection before the hub counts as unreachable.
HUB_PROBE_TIMEOUT_S = 3.0

_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".gz": "json"}
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


class DatasetColumnsError(ConfigError):
    """A dataset's columns do not match the mapping an env expects."""


class DatasetUnavailableError(ConfigError):
    """A dataset cannot be read: not on disk, not in the cache, and no hub reachable."""


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset comes from.

    Attributes:
        path: A hub id, a ``save_to_disk`` folder, or a Parquet/JSONL file or folder.
        config: The hub config (subset) name, e.g. ``"release_v6"``; hub ids only.
        split: The split to read; ``None`` takes the env's default (see :func:`load_rows`).
        revision: A hub branch, tag or commit; hub ids only.

    """

    path: str
    config: str | None = None
    split: str | None = None
    revision: str | None = None

    def describe(self) -> str:
        """The source in one phrase, for messages."""
        extra = [
            f"{k}={v!r}"
            for k, v in vars(self).items()
            if k != "path" and v is not None
        ]
        return repr(self.path) + (f" ({', '.join(extra)})" if extra else "")


@dataclass(frozen=True)
class ColumnMap:
    """How a dataset's columns become an env's fields.

    Attributes:
        name: The mapping's name (``"sciknoweval"``), for messages.
        columns: ``{field: column}``; a column may be a dotted path into a struct.
        required: The fields a row must have.

    """

    name: str
    columns: Mapping[str, str]
    required: frozenset[str]

    def merged(self, overrides: Mapping[str, str] | None) -> ColumnMap:
        """Return the mapping with ``overrides`` (``{field: column}``); unknown fields refused."""
        if not overrides:
            return self
        unknown = sorted(set(overrides) - set(self.columns))
        if unknown:
            raise ConfigError(
                f"columns: unknown field(s) {unknown} for the {self.name!r} mapping; its fields "
                f"are {sorted(self.columns)} (map each to a column of your dataset)"
            )
        bad = {k: v for k, v in overrides.items() if not isinstance(v, str) or not v}
        if bad:
            raise ConfigError(f"columns: each field maps to a column name (a string), got {bad}")
        merged = {**self.columns, **overrides}
        return ColumnMap(f"{self.name} + your columns", merged, self.required)

    def check(self, found: list[str], source: DatasetSource) -> None:
        """Raise :class:`DatasetColumnsError` when a required field's column is missing."""
        missing = {
            f: c
            for f, c in self.columns.items()
            if f in self.required and c.split(".")[0] not in found
        }
        if missing:
            expected = ", ".join(
                f"{f} <- {c!r}" + ("" if f in self.required else " (optional)")
                for f, c in self.columns.items()
            )
            raise DatasetColumnsError(
                f"dataset {source.describe()} has columns {sorted(found)}, but the "
                f"{self.name!r} mapping expects {expected}; missing: "
                f"{', '.join(f'{f} <- {c!r}' for f, c in missing.items())}. Pass "
                "columns={'field': 'your column', ...} in the env kwargs to map yours"
            )

    def apply(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The row's values under the env's field names (``None`` where a column is absent)."""
        return {f: _get(row, c) for f, c in self.columns.items()}


def _get(row: Mapping[str, Any], path: str) -> Any:
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


@dataclass
class SkipCounter:
    """Rows left out while loading, counted by reason (with the first few places named)."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, where: str) -> None:
        """Count one skipped row."""
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 3:
            shown.append(where)

    @property
    def total(self) -> int:
        """Rows skipped in all."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """Return ``"2 refused_test_payload (row 3, row 9)"``-style text (``""``: none)."""
        return "; ".join(
            f"{n} {reason} ({', '.join(self.examples.get(reason, []))})"
            for reason, n in sorted(self.counts.items())
        )


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as e:
        raise MissingExtraError(
            "loading a Hugging Face dataset needs the 'datasets' package: "
            "pip install 'rlrf[data]' (or pip install datasets)"
        ) from e
    datasets.disable_progress_bars()
    return datasets


def _cache_folders() -> str:
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")),
        "hub",
    )
    try:
        import datasets

        data = str(datasets.config.HF_DATASETS_CACHE)
    except ImportError:
        data = os.path.join(os.path.dirname(hub), "datasets")
    return f"{hub} (hub downloads) and {data} (prepared datasets)"


def _hub_host() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def _hub_reachable() -> bool:
    timeout = float(os.environ.get("RLRF_HUB_TIMEOUT_S", HUB_PROBE_TIMEOUT_S))
    try:
        with socket.create_connection(_hub_host(), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline(datasets: Any) -> Iterator[None]:
    """Read only the local cache (both libraries read these flags at call time)."""
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith((".", "/", "~"))
        or "\\" in text
        or text.count("/") > 1
        or Path(text).suffix.lower() in _FILE_BUILDERS
    )


def _is_dict(obj: Any) -> bool:
    """Whether ``obj`` is a ``DatasetDict`` (its column names are per split)."""
    return isinstance(obj.column_names, dict)


def _load_local(datasets: Any, path: Path, split: str | None) -> Any:
    if path.is_dir() and any((path / m).is_file() for m in _SAVED_MARKERS):
        return datasets.load_from_disk(str(path))
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _FILE_BUILDERS)
        if not files:
            raise DatasetUnavailableError(
                f"folder {path} holds neither a saved dataset (save_to_disk: "
                f"{', '.join(_SAVED_MARKERS)}) nor .parquet/.jsonl/.json files"
            )
    else:
        files = [path]
    builders = {_FILE_BUILDERS[p.suffix.lower()] for p in files}
    if len(builders) != 1:
        raise DatasetUnavailableError(f"{path}: mixes Parquet and JSON files; keep one format")
    stems = [p.name.split(".")[0] for p in files]
    if path.is_dir() and len(files) > 1 and len(set(stems)) == len(stems):
        # a folder of split files (train.json, test.json): one split per file
        data_files = {stem: [str(p)] for stem, p in zip(stems, files, strict=True)}
        return datasets.load_dataset(builders.pop(), data_files=data_files)
    # one file (or unrelated files) is one split; the env assigns train/test itself
    return datasets.load_dataset(builders.pop(), data_files=[str(p) for p in files], split="train")


def _load_hub(datasets: Any, source: DatasetSource, split: str | None) -> Any:
    def load() -> Any:
        return datasets.load_dataset(
            source.path, source.config, split=split, revision=source.revision
        )

    offline = bool(datasets.config.HF_HUB_OFFLINE)
    why = "HF_HUB_OFFLINE is set"
    if not offline and not _hub_reachable():
        offline, why = True, "the hub ({}:{}) did not answer".format(*_hub_host())
    try:
        if offline:
            with _offline(datasets):
                return load()
        return load()
    except (ConfigError, MissingExtraError):
        raise
    except Exception as e:  # the hub libraries raise many kinds for "not there"
        if not offline:
            raise DatasetUnavailableError(
                f"cannot load dataset {source.describe()} from the hub: "
                f"{type(e).__name__}: {e}"
            ) from e
        raise DatasetUnavailableError(
            f"dataset {source.describe()} is not in the local cache and {why}. Fill the cache "
            f"folders {_cache_folders()} by loading it once where the hub is reachable "
            "(datasets.load_dataset with the same id, config and revision, then copy the "
            "folders here), or save it with Dataset.save_to_disk / to_parquet and pass that "
            f"folder or file as dataset=... ({type(e).__name__}: {str(e)[:200]})"
        ) from e


class _SplitRows:
    """The rows of every split of a ``DatasetDict``, each with its split name as ``"split"``."""

    def __init__(self, parts: Any) -> None:
        self._parts = parts

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for name in self._parts:
            for row in self._parts[name]:
                yield {**row, "split": name}


def resolve_columns(
    columns: str | Mapping[str, str] | None, table: Mapping[str, ColumnMap], default: str
) -> ColumnMap:
    """The column mapping a loader uses: a built-in one by name, or ``default``'s with overrides.

    Raises:
        ConfigError: ``columns`` names no built-in mapping.

    """
    if columns is None or isinstance(columns, str):
        name = columns or default
        if name not in table:
            raise ConfigError(
                f"columns={name!r} is not a built-in mapping; use one of {sorted(table)} or a "
                "{'field': 'column'} mapping"
            )
        return table[name]
    return table[default].merged(columns)


def load_rows(
    source: DatasetSource, *, default_split: str = "train", keep_splits: bool = False
) -> tuple[Any, list[str]]:
    """Open a dataset and return ``(rows, column names)``; ``rows`` iterates plain dicts.

    Args:
        source: Where the dataset is (see :class:`DatasetSource`).
        default_split: The split read when ``source.split`` is ``None`` and the dataset has
            several (hub datasets, saved ``DatasetDict`` folders, folders of split files).
        keep_splits: With ``source.split`` ``None`` and several splits, read them all
            instead, each row carrying its split's name in a ``"split"`` column (the paper's
            ToolAlpaca split: ``train.json`` and ``test.json`` in one folder).

    Raises:
        MissingExtraError: ``datasets`` is not installed.
        DatasetUnavailableError: the path does not exist, the split is unknown, or a hub
            dataset is neither reachable nor cached (the message names the cache folders).

    """
    if not isinstance(source.path, str) or not source.path.strip():
        raise ConfigError(f"dataset must be a hub id, folder or file path, got {source.path!r}")
    datasets = _import_datasets()
    path = Path(source.path).expanduser()
    want = source.split if source.split is not None or keep_splits else default_split
    if path.exists():
        if source.config is not None or source.revision is not None:
            raise ConfigError(
                f"dataset {source.path!r} is a local path: dataset_config and dataset_revision "
                "apply to hub ids only; leave them unset"
            )
        ds = _load_local(datasets, path, want)
    elif _looks_like_path(source.path):
        raise DatasetUnavailableError(
            f"dataset path {source.path!r} does not exist; pass an existing .parquet/.jsonl "
            "file, a save_to_disk folder, or a hub id such as 'owner/name'"
        )
    else:
        ds = _load_hub(datasets, source, want)
    if _is_dict(ds):
        names = sorted(ds)
        if source.split is None and keep_splits and len(names) > 1:
            columns = sorted({c for cols in ds.column_names.values() for c in cols})
            return _SplitRows(ds), [*columns, "split"]
        split = source.split or (names[0] if len(names) == 1 else default_split)
        if split not in ds:
            raise DatasetUnavailableError(
                f"dataset {source.describe()} has no split {split!r}; its splits: {names}. "
                "Pass dataset_split=NAME"
            )
        ds = ds[split]
    return ds, list(ds.column_names)
