"""``thinkgym train``: the GRPO / PPO learner. Heavy imports happen inside the command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("train")(train)


def train(
    config: Path = typer.Option(..., "--config", "-c", help="YAML file with GRPOConfig fields (see examples/grpo-*.yaml)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Override max_steps."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Override output_dir."),
    model: Optional[str] = typer.Option(None, "--model", help="Override model (an HF model directory)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in output_dir."),
    set_: list[str] = typer.Option([], "--set", help="Override any config field: --set kl_coef=0.01 (repeatable)."),
) -> None:
    """RL with verifiable rewards: vLLM rollouts over envs, GRPO/RLOO/PPO updates with DeepSpeed.

    Single process as is; several with `deepspeed --num_gpus N --module thinkgym.grpo.train ...` or
    `torchrun --nproc_per_node N $(which thinkgym) train ...`. Writes checkpoints, metrics.jsonl,
    TensorBoard scalars, curves.png and summary.json to OUTPUT_DIR.
    """
    from thinkgym.config import ConfigError, load_config, parse_sets
    from thinkgym.grpo.train import GRPOConfig, check_config
    from thinkgym.grpo.train import train as run

    try:
        overrides = {"max_steps": max_steps, "output_dir": str(output_dir) if output_dir else None, "model": model}
        overrides.update(parse_sets(set_))
        cfg = load_config(GRPOConfig, config, overrides)
    except (ConfigError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        check_config(cfg, resume)
    except (ConfigError, ValueError) as e:  # name the file, as load_config does
        typer.echo(f"error: {config}: {e}", err=True)
        raise typer.Exit(2) from None
    res = run(cfg, resume=resume)
    final = res["history"][-1] if res["history"] else {}
    keys = ("step", "reward", "accuracy", "eval_accuracy", "kl", "entropy")
    typer.echo(json.dumps({"stopped": res["stopped"], "checkpoint": str(res["checkpoint"]),
                           **{k: final[k] for k in keys if k in final}}, indent=1))
    if res["stopped"] not in ("max_steps", "SIGTERM"):
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """``python -m thinkgym.grpo.train --config X.yaml ...``: the same flags as ``thinkgym train``."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description="thinkgym GRPO/PPO learner")
    p.add_argument("--config", required=True)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--output-dir")
    p.add_argument("--model")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--set", action="append", default=[], dest="sets")
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    a = p.parse_args(argv)
    from thinkgym.config import ConfigError, load_config, parse_sets
    from thinkgym.grpo.train import GRPOConfig, check_config

    try:
        cfg = load_config(GRPOConfig, a.config, {"max_steps": a.max_steps, "output_dir": a.output_dir,
                                                 "model": a.model, **parse_sets(a.sets)})
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        check_config(cfg, a.resume)
    except (ConfigError, ValueError) as e:  # name the file, as load_config does
        print(f"error: {a.config}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    from thinkgym.grpo.train import train as run

    res = run(cfg, resume=a.resume)
    raise SystemExit(0 if res["stopped"] in ("max_steps", "SIGTERM") else 1)
