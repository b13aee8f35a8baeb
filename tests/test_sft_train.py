"""The SFT trainer on real DeepSpeed (ZeRO, gloo, one CPU process): learning, HF checkpoint,
exact resume, LoRA merge, frozen embeddings, CLI, and (slow) vLLM loading and two processes."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

from thinkgym.verifiers import get_grader, register_grader

ROOT = Path(__file__).resolve().parents[1]


def _child_env():
    # The in-process runs set the rendezvous variables of a one-process group in os.environ;
    # a child must pick its own.
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR", "LOCAL_WORLD_SIZE")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _chat_rows(n, seed=0):
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = r.randint(0, 20), r.randint(0, 20)
        rows.append({"messages": [
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": f"<think>{a} + {b} = {a + b}</think>\n<answer>{a + b}</answer>"},
        ]})
    return rows


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("sft-data") / "add.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in _chat_rows(240)))
    return p


def _cfg(model, data, out, **kw):
    from thinkgym.sft_coldstart.train import SFTConfig

    base = dict(model=str(model), output_dir=str(out), datasets=[str(data)], eval_fraction=0.1, max_length=64,
                pack_length=256, micro_batch_size=1, gradient_accumulation_steps=2, max_steps=6,
                learning_rate=3e-3, warmup_steps=1, eval_every=3, progress=False, tensorboard=False, plot=False)
    base.update(kw)
    return SFTConfig(**base)


def _losses(out):
    return [json.loads(l)["train/loss"] for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def test_zero2_run_lowers_loss_and_saves_hf_checkpoint(tiny_model_dir, data_file, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thinkgym.sft_coldstart.train import train

    out = tmp_path / "run"
    res = train(_cfg(tiny_model_dir, data_file, out, max_steps=10, zero_stage=2, tensorboard=True, plot=True))
    assert res["steps"] == 10 and res["stop_reason"] == "done"
    assert res["train_loss"][-1] < res["train_loss"][0] - 1.0, res["train_loss"]
    assert res["eval_loss"][-1] < res["eval_loss"][0]
    assert (out / "loss.png").stat().st_size > 1000 and any((out / "tb").iterdir())
    final = Path(res["final"])
    assert (final / "model.safetensors").exists() and (final / "chat_template.jinja").exists()
    model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(final)
    assert tok.chat_template and tok.convert_tokens_to_ids("<think>") != tok.unk_token_id
    # The saved weights are the trained ones: held-out loss from the reloaded model matches the log.
    from thinkgym.sft_coldstart.data import build_examples, load_jsonl, split_holdout
    from thinkgym.sft_coldstart.packing import collate_packed, model_inputs, pack_examples, token_loss

    _, held = split_holdout(load_jsonl(data_file), 0.1, 0)
    ex, _ = build_examples(tok, held, 64)
    bins = pack_examples(ex, 1024, seed=None)
    with torch.no_grad():
        s = n = 0.0
        for b in bins:
            batch = collate_packed(ex, [b], tok.pad_token_id)
            s += token_loss(model(**model_inputs(batch)).logits, batch["targets"]).item()
            n += int((batch["targets"] != -100).sum())
    assert abs(s / n - res["eval_loss"][-1]) < 1e-4
    # best/ holds the lowest-eval checkpoint
    assert res["best"] and Path(res["best"], "model.safetensors").exists()


def test_exact_resume(tiny_model_dir, data_file, tmp_path):
    import torch

    from thinkgym.sft_coldstart.train import train

    straight = train(_cfg(tiny_model_dir, data_file, tmp_path / "a", save_every=0))
    first = train(_cfg(tiny_model_dir, data_file, tmp_path / "b", stop_after_steps=3, save_every=2))
    assert first["stop_reason"] == "stop_after_steps" and first["final"] is None
    # Simulate a crash after step 3 whose last checkpoint is step 2: step 3 is redone on resume.
    import shutil

    ck = tmp_path / "b" / "checkpoints"
    assert sorted(p.name for p in ck.glob("step-*")) == ["step-2", "step-3"]
    shutil.rmtree(ck / "step-3")
    (ck / "latest").write_text("step-2")
    second = train(_cfg(tiny_model_dir, data_file, tmp_path / "b", resume=True))
    assert second["steps"] == 6
    assert len(_losses(tmp_path / "a")) == 6
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")  # bit-identical on CPU
    wa, wb = _weights(straight["final"]), _weights(second["final"])
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_training_time_budget_ends_the_run(tiny_model_dir, data_file, tmp_path):
    """``max_train_s`` finishes at the first step whose optimizer time reaches the budget, with
    final/ written (evals do not count); ``max_time_s`` stops for a resume, without final/."""
    from thinkgym.sft_coldstart.train import train

    budget = 0.5
    res = train(_cfg(tiny_model_dir, data_file, tmp_path / "a", max_steps=10_000, max_train_s=budget, eval_every=2))
    assert res["stop_reason"] == "max_train_s" and 1 < res["steps"] < 10_000
    assert Path(res["final"], "model.safetensors").exists()
    recs = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == res["steps"]
    assert recs[-2]["train/seconds"] < budget <= recs[-1]["train/seconds"] == res["train_seconds"]
    assert res["seconds"] > res["train_seconds"]  # the evals ran on top of the budget

    stopped = train(_cfg(tiny_model_dir, data_file, tmp_path / "b", max_steps=10_000, max_time_s=budget))
    assert stopped["stop_reason"] == "max_time_s" and stopped["final"] is None and stopped["steps"] < 10_000
    assert (tmp_path / "b" / "checkpoints" / "latest").exists()


def test_lora_saves_merged_model_and_frozen_embeddings_stay(tiny_model_dir, data_file, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from thinkgym.sft_coldstart.train import train

    res = train(_cfg(tiny_model_dir, data_file, tmp_path / "lora", lora_r=4, lora_alpha=8, max_steps=4,
                     learning_rate=1e-2, eval_every=0, save_best=False))
    w0, w1 = _weights(tiny_model_dir), _weights(res["final"])
    assert w0.keys() == w1.keys()  # merged: plain model, no lora_A/lora_B/base_layer keys
    changed = [k for k in w0 if not torch.equal(w0[k], w1[k])]
    assert changed and all(any(m in k for m in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
                           for k in changed)
    assert res["trainable_params"] < sum(v.numel() for v in w0.values()) / 5
    AutoModelForCausalLM.from_pretrained(res["final"])

    res = train(_cfg(tiny_model_dir, data_file, tmp_path / "frozen", freeze_embeddings=True, max_steps=3,
                     eval_every=0, save_best=False, zero_stage=1))
    w2 = _weights(res["final"])
    assert torch.equal(w0["model.embed_tokens.weight"], w2["model.embed_tokens.weight"])
    assert not torch.equal(w0["model.layers.0.mlp.up_proj.weight"], w2["model.layers.0.mlp.up_proj.weight"])


def test_cli_sft_with_example_config(tmp_path):
    from thinkgym.tasks import TASKS

    if "arithmetic" not in TASKS.names():
        pytest.skip("the example config trains on the arithmetic task source")
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "thinkgym.cli", "sft", "--config", str(ROOT / "examples/sft-tiny-cpu.yaml"),
         "--max-steps", "3", "--output-dir", str(out), "--set", "train_examples=40", "--set", "eval_examples=8",
         "--set", "eval_every=0", "--set", "progress=false", "--set", "pretrain_steps=2", "--set", "pretrain_examples=16"],
        capture_output=True, text=True, timeout=400, cwd=ROOT, env=_child_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert res["steps"] == 3 and Path(res["final"], "model.safetensors").exists()
    assert (out / "tiny-init" / "tokenizer.json").exists()  # `model: tiny` built the kit
    assert len(_losses(out)) == 3 and (out / "loss.png").exists()
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= last["eval/accuracy"] <= 1 and res["best_eval_accuracy"] == last["eval/accuracy"]  # the example's dev set ran
    # the optional next-token pretraining stage ran first and SFT started from its output
    assert len(_losses(out / "pretrain")) == 2 and (out / "pretrain" / "final" / "model.safetensors").exists()
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == str(out / "pretrain" / "final")
    bad = subprocess.run(
        [sys.executable, "-m", "thinkgym.cli", "sft", "--config", str(ROOT / "examples/sft-tiny-cpu.yaml"),
         "--set", "learning_rat=1"], capture_output=True, text=True, timeout=60, cwd=ROOT, env=_child_env(),
    )
    assert bad.returncode == 2 and "learning_rate" in bad.stderr  # "did you mean"
    bad_env = subprocess.run(
        [sys.executable, "-m", "thinkgym.cli", "sft", "--config", str(ROOT / "examples/sft-tiny-cpu.yaml"),
         "--output-dir", str(tmp_path / "bad-env"), "--set", "eval_env=thinkgym/Nope-v0"],
        capture_output=True, text=True, timeout=200, cwd=ROOT, env=_child_env(),
    )
    assert bad_env.returncode == 2 and "--set eval_env=thinkgym/Nope-v0: eval_env 'thinkgym/Nope-v0'" in bad_env.stderr, \
        bad_env.stderr[-2000:]
    assert "Traceback" not in bad_env.stderr


def test_cli_tiny_model(tmp_path):
    from transformers import AutoConfig

    proc = subprocess.run(
        [sys.executable, "-m", "thinkgym.cli", "tiny-model", "--out", str(tmp_path / "m"), "--hidden-size", "64",
         "--layers", "2", "--heads", "2", "--kv-heads", "1"], capture_output=True, text=True, timeout=120, cwd=ROOT,
        env=_child_env(),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = AutoConfig.from_pretrained(tmp_path / "m")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads) == (64, 2, 1)
    assert "parameters" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "thinkgym.cli", "tiny-model", "--out", str(tmp_path / "x"),
                          "--hidden-size", "65"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env=_child_env())
    assert bad.returncode != 0 and "divisible" in bad.stderr


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_loads_sft_checkpoint(tiny_model_dir, data_file, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams

    from thinkgym.sft_coldstart.train import train

    res = train(_cfg(tiny_model_dir, data_file, tmp_path / "v", max_steps=4, eval_every=0, save_best=False))
    tok = AutoTokenizer.from_pretrained(res["final"])
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], tokenize=False,
                                     add_generation_prompt=True)
    llm = LLM(res["final"], dtype="float32", max_model_len=256, seed=0, enforce_eager=True)
    got = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=12))[0].outputs[0].token_ids
    hf = AutoModelForCausalLM.from_pretrained(res["final"], dtype=torch.float32)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    want = hf.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
    assert list(got) == want[: len(got)]


@pytest.mark.slow
def test_zero3_run_saves_consolidated_checkpoint(tiny_model_dir, data_file, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from thinkgym.sft_coldstart.train import train

    res = train(_cfg(tiny_model_dir, data_file, tmp_path / "z3", zero_stage=3, max_steps=4, eval_every=2))
    assert res["train_loss"][-1] < res["train_loss"][0]
    w0, w1 = _weights(tiny_model_dir), _weights(res["final"])
    assert all(w0[k].shape == w1[k].shape for k in w0) and not torch.equal(w0["model.norm.weight"], w1["model.norm.weight"])
    AutoModelForCausalLM.from_pretrained(res["final"])


@pytest.mark.slow
def test_two_process_torchrun(tiny_model_dir, const_data, tmp_path):
    """Two ranks under torchrun: training, and the dev accuracy each rank computes on half the
    items and sums across ranks (checked against a one-process regrade of best/)."""
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "output_dir": str(tmp_path / "ddp"), "datasets": [str(const_data[0])],
        "max_length": 64, "pack_length": 128, "max_steps": 8, "eval_every": 2, "zero_stage": 2,
        "learning_rate": 3e-3, "progress": False, "tensorboard": False, "plot": False,
        "best_metric": "accuracy", "eval_env": "thinkgym/Arithmetic-v0", "eval_env_kwargs": const_data[1],
        "eval_env_items": 11, "eval_max_tokens": 16,
    }))
    env = _child_env()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         "-m", "thinkgym.sft_coldstart.train", str(cfg)],
        capture_output=True, text=True, timeout=500, cwd=ROOT, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert res["steps"] == 8 and Path(res["final"], "model.safetensors").exists()
    losses = _losses(tmp_path / "ddp")
    assert losses[-1] < losses[0]
    assert res["best_eval_accuracy"] > 0  # 11 items: the ranks answer 6 and 5
    assert _greedy_accuracy(res["best"], "thinkgym/Arithmetic-v0", const_data[1], 11, 16) == res["best_eval_accuracy"]


_FAST_CLOCK_RANK1 = '''
import os, sys, time
import thinkgym.sft_coldstart.train as T

# torchrun starts each rank in its own session: the test kills hung ranks by these pids.
open(os.path.join(os.path.dirname(__file__), f"rank{os.environ['RANK']}.pid"), "w").write(str(os.getpid()))

class _Clock:
    """time, with perf_counter running 1000x fast: this rank spends its budget long before rank 0."""
    def __getattr__(self, name):
        return getattr(time, name)
    def perf_counter(self):
        return time.perf_counter() * 1000.0

if os.environ["RANK"] == "1":
    T.time = _Clock()
T.main(sys.argv[1:])
'''


@pytest.mark.slow
def test_time_budget_stops_every_rank_at_the_same_step(tiny_model_dir, const_data, tmp_path):
    """Two ranks whose clocks disagree: rank 1's runs 1000x fast and spends ``max_train_s`` in
    its first step. Every rank must stop there together; a rank that went on alone would wait
    forever in a collective the other never joins. Rank 0's own clock is far under the budget,
    so its stop can only come from rank 1's time."""
    import yaml

    budget = 30.0
    (tmp_path / "fast_clock.py").write_text(_FAST_CLOCK_RANK1)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "output_dir": str(tmp_path / "ddp"), "datasets": [str(const_data[0])],
        "max_length": 64, "max_steps": 10_000, "max_train_s": budget, "eval_every": 0, "save_best": False,
        "zero_stage": 2, "learning_rate": 3e-3, "progress": False, "tensorboard": False, "plot": False,
    }))
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         str(tmp_path / "fast_clock.py"), str(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_child_env(), start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        for pid in [proc.pid] + [int(f.read_text()) for f in tmp_path.glob("rank*.pid")]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        _, err = proc.communicate()
        pytest.fail("the ranks did not stop together (hung in a collective):\n" + err[-3000:])
    assert proc.returncode == 0, err[-3000:]
    res = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert res["stop_reason"] == "max_train_s" and res["steps"] == 1, res
    assert res["train_seconds"] < budget / 3  # rank 0's own time (one step, slower on a busy machine): it stopped on rank 1's
    assert Path(res["final"], "model.safetensors").exists()


def _greedy_accuracy(model_dir, env_id, env_kwargs, n, max_tokens):
    """Accuracy of a saved checkpoint on items 0..n-1, recomputed in one process from scratch."""
    from thinkgym.sampler.hf_backend import HFSampler
    from thinkgym.sampler.rollout import collect_rollouts
    from thinkgym.sampler.types import SamplingConfig

    batch = collect_rollouts(env_id, HFSampler(str(model_dir)), indices=list(range(n)), group_size=1,
                             cfg=SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens, seed=0), env_kwargs=env_kwargs)
    return sum(e.reward is not None and e.reward >= 1.0 for e in batch.episodes) / n


@pytest.fixture(scope="module")
def const_data(tmp_path_factory):
    """Traces that always answer 7 (learnt in a few steps) and a dev task (JSONL, math grader)
    whose gold is 7 for two items in three, so dev accuracy climbs from 0 to 2/3."""
    d = tmp_path_factory.mktemp("const")
    r = random.Random(0)
    rows = [{"messages": [{"role": "user", "content": f"What is {r.randint(0, 20)} + {r.randint(0, 20)}?"},
                          {"role": "assistant", "content": "<think>easy</think>\n<answer>7</answer>"}]} for _ in range(240)]
    (d / "const.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    (d / "dev.jsonl").write_text("".join(json.dumps({"question": f"What is {i} + {i}?", "answer": "7" if i % 3 else "8"}) + "\n"
                                         for i in range(12)))
    env_kwargs = {"task": "jsonl", "task_params": {"path": str(d / "dev.jsonl"), "grader": "math"}, "system_prompt": None}
    return d / "const.jsonl", env_kwargs


def test_best_checkpoint_by_dev_accuracy(tiny_model_dir, const_data, tmp_path):
    """best/ is the eval with the highest greedy dev accuracy (ties: lower dev loss), and its
    weights really score that accuracy when graded again."""
    from thinkgym.sft_coldstart.train import train

    data, env_kwargs = const_data
    out = tmp_path / "acc"
    dev = dict(eval_env="thinkgym/Arithmetic-v0", eval_env_kwargs=env_kwargs, eval_env_items=12, eval_max_tokens=16)
    res = train(_cfg(tiny_model_dir, data, out, max_steps=16, eval_every=2, best_metric="accuracy", **dev))
    evals = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if "eval/accuracy" in l]
    assert [r["step"] for r in evals] == list(range(2, 17, 2))
    accs = [r["eval/accuracy"] for r in evals]
    assert accs[0] == 0 and max(accs) == pytest.approx(2 / 3), accs
    want = max(evals, key=lambda r: (r["eval/accuracy"], -r["eval/loss"]))
    assert (res["best_step"], res["best_eval_accuracy"], res["best_eval_loss"]) == \
        (want["step"], want["eval/accuracy"], want["eval/loss"])
    assert _greedy_accuracy(res["best"], dev["eval_env"], env_kwargs, 12, 16) == res["best_eval_accuracy"]
    saved = json.loads((out / "result.json").read_text())
    assert saved["best_step"] == want["step"] and "train_loss" not in saved
    assert 0 < saved["train_seconds"] <= saved["seconds"]


@register_grader("test_sft_gold8_outage", version="0")
def _gold8_outage(completion, gold, **meta):
    if str(gold).strip() == "8":
        raise RuntimeError("grader outage")
    return get_grader("math")(completion, gold, **meta)


def test_dev_accuracy_leaves_grader_errors_out(tiny_model_dir, const_data, tmp_path):
    """Items the grader fails on are counted as errors, not as wrong answers."""
    from thinkgym.sft_coldstart.train import train

    data, env_kwargs = const_data
    env_kwargs = {**env_kwargs, "task_params": {**env_kwargs["task_params"], "grader": "test_sft_gold8_outage"}}
    out = tmp_path / "acc"
    res = train(_cfg(tiny_model_dir, data, out, max_steps=16, eval_every=4, best_metric="accuracy",
                     eval_env="thinkgym/Arithmetic-v0", eval_env_kwargs=env_kwargs, eval_env_items=12, eval_max_tokens=16))
    evals = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if "eval/accuracy" in l]
    assert [r["eval/grader_errors"] for r in evals] == [4] * len(evals)  # the 4 items whose gold is 8
    assert res["best_eval_accuracy"] == 1.0  # every graded item (gold 7) is answered right


def test_resume_keeps_the_best_dev_accuracy(tiny_model_dir, const_data, tmp_path):
    """The best eval so far travels in the checkpoint: a resumed run keeps best/ and its record."""
    from thinkgym.sft_coldstart.train import train

    data, env_kwargs = const_data
    dev = dict(eval_env="thinkgym/Arithmetic-v0", eval_env_kwargs=env_kwargs, eval_env_items=12, eval_max_tokens=16,
               best_metric="accuracy", max_steps=12, eval_every=2)
    straight = train(_cfg(tiny_model_dir, data, tmp_path / "a", **dev))
    first = train(_cfg(tiny_model_dir, data, tmp_path / "b", stop_after_steps=8, save_every=4, **dev))
    assert first["best_step"] is not None and first["best_step"] <= 8
    # Resuming at the stop with nothing left to train: the record can only come from the checkpoint.
    held = train(_cfg(tiny_model_dir, data, tmp_path / "b", resume=True, **{**dev, "max_steps": 8}))
    assert (held["best_step"], held["best_eval_accuracy"]) == (first["best_step"], first["best_eval_accuracy"])
    second = train(_cfg(tiny_model_dir, data, tmp_path / "b", resume=True, **dev))
    for k in ("best_step", "best_eval_accuracy", "best_eval_loss"):
        assert second[k] == straight[k], k


def test_better_eval_rules():
    from thinkgym.sft_coldstart.train import _better

    none = {"step": None, "loss": None, "accuracy": None}
    e = lambda acc, loss: {"step": 1, "loss": loss, "accuracy": acc}  # noqa: E731
    assert _better("accuracy", e(0.0, 3.0), none)
    assert _better("accuracy", e(0.5, 3.0), e(0.4, 1.0))  # accuracy first
    assert not _better("accuracy", e(0.4, 3.0), e(0.5, 1.0))
    assert _better("accuracy", e(0.5, 1.0), e(0.5, 2.0)) and not _better("accuracy", e(0.5, 2.0), e(0.5, 1.0))
    assert not _better("accuracy", e(None, 1.0), e(0.1, 9.0))
    assert _better("loss", e(0.0, 1.0), e(0.9, 2.0)) and not _better("loss", e(0.9, 2.0), e(0.0, 1.0))
    assert not _better("loss", e(0.5, None), none)


@pytest.mark.parametrize("kw, msg", [
    ({"best_metric": "accuracy"}, "needs eval_env"),
    ({"best_metric": "reward"}, "best_metric must be"),
    ({"eval_env": "thinkgym/Format-v0", "zero_stage": 3}, "ZeRO-3"),
    ({"eval_env": "thinkgym/Format-v0", "eval_env_items": 0}, "eval_env_items must be >= 1"),
])
def test_dev_accuracy_config_errors(kw, msg, tiny_model_dir, data_file, tmp_path):
    from thinkgym.sft_coldstart.train import SFTConfig

    with pytest.raises(ValueError, match=msg):
        SFTConfig(**{**_cfg(tiny_model_dir, data_file, tmp_path).__dict__, **kw}).validate()


@pytest.mark.parametrize("kw, msg", [
    ({"eval_env": "thinkgym/NoSuchEnv-v0"}, "NoSuchEnv"),
    ({"eval_env": "thinkgym/Countdown-v0", "eval_env_kwargs": {"task_params": {"max_number": -3}}}, "eval_env_kwargs"),
    ({"eval_env": "thinkgym/Countdown-v0", "eval_env_kwargs": {"task": "jsonl", "task_params": {"path": "MISSING"}}}, "MISSING"),
])
def test_bad_dev_env_fails_before_training(kw, msg, tiny_model_dir, data_file, tmp_path):
    from thinkgym.sft_coldstart.train import train

    out = tmp_path / "bad"
    with pytest.raises(ValueError, match=msg):
        train(_cfg(tiny_model_dir, data_file, out, **kw))
    assert not (out / "metrics.jsonl").exists()  # nothing ran


# ----------------------------------------------------------------------------- config checks (fast: nothing trains)


@pytest.mark.parametrize("kw, msg", [
    ({"learning_rate": -1}, r"learning_rate must be > 0"),
    ({"learning_rate": float("nan")}, r"learning_rate must be a finite number"),
    ({"learning_rate": float("inf")}, r"learning_rate must be a finite number"),
    ({"epochs": -1}, r"epochs must be > 0"),
    ({"epochs": 0}, r"epochs must be > 0"),
    ({"max_steps": -3}, r"max_steps must be >= 0"),
    ({"train_examples": -5}, r"train_examples must be >= 0"),
    ({"eval_examples": -1}, r"eval_examples must be >= 0"),
    ({"eval_fraction": 2.0}, r"eval_fraction must be in \[0, 0.5\]"),
    ({"eval_fraction": -0.1}, r"eval_fraction must be in"),
    ({"adam_betas": [0.9]}, r"adam_betas must be two numbers"),
    ({"adam_betas": [0.9, 1.0]}, r"adam_betas must be two numbers in \[0, 1\)"),
    ({"adam_eps": 0}, r"adam_eps must be > 0"),
    ({"lora_r": -4}, r"lora_r must be >= 0"),
    ({"lora_alpha": 0}, r"lora_alpha must be >= 1"),
    ({"lora_dropout": 1.0}, r"lora_dropout must be in \[0, 1\)"),
    ({"lora_r": 8, "lora_target_modules": []}, r"lora_target_modules must not be empty"),
    ({"keep_checkpoints": 0}, r"keep_checkpoints must be >= 1"),
    ({"min_lr_ratio": 5}, r"min_lr_ratio must be in \[0, 1\]"),
    ({"warmup_steps": -5}, r"warmup_steps must be >= 0"),
    ({"warmup_ratio": 1.5}, r"warmup_ratio must be in \[0, 1\]"),
    ({"weight_decay": -0.1}, r"weight_decay must be >= 0"),
    ({"max_grad_norm": -1}, r"max_grad_norm must be >= 0"),
    ({"max_grad_norm": float("nan")}, r"max_grad_norm must be a finite number"),
    ({"attn_implementation": "bogus"}, r"attn_implementation must be one of"),
    ({"zero_stage": 4}, r"zero_stage must be one of \[0, 1, 2, 3\]"),
    ({"pack_length": 0, "packing": False}, r"pack_length must be >= 1"),
    ({"eval_every": -1}, r"eval_every must be >= 0"),
    ({"save_every": -1}, r"save_every must be >= 0"),
    ({"stop_after_steps": -1}, r"stop_after_steps must be >= 0"),
    ({"pretrain_steps": -1}, r"pretrain_steps must be >= 0"),
    ({"pretrain_steps": 5, "pretrain_examples": 0}, r"pretrain_examples must be >= 1 when pretrain_steps"),
    ({"pretrain_learning_rate": 0}, r"pretrain_learning_rate must be > 0"),
    ({"max_time_s": -1}, r"max_time_s must be >= 0"),
    ({"max_train_s": float("nan")}, r"max_train_s must be a finite number"),
    ({"output_dir": ""}, r"output_dir must not be empty"),
    ({"messages_field": ""}, r"messages_field must not be empty"),
    ({"tasks": ["arithmetic", "arithmetic"]}, r"tasks: \['arithmetic'\] listed more than once"),
    ({"task_params": {"arithmatic": {"max_value": 3}}}, r"task_params: 'arithmatic' \(did you mean 'arithmetic'\?\) not in tasks"),
    ({"task_params": {"arithmetic": 3}}, r"task_params.arithmetic must be a mapping"),
])
def test_config_values_are_range_checked(kw, msg):
    from thinkgym.config import ConfigError, load_config
    from thinkgym.sft_coldstart.train import SFTConfig

    with pytest.raises(ConfigError, match=msg):
        load_config(SFTConfig, None, {"tasks": ["arithmetic"], **kw})


def test_config_zero_means_off_where_documented():
    from thinkgym.config import load_config
    from thinkgym.sft_coldstart.train import SFTConfig

    cfg = load_config(SFTConfig, None, {
        "tasks": ["arithmetic"], "max_steps": 0, "warmup_steps": 0, "warmup_ratio": 0, "max_grad_norm": 0, "lora_r": 0,
        "eval_every": 0, "save_every": 0, "eval_fraction": 0, "eval_examples": 0, "max_time_s": 0, "max_train_s": 0,
        "pretrain_steps": 0, "eval_threads": 0, "weight_decay": 0, "min_lr_ratio": 0, "seed": -1,
        "attn_implementation": "kernels-community/flash-attn", "task_params": {"arithmetic": {"max_value": 3}},
    })
    assert cfg.max_grad_norm == 0 and cfg.task_params == {"arithmetic": {"max_value": 3}}


def _check(tmp_path, **kw):
    from thinkgym.sft_coldstart.train import SFTConfig, check_config

    base = {"tasks": ["arithmetic"], "train_examples": 8, "eval_examples": 2, "output_dir": str(tmp_path / "out"), **kw}
    check_config(SFTConfig(**base))


@pytest.mark.parametrize("kw, msg", [
    ({"task_params": {"arithmetic": {"max_valu": 3}}}, r"task_params\.arithmetic\.max_valu \(did you mean 'max_value'\?\)"),
    ({"task_params": {"arithmetic": {"max_value": -3}}}, r"task_params\.arithmetic: max_value must be"),
    ({"tasks": ["arithmetc"]}, r"tasks: unknown task source\(s\) 'arithmetc' \(did you mean 'arithmetic'\?\)"),
    ({"tasks": ["jsonl"], "task_params": {"jsonl": {"pth": "x"}}}, r"task_params\.jsonl\.pth \(did you mean 'path'\?\)"),
    ({"tasks": ["jsonl"], "task_params": {"jsonl": {"path": "/nonexistent.jsonl"}}}, r"task_params\.jsonl: .*no such file"),
    ({"train_examples": 2_000_000}, r"tasks: 'arithmetic' has 1000000 items, fewer than"),
    ({"model": "/nonexistent/model"}, r"model: '/nonexistent/model' is not an HF model directory"),
    ({"model": "runs/sft/final"}, r"model: 'runs/sft/final' is not an HF model directory"),
    ({"datasets": ["/nonexistent/chat.jsonl"]}, r"datasets: '/nonexistent/chat.jsonl': no such file"),
    ({"datasets": ["hf:/nonexistent/ds"]}, r"datasets: 'hf:/nonexistent/ds': no such directory"),
    ({"eval_env": "thinkgym/NoSuchEnv-v0"}, r"eval_env 'thinkgym/NoSuchEnv-v0'"),
])
def test_check_config_names_the_key(kw, msg, tmp_path):
    from thinkgym.config import ConfigError

    with pytest.raises(ConfigError, match=msg):
        _check(tmp_path, **kw)


def test_check_config_model_and_dataset_files(tmp_path, monkeypatch):
    from thinkgym.config import ConfigError

    (tmp_path / "m").mkdir()
    with pytest.raises(ConfigError, match="model: .* is a directory without config.json"):
        _check(tmp_path, model=str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text("{}")
    _check(tmp_path, model=str(tmp_path / "m"))
    _check(tmp_path, model="tiny")
    # A hub id is left to transformers, unless offline mode rules out a download.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    _check(tmp_path, model="SomeOrg/SomeModel-0.5B")
    _check(tmp_path, model="gpt2")  # hub ids without an org exist too
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="model: 'SomeOrg/SomeModel-0.5B' is not a local directory, and HF offline mode is on"):
        _check(tmp_path, model="SomeOrg/SomeModel-0.5B")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(ConfigError, match=r"datasets: '.*empty\.jsonl' is empty"):
        _check(tmp_path, datasets=[str(empty)])
    with pytest.raises(ConfigError, match=r"datasets: '.*' is a directory; a saved HF dataset is written hf:"):
        _check(tmp_path, datasets=[str(tmp_path)])


def test_bad_model_fails_before_any_setup(tmp_path):
    from thinkgym.config import ConfigError
    from thinkgym.sft_coldstart.train import train

    out = tmp_path / "run"
    cfg = _cfg("/nonexistent/model", tmp_path / "missing.jsonl", out)
    with pytest.raises(ConfigError, match="model: '/nonexistent/model'"):
        train(cfg)
    assert not out.exists()  # no tiny build, no run directory


def test_all_eval_rows_dropped_is_an_error(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from thinkgym.sft_coldstart.data import DataError
    from thinkgym.sft_coldstart.train import _build_data

    # eval_fraction 0.5 holds out the even rows (seed 0); make exactly those too long.
    rows = _chat_rows(12)
    for r in rows[::2]:
        r["messages"][1]["content"] += " padding" * 60
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = _cfg(tiny_model_dir, data, tmp_path / "out", eval_fraction=0.5, max_length=64)
    with pytest.raises(DataError, match=r"all 6 eval examples were dropped .* no eval loss for best_metric 'loss'"):
        _build_data(cfg, tok)
    # With best_metric accuracy the dev accuracy still picks best/: the drop is reported, not fatal.
    acc = _cfg(tiny_model_dir, data, tmp_path / "out", eval_fraction=0.5, max_length=64, best_metric="accuracy",
               eval_env="thinkgym/Arithmetic-v0")
    train_ex, eval_ex, dropped, eval_dropped = _build_data(acc, tok)
    assert (len(train_ex), dropped, len(eval_ex), eval_dropped) == (6, 0, 0, 6)


@pytest.mark.parametrize("args, msg", [
    (["--set", "tasks=[arith"], "--set tasks: value '[arith' is not valid YAML"),
    (["--set", "=3"], "--set expects KEY=VALUE"),
    (["--set", "model=/nonexistent/model"], "--set model=/nonexistent/model: '/nonexistent/model' is not"),
    (["--set", "task_params={arithmetic: {max_valu: 3}}"], "task_params.arithmetic.max_valu"),
    (["--set", "epochs=-1"], "epochs must be > 0"),
])
def test_cli_bad_input_is_one_error_line(args, msg, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "thinkgym.cli", "sft", "--config", str(ROOT / "examples/sft-tiny-cpu.yaml"),
         "--output-dir", str(tmp_path / "out"), *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env=_child_env(),
    )
    assert proc.returncode == 2 and msg in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- run directory, budgets, resume


def test_fresh_run_in_an_old_run_directory_is_refused_or_replaces_it(tiny_model_dir, data_file, tmp_path):
    """A fresh run into an earlier run's directory is a one-line error before anything loads (its
    checkpoints, best/ and final/ stay). With ``overwrite`` they are replaced: the earlier run's
    checkpoints (higher steps) must not outrank the fresh run's when old ones are pruned, nor its
    best/ pass for the fresh run's; the fresh run then resumes from its own."""
    from thinkgym.config import ConfigError
    from thinkgym.sft_coldstart.train import train

    out = tmp_path / "run"
    train(_cfg(tiny_model_dir, data_file, out, max_steps=6, save_every=2, eval_every=3))
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-4", "step-6"]
    before = (out / "final" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="holds an earlier run .*best.*--resume.*overwrite: true"):
        train(_cfg(tiny_model_dir, data_file, out, max_steps=6, save_every=2, eval_every=0, eval_fraction=0))
    assert (out / "final" / "model.safetensors").read_bytes() == before and (out / "best").is_dir()
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-4", "step-6"]
    first = train(_cfg(tiny_model_dir, data_file, out, max_steps=6, save_every=2, stop_after_steps=3,
                       eval_every=0, eval_fraction=0, overwrite=True))
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-2", "step-3"]
    assert first["best"] is None and not (out / "best").exists()  # no eval in this run
    assert not (out / "final").exists() and len(_losses(out)) == 3
    second = train(_cfg(tiny_model_dir, data_file, out, max_steps=6, save_every=2, eval_every=0, eval_fraction=0,
                        resume=True))
    assert second["steps"] == 6 and second["stop_reason"] == "done" and len(_losses(out)) == 6


def test_training_time_budget_spans_a_resume(tiny_model_dir, data_file, tmp_path):
    """``max_train_s`` budgets the run, not each process: a resumed run keeps the training time
    its checkpoint recorded, and one whose budget is already spent trains no further."""
    from thinkgym.sft_coldstart.train import train

    out = tmp_path / "run"
    first = train(_cfg(tiny_model_dir, data_file, out, max_steps=50, stop_after_steps=2, eval_every=0))
    assert first["stop_reason"] == "stop_after_steps" and first["train_seconds"] > 0
    res = train(_cfg(tiny_model_dir, data_file, out, max_steps=50, eval_every=0, resume=True,
                     max_train_s=first["train_seconds"]))
    assert res["stop_reason"] == "max_train_s" and res["steps"] == 2
    assert res["train_seconds"] == first["train_seconds"] and Path(res["final"], "model.safetensors").exists()


def test_the_step_that_spends_the_training_budget_is_evaluated(tiny_model_dir, data_file, tmp_path):
    """The run ends at that step with final/, so it is a candidate for best/ like step == total."""
    from thinkgym.sft_coldstart.train import train

    out = tmp_path / "run"
    res = train(_cfg(tiny_model_dir, data_file, out, max_steps=10_000, max_train_s=0.3, eval_every=1000))
    assert res["stop_reason"] == "max_train_s" and len(res["eval_loss"]) == 1
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == res["steps"] == res["best_step"] and last["eval/loss"] == res["best_eval_loss"]
    assert Path(res["best"], "model.safetensors").exists()


def test_output_dir_that_is_a_file_is_a_config_error(tmp_path):
    from thinkgym.config import ConfigError

    (tmp_path / "taken").write_text("x")
    with pytest.raises(ConfigError, match=r"output_dir: '.*taken' exists and is not a directory"):
        _check(tmp_path, output_dir=str(tmp_path / "taken" / "run"))


def test_lora_target_modules_that_match_nothing_are_a_config_error(tiny_model_dir, data_file, tmp_path):
    from thinkgym.config import ConfigError
    from thinkgym.sft_coldstart.train import train

    with pytest.raises(ConfigError, match=r"lora_target_modules \['qproj'\]: .*not found"):
        train(_cfg(tiny_model_dir, data_file, tmp_path / "run", lora_r=4, lora_target_modules=["qproj"]))


def test_resume_with_other_training_data_is_an_error(tiny_model_dir, data_file, tmp_path):
    """The data cursor counts micro-batches of the checkpoint's data order; on other data or
    batching it would silently repeat some examples and skip others."""
    from thinkgym.config import ConfigError
    from thinkgym.sft_coldstart.train import train

    out = tmp_path / "run"
    train(_cfg(tiny_model_dir, data_file, out, stop_after_steps=2, eval_every=0))
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in _chat_rows(200, seed=1)))
    for kw in ({"datasets": [str(other)]}, {"micro_batch_size": 2}, {"seed": 1}):
        with pytest.raises(ConfigError, match=r"resume: the training data or its batching changed"):
            train(_cfg(tiny_model_dir, data_file, out, resume=True, eval_every=0, **kw))
    # The same data and batching resume; other settings (the step count here) may change.
    res = train(_cfg(tiny_model_dir, data_file, out, resume=True, eval_every=0, max_steps=4))
    assert res["steps"] == 4 and len(_losses(out)) == 4


@pytest.mark.slow
def test_two_ranks_average_over_all_their_tokens(tiny_model_dir, tmp_path):
    """With two ranks whose micro-batches hold different numbers of trainable tokens, the step's
    gradient is the mean over all tokens (checked through its norm against one process), not
    the mean of the two ranks' means."""
    import torch
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thinkgym.sft_coldstart.packing import collate_padded, model_inputs, token_loss
    from thinkgym.sft_coldstart.train import SFTConfig, _build_data, _epoch_micro_batches

    rows = [{"messages": [{"role": "user", "content": "Count."},
                          {"role": "assistant", "content": " ".join(str(k) for k in range(4 * i + 1))}]} for i in range(16)]
    data = tmp_path / "uneven.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in rows))
    conf = {"model": str(tiny_model_dir), "output_dir": str(tmp_path / "ddp"), "datasets": [str(data)],
            "eval_fraction": 0, "max_length": 128, "packing": False, "max_steps": 1, "eval_every": 0,
            "save_best": False, "zero_stage": 2, "max_grad_norm": 1e9, "progress": False, "tensorboard": False,
            "plot": False}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         "-m", "thinkgym.sft_coldstart.train", str(tmp_path / "c.yaml")],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=_child_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()[0])

    cfg = SFTConfig(**{k: v for k, v in conf.items()})
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    train_ex = _build_data(cfg, tok)[0]
    batches = [collate_padded(train_ex, [mb[0][0]], tok.pad_token_id)
               for rank in (0, 1) for mb in _epoch_micro_batches(cfg, train_ex, 0, rank, 2)[:1]]
    counts = [int((b["targets"] != -100).sum()) for b in batches]
    assert counts[0] != counts[1], counts  # the ranks' means and the mean over all tokens differ
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    loss = sum(token_loss(model(**model_inputs(b)).logits, b["targets"]) for b in batches) / sum(counts)
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])).item()
    assert logged["train/loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert logged["train/grad_norm"] == pytest.approx(norm, rel=1e-4)
