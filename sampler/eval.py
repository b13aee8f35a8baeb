"""Eval harness: pass@k, maj@k, mean reward, format and think-length stats over an env.

``evaluate(EvalConfig(...))`` samples ``n`` completions for each of the first ``limit`` items of
an env, writes every sample to ``samples.jsonl`` and the aggregates to ``summary.json`` in
``output_dir``, and returns the summary. pass@k uses the unbiased estimator of Chen et al.
(2021), ``1 - C(n-c, k) / C(n, k)``, averaged over problems; maj@k takes the most common
extracted answer among the first ``k`` samples (ties: the one seen first) and counts the
problem solved if a sample with that answer was graded correct.

A sample the grader failed on (``reward`` None: an infrastructure error, which the env reports
as ``info["infra_error"]`` with a 0.0 reward) is not a wrong answer: pass@k, maj@k and accuracy
are over each problem's graded samples (a problem with fewer than ``k`` of them is left out of
pass@k and maj@k), and ``infra_errors`` / ``infra_error_rate`` / ``graded_samples`` count them.

``env`` is a registered env id, or the path of a ``.jsonl`` file or a local Hugging Face dataset
(folder or data file): a single-turn env over the ``jsonl`` / ``hf_dataset`` task source.
``env_kwargs`` go to the env constructor either way (as GRPO's do). An ``output_dir`` holding an
earlier eval's results is refused unless ``overwrite`` is set, and a refused or failed eval
creates no ``output_dir``: it is made only once the samples are in.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("thinkgym.sampler")


@dataclass
class EvalConfig:
    """``thinkgym eval`` settings (YAML keys = field names)."""

    model: str = ""
    """HF model dir (weights + tokenizer) to evaluate."""
    env: str = "thinkgym/Arithmetic-v0"
    """Gymnasium env id (see ``thinkgym envs``), or the path of a ``.jsonl`` file or a local HF
    dataset (``save_to_disk`` folder, or a folder / file of json, csv or parquet data) to evaluate
    on: a single-turn env over its rows (task source ``jsonl`` / ``hf_dataset``). A registered id
    wins over a file of the same name."""
    env_kwargs: dict = field(default_factory=dict)
    """Keyword arguments of the env constructor, as GRPO's ``env_kwargs``: e.g.
    ``{task_params: {n_operands: [2, 2], max_value: 30}, seed: 2}`` for an env id; for a file,
    ``{grader: countdown}`` or ``{task_params: {question_field: problem, answer_field: solution}}``
    (the task source's params; ``path`` is the file and ``task`` is not set)."""
    output_dir: str = "eval-out"
    """Where samples.jsonl and summary.json go."""
    overwrite: bool = False
    """Replace an earlier eval's samples.jsonl / summary.json in ``output_dir`` (else an error)."""
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
        if not isinstance(self.env, str) or not self.env:
            raise ValueError(f"env must be an env id or the path of a .jsonl file or HF dataset, got {self.env!r}")
        check_env_kwargs(self.env_kwargs)
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


#: What an eval writes into its output_dir: another eval there would replace them.
EVAL_FILES = ("summary.json", "samples.jsonl")


def check_env_kwargs(env_kwargs: Any) -> None:
    """``env_kwargs`` is a mapping of constructor argument names (``task_params`` a mapping too)."""
    if not isinstance(env_kwargs, dict) or not all(isinstance(k, str) and k for k in env_kwargs):
        raise ValueError(f"env_kwargs must be a mapping of env constructor arguments, got {env_kwargs!r:.200}")
    tp = env_kwargs.get("task_params")
    if tp is not None and (not isinstance(tp, dict) or not all(isinstance(k, str) for k in tp)):
        raise ValueError(f"env_kwargs: task_params must be a mapping of task params, got {tp!r:.200}")


def check_earlier_eval(output_dir: str | Path, overwrite: bool) -> None:
    """Refuse an ``output_dir`` holding an earlier eval's results unless ``overwrite``: they would be
    replaced without a word (another env's or model's numbers gone), as ``sft`` / ``train`` refuse."""
    from thinkgym.config import ConfigError

    out = Path(output_dir)
    found = [name for name in EVAL_FILES if (out / name).exists()]
    if found and not overwrite:
        raise ConfigError(f"output_dir: {str(out)!r} holds an earlier eval ({', '.join(found)}); "
                          "set overwrite: true (--set overwrite=true) to replace it, or choose another output_dir")
    # That it could be created and written, with nothing left behind, EvalConfig.validate checked
    # (check_output_dir): nothing is created before the samples are in.


def sampling_config(cfg: EvalConfig) -> Any:
    """The sampling settings of every eval request (``collect_rollouts`` fans out the ``n``)."""
    from thinkgym.sampler.types import SamplingConfig

    return SamplingConfig(
        n=1, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed,
        stop=list(cfg.stop or []), think_budget=cfg.think_budget, answer_budget=cfg.answer_budget,
        budget_mode=cfg.budget_mode,  # type: ignore[arg-type]
    )


def _file_env(task: str, path: str, env_kwargs: dict[str, Any]) -> Any:
    """A single-turn env over the rows of ``path`` (task source ``task``: jsonl or hf_dataset)."""
    from thinkgym.envs.core import SingleTurnEnv

    kw = dict(env_kwargs)
    params = {**(kw.pop("task_params", None) or {}), "path": path}
    return SingleTurnEnv(task, task_params=params, **kw)


def eval_env(cfg: EvalConfig) -> tuple[Any, dict[str, Any]]:
    """What the eval samples from: ``(env id, env_kwargs)`` for a registered env id, else
    ``(factory, {})`` for a ``.jsonl`` file (task source ``jsonl``) or another existing path
    (``hf_dataset``). Raises :class:`ConfigError` naming the key for anything else."""
    import gymnasium

    from thinkgym.config import ConfigError
    from thinkgym.envs import register_envs

    register_envs()
    if cfg.env in gymnasium.registry:
        return cfg.env, dict(cfg.env_kwargs)
    path = Path(cfg.env)
    if not path.exists():
        known = sorted(k for k in gymnasium.registry if k.startswith("thinkgym/"))
        raise ConfigError(f"env: unknown env id {cfg.env!r}, and no such file or folder: give a registered env id "
                          f"({', '.join(known)}; see `thinkgym envs`) or the path of a .jsonl file or HF dataset folder")
    from thinkgym.tasks.loaders import _SUFFIX

    if path.is_file() and path.suffix not in _SUFFIX:
        raise ConfigError(f"env: {cfg.env!r} is a file but not a dataset file ({', '.join(sorted(_SUFFIX))}); "
                          "give a .jsonl file, an HF dataset folder or a registered env id")
    if "task" in cfg.env_kwargs:
        raise ConfigError("env_kwargs: 'task' does not apply when env is a file or folder (its rows are the task)")
    if "path" in (cfg.env_kwargs.get("task_params") or {}):
        raise ConfigError("env_kwargs: task_params.path does not apply: env is the path")
    task = "jsonl" if path.suffix == ".jsonl" and path.is_file() else "hf_dataset"
    return functools.partial(_file_env, task, str(path), dict(cfg.env_kwargs)), {}


def _build_env(spec: Any, env_kwargs: dict[str, Any]) -> Any:
    import gymnasium

    from thinkgym.envs import register_envs

    if isinstance(spec, str):
        register_envs()
        return gymnasium.make(spec, **env_kwargs).unwrapped
    return spec()


def check_env(cfg: EvalConfig) -> None:
    """The env id is registered (or the path exists) and has the items ``offset .. offset+limit-1``:
    checked before any model loads, since a missing env or item otherwise fails only once sampling starts."""
    import gymnasium

    from thinkgym.config import ConfigError

    spec, kwargs = eval_env(cfg)
    errors = (TypeError, ValueError, KeyError, OSError, ImportError, gymnasium.error.Error)
    try:
        env = _build_env(spec, kwargs)
    except errors as e:
        why = f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"
        if not cfg.env_kwargs:
            raise ConfigError(f"env: {cfg.env!r} could not be built: {why}") from None
        try:  # the env alone builds: its env_kwargs are the trouble
            _build_env(*eval_env(replace(cfg, env_kwargs={}))).close()
        except errors:
            raise ConfigError(f"env: {cfg.env!r} with env_kwargs {cfg.env_kwargs} could not be built: {why}") from None
        raise ConfigError(f"env_kwargs: {cfg.env!r} could not be built with env_kwargs {cfg.env_kwargs}: {why}") from None
    try:
        source = getattr(env, "source", None)  # every TaskEnv has one; a plugin env may not
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
    ``completion_len``, ``finish_reason``) grouped by problem.

    A sample with ``reward`` None (the grader failed) is left out of pass@k, maj@k and accuracy
    rather than counted wrong, and counted in ``infra_errors``."""
    out: dict[str, Any] = {}
    samples = [s for g in groups for s in g]
    if not samples:
        raise ValueError("no samples to summarize")

    def ok(s: dict[str, Any]) -> bool:
        return s["reward"] is not None and s["reward"] >= correct_threshold

    # A grader outage says nothing about the policy: scored as wrong, it would lower pass@k.
    graded = [[s for s in g if s["reward"] is not None] for g in groups]
    for k in ks:
        vals = [pass_at_k(len(g), sum(ok(s) for s in g), k) for g in graded if len(g) >= k]
        out[f"pass@{k}"] = sum(vals) / len(vals) if vals else float("nan")
    for k in ks:
        if k == 1:
            continue
        vals = [maj_at_k([s["extracted"] for s in g], [ok(s) for s in g], k) for g in graded if len(g) >= k]
        out[f"maj@{k}"] = sum(vals) / len(vals) if vals else float("nan")
    rewards = [s["reward"] for s in samples if s["reward"] is not None]
    think = [s["think_tokens"] for s in samples if s.get("think_tokens") is not None]
    fmt = sum(bool(s["format_ok"]) for s in samples) / len(samples)
    out.update(
        mean_reward=sum(rewards) / len(rewards) if rewards else float("nan"),
        accuracy=sum(ok(s) for s in samples) / len(rewards) if rewards else float("nan"),
        format_rate=fmt,
        format_error_rate=1.0 - fmt,
        mean_think_tokens=sum(think) / len(think) if think else float("nan"),
        think_closed_rate=len(think) / len(samples),
        mean_completion_len=sum(s["completion_len"] for s in samples) / len(samples),
        truncation_rate=sum(s["finish_reason"] in ("length", "think_budget", "context") for s in samples) / len(samples),
        infra_errors=sum(s["reward"] is None for s in samples),
        infra_error_rate=1.0 - len(rewards) / len(samples),
        graded_samples=len(rewards),
        problems=len(groups),
        samples=len(samples),
    )
    return out


# -- the harness ------------------------------------------------------------------------------


def _eval_items(cfg: EvalConfig, indices: Sequence[int]) -> list[dict[str, Any]]:
    """The items the eval serves (its env_kwargs applied, as in the rollouts)."""
    env = _build_env(*eval_env(cfg))
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
    report = check_contamination(items, _eval_items(cfg, indices), n=cfg.contamination_n, on_fail=cfg.contamination)
    return report.to_dict()


def evaluate(cfg: EvalConfig, sampler: Any = None) -> dict[str, Any]:
    """Run the eval (building a sampler from ``cfg`` unless one is given); return the summary."""
    from thinkgym.sampler import make_sampler
    from thinkgym.sampler.rollout import collect_rollouts, format_ok

    cfg.validate()
    # Not in validate(): the CLI names a missing model first (it resolves it after loading the config).
    check_earlier_eval(cfg.output_dir, cfg.overwrite)
    check_env(cfg)
    out_dir = Path(cfg.output_dir)  # created only once the samples are in: a refused or failed eval leaves none
    env_spec, env_kwargs = eval_env(cfg)
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
            env_spec, sampler, indices=indices, group_size=cfg.n, cfg=scfg, max_turns=cfg.max_turns,
            env_kwargs=env_kwargs,
        )
    finally:
        if own:
            sampler.close()
    groups: list[list[dict[str, Any]]] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    earlier = [name for name in EVAL_FILES if (out_dir / name).exists()]
    if earlier:  # check_earlier_eval refused them unless overwrite is set
        print(f"[eval] overwrite: replacing an earlier eval's {', '.join(earlier)} in {out_dir}", file=sys.stderr)
        for name in earlier:
            (out_dir / name).unlink()
    with open(out_dir / "samples.jsonl", "w") as f:
        for g in batch.groups():
            rows = []
            for e in g:
                row = e.to_dict()
                if not isinstance(env_spec, str):
                    row["env_id"] = cfg.env  # a file env has no registered id
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
        "mean_completion_len", "truncation_rate", "infra_errors", "infra_error_rate", "sampled_tokens_per_s", "elapsed_s",
    ]
    for k in keys:
        v = summary.get(k)
        t.add_row(k, "-" if v is None or (isinstance(v, float) and math.isnan(v)) else
                  (f"{v:.4f}" if isinstance(v, float) else str(v)))
    if summary.get("contamination"):
        c = summary["contamination"]
        t.add_row("contamination rate", f"{c['rate']:.4f} ({len(c['contaminated'])}/{c['eval_items']})")
    Console().print(t)
