"""Audit of the GRPO / PPO learner: the loss math against its references, and loop, checkpoint
and config behaviour a verl / TRL user relies on. Each slow test runs the real learner (vLLM on
CPU, DeepSpeed) for a step or two on the tiny model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port
from test_grpo_train import REPO, hf_logprobs, tiny_cfg, yaml_cfg

from thinkgym.config import ConfigError
from thinkgym.grpo import core

NAN = float("nan")


# ---------------------------------------------------------------------------------------------
# core.py against straightforward reference implementations
# ---------------------------------------------------------------------------------------------


def test_group_advantages_and_rloo_match_a_per_group_reference():
    """GRPO: (r - mean) / (sample std + eps); Dr. GRPO: r - mean; RLOO: r - mean of the others.
    Grader errors (NaN) are in no statistic and get 0; groups of one valid reward get 0."""
    g = torch.Generator().manual_seed(0)
    gids = torch.randint(0, 7, (60,), generator=g)
    r = torch.randint(0, 4, (60,), generator=g).float() / 3
    r[torch.rand(60, generator=g) < 0.2] = NAN
    r[gids == 6] = 0.5  # all equal
    got = {"std": core.group_advantages(r, gids), "dr": core.group_advantages(r, gids, std_normalize=False),
           "rloo": core.rloo_advantages(r, gids)}
    for i in range(60):
        peers = [float(r[j]) for j in range(60) if gids[j] == gids[i] and not math.isnan(r[j])]
        if math.isnan(r[i]):
            assert all(float(a[i]) == 0.0 for a in got.values())
            continue
        mean = sum(peers) / len(peers)
        std = torch.tensor(peers, dtype=torch.float64).std().item() if len(peers) > 1 else 0.0
        others = len(peers) - 1
        loo = float(r[i]) - (sum(peers) - float(r[i])) / others if others else 0.0
        assert float(got["dr"][i]) == pytest.approx(float(r[i]) - mean, abs=1e-6)
        assert float(got["std"][i]) == pytest.approx((float(r[i]) - mean) / (std + 1e-6), abs=1e-5)
        assert float(got["rloo"][i]) == pytest.approx(loo, abs=1e-6)
    assert (got["std"][gids == 6] == 0).all() and not any(torch.isnan(a).any() for a in got.values())


def test_dual_clip_and_kl_gradients_have_the_reference_signs():
    # Negative advantage, ratio 5: PPO's loss -A * r = 5 grows without bound; dual clip (c = 3)
    # caps it at -A * c with no gradient. Ratio 0.5 < 1 - eps: the clipped branch, no gradient.
    lp = torch.log(torch.tensor([5.0, 0.5, 1.1])).requires_grad_()
    adv = torch.tensor([-1.0, -1.0, -1.0])
    loss, clipped = core.clipped_surrogate(lp, torch.zeros(3), adv, 0.2, 0.28, dual_clip=3.0)
    loss.sum().backward()
    assert loss.tolist() == pytest.approx([3.0, 0.8, 1.1]) and clipped.tolist() == [0.0, 1.0, 0.0]
    assert lp.grad.tolist() == pytest.approx([0.0, 0.0, 1.1])  # d(-A r)/dlogp = -A r
    # KL(pi || ref) estimators: the gradient pushes log pi towards the reference.
    q = torch.tensor([math.log(0.2)])
    for est, want in (("k1", 1.0), ("k2", math.log(0.5 / 0.2)), ("k3", 1 - 0.2 / 0.5)):
        p = torch.tensor([math.log(0.5)], requires_grad=True)
        core.kl_estimate(p, q, est).sum().backward()
        assert p.grad.item() == pytest.approx(want, rel=1e-5), est


def test_micro_batches_accumulate_to_the_full_batch_gradient(tiny_model_dir):
    """The loop's loss, split into micro-batches normalised by the minibatch's token / sequence
    counts, gives the gradient of the one-batch loss, for every aggregation (shared-prefix forward)."""
    from transformers import AutoModelForCausalLM

    from test_grpo_prefix import batch
    from thinkgym.grpo.forward import policy_forward, take

    g = torch.Generator().manual_seed(1)
    r = lambda k: torch.randint(3, 200, (k,), generator=g).tolist()  # noqa: E731
    full = batch([(r(6), [r(3), r(9), r(1), r(5)]), (r(4), [r(7), r(2), r(8), r(4)])])
    full["mask"][2] = 0  # a grader error: no loss
    adv = torch.randn(8, 1, generator=g)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for mode in ("token_mean", "seq_mean", "constant"):
        norm = {"num_tokens": float(full["mask"].sum()), "num_seqs": 8.0}
        grads = []
        for size in (8, 2):
            model.zero_grad()
            for idx in torch.arange(8).split(size):
                b, t = take(full, idx)
                lp, _ = policy_forward(model, b, 0.7)
                pg, _ = core.clipped_surrogate(lp, lp.detach() - 0.1, adv[idx], 0.2, 0.28)
                core.aggregate(pg, b["mask"], mode, constant=16, **norm).backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def sampler_gap(engine, sampler) -> float:
    """Largest |logprob| gap between the sampler's greedy continuation and the learner's weights."""
    from thinkgym.sampler.types import SamplingConfig

    prompt = sampler.tokenizer.apply_chat_template([{"role": "user", "content": "2 + 3 ="}],
                                                   add_generation_prompt=True, tokenize=True, return_dict=False)
    prompt = list(prompt["input_ids"] if isinstance(prompt, dict) else prompt)
    c = sampler.generate([prompt], SamplingConfig(n=1, temperature=0.0, max_tokens=12, seed=0))[0][0]
    return max(abs(a - b) for a, b in zip(hf_logprobs(engine.module, prompt, c.token_ids), c.logprobs))


@pytest.mark.slow
@pytest.mark.vllm
def test_a_nan_in_a_later_minibatch_still_syncs_the_earlier_update(tmp_path, tiny_model_dir, monkeypatch):
    """Step 1's second minibatch has a non-finite loss: its update is skipped, but the first
    minibatch's update was applied. The sampler must get those weights; it kept the old ones, so
    step 2 sampled from a policy the learner no longer had (logprob gap 0.1 on the tiny model)."""
    from thinkgym.grpo.train import train

    real, now = core.aggregate, {"step": 1, "calls": 0}

    def aggregate(loss, mask, mode="token_mean", **kw):
        out = real(loss, mask, mode, **kw)
        if loss.requires_grad and now["step"] == 1:
            now["calls"] += 1  # kl_coef 0, entropy_coef 0: one policy-loss call per micro-batch
            if now["calls"] > 2:  # 2 minibatches x 2 micro-batches: the second minibatch
                out = out * NAN
        return out

    monkeypatch.setattr(core, "aggregate", aggregate)
    gaps, moved, before = {}, {}, {}

    def on_step(step, engine, sampler, row):
        now["step"] = step + 1
        gaps[step] = sampler_gap(engine, sampler)
        w = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
        moved[step] = any(not torch.equal(w[k], before[k]) for k in w) if before else None
        before.update(w)

    cfg = tiny_cfg(tiny_model_dir, tmp_path / "run", max_steps=2, kl_coef=0.0, minibatches=2, micro_batch_size=2,
                   tensorboard=False)
    res = train(cfg, on_step=on_step)
    assert [r["skipped"] for r in res["history"]] == [1.0, 0.0]
    assert moved[2]  # step 2 trained normally
    assert all(g < 2e-3 for g in gaps.values()), gaps


@pytest.mark.slow
@pytest.mark.vllm
def test_gradient_checkpointing_recomputes_activations_with_the_same_update(tmp_path, tiny_model_dir, monkeypatch):
    """``gradient_checkpointing: true`` must checkpoint: HF checkpoints only in training mode, and
    ``from_pretrained`` returns the model in eval mode, so the option saved no memory at all. It
    must not change the update either (no dropout turned on)."""
    import transformers.modeling_utils as mu
    from safetensors.torch import load_file

    from thinkgym.grpo.train import train

    calls = [0]
    real = mu.checkpoint

    def checkpoint(*a, **kw):
        calls[0] += 1
        return real(*a, **kw)

    monkeypatch.setattr(mu, "checkpoint", checkpoint)  # what gradient_checkpointing_enable binds
    out = {}
    for gc in (True, False):
        calls[0] = 0
        cfg = tiny_cfg(tiny_model_dir, tmp_path / str(gc), max_steps=1, gradient_checkpointing=gc, shared_prefix=False,
                       tensorboard=False)
        res = train(cfg)
        out[gc] = (res["history"][0], load_file(Path(res["checkpoint"]) / "hf" / "model.safetensors"), calls[0])
    # 4 decoder layers x 4 policy forwards (old logprobs and training, 2 micro-batches of 4 rows each)
    assert out[True][2] >= 16 and out[False][2] == 0
    a, b = out[True][0], out[False][0]
    assert a["reward"] == b["reward"] and a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    for k, v in out[True][1].items():
        torch.testing.assert_close(v, out[False][1][k], atol=1e-4, rtol=1e-4)


TOKEN_SPY = """
import json, os, sys
from thinkgym.config import load_config
from thinkgym.grpo import core
from thinkgym.grpo.train import GRPOConfig, train

seen, real = [], core.aggregate

def aggregate(loss, mask, mode="token_mean", **kw):
    if loss.requires_grad:  # the policy loss of one micro-batch
        seen.append([float(mask.sum()), float(kw["num_tokens"])])
    return real(loss, mask, mode, **kw)

core.aggregate = aggregate
train(load_config(GRPOConfig, sys.argv[1]))
with open(os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump(seen, f)
"""


@pytest.mark.slow
@pytest.mark.vllm
def test_token_mean_is_over_every_ranks_tokens(tmp_path, tiny_model_dir):
    """DAPO's token-level loss averages over every token of the batch. DeepSpeed averages the
    ranks' gradients, so each rank must divide its token sum by the mean token count over ranks;
    dividing by its own count weighted a token of a rank with short completions more (TRL's dapo
    loss uses the global count too)."""
    cfg = tiny_cfg(tiny_model_dir, tmp_path / "ddp", max_steps=1, minibatches=1, micro_batch_size=4, kl_coef=0.0,
                   tensorboard=False, aggregation="token_mean")
    path = yaml_cfg(tmp_path, cfg)
    script = tmp_path / "spy.py"
    script.write_text(TOKEN_SPY)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(free_port()), str(script), str(path), str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    local = [sum(t for t, _ in s) for s in seen]  # each rank's trainable tokens in the one minibatch
    assert local[0] != local[1], local  # the ranks sampled different lengths: the case that matters
    for s in seen:
        assert len(s) == 2 and all(n == pytest.approx(sum(local) / 2) for _, n in s), (s, local)


# ---------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.vllm
def test_resume_applies_a_changed_lr_and_refuses_what_cannot_load(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """--resume with ``lr`` / ``weight_decay`` changed: the checkpoint's optimizer and scheduler
    state carried the old values, which silently won (the logged lr said so). Changes the
    checkpoint cannot load into (ZeRO stage, process count, a critic it lacks) failed after the
    models loaded with a bare AssertionError or a missing file; now they are refused up front."""
    from thinkgym.grpo.engine import lr_factor
    from thinkgym.grpo.train import check_config, train

    out = tmp_path / "run"
    kw = dict(minibatches=1, micro_batch_size=8, warmup_steps=4, tensorboard=False)
    first = train(tiny_cfg(tiny_model_dir, out, max_steps=2, **kw))["history"]
    assert [r["lr"] for r in first] == pytest.approx([1e-3 * lr_factor(s, 4, 3, 1.0) for s in (0, 1)])

    with pytest.raises(ConfigError, match="step_000002 holds ZeRO stage 2 optimizer state; zero_stage 3"):
        check_config(tiny_cfg(tiny_model_dir, out, max_steps=3, **{**kw, "zero_stage": 3}), resume=True)
    with pytest.raises(ConfigError, match="holds no critic .*advantage: gae needs one"):
        check_config(tiny_cfg(tiny_model_dir, out, max_steps=3, advantage="gae", **kw), resume=True)
    with monkeypatch.context() as m:
        m.setenv("WORLD_SIZE", "2")
        with pytest.raises(ConfigError, match="saved by 1 processes; resume it with 1, not 2"):
            check_config(tiny_cfg(tiny_model_dir, out, max_steps=3, **kw), resume=True)

    groups = []
    res = train(tiny_cfg(tiny_model_dir, out, max_steps=3, lr=2e-3, weight_decay=0.1, **kw), resume=True,
                on_step=lambda step, engine, *_: groups.append(engine.optimizer.param_groups[0]))
    assert [r["step"] for r in res["history"]] == [1, 2, 3]
    assert res["history"][-1]["lr"] == pytest.approx(2e-3 * lr_factor(2, 4, 3, 1.0))  # warm-up continues
    assert groups[0]["weight_decay"] == 0.1
    said = capsys.readouterr().out
    assert said.count("config changed since it was saved") == 1 and "lr 0.001 -> 0.002" in said


@pytest.mark.slow
@pytest.mark.vllm
def test_rotation_keeps_the_checkpoint_resumed_from_over_a_half_written_one(tmp_path, tiny_model_dir):
    """A run killed while saving step 4 leaves step_000004 without trainer_state.json; ``latest``
    still names step 2, and --resume continues from there. Rotation counted the half-written dir:
    saving step 3 with keep_checkpoints 2 deleted steps 1 and 2 and kept it, so the only complete
    checkpoint left was step 3, and the one resumed from was gone."""
    import shutil

    from thinkgym.grpo.train import train

    out = tmp_path / "run"
    kw = dict(save_every=1, keep_checkpoints=2, minibatches=1, micro_batch_size=8, tensorboard=False)
    train(tiny_cfg(tiny_model_dir, out, max_steps=2, **kw))
    ckdir = out / "checkpoints"
    shutil.copytree(ckdir / "step_000002" / "hf", ckdir / "step_000004" / "hf")  # killed after the HF weights
    res = train(tiny_cfg(tiny_model_dir, out, max_steps=3, **kw), resume=True)
    assert [r["step"] for r in res["history"]] == [1, 2, 3]
    assert sorted(p.name for p in ckdir.glob("step_*")) == ["step_000002", "step_000003"]
    assert (ckdir / "latest").read_text() == "step_000003"
