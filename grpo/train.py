"""The thinkgym learner: GRPO / PPO with verifiable rewards, vLLM rollouts and DeepSpeed updates.

One step, top to bottom (``train`` below):

1. **Collect.** Every rank takes its own prompts (index ``rank + world * k``), samples
   ``group_size`` completions per prompt with the sampler (vLLM by default) and grades them
   in the envs. **Dynamic sampling** (DAPO): groups whose rewards are all equal carry no
   learning signal and are replaced by fresh prompts, at most ``max_sampling_tries`` rounds;
   after that, leftovers fill the batch (their advantage is 0, only the KL term sees them), so
   every rank trains on the same number of sequences. With ``fill_batch: false`` the step trains
   on the informative groups only: less compute, and flat groups do not dilute a ``token_mean``
   loss (ranks still agree on one group count, the largest).
2. **Score.** Grader infrastructure errors (``reward=None``) are counted, get advantage 0 and
   no loss; ``max_bad_steps`` steps in a row on which every grade failed stop the run. Optional DAPO overlong shaping adds a soft length penalty; optional overlong
   filtering masks truncated completions out of the loss.
3. **Advantages**, one estimator chosen by ``advantage``: ``grpo`` (group mean-centred, divided
   by the group std if ``std_normalize``; Dr. GRPO sets it false), ``rloo`` (leave-one-out
   baseline), ``gae`` (PPO: a critic and token-level GAE). KL to the reference policy is a loss
   term (GRPO) or, with ``kl_in_reward``, a penalty on the reward (classic PPO).
4. **Learn.** ``ppo_epochs`` passes over the batch in ``minibatches`` optimiser steps each; loss
   = clipped surrogate (separate low/high clip, DAPO clip-higher; a per-token ratio, or GSPO's
   per-sequence one with ``importance_sampling_level: sequence``) x truncated importance weight
   (learner vs sampler logprobs) + ``kl_coef`` x KL - ``entropy_coef`` x entropy, aggregated
   ``token_mean`` (DAPO), ``seq_mean`` (GRPO) or ``constant`` (Dr. GRPO) over the minibatch
   (of every rank: ``token_mean`` divides by the token count of all ranks together).
   A non-finite loss skips the update (loudly); ``max_bad_steps`` in a row stops the run.
   Each group's shared prompt runs once per micro-batch (``shared_prefix``, ``grpo/forward.py``),
   identical completions run once (their copies share the outputs and add up in the gradient),
   and with one update per batch the "old" logprobs are the training forward's own, detached.
   The learning rate warms up linearly, then is constant or cosine-decayed (``min_lr_ratio``).
5. **Sync** the new weights into the sampler, log metrics, evaluate and checkpoint.

With ``async_rollouts`` the next step's rollouts (step 1, in a background thread) are sampled
while this step learns (step 4), by the weights before this step's update: one update
off-policy, as in PipelineRL / verl's one-step-off mode; the truncated IS weights (``tis_cap``)
correct for the lag. The sync waits for that sampling to finish. It pays where sampling leaves
the hardware partly idle (a ``vllm-server`` sampler on its own GPUs); on 2 CPU cores it is slower.

With ``lora_r > 0`` only a LoRA adapter on the policy trains (``grpo/lora.py``): the KL reference
is the same model with its adapter off, and the sampler and the HF checkpoints get the merged
weights, so they never see the adapter. One process works as is; for several use
``deepspeed --num_gpus N --module thinkgym.grpo.train --config ...`` (or ``torchrun``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

from thinkgym.config import clear_earlier_run
from thinkgym.hub import resolve_model
from thinkgym.grpo.checks import EARLIER_RUN, check_config, validate_values
from thinkgym.grpo.engine import (
    all_mean,
    all_ranks,
    all_sum,
    build_engine,
    enable_gradient_checkpointing,
    full_state_dict,
    latest_checkpoint,
    load_engines,
    load_rank_state,
    reduce_rows,
    save_checkpoint,
    setup_distributed,
    weight_hashes,
    write_run_config,
)
from thinkgym.grpo.forward import by_group_length, collate, policy_forward, take, value_forward
from thinkgym.grpo.lora import adapter_disabled, add_lora, lora_dropout_off
from thinkgym.grpo.monitor import Monitor, plot_curves, rollout_metrics
from thinkgym.grpo.rollouts import batch_groups, collect_groups, evaluate


@dataclass
class GRPOConfig:
    """Every knob of the learner. YAML keys are these field names."""

    model: str = ""  #: HF model directory (from_pretrained) to start from
    output_dir: str = "runs/grpo"  #: checkpoints, metrics.jsonl, TensorBoard and curves.png go here
    seed: int = 0  #: seeds sampling, data order and torch
    envs: list[str] = field(default_factory=lambda: ["thinkgym/Arithmetic-v0"])  #: env ids, mixed round-robin by prompt index
    env_kwargs: dict = field(default_factory=dict)  #: kwargs passed to every env constructor
    eval_env_kwargs: dict = field(default_factory=dict)  #: extra kwargs for the held-out eval envs (e.g. another seed)
    max_steps: int = 100  #: RL steps (one batch of rollouts each)
    prompts_per_step: int = 8  #: prompts per step per rank
    group_size: int = 8  #: completions per prompt (G)
    max_turns: int | None = None  #: cap on turns for multi-turn envs (None = the env's own limit)
    # -- sampling
    sampler_backend: Literal["vllm", "vllm-server", "hf"] = "vllm"  #: rollout backend
    sampler_kwargs: dict = field(default_factory=dict)  #: extra kwargs for make_sampler (e.g. gpu_memory_utilization)
    temperature: float = 1.0  #: sampling temperature (the learner uses the same one for its logprobs)
    top_p: float = 1.0  #: nucleus mass
    max_tokens: int = 128  #: generation budget per completion
    stop: list[str] = field(default_factory=list)  #: stop strings
    think_budget: int | None = None  #: tokens allowed inside <think> (None = no budget)
    answer_budget: int = 32  #: tokens after a forced </think>
    budget_mode: Literal["force", "truncate"] = "force"  #: what happens when the think budget runs out
    dynamic_sampling: bool = True  #: DAPO: drop groups with identical rewards and refill
    max_sampling_tries: int = 3  #: rounds of refilling before leftovers fill the batch
    fill_batch: bool = True  #: after the last round, fill the batch with flat groups (false: train on fewer groups)
    async_rollouts: bool = False  #: sample the next batch while this one trains: one update off-policy (keep tis_cap on)
    # -- rewards and advantages
    advantage: Literal["grpo", "rloo", "gae"] = "grpo"  #: advantage estimator (gae = PPO with a critic)
    std_normalize: bool = True  #: divide group advantages by the group std (false = Dr. GRPO)
    overlong_buffer: int = 0  #: DAPO soft overlong penalty over the last N tokens of max_tokens, on the longest turn (0 = off)
    overlong_penalty: float = 1.0  #: penalty at max_tokens
    mask_truncated: bool = False  #: DAPO overlong filtering: no loss on episodes with a turn cut by max_tokens
    gamma: float = 1.0  #: GAE discount
    lam: float = 0.95  #: GAE lambda
    # -- loss
    clip_low: float = 0.2  #: PPO ratio clip below 1
    clip_high: float = 0.28  #: PPO ratio clip above 1 (DAPO clip-higher when > clip_low)
    dual_clip: float | None = None  #: dual-clip bound for negative advantages (> 1), None = off
    importance_sampling_level: Literal["token", "sequence"] = "token"  #: PPO ratio per token, or per sequence (GSPO: use seq_mean and clips near 3e-4 / 4e-4)
    aggregation: Literal["token_mean", "seq_mean", "constant"] = "token_mean"  #: loss reduction
    kl_coef: float = 0.0  #: KL-to-reference weight (0 = no reference model)
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"  #: per-token KL estimator
    kl_in_reward: bool = False  #: put the KL in the reward instead of the loss
    entropy_coef: float = 0.0  #: entropy bonus weight
    tis_cap: float | None = 2.0  #: cap of the truncated importance weight pi_learner/pi_sampler (None = off)
    value_clip: float | None = 0.2  #: PPO value clip (gae only)
    vf_lr: float = 1e-5  #: critic learning rate (gae only)
    # -- optimisation
    lr: float = 1e-6  #: policy learning rate
    warmup_steps: int = 0  #: linear warmup, in optimiser steps
    min_lr_ratio: float = 1.0  #: cosine decay to lr x this at the last step (1.0 = constant lr)
    weight_decay: float = 0.0  #: AdamW weight decay
    max_grad_norm: float = 1.0  #: gradient clipping (0 = off)
    ppo_epochs: int = 1  #: passes over each batch
    minibatches: int = 1  #: optimiser steps per epoch
    micro_batch_size: int = 8  #: sequences per forward/backward (gradient accumulation below that)
    zero_stage: int = 2  #: DeepSpeed ZeRO stage (0-3)
    dtype: Literal["fp32", "bf16"] = "fp32"  #: training precision (fp32 on CPU)
    gradient_checkpointing: bool = False  #: recompute activations to save memory
    shared_prefix: bool = True  #: run each group's shared prompt once per micro-batch (same logprobs, fewer tokens; off with gradient_checkpointing)
    # -- LoRA on the policy (the critic of advantage: gae trains in full); the KL reference is the base model
    lora_r: int = 0  #: LoRA rank; 0 = full fine-tuning
    lora_alpha: int = 16  #: LoRA scaling numerator (scale = lora_alpha / lora_r)
    lora_dropout: float = 0.0  #: dropout on the adapter's input in the learner's forwards (the sampler serves merged weights)
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )  #: module names LoRA wraps
    # -- bookkeeping
    save_every: int = 50  #: checkpoint every N steps (and on SIGTERM / Ctrl-C and at the end)
    overwrite: bool = False  #: a fresh run replaces an earlier run's checkpoints in output_dir (else an error)
    resume_allow_changes: list[str] = field(default_factory=list)  #: --resume refuses to change the model, seed, envs, env_kwargs, max_turns, batch shape, algorithm or dtype (checks.RESUME_REFUSED: another experiment): list those to change anyway
    keep_checkpoints: int = 2  #: how many checkpoints to keep
    eval_every: int = 0  #: held-out eval every N steps (0 = only at the end if eval_prompts > 0)
    eval_prompts: int = 0  #: held-out prompts per eval (greedy, one sample each)
    eval_contamination: Literal["error", "warn", "off"] = "warn"  #: held-out prompts that repeat a question training may sample (same text at another index or seed): refuse the run, warn, or skip the check
    max_bad_steps: int = 3  #: stop after this many non-finite losses, or steps whose every grade failed, in a row
    debug_nan_steps: list[int] = field(default_factory=list)  #: fault injection for tests: force NaN loss at these steps
    progress: bool = True  #: rich progress bar on rank 0
    tensorboard: bool = True  #: write TensorBoard scalars

    def validate(self) -> None:
        """Checks on the values alone (no filesystem, no imports of heavy packages)."""
        validate_values(self)


def reuses_training_logprobs(cfg: GRPOConfig) -> bool:
    """One optimiser step per batch (and no KL in the reward): the policy is unchanged when it
    computes its loss, so its "old" logprobs are the training forward's own, detached."""
    return cfg.ppo_epochs * cfg.minibatches == 1 and not cfg.kl_in_reward


# ------------------------------------------------------------------------------------------
# Advantage estimators: (cfg, rewards (N,), group ids (N,), mask (N,T), values, kl (N,T))
#   -> advantages (N,T), returns (N,T) or None. Pick one with ``advantage:`` in the config.
# ------------------------------------------------------------------------------------------


def grpo_estimator(cfg: GRPOConfig, rewards: Any, gids: Any, mask: Any, values: Any, kl: Any) -> tuple[Any, Any]:
    from thinkgym.grpo import core

    if cfg.kl_in_reward:
        rewards = rewards - cfg.kl_coef * core.masked_sum(kl, mask, dim=1)
    adv = core.group_advantages(rewards, gids, std_normalize=cfg.std_normalize)  # (N,)
    return adv[:, None] * mask, None


def rloo_estimator(cfg: GRPOConfig, rewards: Any, gids: Any, mask: Any, values: Any, kl: Any) -> tuple[Any, Any]:
    from thinkgym.grpo import core

    if cfg.kl_in_reward:
        rewards = rewards - cfg.kl_coef * core.masked_sum(kl, mask, dim=1)
    return core.rloo_advantages(rewards, gids)[:, None] * mask, None


def gae_estimator(cfg: GRPOConfig, rewards: Any, gids: Any, mask: Any, values: Any, kl: Any) -> tuple[Any, Any]:
    from thinkgym.grpo import core

    tok_r = core.token_level_rewards(rewards, mask)  # (N,T)
    if cfg.kl_in_reward:
        tok_r = core.kl_penalized_rewards(tok_r, kl, cfg.kl_coef, mask)
    adv, returns = core.gae(tok_r, values, mask, cfg.gamma, cfg.lam)
    return core.masked_whiten(adv, mask, all_sum=all_sum), returns  # over every rank's tokens


ESTIMATORS = {"grpo": grpo_estimator, "rloo": rloo_estimator, "gae": gae_estimator}


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------


def train(cfg: GRPOConfig, resume: bool = False, on_step: Callable[..., None] | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns ``{"history": [...], "stopped": reason, "checkpoint": dir}``.

    ``on_step(step, policy_engine, sampler, row)`` runs after each step's weight sync and metrics
    (extensions and tests: e.g. check that the sampler now serves the learner's weights; with LoRA
    the engine's module is a peft model, and ``engine.full_state_dict`` gives its HF weights).
    """
    n_items = check_config(cfg, resume)  # before anything heavy
    # A hub id becomes its HF-cache snapshot: the learner, vLLM and the weight sync read files.
    cfg = replace(cfg, model=resolve_model(cfg.model))
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    from thinkgym.grpo import core
    from thinkgym.sampler import make_sampler
    from thinkgym.sampler.types import mix_seed

    rank, world, device = setup_distributed()
    out = Path(cfg.output_dir)
    write_run_config(out, cfg, rank)  # config.yaml
    ck = latest_checkpoint(out) if resume else None
    if ck is None and cfg.overwrite and rank == 0:  # check_config refused an earlier run's files otherwise
        clear_earlier_run(out, EARLIER_RUN, "grpo")
    if resume and ck is None and rank == 0:
        print(f"[thinkgym] --resume: no checkpoint in {out}/checkpoints, starting from {cfg.model}")
    dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    tok = AutoTokenizer.from_pretrained(cfg.model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    # Engines. Each rank holds a full sampler and its own share of prompts (colocated).
    n_seq = cfg.prompts_per_step * cfg.group_size
    micro_per_mb = n_seq // cfg.minibatches // cfg.micro_batch_size
    policy = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    if cfg.lora_r:
        policy = add_lora(policy, cfg)
    policy_eng, opt = build_engine(policy, cfg, cfg.lr, micro_per_mb)
    ref_eng = None
    if cfg.kl_coef > 0 and cfg.lora_r:  # run with its adapter off (adapter_disabled): no second copy
        ref_eng = policy_eng
    elif cfg.kl_coef > 0:
        ref_eng, _ = build_engine(AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype), cfg, None, 1)
    critic_eng = critic_opt = None
    if cfg.advantage == "gae":
        critic = AutoModelForTokenClassification.from_pretrained(cfg.model, num_labels=1, dtype=dtype)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(critic)
        critic_eng, critic_opt = build_engine(critic, cfg, cfg.vf_lr, micro_per_mb)
    engines = {"policy": policy_eng, "critic": critic_eng}

    state: dict[str, Any] = {"step": 0, "cursor": 0, "history": [], "bad_streak": 0, "n_items": 0}
    if ck is not None:
        load_engines(ck, engines, cfg)  # check_config refused changes a checkpoint cannot load into
        meta = json.loads((ck / "trainer_state.json").read_text())
        state.update({k: meta[k] for k in ("step", "history", "bad_streak")})
    # vLLM in the learner's process: weight sync hands over tensors, no files (colocated mode).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if device.type == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM would take half the RAM
    sampler = make_sampler(cfg.sampler_backend, str(ck / "hf") if ck else cfg.model, **cfg.sampler_kwargs)
    state["n_items"] = n_items
    # Seed (or restore) RNGs last: building the sampler reseeds torch's global generator.
    if ck is not None:
        state["cursor"] = load_rank_state(ck, rank)["cursor"]
    else:
        torch.manual_seed(cfg.seed + rank)
        random.seed(cfg.seed + rank)
        np.random.seed(cfg.seed + rank)

    def on_signal(signum: int, _: Any) -> None:  # SIGTERM or a first Ctrl-C: finish the step, checkpoint, exit
        stop["signal"] = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
        if rank == 0:
            print(f"\n[thinkgym] {stop['signal']}: stopping after this step, with a checkpoint (Ctrl-C again: at once)", flush=True)
    stop: dict[str, str] = {}
    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT) if signal.getsignal(s) != signal.SIG_IGN}
    monitor = Monitor(cfg, out, state["history"], state["step"]) if rank == 0 else None
    last_ck, stopped, grader_streak = ck, "max_steps", 0
    agg_kw = {"mode": cfg.aggregation, "constant": cfg.max_tokens}
    single_update = reuses_training_logprobs(cfg)
    shared_prefix = cfg.shared_prefix and not cfg.gradient_checkpointing  # checkpointing drops the KV cache
    pool = ThreadPoolExecutor(1, thread_name_prefix="thinkgym-rollouts") if cfg.async_rollouts else None
    ahead = ahead_state = None  # async: the next step's rollouts, in flight

    for step in range(state["step"] + 1, cfg.max_steps + 1):
        # ---- 1. collect (with dynamic sampling) -------------------------------------------
        t0 = time.perf_counter()
        if ahead is not None:  # async: sampled during the last step's learning, by the weights before it
            (groups, sampled, sstats), state["cursor"] = ahead.result(), ahead_state["cursor"]
        else:
            groups, sampled, sstats = collect_groups(cfg, sampler, state, step, rank, world)
        groups = batch_groups(cfg, groups, sstats)
        if pool is not None and step < cfg.max_steps:  # the next batch samples while this one learns
            ahead_state = {"cursor": state["cursor"], "n_items": state["n_items"]}  # checkpoints keep the cursor before it
            ahead = pool.submit(collect_groups, cfg, sampler, ahead_state, step + 1, rank, world)
        else:
            ahead = None
        episodes = [e for g in groups for e in g]
        gids = torch.tensor([i for i, g in enumerate(groups) for _ in g])  # (N,)
        t_collect = time.perf_counter() - t0

        # ---- 2. rewards: infra errors, overlong shaping / filtering -------------------------
        t1 = time.perf_counter()
        raw = core.rewards_tensor([e.reward for e in episodes])  # (N,) NaN = grader error
        lengths = torch.tensor([e.longest_turn for e in episodes])  # (N,) max_tokens caps each turn
        rewards = raw.clone()
        if cfg.overlong_buffer > 0:
            rewards = rewards + core.overlong_penalty(lengths, cfg.max_tokens, cfg.overlong_buffer, cfg.overlong_penalty)
        seq_w = (~torch.isnan(raw)).float()  # (N,)
        if cfg.mask_truncated:
            seq_w = seq_w * core.truncation_mask([e.finish_reasons for e in episodes])
        full = collate(episodes, pad_id, device)  # (N, T) tensors
        if shared_prefix:
            full["gids"] = gids.to(device)  # (N,) policy_forward shares each group's prompt
        mask = full["mask"] * seq_w.to(device)[:, None]  # (N, T)

        # ---- 3. old / reference logprobs, values, advantages (no grad) ----------------------
        # With one update per batch the policy has not moved since sampling when it computes its
        # loss, so the training forward's own detached logprobs are the "old" ones: skip a forward.
        old_lp, ref_lp, values = (torch.zeros_like(mask) for _ in range(3))
        n = len(episodes)  # n_seq, or fewer with fill_batch: false
        row_len = full["attention_mask"].sum(1).cpu()  # (N,)
        chunks = by_group_length(torch.arange(n), gids, row_len).split(cfg.micro_batch_size)
        with torch.no_grad():
            for idx in chunks:
                b, t = take(full, idx)
                if not single_update:
                    with lora_dropout_off(policy_eng):
                        old_lp[idx, :t] = policy_forward(policy_eng, b, cfg.temperature)[0]
                if ref_eng is not None:
                    with adapter_disabled(ref_eng):
                        ref_lp[idx, :t] = policy_forward(ref_eng, b, cfg.temperature)[0]
                if critic_eng is not None:
                    values[idx, :t] = value_forward(critic_eng, b)
        kl_tok = core.kl_estimate(old_lp, ref_lp, cfg.kl_estimator) if ref_eng is not None and not single_update \
            else torch.zeros_like(mask)
        kl_sum = torch.zeros(())  # single_update: the KL metric comes from the training forward
        adv, returns = ESTIMATORS[cfg.advantage](cfg, rewards.to(device), gids.to(device), mask, values, kl_tok)

        # ---- 4. learn: ppo_epochs x minibatches, micro-batch accumulation -------------------
        logs: dict[str, list[float]] = {}
        bad = updated = False  # a non-finite loss skips the rest of the step's updates, not the ones before it
        for epoch in range(cfg.ppo_epochs):
            # Whole groups stay together (the shared prefix pays per micro-batch); groups are shuffled
            # by a generator of their own (an async sampler thread draws from torch's global one).
            shuffle = torch.Generator().manual_seed(mix_seed(cfg.seed, step, epoch, rank))
            perm = torch.cat([torch.nonzero(gids == g)[:, 0] for g in torch.randperm(len(groups), generator=shuffle).tolist()])
            # fill_batch: false may leave fewer rows than minibatches; every rank has the same count.
            for mb in perm.tensor_split(min(cfg.minibatches, len(perm))):
                # DeepSpeed averages gradients over ranks: dividing by the mean token count over ranks
                # makes token_mean the mean over every rank's tokens (DAPO), not a mean of rank means.
                norm = {"num_tokens": all_mean([float(mask[mb].sum())]), "num_seqs": float(len(mb))}
                sums: dict[str, float] = {}  # over the minibatch: losses add up, token metrics are token-weighted
                logs.setdefault("lr", []).append(float(policy_eng.get_lr()[0]))  # the lr this optimiser step uses
                micro = by_group_length(mb, gids, row_len).split(cfg.micro_batch_size)
                for k, idx in enumerate(micro):
                    # The batch may be smaller than DeepSpeed's configured accumulation: say where it ends.
                    for eng in (policy_eng, critic_eng):
                        if eng is not None:
                            eng.set_gradient_accumulation_boundary(k == len(micro) - 1)
                    b, t = take(full, idx)
                    m, a = mask[idx, :t], adv[idx, :t]
                    lp, ent = policy_forward(policy_eng, b, cfg.temperature, entropy=True if cfg.entropy_coef else "metric")
                    old = lp.detach() if single_update else old_lp[idx, :t]
                    ratio_old = core.sequence_level_old(lp, old, m) if cfg.importance_sampling_level == "sequence" else old
                    pg, clipped = core.clipped_surrogate(lp, ratio_old, a, cfg.clip_low, cfg.clip_high, cfg.dual_clip)
                    if cfg.tis_cap is not None:
                        w = core.truncated_is_weights(old, b["sampler_lp"], cfg.tis_cap)  # (n, T-1)
                        pg = pg * w
                        sums["tis_weight"] = sums.get("tis_weight", 0.0) + float((w * m).sum())
                    loss = core.aggregate(pg, m, **agg_kw, **norm)
                    if ref_eng is not None and not cfg.kl_in_reward:
                        kl = core.kl_estimate(lp, ref_lp[idx, :t], cfg.kl_estimator)
                        loss = loss + cfg.kl_coef * core.aggregate(kl, m, **agg_kw, **norm)
                        kl_sum = kl_sum + (kl.detach() * m).sum()
                    if cfg.entropy_coef:
                        loss = loss - cfg.entropy_coef * core.aggregate(ent, m, **agg_kw, **norm)
                    if step in cfg.debug_nan_steps:
                        loss = loss * float("nan")
                    bad = bad or not all_ranks(bool(torch.isfinite(loss)))
                    policy_eng.backward(loss, scale_wrt_gas=False)  # we normalise over the minibatch
                    opt.skip_next = bad  # a non-finite loss skips this update and the step's later ones
                    policy_eng.step()
                    updated = updated or (k == len(micro) - 1 and not bad)
                    gnorm = policy_eng.get_global_grad_norm() if k == len(micro) - 1 else None  # set at the boundary
                    if gnorm is not None:
                        logs.setdefault("grad_norm", []).append(float(gnorm))
                    for name, v in (("loss", loss.detach()), ("tokens", m.sum()), ("clipfrac", (clipped * m).sum()),
                                    ("entropy", (ent.detach() * m).sum()), ("ratio", (torch.exp(lp.detach() - ratio_old) * m).sum())):
                        sums[name] = sums.get(name, 0.0) + float(v)
                    if critic_eng is not None:
                        v_new = value_forward(critic_eng, b)
                        vl = core.aggregate(core.clipped_value_loss(v_new, values[idx, :t], returns[idx, :t], cfg.value_clip),
                                            m, **agg_kw, **norm)
                        critic_eng.backward(vl, scale_wrt_gas=False)
                        critic_opt.skip_next = bad or not all_ranks(bool(torch.isfinite(vl)))
                        critic_eng.step()
                        sums["value_loss"] = sums.get("value_loss", 0.0) + float(vl.detach())
                tokens = max(sums.pop("tokens"), 1.0)
                for name, v in sums.items():
                    logs.setdefault(name, []).append(v if name in ("loss", "value_loss") else v / tokens)
        t_learn = time.perf_counter() - t1

        # ---- 5. sync weights to the sampler ------------------------------------------------
        t2 = time.perf_counter()
        if ahead is not None:
            ahead.exception()  # the engine must be idle before its weights change
        if updated:  # also when a later minibatch was skipped: the sampler must serve the weights that changed
            sampler.update_weights(full_state_dict(policy_eng, cfg))
        t_sync = time.perf_counter() - t2

        # ---- metrics -----------------------------------------------------------------------
        logs.update(rollout_metrics(sampled))  # every sampled episode, trained or not
        logs.update({
            "kl": [] if ref_eng is None else [float(kl_sum / mask.sum().clamp(min=1))] if single_update
            else [float(core.masked_mean(kl_tok, mask))],
            "groups_dropped": [sstats["groups_dropped"]], "groups_trained": [float(len(groups))],
            "sampling_rounds": [sstats["sampling_rounds"]],
            "tokens_per_s": [float(full["attention_mask"].sum()) * cfg.ppo_epochs / max(t_learn, 1e-9)],
            # async: generation and grading ran during the last step; t_wait is what they did not hide
            "t_generate": [sstats["gen_time"]], "t_grade": [sstats["grade_time"]], "t_wait": [t_collect],
            "t_learn": [t_learn], "t_sync": [t_sync], "t_step": [time.perf_counter() - t0],
        })
        row = {"step": step, **reduce_rows(logs), "grader_errors_total": 0.0}
        row["grader_errors"] = row["grader_errors"] * world  # mean over ranks -> total per step
        row["grader_errors_total"] = row["grader_errors"] + (state["history"][-1]["grader_errors_total"] if state["history"] else 0.0)
        row["skipped"] = float(bad)
        state["bad_streak"] = state["bad_streak"] + 1 if bad else 0
        if bad and rank == 0:
            print(f"\n[thinkgym] WARNING: non-finite loss at step {step}: update skipped "
                  f"({state['bad_streak']}/{cfg.max_bad_steps} in a row)", flush=True)
        # A grader that fails on every sample teaches nothing (advantage 0 everywhere): a broken
        # sandbox or judge endpoint stops the run instead of burning its budget.
        all_failed = not all_ranks(not all(e.infra_error for e in sampled))
        grader_streak = grader_streak + 1 if all_failed else 0
        if all_failed and rank == 0:
            why = next((e.grades[-1].get("reason") for e in sampled if e.grades), None)
            print(f"\n[thinkgym] WARNING: the grader failed on every sample of step {step} "
                  f"({grader_streak}/{cfg.max_bad_steps} in a row): {why}", flush=True)
        if cfg.eval_prompts and (step == cfg.max_steps or (cfg.eval_every and step % cfg.eval_every == 0)):
            row["eval_accuracy"], row["eval_grader_errors"] = evaluate(cfg, sampler, state, rank, world)
        state["history"].append(row)
        state["step"] = step
        if monitor is not None:
            monitor.log(row)
        if on_step is not None:
            on_step(step, policy_eng, sampler, row)

        # ---- checkpoint / stop -------------------------------------------------------------
        if state["bad_streak"] >= cfg.max_bad_steps:
            stopped = f"{cfg.max_bad_steps} non-finite losses in a row"
            break
        if grader_streak >= cfg.max_bad_steps:
            stopped = f"the grader failed on every sample for {cfg.max_bad_steps} steps in a row"
            break
        signalled = not all_ranks(not stop)
        if state["bad_streak"] == 0 and (step % cfg.save_every == 0 or step == cfg.max_steps or signalled):
            last_ck = save_checkpoint(out, step, engines, tok, cfg, state, rank)
        if signalled:
            stopped = stop.get("signal", "SIGTERM")  # SIGTERM, SIGINT, or another rank's signal
            break

    for s, handler in handlers.items():
        signal.signal(s, handler)
    if pool is not None:
        pool.shutdown(wait=True)
    hashes = weight_hashes(policy_eng, cfg)  # data parallelism must leave every rank's copy identical
    if monitor is not None:
        monitor.close()
        plot_curves(state["history"], out / "curves.png")
        (out / "summary.json").write_text(json.dumps({
            "stopped": stopped, "steps": state["step"], "checkpoint": str(last_ck) if last_ck else None,
            "world_size": world, "rank_weight_hashes": hashes,
            "final": state["history"][-1] if state["history"] else {}}))
        if stopped != "max_steps":
            print(f"[thinkgym] stopped: {stopped}; last good checkpoint: {last_ck}", flush=True)
    sampler.close()
    return {"history": state["history"], "stopped": stopped, "checkpoint": last_ck}


if __name__ == "__main__":  # for launchers: deepspeed / torchrun -m thinkgym.grpo.train --config ...
    from thinkgym.grpo.cli import main

    main()
