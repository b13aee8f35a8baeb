"""``thinkgym demo``: a reasoning model trained from scratch on a CPU, with honest baselines.

One command, top to bottom, using the project's own components:

1. **Data.** Countdown items (3 numbers, each exactly once) from the ``countdown`` task source:
   a limited traced set for SFT, untraced RL prompts, untraced dev items (they pick the SFT
   checkpoint) and held-out items minus any question seen in the other three, each split from its
   own seed (``DemoConfig.split_seed``); the contamination gate (13-gram overlap, exact match for
   short questions) must report zero overlap.
   Traces are the item's own evaluation steps (``a op b = c`` lines) without the search that
   found the expression, so they show *a* solution, not *how to find one*: RL has room.
2. **Tiny model.** A byte-level BPE tokenizer trained on the task text and a random-init Qwen2.
3. **Cold-start SFT** (``sft_coldstart/train.py``) to convergence with a cosine (annealed)
   schedule; the checkpoint that answers the most dev items right (greedy; ``best/``) is the SFT
   policy. Dev loss is a poor guide here: it bottoms out while accuracy still climbs.
4. **GRPO** (``grpo/train.py``: vLLM sampler, DeepSpeed learner, countdown grader via the env)
   from the SFT policy on fresh prompts without traces, with a KL to the SFT policy.
5. **Control arm**: more SFT from the same checkpoint, for the same training wall-clock as GRPO
   (``max_train_s``: it ends at the first step that reaches GRPO's time), at GRPO's learning rate,
   so a gain can be credited to RL and not to extra optimisation.
6. **Eval** (``sampler/eval.py``) of the three policies on the held-out items: greedy accuracy,
   pass@1/pass@k at temperature 1, format rate, mean length, and whether the think lines' arithmetic
   is right (:func:`think_arithmetic`). A table on screen, ``report.md``,
   ``curves.png`` and ``summary.json`` in the run directory.

Each training stage runs in its own process (DeepSpeed / gloo and vLLM state stay isolated), in a
session of its own: stopping the demo (SIGTERM, Ctrl-C, SIGHUP, an exception) stops the stage's whole
process group, workers included (:func:`_stop_stage`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

HELDOUT_ENV = "thinkgym/DemoHeldout-v0"
MAX_SEED = (2**31 - 1 - 3) // 3  #: the largest --seed whose derived seeds all stay below 2**31


@dataclass
class DemoConfig:
    """Sizes and knobs of one demo run (``--quick`` shrinks them for a smoke test)."""

    output_dir: str = "runs/demo"  #: run directory
    seed: int = 0  #: seeds the task splits, the model init and every stage
    task_params: dict = field(default_factory=lambda: {
        "n_numbers": [3, 3], "max_number": 12, "target": [1, 99], "exactly_once": True})  #: countdown knobs
    sft_examples: int = 1000  #: traced training items (the limited SFT set)
    dev_examples: int = 100  #: traced dev items (SFT eval loss)
    dev_items: int = 200  #: fresh dev items (own seed) whose greedy accuracy picks the SFT checkpoint
    heldout: int = 300  #: held-out items for every eval
    eval_samples: int = 8  #: samples per held-out item at temperature 1 (pass@k)
    max_tokens: int = 48  #: generation budget (a trace is ~35 tokens)
    # --- tiny model
    hidden_size: int = 128  #: tiny model width
    num_layers: int = 4  #: tiny model depth
    vocab_size: int = 512  #: BPE vocabulary target
    # --- SFT
    sft_epochs: float = 40.0  #: passes over the traced set (cosine to sft_min_lr_ratio)
    sft_lr: float = 3e-3  #: SFT peak learning rate
    sft_min_lr_ratio: float = 0.05  #: end of the cosine schedule (annealed)
    sft_micro_batch: int = 64  #: examples per step (padded: a trace is ~80 tokens with its prompt)
    sft_packing: bool = False  #: pack into 1024-token rows (on a tiny model the 1024^2 attention dominates)
    sft_eval_every: int = 32  #: steps between dev evals (loss, and the greedy accuracy that picks best/)
    # --- GRPO
    grpo_steps: int = 160  #: RL steps (200 ran past 20 minutes on a slower 2-core host)
    prompts_per_step: int = 16  #: prompts per step
    group_size: int = 16  #: completions per prompt
    grpo_lr: float = 1e-4  #: RL peak learning rate (also the control arm's, constant there)
    grpo_min_lr_ratio: float = 0.1  #: RL cosine decay to grpo_lr x this at the last step
    kl_coef: float = 0.01  #: KL-to-SFT weight (k3)
    max_sampling_tries: int = 1  #: DAPO dynamic-sampling rounds (1: no refills, a round costs as much as a step)
    micro_batch_size: int = 64  #: learner micro-batch (sequences; whole groups share their prompt's forward)
    quick: bool = False  #: tiny sizes for a smoke test

    def validate(self) -> None:
        """Bad knobs fail here, not minutes later in the stage that first uses them."""
        # Every stage seeds from seed (the splits use seed * 3 + 3); the learner's seed must be < 2**31.
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, {MAX_SEED}], got {self.seed}")
        from thinkgym.config import check_output_dir

        check_output_dir(self.output_dir)  # a ConfigError, which is a ValueError

    def split_seed(self, split: str) -> int:
        """Seed of the countdown source behind one data split: ``sft``, ``rl``, ``heldout`` or ``dev``."""
        return self.seed * 3 + {"sft": 0, "rl": 1, "heldout": 2, "dev": 3}[split]

    def tiny_config(self) -> Any:
        """The tiny model's :class:`~thinkgym.sft_coldstart.tiny.TinyConfig` (Qwen2 shape from the width)."""
        from thinkgym.sft_coldstart.tiny import TinyConfig

        return TinyConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=3 * self.hidden_size,
                          num_hidden_layers=self.num_layers, num_attention_heads=max(1, self.hidden_size // 32),
                          num_key_value_heads=max(1, self.hidden_size // 64), max_position_embeddings=256, seed=self.seed)

    @classmethod
    def quick_preset(cls, **kw: Any) -> "DemoConfig":
        base = dict(sft_examples=120, dev_examples=16, heldout=24, eval_samples=4, sft_epochs=2.0,
                    sft_eval_every=2, sft_micro_batch=16, dev_items=8, grpo_steps=2, prompts_per_step=4, group_size=4, micro_batch_size=16,
                    max_sampling_tries=1, hidden_size=64, num_layers=2, quick=True)
        base.update(kw)
        return cls(**base)


# ------------------------------------------------------------------------------------------
# Data: SFT traces, RL prompts, held-out items, contamination gate
# ------------------------------------------------------------------------------------------


def compact_trace(item: dict[str, Any]) -> str:
    """``<think>`` with the reference expression's evaluation steps, then the answer."""
    sol = item["metadata"]["solution"]
    lines = sol.split("<think>", 1)[1].split("</think>", 1)[0].strip().splitlines()
    # The source's trace is "I need..., Try EXPR:, steps..., That gives...": keep the steps,
    # each as "a op b = c" (the "so the expression becomes" tail only restates them).
    steps = [ln.split(", so", 1)[0].strip() for ln in lines if "=" in ln and not ln.startswith(("I need", "Try"))]
    return "<think>\n" + "\n".join(steps) + "\n</think>\n<answer>" + item["metadata"]["reference"] + "</answer>"


def build_data(cfg: DemoConfig, run: Path) -> dict[str, Any]:
    """Write sft.jsonl (chat rows), heldout.jsonl and train_items.jsonl; gate the overlap."""
    from thinkgym.tasks import make_task
    from thinkgym.tasks.contamination import check_contamination

    data = run / "data"
    data.mkdir(parents=True, exist_ok=True)
    P = cfg.task_params
    sft_src = make_task("countdown", seed=cfg.split_seed("sft"), **P)
    rl_src = make_task("countdown", seed=cfg.split_seed("rl"), **P)
    ho_src = make_task("countdown", seed=cfg.split_seed("heldout"), **P)
    dev_src = make_task("countdown", seed=cfg.split_seed("dev"), **P)  # = sft_config's eval_env
    sft_items = [sft_src[i] for i in range(cfg.sft_examples + cfg.dev_examples)]
    # Every prompt the learner can draw (dynamic sampling consumes up to tries x prompts per step).
    n_rl = cfg.grpo_steps * cfg.prompts_per_step * cfg.max_sampling_tries
    rl_items = [rl_src[i] for i in range(n_rl)]
    dev_items = [dev_src[i] for i in range(cfg.dev_items)]
    seen = {it["question"] for it in [*sft_items, *rl_items, *dev_items]}
    heldout, i = [], 0
    while len(heldout) < cfg.heldout:
        it = ho_src[i]
        i += 1
        if it["question"] not in seen:
            seen.add(it["question"])  # no duplicates inside the held-out set either
            heldout.append(it)
    used = [*sft_items, *rl_items, *dev_items]  # everything training or checkpoint selection sees
    report = check_contamination(used, heldout, n=13, on_fail="error")

    with open(data / "sft.jsonl", "w") as f:
        for it in sft_items:
            f.write(json.dumps({"messages": [{"role": "user", "content": it["question"]},
                                             {"role": "assistant", "content": compact_trace(it)}]}) + "\n")
    for name, rows in (("heldout.jsonl", heldout), ("train_items.jsonl", used)):
        with open(data / name, "w") as f:
            for it in rows:
                meta = {k: v for k, v in it["metadata"].items() if k in ("grader", "grader_kwargs", "reference")}
                f.write(json.dumps({"question": it["question"], "answer": it["answer"], "metadata": meta}) + "\n")
    corpus = [it["question"] + "\n" + compact_trace(it) for it in sft_items]
    return {"dir": data, "corpus": corpus, "heldout_items": len(heldout), "heldout_scanned": i,
            "train_items": len(used), "rl_items": len(rl_items), "contamination": report.to_dict()}


# ------------------------------------------------------------------------------------------
# Stages (each in a subprocess)
# ------------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


STOP_GRACE_S = 5.0  #: seconds a stopped stage's processes get to exit before SIGKILL
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Stop(SystemExit):
    """A signal stops the demo: exit status 128 + signum, after the running stage is stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def _stop_stage(p: subprocess.Popen, sig: int, grace_s: float | None = None) -> None:
    """Stop a stage and everything it started: ``sig`` to its process group and to every descendant
    that left the group (a worker in a session of its own), SIGKILL to whatever is left ``grace_s``
    seconds later. Other stop signals wait until this is done."""
    from thinkgym.verifiers.pool import _descendants

    grace_s = STOP_GRACE_S if grace_s is None else grace_s
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    escaped: list[int] = []  # pidfds, so a pid reused after its process ended is never signalled
    try:
        for pid in _descendants(p.pid):
            with contextlib.suppress(OSError):
                if os.getpgid(pid) != p.pid:
                    escaped.append(os.pidfd_open(pid))

        def send(s: int) -> None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, s)
            for fd in escaped:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(fd, s)

        def alive() -> bool:
            if p.poll() is None:
                return True
            try:
                os.killpg(p.pid, 0)
                return True
            except (ProcessLookupError, PermissionError):  # none left, or none we may signal (another uid's)
                pass
            return any(not select.select([fd], [], [], 0)[0] for fd in escaped)  # a pidfd reads when it ends

        send(sig)
        deadline = time.monotonic() + grace_s
        while alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if alive():
            send(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL waits out a process stuck in the kernel
            p.wait(timeout=5)
    finally:
        for fd in escaped:
            os.close(fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _run(cmd: list[str], log: Path, what: str) -> float:
    """Run a stage, output to ``log``; a failure raises with the log's tail. Returns seconds.

    The stage leads a session of its own, so a Ctrl-C at the terminal reaches only the demo: an
    exception here (the demo's signal handler, KeyboardInterrupt, anything else) stops the stage's
    whole process group (:func:`_stop_stage`) with the signal that stopped the demo, SIGINT for
    KeyboardInterrupt, else SIGTERM, and is raised on."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = None
        try:
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
            p.wait()
        except BaseException as e:
            if p is not None:
                _stop_stage(p, e.signum if isinstance(e, _Stop) else
                            signal.SIGINT if isinstance(e, KeyboardInterrupt) else signal.SIGTERM)
            raise
    if p.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise RuntimeError(f"demo stage {what!r} failed (exit {p.returncode}); last lines of {log}:\n{tail}")
    return time.perf_counter() - t0


def _write_yaml(path: Path, d: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def sft_config(cfg: DemoConfig, model: str, out: Path, data: Path, **over: Any) -> dict[str, Any]:
    d = dict(model=model, output_dir=str(out), datasets=[str(data / "sft.jsonl")],
             eval_fraction=cfg.dev_examples / (cfg.sft_examples + cfg.dev_examples), system_prompt=None,
             max_length=128, packing=cfg.sft_packing, pack_length=1024, micro_batch_size=cfg.sft_micro_batch,
             epochs=cfg.sft_epochs, learning_rate=cfg.sft_lr, min_lr_ratio=cfg.sft_min_lr_ratio,
             warmup_ratio=0.03, adam_betas=[0.9, 0.99], zero_stage=2, eval_every=cfg.sft_eval_every,
             save_best=True, seed=cfg.seed, progress=False, tensorboard=False, plot=False,
             # The best checkpoint is the one that answers the most dev items right (greedy): dev
             # loss bottoms out while accuracy is still climbing.
             best_metric="accuracy", eval_env="thinkgym/Countdown-v0", eval_env_items=cfg.dev_items,
             eval_env_kwargs={"task_params": cfg.task_params, "seed": cfg.split_seed("dev"), "system_prompt": None},
             eval_max_tokens=cfg.max_tokens, overwrite=True)  # the demo owns its run directory: a rerun replaces it
    d.update(over)
    return d


def grpo_config(cfg: DemoConfig, model: str, out: Path) -> dict[str, Any]:
    n = cfg.prompts_per_step * cfg.group_size
    return dict(
        model=model, output_dir=str(out), seed=cfg.seed, envs=["thinkgym/Countdown-v0"],
        env_kwargs={"task_params": cfg.task_params, "seed": cfg.split_seed("rl"), "system_prompt": None},
        max_steps=cfg.grpo_steps, prompts_per_step=cfg.prompts_per_step, group_size=cfg.group_size,
        sampler_backend="vllm", sampler_kwargs={"dtype": "float32", "max_model_len": 256, "seed": cfg.seed},
        temperature=1.0, max_tokens=cfg.max_tokens, dynamic_sampling=True,
        max_sampling_tries=cfg.max_sampling_tries, advantage="grpo", std_normalize=True,
        clip_low=0.2, clip_high=0.28, aggregation="token_mean", kl_coef=cfg.kl_coef, kl_estimator="k3",
        # fp32 vLLM and the fp32 learner agree on logprobs to ~1e-3: the truncated IS weight (a guard
        # for bf16 samplers) would be 1, and without it the sampler skips computing logprobs.
        tis_cap=None, lr=cfg.grpo_lr, min_lr_ratio=cfg.grpo_min_lr_ratio, ppo_epochs=1, minibatches=1, micro_batch_size=min(cfg.micro_batch_size, n),
        zero_stage=2, dtype="fp32", save_every=max(cfg.grpo_steps, 1), keep_checkpoints=1, eval_prompts=0,
        progress=False, tensorboard=False, overwrite=True)


_THINK = re.compile(r"<think>(.*?)</think>", re.S)
_TARGET = re.compile(r"make (\d+) with")


def think_arithmetic(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Is the think block computing, or decoration? Over single-turn countdown eval rows
    (``samples.jsonl``; the target is read from the question's "make N with"):

    - ``think_lines_wrong``: share of ``lhs = rhs`` lines in ``<think>`` whose left side does not
      evaluate to the stated right side (exact arithmetic, the countdown grader's evaluator);
    - ``first_line_wrong`` / ``last_line_wrong``: the same for the first line of each think block,
      and for the last line of blocks with two or more (the line a trace ends on the target);
    - ``right_lines_ok``: among right answers, the share whose think lines are all correct;
    - ``wrong_claims_target``: among wrong answers, the share whose last line states the target.

    A share with nothing to count (no think lines, no right answers, ...) is None, not 0.0.
    """
    from thinkgym.verifiers.countdown import ExpressionError, evaluate

    def value(expr: str) -> Any:
        try:
            return evaluate(expr)[0]
        except ExpressionError:
            return None

    n_lines = bad = right = right_ok = wrong = claims = 0
    first, last = [0, 0], [0, 0]  # [wrong, counted]
    for r in rows:
        m = _THINK.search(r["texts"][0])
        lines = [ln.split("=") for ln in (m.group(1) if m else "").splitlines() if ln.count("=") == 1]
        ok = [(v := value(lhs)) is not None and v == value(rhs) for lhs, rhs in lines]
        n_bad = ok.count(False)
        n_lines, bad = n_lines + len(lines), bad + n_bad
        if ok:
            first[0], first[1] = first[0] + (not ok[0]), first[1] + 1
        if len(ok) > 1:
            last[0], last[1] = last[0] + (not ok[-1]), last[1] + 1
        if r["reward"] == 1.0:
            right, right_ok = right + 1, right_ok + (bool(lines) and not n_bad)
        else:
            wrong += 1
            t = _TARGET.search(r["messages"][0]["content"])
            claims += bool(t and lines and value(lines[-1][1]) == int(t.group(1)))
    def share(k: int, n: int) -> float | None:  # None: nothing to count (no lines, no right answers, ...)
        return k / n if n else None

    return {"think_lines_wrong": share(bad, n_lines), "first_line_wrong": share(*first),
            "last_line_wrong": share(*last), "right_lines_ok": share(right_ok, right),
            "wrong_claims_target": share(claims, wrong)}


def fmt_share(x: float | None, spec: str = ".3f") -> str:
    """A :func:`think_arithmetic` share for a table: ``n/a`` when there was nothing to count."""
    return "n/a" if x is None else format(x, spec)


def evaluate_policies(cfg: DemoConfig, models: dict[str, Path], run: Path) -> dict[str, dict[str, Any]]:
    """Greedy accuracy and temperature-1 pass@k of each policy on the held-out items, through the
    eval harness, in one subprocess (one vLLM engine; later policies are loaded as new weights)."""
    out = run / "eval"
    out.mkdir(parents=True, exist_ok=True)
    spec = {"models": {k: str(v) for k, v in models.items()}, "heldout": str(run / "data" / "heldout.jsonl"),
            "train": str(run / "data" / "train_items.jsonl"), "out": str(out), "limit": cfg.heldout,
            "n": cfg.eval_samples, "max_tokens": cfg.max_tokens, "seed": cfg.seed}
    _run([sys.executable, "-m", "thinkgym.demo", json.dumps(spec)], out / "eval.log", "eval")
    k, res = cfg.eval_samples, {}
    for name in models:
        greedy = json.loads((out / name / "greedy" / "summary.json").read_text())
        sampled = json.loads((out / name / "sampled" / "summary.json").read_text())
        res[name] = {"accuracy": greedy["pass@1"], "pass@1": sampled["pass@1"], f"pass@{k}": sampled[f"pass@{k}"],
                     "format_rate": sampled["format_rate"], "mean_length": sampled["mean_completion_len"],
                     "greedy_format_rate": greedy["format_rate"], "model": str(models[name]),
                     **think_arithmetic(_jsonl(out / name / "greedy" / "samples.jsonl"))}
    return res


def _eval_main(spec: dict[str, Any]) -> None:
    """Subprocess body of :func:`evaluate_policies`: register the held-out env, run the harness."""
    import gymnasium

    from thinkgym.envs import register_envs
    from thinkgym.sampler import make_sampler
    from thinkgym.sampler.eval import EvalConfig, evaluate

    register_envs()
    if HELDOUT_ENV not in gymnasium.registry:
        gymnasium.register(HELDOUT_ENV, entry_point="thinkgym.envs.core:SingleTurnEnv", kwargs={
            "task": "jsonl", "task_params": {"path": spec["heldout"], "grader": "countdown"}, "system_prompt": None})
    n_train = sum(1 for _ in open(spec["train"]))
    models = list(spec["models"].items())
    sampler = make_sampler("vllm", models[0][1], dtype="float32", max_model_len=256, seed=spec["seed"])
    try:
        for j, (name, path) in enumerate(models):
            if j:
                sampler.update_weights(path)
            for sub, n, temp in (("greedy", 1, 0.0), ("sampled", spec["n"], 1.0)):
                evaluate(EvalConfig(model=path, env=HELDOUT_ENV, output_dir=str(Path(spec["out"]) / name / sub),
                                    n=n, limit=spec["limit"], temperature=temp, max_tokens=spec["max_tokens"],
                                    seed=spec["seed"], train_task=spec["train"], train_size=n_train,
                                    contamination="error", overwrite=True), sampler=sampler)  # the demo owns its run dir
    finally:
        sampler.close()


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []


def plot(run: Path, results: dict[str, dict[str, Any]], k: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    sft = _jsonl(run / "sft" / "metrics.jsonl")
    ax[0].plot([r["step"] for r in sft if "train/loss" in r], [r["train/loss"] for r in sft if "train/loss" in r], label="train")
    ax[0].plot([r["step"] for r in sft if "eval/loss" in r], [r["eval/loss"] for r in sft if "eval/loss" in r], label="dev")
    ctl = _jsonl(run / "sft_control" / "metrics.jsonl")
    if ctl:  # the control continues from the best (highest dev accuracy) checkpoint
        res = json.loads((run / "sft" / "result.json").read_text())
        base = res.get("best_step") or max((r["step"] for r in sft), default=0)
        ax[0].plot([base + r["step"] for r in ctl if "train/loss" in r], [r["train/loss"] for r in ctl if "train/loss" in r],
                   label="control (more SFT)")
    ax[0].set(title="SFT loss", xlabel="step", yscale="log")
    ax[0].legend()
    dev = [r for r in sft if r.get("eval/accuracy") is not None]
    if dev:
        a2 = ax[0].twinx()
        a2.plot([r["step"] for r in dev], [r["eval/accuracy"] for r in dev], "g.-", label="dev accuracy (greedy)")
        a2.set(ylabel="dev accuracy", ylim=(0, None))
        a2.legend(loc="upper center")
    rl = _jsonl(run / "grpo" / "metrics.jsonl")
    acc = [r.get("accuracy", float("nan")) for r in rl]
    ax[1].plot([r["step"] for r in rl], acc, alpha=0.35, label="train accuracy (T=1)")
    w = 10
    ax[1].plot([r["step"] for r in rl][w - 1:], [sum(acc[i - w + 1:i + 1]) / w for i in range(w - 1, len(acc))],
               color="C0", label=f"  mean of {w} steps")
    ax[1].plot([r["step"] for r in rl], [r.get("kl", float("nan")) for r in rl], label="KL to SFT")
    ax[1].set(title="GRPO", xlabel="step")
    ax[1].legend()
    names = list(results)
    x = range(len(names))
    ax[2].bar([i - 0.2 for i in x], [results[n]["accuracy"] for n in names], 0.4, label="greedy accuracy")
    ax[2].bar([i + 0.2 for i in x], [results[n][f"pass@{k}"] for n in names], 0.4, label=f"pass@{k} (T=1)")
    ax[2].set_xticks(list(x), names)
    ax[2].set(title="held-out", ylim=(0, 1))
    ax[2].legend()
    fig.tight_layout()
    path = run / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def table(results: dict[str, dict[str, Any]], k: int) -> list[list[str]]:
    rows = [["policy", "accuracy (greedy)", "pass@1 (T=1)", f"pass@{k} (T=1)", "format rate", "mean length",
             "think lines wrong"]]
    for name, r in results.items():
        rows.append([name, f"{r['accuracy']:.3f}", f"{r['pass@1']:.3f}", f"{r[f'pass@{k}']:.3f}",
                     f"{r['format_rate']:.3f}", f"{r['mean_length']:.1f}", fmt_share(r['think_lines_wrong'])])
    return rows


def write_report(run: Path, cfg: DemoConfig, summary: dict[str, Any], rows: list[list[str]]) -> Path:
    md = ["# thinkgym demo", "",
          f"Countdown ({cfg.task_params}), tiny Qwen2 ({summary['model_params']:,} parameters) trained from scratch, "
          f"seed {cfg.seed}, {summary['minutes']:.1f} minutes on {os.cpu_count()} CPU cores.", "",
          "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    t = summary["timings_s"]
    best_base = max(summary["sft"]["accuracy"], summary["sft_control"]["accuracy"])
    md += ["",
           f"- **sft**: {cfg.sft_examples} traced items, {summary['sft_steps']} steps (cosine to "
           f"{cfg.sft_min_lr_ratio:g}x), checkpoint with the best greedy accuracy on {cfg.dev_items} dev items "
           f"(step {summary['sft_best_step']}, {summary['sft_best_eval_accuracy']}); {t['sft']:.0f} s.",
           f"- **sft_control**: {summary['sft_control_steps']} more SFT steps from that checkpoint at the RL "
           f"learning rate ({cfg.grpo_lr:g}), for GRPO's training time ({summary['grpo_train_s']:.0f} s).",
           f"- **grpo**: {cfg.grpo_steps} steps x {cfg.prompts_per_step} fresh untraced prompts x {cfg.group_size} "
           f"samples, lr {cfg.grpo_lr:g} (cosine to {cfg.grpo_min_lr_ratio:g}x), KL {cfg.kl_coef:g} to the SFT policy; "
           f"{t['grpo']:.0f} s.",
           f"- Held-out: {summary['heldout_items']} items, disjoint from the {summary['train_items']} SFT/RL/dev items "
           f"(contamination gate: {len(summary['contamination']['contaminated'])} overlapping).",
           f"- GRPO minus the better baseline: **{summary['grpo']['accuracy'] - best_base:+.3f}** greedy accuracy.",
           "- *think lines wrong*: the share of `a op b = c` lines in the greedy think blocks whose arithmetic is "
           "wrong. Right answers with every line right: " + ", ".join(
               f"{n} {fmt_share(r['right_lines_ok'], '.0%')}" for n, r in summary.items() if n in ("sft", "sft_control", "grpo"))
           + "; wrong answers whose last line states the target anyway: " + ", ".join(
               f"{n} {fmt_share(r['wrong_claims_target'], '.0%')}" for n, r in summary.items() if n in ("sft", "sft_control", "grpo"))
           + ".",
           "", "![curves](curves.png)", ""]
    path = run / "report.md"
    path.write_text("\n".join(md))
    return path


# ------------------------------------------------------------------------------------------
# The pipeline
# ------------------------------------------------------------------------------------------


RESULTS = ("summary.json", "report.md", "curves.png")


def check_run_dir(run: Path) -> None:
    """``run`` is new, empty or an earlier demo run: the demo replaces its own files and stage
    folders there (config.json, data/, sft/ ...), which must not be another project's."""
    if not run.is_dir() or not any(run.iterdir()):
        return
    try:
        earlier = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        earlier = None
    if not (isinstance(earlier, dict) and {"seed", "grpo_steps", "sft_examples"} <= earlier.keys()):
        raise ValueError(f"output_dir: {str(run)!r} is not empty and holds no earlier demo run; "
                         "choose a new or empty directory")


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run every stage; returns (and writes) the summary."""
    from thinkgym.sft_coldstart.tiny import build_tiny_model

    cfg.validate()
    t_start = time.perf_counter()
    run = Path(cfg.output_dir)
    check_run_dir(run)
    try:
        run.mkdir(parents=True, exist_ok=True)
        # A rerun that fails part-way must not leave the earlier run's results looking like its own.
        for name in RESULTS:
            (run / name).unlink(missing_ok=True)
        (run / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    except OSError as e:
        raise ValueError(f"output_dir: cannot write to {str(run)!r}: {e.strerror or e}") from None
    timings: dict[str, float] = {}
    say = lambda msg: print(f"[demo {time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)  # noqa: E731

    t = time.perf_counter()
    data = build_data(cfg, run)
    say(f"data: {cfg.sft_examples}+{cfg.dev_examples} traced SFT items, {cfg.dev_items} dev items, {data['rl_items']} "
        f"RL prompts, {data['heldout_items']} held-out items (overlapping: {len(data['contamination']['contaminated'])})")
    tiny = build_tiny_model(run / "tiny-init", cfg.tiny_config(), corpus=data["corpus"])
    timings["data"] = time.perf_counter() - t
    n_params = _count_params(tiny)

    # ---- cold-start SFT to convergence --------------------------------------------------------
    yml = _write_yaml(run / "sft.yaml", sft_config(cfg, str(tiny), run / "sft", data["dir"]))
    timings["sft"] = _run([sys.executable, "-m", "thinkgym.sft_coldstart.train", str(yml)], run / "sft.log", "sft")
    sft_res = json.loads((run / "sft" / "result.json").read_text())
    sft_model = Path(sft_res.get("best") or sft_res["final"])
    say(f"sft: {sft_res['steps']} steps, best at step {sft_res.get('best_step')}: dev accuracy "
        f"{sft_res.get('best_eval_accuracy')}, dev loss {sft_res.get('best_eval_loss')}, {timings['sft']:.0f}s")


    # ---- GRPO from the SFT policy -------------------------------------------------------------
    yml = _write_yaml(run / "grpo.yaml", grpo_config(cfg, str(sft_model), run / "grpo"))
    timings["grpo"] = _run([sys.executable, "-m", "thinkgym.grpo.train", "--config", str(yml)], run / "grpo.log", "grpo")
    rl_hist = _jsonl(run / "grpo" / "metrics.jsonl")
    # Training time proper (sampling, grading, learning, weight sync): the control arm's budget.
    from thinkgym.grpo.engine import latest_checkpoint
    from thinkgym.grpo.monitor import loop_seconds

    grpo_train_s = loop_seconds(rl_hist)

    ck = latest_checkpoint(run / "grpo")
    if ck is None:
        raise RuntimeError(f"GRPO left no checkpoint in {run / 'grpo'}")
    say(f"grpo: {len(rl_hist)} steps, {grpo_train_s:.0f}s of training, {timings['grpo']:.0f}s in all")

    # ---- control: equal-time SFT from the same checkpoint -------------------------------------
    # One SFT run on a training-time budget: it ends at the first step whose optimizer time reaches
    # GRPO's training time. The learning rate is constant, so the step count is only a bound,
    # sized from SFT's measured speed with room for a CPU that slows down.
    sec_per_step = max(1e-3, sft_res["train_seconds"] / max(1, sft_res["steps"]))  # without SFT's dev evals
    bound = 4 * math.ceil(grpo_train_s / sec_per_step) + 100
    yml = _write_yaml(run / "sft_control.yaml", sft_config(
        cfg, str(sft_model), run / "sft_control", data["dir"], max_steps=bound, max_train_s=grpo_train_s,
        learning_rate=cfg.grpo_lr, min_lr_ratio=1.0, warmup_ratio=0.0, save_best=False, eval_every=0,
        seed=cfg.seed + 1, best_metric="loss", eval_env=""))
    timings["sft_control"] = _run([sys.executable, "-m", "thinkgym.sft_coldstart.train", str(yml)],
                                  run / "sft_control.log", "sft_control")
    ctl = json.loads((run / "sft_control" / "result.json").read_text())
    if ctl["stop_reason"] != "max_train_s":
        say(f"warning: the control arm ran out of steps ({bound}) before GRPO's training time")
    say(f"sft_control: {ctl['steps']} steps in {ctl['train_seconds']:.0f}s (GRPO trained {grpo_train_s:.0f}s)")

    # ---- held-out eval of the three policies ----------------------------------------------------
    t = time.perf_counter()
    results = evaluate_policies(cfg, {"sft": sft_model, "sft_control": Path(ctl["final"]), "grpo": ck / "hf"}, run)
    timings["eval"] = time.perf_counter() - t
    say("eval: " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in results.items()) + f" ({timings['eval']:.0f}s)")

    minutes = (time.perf_counter() - t_start) / 60
    k = cfg.eval_samples
    summary: dict[str, Any] = {
        **results, "heldout_items": data["heldout_items"], "train_items": data["train_items"],
        "minutes": minutes, "seed": cfg.seed, "quick": cfg.quick, "model_params": n_params,
        "task": {"name": "countdown", "params": cfg.task_params},
        "contamination": data["contamination"], "sft_steps": sft_res["steps"], "sft_best_eval_loss": sft_res.get("best_eval_loss"),
        "sft_best_eval_accuracy": sft_res.get("best_eval_accuracy"), "sft_best_step": sft_res.get("best_step"),
        "sft_control_steps": ctl["steps"], "sft_control_train_s": ctl["train_seconds"], "grpo_train_s": grpo_train_s,
        "grpo_steps": len(rl_hist), "grpo_final_train_accuracy": rl_hist[-1].get("accuracy") if rl_hist else None,
        "gain_vs_best_baseline": results["grpo"]["accuracy"] - max(results["sft"]["accuracy"], results["sft_control"]["accuracy"]),
        "timings_s": {**timings, "total": minutes * 60}, "config": dataclasses.asdict(cfg),
    }
    rows = table(results, k)
    plot(run, results, k)
    write_report(run, cfg, summary, rows)
    (run / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    _print_table(rows, f"held-out countdown, {data['heldout_items']} items, {minutes:.1f} min")
    return summary


def _count_params(model_dir: Path) -> int:
    from safetensors.torch import load_file

    return sum(t.numel() for t in load_file(str(model_dir / "model.safetensors")).values())


def _print_table(rows: list[list[str]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for h in rows[0]:
        t.add_column(h, justify="right" if h != "policy" else "left")
    for r in rows[1:]:
        t.add_row(*r)
    Console().print(t)


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        output_dir: Path = typer.Option(Path("runs/demo"), "--output-dir", "-o", help="Run directory."),
        seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed of the task splits, the model and every stage."),
        quick: bool = typer.Option(False, "--quick", help="Tiny sizes: a 1-2 minute smoke test, not a result."),
    ) -> None:
        """Tiny model from scratch -> cold-start SFT -> GRPO vs an equal-time SFT control, on held-out countdown.

        Writes summary.json, report.md and curves.png to OUTPUT_DIR and prints a before/after table.
        """
        stopping = False

        def _terminated(signum: int, frame: Any) -> None:
            # Python's default SIGTERM (SIGHUP) ends this process at once and leaves the running
            # stage training on; the exception lets _run stop the stage's process group first. The
            # stage has a session of its own: a terminal's Ctrl-C reaches it only through _run.
            nonlocal stopping
            if stopping:  # the exit is under way; the stage is being stopped already
                return
            stopping = True
            typer.echo(f"error: terminated by signal {signum}; {output_dir} holds a partial run", err=True)
            raise _Stop(signum)

        # Not where the signal is ignored (nohup, a background job's SIGINT) or has a handler set
        # outside Python (getsignal: None), which could not be put back.
        previous = {s: h for s in _STOP_SIGNALS if (h := signal.getsignal(s)) not in (signal.SIG_IGN, None)}
        for s in previous:
            signal.signal(s, _terminated)
        mk = DemoConfig.quick_preset if quick else DemoConfig
        cfg = mk(output_dir=str(output_dir), seed=seed)
        try:
            run_demo(cfg)
        except ValueError as e:  # bad input, found before any stage ran
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except RuntimeError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


if __name__ == "__main__":
    _eval_main(json.loads(sys.argv[1]))
