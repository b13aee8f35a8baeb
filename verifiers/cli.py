"""``thinkgym grade``: grade a JSONL file of completions (or programs) in parallel; ``thinkgym
graders`` lists the graders it can use.

Input rows: ``{"id", "completion", "gold"}`` for answer graders, ``{"id", "program", "tests"}``
for ``--grader code``; ``id`` is optional. Only a row's ``grader_kwargs`` object reaches the
grader as keyword arguments (as in task items' metadata); every other column is carried to the
output untouched, so a dataset column that happens to be named ``timeout_s`` or ``backend`` cannot
change grading. For a built-in grader each ``grader_kwargs`` key must be one it reads, with a value
of the right kind; anything else is bad input. Output rows are the input rows plus ``score``,
``error``, ``reason``, ``elapsed_s``, ``extracted``, ``grader`` and ``line`` (the input line), in
input order; an input column with one of those names is kept as ``input_<name>`` (see
:func:`_out_row`). Wrong answers are results, not failures: the exit code is non-zero only when
the input file is bad (the message names the file, line and field), the output cannot be written,
or the grader is unknown. The output path is checked before grading, so a bad one costs no
grading time. ``-i -`` reads standard input, ``-o -`` writes standard output (the summary then goes
to standard error). A regular file is replaced atomically (through a symlink, at its target);
a FIFO, a device or a path under ``/dev`` or ``/proc`` is written straight through.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
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
_RESULT_COLUMNS = ("score", "error", "reason", "elapsed_s", "extracted", "grader", "line")
# The one column whose value reaches the grader as keyword arguments.
_KWARGS = "grader_kwargs"
# What --grader code rows may set. Both backends' runs can be stopped on an interrupt
# (sandbox.kill_running).
_CODE_KWARGS = ("partial_credit", "limits", "backend")
_CODE_BACKENDS = ("local", "docker")
_KEPT_PREFIX = "input_"
#: Per-item budget, seconds, when --timeout is not given (judge rows: their own, see _judge_budget).
_DEFAULT_TIMEOUT_S = 5.0
#: Added to a judge row's own worst case: the worker's part of the item (building the request,
#: parsing the verdict) is not in the judge's timeout.
_JUDGE_SLACK_S = 10.0
#: Rows graded at once are capped at this many per CPU: a worker (or sandbox) beyond that only
#: waits, and each costs a process, memory and file descriptors.
_WORKERS_PER_CPU = 2


class InputError(ValueError):
    """A row of the input file is unusable."""


def _is_std(path: Path) -> bool:
    return str(path) == "-"


def read_rows(path: Path, grader: str) -> list[tuple[int, dict[str, Any]]]:
    """Parse and validate every row before grading anything; ``(line number, row)`` pairs."""
    from thinkgym.verifiers.base import check_kwargs

    rows = []
    source: Any = sys.stdin.buffer if _is_std(path) else path
    for where, row in iter_jsonl(source, InputError):
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
        kw = row.get(_KWARGS, {})
        if not isinstance(kw, dict):
            raise InputError(f"{where}: field {_KWARGS!r} must be an object, got {type(kw).__name__}")
        if grader == "code":  # a bad test spec is bad input, found before any grading
            from thinkgym.verifiers.code import validate_tests

            try:
                validate_tests(row["tests"])
            except ValueError as e:
                raise InputError(f"{where}: field 'tests': {e}") from None
        extra = next((k for k in kw if k not in _CODE_KWARGS), None) if grader == "code" else None
        if extra is not None:
            bad = extra, f"--grader code takes no argument {extra!r} (it takes: {', '.join(_CODE_KWARGS)})"
        elif grader == "code" and kw.get("backend", "local") not in _CODE_BACKENDS:
            bad = "backend", f"must be one of {', '.join(map(repr, _CODE_BACKENDS))}, got {kw['backend']!r}"
        else:
            bad = check_kwargs(grader, kw)  # config objects are built: their own checks run
        if bad is not None:
            raise InputError(f"{where}: field '{_KWARGS}.{bad[0]}': {bad[1]}")
        rows.append((int(where.rsplit(":", 1)[1]), row))
    return rows


def _parts(grader: str) -> set[str]:
    """``grader`` and, for a rubric, the graders it combines (each gets the row's kwargs)."""
    from thinkgym.verifiers import get_grader

    if grader == "code":  # graded here directly, not through the registry
        return {"code"}
    return {grader, *get_grader(grader).parts}


def _judge_budget(cfg: Any) -> float:
    """Seconds a judge call may take with ``cfg`` (a row's ``judge_config``): every attempt at the
    judge's own ``timeout_s``, the backoffs between them, and slack for the worker."""
    from thinkgym.verifiers.judge import JudgeConfig
    from thinkgym.verifiers.pool import MAX_TIMEOUT_S

    c = cfg if isinstance(cfg, JudgeConfig) else JudgeConfig(**(cfg or {}))
    attempts = c.max_retries + 1
    # As the judge waits: backoff_s doubling from the second attempt on, up to 25% jitter, at
    # most max_backoff_s each (after 64 doublings every wait is at that cap).
    waits = sum(min(c.max_backoff_s, 1.25 * c.backoff_s * 2 ** (k - 1)) for k in range(1, min(attempts, 64)))
    waits += max(attempts - 64, 0) * c.max_backoff_s
    return min(MAX_TIMEOUT_S, attempts * c.timeout_s + waits + _JUDGE_SLACK_S)


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


def _out_row(row: dict[str, Any], g: Any, line: int) -> dict[str, Any]:
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
        line=line,  # the row's own id (if any) stays as it was; this one is never ambiguous
    )
    return out


def _check_output(output: Path) -> None:
    """Fail before reading the input when ``output`` is a directory or under a file; creates nothing."""
    if output.is_dir():
        raise InputError(f"{output}: cannot write the output: it is a directory")
    folder = next(a for a in output.absolute().parents if a.exists())
    if not folder.is_dir():  # mkdir would only say "File exists"
        raise InputError(f"{output}: cannot write the output: {folder} is not a directory")


def _special(p: str) -> bool:
    # /dev/stdout, /dev/fd/N and /proc/self/fd/N are the caller's open files (a pipe, a
    # terminal, a file the shell opened for appending): never renamed over, never a temp file beside.
    return p.startswith("/proc/") or p.startswith("/dev/") and not p.startswith("/dev/shm/")


class _Sink:
    """Where the graded rows go: standard output, straight through to an existing non-regular
    file (a FIFO, a device), or a temp file renamed over a regular file (or new path) at the end,
    at a symlink's target so the link stays a link."""

    def __init__(self, output: Path | str) -> None:
        # Checked on the text as given: a Path drops the trailing slash, and "newdir/" became a
        # file named newdir.
        if str(output).endswith(("/", os.sep)) and str(output) != "-":
            what = "is a directory" if os.path.isdir(output) else "ends in a slash, which names a directory"
            raise InputError(f"{output}: cannot write the output: it {what}; give a file name")
        output = Path(output)
        self.output = output
        self.tmp: Optional[Path] = None
        self.target = output
        if _is_std(output):
            self.mode = "stdout"
            return
        hops = [os.path.abspath(output)]
        for _ in range(40):  # the final component's chain of links; the loop bound is ELOOP's
            if not os.path.islink(hops[-1]):
                break
            hops.append(os.path.abspath(os.path.join(os.path.dirname(hops[-1]), os.readlink(hops[-1]))))
        try:
            st: Optional[os.stat_result] = os.stat(output)
        except (FileNotFoundError, NotADirectoryError):
            st = None  # a new path, or a link to one; _check_output names a file in the way
        except OSError as e:
            raise InputError(f"{output}: cannot write the output: {e.strerror or e}") from None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise InputError(f"{output}: cannot write the output: it is a directory")
        if any(_special(h) for h in hops) or st is not None and not stat.S_ISREG(st.st_mode):
            self.mode = "through"
            return
        self.mode = "atomic"
        self.target = Path(os.path.realpath(output))
        _check_output(self.target)

    def open(self) -> Any:
        """Opened before grading: an unwritable place fails now, not after the work."""
        try:
            if self.mode == "stdout":
                return _StdoutWriter()
            if self.mode == "through":
                return open(self.output, "w", encoding="utf-8")
            self.tmp = self.target.with_name(self.target.name + ".partial")
            self.target.parent.mkdir(parents=True, exist_ok=True)
            return self.tmp.open("w", encoding="utf-8")
        except OSError as e:
            raise InputError(f"{self.output}: cannot write the output: {e.strerror or e}") from None

    def abort(self) -> None:
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                self.tmp.unlink(missing_ok=True)  # an interrupted run leaves no half-written file behind

    def commit(self) -> None:
        if self.tmp is None:
            return
        try:
            self.tmp.replace(self.target)
        except OSError as e:  # e.g. a directory appeared at the target meanwhile: keep the work
            raise InputError(f"{self.output}: cannot write the output: {e.strerror or e}; "
                             f"the graded rows are in {self.tmp}") from None


class _StdoutWriter:
    """UTF-8 rows on standard output whatever its locale; closing it leaves stdout open."""

    def __enter__(self) -> "_StdoutWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        with contextlib.suppress(BrokenPipeError):
            sys.stdout.flush()

    def write(self, text: str) -> None:
        buf = getattr(sys.stdout, "buffer", None)
        if buf is None:
            sys.stdout.write(text)
        else:
            buf.write(text.encode("utf-8"))
            buf.flush()  # a reader of the pipe sees each row as it is graded


def _code_limits(timeout: Optional[float], limits: Any) -> Any:
    """The row's sandbox limits, lowered to ``timeout`` (per case, and per run plus the margin the
    harness needs to report); never raised."""
    from thinkgym.verifiers.code import _REPORT_MARGIN_S, _as_limits

    lim = _as_limits(limits)
    if timeout is None:
        return lim
    case_wall = lim.case_wall_s if lim.case_wall_s is not None else 2 * lim.case_s
    return lim.replace(case_s=min(lim.case_s, timeout), case_wall_s=min(case_wall, timeout),
                       wall_s=min(lim.wall_s, timeout + _REPORT_MARGIN_S))


def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def _worker_count(workers: Optional[int], n_rows: int) -> int:
    """Workers actually started: as asked (default :func:`_default_workers`), but never more than
    there are rows nor more than :data:`_WORKERS_PER_CPU` per CPU."""
    cap = _WORKERS_PER_CPU * (os.cpu_count() or 1)
    return max(1, min(workers or _default_workers(), n_rows, cap))


class _CodeRunner:
    """Programs graded on threads, one sandbox each."""

    def __init__(self, workers: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="thinkgym-grade-code")
        self.futures: list[Any] = []

    def close(self, cancel: bool = False) -> None:
        if not cancel:
            self.ex.shutdown(wait=True)
            return
        # Interrupted: nothing queued starts, and what runs is killed rather than waited for
        # (shutdown(wait=True) ran every queued program to its limit: 35 s after a Ctrl-C).
        from thinkgym.verifiers.sandbox import kill_running

        self.ex.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + 10.0  # bounded even if a run cannot be stopped
        while True:
            kill_running()  # again each pass: a thread may have started one meanwhile
            if all(f.done() for f in self.futures) or time.monotonic() > deadline:
                break
            time.sleep(0.05)


def _submit_all(grader: str, rows: list[tuple[int, dict[str, Any]]], workers: Optional[int],
                timeout: Optional[float], name: str = "") -> tuple[list[Any], Any]:
    """Start grading every row; returns the futures in row order and the closer, which takes
    ``cancel=True`` after an interrupt."""
    from thinkgym.verifiers import get_grader, list_graders

    if grader == "code":
        from thinkgym.verifiers.code import grade_program  # the sandbox bounds its own time

        fp = get_grader("code").fingerprint if "code" in list_graders() else "code"
        for backend in sorted({r.get(_KWARGS, {}).get("backend", "local") for _, r in rows}):
            from thinkgym.verifiers.sandbox import SandboxUnavailable, get_sandbox

            try:  # up front: a missing engine is one clear message, not an error per row
                get_sandbox(backend)
            except SandboxUnavailable as e:
                raise InputError(f"{name}: grader_kwargs.backend {backend!r}: {e}") from None

        def one(program: str, tests: Any, kw: dict[str, Any]) -> Any:
            t = time.perf_counter()
            g = grade_program(program, tests, backend=kw.get("backend", "local"),
                              partial_credit=kw.get("partial_credit", False),
                              limits=_code_limits(timeout, kw.get("limits")))
            g.elapsed_s = g.elapsed_s or time.perf_counter() - t
            g.grader = g.grader or fp
            return g

        runner = _CodeRunner(_worker_count(workers, len(rows)))
        try:
            for _, r in rows:
                runner.futures.append(runner.ex.submit(one, r["program"], r["tests"], r.get(_KWARGS, {})))
        except BaseException:
            runner.close(cancel=True)
            raise
        return runner.futures, runner.close
    from thinkgym.verifiers.pool import GraderPool

    judged = "judge" in _parts(grader)
    pool = GraderPool(workers=_worker_count(workers, len(rows)), timeout_s=timeout or _DEFAULT_TIMEOUT_S)
    try:
        futures = []
        for line, r in rows:
            label = f"{name}:{line}" + (f", id {r['id']!r:.40}" if "id" in r else "")
            kw = r.get(_KWARGS, {})
            # A judge's own timeout and retries govern its rows unless --timeout is given: the
            # default budget killed every judge call longer than 5 s, retries never ran.
            base = timeout or (_judge_budget(kw.get("judge_config")) if judged else _DEFAULT_TIMEOUT_S)
            # A row's own budget (math's timeout_s) can only tighten the pool's: inside a worker
            # the grader runs its sympy step inline, under the pool's timeout alone.
            own = kw.get("timeout_s")
            item_timeout = min(base, float(own)) if own is not None else base
            futures.append(pool.submit_grade(grader, r["completion"], r.get("gold"), item_timeout, meta=kw, label=label))
    except BaseException:
        pool.close(cancel=True)
        raise
    return futures, pool.close


def _write_results(out: Any, rows: list[tuple[int, dict[str, Any]]], futures: list[Any], counts: dict[str, Any],
                   grader: str, progress: bool) -> None:
    """Write the output rows in input order as results arrive, tallying ``counts``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(f"grading with {grader}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        disable=not progress, transient=True, console=Console(stderr=True),  # stdout may carry the rows
    ) as bar:
        task = bar.add_task("grade", total=len(rows))
        for (line, row), fut in zip(rows, futures):
            g = fut.result()
            out.write(dumps_line(_out_row(row, g, line)))  # lone surrogates stay escapes, not a crash
            if g.score is None:
                counts["errors"] += 1
            else:
                counts["score_sum"] += g.score
                counts["right" if g.score == 1.0 else "wrong" if g.score == 0.0 else "partial"] += 1
            bar.advance(task)


def run_grade(grader: str, input: Path, output: Path | str, workers: Optional[int], timeout: Optional[float],
              progress: bool = True) -> dict[str, Any]:
    """Grade ``input`` into ``output`` (``-``: standard input / output; a path ending in a slash is
    refused: it names a directory); returns the summary counts."""
    from thinkgym.verifiers import get_grader

    if grader != "code":
        get_grader(grader)  # unknown name: fail before reading anything
    sink = _Sink(output)
    if not _is_std(input) and input.is_dir():  # iter_jsonl would only say "no such file"
        raise InputError(f"{input}: is a directory, not a JSONL file")
    rows = read_rows(input, grader)
    out = sink.open()
    t0 = time.perf_counter()
    closer: Any = lambda cancel=False: None  # noqa: E731
    counts = {"rows": len(rows), "right": 0, "wrong": 0, "partial": 0, "errors": 0, "score_sum": 0.0}
    cancel = False
    try:
        with out:
            futures, closer = _submit_all(grader, rows, workers, timeout, "<stdin>" if _is_std(input) else str(input))
            _write_results(out, rows, futures, counts, grader, progress)
    except BaseException:
        cancel = True
        sink.abort()
        raise
    finally:
        closer(cancel=cancel)
    sink.commit()
    counts["elapsed_s"] = time.perf_counter() - t0
    return counts


def register(app: typer.Typer) -> None:
    @app.command("grade")
    def grade_cmd(
        grader: str = typer.Option(..., "--grader", "-g", help="Registered grader name (math, format, code, math+format, ...)."),
        input: Path = typer.Option(..., "--input", "-i", help="JSONL rows (- for standard input): completion, gold (code: program, tests), "
                                          "optional id, and grader_kwargs, the only column passed to the grader."),
        # str, not Path: a Path drops the trailing slash that says "a directory" (see _Sink).
        output: str = typer.Option(..., "--output", "-o", metavar="PATH", help="JSONL output file (- for standard output): input rows + score, error, reason, "
                                           "elapsed_s, extracted, grader, line. An input column with one of those names is kept as input_<name>."),
        workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1, help="Rows graded at once (default: up to 4, at most the CPU count): "
                                              "worker processes; for code, sandboxes (capped at the CPU count). "
                                              f"Never more than the rows, nor {_WORKERS_PER_CPU} per CPU."),
        timeout: Optional[float] = typer.Option(None, "--timeout", min=0.01, max=86400, help="Hard per-item budget in seconds (default 5, at most a day; "
                                                "for judge rows: the judge's own, its timeout_s for every attempt plus backoffs). "
                                                "For code it lowers the sandbox's limits: each case's CPU and wall time to it, "
                                                "the whole run to it + 1.5 s (default: the sandbox's, 6 CPU-s per case, 30 s per run)."),
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
            f"{c['elapsed_s']:.1f}s ({rate:.1f} rows/s) -> {'standard output' if _is_std(output) else output}",
            err=_is_std(output),  # standard output holds the rows
        )

    @app.command("graders")
    def graders_cmd(
        as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    ) -> None:
        """List graders (built-in and plugins) with their fingerprint and keyword arguments.

        Use a name with `thinkgym grade --grader NAME`, `grade(NAME, ...)` or as a task's grader;
        a row's grader_kwargs may set the arguments listed ("any": the grader does not declare
        them, so nothing is checked).
        """
        from thinkgym._registry import RegistryError
        from thinkgym.tasks.cli import _fail, print_rows
        from thinkgym.verifiers import GRADERS, get_grader
        from thinkgym.verifiers.base import accepted_kwargs

        rows = []
        try:
            for name in GRADERS.names():
                spec = get_grader(name)
                known = accepted_kwargs(name)
                rows.append({"name": name, "fingerprint": spec.fingerprint, "description": spec.description,
                             "kwargs": None if known is None else sorted(known), "origin": GRADERS.origin(name)})
        except RegistryError as e:
            _fail(str(e))
        print_rows(rows, as_json, "thinkgym graders", ("name", "fingerprint", "description", "kwargs"),
                   lambda r: (r["name"], r["fingerprint"], r["description"] + (
                       f" [{r['origin']}]" if r["origin"].startswith("plugin") else ""),
                       "any" if r["kwargs"] is None else ", ".join(r["kwargs"]) or "none"))
