"""Observability for the learner: JSONL metrics, TensorBoard scalars, a rich progress bar and
the final curves PNG. Rank 0 only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class Monitor:
    """Rank-0 sink for per-step metrics (JSONL + TensorBoard + rich progress bar)."""

    SHOWN = ("reward", "accuracy", "kl", "entropy", "tokens_per_s", "t_generate", "t_grade", "t_learn", "t_sync")

    def __init__(self, cfg: Any, out: Path, history: list[dict[str, Any]], start: int) -> None:
        self.cfg, self.out = cfg, out
        # Rewrite the log from the checkpoint's history so a resumed run has no duplicate steps.
        with open(out / "metrics.jsonl", "w") as f:
            for row in history:
                f.write(json.dumps(row) + "\n")
        self.tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start + 1)
        self.progress = None
        if cfg.progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("[bold]grpo"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.description}"))
            self.task = self.progress.add_task("", total=cfg.max_steps, completed=start)
            self.progress.start()

    def log(self, row: dict[str, Any]) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step" and math.isfinite(v):
                    self.tb.add_scalar(k, v, row["step"])
        if self.progress is not None:
            desc = " ".join(f"{k.replace('t_', '')}={row[k]:.3g}" for k in self.SHOWN if k in row)
            self.progress.update(self.task, completed=row["step"], description=desc)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.tb is not None:
            self.tb.close()


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """PNG with reward, held-out accuracy, response length and KL against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, key, title in zip(axes.flat, ["reward", "eval_accuracy", "response_len", "kl"],
                              ["train reward", "held-out accuracy", "response length (tokens)", "KL to reference"]):
        pts = [(r["step"], r[key]) for r in history if isinstance(r.get(key), (int, float))]
        if pts:
            ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def is_correct(e: Any) -> float:
    """1.0 if the final answer is right: the grade's correctness component if it has one, else reward >= 1."""
    comps = (e.grades[-1] if e.grades else {}).get("components") or {}
    for k in ("correct", "answer", "accuracy"):
        if comps.get(k) is not None:
            return float(comps[k] >= 1.0)
    return float(e.reward is not None and e.reward >= 1.0)


def loop_seconds(history: list[dict[str, Any]]) -> float:
    """Training time proper of a run's steps (sampling, grading, learning, weight sync; not
    start-up, eval or checkpoints): the sum of ``t_step``, which counts an async run's overlap once."""
    return sum(r.get("t_step", r.get("t_generate", 0) + r.get("t_grade", 0) + r.get("t_learn", 0) + r.get("t_sync", 0))
               for r in history)


def rollout_metrics(episodes: list[Any]) -> dict[str, list[float]]:
    """Per-episode values to average: reward, accuracy, lengths, infra errors, per-grader breakdown."""
    valid = [e for e in episodes if e.reward is not None]
    logs: dict[str, list[float]] = {
        "reward": [float(e.reward) for e in valid], "accuracy": [is_correct(e) for e in valid],
        "response_len": [float(e.completion_len) for e in episodes],
        "truncated": [float(e.finish_reason == "length") for e in episodes],
        "grader_errors": [float(len(episodes) - len(valid))],
    }
    for e in episodes:  # per-grader reward, its components, and its infra errors
        g = e.grades[-1] if e.grades else {}
        name = str(g.get("grader") or "unknown").split("@")[0]
        logs.setdefault(f"grader_errors/{name}", []).append(float(e.reward is None))
        if e.reward is not None:
            logs.setdefault(f"reward/{name}", []).append(float(e.reward))
        for comp, val in (g.get("components") or {}).items():
            if isinstance(val, (int, float)):
                logs.setdefault(f"reward/{name}/{comp}", []).append(float(val))
    return logs
