"""``thinkgym sft`` and ``thinkgym tiny-model``. Heavy imports happen inside the commands."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("sft")(sft)
    app.command("tiny-model")(tiny_model)


def sft(
    config: Path = typer.Option(..., "--config", "-c", help="YAML file with SFTConfig fields (see examples/sft-*.yaml)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Override max_steps (optimizer steps)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Override output_dir (run directory)."),
    model: Optional[str] = typer.Option(None, "--model", help="Override model: an HF model directory, or 'tiny'."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in output_dir."),
    set_: list[str] = typer.Option([], "--set", help="Override any config field: --set learning_rate=3e-4 (repeatable)."),
) -> None:
    """Cold-start SFT: chat-template data, assistant-only loss, packing, DeepSpeed, HF checkpoint out.

    Writes OUTPUT_DIR/final (HF model that vLLM and transformers load), OUTPUT_DIR/best (by best_metric:
    lowest eval loss or highest dev accuracy), resumable checkpoints, TensorBoard logs, metrics.jsonl and loss.png.
    """
    from thinkgym.config import ConfigError, Overrides, blame, load_config, parse_sets
    from thinkgym.sft_coldstart.data import DataError
    from thinkgym.sft_coldstart.train import SFTConfig, check_config, train

    overrides = Overrides()
    overrides.put("max_steps", max_steps, "--max-steps")
    overrides.put("output_dir", str(output_dir) if output_dir else None, "--output-dir")
    overrides.put("model", model, "--model")
    overrides.put("resume", True if resume else None, "--resume")
    try:
        overrides.update(parse_sets(set_))
        cfg = load_config(SFTConfig, config, overrides, OTHER_COMMANDS)
        try:
            check_config(cfg)
        except ConfigError as e:  # name the file or option, as load_config does
            raise ConfigError(blame(str(e), config, overrides.origins)) from None
    except (ConfigError, DataError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if cfg.resume and not (Path(cfg.output_dir) / "checkpoints" / "latest").exists():
        typer.echo(f"--resume: no checkpoint in {cfg.output_dir}/checkpoints, starting a fresh run", err=True)
    try:
        res = train(cfg)
    except (ConfigError, DataError) as e:  # a model that cannot load is a ConfigError there too
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:  # Ctrl-C stops the run at once; checkpoints/latest names a complete checkpoint
        typer.echo(_interrupted(Path(cfg.output_dir)), err=True)
        raise typer.Exit(130) from None
    keys = ("final", "best", "steps", "best_eval_loss", "best_eval_accuracy", "tokens_per_s", "seconds")
    typer.echo(json.dumps({k: res[k] for k in keys}, indent=1))


# A config file of these commands given to `thinkgym sft` is named as such (load_config).
OTHER_COMMANDS = {"thinkgym train": "thinkgym.grpo.train:GRPOConfig",
                  "thinkgym eval": "thinkgym.sampler.eval:EvalConfig"}


def _interrupted(out: Path) -> str:
    """Where an interrupted run stopped (the step after the last one logged) and what --resume continues from."""
    step = 0
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        step = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    latest = out / "checkpoints" / "latest"
    tag = latest.read_text().strip() if latest.is_file() else ""
    if not tag:
        return f"interrupted at step {step + 1}; no checkpoint yet"
    return (f"interrupted at step {step + 1}; the last checkpoint is step {tag.removeprefix('step-')} in "
            f"{latest.parent} (rerun with --resume to continue)")


def tiny_model(
    out: Path = typer.Option(..., "--out", help="Directory to write the model and tokenizer to."),
    hidden_size: int = typer.Option(128, "--hidden-size", help="Hidden size."),
    layers: int = typer.Option(4, "--layers", help="Number of transformer layers."),
    heads: int = typer.Option(4, "--heads", help="Attention heads."),
    kv_heads: int = typer.Option(2, "--kv-heads", help="Key/value heads (grouped-query attention)."),
    intermediate_size: int = typer.Option(384, "--intermediate-size", help="MLP width."),
    vocab_size: int = typer.Option(512, "--vocab-size", help="Target BPE vocabulary size."),
    max_positions: int = typer.Option(1024, "--max-positions", help="Max sequence length."),
    task: list[str] = typer.Option([], "--task", help="Train the tokenizer on this task source's text too (repeatable)."),
    corpus_items: int = typer.Option(2000, "--corpus-items", help="Items per --task for the tokenizer corpus."),
    seed: int = typer.Option(0, "--seed", help="Weight init seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model already in OUT."),
) -> None:
    """Build a tiny random-init Qwen2 model + BPE tokenizer (chat template, <think>/<answer> tokens).

    Nothing is downloaded; the result loads with AutoModelForCausalLM and vLLM like any HF model.
    """
    from thinkgym.config import ConfigError, check_output_dir
    from thinkgym.sft_coldstart.tiny import TinyConfig, build_tiny_model, task_corpus

    cfg = TinyConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                     num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                     max_position_embeddings=max_positions, seed=seed)
    try:
        cfg.validate()
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    try:
        check_output_dir(out, "--out")  # before the tokenizer is trained
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    held = [n for n in ("config.json", "model.safetensors", "tokenizer.json") if (out / n).exists()]
    if held and not overwrite:  # e.g. a trained checkpoint's folder: never replaced silently
        typer.echo(f"error: {out} already holds a model ({', '.join(held)}); pass --overwrite to replace it, "
                   "or choose another --out", err=True)
        raise typer.Exit(2)
    corpus = task_corpus(task, corpus_items) if task else None
    path = build_tiny_model(out, cfg, corpus)
    cfgj = json.loads((path / "config.json").read_text())
    import math

    import safetensors

    with safetensors.safe_open(str(path / "model.safetensors"), "np") as f:
        n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    typer.echo(f"wrote {path}: Qwen2, {cfgj['num_hidden_layers']} layers, hidden {cfgj['hidden_size']}, "
               f"vocab {cfgj['vocab_size']}, {n:,} parameters")
