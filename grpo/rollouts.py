"""Rollouts for the learner: which prompts a rank samples (with DAPO dynamic sampling), the
sampling settings, and the greedy held-out eval."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from thinkgym.grpo.engine import all_max, all_mean
from thinkgym.grpo.monitor import is_correct

if TYPE_CHECKING:
    from thinkgym.grpo.train import GRPOConfig


def task_size(cfg: GRPOConfig) -> int:
    """Items available in every configured env (train and eval kwargs)."""
    import gymnasium as gym

    sizes = []
    for env_id in cfg.envs:
        for kw in (cfg.env_kwargs, {**cfg.env_kwargs, **cfg.eval_env_kwargs}):
            env = gym.make(env_id, **kw)
            sizes.append(len(env.unwrapped.source))
            env.close()
    return min(sizes)


def env_ids_for(cfg: GRPOConfig, indices: list[int]) -> list[str]:
    """Mixing several envs: item ``i`` comes from env ``i mod len(envs)``."""
    return [cfg.envs[i % len(cfg.envs)] for i in indices]


def sampling_config(cfg: GRPOConfig, seed: int, n: int, greedy: bool = False) -> Any:
    from thinkgym.sampler.types import SamplingConfig

    return SamplingConfig(n=n, temperature=0.0 if greedy else cfg.temperature, top_p=cfg.top_p,
                          max_tokens=cfg.max_tokens, seed=seed, stop=list(cfg.stop),
                          think_budget=cfg.think_budget, answer_budget=cfg.answer_budget,
                          # Sampler logprobs feed the truncated IS weights only (the learner
                          # recomputes its own): without ``tis_cap`` the sampler skips them.
                          budget_mode=cfg.budget_mode, logprobs=cfg.tis_cap is not None and not greedy)


def collect_groups(cfg: GRPOConfig, sampler: Any, state: dict[str, Any], step: int, rank: int,
                   world: int) -> tuple[list[list[Any]], list[Any], dict[str, float]]:
    """This rank's candidate groups for a step, with DAPO dynamic sampling.

    Returns the groups (informative ones first; :func:`batch_groups` picks the batch), every
    episode sampled this step (for metrics: the trained groups alone overstate accuracy once flat
    groups are dropped), and sampling stats. Advances ``state["cursor"]``. Runs no collective
    operation, so it may run in a background thread (``async_rollouts``)."""
    import torch

    from thinkgym.grpo import core
    from thinkgym.sampler.rollout import collect_rollouts
    from thinkgym.sampler.types import mix_seed

    keep: list[list[Any]] = []
    spare: list[list[Any]] = []
    stats = {"sampling_rounds": 0.0, "groups_dropped": 0.0, "gen_time": 0.0, "grade_time": 0.0}
    for attempt in range(cfg.max_sampling_tries if cfg.dynamic_sampling else 1):
        need = cfg.prompts_per_step - len(keep)
        if need <= 0:
            break
        local = range(state["cursor"], state["cursor"] + need)
        state["cursor"] += need
        # Training indices count up from 0 and wrap before the held-out ones at the top.
        indices = [(rank + world * k) % (state["n_items"] - cfg.eval_prompts) for k in local]
        seed = mix_seed(cfg.seed, step, attempt, rank)  # hashed: no seed shared across steps or groups
        batch = collect_rollouts(env_ids_for(cfg, indices), sampler, indices=indices, group_size=cfg.group_size,
                                 cfg=sampling_config(cfg, seed, cfg.group_size), max_turns=cfg.max_turns,
                                 env_kwargs=cfg.env_kwargs)
        stats["sampling_rounds"] += 1
        stats["gen_time"] += batch.generate_s
        stats["grade_time"] += batch.elapsed_s - batch.generate_s  # grading not hidden behind generation
        for g in batch.groups():
            r = core.rewards_tensor([e.reward for e in g])
            flat = core.degenerate_groups(r, torch.zeros(len(g), dtype=torch.long))
            if cfg.dynamic_sampling and bool(flat[0]):
                spare.append(g)
                stats["groups_dropped"] += 1
            else:
                keep.append(g)
    stats["informative"] = float(len(keep))
    return keep + spare, [e for g in keep + spare for e in g], stats


def batch_groups(cfg: GRPOConfig, groups: list[list[Any]], stats: dict[str, float]) -> list[list[Any]]:
    """The groups this step trains on, from :func:`collect_groups`' candidates (collective with
    ``fill_batch: false``: call it on every rank, from the main thread)."""
    if cfg.fill_batch or not cfg.dynamic_sampling:
        return groups[: cfg.prompts_per_step]
    # Informative groups only; every rank runs the same number of micro-batches, so all take the
    # largest count (topping up with flat groups), and at least one group.
    return groups[: max(1, all_max(int(stats["informative"])))]


def evaluate(cfg: GRPOConfig, sampler: Any, state: dict[str, Any], rank: int, world: int) -> tuple[float, float]:
    """Greedy held-out accuracy on ``eval_prompts`` fixed prompts (the same ones every time), and
    how many of them the grader failed on. Those are left out of the accuracy, not scored 0: a
    grader outage is not the policy's (NaN when every grade failed)."""
    from thinkgym.sampler.rollout import collect_rollouts

    # The last eval_prompts items of the source: never trained on (see collect_groups).
    mine = [i for i in range(cfg.eval_prompts) if i % world == rank]
    indices = [state["n_items"] - 1 - i for i in mine]
    episodes = []
    if indices:
        episodes = collect_rollouts(env_ids_for(cfg, indices), sampler, indices=indices, group_size=1,
                                    cfg=sampling_config(cfg, cfg.seed, 1, greedy=True), max_turns=cfg.max_turns,
                                    env_kwargs={**cfg.env_kwargs, **cfg.eval_env_kwargs}).episodes
    graded = [e for e in episodes if not e.infra_error]
    errors = all_mean([float(len(episodes) - len(graded))]) * max(world, 1)  # total over ranks
    return all_mean([is_correct(e) for e in graded]), errors
