"""The ``thinkgym`` command. Each room contributes its commands through ``<room>.cli.register``.

Room CLI modules import only light dependencies at module level; torch, transformers and vLLM
are imported inside the command that needs them, so ``thinkgym tasks`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from thinkgym._registry import RegistryError

app = typer.Typer(
    name="thinkgym",
    help="RLVR gym for reasoning: tasks, graders, Gymnasium envs, vLLM rollouts, SFT and GRPO.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Order is the order of `thinkgym --help`.
COMMAND_MODULES: list[str] = [
    "thinkgym.tasks.cli",
    "thinkgym.envs.cli",
    "thinkgym.verifiers.cli",
    "thinkgym.sampler.cli",
    "thinkgym.sft_coldstart.cli",
    "thinkgym.grpo.cli",
    "thinkgym.demo",
]


def _print_version(value: bool) -> None:
    # A parameter callback runs while the options are parsed, so `thinkgym --version` works
    # without a command (the group's own callback would only run once a command is given).
    if value:
        from thinkgym import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version, expose_value=False),
) -> None:
    pass


def _load_commands() -> RegistryError | None:
    try:
        for mod in COMMAND_MODULES:
            importlib.import_module(mod).register(app)
    except RegistryError as e:
        return e
    return None


_LOAD_ERROR = _load_commands()


def main() -> None:
    # A clashing or broken plugin is reported as one clear line, not a traceback.
    try:
        if _LOAD_ERROR is not None and sys.argv[1:] != ["--version"]:  # the version needs no plugin
            raise _LOAD_ERROR
        app()
    except RegistryError as e:
        typer.echo(f"error: {e}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
