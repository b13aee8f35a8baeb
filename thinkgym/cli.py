"""The ``thinkgym`` command. Each room contributes its commands through ``<room>.cli.register``.

Room CLI modules import only light dependencies at module level; torch, transformers and vLLM
are imported inside the command that needs them, so ``thinkgym tasks`` stays fast.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="thinkgym",
    help="RLVR gym for reasoning: tasks, graders, Gymnasium envs, vLLM rollouts, SFT and GRPO.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Order is the order of `thinkgym --help`.
COMMAND_MODULES: list[str] = ["thinkgym.sft_coldstart.cli", "thinkgym.tasks.cli", "thinkgym.envs.cli", "thinkgym.grpo.cli", "thinkgym.verifiers.cli"]


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        from thinkgym import __version__

        typer.echo(__version__)
        raise typer.Exit()


for _mod in COMMAND_MODULES:
    importlib.import_module(_mod).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
