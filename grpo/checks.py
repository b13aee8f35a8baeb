"""Checks on a GRPO config before anything heavy runs: values first, then the filesystem, the
sampler's settings, the env registry, the task sizes and the held-out split's overlap with the
training items."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from thinkgym.config import ConfigError, check_finite, check_fresh_run, check_output_dir
from thinkgym.hub import ModelNotFound, check_model, hub_id_of
from thinkgym.grpo.rollouts import sampling_config, task_size
from thinkgym.sampler.checks import check_sampler

if TYPE_CHECKING:
    from thinkgym.grpo.train import GRPOConfig


def validate_values(cfg: GRPOConfig) -> None:
    """Checks on the values alone (no filesystem, no imports of heavy packages)."""
    check_finite(cfg)  # before the range checks below, which a NaN would pass
    pos = ["max_steps", "prompts_per_step", "group_size", "max_tokens", "ppo_epochs", "minibatches",
           "micro_batch_size", "max_sampling_tries", "keep_checkpoints", "save_every", "max_bad_steps"]
    for k in pos:
        if getattr(cfg, k) < 1:
            raise ValueError(f"{k} must be >= 1, got {getattr(cfg, k)}")
    # 0 means "off" for these: no warmup, eval only at the end, no held-out eval.
    for k in ("warmup_steps", "eval_every", "eval_prompts"):
        if getattr(cfg, k) < 0:
            raise ValueError(f"{k} must be >= 0, got {getattr(cfg, k)}")
    if cfg.eval_every and not cfg.eval_prompts:  # otherwise no eval would ever run, without a word
        raise ValueError(f"eval_every={cfg.eval_every} needs eval_prompts > 0 (held-out prompts per eval)")
    if not cfg.model:
        raise ValueError("model is required (an HF model directory or a hub id)")
    if not cfg.output_dir:
        raise ValueError("output_dir must be a non-empty path")
    if not 0 <= cfg.seed < 2**31:  # numpy's seed must be in [0, 2**32) after adding the rank
        raise ValueError(f"seed must be in [0, 2**31), got {cfg.seed}")
    if cfg.max_turns is not None and cfg.max_turns < 1:
        raise ValueError(f"max_turns must be >= 1 or null, got {cfg.max_turns}")
    if not cfg.envs:
        raise ValueError("envs must list at least one env id")
    n = cfg.prompts_per_step * cfg.group_size
    if n % cfg.minibatches or (n // cfg.minibatches) % cfg.micro_batch_size:
        raise ValueError(
            f"prompts_per_step*group_size={n} must split into minibatches={cfg.minibatches} "
            f"of a multiple of micro_batch_size={cfg.micro_batch_size}")
    if cfg.group_size < 2 and cfg.advantage != "gae":
        raise ValueError(f"advantage={cfg.advantage!r} needs group_size >= 2")
    if not (0 <= cfg.clip_low < 1 and cfg.clip_high >= 0):
        raise ValueError("clip_low must be in [0, 1) and clip_high >= 0")
    if cfg.dual_clip is not None and cfg.dual_clip <= 1:
        raise ValueError(f"dual_clip must be > 1, got {cfg.dual_clip}")
    if cfg.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {cfg.zero_stage}")
    if not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio}")
    # The learner divides its logits by the temperature, so greedy (0) cannot train.
    for k in ("lr", "vf_lr", "temperature"):
        if getattr(cfg, k) <= 0:
            raise ValueError(f"{k} must be > 0, got {getattr(cfg, k)}")
    # max_grad_norm 0 = no clipping; a negative value would silently mean the same.
    for k in ("kl_coef", "entropy_coef", "weight_decay", "max_grad_norm", "overlong_penalty"):
        if getattr(cfg, k) < 0:
            raise ValueError(f"{k} must be >= 0, got {getattr(cfg, k)}")
    for k in ("gamma", "lam"):
        if not 0.0 <= getattr(cfg, k) <= 1.0:
            raise ValueError(f"{k} must be in [0, 1], got {getattr(cfg, k)}")
    if cfg.overlong_buffer < 0 or cfg.overlong_buffer > cfg.max_tokens:
        raise ValueError(f"overlong_buffer must be in [0, max_tokens], got {cfg.overlong_buffer}")
    for k in ("tis_cap", "value_clip"):
        if getattr(cfg, k) is not None and getattr(cfg, k) <= 0:
            raise ValueError(f"{k} must be > 0 or null, got {getattr(cfg, k)}")
    if cfg.lora_r < 0:
        raise ValueError(f"lora_r must be >= 0 (0 = full fine-tuning), got {cfg.lora_r}")
    if cfg.lora_alpha < 1:
        raise ValueError(f"lora_alpha must be >= 1, got {cfg.lora_alpha}")
    if not 0.0 <= cfg.lora_dropout < 1.0:
        raise ValueError(f"lora_dropout must be in [0, 1), got {cfg.lora_dropout}")
    if cfg.lora_r and cfg.zero_stage == 3:
        raise ValueError("LoRA with ZeRO-3 is not supported (merging needs whole weights); use zero_stage 2")
    if cfg.lora_r and not cfg.lora_target_modules:
        raise ValueError("lora_target_modules must not be empty when lora_r > 0")
    if cfg.kl_in_reward and cfg.kl_coef == 0:
        raise ValueError("kl_in_reward needs kl_coef > 0")
    bad = [k for k in cfg.resume_allow_changes if k not in RESUME_REFUSED]
    if bad:
        raise ValueError(f"resume_allow_changes: {bad} cannot be listed: it names fields that --resume refuses "
                         f"to change, from {list(RESUME_REFUSED)} (the others change with a warning; zero_stage and "
                         f"the LoRA adapter cannot change: the checkpoint would not load)")
    if cfg.eval_contamination not in ("error", "warn", "off"):
        raise ValueError(f"eval_contamination must be 'error', 'warn' or 'off', got {cfg.eval_contamination!r}")
    # Every rollout builds this SamplingConfig; its own rules (top_p, think_budget,
    # answer_budget, stop, ...) would otherwise first fire at step 1, after the policy loaded.
    sampling_config(cfg, cfg.seed, cfg.group_size)


# What a GRPO run leaves in output_dir that a fresh run would prune or mix with its own.
EARLIER_RUN = ("checkpoints/step_*", "checkpoints/latest")


def check_config(cfg: GRPOConfig, resume: bool = False) -> int:
    """Checks that need the filesystem / registries / envs, before any model loads. -> task size"""
    try:
        cfg.validate()  # a GRPOConfig built in code has not been through load_config
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        check_model(cfg.model)  # a directory, or a hub id that train() fetches
    except ModelNotFound as e:
        raise ConfigError(f"model: {e}") from None
    if cfg.lora_r:
        from thinkgym.grpo.lora import check_targets

        check_targets(cfg)
    check_output_dir(cfg.output_dir)
    if not (resume and (Path(cfg.output_dir) / "checkpoints" / "latest").is_file()):  # a fresh run
        check_fresh_run(cfg.output_dir, EARLIER_RUN, cfg.overwrite)
    else:
        check_resume(cfg)
    check_sampler(cfg.sampler_backend, cfg.sampler_kwargs)
    import gymnasium as gym

    from thinkgym.envs import register_envs

    register_envs()
    for env_id in cfg.envs:
        if env_id not in gym.registry:
            known = sorted(k for k in gym.registry if k.startswith("thinkgym/"))
            raise ConfigError(f"envs: unknown env id {env_id!r}; registered: {known}")
    try:
        n_items = task_size(cfg)
    except (TypeError, ValueError, KeyError, OSError, gym.error.Error) as e:
        raise ConfigError(f"env_kwargs / eval_env_kwargs: {type(e).__name__}: {e}") from None
    if n_items <= cfg.eval_prompts:
        raise ConfigError(f"eval_prompts={cfg.eval_prompts} leaves no training items (task size {n_items})")
    check_eval_contamination(cfg, n_items)
    return n_items


#: What --resume refuses to change: the resumed run would be another experiment. The start model
#: (the KL reference and the tokenizer load from it, and a LoRA adapter's base); the prompt stream
#: (the saved cursor indexes the items these envs, kwargs and seed build, ``max_turns`` shapes their
#: episodes, ``prompts_per_step`` and ``group_size`` the batch); the algorithm (estimator, loss
#: reduction, ratio level, KL form) and the precision. ``resume_allow_changes`` lists the ones to
#: change anyway. ``zero_stage``, the process count and the LoRA adapter are refused by
#: :func:`check_resume` on their own: the checkpoint cannot load into another. Every other field
#: (``max_steps``, ``lr`` and its schedule, coefficients and clips, sampling, eval, checkpointing,
#: logging) may change: :func:`check_resume` lists the changes once.
RESUME_REFUSED = ("model", "seed", "envs", "env_kwargs", "max_turns", "prompts_per_step", "group_size", "advantage",
                  "std_normalize", "aggregation", "importance_sampling_level", "kl_estimator", "kl_in_reward", "dtype")
# Compared by check_resume's own checks (the adapter), or not at all (where the run is, and the hatch itself).
_RESUME_UNCOMPARED = ("lora_r", "lora_alpha", "lora_target_modules", "output_dir", "overwrite", "resume_allow_changes")


def check_resume(cfg: GRPOConfig) -> None:
    """--resume: the latest checkpoint must load into the engines this config builds, and the
    config must continue the experiment the checkpoint's ``trainer_state.json`` recorded.

    DeepSpeed's optimizer state is partitioned by ZeRO stage and process count, and each rank
    resumes its own prompt cursor: another ``zero_stage``, world size, or a critic (``gae``) the
    checkpoint does not hold failed only after the models loaded, as a bare ``AssertionError`` or
    a missing file; so did another LoRA adapter (``lora_r``, ``lora_alpha``, ``lora_target_modules``).
    A change to a field of :data:`RESUME_REFUSED` not listed in ``resume_allow_changes`` is refused,
    all of them in one line (old -> new). Other changes apply to the rest of the run (``lr`` too:
    see ``engine.load_engines``); they are listed once."""
    ckdir = Path(cfg.output_dir) / "checkpoints"
    ck = ckdir / (ckdir / "latest").read_text().strip()
    if not (ck / "trainer_state.json").is_file():
        raise ConfigError(f"--resume: {ckdir / 'latest'} names {ck.name}, which holds no trainer_state.json")
    saved = json.loads((ck / "trainer_state.json").read_text()).get("config", {})
    saved_world = len(list(ck.glob("rank*_state.pt")))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    where = f"--resume: checkpoint {ck.name}"
    if saved_world != world:
        raise ConfigError(f"{where} was saved by {saved_world} processes; resume it with {saved_world}, not {world}")
    if saved.get("zero_stage", cfg.zero_stage) != cfg.zero_stage:
        raise ConfigError(f"{where} holds ZeRO stage {saved['zero_stage']} optimizer state; "
                          f"zero_stage {cfg.zero_stage} cannot load it")
    def adapter(c: dict) -> str:
        r = c.get("lora_r", 0)
        return f"lora_r {r}" + (f", lora_alpha {c.get('lora_alpha')}, lora_target_modules "
                                f"{sorted(c.get('lora_target_modules', []))}" if r else "")

    # The saved weights and optimizer state are laid out by the adapter: another one cannot load
    # them, and another lora_alpha would rescale the trained adapter at once.
    if adapter(saved) != adapter(asdict(cfg)):
        raise ConfigError(f"{where} was saved with {adapter(saved)}; resume it with the same (got {adapter(asdict(cfg))})")
    if cfg.advantage == "gae" and not (ck / "ds" / "critic").is_dir():
        raise ConfigError(f"{where} holds no critic (advantage was {saved.get('advantage')!r}); advantage: gae needs one")
    refused, changed = {}, []
    for k, old in saved.items():
        new = getattr(cfg, k, None)
        if not hasattr(cfg, k) or k in _RESUME_UNCOMPARED or _same_value(k, old, new):
            continue
        change = f"{k} {old!r} -> {new!r}"
        if k in RESUME_REFUSED and k not in cfg.resume_allow_changes:
            refused[k] = change
        else:
            changed.append(change + (" (resume_allow_changes)" if k in RESUME_REFUSED else ""))
    if refused:
        raise ConfigError(
            f"{where} was saved with another {', '.join(refused)}, which would make the resumed run another "
            f"experiment: {'; '.join(refused.values())}. Resume with the saved values (its trainer_state.json "
            f"holds the config), start a fresh run in another output_dir (model: {ck / 'hf'} starts from its "
            f"weights), or continue this run with them: resume_allow_changes: [{', '.join(refused)}]")
    key = (id(cfg), str(ck), tuple(changed))
    if changed and key not in _resume_seen:
        _remember(_resume_seen, key, True)
        _say(f"{where}: config changed since it was saved: {'; '.join(changed)}")


def _same_value(key: str, saved: object, new: object) -> bool:
    """``new`` (a config value) equals ``saved`` (its JSON in trainer_state.json): compared as JSON,
    so a tuple equals the list it was saved as. ``model``: the same directory by another path, or
    the hub id whose cache snapshot the run resolved it to."""
    if saved == json.loads(json.dumps(new, default=repr)):
        return True
    if key != "model" or not isinstance(saved, str) or not isinstance(new, str):
        return False
    if hub_id_of(saved) == new:
        return True
    a, b = Path(saved).expanduser(), Path(new).expanduser()
    return a.is_dir() and b.is_dir() and a.resolve() == b.resolve()


# The CLI and train() both check one config: report once. Only the last few configs are kept:
# a long-lived process (a sweep, a notebook) checks a new config every run, and an unbounded memo
# would keep every report for good.
MEMO_SIZE = 8
_resume_seen: OrderedDict = OrderedDict()


def _remember(memo: OrderedDict, key: object, value: object) -> None:
    """``memo[key] = value``, dropping the least recently used keys beyond :data:`MEMO_SIZE`."""
    memo[key] = value
    memo.move_to_end(key)
    while len(memo) > MEMO_SIZE:
        memo.popitem(last=False)


#: Items built per side by the held-out contamination check (0.1-0.2 ms each for the procedural tasks):
#: training reads its items from index 0 up, so the ones checked are the first ones trained on.
CONTAMINATION_MAX_ITEMS = 10_000
_contamination_seen: OrderedDict[str, dict] = OrderedDict()  # bounded like _resume_seen


def _say(msg: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # every rank checks (and refuses alike); rank 0 reports
        print(f"[thinkgym] {msg}", flush=True)


def check_eval_contamination(cfg: GRPOConfig, n_items: int) -> dict | None:
    """Do the held-out prompts repeat questions that training may sample? -> the report, or None.

    The split is by index only (``collect_groups`` trains on ``[0, n_items - eval_prompts)``,
    ``evaluate`` takes the last ``eval_prompts`` indices; item ``i`` comes from env
    ``i mod len(envs)``), and a small procedural item space repeats a question at other indices,
    as does another seed in ``eval_env_kwargs``. Training reaches at most index ``world x
    max_steps x prompts_per_step x sampling rounds``: the items below that (the whole train range
    if smaller; at most :data:`CONTAMINATION_MAX_ITEMS`) go through :func:`check_contamination`
    against the held-out items. Envs not backed by a registered task (a custom env factory) are
    skipped."""
    if cfg.eval_contamination == "off" or cfg.eval_prompts == 0:
        return None
    from thinkgym._registry import RegistryError
    from thinkgym.envs.registration import task_source_for_env
    from thinkgym.tasks.contamination import ContaminationError, check_contamination

    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun / deepspeed: each rank samples its own prompts
    rounds = cfg.max_sampling_tries if cfg.dynamic_sampling else 1
    reach = min(n_items - cfg.eval_prompts, world * cfg.max_steps * cfg.prompts_per_step * rounds)
    eval_kwargs = {**cfg.env_kwargs, **cfg.eval_env_kwargs}
    key = json.dumps([id(cfg), cfg.eval_contamination, cfg.envs, cfg.env_kwargs, eval_kwargs, n_items,
                      cfg.eval_prompts, reach], sort_keys=True, default=repr)
    if key in _contamination_seen:
        _contamination_seen.move_to_end(key)
        return _contamination_seen[key]
    sources = {}  # env id -> (train source, eval source)
    for env_id in dict.fromkeys(cfg.envs):
        try:
            sources[env_id] = (task_source_for_env(env_id, env_kwargs=cfg.env_kwargs),
                               task_source_for_env(env_id, env_kwargs=eval_kwargs))
        except (RegistryError, ValueError) as e:  # a custom env factory, or a TaskSource object as task
            _say(f"held-out contamination check skips env {env_id}: {e}")
    if not sources:
        return None

    def items(indices: range, side: int) -> list[dict]:
        envs = (cfg.envs[i % len(cfg.envs)] for i in indices)
        return [sources[e][side][i] for i, e in zip(indices, envs) if e in sources]

    n_train = min(reach, CONTAMINATION_MAX_ITEMS)
    train = items(range(n_train), 0)
    held = items(range(n_items - 1, n_items - 1 - min(cfg.eval_prompts, CONTAMINATION_MAX_ITEMS), -1), 1)
    try:
        report = check_contamination(train, held).to_dict()
    except ContaminationError as e:
        if cfg.eval_contamination == "error":
            raise ConfigError(f"eval_prompts: held-out items repeat training questions, so the held-out "
                              f"accuracy would be measured on them (eval_contamination: error): "
                              f"{e.report.summary()}") from None
        _say(f"WARNING: held-out items repeat training questions: {e.report.summary()}")
        report = e.report.to_dict()
    report.update(train_indices_checked=n_train, train_indices_reachable=reach,
                  skipped_envs=sorted(set(cfg.envs) - set(sources)))
    _say(f"held-out contamination: {len(report['contaminated'])} of {report['eval_items']} held-out items "
         f"({report['rate']:.2%}; eval_prompts={cfg.eval_prompts}) repeat a question of training indices "
         f"[0, {n_train}) ({report['train_items']} items; the run can sample [0, {reach}))")
    _remember(_contamination_seen, key, report)
    return report
