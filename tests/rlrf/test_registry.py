import subprocess
import sys
import textwrap
import warnings

import gymnasium
import pytest

import rlrf
from rlrf.errors import (
    EntryPointError,
    EnvError,
    EnvNotFoundError,
    InvalidEnvIdError,
    RegistrationError,
)
from rlrf.registration import BuiltinOverrideWarning


@pytest.fixture
def fresh_ids():
    """Remove the ids a test registers, from rlrf's and gymnasium's registries."""
    added = []
    yield added
    for env_id in added:
        rlrf.registry._specs.pop(env_id, None)
        gymnasium.registry.pop(env_id, None)


def _reg(fresh_ids, env_id, entry="tests.toy_envs:EchoEnv", **kw):
    fresh_ids.append(env_id)
    return rlrf.register(env_id, entry, **kw)


def test_register_make_and_kwargs(fresh_ids):
    _reg(fresh_ids, "test/Echo-v0", kwargs={"n_train": 3}, description="echo")
    env = rlrf.make("test/Echo-v0")
    assert env.env_id == "test/Echo-v0" and list(env.task_ids()) == ["t0", "t1", "t2"]
    assert len(rlrf.make("test/Echo-v0", n_train=1).task_ids()) == 1
    assert rlrf.spec("test/Echo-v0").description == "echo"


def test_version_resolution(fresh_ids):
    _reg(fresh_ids, "test/Echo-v0")
    _reg(fresh_ids, "test/Echo-v2", kwargs={"n_train": 2})
    assert rlrf.spec("test/Echo").id == "test/Echo-v2"
    with pytest.raises(EnvNotFoundError, match="available versions: test/Echo-v0, test/Echo-v2"):
        rlrf.spec("test/Echo-v1")


def test_did_you_mean():
    with pytest.raises(EnvNotFoundError, match=r"Did you mean: 'rlrf/Arithmetic-v0'\?"):
        rlrf.make("rlrf/Arithmatic-v0")
    with pytest.raises(EnvNotFoundError, match="Run `rlrf envs`"):
        rlrf.make("zzz/Qqqqqq-v0")


@pytest.mark.parametrize("bad", ["Echo", "a/b c-v0", "/Echo-v0", ""])
def test_malformed_ids(bad):
    with pytest.raises(InvalidEnvIdError, match="expected 'namespace/Name-vN'"):
        rlrf.make(bad)


def test_register_needs_a_version_and_valid_entry_point(fresh_ids):
    with pytest.raises(InvalidEnvIdError, match="register it as 'test/Echo-v0'"):
        rlrf.register("test/Echo", "tests.toy_envs:EchoEnv")
    with pytest.raises(RegistrationError, match="must look like 'package.module:Class'"):
        rlrf.register("test/Echo-v0", "tests.toy_envs.EchoEnv")


def test_duplicate_registration(fresh_ids):
    _reg(fresh_ids, "test/Echo-v0")
    with pytest.raises(RegistrationError, match="already registered.*override=True"):
        rlrf.register("test/Echo-v0", "tests.toy_envs:CountdownEnv")
    rlrf.register("test/Echo-v0", "tests.toy_envs:CountdownEnv", override=True)
    assert rlrf.make("test/Echo-v0").max_turns == 3


def test_entry_point_errors_name_the_env(fresh_ids):
    _reg(fresh_ids, "test/Missing-v0", "no_such_module_xyz:Env")
    with pytest.raises(
        EntryPointError, match=r"Env test/Missing-v0: cannot import module 'no_such_module_xyz'"
    ):
        rlrf.make("test/Missing-v0")
    _reg(fresh_ids, "test/NoAttr-v0", "tests.toy_envs:Nope")
    with pytest.raises(EntryPointError, match="has no attribute 'Nope'"):
        rlrf.make("test/NoAttr-v0")
    _reg(fresh_ids, "test/NotEnv-v0", "collections:OrderedDict")
    with pytest.raises(EnvError, match="returned OrderedDict, not an rlrf.RLRFEnv"):
        rlrf.make("test/NotEnv-v0")
    _reg(fresh_ids, "test/BadKw-v0", kwargs={"colour": 1})
    with pytest.raises(EnvError, match=r"Creating test/BadKw-v0 with kwargs \['colour'\] failed"):
        rlrf.make("test/BadKw-v0")


def test_max_turns_override(fresh_ids):
    _reg(fresh_ids, "test/Count-v0", "tests.toy_envs:CountdownEnv", max_turns=1)
    env = rlrf.make("test/Count-v0")
    env.reset(seed=0)
    assert env.step_result("wait").truncated


def test_gymnasium_make(fresh_ids):
    _reg(fresh_ids, "test/Echo-v0")
    env = gymnasium.make("test/Echo-v0", n_train=2)
    obs, info = env.reset(seed=0)
    assert info["task_id"] in {"t0", "t1"}
    _, reward, terminated, _, info = env.step(info["task_id"])
    assert reward == 1.0 and terminated and info["feedback"] == ()


def test_pprint_registry(capsys):
    rlrf.pprint_registry()
    out = capsys.readouterr().out
    assert "===== rlrf =====" in out and "rlrf/Arithmetic-v0" in out


# ---- third-party plugins: genuine .dist-info folders on sys.path, fresh interpreters ----


def _make_dist(root, dist, module, ep_value, source):
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[rlrf.envs]\n{module} = {ep_value}\n")


ACME = """
    import rlrf
    from rlrf import Outcome, RLRFEnv

    class Sorting(RLRFEnv):
        def task_ids(self, split="train"):
            return ["3 1 2"]
        def prompt(self, task_id):
            return [{"role": "user", "content": "Sort: " + task_id}]
        def evaluate(self, task_id, response, history=()):
            return Outcome(float(response.split() == sorted(task_id.split())))

    def register_envs():
        rlrf.register("acme/Sorting-v0", "acme_envs:Sorting", description="sort numbers")
"""


def _run(code, path):
    env = {"PYTHONPATH": f"{path}:{sys.path[0]}", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture
def plugin_path(tmp_path):
    _make_dist(tmp_path, "acme-envs", "acme_envs", "acme_envs:register_envs", ACME)
    _make_dist(
        tmp_path,
        "broken-envs",
        "broken_envs",
        "broken_envs:register",
        "raise RuntimeError('boom at import')\n",
    )
    _make_dist(
        tmp_path,
        "module-envs",
        "module_envs",
        "module_envs",
        "import rlrf\nrlrf.register('modns/Mod-v0', 'acme_envs:Sorting')\n",
    )
    return tmp_path


def test_plugins_are_lazy_and_usable_through_rlrf_and_gymnasium(plugin_path):
    proc = _run(
        """
        import sys, warnings
        import rlrf
        assert "acme_envs" not in sys.modules, "plugins must not load at import"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            env = rlrf.make("acme/Sorting-v0")
        assert env.evaluate("3 1 2", "1 2 3").reward == 1.0
        assert rlrf.make("modns/Mod-v0").env_id == "modns/Mod-v0"
        [w] = [w for w in caught if "broken" in str(w.message)]
        print("WARN", w.category.__name__, w.message)
        assert rlrf.spec("acme/Sorting-v0").plugin == "acme-envs:acme_envs"
        import gymnasium
        g = gymnasium.make("acme/Sorting-v0")
        print("GYM", g.reset(seed=0)[1]["task_id"])
    """,
        plugin_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "WARN PluginWarning rlrf plugin 'broken_envs' from distribution 'broken-envs'"
        in proc.stdout
    )
    assert "RuntimeError: boom at import" in proc.stdout
    assert "GYM 3 1 2" in proc.stdout


def test_gymnasium_module_syntax_loads_plugins_without_importing_rlrf(plugin_path):
    proc = _run(
        """
        import warnings; warnings.simplefilter("ignore")
        import gymnasium
        env = gymnasium.make("rlrf.plugins:acme/Sorting-v0")
        print(env.unwrapped.env_id)
    """,
        plugin_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "acme/Sorting-v0"


def test_broken_plugin_is_named_in_not_found_errors(plugin_path):
    proc = _run(
        """
        import warnings; warnings.simplefilter("ignore")
        import rlrf
        try:
            rlrf.make("broken/Thing-v0")
        except rlrf.EnvNotFoundError as e:
            print(e)
    """,
        plugin_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "some plugins failed to load: rlrf plugin 'broken_envs'" in proc.stdout


# ---- hostile plugins (issue 16) -----------------------------------------------------------


@pytest.fixture
def hostile_plugin_path(tmp_path):
    _make_dist(tmp_path, "acme-envs", "acme_envs", "acme_envs:register_envs", ACME)
    _make_dist(
        tmp_path, "exit-envs", "exit_envs", "exit_envs:register", "import sys\nsys.exit(3)\n"
    )
    _make_dist(
        tmp_path,
        "half-envs",
        "half_envs",
        "half_envs:register",
        """
        import rlrf
        def register():
            rlrf.register("half/Good-v0", "acme_envs:Sorting")
            rlrf.register("rlrf/MCQ-v0", "acme_envs:Sorting", override=True)
            raise ValueError("second half failed")
        """,
    )
    _make_dist(
        tmp_path,
        "shadow-envs",
        "shadow_envs",
        "shadow_envs:register",
        """
        import rlrf
        def register():
            rlrf.register("rlrf/Arithmetic-v0", "acme_envs:Sorting", override=True)
        """,
    )
    return tmp_path


def test_plugin_calling_sys_exit_is_reported_by_name_and_nothing_breaks(hostile_plugin_path):
    proc = _run(
        """
        import warnings
        import rlrf
        from rlrf.cli import main
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            env = rlrf.make("acme/Sorting-v0")  # SystemExit(3) ended the process before
        print("MADE", env.env_id)
        for w in caught:
            print("WARN", w.category.__name__, w.message)
        print("ENVS", main(["envs"]))
        print("SAMPLE", main(["sample", "rlrf/MCQ-v0", "--n", "1"]))
        """,
        hostile_plugin_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "MADE acme/Sorting-v0" in out
    assert (
        "WARN PluginWarning rlrf plugin 'exit_envs' from distribution 'exit-envs' "
        "(entry point 'exit_envs:register') failed to load: SystemExit: 3." in out
    )
    assert "ENVS 0" in out and "SAMPLE 0" in out
    assert "(!) rlrf plugin 'exit_envs'" in out  # `rlrf envs` names it too


def test_a_failing_plugin_keeps_none_of_its_registrations(hostile_plugin_path):
    proc = _run(
        """
        import warnings; warnings.simplefilter("ignore")
        import gymnasium, rlrf
        print("IDS", sorted(i for i in rlrf.registry if i.startswith(("half/", "rlrf/MCQ"))))
        print("MCQ", rlrf.spec("rlrf/MCQ-v0").entry_point, rlrf.spec("rlrf/MCQ-v0").plugin)
        print("GYM", "half/Good-v0" in gymnasium.registry)
        print("MADE", type(rlrf.make("rlrf/MCQ-v0")).__name__)
        print("ERR", rlrf.registry.plugin_errors["half-envs:half_envs"])
        """,
        hostile_plugin_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "IDS ['rlrf/MCQ-v0']" in out  # half/Good-v0 was kept before
    assert "MCQ envs.science:MultipleChoiceEnv None" in out  # the override is undone
    assert "GYM False" in out and "MADE MultipleChoiceEnv" in out
    assert "ValueError: second half failed" in out
    assert "(half/Good-v0, rlrf/MCQ-v0 rolled back)" in out


def test_overriding_a_builtin_id_warns(hostile_plugin_path, fresh_ids):
    proc = _run(
        """
        import warnings
        import rlrf
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rlrf.make("acme/Sorting-v0")
        for w in caught:
            print("WARN", w.category.__name__, w.message)
        print("NOW", rlrf.spec("rlrf/Arithmetic-v0").entry_point)
        """,
        hostile_plugin_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        "WARN BuiltinOverrideWarning plugin shadow-envs:shadow_envs replaced the built-in env "
        "rlrf/Arithmetic-v0 (entry point 'envs.arithmetic:ArithmeticEnv') with "
        "'acme_envs:Sorting' (override=True)" in proc.stdout
    )
    assert "NOW acme_envs:Sorting" in proc.stdout  # still allowed, but never silently
    # in-process too, from a plain register call; other namespaces stay silent
    original = rlrf.spec("rlrf/Arithmetic-v0")
    try:
        with pytest.warns(BuiltinOverrideWarning, match="a register call replaced the built-in"):
            rlrf.register("rlrf/Arithmetic-v0", "tests.toy_envs:EchoEnv", override=True)
    finally:
        rlrf.registry._specs["rlrf/Arithmetic-v0"] = original
    _reg(fresh_ids, "test/Echo-v0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rlrf.register("test/Echo-v0", "tests.toy_envs:CountdownEnv", override=True)


# ---- hostile plugins, second round (issue 26) ---------------------------------------------

# Each is loaded from one distribution with a good plugin after it (its entry points load in
# the order they are listed), so a hostile plugin that stops the loading shows.
HOSTILE_2 = {
    "unprintable_envs": """
        import rlrf
        class Unprintable(Exception):
            def __str__(self):
                return str(1 / 0)
        def register():
            rlrf.register("unprintable/Thing-v0", "acme_envs:Sorting")
            raise Unprintable()
        """,
    "base_envs": """
        import rlrf
        class Stop(BaseException):
            pass
        def register():
            rlrf.register("rlrf/Arithmetic-v0", "acme_envs:Sorting", override=True)
            rlrf.register("base/Own-v0", "acme_envs:Sorting")
            raise Stop("not an Exception")
        """,
    "newer_envs": """
        import rlrf
        def register():
            rlrf.register("rlrf/Arithmetic-v1", "acme_envs:Sorting")
        """,
}


def _hostile_dist(root, module):
    _make_dist(root, "hostile-envs", "acme_envs", "acme_envs:register_envs", ACME)
    (root / "hostile_envs-1.0.dist-info" / "entry_points.txt").write_text(
        f"[rlrf.envs]\n{module} = {module}:register\nacme = acme_envs:register_envs\n"
    )
    (root / f"{module}.py").write_text(textwrap.dedent(HOSTILE_2[module]))
    return root


_LOAD_AND_REPORT = """
    import warnings
    import rlrf
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = rlrf.make("rlrf/Arithmetic-v0")
    print("MADE", type(env).__name__)
    for w in caught:
        print("WARN", w.category.__name__, w.message)
    print("IDS", sorted(i for i in rlrf.registry if i.startswith(("unprintable/", "base/"))))
    print("ACME", rlrf.spec("acme/Sorting-v0").plugin)
    print("LATEST", rlrf.spec("rlrf/Arithmetic").id)
"""


def test_a_plugin_whose_exception_cannot_be_printed_breaks_nothing(tmp_path):
    # str(e) raising in the report once escaped make() as ZeroDivisionError and stopped the
    # plugins after it.
    proc = _run(_LOAD_AND_REPORT, _hostile_dist(tmp_path, "unprintable_envs"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MADE ArithmeticEnv" in proc.stdout
    assert (
        "WARN PluginWarning rlrf plugin 'unprintable_envs' from distribution 'hostile-envs' "
        "(entry point 'unprintable_envs:register') "
        "failed to load: Unprintable (its message could not be rendered: ZeroDivisionError). "
        "Its envs are unavailable (unprintable/Thing-v0 rolled back)" in proc.stdout
    )
    assert "ACME hostile-envs:acme" in proc.stdout  # the plugins after it still loaded


def test_a_plugin_raising_a_base_exception_keeps_none_of_its_registrations(tmp_path):
    proc = _run(_LOAD_AND_REPORT, _hostile_dist(tmp_path, "base_envs"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MADE ArithmeticEnv" in proc.stdout  # the override is undone
    assert (
        "failed to load: Stop: not an Exception. Its envs are unavailable "
        "(base/Own-v0, rlrf/Arithmetic-v0 rolled back)" in proc.stdout
    )
    assert "IDS []" in proc.stdout
    assert "ACME hostile-envs:acme" in proc.stdout


def test_a_plugin_shadowing_a_builtins_unversioned_id_warns(tmp_path):
    proc = _run(_LOAD_AND_REPORT, _hostile_dist(tmp_path, "newer_envs"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        "WARN BuiltinOverrideWarning plugin hostile-envs:newer_envs registered "
        "rlrf/Arithmetic-v1, so make('rlrf/Arithmetic') now makes its 'acme_envs:Sorting' "
        "instead of the built-in rlrf/Arithmetic-v0" in proc.stdout
    )
    assert "LATEST rlrf/Arithmetic-v1" in proc.stdout  # still allowed, but never silently


def test_keyboard_interrupt_in_a_plugin_stops_loading_after_its_rollback(tmp_path):
    source = """
        import rlrf
        def register():
            rlrf.register("rlrf/Arithmetic-v0", "acme_envs:Sorting", override=True)
            raise KeyboardInterrupt
        """
    _make_dist(tmp_path, "ctrlc-envs", "ctrlc_envs", "ctrlc_envs:register", source)
    code = """
        import warnings; warnings.simplefilter("ignore")
        import rlrf
        try:
            rlrf.make("rlrf/Arithmetic-v0")
        except KeyboardInterrupt:
            print("INTERRUPTED")
        print("NOW", rlrf.spec("rlrf/Arithmetic-v0").entry_point)
    """
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "INTERRUPTED" in proc.stdout
    assert "NOW envs.arithmetic:ArithmeticEnv" in proc.stdout


def test_no_module_of_rlrf_imports_torch_or_transformers():
    # every module of the core package, not only `import rlrf`: the sampling interface, the
    # CLI and the checker must stay usable without torch
    code = (
        "import importlib, pkgutil, sys, rlrf\n"
        "for m in pkgutil.walk_packages(rlrf.__path__, 'rlrf.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
