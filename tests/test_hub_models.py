"""A hub repo id wherever a model is taken: resolved to its HF-cache snapshot, the same code path
as a local directory.

The hub itself is outside the project and cannot be reached from the tests: each test builds a
real HF cache (``models--ORG--NAME/snapshots/<commit>`` + ``refs/main``, the layout
huggingface_hub writes) holding the tiny model, and runs in offline mode, so huggingface_hub's
own cache lookup does the resolving and nothing is fetched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = "acme/tiny-reasoner"


@pytest.fixture
def hub_cache(tiny_model_dir, tmp_path):
    cache = tmp_path / "hf-cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{REPO.replace('/', '--')}"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    return repo / "snapshots" / commit, env


def _py(code: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_resolve_model_reads_the_cache_and_refuses_clearly(hub_cache, tmp_path):
    snap, env = hub_cache
    (tmp_path / "runs").mkdir()
    (tmp_path / "empty").mkdir()
    code = """
from thinkgym.hub import ModelNotFound, resolve_model
print(resolve_model("acme/tiny-reasoner"))
for bad in ("acme/not-cached", "runs/sft-fnal", "empty", "a/b/c", "x y"):
    try:
        resolve_model(bad)
        print("RESOLVED", bad)
    except ModelNotFound as e:
        print("ERR", bad, "|", e)
"""
    p = _py(code, env, tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    assert lines[0] == str(snap)
    errs = {ln.split(" | ")[0][4:]: ln.split(" | ")[1] for ln in lines[1:]}
    assert "RESOLVED" not in p.stdout
    assert "offline mode is on" in errs["acme/not-cached"] and "not in the local HF cache" in errs["acme/not-cached"]
    assert "runs/ is a local folder" in errs["runs/sft-fnal"]  # a mistyped path, never sent to the hub
    assert "without config.json" in errs["empty"]
    assert "or a hub id" in errs["a/b/c"] and "or a hub id" in errs["x y"]


def test_eval_cli_takes_a_hub_id(hub_cache, tmp_path):
    """`thinkgym eval --model ORG/NAME` on the default vLLM backend samples from the cached snapshot."""
    _, env = hub_cache
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "thinkgym.cli", "eval", "--model", REPO, "--env", "thinkgym/Arithmetic-v0",
           "--n", "2", "--limit", "2", "--max-tokens", "8", "--threads", "1", "--output-dir", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 4 and summary["backend"] == "vllm"

    p = subprocess.run([*cmd[:5], "acme/missing", *cmd[6:]], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert "model: 'acme/missing' is not a local directory" in p.stderr and "Traceback" not in p.stderr


def test_hf_sampler_takes_a_hub_id(hub_cache, tmp_path):
    _, env = hub_cache
    code = """
from thinkgym.sampler.hf_backend import HFSampler
from thinkgym.sampler.types import SamplingConfig
s = HFSampler("acme/tiny-reasoner")
out = s.generate([[1, 2, 3]], SamplingConfig(max_tokens=4, seed=0))
print(len(out[0][0].token_ids), s.tokenizer.name_or_path)
"""
    p = _py(code, env, tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    n, path = p.stdout.split()
    assert 1 <= int(n) <= 4 and "models--acme--tiny-reasoner/snapshots" in path


def test_grpo_and_sft_config_checks_take_a_hub_id(hub_cache, tmp_path):
    """Both learners' config checks accept a cached hub id offline and refuse one not cached,
    with one line naming the key, before any model loads."""
    _, env = hub_cache
    code = """
from thinkgym.config import ConfigError, load_config
from thinkgym.grpo.train import GRPOConfig, check_config
from thinkgym.sft_coldstart.train import SFTConfig, check_config as sft_check
check_config(load_config(GRPOConfig, None, {"model": "acme/tiny-reasoner", "output_dir": "g"}))
sft_check(load_config(SFTConfig, None, {"model": "acme/tiny-reasoner", "output_dir": "s", "tasks": ["arithmetic"]}))
for check, cls in ((check_config, GRPOConfig), (sft_check, SFTConfig)):
    try:
        check(load_config(cls, None, {"model": "acme/missing", "output_dir": "x", **({"tasks": ["arithmetic"]} if cls is SFTConfig else {})}))
    except ConfigError as e:
        print("ERR", e)
"""
    p = _py(code, env, tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    errs = p.stdout.splitlines()
    assert len(errs) == 2 and all(e.startswith("ERR model: 'acme/missing' is not a local directory") for e in errs)


@pytest.mark.slow
@pytest.mark.vllm
def test_grpo_trains_from_a_hub_id(hub_cache, tmp_path):
    """`thinkgym train --model ORG/NAME`: the learner, its vLLM sampler and the weight sync run on
    the cached snapshot."""
    import yaml

    _, env = hub_cache
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text(yaml.safe_dump(dict(
        model=REPO, output_dir=str(tmp_path / "run"), envs=["thinkgym/Arithmetic-v0"], max_steps=1,
        env_kwargs={"task_params": {"n_operands": 2, "max_value": 9}}, prompts_per_step=2, group_size=4,
        max_tokens=8, micro_batch_size=4, minibatches=1, sampler_kwargs={"max_model_len": 256},
        dynamic_sampling=False, overlong_buffer=4, progress=False, tensorboard=False, save_every=1)))
    p = subprocess.run([sys.executable, "-m", "thinkgym.cli", "train", "--config", str(cfg)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "step" in r][-1] == 1
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()


def test_a_hub_id_that_cannot_be_fetched_is_one_line_not_a_traceback(tmp_path):
    """Online, the config check leaves a hub id to the run (fetching is slow); one the hub cannot
    serve then ends `thinkgym train` with one line, exit 2. The hub is a refused loopback port."""
    cfg = tmp_path / "g.yaml"
    cfg.write_text("envs: [thinkgym/Arithmetic-v0]\nprompts_per_step: 2\ngroup_size: 2\nmicro_batch_size: 4\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    p = subprocess.run([sys.executable, "-m", "thinkgym.cli", "train", "--config", str(cfg), "--model", "acme/missing",
                        "--output-dir", str(tmp_path / "run"), "--max-steps", "1"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith("error: model: 'acme/missing' is not a local directory")
