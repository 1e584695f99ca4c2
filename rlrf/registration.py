"""The environment registry: ``register``, ``make``, ``spec``, and third-party plugins.

Ids have the form ``namespace/Name-vN`` (``rlrf/Code-v0``, ``acme/Sorting-v2``).
``make("acme/Sorting")`` without a version resolves to the highest registered version.
Entry points are ``"module:Class"`` strings (imported only by ``make``) or callables.

Third-party packages declare, in their ``pyproject.toml``::

    [project.entry-points."rlrf.envs"]
    acme = "acme_envs:register_envs"     # a callable that calls rlrf.register(...)
    # or: acme = "acme_envs.registration" (a module whose import registers the envs)

Plugins are loaded on the first lookup (``make``, ``spec``, iterating the registry), never
at ``import rlrf``. A broken plugin (any exception at import or registration, ``SystemExit``
and other ``BaseException`` subclasses included, even one whose message cannot be rendered)
is reported by distribution and entry-point name in a :class:`PluginWarning` and in the "not
found" error, without affecting the other envs. A plugin's registrations are all-or-nothing:
when it fails, every id it registered (or replaced) is restored to what it was before it
loaded. Only ``KeyboardInterrupt`` stops the loading, after that rollback. ``override=True``
on one of the ``rlrf/`` ids that ship with rlrf warns (:class:`BuiltinOverrideWarning`),
whoever does it; so does a plugin registering a newer version of one (``rlrf/Arithmetic-v1``),
which would change what the unversioned ``make("rlrf/Arithmetic")`` returns.

Registered ids are also registered with Gymnasium, so ``gymnasium.make(id)`` works once rlrf
is imported; ``gymnasium.make("rlrf.plugins:acme/Sorting-v0")`` loads the plugins first.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from rlrf.env import RLRFEnv
from rlrf.errors import (
    EntryPointError,
    EnvError,
    EnvNotFoundError,
    InvalidEnvIdError,
    RegistrationError,
    RLRFWarning,
)

__all__ = [
    "BUILTIN_NAMESPACE",
    "ENTRY_POINT_GROUP",
    "BuiltinOverrideWarning",
    "EnvSpec",
    "PluginWarning",
    "load_plugins",
    "make",
    "pprint_registry",
    "register",
    "registry",
    "spec",
]

#: The entry-point group third-party packages use to register their environments.
ENTRY_POINT_GROUP = "rlrf.envs"

_ID_RE = re.compile(
    r"^(?P<namespace>[A-Za-z0-9_.\-]+)/(?P<name>[A-Za-z0-9_.\-]+?)(?:-v(?P<version>\d+))?$"
)


#: The namespace of the envs that ship with rlrf; replacing one of them warns.
BUILTIN_NAMESPACE = "rlrf"


class PluginWarning(RLRFWarning):
    """A third-party ``rlrf.envs`` entry point failed to load; other envs are unaffected."""


class BuiltinOverrideWarning(RLRFWarning):
    """A built-in env was replaced, or its unversioned id now makes a plugin's env.

    ``override=True`` on a built-in id, or a plugin registering a newer version of one.
    """


@dataclass(frozen=True)
class EnvSpec:
    """How to build one registered environment.

    Attributes:
        id: The full id, ``namespace/Name-vN``.
        entry_point: ``"module:Class"`` or a callable returning an :class:`RLRFEnv`.
        kwargs: Default constructor keyword arguments (``make`` kwargs override them).
        max_turns: Overrides the env's ``max_turns`` when set.
        description: One line shown by ``rlrf envs``.
        plugin: ``"distribution:entry-point"`` for envs registered by a plugin.

    """

    id: str
    entry_point: str | Callable[..., RLRFEnv]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    max_turns: int | None = None
    description: str = ""
    plugin: str | None = None

    @property
    def namespace(self) -> str:
        """The part before ``/``."""
        return _parse_id(self.id)[0]

    @property
    def name(self) -> str:
        """The name, without namespace and version."""
        return _parse_id(self.id)[1]

    @property
    def version(self) -> int | None:
        """The ``N`` of ``-vN``, or ``None`` for an unversioned id."""
        return _parse_id(self.id)[2]

    def make(self, **kwargs: Any) -> RLRFEnv:
        """Instantiate the env with ``{**self.kwargs, **kwargs}``."""
        factory = _load_entry_point(self)
        merged = {**self.kwargs, **kwargs}
        try:
            env = factory(**merged)
        except TypeError as e:
            raise EnvError(
                f"Creating {self.id} with kwargs {sorted(merged)} failed: {e}. Check the "
                f"keyword arguments against {self.entry_point!r}'s constructor."
            ) from e
        if not isinstance(env, RLRFEnv):
            raise EnvError(
                f"Entry point {self.entry_point!r} of {self.id} returned "
                f"{type(env).__name__}, not an rlrf.RLRFEnv: subclass rlrf.RLRFEnv"
            )
        env._rlrf_id = self.id
        if self.max_turns is not None:
            env.max_turns = self.max_turns
        return env


def _parse_id(env_id: str) -> tuple[str, str, int | None]:
    m = _ID_RE.match(env_id) if isinstance(env_id, str) else None
    if m is None:
        raise InvalidEnvIdError(
            f"Env id {env_id!r} is malformed: expected 'namespace/Name-vN' "
            "(letters, digits, '_', '.', '-'), for example 'acme/Sorting-v0'"
        )
    version = m.group("version")
    return m.group("namespace"), m.group("name"), None if version is None else int(version)


def _load_entry_point(env_spec: EnvSpec) -> Callable[..., RLRFEnv]:
    ep = env_spec.entry_point
    if callable(ep):
        return ep
    module_name, _, attr = ep.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise EntryPointError(
            f"Env {env_spec.id}: cannot import module {module_name!r} of entry point "
            f"{ep!r} ({type(e).__name__}: {e}). Is the package that provides it installed?"
        ) from e
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as e:
        raise EntryPointError(
            f"Env {env_spec.id}: module {module_name!r} has no attribute {attr!r} "
            f"(entry point {ep!r}); fix the name passed to rlrf.register"
        ) from e
    return obj  # type: ignore[return-value]


class _Registry(Mapping[str, EnvSpec]):
    """A read-only view of the registered specs; lookups load plugins first."""

    def __init__(self) -> None:
        self._specs: dict[str, EnvSpec] = {}
        self.plugin_errors: dict[str, str] = {}
        self._plugins_loaded = False
        self._loading_plugin: str | None = None

    def __getitem__(self, env_id: str) -> EnvSpec:
        load_plugins()
        return self._specs[env_id]

    def __iter__(self) -> Iterator[str]:
        load_plugins()
        return iter(sorted(self._specs))

    def __len__(self) -> int:
        load_plugins()
        return len(self._specs)


#: All registered environment specs, by id (a read-only mapping).
registry = _Registry()


def register(
    id: str,
    entry_point: str | Callable[..., RLRFEnv],
    *,
    kwargs: Mapping[str, Any] | None = None,
    max_turns: int | None = None,
    description: str = "",
    override: bool = False,
) -> EnvSpec:
    """Register an environment under ``id`` (``namespace/Name-vN``).

    Args:
        id: The id, e.g. ``"acme/Sorting-v0"``.
        entry_point: ``"module:Class"`` (imported by ``make``, not now) or a callable.
        kwargs: Default keyword arguments for the constructor.
        max_turns: Overrides the env's ``max_turns``.
        description: One line for ``rlrf envs``.
        override: Replace an existing registration instead of raising.

    Returns:
        The new :class:`EnvSpec`.

    """
    namespace, name, version = _parse_id(id)
    if version is None:
        raise InvalidEnvIdError(
            f"Env id {id!r} has no version: register it as '{namespace}/{name}-v0'"
        )
    if isinstance(entry_point, str):
        module_name, sep, attr = entry_point.partition(":")
        if not sep or not module_name or not attr:
            raise RegistrationError(
                f"Entry point {entry_point!r} for {id} must look like 'package.module:Class'"
            )
    elif not callable(entry_point):
        raise RegistrationError(
            f"Entry point for {id} must be a 'module:Class' string or a callable, "
            f"got {type(entry_point).__name__}"
        )
    if max_turns is not None and (not isinstance(max_turns, int) or max_turns < 1):
        raise RegistrationError(f"max_turns for {id} must be a positive int, got {max_turns!r}")
    old = registry._specs.get(id)
    if old is not None and not override:
        raise RegistrationError(
            f"Env {id} is already registered (entry point "
            f"{old.entry_point!r}); pass override=True to replace it, "
            "or bump the version"
        )
    if old is not None and namespace == BUILTIN_NAMESPACE and old.plugin is None:
        by = f"plugin {registry._loading_plugin}" if registry._loading_plugin else "a register call"
        warnings.warn(
            f"{by} replaced the built-in env {id} (entry point {old.entry_point!r}) with "
            f"{entry_point!r} (override=True); register under your own namespace instead, "
            f"e.g. 'yourname/{name}-v{version}'",
            BuiltinOverrideWarning,
            stacklevel=2,
        )
    elif old is None and namespace == BUILTIN_NAMESPACE and registry._loading_plugin:
        # Only a plugin: rlrf's own ids and a user's explicit register call are seen where
        # they are written, a plugin's happen at a distance, on the first lookup.
        shadowed = _latest_version(namespace, name)
        if shadowed is not None and shadowed.plugin is None and version > (shadowed.version or 0):
            warnings.warn(
                f"plugin {registry._loading_plugin} registered {id}, so "
                f"make('{namespace}/{name}') now makes its {entry_point!r} instead of the "
                f"built-in {shadowed.id}; register under your own namespace instead, "
                f"e.g. 'yourname/{name}-v{version}'",
                BuiltinOverrideWarning,
                stacklevel=2,
            )
    new = EnvSpec(
        id=id,
        entry_point=entry_point,
        kwargs=dict(kwargs or {}),
        max_turns=max_turns,
        description=description,
        plugin=registry._loading_plugin,
    )
    registry._specs[id] = new
    _register_with_gymnasium(new)
    return new


def _latest_version(namespace: str, name: str) -> EnvSpec | None:
    """The spec an unversioned ``namespace/name`` resolves to now, if any."""
    found = [s for s in registry._specs.values() if s.namespace == namespace and s.name == name]
    return max(found, key=lambda s: s.version or 0, default=None)


def _gymnasium_factory(env_id: str) -> Callable[..., RLRFEnv]:
    def create(**kwargs: Any) -> RLRFEnv:
        return make(env_id, **kwargs)

    return create


def _register_with_gymnasium(env_spec: EnvSpec) -> None:
    import gymnasium

    gymnasium.registry.pop(env_spec.id, None)
    gymnasium.register(
        id=env_spec.id,
        entry_point=_gymnasium_factory(env_spec.id),
        max_episode_steps=env_spec.max_turns,
    )


def load_plugins(*, force: bool = False) -> dict[str, str]:
    """Load every installed ``rlrf.envs`` entry point once; return the failures by name.

    Called automatically on the first registry lookup. A plugin that fails to import or
    raises anything but ``KeyboardInterrupt`` is rolled back, reported
    (:class:`PluginWarning`) and skipped; the others still load.
    """
    if (registry._plugins_loaded and not force) or registry._loading_plugin is not None:
        return dict(registry.plugin_errors)
    registry._plugins_loaded = True
    failed: list[str] = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "<unknown distribution>"
        label = f"{dist}:{ep.name}"
        registry._loading_plugin = label
        before = dict(registry._specs)
        try:
            target = ep.load()
            if callable(target) and not isinstance(target, type(sys)):
                target()
        except BaseException as e:
            undone = _restore_specs(before)
            if isinstance(e, KeyboardInterrupt):  # the user wants out; all-or-nothing still
                raise
            message = (
                f"rlrf plugin {ep.name!r} from distribution {dist!r} (entry point "
                f"{ep.value!r}) failed to load: {_describe(e)}. Its envs are unavailable"
                + (f" ({', '.join(undone)} rolled back)" if undone else "")
                + "; fix or uninstall that package"
            )
            registry.plugin_errors[label] = message
            failed.append(message)
        finally:
            registry._loading_plugin = None
    # Warned once every plugin is in: a filter that turns warnings into errors cannot stop
    # the plugins after a broken one from loading.
    for message in failed:
        warnings.warn(message, PluginWarning, stacklevel=2)
    return dict(registry.plugin_errors)


def _describe(e: BaseException) -> str:
    """``"Type: message"`` for a plugin's exception, whatever its ``__str__`` does."""
    try:
        text = f"{type(e).__name__}: {e}"
    except KeyboardInterrupt:
        raise
    except BaseException as inner:  # a plugin's __str__ is the plugin's code too
        try:
            name = type(e).__qualname__
        except BaseException:
            name = "an exception"
        return f"{name} (its message could not be rendered: {type(inner).__name__})"
    return text if len(text) <= 500 else text[:500] + "... (cut)"


def _restore_specs(before: dict[str, EnvSpec]) -> list[str]:
    """Put the registry (and Gymnasium's) back to ``before``; return the ids that changed."""
    changed = sorted(
        i for i in set(before) | set(registry._specs) if before.get(i) is not registry._specs.get(i)
    )
    for env_id in changed:
        if env_id in before:
            registry._specs[env_id] = before[env_id]
            _register_with_gymnasium(before[env_id])
        else:
            del registry._specs[env_id]
            import gymnasium

            gymnasium.registry.pop(env_id, None)
    return changed


#: ``make("openenv:http://host:port")`` makes an env over an OpenEnv server (rlrf.remote).
REMOTE_PREFIX = "openenv:"


def _remote_spec(env_id: str) -> EnvSpec:
    def factory(**kwargs: Any) -> RLRFEnv:
        from rlrf.remote.client import make_remote  # imported only when asked for

        return make_remote(env_id, **kwargs)

    return EnvSpec(id=env_id, entry_point=factory, description="an OpenEnv server")


def spec(env_id: str) -> EnvSpec:
    """Return the :class:`EnvSpec` of ``env_id``; without ``-vN``, the latest version.

    ``"openenv:http://host:port"`` (several URLs separated by commas) names OpenEnv servers
    instead: its spec makes a :class:`rlrf.remote.OpenEnvEnv`.
    """
    if isinstance(env_id, str) and env_id.startswith(REMOTE_PREFIX):
        return _remote_spec(env_id)
    namespace, name, version = _parse_id(env_id)
    load_plugins()
    specs = registry._specs
    if env_id in specs:
        return specs[env_id]
    versions = sorted(
        (s.version, s) for s in specs.values() if s.namespace == namespace and s.name == name
    )
    if version is None and versions:
        return versions[-1][1]
    if versions:
        have = ", ".join(s.id for _, s in versions)
        raise EnvNotFoundError(f"Env {env_id} is not registered; available versions: {have}")
    message = f"No env registered with id {env_id!r}."
    close = difflib.get_close_matches(env_id, list(specs), n=3, cutoff=0.75)
    if not close:
        lowered = {i.lower(): i for i in specs}
        close = [lowered[i] for i in difflib.get_close_matches(env_id.lower(), lowered, n=3)]
    if close:
        message += " Did you mean: " + ", ".join(repr(c) for c in close) + "?"
    else:
        message += " Run `rlrf envs` to list the registered ids."
    if registry.plugin_errors:
        message += " Note: some plugins failed to load: " + "; ".join(
            registry.plugin_errors.values()
        )
    raise EnvNotFoundError(message)


def make(env_id: str, **kwargs: Any) -> RLRFEnv:
    """Create the env registered as ``env_id``; ``kwargs`` override the registered ones.

    >>> env = make("rlrf/Arithmetic-v0")
    >>> env.env_id
    'rlrf/Arithmetic-v0'
    """
    return spec(env_id).make(**kwargs)


def pprint_registry(file: TextIO | None = None) -> None:
    """Print the registered ids grouped by namespace, with their descriptions."""
    out = file or sys.stdout
    by_ns: dict[str, list[EnvSpec]] = {}
    for env_id in registry:
        s = registry[env_id]
        by_ns.setdefault(s.namespace, []).append(s)
    width = max((len(i) for i in registry), default=10)
    for ns in sorted(by_ns):
        print(f"===== {ns} =====", file=out)
        for s in by_ns[ns]:
            origin = f"  [plugin {s.plugin}]" if s.plugin else ""
            print(f"{s.id:<{width}}  {s.description}{origin}", file=out)
    for message in registry.plugin_errors.values():
        print(f"(!) {message}", file=out)
