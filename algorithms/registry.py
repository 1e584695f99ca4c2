"""The installed algorithms, and turning what an entry point was given into a train config.

An algorithm is one or more :class:`Preset` s: a name (``--algo NAME``, ``train(algorithm=
NAME)``, YAML's ``algorithm: NAME``), the train config class that builds its objective, and
the field values it sets over that class's defaults. GRPO (``grpo``) and SDPO (``sdpo``,
``sdpo-srf``) are registered exactly as a third-party package registers its own: a
``rlrf.algorithms`` entry point naming a :class:`Preset`, a sequence of them, or a
callable returning either::

    # pyproject.toml of the package `acme-rl`
    [project.entry-points."rlrf.algorithms"]
    reinforce = "acme_rl:ALGORITHMS"

The config class subclasses :class:`algorithms.config.TrainConfig`, adds its options as a
section (a field whose type is a config dataclass, e.g. ``reinforce: ReinforceConfig``),
and overrides ``build_objective``. The command line then shows that section's options
under ``rlrf train --algo reinforce --help``, YAML files take a ``reinforce:`` section, and
the trainer runs it: nothing in rlrf names an algorithm.

Plugins load on the first lookup, never at import. One that fails to import, registers a
name twice or whose config is not a usable train config is reported by name
(:class:`AlgorithmPluginWarning`, and again if its name is asked for) and skipped as a
whole; the others and the built-ins still load.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from algorithms.config import TrainConfig, config_from_dict, flat_fields, load_yaml, sections
from rlrf.errors import ConfigError, RLRFWarning

__all__ = [
    "DEFAULT_ALGORITHM",
    "ENTRY_POINT_GROUP",
    "AlgorithmPluginWarning",
    "Preset",
    "build_config",
    "get_preset",
    "plugin_errors",
    "presets",
    "read_yaml_config",
    "resolve_config",
    "resume_config",
    "segment_changes",
]

ENTRY_POINT_GROUP = "rlrf.algorithms"
"""The entry-point group through which packages register algorithms."""

DEFAULT_ALGORITHM = "sdpo"
"""The algorithm an entry point runs when nothing names one."""

# Registered before any plugin, through the same loader as a plugin's entry point.
_BUILTINS = (
    ("grpo", "algorithms.grpo.config:ALGORITHMS"),
    ("sdpo", "algorithms.sdpo.config:ALGORITHMS"),
)


class AlgorithmPluginWarning(RLRFWarning):
    """An ``rlrf.algorithms`` plugin could not be loaded; its algorithms are unavailable."""


@dataclass(frozen=True)
class Preset:
    """A named algorithm: its config class and the field values it sets over the defaults.

    Example:
        >>> from algorithms.grpo.config import GRPOTrainConfig
        >>> p = Preset("grpo-kl", GRPOTrainConfig, {"kl_coef": 0.05}, "GRPO with a KL term")
        >>> p.name, p.config_class.__name__
        ('grpo-kl', 'GRPOTrainConfig')

    """

    name: str
    """What ``--algo`` and YAML's ``algorithm:`` call it."""

    config_class: type[TrainConfig]
    """The train config it builds; its ``build_objective`` returns the objective."""

    values: Mapping[str, Any] = field(default_factory=dict)
    """Flat field values (learning rate, warm-up, loss options) over the dataclass defaults."""

    summary: str = ""
    """One line for ``--help``."""


@dataclass
class _Registry:
    presets: dict[str, Preset] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)  # preset name -> plugin label
    errors: dict[str, str] = field(default_factory=dict)  # plugin label -> message
    loaded: bool = False


_registry = _Registry()


def _describe(e: BaseException) -> str:
    """``Type: message``, even for an exception whose ``str()`` itself raises."""
    try:
        text = str(e)
    except BaseException:  # a plugin's exception must not take the registry down
        text = "<its message could not be rendered>"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _as_presets(target: Any, label: str) -> list[Preset]:
    if callable(target) and not isinstance(target, (Preset, type)):
        target = target()
    items = [target] if isinstance(target, Preset) else target
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise ConfigError(f"it gave {type(target).__name__}, not a Preset or a list of Presets")
    out = []
    for item in items:
        if not isinstance(item, Preset):
            raise ConfigError(f"it gave a {type(item).__name__} where a Preset was expected")
        _check_preset(item)
        out.append(item)
    return out


def _check_preset(preset: Preset) -> None:
    """Refuse a preset the trainer could not run, naming the missing or unknown field."""
    cls = preset.config_class
    if not (isinstance(cls, type) and issubclass(cls, TrainConfig)):
        raise ConfigError(
            f"algorithm {preset.name!r}: config_class {cls!r} does not subclass "
            "algorithms.config.TrainConfig, so it lacks the trainer's fields"
        )
    if not dataclasses.is_dataclass(cls):
        raise ConfigError(f"algorithm {preset.name!r}: {cls.__name__} is not a @dataclass")
    names = {f.name for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in names:
            raise ConfigError(
                f"algorithm {preset.name!r}: {cls.__name__} lacks the field {f.name!r} the "
                "trainer needs"
            )
    if cls.build_objective is TrainConfig.build_objective:
        raise ConfigError(
            f"algorithm {preset.name!r}: {cls.__name__} does not override build_objective(), "
            "so the trainer would have no loss to train"
        )
    try:
        fields = flat_fields(cls)
    except ConfigError as e:
        raise ConfigError(f"algorithm {preset.name!r}: {e}") from None
    unknown = sorted(k for k in preset.values if k.replace("-", "_") not in fields)
    if unknown:
        raise ConfigError(
            f"algorithm {preset.name!r}: its values name {unknown}, which are not fields of "
            f"{cls.__name__}"
        )


def _load(label: str, value: str | None, load: Callable[[], Any]) -> None:
    try:
        found = _as_presets(load(), label)
        clash = [p.name for p in found if p.name in _registry.presets]
        dupes = sorted({p.name for p in found if [q.name for q in found].count(p.name) > 1})
        if clash or dupes:
            names = clash or dupes
            other = _registry.owners.get(names[0], label)
            raise ConfigError(
                f"it registers {names} already registered by {other!r}; rename the algorithm"
            )
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # SystemExit or any error: skip this plugin only
        where = f" (entry point {value!r})" if value else ""
        message = (
            f"rlrf algorithm plugin {label!r}{where} failed to load: {_describe(e)}. Its "
            "algorithms are unavailable; fix or uninstall that package"
        )
        _registry.errors[label] = message
        warnings.warn(message, AlgorithmPluginWarning, stacklevel=3)
        return
    for p in found:  # all or nothing: only a plugin that loaded whole registers
        _registry.presets[p.name] = p
        _registry.owners[p.name] = label


def _ensure_loaded() -> None:
    if _registry.loaded:
        return
    _registry.loaded = True
    for label, target in _BUILTINS:
        module, _, attr = target.partition(":")
        _load(label, None, lambda m=module, a=attr: getattr(importlib.import_module(m), a))
    eps = sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name
    )
    for ep in eps:
        dist = ep.dist.name if ep.dist is not None else "<unknown distribution>"
        _load(f"{dist}:{ep.name}", ep.value, ep.load)


def reload_plugins() -> None:
    """Forget what was loaded; the next lookup loads the built-ins and plugins again."""
    global _registry
    _registry = _Registry()


def presets() -> dict[str, Preset]:
    """Every installed algorithm by name, built-ins first (loads plugins on first call)."""
    _ensure_loaded()
    return dict(_registry.presets)


def plugin_errors() -> dict[str, str]:
    """The algorithm plugins that failed to load, by ``distribution:entry-point``."""
    _ensure_loaded()
    return dict(_registry.errors)


def get_preset(name: str, *, where: str = "") -> Preset:
    """Return the installed algorithm ``name``.

    Raises:
        ConfigError: it is not installed, with "did you mean" and the installed names, and
            the failure of a plugin that would have registered it.

    """
    found = presets()
    if name in found:
        return found[name]
    prefix = f"{where}: " if where else ""
    close = difflib.get_close_matches(name, list(found), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    broken = [m for label, m in _registry.errors.items() if label.split(":")[-1] == name]
    failed = f" ({broken[0]})" if broken else ""
    raise ConfigError(
        f"{prefix}algorithm {name!r} is not one of the installed algorithms "
        f"{sorted(found)}{hint}{failed}"
    )


def _foreign_options(cls: type[TrainConfig]) -> dict[str, list[str]]:
    """Option names that other installed algorithms have and ``cls`` lacks -> their names."""
    own = set(flat_fields(cls))
    out: dict[str, list[str]] = {}
    for name, p in presets().items():
        for option in flat_fields(p.config_class):
            if option not in own:
                out.setdefault(option, []).append(name)
    return out


def _foreign_sections(cls: type[TrainConfig]) -> dict[str, list[str]]:
    own = set(sections(cls))
    out: dict[str, list[str]] = {}
    for name, p in presets().items():
        for section in sections(p.config_class):
            if section not in own:
                out.setdefault(section, []).append(name)
    return out


def build_config(
    algorithm: str, values: Mapping[str, Any], *, where: str = "the command line"
) -> TrainConfig:
    """Build the config of a preset with flat (or sectioned) field ``values`` over it.

    Raises:
        ConfigError: an unknown algorithm, an option or section that belongs to another
            installed algorithm (naming it), or an invalid value.

    """
    preset = get_preset(algorithm)
    cls = preset.config_class
    own_sections = sections(cls)
    own_fields = flat_fields(cls)
    for key, value in values.items():
        key = key.replace("-", "_")
        if isinstance(value, dict) and key not in own_sections and key not in own_fields:
            users = _foreign_sections(cls).get(key)
            if users:
                raise ConfigError(
                    f"{where}: section {key!r} configures {', '.join(users)}; algorithm "
                    f"{algorithm!r} does not use it (its sections: {', '.join(own_sections)})"
                )
            raise ConfigError(
                f"{where}: section {key!r} belongs to no installed algorithm (installed: "
                f"{', '.join(sorted(presets()))}); install the package that provides it or "
                "remove the section"
            )
    flat = _flatten(values, own_sections)
    foreign = _foreign_options(cls)
    bad = sorted(k for k in flat if k in foreign)
    if bad:
        users = sorted({u for k in bad for u in foreign[k]})
        raise ConfigError(
            f"{bad} are options of {', '.join(users)}; algorithm {algorithm!r} does not use them"
        )
    return config_from_dict(cls, {**preset.values, **flat}, where=where)


def read_yaml_config(path: str | Path) -> tuple[str | None, dict[str, Any]]:
    """Read a YAML config file: its ``algorithm`` (an installed name, or None) and its fields."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config file: {e}") from None
    data = load_yaml(text, path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of field names to values")
    algorithm = data.pop("algorithm", None)
    if algorithm is not None:
        if not isinstance(algorithm, str):
            raise ConfigError(f"{path}: algorithm must be a name, got {algorithm!r}")
        get_preset(algorithm, where=str(path))
    return algorithm, data


def _loss_config_algorithm(config: object) -> str:
    """The first installed algorithm whose own (first) section is ``config``'s type."""
    for name, p in presets().items():
        own = list(sections(p.config_class).values())
        if own and type(config) is own[0]:
            return name
    raise ConfigError(
        f"no installed algorithm is configured by a {type(config).__name__}; pass algorithm= "
        "or a full train config"
    )


def resolve_config(
    config: TrainConfig | object | str | Path | None = None,
    *,
    algorithm: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    where: str = "train() keyword arguments",
) -> TrainConfig:
    """Turn what an entry point was given into a train config; every entry point calls this.

    Args:
        config: a full train config (used as is); an algorithm's options section (e.g.
            ``GRPOConfig`` / ``SDPOConfig``: the algorithm it configures supplies the
            training options, the preset a config remembers in ``preset`` included); a YAML
            file path (its ``algorithm:`` key picks the preset); or None (the preset alone).
        algorithm: the preset name when ``config`` does not say (default
            :data:`DEFAULT_ALGORITHM`); a YAML file's ``algorithm:`` key wins over it, an
            explicit ``--algo`` flag is passed here by the command line and wins over the file.
        overrides: flat field values applied last (``{"lr": 1e-5, "top_k": 100}``).
        where: named in error messages.

    """
    overrides = dict(overrides or {})
    if isinstance(config, TrainConfig):
        if not overrides:
            return config
        merged = {**_as_flat(config), **_flatten(overrides, sections(type(config)))}
        return config_from_dict(type(config), merged, where=where)
    if isinstance(config, (str, Path)):
        file_algorithm, values = read_yaml_config(config)
        name = algorithm or file_algorithm or DEFAULT_ALGORITHM
        # validate the file's names on their own, so the error names the file
        build_config(name, values, where=str(config))
        own = sections(get_preset(name).config_class)
        return build_config(
            name, {**_flatten(values, own), **_flatten(overrides, own)}, where=where
        )
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        name = getattr(config, "preset", None) or algorithm or _loss_config_algorithm(config)
        preset = get_preset(name)
        section = next(
            (s for s, t in sections(preset.config_class).items() if type(config) is t), None
        )
        if section is None:
            raise ConfigError(
                f"a {type(config).__name__} cannot configure algorithm {name!r}; pass "
                f"algorithm= matching it or a full train config"
            )
        own = sections(preset.config_class)
        values = {**dataclasses.asdict(config), **_flatten(overrides, own)}
        return build_config(name, values, where=where)
    if config is None:
        return build_config(algorithm or DEFAULT_ALGORITHM, overrides, where=where)
    raise ConfigError(f"config must be a config dataclass, got {type(config).__name__}")


def segment_changes(
    saved: TrainConfig, given: TrainConfig, *, source: str, where: str
) -> dict[str, dict[str, Any]]:
    """What ``given`` changes in the run ``saved`` describes: ``{field: {"saved", "given"}}``.

    A resumed run continues the run in its folder, so only ``segment_fields`` (how long it
    runs, evaluation and checkpoint cadence, display, memory) may change; ``resume`` itself
    is not listed.

    Raises:
        ConfigError: ``given`` is another algorithm, or changes any other field (the env,
            the model, the learning rate: anything that changes the math), naming every such
            field with its saved and given values.

    """
    if type(given) is not type(saved) or given.algorithm != saved.algorithm:
        raise ConfigError(
            f"{where}: resume continues the {saved.algorithm!r} run saved in {source}, but "
            f"the algorithm given is {given.algorithm!r} ({type(given).__name__}); drop "
            "--algo / algorithm=, or start the new run in another output_dir"
        )
    old, new = _as_flat(saved), _as_flat(given)
    allowed = type(saved).segment_fields
    changed = {k: {"saved": old[k], "given": new[k]} for k in old if old[k] != new[k]}
    refused = {k: v for k, v in changed.items() if k not in allowed}
    if refused:
        listed = "; ".join(
            f"{k}: saved {v['saved']!r}, given {v['given']!r}" for k, v in sorted(refused.items())
        )
        raise ConfigError(
            f"{where}: resume continues the run saved in {source}, and these would change "
            f"what it computes: {listed}. Drop them (the saved values are used), or start a "
            "new run in another output_dir. Only these may change between segments: "
            f"{', '.join(sorted(allowed))}"
        )
    changed.pop("resume", None)
    return changed


def resume_config(
    output_dir: str | Path,
    *,
    algorithm: str | None = None,
    config: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    where: str = "train() keyword arguments",
) -> TrainConfig:
    """The config that continues the run in ``output_dir``: its ``config.yaml`` is the base.

    What is given (``algorithm``, a YAML file's values, ``overrides``) may only restate the
    saved values or change a segment field (:func:`segment_changes`); the trainer records
    each change in ``config_changes.jsonl``.

    Raises:
        ConfigError: ``output_dir`` holds no ``config.yaml``, or something given would change
            the run (another env, algorithm, model, learning rate ...), naming the saved and
            the given values.

    """
    path = Path(output_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"{where}: resume=True but {path} does not exist, so {output_dir} holds no run to "
            "continue; point output_dir at the run's folder (the one holding config.yaml and "
            "checkpoints/), or set resume: false to start a new run there"
        )
    saved_name, saved_values = read_yaml_config(path)
    saved = build_config(saved_name or DEFAULT_ALGORITHM, saved_values, where=str(path))
    own = sections(type(saved))
    given: dict[str, Any] = {}
    name = algorithm
    if config is not None:
        file_algorithm, values = read_yaml_config(config)
        name = algorithm or file_algorithm
        given.update(_flatten(values, own))
    given.update(_flatten(overrides or {}, own))
    if name is not None:
        preset = get_preset(name, where=where)
        if preset.config_class is not type(saved):
            raise ConfigError(
                f"{where}: resume continues the {saved.algorithm!r} run saved in {path}, but "
                f"the algorithm given is {name!r}; drop --algo / algorithm=, or start the new "
                "run in another output_dir"
            )
        if name != saved_name:  # a sibling preset (sdpo-srf of sdpo): its values are given
            given = {**_flatten(dict(preset.values), own), **given}
    merged = {**_as_flat(saved), **given, "resume": True}
    resumed = config_from_dict(type(saved), merged, where=where)
    segment_changes(saved, resumed, source=str(path), where=where)
    return resumed


def _flatten(values: Mapping[str, Any], own_sections: Mapping[str, type]) -> dict[str, Any]:
    """Flat field names (a config's sections merged in; dashes as underscores)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key in own_sections and isinstance(value, dict):
            out.update({k.replace("-", "_"): v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _as_flat(cfg: TrainConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update({sf.name: getattr(value, sf.name) for sf in dataclasses.fields(value)})
        else:
            out[f.name] = value
    return out
