"""A second new-user review: a plugin entry that is not a task source, malformed items from a
plugin's generate(), the loader sources named without a path, an unwritable SFT output_dir,
Ctrl-C / SIGTERM during SFT (checkpoint, then --resume), ``--help`` of the SFT launcher entry,
and ``--set`` values that break a rule across keys or reach into a mapping field."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import sigint_default
from test_cli_ux import one_error_line

from thinkgym._registry import RegistryError
from thinkgym.config import ConfigError, check_output_dir, load_config, parse_sets
from thinkgym.tasks.base import TaskSource

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
THINKGYM = Path(sys.executable).parent / "thinkgym"


def _env() -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR", "LOCAL_WORLD_SIZE")
    return {k: v for k, v in os.environ.items() if k not in drop}


def cli(*args, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "thinkgym.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env or _env())


# ----------------------------------------------------------------------------- 1. plugin entries


class NotTask:
    """What a plugin might point its entry point at by mistake."""


def test_task_registry_refuses_an_entry_that_is_not_a_task_source():
    from thinkgym.tasks import TASKS

    with pytest.raises(RegistryError, match=r"^plugin thinkgym-bad \(thinkgym.tasks: nottask = thinkgym_bad:NotTask\) "
                                            r"is not a task source: expected a subclass of thinkgym.tasks.TaskSource"):
        TASKS.add("nottask", NotTask, origin="plugin thinkgym-bad (thinkgym_bad:NotTask)")
    with pytest.raises(RegistryError, match=r"task source 'x' \(registered by mine\) is not a task source"):
        TASKS.add("x", lambda: None, origin="mine")
    assert "nottask" not in TASKS.names() and "x" not in TASKS.names()


@pytest.mark.slow
def test_plugin_entry_that_is_not_a_task_source_is_one_clear_line(tmp_path):
    from test_plugins import install_plugin

    site = install_plugin(tmp_path, "nottask", "class NotTask:\n    pass\n",
                          {"thinkgym.tasks": {"not_task": "thinkgym_nottask:NotTask"}})
    env = {**_env(), "PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    want = ("error: plugin thinkgym-nottask (thinkgym.tasks: not_task = thinkgym_nottask:NotTask) is not a task "
            "source: expected a subclass of thinkgym.tasks.TaskSource, got <class 'thinkgym_nottask.NotTask'> "
            "(to run without it: THINKGYM_DISABLE_PLUGINS=thinkgym-nottask)")
    for args in (["tasks"], ["--help"], ["envs"]):
        r = subprocess.run([str(THINKGYM), *args], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 2 and one_error_line(r.stderr) == want, (args, r.stderr[-3000:])
    r = subprocess.run([sys.executable, "-c", "import thinkgym.envs"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 1 and "AttributeError" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "thinkgym._registry.RegistryError: " + want.removeprefix("error: ")


# ----------------------------------------------------------------------------- 2. item shape


class _Source(TaskSource):
    name = "shapes"

    def __init__(self, item, **kw):
        super().__init__(**kw)
        self._item = item

    def generate(self, i, rng):
        return self._item


@pytest.mark.parametrize("item, msg", [
    ({"question": "q", "answer": "a"}, r"item 3 lacks 'metadata' \(has \['answer', 'question'\]\)"),
    (None, r"generate\(3\) returned None, not an item"),
    ({"question": 7, "answer": "a", "metadata": {}}, r"item 3: question must be a str, got 7"),
    ({"question": "q", "answer": "a", "metadata": None}, r"item 3: metadata must be a dict, got None"),
    ({"question": "q", "metadata": {}}, r"item 3 lacks 'answer'"),
])
def test_a_malformed_item_names_the_source_and_index(item, msg):
    with pytest.raises(TypeError, match=r"^task source 'shapes' \(.*_Source\): " + msg):
        _Source(item)[3]


def test_a_well_formed_item_still_gets_its_defaults():
    it = _Source({"question": "q", "answer": None, "metadata": {}})[2]
    assert it["metadata"] == {"grader": "math", "source": "shapes", "index": 2}


# ----------------------------------------------------------------------------- 3. loaders without a path


def test_loader_sources_without_a_path_or_with_a_folder(tmp_path):
    r = cli("sample-tasks", "jsonl")
    assert r.returncode == 2
    assert one_error_line(r.stderr).startswith("error: the jsonl source needs -p path=FILE.jsonl")
    r = cli("sample-tasks", "hf_dataset")
    assert r.returncode == 2 and one_error_line(r.stderr).startswith("error: the hf_dataset source needs -p path=")
    r = cli("sample-tasks", "jsonl", "-p", f"path={tmp_path}")
    assert r.returncode == 2
    assert one_error_line(r.stderr) == (f"error: {tmp_path} is a directory; jsonl needs a file "
                                        "(for a dataset folder use hf_dataset)")
    r = cli("contamination", "--train", "jsonl", "--eval", "arithmetic")
    assert r.returncode == 2 and "the jsonl source needs --train-param path=FILE.jsonl" in one_error_line(r.stderr)
    # with the path, it works
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    r = cli("sample-tasks", "jsonl", "-p", f"path={f}", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["answer"] == "2"


# ----------------------------------------------------------------------------- 4. unwritable output_dir


def _unwritable() -> Path:
    """A folder nobody, root included, can create entries in (sysfs)."""
    p = Path("/sys/kernel")
    if not p.is_dir():
        pytest.skip("no /sys/kernel")
    try:
        Path("/sys/kernel/thinkgym-probe").mkdir()
    except OSError:
        return p / "thinkgym-out"
    Path("/sys/kernel/thinkgym-probe").rmdir()
    pytest.skip("/sys/kernel is writable here")


def test_unwritable_output_dir_is_a_config_error(tmp_path):
    out = _unwritable()
    with pytest.raises(ConfigError, match=rf"^output_dir: cannot write to '{out}' \('/sys/kernel' is not writable\): "):
        check_output_dir(out)
    check_output_dir(tmp_path / "a" / "b")  # a writable one passes and is not created
    assert not (tmp_path / "a").exists() and list(tmp_path.iterdir()) == []


def test_sft_with_an_unwritable_output_dir_is_one_line():
    out = _unwritable()
    r = cli("sft", "--config", EXAMPLES / "sft-tiny-cpu.yaml", "--output-dir", out / "foo", timeout=120)
    assert r.returncode == 2
    assert one_error_line(r.stderr).startswith(f"error: --output-dir: cannot write to '{out / 'foo'}'")


def test_tiny_model_build_that_cannot_write_is_a_config_error(tmp_path, monkeypatch):
    import thinkgym.sft_coldstart.tiny as tiny
    from thinkgym.sft_coldstart.train import SFTConfig, _ensure_tiny

    def refuse(out, *a, **kw):
        raise PermissionError(1, "Operation not permitted", str(out))

    monkeypatch.setattr(tiny, "build_tiny_model", refuse)
    cfg = SFTConfig(output_dir=str(tmp_path / "run"), tasks=[])
    with pytest.raises(ConfigError, match=r"^output_dir: cannot write to '.*run': Operation not permitted"):
        _ensure_tiny(cfg, tmp_path / "run")


# ----------------------------------------------------------------------------- 5. SFT Ctrl-C / SIGTERM


def _sft_yaml(tmp_path: Path, model: Path, out: Path, **kw) -> Path:
    base = dict(model=str(model), output_dir=str(out), tasks=["arithmetic"],
                task_params={"arithmetic": {"n_operands": [2, 2], "max_value": 30}}, train_examples=40,
                eval_examples=8, max_length=512, pack_length=1024, max_steps=40, eval_every=0, save_every=1000,
                save_best=False, progress=False, plot=False, tensorboard=False)
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump({**base, **kw}))
    return path


def _signal_after(args: list, out: Path, rows: int, sig: int) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "thinkgym.cli", *map(str, args)], cwd=ROOT, text=True, env=_env(),
                         preexec_fn=sigint_default, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics, t0 = out / "metrics.jsonl", time.time()
    while p.poll() is None and time.time() - t0 < 300:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= rows:
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before the signal"
    p.send_signal(sig)
    return p


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sft_signal_checkpoints_the_finished_step_and_resume_continues(tmp_path, tiny_model_dir, sig, code):
    out = tmp_path / "run"
    cfg = _sft_yaml(tmp_path, tiny_model_dir, out)
    p = _signal_after(["sft", "--config", cfg], out, rows=2, sig=sig)
    _, stderr = p.communicate(timeout=300)
    assert p.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr
    done = _steps(out)
    assert done == list(range(1, len(done) + 1)) and len(done) < 40
    # save_every=1000: the only checkpoint is the one the signal made, at the last finished step
    tag = (out / "checkpoints" / "latest").read_text().strip()
    assert tag == f"step-{done[-1]}" and (out / "checkpoints" / tag).is_dir()
    assert not (out / "final").exists()
    if sig == signal.SIGINT:
        assert stderr.strip().splitlines()[-1] == (
            f"interrupted at step {done[-1] + 1}; the last checkpoint is step {done[-1]} in {out / 'checkpoints'} "
            "(rerun with --resume to continue)")
    r = cli("sft", "--config", cfg, "--resume", "--max-steps", done[-1] + 2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _steps(out) == list(range(1, done[-1] + 3))  # continued from the checkpoint, nothing redone or skipped
    assert (out / "final" / "model.safetensors").exists()


# ----------------------------------------------------------------------------- 6. launcher --help


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_sft_launcher_entry_help(flag, capsys):
    from thinkgym.sft_coldstart.train import main

    with pytest.raises(SystemExit) as e:
        main([flag])
    assert e.value.code == 0
    out = capsys.readouterr()
    assert out.out.startswith("usage: python -m thinkgym.sft_coldstart.train CONFIG.yaml") and out.err == ""


# ----------------------------------------------------------------------------- 7. --set and cross-field rules


def _grpo(*sets: str):
    from thinkgym.grpo.train import GRPOConfig

    return load_config(GRPOConfig, EXAMPLES / "grpo-tiny-cpu.yaml", parse_sets(list(sets)))


@pytest.mark.parametrize("sets, msg", [
    (["group_size=1"], "examples/grpo-tiny-cpu.yaml with --set group_size=1: prompts_per_step*group_size=8 must split"),
    (["eval_prompts=0"], "examples/grpo-tiny-cpu.yaml with --set eval_prompts=0: eval_every=5 needs eval_prompts > 0"),
])
def test_a_set_that_breaks_a_cross_field_rule_is_named(sets, msg):
    with pytest.raises(ConfigError) as e:
        _grpo(*sets)
    assert str(e.value).replace(str(ROOT) + "/", "").startswith(msg), str(e.value)


def test_an_error_in_the_file_alone_still_names_the_file(tmp_path):
    from thinkgym.grpo.train import GRPOConfig

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**yaml.safe_load((EXAMPLES / "grpo-tiny-cpu.yaml").read_text()), "group_size": 1}))
    with pytest.raises(ConfigError, match=rf"^{cfg}: prompts_per_step\*group_size=8 must split"):
        load_config(GRPOConfig, cfg, parse_sets(["lr=1e-5"]))


def test_dotted_set_reaches_into_a_mapping_field():
    from thinkgym.sft_coldstart.train import SFTConfig

    cfg = load_config(SFTConfig, EXAMPLES / "sft-tiny-cpu.yaml", parse_sets(["task_params.arithmetic.max_value=5"]))
    assert cfg.task_params == {"arithmetic": {"n_operands": [2, 2], "max_value": 5}}  # the rest of the file's mapping kept
    cfg = load_config(SFTConfig, EXAMPLES / "sft-tiny-cpu.yaml",
                      parse_sets(["tasks=[arithmetic, countdown]", "task_params.countdown.n_numbers=3"]))
    assert cfg.task_params["countdown"] == {"n_numbers": 3} and "arithmetic" in cfg.task_params
    g = _grpo("env_kwargs.task_params.max_value=5", "env_kwargs.seed=3")
    assert g.env_kwargs == {"task_params": {"n_operands": 2, "max_value": 5}, "seed": 3}
    with pytest.raises(ConfigError, match=r"^--set learning_rate.x=1: learning_rate is not a mapping"):
        load_config(SFTConfig, EXAMPLES / "sft-tiny-cpu.yaml", parse_sets(["learning_rate.x=1"]))
    with pytest.raises(ConfigError, match=r"^--set task_params.arithmetic.max_value.x=1: "
                                          r"task_params.arithmetic.max_value is 30, not a mapping"):
        load_config(SFTConfig, EXAMPLES / "sft-tiny-cpu.yaml", parse_sets(["task_params.arithmetic.max_value.x=1"]))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'nope.x'"):
        load_config(SFTConfig, EXAMPLES / "sft-tiny-cpu.yaml", parse_sets(["nope.x=1"]))


def test_dotted_set_on_the_cli_and_the_launcher(tmp_path):
    r = cli("sft", "--config", EXAMPLES / "sft-tiny-cpu.yaml", "--output-dir", tmp_path / "o",
            "--set", "task_params.arithmetic.bogus=5", timeout=120)
    assert r.returncode == 2
    assert one_error_line(r.stderr).startswith("error: --set task_params.arithmetic.bogus=5: ")
    r = cli("sft", "--config", EXAMPLES / "sft-tiny-cpu.yaml", "--output-dir", tmp_path / "o",
            "--set", "task_params.arithmetic.max_value=-5", timeout=120)
    assert r.returncode == 2
    assert one_error_line(r.stderr).startswith(
        "error: --set task_params.arithmetic.max_value=-5: task_params.arithmetic: max_value must be")
    from thinkgym.sft_coldstart.train import main

    with pytest.raises(SystemExit) as e:  # the launcher entry takes dotted keys too
        main([str(EXAMPLES / "sft-tiny-cpu.yaml"), f"output_dir={tmp_path / 'o'}", "task_params.arithmetic.max_value=-5"])
    assert e.value.code == 2
