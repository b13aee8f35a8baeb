"""``thinkgym eval``: pass@k / maj@k / reward / format stats of a model on an env."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        model: Optional[str] = typer.Option(None, "--model", "-m", help="HF model dir (weights + tokenizer)."),
        env: Optional[str] = typer.Option(None, "--env", help="Env id (see `thinkgym envs`), or a .jsonl file / local HF dataset folder [thinkgym/Arithmetic-v0]."),
        output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Writes samples.jsonl and summary.json here [eval-out]."),
        n: Optional[int] = typer.Option(None, "--n", "-n", min=1, help="Samples per problem [8]."),
        limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Number of problems [64]."),
        backend: Optional[str] = typer.Option(None, "--backend", help="vllm (default) | hf | vllm-server."),
        base_url: Optional[str] = typer.Option(None, "--base-url", help="vllm-server: e.g. http://127.0.0.1:8000."),
        temperature: Optional[float] = typer.Option(None, "--temperature", min=0.0, help="[1.0]; 0 = greedy."),
        max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Sampled tokens per turn [512]."),
        think_budget: Optional[int] = typer.Option(None, "--think-budget", min=0, help="Cap on thinking tokens."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed [0]."),
        threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch threads on CPU (1 is fastest for tiny models)."),
        train_task: Optional[str] = typer.Option(None, "--train-task", help="Training task/env/file: refuse (or warn) on n-gram overlap with the eval items."),
        contamination: Optional[str] = typer.Option(None, "--contamination", help="On overlap: error (default) | warn."),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with EvalConfig fields; flags override it."),
        set_: list[str] = typer.Option([], "--set", help="Override any config field: --set top_p=0.95 (repeatable)."),
    ) -> None:
        """Sample N completions per problem and report pass@k, maj@k, mean reward, format rate.

        Example: `thinkgym eval --model out/sft --env thinkgym/Arithmetic-v0 --n 8 --limit 64 -o eval/`
        """
        from thinkgym.config import ConfigError, Overrides, blame, load_config, parse_sets
        from thinkgym.sampler.eval import EvalConfig, evaluate, print_summary

        overrides = Overrides()
        for key, value, flag in (
            ("model", model, "--model"), ("env", env, "--env"),
            ("output_dir", str(output_dir) if output_dir else None, "--output-dir"), ("n", n, "--n"),
            ("limit", limit, "--limit"), ("backend", backend, "--backend"), ("base_url", base_url, "--base-url"),
            ("temperature", temperature, "--temperature"), ("max_tokens", max_tokens, "--max-tokens"),
            ("think_budget", think_budget, "--think-budget"), ("seed", seed, "--seed"), ("num_threads", threads, "--threads"),
            ("train_task", train_task, "--train-task"), ("contamination", contamination, "--contamination"),
        ):
            overrides.put(key, value, flag)
        try:
            overrides.update(parse_sets(set_))
            cfg = load_config(EvalConfig, config, overrides)
        except ConfigError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

        def fail(message: str) -> NoReturn:
            """Exit 2 with ``message`` (about a config key) naming the flag or file its value came from."""
            typer.echo(f"error: {blame(message, config or 'config', overrides.origins)}", err=True)
            raise typer.Exit(2) from None

        if cfg.model:
            from thinkgym.hub import ModelNotFound, resolve_model

            try:
                resolve_model(cfg.model)  # fetched into the HF cache now, before the eval set is built
            except ModelNotFound as e:
                fail(f"model: {e}")
        import gymnasium

        from thinkgym.tasks.contamination import ContaminationError

        try:
            summary = evaluate(cfg)
        except ContaminationError as e:
            typer.echo(f"error: refusing to evaluate: {e}", err=True)
            raise typer.Exit(3) from None
        except ConfigError as e:  # env, items or train_task checked before sampling
            fail(str(e))
        except (ValueError, KeyError, gymnasium.error.Error) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        print_summary(summary)
        typer.echo(f"wrote {Path(cfg.output_dir) / 'summary.json'} and samples.jsonl")
