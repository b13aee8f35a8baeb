"""The source behind an env id is the one the env serves: its registered task seed, size and params.

Envs are registered for real (``ENVS.add`` + ``register_envs``, and in one test through an
entry point of an installed-looking plugin), then sampled through ``task_source_for_env``, the
``sample-tasks`` and ``contamination`` commands and the eval's contamination gate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
from typer.testing import CliRunner

from thinkgym.cli import app
from thinkgym.config import ConfigError, load_config
from thinkgym.envs import ENVS, EnvInfo, register_envs, task_source_for_env
from thinkgym.sampler.eval import EvalConfig, check_train_overlap, evaluate
from thinkgym.tasks import make_task
from thinkgym.tasks.cli import open_source
from thinkgym.tasks.contamination import ContaminationError

SINGLE = "thinkgym.envs.core:SingleTurnEnv"
TRAIN = "seedtest/Arithmetic-v0"  # arithmetic, seed 7, 30 items, two operands
HELDOUT = "seedtest/ArithmeticHeldout-v0"  # the same task and seed, 100 items: items 0..29 are TRAIN's
PARAMS = {"n_operands": 2, "max_value": 500}
runner = CliRunner()


def _add(info: EnvInfo) -> None:
    ENVS.add(info.id, info, origin="tests")
    register_envs()


def _drop(env_id: str) -> None:
    ENVS._items.pop(env_id, None)
    ENVS._origin.pop(env_id, None)
    gym.registry.pop(env_id, None)


@pytest.fixture
def seeded_envs():
    infos = [
        EnvInfo(TRAIN, SINGLE, {"task": "arithmetic", "seed": 7, "size": 30, "task_params": PARAMS}, "seeded"),
        EnvInfo(HELDOUT, SINGLE, {"task": "arithmetic", "seed": 7, "size": 100, "task_params": PARAMS}, "seeded"),
    ]
    try:
        for info in infos:
            _add(info)
        yield
    finally:
        for info in infos:
            _drop(info.id)


@pytest.fixture
def bad_env():
    ids = []

    def add(env_id: str, kwargs: dict) -> str:
        ids.append(env_id)
        ENVS.add(env_id, EnvInfo(env_id, SINGLE, kwargs, "bad"), origin="tests")
        return env_id

    try:
        yield add
    finally:
        for env_id in ids:
            _drop(env_id)


def served(env_id: str, indices, **kwargs) -> list[dict]:
    """The items ``gymnasium.make(env_id, **kwargs)`` serves at ``indices``."""
    env = gym.make(env_id, **kwargs)
    try:
        return [env.reset(options={"index": i})[1]["item"] for i in indices]
    finally:
        env.close()


def arith(seed: int, **params) -> object:
    return make_task("arithmetic", seed=seed, **{**PARAMS, **params})


def test_source_for_env_is_what_the_env_serves(seeded_envs):
    src = task_source_for_env(TRAIN)
    assert (src.seed, len(src), src.params["max_value"]) == (7, 30, 500)
    assert [src[i] for i in range(3)] == served(TRAIN, range(3)) == [arith(7)[i] for i in range(3)]
    assert src[0] != arith(0)[0]  # the caller's old default seed would show other items
    # Explicit overrides win: seed and size replace, params merge key by key.
    over = task_source_for_env(TRAIN, seed=3, size=5, params={"max_value": 50})
    assert (over.seed, len(over), over.params) == (3, 5, {**arith(0).params, "n_operands": 2, "max_value": 50})
    assert over[4] == arith(3, max_value=50)[4]
    # env_kwargs as a config passes them to gymnasium.make (task_params replaced as a whole).
    kw = {"seed": 11, "task_params": {"max_value": 20}}
    mirrored = task_source_for_env(TRAIN, env_kwargs=kw)
    assert (mirrored.seed, len(mirrored), mirrored.params["n_operands"]) == (11, 30, arith(0).defaults["n_operands"])
    assert [mirrored[i] for i in range(3)] == served(TRAIN, range(3), **kw)
    assert task_source_for_env(TRAIN, seed=2, env_kwargs=kw)[0] == make_task("arithmetic", seed=2, max_value=20)[0]
    # A built-in env without a registered seed keeps seed 0.
    assert task_source_for_env("thinkgym/Countdown-v0").seed == 0


def test_open_source_default_seed(seeded_envs):
    assert open_source(TRAIN).seed == 7
    assert open_source(TRAIN, seed=0)[0] == arith(0)[0]
    assert open_source(TRAIN, params={"max_value": 40})[1] == arith(7, max_value=40)[1]
    assert open_source("arithmetic").seed == 0  # plain task names: unchanged
    assert open_source("arithmetic", default_seed=1).seed == 1
    assert open_source("thinkgym/Arithmetic-v0", default_seed=1).seed == 0  # an env id: the env's seed


def test_bad_registered_or_given_task_kwargs_are_clear_errors(seeded_envs, bad_env):
    with pytest.raises(TypeError, match=r"env 'seedtest/BadSeed-v0': seed \(registered\) must be an int, got str 'x'"):
        task_source_for_env(bad_env("seedtest/BadSeed-v0", {"task": "arithmetic", "seed": "x"}))
    with pytest.raises(ValueError, match=r"env 'seedtest/BadSize-v0': size \(registered\) must be >= 1, got 0"):
        task_source_for_env(bad_env("seedtest/BadSize-v0", {"task": "arithmetic", "size": 0}))
    with pytest.raises(TypeError, match=r"task_params \(registered\) must be a dict, got list"):
        task_source_for_env(bad_env("seedtest/BadParams-v0", {"task": "arithmetic", "task_params": [1]}))
    with pytest.raises(ValueError, match="not backed by a registered task name"):
        task_source_for_env(bad_env("seedtest/NoTask-v0", {"max_turns": 2}))
    with pytest.raises(TypeError, match=r"seed \(env_kwargs\) must be an int, got bool True"):
        task_source_for_env(TRAIN, env_kwargs={"seed": True})
    with pytest.raises(TypeError, match=r"seed \(override\) must be an int, got float 1.5"):
        task_source_for_env(TRAIN, seed=1.5)
    with pytest.raises(TypeError, match="env_kwargs must be a dict"):
        task_source_for_env(TRAIN, env_kwargs=[("seed", 1)])
    with pytest.raises(ValueError, match="seed cannot be a task param"):
        task_source_for_env(TRAIN, params={"seed": 1})
    with pytest.raises(KeyError, match="unknown env 'seedtest/Nope-v0'"):
        task_source_for_env("seedtest/Nope-v0")
    r = runner.invoke(app, ["sample-tasks", "seedtest/BadSeed-v0", "-n", "1"])
    assert r.exit_code == 2 and "seed (registered) must be an int" in r.output, r.output
    r = runner.invoke(app, ["sample-tasks", "seedtest/NoTask-v0", "-n", "1"])
    assert r.exit_code == 2 and "not backed by a registered task name" in r.output, r.output


def test_sample_tasks_cli_shows_the_items_the_env_serves(seeded_envs):
    r = runner.invoke(app, ["sample-tasks", TRAIN, "-n", "3", "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines()]
    want = served(TRAIN, range(3))
    assert [row["question"] for row in rows] == [w["question"] for w in want]
    assert [row["answer"] for row in rows] == [w["answer"] for w in want]
    r = runner.invoke(app, ["sample-tasks", TRAIN, "-n", "1"])
    assert r.exit_code == 0 and "seed=7 index=0" in r.output and arith(7)[0]["question"] in r.output, r.output
    # --seed given: that seed, the env's params still apply.
    r = runner.invoke(app, ["sample-tasks", TRAIN, "-n", "1", "--json", "--seed", "0"])
    assert r.exit_code == 0 and json.loads(r.output)["question"] == arith(0)[0]["question"], r.output
    # The env's registered size bounds the items.
    r = runner.invoke(app, ["sample-tasks", TRAIN, "--start", "30"])
    assert r.exit_code == 2 and "size 30" in r.output, r.output
    # A plain task name still defaults to seed 0.
    r = runner.invoke(app, ["sample-tasks", "arithmetic", "-n", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert [json.loads(line)["question"] for line in r.output.splitlines()] == [make_task("arithmetic")[i]["question"] for i in range(2)]


def test_contamination_cli_uses_the_envs_seeds(seeded_envs):
    # The held-out env serves TRAIN's items at 0..29: all of its first 10 items are contaminated.
    r = runner.invoke(app, ["contamination", "--train", TRAIN, "--eval", HELDOUT, "--eval-limit", "10", "--json"])
    assert r.exit_code == 1, r.output
    rep = json.loads(r.output)
    assert (rep["train_items"], rep["eval_items"], rep["rate"]) == (30, 10, 1.0)
    assert [c[:2] for c in rep["contaminated"]] == [[i, i] for i in range(10)]
    # Plain task names keep their defaults: train seed 0, eval seed 1 (and seed 7 = TRAIN's items).
    r = runner.invoke(app, ["contamination", "--train", TRAIN, "--eval", "arithmetic", "--eval-param", "max_value=500",
                            "--eval-param", "n_operands=2", "--eval-limit", "5", "--eval-seed", "7", "--json"])
    assert r.exit_code == 1 and json.loads(r.output)["rate"] == 1.0, r.output
    r = runner.invoke(app, ["contamination", "--train", TRAIN, "--eval", "arithmetic", "--eval-param", "max_value=500",
                            "--eval-param", "n_operands=2", "--eval-limit", "5", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["rate"] == 0.0, r.output


def _cfg(tmp_path: Path, **kw) -> EvalConfig:
    return EvalConfig(model="unused", output_dir=str(tmp_path / "e"), limit=5, **kw)


class _NoSampler:
    def __getattr__(self, name):
        raise AssertionError(f"the sampler was used ({name}) before the contamination gate")


def test_eval_gate_opens_an_env_train_task_with_the_envs_seed_and_size(seeded_envs, tmp_path):
    assert EvalConfig().train_seed is None
    # The env being trained on serves the very items evaluated: refused.
    cfg = _cfg(tmp_path, env=HELDOUT, train_task=TRAIN)
    with pytest.raises(ContaminationError) as e:
        evaluate(cfg, sampler=_NoSampler())
    assert (e.value.report.train_items, e.value.report.rate) == (30, 1.0)
    assert [c[:2] for c in e.value.report.contaminated] == [(i, i) for i in range(5)]
    assert not (tmp_path / "e" / "summary.json").exists()
    # Items past the train env's size were never trained on: the gate passes, even with the seed given.
    for seed in (None, 7):
        rep = check_train_overlap(_cfg(tmp_path, env=HELDOUT, offset=30, train_task=TRAIN, train_seed=seed), range(30, 35))
        assert (rep["train_items"], rep["rate"]) == (30, 0.0)
    # thinkgym/Arithmetic-v0 (seed 0, default knobs) shares no item with TRAIN (seed 7) ...
    rep = check_train_overlap(_cfg(tmp_path, env="thinkgym/Arithmetic-v0", train_task=TRAIN), range(5))
    assert rep["rate"] == 0.0 and rep["train_items"] == 30
    # ... but an explicit train_seed still wins.
    cfg = _cfg(tmp_path, env="thinkgym/Arithmetic-v0", train_task="thinkgym/Arithmetic-v0", train_seed=3)
    assert check_train_overlap(cfg, range(5))["rate"] == 0.0
    cfg = _cfg(tmp_path, env=HELDOUT, train_task=TRAIN, train_seed=0)
    assert check_train_overlap(cfg, range(5))["rate"] == 0.0
    # A plain task name keeps seed 0: arithmetic's own seed-0 items match thinkgym/Arithmetic-v0's.
    cfg = _cfg(tmp_path, env="thinkgym/Arithmetic-v0", train_task="arithmetic", train_size=50, contamination="warn")
    assert check_train_overlap(cfg, range(5))["rate"] == 1.0


def test_eval_config_train_seed_and_bad_train_task(seeded_envs, tmp_path, bad_env):
    (tmp_path / "a.yaml").write_text("model: m\ntrain_seed: null\n")
    (tmp_path / "b.yaml").write_text("model: m\ntrain_seed: 4\n")
    assert load_config(EvalConfig, tmp_path / "a.yaml").train_seed is None
    assert load_config(EvalConfig, tmp_path / "b.yaml").train_seed == 4
    with pytest.raises(ConfigError, match="train_task: .*'seedtest/Nope-v0' is neither a registered task"):
        check_train_overlap(_cfg(tmp_path, train_task="seedtest/Nope-v0"), range(5))
    bad_env("seedtest/BadSeed-v0", {"task": "arithmetic", "seed": "x"})
    with pytest.raises(ConfigError, match=r"train_task 'seedtest/BadSeed-v0': env 'seedtest/BadSeed-v0': seed \(registered\)"):
        check_train_overlap(_cfg(tmp_path, train_task="seedtest/BadSeed-v0"), range(5))
    # A training file with fewer rows than train_size: all of them are checked.
    rows = [make_task("arithmetic")[i] for i in range(3)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(tmp_path, env="thinkgym/Arithmetic-v0", train_task=str(tmp_path / "t.jsonl"), contamination="warn")
    rep = check_train_overlap(cfg, range(5))
    assert rep["train_items"] == 3 and [c[:2] for c in rep["contaminated"]] == [[0, 0], [1, 1], [2, 2]]


PLUGIN = '''
from thinkgym.envs.registration import EnvInfo

SEEDED = EnvInfo("seedplug/Countdown-v0", "thinkgym.envs.core:SingleTurnEnv",
                 {"task": "countdown", "seed": 5, "size": 40}, "Countdown, seed 5.")
HELDOUT = EnvInfo("seedplug/CountdownHeldout-v0", "thinkgym.envs.core:SingleTurnEnv",
                  {"task": "countdown", "seed": 5}, "Countdown, seed 5, every item.")
'''


def test_plugin_env_seed_through_the_installed_command(tmp_path):
    """A plugin (entry point group thinkgym.envs) registers seeded envs; the `thinkgym` command
    samples them and the eval's gate refuses to evaluate on the items the train env serves."""
    site = tmp_path / "site"
    dist = site / "seedplug-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "seedplug.py").write_text(PLUGIN)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: seedplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[thinkgym.envs]\nseedplug/Countdown-v0 = seedplug:SEEDED\nseedplug/CountdownHeldout-v0 = seedplug:HELDOUT\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}

    def thinkgym(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "thinkgym.cli", *args], capture_output=True, text=True,
                              env=env, timeout=180)

    p = thinkgym("sample-tasks", "seedplug/Countdown-v0", "-n", "2", "--json")
    assert p.returncode == 0, p.stderr
    src = make_task("countdown", seed=5)
    assert [json.loads(line)["question"] for line in p.stdout.splitlines()] == [src[0]["question"], src[1]["question"]]
    model = tmp_path / "fake-model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # never loaded: the gate refuses first
    p = thinkgym("eval", "--model", str(model), "--backend", "vllm-server", "--base-url", "http://127.0.0.1:9",
                 "--env", "seedplug/CountdownHeldout-v0", "--limit", "4", "--train-task", "seedplug/Countdown-v0",
                 "--output-dir", str(tmp_path / "e"))
    assert p.returncode == 3, p.stderr[-2000:]
    assert "refusing to evaluate" in p.stderr and "4 of 4 eval items" in p.stderr and "40 training items" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "e" / "summary.json").exists()
