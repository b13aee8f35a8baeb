"""``thinkgym tasks``, ``thinkgym sample-tasks`` and ``thinkgym contamination``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """``["n_operands=3", "ops=+-"]`` -> ``{"n_operands": 3, "ops": "+-"}`` (values parsed as JSON when they can be)."""
    out: dict[str, Any] = {}
    for p in pairs or []:
        if "=" not in p:
            raise typer.BadParameter(f"expected KEY=VALUE, got {p!r}", param_hint="--param")
        k, v = p.split("=", 1)
        k = k.strip()
        if not k:
            raise typer.BadParameter(f"empty key in {p!r}", param_hint="--param")
        try:
            out[k] = json.loads(v)
        except (ValueError, RecursionError):  # not JSON, an over-long integer, nesting too deep
            out[k] = v
    return out


#: Loader sources whose ``path`` knob is required: what it must name, for the error.
_PATH_SOURCES = {"jsonl": "FILE.jsonl", "hf_dataset": "DATASET_DIR_OR_FILE"}


def _check_loader_path(spec: str, params: dict[str, Any], param_opt: str) -> None:
    """``jsonl`` / ``hf_dataset`` named as a task: their ``path`` knob must be given, and a jsonl
    path must be a file (the loader's own errors would be a missing argument or "no such file")."""
    if spec not in _PATH_SOURCES:
        return
    from thinkgym.tasks import TASKS

    if spec not in TASKS or TASKS.origin(spec) != "thinkgym.tasks.loaders":
        return
    if "path" not in params:
        raise ValueError(f"the {spec} source needs {param_opt} path={_PATH_SOURCES[spec]}"
                         + (" (or pass the .jsonl file itself as the source)" if spec == "jsonl" else
                            " (or pass the folder or file itself as the source)"))
    path = params["path"]
    if spec == "jsonl" and isinstance(path, str) and Path(path).is_dir():
        raise ValueError(f"{path} is a directory; jsonl needs a file (for a dataset folder use hf_dataset)")


def open_source(spec: str, seed: int | None = None, params: dict[str, Any] | None = None, size: int | None = None,
                *, default_seed: int = 0, param_opt: str = "-p"):
    """:func:`thinkgym.tasks.loaders.open_source`, with an unknown spec as a usage error of the command.

    ``param_opt`` is the command's option for task knobs, named in errors about them.
    """
    from thinkgym.tasks.loaders import UnknownSourceError, open_source as _open

    params = dict(params or {})
    taken = sorted({"seed", "size"} & set(params))
    if taken:
        raise ValueError(f"{', '.join(taken)} cannot be a --param: use the command's seed and count options")
    _check_loader_path(spec, params, param_opt)
    try:
        return _open(spec, seed=seed, params=params, size=size, default_seed=default_seed)
    except UnknownSourceError as e:
        raise typer.BadParameter(str(e)) from None


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _encodes(text: str) -> bool:
    """Whether stdout can write ``text`` (a lone surrogate from a ``\\udXXX`` escape cannot)."""
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(text: str) -> str:
    """``text`` with what stdout cannot write shown as backslash escapes (display only)."""
    if _encodes(text):
        return text
    enc = getattr(sys.stdout, "encoding", None) or "utf-8"
    return text.encode(enc, "backslashreplace").decode(enc)


def _non_json(item: dict[str, Any]) -> list[str]:
    """The fields of ``item`` that JSON cannot write: NaN, Infinity or a non-JSON type
    (``metadata.KEY`` for metadata)."""
    fields = {k: v for k, v in item.items() if k != "metadata"}
    fields.update({f"metadata.{k}": v for k, v in (item.get("metadata") or {}).items()})
    bad = []
    for name, v in fields.items():
        try:
            json.dumps(v, allow_nan=False)
        except (ValueError, TypeError):
            bad.append(name)
    return bad


def json_line(obj: dict[str, Any], what: str) -> str:
    """``obj`` as one line of standard JSON that stdout can write.

    NaN and Infinity have no JSON spelling, so they are an error naming ``what`` rather than
    output a JSON parser rejects; text stdout cannot encode is written as ``\\u`` escapes.
    """
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    except ValueError:
        _fail(f"{what}: {', '.join(_non_json(obj)) or 'a field'} holds NaN or Infinity, which JSON cannot represent")
    except TypeError as e:  # a plugin source's item holding a date, bytes, ...
        _fail(f"{what}: {', '.join(_non_json(obj)) or 'a field'} is not JSON data ({e})")
    return text if _encodes(text) else json.dumps(obj, allow_nan=False)


def get_item(src: Any, i: int, label: str) -> dict[str, Any]:
    """Item ``i`` of ``src``; a failure to build it is a CLI error naming the source and index."""
    try:
        return src[i]
    except Exception as e:  # a task source may fail in many ways; none should end in a traceback
        why = str(e) if isinstance(e, (ValueError, TypeError)) else f"{type(e).__name__}: {e}"
        _fail(f"{label} item {i}: {why}")


def print_rows(rows: list[dict[str, Any]], as_json: bool, title: str, columns: tuple[str, ...],
               cells: Callable[[dict[str, Any]], tuple[str, ...]]) -> None:
    """Print listing rows as JSON, or as a table whose row ``r`` shows ``cells(r)``."""
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in columns:
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(*cells(r))
    Console(width=160).print(t)


def register(app: typer.Typer) -> None:
    @app.command("tasks")
    def tasks_cmd(
        as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    ) -> None:
        """List task sources (built-in and plugins) with their default grader and knobs.

        Use a name with `thinkgym sample-tasks NAME`, in an env (`SingleTurnEnv(NAME)`), or in a
        training config.
        """
        from thinkgym._registry import RegistryError
        from thinkgym.tasks import TASKS

        try:
            names = TASKS.names()
        except RegistryError as e:
            _fail(str(e))
        rows = []
        for name in names:
            cls = TASKS.get(name)
            knobs = ", ".join(f"{k}={v!r}" for k, v in getattr(cls, "defaults", {}).items())
            rows.append({"name": name, "grader": cls.grader, "description": cls.description,
                         "params": knobs, "origin": TASKS.origin(name)})
        print_rows(rows, as_json, "thinkgym task sources", ("name", "grader", "description", "params"),
                   lambda r: (r["name"], r["grader"], r["description"] + (
                       f" [{r['origin']}]" if r["origin"].startswith("plugin") else ""), r["params"]))

    @app.command("sample-tasks")
    def sample_tasks_cmd(
        task: str = typer.Argument(..., help="Task name (see `thinkgym tasks`), an env id (see `thinkgym envs`), a .jsonl file, or a local HF dataset."),
        n: int = typer.Option(5, "-n", "--n", min=1, help="How many items to print."),
        seed: Optional[int] = typer.Option(
            None, "--seed", show_default=False,
            help="Task seed: (seed, index) identifies an item. Default: for an env id, the env's own seed "
                 "(the one it is registered with, else 0); otherwise 0."),
        start: int = typer.Option(0, "--start", min=0, help="First index."),
        param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="Task knob KEY=VALUE (JSON values), repeatable."),
        as_json: bool = typer.Option(False, "--json", help="One JSON item per line (question, answer, metadata)."),
    ) -> None:
        """Print items of a task source, including the worked solution.

        Example: `thinkgym sample-tasks arithmetic -n 3 --param n_operands=4 --param ops='+-*/'`
        """
        try:
            src = open_source(task, seed=seed, params=parse_params(param))
        except typer.BadParameter:
            raise
        except (TypeError, ValueError, KeyError, OSError) as e:
            _fail(str(e))
        if start >= len(src):
            _fail(f"--start {start} is past the end of {task!r} (size {len(src)})")
        end = min(start + n, len(src))
        for i in range(start, end):
            it = get_item(src, i, repr(task))
            if as_json:
                typer.echo(json_line({"index": i, **it}, f"{task!r} item {i}"))
                continue
            md = dict(it["metadata"])
            sol = md.pop("solution", None)
            ans = it["answer"] if isinstance(it["answer"], str) else json.dumps(it["answer"], ensure_ascii=False)
            typer.echo(f"=== {src.name or task} seed={getattr(src, 'seed', seed)} index={i} ===")
            typer.echo(_printable(f"question: {it['question']}"))
            typer.echo(_printable(f"answer: {ans}"))
            typer.echo(_printable(f"metadata: {json.dumps(md, ensure_ascii=False)}"))
            if sol:
                typer.echo(_printable(f"solution:\n{sol}"))
            typer.echo("")

    @app.command("contamination")
    def contamination_cmd(
        train: str = typer.Option(..., "--train", help="Training data: task name, env id, .jsonl file, or local HF dataset."),
        eval_: str = typer.Option(..., "--eval", help="Evaluation data: task name, env id, .jsonl file, or local HF dataset."),
        train_seed: Optional[int] = typer.Option(
            None, "--train-seed", show_default=False,
            help="Seed of a procedural training source. Default: for an env id, the env's own seed "
                 "(registered, else 0); otherwise 0."),
        eval_seed: Optional[int] = typer.Option(
            None, "--eval-seed", show_default=False,
            help="Seed of a procedural evaluation source. Default: for an env id, the env's own seed "
                 "(registered, else 0); otherwise 1."),
        train_limit: int = typer.Option(10_000, "--train-limit", min=1, help="Use the first N training items."),
        eval_limit: int = typer.Option(1_000, "--eval-limit", min=1, help="Use the first N evaluation items."),
        train_param: Optional[list[str]] = typer.Option(None, "--train-param", help="Training source knob KEY=VALUE (e.g. question_field=problem), repeatable."),
        eval_param: Optional[list[str]] = typer.Option(None, "--eval-param", help="Evaluation source knob KEY=VALUE, repeatable."),
        n: int = typer.Option(13, "--n", min=1, help="n-gram length in words (after normalization)."),
        threshold: float = typer.Option(0.0, "--threshold", min=0.0, max=1.0, help="Highest allowed contaminated fraction of eval items."),
        show: int = typer.Option(20, "--show", min=0, help="How many overlapping items to list."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Report n-gram overlap between a training and an evaluation source.

        Text is case-folded, punctuation becomes spaces, and an eval item counts as contaminated
        when one of its n-grams occurs in any training item (texts shorter than n words are
        compared whole, operators included). Exits with status 1 when the contaminated fraction
        is above --threshold.
        """
        from thinkgym.tasks.contamination import contamination_report

        try:
            tr = open_source(train, seed=train_seed, params=parse_params(train_param), param_opt="--train-param")
            ev = open_source(eval_, seed=eval_seed, params=parse_params(eval_param), default_seed=1,
                             param_opt="--eval-param")
        except (TypeError, ValueError, KeyError, OSError) as e:
            _fail(str(e))
        tr_items = [get_item(tr, i, f"--train {train!r}") for i in range(min(train_limit, len(tr)))]
        ev_items = [get_item(ev, i, f"--eval {eval_!r}") for i in range(min(eval_limit, len(ev)))]
        report = contamination_report(tr_items, ev_items, n=n)
        over = report.rate > threshold
        if as_json:
            typer.echo(json.dumps({**report.to_dict(), "threshold": threshold, "passed": not over}))
        else:
            typer.echo(report.summary(examples=0))
            for e, t, g in report.contaminated[:show]:
                typer.echo(_printable(f"  eval #{e}: {ev_items[e]['question'][:100]!r}"))
                typer.echo(_printable(f"    train #{t}: {tr_items[t]['question'][:100]!r}"))
                typer.echo(_printable(f"    shared: {g!r}"))
            if len(report.contaminated) > show:
                typer.echo(f"  ... {len(report.contaminated) - show} more (use --show)")
            typer.echo(("FAIL" if over else "OK") + f": rate {report.rate:.2%} vs threshold {threshold:.2%}")
        if over:
            raise typer.Exit(1)
