"""Plugins: a real package from tests/plugin_pkg, installed with pip, found through entry points.

The package is installed into a temporary target folder (not the shared venv) and used from
subprocesses with that folder on PYTHONPATH, so the test leaves the environment untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN_SRC = Path(__file__).parent / "plugin_pkg"
THINKGYM = Path(sys.executable).parent / "thinkgym"

pytestmark = pytest.mark.slow


def _pip_install(src: Path, target: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def install_plugin(tmp_path: Path, module: str, init_src: str, entry_points: dict[str, dict[str, str]]) -> Path:
    """Build a one-module plugin distribution ``thinkgym-<module>`` (``{group: {name: "mod:attr"}}``)
    and pip-install it into a folder of its own, returned (put it on PYTHONPATH)."""
    pkg = tmp_path / module
    (pkg / f"thinkgym_{module}").mkdir(parents=True)
    (pkg / f"thinkgym_{module}" / "__init__.py").write_text(init_src)
    eps = "".join(f'[project.entry-points."{group}"]\n' + "".join(f'{k} = "{v}"\n' for k, v in names.items())
                  for group, names in entry_points.items())
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "thinkgym-{module}"\nversion = "0.0.1"\n{eps}'
        f'[tool.setuptools]\npackages = ["thinkgym_{module}"]\n'
    )
    site = tmp_path / "site"
    _pip_install(pkg, site)
    return site


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("plugin")
    src = tmp / "src"
    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    target = tmp / "site"
    _pip_install(src, target)
    assert list(target.glob("thinkgym_plugin_demo-*.dist-info/entry_points.txt"))
    return target


def _run(args: list[str], site: Path, timeout: int = 180, **env_kw: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env_kw}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)


def test_plugin_shows_up_in_cli_listings(plugin_site):
    r = _run([str(THINKGYM), "tasks", "--json"], plugin_site)
    assert r.returncode == 0, r.stderr
    tasks = {t["name"]: t for t in json.loads(r.stdout)}
    assert tasks["letter_shift"]["grader"] == "exact_text"
    assert tasks["letter_shift"]["origin"].startswith("plugin thinkgym-plugin-demo")
    assert "arithmetic" in tasks
    r = _run([str(THINKGYM), "envs", "--json"], plugin_site)
    assert r.returncode == 0, r.stderr
    envs = {e["id"]: e for e in json.loads(r.stdout)}
    assert envs["thinkgym/LetterShift-v0"]["task"] == "letter_shift"  # automatic env for a plugin task
    assert envs["demo/LetterShiftRetry-v0"]["kind"] == "MultiTurnEnv"  # env from the plugin's envs group
    r = _run([str(THINKGYM), "tasks"], plugin_site)
    assert r.returncode == 0 and "letter_shift" in r.stdout and "exact_text" in r.stdout
    r = _run([str(THINKGYM), "sample-tasks", "letter_shift", "-n", "1", "--param", "max_shift=1"], plugin_site)
    assert r.returncode == 0 and "Shift each letter" in r.stdout and "by 1 places" in r.stdout


def test_plugin_task_grader_and_envs_usable_via_gymnasium(plugin_site):
    code = r"""
import json
import gymnasium as gym
from gymnasium.utils.env_checker import check_env
import thinkgym.envs
from thinkgym.verifiers import grade, list_graders

assert "exact_text" in list_graders()
env = gym.make("thinkgym/LetterShift-v0")
check_env(env.unwrapped)
obs, info = env.reset(options={"index": 0})
item = info["item"]
ok = env.step(item["metadata"]["solution"])[1]
env.reset(options={"index": 0})
bad = env.step("<think>x</think><answer>zzz</answer>")[1]
retry = gym.make("demo/LetterShiftRetry-v0")
_, rinfo = retry.reset(options={"index": 1})
_, r1, t1, tr1, _ = retry.step("<think>x</think><answer>nope</answer>")
_, r2, t2, tr2, _ = retry.step(rinfo["item"]["metadata"]["solution"])
print(json.dumps({"q": obs, "ok": ok, "bad": bad, "retry": [r1, t1, tr1, r2, t2, tr2],
                  "direct": grade("exact_text", "<answer>abc</answer>", "abc").score}))
"""
    r = _run([sys.executable, "-c", code], plugin_site)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["q"].startswith("Shift each letter of")
    assert out["ok"] == 1.0 and out["bad"] == 0.0 and out["direct"] == 1.0
    assert out["retry"] == [0.0, False, False, 1.0, True, False]


@pytest.mark.parametrize("first", ["import thinkgym_plugin_demo", "from thinkgym.verifiers import grade"])
def test_plugin_works_whichever_module_is_imported_first(plugin_site, tmp_path, first):
    """The plugin imports thinkgym.envs, which registers the envs (plugins included) at import.
    Importing the plugin first, or a grader lookup loading it (as grader worker processes do),
    used to load the half-imported plugin and keep that failure for the whole process."""
    code = first + r"""
import json
import gymnasium as gym
from thinkgym.envs import register_envs
from thinkgym.verifiers import grade

register_envs()
env = gym.make("demo/LetterShiftRetry-v0")
obs, info = env.reset(options={"index": 0})
print(json.dumps({"direct": grade("exact_text", "<answer>abc</answer>", "abc").score,
                  "env": env.step(info["item"]["metadata"]["solution"])[1]}))
"""
    r = _run([sys.executable, "-c", code], plugin_site)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"direct": 1.0, "env": 1.0}
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"completion": "<answer>abc</answer>", "gold": "abc"}) + "\n")
    r = _run([str(THINKGYM), "grade", "-g", "exact_text", "-i", str(rows), "-o", str(tmp_path / "out.jsonl")],
             plugin_site)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out.jsonl").read_text())["score"] == 1.0


def test_name_clash_is_a_clear_error(plugin_site, tmp_path):
    # A second plugin that claims the built-in task name "arithmetic" and the grader "math".
    site = install_plugin(tmp_path, "clash", "from thinkgym.tasks.arithmetic import Countdown as Impostor\n"
                          "def grade_math(completion, gold, **meta):\n    raise AssertionError('never used')\n",
                          {"thinkgym.tasks": {"arithmetic": "thinkgym_clash:Impostor"},
                           "thinkgym.graders": {"math": "thinkgym_clash:grade_math"}})
    # Every entry point that loads the task registry refuses: the CLI (thinkgym.envs registers
    # plugin envs on import, so the clash surfaces as soon as the command table is built) ...
    r = _run([str(THINKGYM), "tasks"], site)
    assert r.returncode != 0
    assert "task source 'arithmetic' is registered twice" in r.stderr.splitlines()[-1]
    assert "by thinkgym.tasks.arithmetic and by plugin thinkgym-clash" in r.stderr
    # ... the task registry itself, and the grader registry.
    r = _run([sys.executable, "-c", "from thinkgym.tasks import TASKS\nTASKS.names()\n"], site)
    assert r.returncode != 0 and "task source 'arithmetic' is registered twice" in r.stderr
    code = "from thinkgym.verifiers import list_graders\nlist_graders()\n"
    r = _run([sys.executable, "-c", code], site)
    assert r.returncode != 0 and "grader 'math' is registered twice" in r.stderr
    # Not only the first lookup: a later one must not quietly use the built-in "math".
    r = _run([sys.executable, "-c", _LOOKUP_TWICE], site)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["error: grader 'math' is registered twice: by thinkgym.verifiers.math_equiv "
                                     "and by plugin thinkgym-clash (thinkgym_clash:grade_math) "
                                     "(to run without it: THINKGYM_DISABLE_PLUGINS=thinkgym-clash)"] * 2


_LOOKUP_TWICE = """
from thinkgym._registry import RegistryError
from thinkgym.verifiers import grade
for _ in range(2):
    try:
        print("graded", grade("math", "<answer>42</answer>", "42").score)
    except RegistryError as e:
        print("error:", e)
"""


def test_plugin_that_fails_to_import_is_a_clear_error(tmp_path):
    site = install_plugin(tmp_path, "broken", "import thinkgym_no_such_dependency\n",
                          {"thinkgym.tasks": {"broken": "thinkgym_broken:Task"},
                           "thinkgym.graders": {"broken": "thinkgym_broken:grade"}})
    why = ("failed to load: ModuleNotFoundError: No module named 'thinkgym_no_such_dependency' "
           "(to run without it: THINKGYM_DISABLE_PLUGINS=thinkgym-broken)")
    # The CLI: one line naming the distribution and the entry point, no traceback.
    r = _run([str(THINKGYM), "tasks"], site)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: plugin thinkgym-broken (thinkgym.tasks: broken = thinkgym_broken:Task) {why}"
    r = _run([str(THINKGYM), "--version"], site)  # the version needs no plugin
    from thinkgym import __version__

    assert r.returncode == 0 and r.stdout.strip() == __version__, r.stderr
    # The way out the message names: skip that distribution (or every plugin), not uninstall it.
    for skip in ("thinkgym-broken", "other, THINKGYM-BROKEN", "1"):
        r = _run([str(THINKGYM), "tasks"], site, THINKGYM_DISABLE_PLUGINS=skip)
        assert r.returncode == 0 and "arithmetic" in r.stdout and "broken" not in r.stdout, (skip, r.stderr)
    assert _run([str(THINKGYM), "tasks"], site, THINKGYM_DISABLE_PLUGINS="thinkgym-other").returncode == 2
    # In-process, every lookup fails, not just the first.
    r = _run([sys.executable, "-c", _LOOKUP_TWICE], site)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"error: plugin thinkgym-broken (thinkgym.graders: broken = thinkgym_broken:grade) {why}"] * 2
