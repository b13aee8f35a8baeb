"""Eval harness: pass@k, maj@k, mean reward, format and think-length stats over an env.

``evaluate(EvalConfig(...))`` samples ``n`` completions for each of the first ``limit`` items of
an env, writes every sample to ``samples.jsonl`` and the aggregates to ``summary.json`` in
``output_dir``, and returns the summary. pass@k uses the unbiased estimator of Chen et al.
(2021), ``1 - C(n-c, k) / C(n, k)``, averaged over problems; maj@k takes the most common
extracted answer among the first ``k`` samples (ties: the one seen first) and counts the
problem solved if a sample with that answer was graded correct.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("thinkgym.sampler")


@dataclass
class EvalConfig:
    """``thinkgym eval`` settings (YAML keys = field names)."""

    model: str = ""
    """HF model dir (weights + tokenizer) to evaluate."""
    env: str = "thinkgym/Arithmetic-v0"
    """Gymnasium env id."""
    output_dir: str = "eval-out"
    """Where samples.jsonl and summary.json go."""
    n: int = 8
    """Samples per problem (the largest k of pass@k / maj@k)."""
    limit: int = 64
    """Problems: items 0..limit-1 of the env's task."""
    offset: int = 0
    """First item index."""
    backend: str = "vllm"
    """vllm | hf | vllm-server."""
    base_url: str = ""
    """vllm-server only: the server URL."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    """Sampled tokens per turn."""
    think_budget: int | None = None
    answer_budget: int = 64
    budget_mode: str = "force"
    stop: list[str] | None = None
    seed: int = 0
    max_turns: int | None = None
    num_threads: int | None = None
    """torch threads for the vllm/hf backends on CPU (1 is fastest for tiny models)."""
    max_model_len: int | None = None
    """Context window of the vllm / hf backends (default: the model's)."""
    correct_threshold: float = 1.0
    """A sample counts as correct for pass@k / maj@k when its reward reaches this."""
    train_task: str | None = None
    """Training task (name, env id, .jsonl or dataset dir): check n-gram overlap with the eval items.
    An env id stands for the items that env serves: its registered task seed, size and params."""
    train_seed: int | None = None
    """Seed of a procedural ``train_task``; null: for an env id the env's own seed (the one it is
    registered with, else 0), for a task name 0."""
    train_size: int = 10_000
    """How many training items to check: the first ``train_size`` of ``train_task`` (all of them if it has fewer)."""
    contamination: str = "error"
    """On overlap: error (refuse to eval) | warn."""
    contamination_n: int = 13
    """n-gram length for the contamination check."""

    def validate(self) -> None:
        if not self.model:
            raise ValueError("model is required")
        if self.n < 1 or self.limit < 1:
            raise ValueError(f"n and limit must be >= 1, got n={self.n}, limit={self.limit}")
        if self.backend not in ("vllm", "hf", "vllm-server"):
            raise ValueError(f"backend must be vllm, hf or vllm-server, got {self.backend!r}")
        if self.backend == "vllm-server" and not self.base_url:
            raise ValueError("backend vllm-server needs base_url")
        if self.base_url and self.backend != "vllm-server":
            # Otherwise the eval would quietly run a local model instead of the server's.
            raise ValueError(f"base_url is only used by backend vllm-server, but backend is {self.backend!r}")
        if self.backend == "vllm-server" and self.max_model_len is not None:
            raise ValueError("max_model_len: a vllm-server's context window is set when the server starts")
        from thinkgym.config import check_output_dir

        check_output_dir(self.output_dir)  # before any sampling, not at the first write
        if self.contamination not in ("error", "warn"):
            raise ValueError(f"contamination must be 'error' or 'warn', got {self.contamination!r}")
        from thinkgym.config import check_finite

        check_finite(self)  # before the range checks below, which a NaN would pass
        if self.offset < 0:
            raise ValueError(f"offset must be >= 0, got {self.offset}")
        if not 0 <= self.seed < 2**32:  # the vLLM engine seed's range
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        for k in ("train_size", "contamination_n"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        for k in ("max_turns", "num_threads", "max_model_len"):
            if getattr(self, k) is not None and getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1 or null, got {getattr(self, k)}")
        if self.backend == "vllm-server" and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000, got {self.base_url!r}")
        sampling_config(self)  # SamplingConfig's own rules, before any sampler is built


def sampling_config(cfg: EvalConfig) -> Any:
    """The sampling settings of every eval request (``collect_rollouts`` fans out the ``n``)."""
    from thinkgym.sampler.types import SamplingConfig

    return SamplingConfig(
        n=1, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed,
        stop=list(cfg.stop or []), think_budget=cfg.think_budget, answer_budget=cfg.answer_budget,
        budget_mode=cfg.budget_mode,  # type: ignore[arg-type]
    )


def check_env(cfg: EvalConfig) -> None:
    """The env id is registered and has the items ``offset .. offset+limit-1``: checked before
    any model loads, since a missing env or item otherwise fails only once sampling starts."""
    import gymnasium

    from thinkgym.config import ConfigError
    from thinkgym.envs import register_envs

    register_envs()
    if cfg.env not in gymnasium.registry:
        known = sorted(k for k in gymnasium.registry if k.startswith("thinkgym/"))
        raise ConfigError(f"env: unknown env id {cfg.env!r}; registered: {known} (see `thinkgym envs`)")
    try:
        env = gymnasium.make(cfg.env)
    except (TypeError, ValueError, KeyError, OSError, gymnasium.error.Error) as e:
        raise ConfigError(f"env: {cfg.env!r} could not be built: {type(e).__name__}: {e}") from None
    try:
        source = getattr(env.unwrapped, "source", None)  # every TaskEnv has one; a plugin env may not
        size = len(source) if source is not None else None
    finally:
        env.close()
    if size is not None and cfg.offset + cfg.limit > size:
        # Keyed by limit, the usual culprit: a message names the flag or file of the key it starts with.
        raise ConfigError(f"limit: items {cfg.offset}..{cfg.offset + cfg.limit - 1} (offset + limit) asked for, "
                          f"but {cfg.env} has {size} items")


# -- estimators -------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``c`` correct out of ``n`` samples (Chen et al.)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k/i): stable for large n, no big binomials.
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """1.0 if the most common answer among the first ``k`` samples is a correct one."""
    votes = [(a.strip(), ok) for a, ok in list(zip(answers, correct))[:k] if a is not None and a.strip()]
    if not votes:
        return 0.0
    counts = Counter(a for a, _ in votes)
    top = max(counts.values())
    winner = next(a for a, _ in votes if counts[a] == top)  # first seen among the tied
    return 1.0 if any(ok for a, ok in votes if a == winner) else 0.0


def default_ks(n: int) -> list[int]:
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= n]
    return ks + ([n] if n not in ks else [])


def summarize(
    groups: Sequence[Sequence[dict[str, Any]]], ks: Sequence[int], correct_threshold: float = 1.0
) -> dict[str, Any]:
    """Aggregate per-sample dicts (``reward``, ``extracted``, ``format_ok``, ``think_tokens``,
    ``completion_len``, ``finish_reason``) grouped by problem."""
    out: dict[str, Any] = {}
    samples = [s for g in groups for s in g]
    if not samples:
        raise ValueError("no samples to summarize")

    def ok(s: dict[str, Any]) -> bool:
        return s["reward"] is not None and s["reward"] >= correct_threshold

    for k in ks:
        vals = [pass_at_k(len(g), sum(ok(s) for s in g), k) for g in groups if len(g) >= k]
        out[f"pass@{k}"] = sum(vals) / len(vals) if vals else float("nan")
    for k in ks:
        if k == 1:
            continue
        vals = [maj_at_k([s["extracted"] for s in g], [ok(s) for s in g], k) for g in groups if len(g) >= k]
        out[f"maj@{k}"] = sum(vals) / len(vals) if vals else float("nan")
    rewards = [s["reward"] for s in samples if s["reward"] is not None]
    think = [s["think_tokens"] for s in samples if s.get("think_tokens") is not None]
    fmt = sum(bool(s["format_ok"]) for s in samples) / len(samples)
    out.update(
        mean_reward=sum(rewards) / len(rewards) if rewards else float("nan"),
        accuracy=sum(ok(s) for s in samples) / len(samples),
        format_rate=fmt,
        format_error_rate=1.0 - fmt,
        mean_think_tokens=sum(think) / len(think) if think else float("nan"),
        think_closed_rate=len(think) / len(samples),
        mean_completion_len=sum(s["completion_len"] for s in samples) / len(samples),
        truncation_rate=sum(s["finish_reason"] in ("length", "think_budget", "context") for s in samples) / len(samples),
        infra_errors=sum(s["reward"] is None for s in samples),
        problems=len(groups),
        samples=len(samples),
    )
    return out


# -- the harness ------------------------------------------------------------------------------


def _eval_items(env_id: str, indices: Sequence[int]) -> list[dict[str, Any]]:
    import gymnasium

    from thinkgym.envs import register_envs

    register_envs()
    env = gymnasium.make(env_id).unwrapped
    try:
        return [env.source[i] for i in indices]
    finally:
        env.close()


def check_train_overlap(cfg: EvalConfig, indices: Sequence[int]) -> dict[str, Any] | None:
    """Run the contamination check against ``cfg.train_task``; raises on overlap if asked to.

    An env-id ``train_task`` stands for the items that env serves: its source is built with the
    env's registered task seed, size and params (``train_seed``, when given, replaces the seed).
    """
    if not cfg.train_task:
        return None
    from thinkgym.config import ConfigError
    from thinkgym.tasks.contamination import check_contamination
    from thinkgym.tasks.loaders import UnknownSourceError, open_source

    try:
        train = open_source(cfg.train_task, seed=cfg.train_seed)
        items = [train[i] for i in range(min(cfg.train_size, len(train)))]
    except UnknownSourceError as e:
        raise ConfigError(f"train_task: {e}") from None
    except (TypeError, ValueError, KeyError, IndexError, OSError) as e:
        raise ConfigError(f"train_task {cfg.train_task!r}: {e}") from None
    report = check_contamination(items, _eval_items(cfg.env, indices), n=cfg.contamination_n, on_fail=cfg.contamination)
    return report.to_dict()


def evaluate(cfg: EvalConfig, sampler: Any = None) -> dict[str, Any]:
    """Run the eval (building a sampler from ``cfg`` unless one is given); return the summary."""
    from thinkgym.sampler import make_sampler
    from thinkgym.sampler.rollout import collect_rollouts, format_ok

    cfg.validate()
    check_env(cfg)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    indices = list(range(cfg.offset, cfg.offset + cfg.limit))
    contamination = check_train_overlap(cfg, indices)  # before anything heavy loads

    own = sampler is None
    if own:
        kw: dict[str, Any] = {}
        if cfg.backend == "vllm":
            kw = {"max_model_len": cfg.max_model_len, "seed": cfg.seed, "num_threads": cfg.num_threads}
        elif cfg.backend == "hf":
            kw = {"max_model_len": cfg.max_model_len, "num_threads": cfg.num_threads}
        elif cfg.backend == "vllm-server":
            kw = {"base_url": cfg.base_url}
        sampler = make_sampler(cfg.backend, cfg.model, **kw)
    scfg = sampling_config(cfg)
    t0 = time.perf_counter()
    try:
        batch = collect_rollouts(
            cfg.env, sampler, indices=indices, group_size=cfg.n, cfg=scfg, max_turns=cfg.max_turns,
        )
    finally:
        if own:
            sampler.close()
    groups: list[list[dict[str, Any]]] = []
    with open(out_dir / "samples.jsonl", "w") as f:
        for g in batch.groups():
            rows = []
            for e in g:
                row = e.to_dict()
                row.update(
                    extracted=e.extracted, format_ok=format_ok(e),
                    think_tokens=e.think_tokens[-1] if e.think_tokens else None, text=e.text,
                )
                f.write(json.dumps(row, default=str) + "\n")
                rows.append(row)
            groups.append(rows)
    summary = summarize(groups, default_ks(cfg.n), cfg.correct_threshold)
    summary.update(
        backend=getattr(sampler, "backend", cfg.backend), model=cfg.model, env=cfg.env, n=cfg.n,
        limit=cfg.limit, temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.seed,
        contamination=contamination, elapsed_s=time.perf_counter() - t0,
        sampled_tokens_per_s=batch.metrics()["sampled_tokens_per_s"], config=asdict(cfg),
    )
    (out_dir / "summary.json").write_text(json.dumps(_finite(summary), indent=2, default=str) + "\n")
    return summary


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    # JSON has no NaN; write null instead so every reader can parse summary.json.
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def print_summary(summary: dict[str, Any]) -> None:
    """A rich table of the headline numbers."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"eval: {summary.get('env')} ({summary.get('backend')}, n={summary.get('n')}, "
                    f"{summary.get('problems')} problems)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    keys = [k for k in summary if k.startswith(("pass@", "maj@"))] + [
        "mean_reward", "accuracy", "format_rate", "format_error_rate", "mean_think_tokens",
        "mean_completion_len", "truncation_rate", "infra_errors", "sampled_tokens_per_s", "elapsed_s",
    ]
    for k in keys:
        v = summary.get(k)
        t.add_row(k, "-" if v is None or (isinstance(v, float) and math.isnan(v)) else
                  (f"{v:.4f}" if isinstance(v, float) else str(v)))
    if summary.get("contamination"):
        c = summary["contamination"]
        t.add_row("contamination rate", f"{c['rate']:.4f} ({len(c['contaminated'])}/{c['eval_items']})")
    Console().print(t)
