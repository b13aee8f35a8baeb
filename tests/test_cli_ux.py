"""What a new user meets on the command line: one-line errors that name where a bad value came
from, runs that say how they stopped after Ctrl-C, resumes of finished runs that change nothing,
overwrites that leave no old curves behind, and honest grading summaries."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import sigint_default
from typer.testing import CliRunner

from thinkgym.cli import app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m thinkgym.cli ARGS`` in a child process (no rendezvous variables of ours)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR")}
    return subprocess.run([sys.executable, "-m", "thinkgym.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def fake_model(tmp_path: Path) -> Path:
    """Passes the model-directory check; nothing could load from it."""
    d = tmp_path / "fake-model"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text("{}")
    return d


def write_yaml(path: Path, **kw) -> Path:
    path.write_text(yaml.safe_dump(kw))
    return path


# ----------------------------------------------------------------------------- tiny-model --out


@pytest.mark.parametrize("out", ["rows.jsonl", "rows.jsonl/sub"])
def test_tiny_model_out_that_is_or_is_under_a_file_is_refused_before_any_work(tmp_path, out):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"a": 1}\n')
    t0 = time.perf_counter()
    r = invoke("tiny-model", "--out", tmp_path / out)
    assert r.exit_code == 2, r.output
    line = one_error_line(r.stderr)
    assert line == f"error: --out: {str(rows)!r} exists and is not a directory"
    assert time.perf_counter() - t0 < 3  # no tokenizer trained, no model built
    assert rows.read_text() == '{"a": 1}\n'


# ----------------------------------------------------------------------------- where a bad value came from


GRPO_EXAMPLE, SFT_EXAMPLE = EXAMPLES / "grpo-tiny-cpu.yaml", EXAMPLES / "sft-tiny-cpu.yaml"


@pytest.mark.parametrize("command, config, args, msg", [
    ("train", GRPO_EXAMPLE, ["--set", "lr=fast"], "error: --set lr=fast: expected a number, got 'fast'"),
    ("train", GRPO_EXAMPLE, ["--max-steps", "0"], "error: --max-steps: max_steps must be >= 1, got 0"),
    ("train", GRPO_EXAMPLE, ["--set", "lrr=1"], "error: --set lrr=1: unknown key(s) 'lrr' (did you mean 'lr'?)"),
    ("train", GRPO_EXAMPLE, ["--model", "{tmp}/nope"], "error: --model: '{tmp}/nope' is not an HF model directory"),
    ("train", GRPO_EXAMPLE, ["--model", "{fake}", "--output-dir", "{file}"],
     "error: --output-dir: '{file}' exists and is not a directory"),
    ("sft", SFT_EXAMPLE, ["--set", "learning_rate=fast"], "error: --set learning_rate=fast: expected a number, got 'fast'"),
    ("sft", SFT_EXAMPLE, ["--max-steps", "-1"], "error: --max-steps: max_steps must be >= 0, got -1"),
    ("sft", SFT_EXAMPLE, ["--model", "{tmp}/nope", "-o", "{tmp}/out"], "error: --model: '{tmp}/nope' is not an HF model directory"),
    ("sft", SFT_EXAMPLE, ["--output-dir", "{file}"], "error: --output-dir: '{file}' exists and is not a directory"),
])
def test_a_bad_command_line_value_is_blamed_on_its_option_not_the_file(tmp_path, command, config, args, msg):
    (tmp_path / "file").write_text("")
    subs = {"{tmp}": str(tmp_path), "{fake}": str(fake_model(tmp_path)), "{file}": str(tmp_path / "file")}
    for k, v in subs.items():
        args, msg = [a.replace(k, v) for a in args], msg.replace(k, v)
    r = invoke(command, "--config", config, *args)
    assert r.exit_code == 2, r.output
    line = one_error_line(r.stderr)
    assert line.startswith(msg) and config.name not in line, line


def test_a_bad_value_from_the_file_is_still_blamed_on_the_file(tmp_path):
    cfg = write_yaml(tmp_path / "cfg.yaml", model=str(fake_model(tmp_path)), lr="fast")
    r = invoke("train", "--config", cfg, "--set", "kl_coef=0.1")
    assert r.exit_code == 2 and one_error_line(r.stderr) == f"error: {cfg}: lr: expected a number, got 'fast'"
    cfg = write_yaml(tmp_path / "cfg.yaml", model=str(tmp_path / "nope"))
    r = invoke("train", "--config", cfg, "--max-steps", "3")
    assert r.exit_code == 2 and one_error_line(r.stderr).startswith(f"error: {cfg}: model: ")


def test_the_launcher_entry_names_the_option_too(tmp_path):
    r = subprocess.run([sys.executable, "-m", "thinkgym.grpo.train", "--config", str(GRPO_EXAMPLE), "--set", "lr=fast"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and one_error_line(r.stderr) == "error: --set lr=fast: expected a number, got 'fast'"


# ----------------------------------------------------------------------------- config files


@pytest.mark.parametrize("command", ["sft", "train", "eval"])
def test_a_config_that_is_a_directory_says_so(command):
    r = invoke(command, "--config", EXAMPLES)
    assert r.exit_code == 2, r.output
    assert one_error_line(r.stderr) == f"error: config: {EXAMPLES} is a directory, not a YAML file"


@pytest.mark.parametrize("command, config, other", [
    ("train", SFT_EXAMPLE, "thinkgym sft"),
    ("sft", GRPO_EXAMPLE, "thinkgym train"),
    ("sft", EXAMPLES / "eval-tiny-cpu.yaml", "thinkgym eval"),
])
def test_another_commands_config_is_named_as_such(command, config, other):
    r = invoke(command, "--config", config)
    assert r.exit_code == 2, r.output
    line = one_error_line(r.stderr)
    assert line.startswith(f"error: {config}: this looks like a `{other}` config") and line.endswith(f"; use {other}")
    assert "did you mean" not in line


# ----------------------------------------------------------------------------- grade summaries


def test_grading_an_empty_file_has_no_mean_score(tmp_path):
    (tmp_path / "in.jsonl").write_text("")
    r = invoke("grade", "-g", "math", "-i", tmp_path / "in.jsonl", "-o", tmp_path / "out.jsonl", "-q")
    assert r.exit_code == 0, r.output
    assert "graded 0 rows" in r.stdout and "mean score n/a (0 rows)" in r.stdout and "0.0000" not in r.stdout


@pytest.mark.sandbox
def test_a_timed_out_program_says_which_limit_it_hit_once(tmp_path):
    rows = [{"id": "stdio", "program": "while True: pass",
             "tests": {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "1"}]}},
            {"id": "function", "program": "def f(x):\n    while True: pass",
             "tests": {"type": "function", "entry_point": "f", "cases": [{"args": [1], "expected": 1}]}}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = invoke("grade", "-g", "code", "-i", tmp_path / "in.jsonl", "-o", tmp_path / "out.jsonl", "-q")
    assert r.exit_code == 0, r.output
    for row in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines()):
        assert row["score"] == 0.0 and row["reason"] == "0/1 cases passed; first failure case 0: CPU time limit (6 s) exceeded", row


# ----------------------------------------------------------------------------- earlier runs in output_dir


def test_the_fresh_run_refusal_lists_the_earlier_runs_logs(tmp_path):
    out = tmp_path / "grpo"
    for d in ("checkpoints/step_000001", "tensorboard"):
        (out / d).mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text("step_000001")
    (out / "metrics.jsonl").write_text("")
    cfg = write_yaml(tmp_path / "grpo.yaml", model=str(fake_model(tmp_path)), output_dir=str(out), sampler_backend="hf")
    r = invoke("train", "--config", cfg)
    assert r.exit_code == 2 and "logs metrics.jsonl, tensorboard)" in one_error_line(r.stderr)
    out = tmp_path / "sft"
    (out / "final").mkdir(parents=True)
    (out / "tb").mkdir()
    r = invoke("sft", "--config", SFT_EXAMPLE, "--output-dir", out)
    assert r.exit_code == 2 and "(final; logs tb)" in one_error_line(r.stderr)


# ----------------------------------------------------------------------------- real runs on the tiny model


def grpo_config(tmp_path: Path, model: Path, out: Path, **kw) -> Path:
    base = dict(model=str(model), output_dir=str(out), seed=1, env_kwargs={"task_params": {"n_operands": 2, "max_value": 9}},
                max_steps=2, prompts_per_step=2, group_size=4, max_tokens=16, micro_batch_size=4, minibatches=2,
                sampler_backend="hf", lr=1e-3, dynamic_sampling=False, progress=False, save_every=1,
                overlong_buffer=16, stop=["e", "a"])
    return write_yaml(tmp_path / "grpo.yaml", **{**base, **kw})


def sft_config(tmp_path: Path, model: Path, out: Path, **kw) -> Path:
    base = dict(model=str(model), output_dir=str(out), tasks=["arithmetic"],
                task_params={"arithmetic": {"n_operands": [2, 2], "max_value": 30}}, train_examples=40,
                eval_examples=8, max_length=512, pack_length=1024, max_steps=3, eval_every=0, save_every=3,
                progress=False, plot=False)
    return write_yaml(tmp_path / "sft.yaml", **{**base, **kw})


def _finished_run(tmp_path_factory, tiny_model_dir, command: str, make_config) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp(command)
    cfg = make_config(tmp, tiny_model_dir, tmp / "run")
    r = cli(command, "--config", cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    return cfg, tmp / "run"


@pytest.fixture(scope="module")
def finished_grpo(tmp_path_factory, tiny_model_dir):
    return _finished_run(tmp_path_factory, tiny_model_dir, "train", grpo_config)


@pytest.fixture(scope="module")
def finished_sft(tmp_path_factory, tiny_model_dir):
    return _finished_run(tmp_path_factory, tiny_model_dir, "sft", sft_config)


def last_json(stdout: str) -> dict:
    return json.loads(stdout[stdout.rindex("{\n"):])  # the summary, after whatever the libraries printed


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_resuming_a_finished_sft_run_changes_nothing(finished_sft):
    cfg, out = finished_sft
    before = files(out)
    r = cli("sft", "--config", cfg, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"--resume: {out} already finished at step 3 (max_steps 3); nothing to do" in r.stderr
    assert files(out) == before  # result.json keeps its numbers; no TensorBoard file, no checkpoint rewritten
    summary, result = last_json(r.stdout), json.loads((out / "result.json").read_text())
    assert summary["steps"] == 3 and summary["tokens_per_s"] == result["tokens_per_s"] > 0


@pytest.mark.slow
def test_resuming_a_finished_grpo_run_changes_nothing(finished_grpo):
    cfg, out = finished_grpo
    before = files(out)
    r = cli("train", "--config", cfg, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"--resume: {out} already finished at step 2 (max_steps 2); nothing to do" in r.stderr
    assert "Loading weights" not in r.stderr + r.stdout  # nothing loaded to do nothing
    assert files(out) == before
    assert last_json(r.stdout)["step"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["sft", "grpo"])
def test_overwrite_removes_the_earlier_runs_tensorboard_files_and_metrics(trainer, finished_sft, finished_grpo, tmp_path):
    cfg, earlier = finished_sft if trainer == "sft" else finished_grpo
    out = shutil.copytree(earlier, tmp_path / "run")
    tb = out / ("tb" if trainer == "sft" else "tensorboard")
    old_events = sorted(tb.iterdir())
    assert old_events and len((out / "metrics.jsonl").read_text().splitlines()) > 1
    r = cli("sft" if trainer == "sft" else "train", "--config", cfg, "--output-dir", out, "--max-steps", "1",
            "--set", "overwrite=true")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "overwrite: removing an earlier run's" in r.stderr and f"{tb.name} in {out}" in r.stderr
    new_events = sorted(tb.iterdir())
    assert len(new_events) == 1 and new_events[0] not in old_events  # only this run's curves
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]


def interrupt(args: list, out: Path, after_rows: int, signals: int = 1) -> subprocess.Popen:
    """Start ``thinkgym ARGS``, wait for ``after_rows`` metrics rows, send Ctrl-C ``signals`` times."""
    p = subprocess.Popen([sys.executable, "-m", "thinkgym.cli", *map(str, args)], cwd=ROOT, text=True, preexec_fn=sigint_default,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics, t0 = out / "metrics.jsonl", time.time()
    while p.poll() is None and time.time() - t0 < 300:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= after_rows:
            break
        time.sleep(0.05)
    for _ in range(signals):
        p.send_signal(signal.SIGINT)
    return p


@pytest.mark.slow
def test_ctrl_c_during_grpo_finishes_the_step_checkpoints_and_says_how_to_continue(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    cfg = grpo_config(tmp_path, tiny_model_dir, out, max_steps=1000, save_every=1000)
    p = interrupt(["train", "--config", cfg], out, after_rows=1)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 130, stderr[-3000:]
    step = json.loads((out / "summary.json").read_text())["steps"]
    assert json.loads((out / "summary.json").read_text())["stopped"] == "SIGINT" and step >= 1
    assert (out / "checkpoints" / "latest").read_text() == f"step_{step:06d}"  # the interrupted step is kept
    assert stderr.strip().splitlines()[-1] == (f"interrupted at step {step}; the last checkpoint is step {step} in "
                                               f"{out / 'checkpoints'} (rerun with --resume to continue)")


@pytest.mark.parametrize("checkpoint", [True, False])
def test_a_second_ctrl_c_stops_grpo_at_once_and_says_what_is_on_disk(tmp_path, monkeypatch, checkpoint):
    import thinkgym.grpo.train as grpo_train

    out = tmp_path / "run"

    def stopped_mid_step_2(cfg, resume=False, on_step=None):
        if checkpoint:
            (out / "checkpoints" / "step_000001").mkdir(parents=True)
            (out / "checkpoints" / "latest").write_text("step_000001")
        on_step(1, None, None, {})
        raise KeyboardInterrupt

    monkeypatch.setattr(grpo_train, "train", stopped_mid_step_2)
    cfg = write_yaml(tmp_path / "grpo.yaml", model=str(fake_model(tmp_path)), output_dir=str(out), sampler_backend="hf")
    r = invoke("train", "--config", cfg)
    assert r.exit_code == 130
    where = (f"the last checkpoint is step 1 in {out / 'checkpoints'} (rerun with --resume to continue)" if checkpoint
             else "no checkpoint yet")
    assert r.stderr.strip() == f"interrupted at step 2; {where}"


@pytest.mark.parametrize("stopped, code", [("SIGTERM", 143), ("max_steps", 0)])
def test_grpo_stopped_by_sigterm_exits_143_like_sft(tmp_path, monkeypatch, stopped, code):
    """A preempted run (SIGTERM: the step finished and checkpointed) must not read as a finished one."""
    import thinkgym.grpo.train as grpo_train

    out = tmp_path / "run"

    def one_step(cfg, resume=False, on_step=None):
        ck = out / "checkpoints" / "step_000001"
        ck.mkdir(parents=True)
        (out / "checkpoints" / "latest").write_text(ck.name)
        on_step(1, None, None, {})
        return {"history": [{"step": 1}], "stopped": stopped, "checkpoint": ck}

    monkeypatch.setattr(grpo_train, "train", one_step)
    cfg = write_yaml(tmp_path / "grpo.yaml", model=str(fake_model(tmp_path)), output_dir=str(out), sampler_backend="hf")
    r = invoke("train", "--config", cfg)
    assert r.exit_code == code, r.output
    said = r.stderr.strip().splitlines()
    if stopped == "SIGTERM":
        assert said[-1] == (f"interrupted at step 1; the last checkpoint is step 1 in {out / 'checkpoints'} "
                            "(rerun with --resume to continue)")
    else:
        assert not any("interrupted" in line for line in said)


@pytest.mark.slow
def test_ctrl_c_during_sft_says_where_it_stopped_and_how_to_continue(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    cfg = sft_config(tmp_path, tiny_model_dir, out, max_steps=5000, save_every=2)
    p = interrupt(["sft", "--config", cfg], out, after_rows=3)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 130, stderr[-3000:]
    logged = len((out / "metrics.jsonl").read_text().splitlines())
    tag = (out / "checkpoints" / "latest").read_text()
    assert (out / "checkpoints" / tag).is_dir() and logged - 2 <= int(tag.removeprefix("step-")) <= logged
    assert stderr.strip().splitlines()[-1] == (f"interrupted at step {logged + 1}; the last checkpoint is step "
                                               f"{tag.removeprefix('step-')} in {out / 'checkpoints'} "
                                               "(rerun with --resume to continue)")
    assert any((out / "tb").iterdir()) and "Traceback" not in stderr
