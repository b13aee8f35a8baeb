"""``thinkgym grade``: grade a JSONL file of completions (or programs) in parallel.

Input rows: ``{"id", "completion", "gold", ...meta}`` for answer graders, ``{"id", "program",
"tests"}`` for ``--grader code``. Output rows are the input rows plus ``score``, ``error``,
``reason``, ``elapsed_s`` and ``extracted``, in input order. Wrong answers are results, not
failures: the exit code is non-zero only when the input file is bad (the message names the file,
line and field) or the grader is unknown.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Optional

import typer

from thinkgym.jsonl import iter_jsonl

# Graders that need no gold answer.
_NO_GOLD = {"format", "judge"}


class InputError(ValueError):
    """A row of the input file is unusable."""


def read_rows(path: Path, grader: str) -> list[dict[str, Any]]:
    """Parse and validate every row before grading anything."""
    rows = []
    for where, row in iter_jsonl(path, InputError):
        if not isinstance(row, dict):
            raise InputError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
        if grader == "code":
            need = {"program": str, "tests": (dict, str)}
        else:
            need = {"completion": str}
            if grader not in _NO_GOLD:
                need["gold"] = (str, int, float, list)
        for key, tp in need.items():
            if key not in row:
                raise InputError(f"{where}: missing field {key!r}")
            if not isinstance(row[key], tp) or isinstance(row[key], bool):
                raise InputError(f"{where}: field {key!r} has type {type(row[key]).__name__}")
        row.setdefault("id", int(where.rsplit(":", 1)[1]))
        rows.append(row)
    return rows


def _out_row(row: dict[str, Any], g: Any) -> dict[str, Any]:
    return {
        **row,
        "score": g.score,
        "error": g.reason if g.score is None else None,
        "reason": g.reason,
        "elapsed_s": round(g.elapsed_s, 6),
        "extracted": g.extracted,
        "grader": g.grader,
    }


def run_grade(grader: str, input: Path, output: Path, workers: Optional[int], timeout: Optional[float],
              progress: bool = True) -> dict[str, Any]:
    """Grade ``input`` into ``output``; returns the summary counts."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from thinkgym.verifiers import get_grader, list_graders

    if grader != "code":
        get_grader(grader)  # unknown name: fail before reading anything
    rows = read_rows(input, grader)
    t0 = time.perf_counter()
    futures: list[Future]
    if grader == "code":
        from thinkgym.verifiers.code import grade_program  # the sandbox bounds its own time

        fp = get_grader("code").fingerprint if "code" in list_graders() else "code"

        def one(program: str, tests: Any) -> Any:
            t = time.perf_counter()
            g = grade_program(program, tests)
            g.elapsed_s = g.elapsed_s or time.perf_counter() - t
            g.grader = g.grader or fp
            return g

        ex = ThreadPoolExecutor(max_workers=workers or 2)
        futures = [ex.submit(one, r["program"], r["tests"]) for r in rows]
        closer = ex.shutdown
    else:
        from thinkgym.verifiers.pool import GraderPool

        pool = GraderPool(workers=workers, timeout_s=timeout or 5.0)
        futures = []
        for r in rows:
            meta = {k: v for k, v in r.items() if k not in ("id", "completion", "gold")}
            futures.append(pool.submit_grade(grader, r["completion"], r.get("gold"), meta=meta))
        closer = pool.close
    counts = {"rows": len(rows), "right": 0, "wrong": 0, "partial": 0, "errors": 0, "score_sum": 0.0}
    tmp = output.with_name(output.name + ".partial")
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            out = tmp.open("w", encoding="utf-8")
        except OSError as e:
            raise InputError(f"{output}: cannot write the output: {e.strerror or e}") from None
        with out, Progress(
            TextColumn(f"grading with {grader}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            disable=not progress, transient=True,
        ) as bar:
            task = bar.add_task("grade", total=len(rows))
            for row, fut in zip(rows, futures):
                g = fut.result()
                out.write(json.dumps(_out_row(row, g), ensure_ascii=False, default=str) + "\n")
                if g.score is None:
                    counts["errors"] += 1
                else:
                    counts["score_sum"] += g.score
                    counts["right" if g.score == 1.0 else "wrong" if g.score == 0.0 else "partial"] += 1
                bar.advance(task)
        tmp.replace(output)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # an interrupted run leaves no half-written file behind
        raise
    finally:
        closer()
    counts["elapsed_s"] = time.perf_counter() - t0
    return counts


def register(app: typer.Typer) -> None:
    @app.command("grade")
    def grade_cmd(
        grader: str = typer.Option(..., "--grader", "-g", help="Registered grader name (math, format, code, math+format, ...)."),
        input: Path = typer.Option(..., "--input", "-i", help="JSONL rows: id, completion, gold (code: id, program, tests)."),
        output: Path = typer.Option(..., "--output", "-o", help="JSONL output: input rows + score, error, elapsed_s, extracted."),
        workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1, help="Parallel worker processes (default: up to 4)."),
        timeout: Optional[float] = typer.Option(None, "--timeout", min=0.01, help="Hard per-item budget in seconds (default 5)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Grade a JSONL file; exit 0 even when answers are wrong, non-zero on bad input."""
        from thinkgym._registry import RegistryError

        try:
            c = run_grade(grader, input, output, workers, timeout, progress=not quiet)
        except (InputError, RegistryError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        graded = c["rows"] - c["errors"]
        mean = c["score_sum"] / graded if graded else 0.0
        rate = c["rows"] / c["elapsed_s"] if c["elapsed_s"] > 0 else 0.0
        typer.echo(
            f"graded {c['rows']} rows with {grader}: {c['right']} right, {c['wrong']} wrong, "
            f"{c['partial']} partial, {c['errors']} errors; mean score {mean:.4f} (errors excluded); "
            f"{c['elapsed_s']:.1f}s ({rate:.1f} rows/s) -> {output}"
        )
