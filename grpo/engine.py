"""DeepSpeed plumbing for the learner: process group, engines, weight gathering, collectives
and checkpoints (HF weights + DeepSpeed optimizer/scheduler + per-rank RNG and data cursor).

Kept out of ``train.py`` so the loop reads top to bottom; nothing here knows about RL.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from thinkgym.distributed import setup_distributed  # noqa: F401  (re-exported for the learner)
from thinkgym.grpo.lora import check_resumed_base, is_peft, merged_state_dict, save_adapter

# ------------------------------------------------------------------------------------------
# DeepSpeed engines
# ------------------------------------------------------------------------------------------


def make_skippable_adamw():
    import torch

    class SkippableAdamW(torch.optim.AdamW):
        """AdamW whose next step can be skipped (non-finite loss) under any ZeRO stage."""

        skip_next = False

        def step(self, closure=None):  # type: ignore[override]
            if self.skip_next:
                return None
            return super().step(closure)

    return SkippableAdamW


def build_engine(model: Any, cfg: Any, lr: float | None, micro_per_minibatch: int) -> tuple[Any, Any]:
    """Wrap ``model`` in a DeepSpeed engine; ``lr=None`` builds an inference-only engine."""
    import deepspeed
    import torch

    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": micro_per_minibatch,
        "steps_per_print": 10**9,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": cfg.dtype == "bf16"},
        "wall_clock_breakdown": False,
    }
    if lr is None:  # reference model: no optimiser; shard it only if the policy is sharded
        ds["zero_optimization"] = {"stage": 3 if cfg.zero_stage == 3 else 0}
        engine, *_ = deepspeed.initialize(model=model, config=ds, dist_init_required=False)
        engine.eval()
        return engine, None
    ds["zero_optimization"] = {"stage": cfg.zero_stage}
    if cfg.max_grad_norm > 0:
        ds["gradient_clipping"] = cfg.max_grad_norm
    params = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapter alone
    opt = make_skippable_adamw()(params, lr=lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup_steps, cfg.max_steps * cfg.ppo_epochs
                                                                       * cfg.minibatches, cfg.min_lr_ratio))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=ds, dist_init_required=False)
    return engine, opt


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each layer's activations in the backward pass, with dropout still off.

    ``from_pretrained`` leaves the model in eval mode (no dropout: the learner's logprobs must
    match the sampler's and its own no-grad forwards), and HF layers checkpoint only while
    ``training``: on its own, ``gradient_checkpointing_enable`` saved nothing. Only the
    checkpointed layers' own flag is set (not ``train()``, which recurses): the attention and MLP
    modules inside them, whose flags gate the dropout in decoder-only models, stay in eval mode."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    model.gradient_checkpointing_enable()
    for m in model.modules():
        if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing:
            m.training = True


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` optimiser steps, then cosine from 1 to ``min_ratio`` at ``total``
    (``min_ratio=1``: constant)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))


def full_state_dict(engine: Any, cfg: Any) -> dict[str, Any]:
    """HF-named full weights on every rank (gathered under ZeRO-3), detached CPU copies; with
    LoRA, the base model's weights with the adapter merged in."""
    import deepspeed

    module = engine.module
    if is_peft(module):  # never ZeRO-3 (validate_values)
        return merged_state_dict(module)
    if cfg.zero_stage == 3:
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _all_reduce(values: list[float], dtype: Any, op: str = "sum") -> Any:
    """``values`` reduced over every rank (``sum`` or ``max``); one process: as given."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=dtype)
    if torch.cuda.is_available():
        t = t.cuda()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.cpu()


def all_sum(t: Any) -> Any:
    """Tensor ``t`` summed over every rank, as a new tensor on ``t``'s device (one process: ``t``
    itself). Every rank must call it, with the same shape."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_ranks(ok: bool) -> bool:
    """True only if ``ok`` on every rank (so every rank takes the same branch)."""
    import torch

    return int(_all_reduce([0 if ok else 1], torch.int32)[0]) == 0


def all_max(x: int) -> int:
    """The largest ``x`` over every rank."""
    import torch

    return int(_all_reduce([x], torch.int64, "max")[0])


def all_mean(xs: list[float]) -> float:
    """Mean over every rank's values."""
    import torch

    t = _all_reduce([sum(xs), float(len(xs))], torch.float64)
    return float(t[0] / t[1]) if t[1] > 0 else float("nan")


def reduce_rows(local: dict[str, list[float]]) -> dict[str, float]:
    """Mean of each metric over every rank's values (keys may differ between ranks)."""
    import torch.distributed as dist

    parts = [local]
    if dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
    keys = sorted({k for p in parts for k in p})
    out = {}
    for k in keys:
        vals = [v for p in parts for v in p.get(k, []) if v is not None and not math.isnan(v)]
        out[k] = sum(vals) / len(vals) if vals else float("nan")
    return out


def weight_hashes(engine: Any, cfg: Any) -> list[str]:
    """sha256 of every rank's full weights, gathered to all ranks (one entry per rank)."""
    import hashlib

    import torch
    import torch.distributed as dist

    h = hashlib.sha256()
    for k, v in sorted(full_state_dict(engine, cfg).items()):
        h.update(k.encode())
        h.update(v.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    mine = h.hexdigest()
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


# ------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------


def save_checkpoint(out: Path, step: int, engines: dict[str, Any], tok: Any, cfg: Any,
                    state: dict[str, Any], rank: int) -> Path:
    """HF model (with LoRA: merged, and the adapter alone in ``adapter/``) + DeepSpeed states +
    per-rank RNG/cursor; ``latest`` is written last (atomic)."""
    import numpy as np
    import torch
    import torch.distributed as dist

    ck = out / "checkpoints" / f"step_{step:06d}"
    ck.mkdir(parents=True, exist_ok=True)
    sd = full_state_dict(engines["policy"], cfg)
    if rank == 0:
        model = engines["policy"].module
        # LoRA: hf/ is a plain merged model (eval and the sampler read it as any other), adapter/ the adapter alone
        hf = model.get_base_model() if is_peft(model) else model
        hf.save_pretrained(ck / "hf", state_dict=sd, safe_serialization=True)
        tok.save_pretrained(ck / "hf")
        if hf is not model:
            save_adapter(model, ck / "adapter")
    for tag, eng in engines.items():
        if eng is not None and tag != "ref":
            # LoRA: the adapter and its optimizer state only; the frozen base is model's, and hf/ holds the merge
            eng.save_checkpoint(str(ck / "ds"), tag=tag, exclude_frozen_parameters=is_peft(eng.module))
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
           "cursor": state["cursor"], "eval_cursor": state.get("eval_cursor", 0)}
    torch.save(rng, ck / f"rank{rank}_state.pt")
    dist.barrier()
    if rank == 0:
        meta = {k: v for k, v in state.items() if k not in ("cursor",)}
        (ck / "trainer_state.json").write_text(json.dumps({**meta, "step": step, "config": asdict(cfg)}))
        tmp = out / "checkpoints" / "latest.tmp"
        tmp.write_text(ck.name)
        os.replace(tmp, out / "checkpoints" / "latest")
        # Only complete checkpoints count: a step dir without trainer_state.json is what a run killed
        # mid-save left. Counted, it outranked the checkpoint this run resumed from, which was pruned.
        old = sorted(p for p in (out / "checkpoints").glob("step_*") if p != ck)
        done = [p for p in old if (p / "trainer_state.json").is_file()]
        for p in [p for p in old if p not in done] + done[: max(0, len(done) - cfg.keep_checkpoints + 1)]:
            shutil.rmtree(p, ignore_errors=True)
    dist.barrier()
    return ck


def write_run_config(out: Path, cfg: Any, rank: int) -> None:
    """Create ``out``; rank 0 writes the run's resolved config there as ``config.yaml`` (as SFT
    does), atomically: a resumed run replaces it with its own (each checkpoint's
    ``trainer_state.json`` keeps the config that saved it). A hub model is named by its repo id,
    not this machine's cache path, so the file runs elsewhere."""
    import yaml

    from thinkgym.hub import hub_id_of

    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        d = asdict(cfg)
        d["model"] = hub_id_of(d["model"]) or d["model"]
        tmp = out / "config.yaml.tmp"
        tmp.write_text(yaml.safe_dump(d, sort_keys=False))
        os.replace(tmp, out / "config.yaml")


def latest_checkpoint(out: Path) -> Path | None:
    p = out / "checkpoints" / "latest"
    return (out / "checkpoints" / p.read_text().strip()) if p.is_file() else None


def load_engines(ck: Path, engines: dict[str, Any], cfg: Any) -> None:
    """Restore each engine's DeepSpeed state from checkpoint ``ck``, then the configured ``lr`` /
    ``vf_lr`` and ``weight_decay``: the optimizer and scheduler state carry the values of the run
    that saved them, which would silently win over ones changed for the resumed run. The schedule
    (warm-up, cosine) continues from the restored optimiser step count."""
    lrs = {"policy": cfg.lr, "critic": cfg.vf_lr}
    for tag, eng in engines.items():
        if eng is None:
            continue
        lora = is_peft(eng.module)
        eng.load_checkpoint(str(ck / "ds"), tag=tag, load_module_strict=not lora)  # LoRA: no frozen base saved
        if lora:
            check_resumed_base(eng.module, ck / "hf")
        sched = eng.lr_scheduler  # LambdaLR over the base optimizer (build_engine)
        sched.base_lrs = [lrs[tag]] * len(sched.base_lrs)
        for g, f in zip(sched.optimizer.param_groups, sched.lr_lambdas):
            g.update(initial_lr=lrs[tag], lr=lrs[tag] * f(sched.last_epoch), weight_decay=cfg.weight_decay)
        sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]


def load_rank_state(ck: Path, rank: int) -> dict[str, Any]:
    import numpy as np
    import torch

    s = torch.load(ck / f"rank{rank}_state.pt", weights_only=False)
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if s.get("cuda") is not None:
        torch.cuda.set_rng_state_all(s["cuda"])
    return s
