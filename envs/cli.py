"""``thinkgym envs``: list the registered Gymnasium env ids."""

from __future__ import annotations

import typer

from thinkgym.tasks.cli import print_rows


def register(app: typer.Typer) -> None:
    @app.command("envs")
    def envs_cmd(
        as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    ) -> None:
        """List env ids usable with `gymnasium.make` (built-in, plugin envs, and one per plugin task).

        Example: `import thinkgym.envs, gymnasium; env = gymnasium.make("thinkgym/Countdown-v0")`;
        `obs, info = env.reset(options={"index": 0})`; `env.step(completion_text)`.
        """
        from thinkgym._registry import RegistryError

        try:
            from thinkgym.envs.registration import ENVS, list_envs

            envs = list_envs()
        except RegistryError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        rows = []
        for env_id, desc in envs.items():
            info = ENVS.get(env_id)
            rows.append({"id": env_id, "kind": info.entry_point.rsplit(":", 1)[-1], "task": info.task,
                         "description": desc, "origin": ENVS.origin(env_id)})
        print_rows(rows, as_json, "thinkgym envs (gymnasium ids)", ("id", "kind", "task", "description"),
                   lambda r: (r["id"], r["kind"], r["task"] or "", r["description"] + (
                       "" if r["origin"] == "thinkgym" else f" [{r['origin']}]")))
