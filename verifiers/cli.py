"""``thinkgym grade``: grade a JSONL file of completions (or programs) in parallel.

Input rows: ``{"id", "completion", "gold", ...meta}`` for answer graders, ``{"id", "program",
"tests"}`` for ``--grader code``. Output rows are the input rows plus ``score``, ``error``,
``reason``, ``elapsed_s``, ``extracted`` and ``grader``, in input order; an input column with one
of those names is kept as ``input_<name>`` (see :func:`_out_row`). Wrong answers are results, not
failures: the exit code is non-zero only when the input file is bad (the message names the file,
line and field), the output cannot be written, or the grader is unknown. The output path is
checked before grading, so a bad one costs no grading time.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Optional

import typer

from thinkgym.jsonl import dumps_line, iter_jsonl

# Graders that need no gold answer.
_NO_GOLD = {"format", "judge"}
# Gold is whatever JSON a grader understands (a countdown gold is an object); null is a missing gold.
_GOLD_TYPES = (str, int, float, list, dict)
# Columns every output row gets from the grade.
_RESULT_COLUMNS = ("score", "error", "reason", "elapsed_s", "extracted", "grader")
_KEPT_PREFIX = "input_"


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
                need["gold"] = _GOLD_TYPES
        for key, tp in need.items():
            if key not in row:
                raise InputError(f"{where}: missing field {key!r}")
            if not isinstance(row[key], tp) or isinstance(row[key], bool):
                raise InputError(f"{where}: field {key!r} has type {type(row[key]).__name__}")
        if grader == "code":  # a bad test spec is bad input, found before any grading
            from thinkgym.verifiers.code import validate_tests

            try:
                validate_tests(row["tests"])
            except ValueError as e:
                raise InputError(f"{where}: field 'tests': {e}") from None
        row.setdefault("id", int(where.rsplit(":", 1)[1]))
        rows.append(row)
    return rows


def _displaced(key: str, row: dict[str, Any]) -> bool:
    """Whether input column ``key`` must move aside so that no column is overwritten.

    ``score`` collides with the result; ``input_score`` then collides with the moved ``score``
    (only if that one is in the row), and so on down the chain.
    """
    while key not in _RESULT_COLUMNS:
        if not key.startswith(_KEPT_PREFIX):
            return False
        key = key[len(_KEPT_PREFIX) :]
        if key not in row:
            return False
    return True


def _out_row(row: dict[str, Any], g: Any) -> dict[str, Any]:
    """The input row plus the result columns; no input value is dropped.

    An input column named like a result column is kept as ``input_<name>`` (and an existing
    ``input_<name>`` as ``input_input_<name>``), so re-grading a graded file keeps the earlier
    results next to the new ones.
    """
    out = {(_KEPT_PREFIX + k if _displaced(k, row) else k): v for k, v in row.items()}
    out.update(
        score=g.score,
        error=g.reason if g.score is None else None,
        reason=g.reason,
        elapsed_s=round(g.elapsed_s, 6),
        extracted=g.extracted,
        grader=g.grader,
    )
    return out


def _check_output(output: Path) -> None:
    """Fail before reading the input when ``output`` is a directory or under a file; creates nothing."""
    if output.is_dir():
        raise InputError(f"{output}: cannot write the output: it is a directory")
    folder = next(a for a in output.absolute().parents if a.exists())
    if not folder.is_dir():  # mkdir would only say "File exists"
        raise InputError(f"{output}: cannot write the output: {folder} is not a directory")


def _submit_all(grader: str, rows: list[dict[str, Any]], workers: Optional[int],
                timeout: Optional[float]) -> tuple[list[Any], Any]:
    """Start grading every row; returns the futures in row order and the executor's closer."""
    from concurrent.futures import ThreadPoolExecutor

    from thinkgym.verifiers import get_grader, list_graders

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
        return [ex.submit(one, r["program"], r["tests"]) for r in rows], ex.shutdown
    from thinkgym.verifiers.pool import GraderPool

    pool = GraderPool(workers=workers, timeout_s=timeout or 5.0)
    try:
        futures = []
        for r in rows:
            meta = {k: v for k, v in r.items() if k not in ("id", "completion", "gold")}
            futures.append(pool.submit_grade(grader, r["completion"], r.get("gold"), meta=meta))
    except BaseException:
        pool.close()
        raise
    return futures, pool.close


def _write_results(out: Any, rows: list[dict[str, Any]], futures: list[Any], counts: dict[str, Any],
                   grader: str, progress: bool) -> None:
    """Write the output rows in input order as results arrive, tallying ``counts``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(f"grading with {grader}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        disable=not progress, transient=True,
    ) as bar:
        task = bar.add_task("grade", total=len(rows))
        for row, fut in zip(rows, futures):
            g = fut.result()
            out.write(dumps_line(_out_row(row, g)))  # lone surrogates stay escapes, not a crash
            if g.score is None:
                counts["errors"] += 1
            else:
                counts["score_sum"] += g.score
                counts["right" if g.score == 1.0 else "wrong" if g.score == 0.0 else "partial"] += 1
            bar.advance(task)


def run_grade(grader: str, input: Path, output: Path, workers: Optional[int], timeout: Optional[float],
              progress: bool = True) -> dict[str, Any]:
    """Grade ``input`` into ``output``; returns the summary counts."""
    from thinkgym.verifiers import get_grader

    if grader != "code":
        get_grader(grader)  # unknown name: fail before reading anything
    _check_output(output)
    if input.is_dir():  # iter_jsonl would only say "no such file"
        raise InputError(f"{input}: is a directory, not a JSONL file")
    rows = read_rows(input, grader)
    tmp = output.with_name(output.name + ".partial")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        out = tmp.open("w", encoding="utf-8")  # opened before grading: an unwritable place fails now
    except OSError as e:
        raise InputError(f"{output}: cannot write the output: {e.strerror or e}") from None
    t0 = time.perf_counter()
    closer: Any = lambda: None  # noqa: E731
    counts = {"rows": len(rows), "right": 0, "wrong": 0, "partial": 0, "errors": 0, "score_sum": 0.0}
    try:
        with out:
            futures, closer = _submit_all(grader, rows, workers, timeout)
            _write_results(out, rows, futures, counts, grader, progress)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # an interrupted run leaves no half-written file behind
        raise
    finally:
        closer()
    try:
        tmp.replace(output)
    except OSError as e:  # e.g. a directory appeared at ``output`` meanwhile: keep the work
        raise InputError(f"{output}: cannot write the output: {e.strerror or e}; the graded rows are in {tmp}") from None
    counts["elapsed_s"] = time.perf_counter() - t0
    return counts


def register(app: typer.Typer) -> None:
    @app.command("grade")
    def grade_cmd(
        grader: str = typer.Option(..., "--grader", "-g", help="Registered grader name (math, format, code, math+format, ...)."),
        input: Path = typer.Option(..., "--input", "-i", help="JSONL rows: id, completion, gold (code: id, program, tests)."),
        output: Path = typer.Option(..., "--output", "-o", help="JSONL output: input rows + score, error, reason, elapsed_s, extracted, grader. "
                                            "An input column with one of those names is kept as input_<name>."),
        workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1, help="Parallel worker processes (default: up to 4)."),
        timeout: Optional[float] = typer.Option(None, "--timeout", min=0.01, max=86400, help="Hard per-item budget in seconds (default 5, at most a day)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Grade a JSONL file; exit 0 even when answers are wrong, non-zero on bad input.

        Output rows keep every input column; one named like a result column (score, error, reason,
        elapsed_s, extracted, grader) is kept as input_<name>, so re-grading a graded file keeps
        the earlier results.
        """
        from thinkgym._registry import RegistryError

        try:
            c = run_grade(grader, input, output, workers, timeout, progress=not quiet)
        except (InputError, RegistryError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        graded = c["rows"] - c["errors"]
        # No score to average: a mean of 0 would read as "every answer wrong".
        mean = (f"{c['score_sum'] / graded:.4f} (errors excluded)" if graded
                else "n/a (0 rows)" if not c["rows"] else "n/a (every row is an error)")
        rate = c["rows"] / c["elapsed_s"] if c["elapsed_s"] > 0 else 0.0
        typer.echo(
            f"graded {c['rows']} rows with {grader}: {c['right']} right, {c['wrong']} wrong, "
            f"{c['partial']} partial, {c['errors']} errors; mean score {mean}; "
            f"{c['elapsed_s']:.1f}s ({rate:.1f} rows/s) -> {output}"
        )
