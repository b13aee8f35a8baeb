"""``thinkgym train``: the GRPO / PPO learner. Heavy imports happen inside the command."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

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
    TensorBoard scalars, curves.png and summary.json to OUTPUT_DIR. Ctrl-C finishes the step and
    checkpoints it (a second Ctrl-C stops at once); --resume continues.
    """
    from thinkgym.config import ConfigError, Overrides, blame, load_config, parse_sets
    from thinkgym.grpo.train import GRPOConfig, check_config

    overrides = Overrides()
    overrides.put("max_steps", max_steps, "--max-steps")
    overrides.put("output_dir", str(output_dir) if output_dir else None, "--output-dir")
    overrides.put("model", model, "--model")
    try:
        overrides.update(parse_sets(set_))
        cfg = load_config(GRPOConfig, config, overrides, OTHER_COMMANDS)
    except (ConfigError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        check_config(cfg, resume)
    except (ConfigError, ValueError) as e:  # name the file or option, as load_config does
        typer.echo(f"error: {blame(str(e), config, overrides.origins)}", err=True)
        raise typer.Exit(2) from None
    code = _run(cfg, resume)
    if code:
        raise typer.Exit(code)


# A config file of these commands given to `thinkgym train` is named as such (load_config).
OTHER_COMMANDS = {"thinkgym sft": "thinkgym.sft_coldstart.train:SFTConfig",
                  "thinkgym eval": "thinkgym.sampler.eval:EvalConfig"}


def _run(cfg: Any, resume: bool) -> int:
    """Train, print the summary (rank 0) and return the exit code: 130 after Ctrl-C (the first
    finishes the step and checkpoints it, a second stops at once) and 143 after SIGTERM (as SFT
    does: a scheduler must not take a preempted run for a finished one), with one line saying
    where the run stopped and how to continue it."""
    from thinkgym.grpo.engine import latest_checkpoint
    from thinkgym.grpo.train import train as run

    rank0 = os.environ.get("RANK", "0") == "0"
    ck = latest_checkpoint(Path(cfg.output_dir)) if resume else None
    state = json.loads((ck / "trainer_state.json").read_text()) if ck else {"step": 0, "history": []}
    if state["step"] >= cfg.max_steps:  # the engines and the sampler would load to do nothing
        if rank0:
            typer.echo(f"--resume: {cfg.output_dir} already finished at step {state['step']} "
                       f"(max_steps {cfg.max_steps}); nothing to do", err=True)
            _summary("max_steps", ck, state["history"])
        return 0
    done = {"step": state["step"]}  # the last step finished
    from thinkgym.hub import ModelNotFound

    try:
        res = run(cfg, resume=resume, on_step=lambda step, *_: done.update(step=step))
    except ModelNotFound as e:  # a hub id the config check could not fetch (online, not cached)
        typer.echo(f"error: model: {e}", err=True)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: stopped mid-step
        if rank0:
            typer.echo(_interrupted(cfg, done["step"] + 1), err=True)
        return 130
    if rank0:
        _summary(res["stopped"], res["checkpoint"], res["history"])
    if res["stopped"] in ("SIGINT", "SIGTERM"):
        if rank0:
            typer.echo(_interrupted(cfg, done["step"]), err=True)
        return 130 if res["stopped"] == "SIGINT" else 143
    return 0 if res["stopped"] == "max_steps" else 1


def _summary(stopped: str, checkpoint: Any, history: list[dict]) -> None:
    final = history[-1] if history else {}
    keys = ("step", "reward", "accuracy", "eval_accuracy", "kl", "entropy")
    typer.echo(json.dumps({"stopped": stopped, "checkpoint": str(checkpoint),
                           **{k: final[k] for k in keys if k in final}}, indent=1))


def _interrupted(cfg: Any, step: int) -> str:
    from thinkgym.grpo.engine import latest_checkpoint

    ck = latest_checkpoint(Path(cfg.output_dir))
    if ck is None:
        return f"interrupted at step {step}; no checkpoint yet"
    return (f"interrupted at step {step}; the last checkpoint is step {int(ck.name.removeprefix('step_'))} "
            f"in {ck.parent} (rerun with --resume to continue)")


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
    from thinkgym.config import ConfigError, Overrides, blame, load_config, parse_sets
    from thinkgym.grpo.train import GRPOConfig, check_config

    overrides = Overrides()
    for key, flag in (("max_steps", "--max-steps"), ("output_dir", "--output-dir"), ("model", "--model")):
        overrides.put(key, getattr(a, key), flag)
    try:
        overrides.update(parse_sets(a.sets))
        cfg = load_config(GRPOConfig, a.config, overrides, OTHER_COMMANDS)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        check_config(cfg, a.resume)
    except (ConfigError, ValueError) as e:  # name the file or option, as load_config does
        print(f"error: {blame(str(e), a.config, overrides.origins)}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(_run(cfg, a.resume))
