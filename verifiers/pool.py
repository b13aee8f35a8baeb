"""A persistent pool of grader worker processes with a hard per-item time budget.

Why processes: a sympy step such as ``9^{9^{9^9}}`` is a C-level big-integer power that no
Python-level timeout can interrupt, and ``signal.alarm`` only works on the main thread. Each
worker is the leader of its own process group; a worker that runs past an item's budget is
killed (the whole group, ``SIGKILL``, and any descendant that left it) and replaced, and the item
comes back as a timeout.

Workers are started once and reused (importing sympy and the LaTeX parser costs about a second),
preload the parser before they take work, and run with an address-space limit so a runaway
allocation becomes a ``MemoryError`` instead of swapping the machine.

Use :func:`default_pool` for one-off calls, or a :class:`GraderPool` for batches::

    with GraderPool(workers=4, timeout_s=5) as pool:
        grades = pool.grade_many("math", [{"completion": c, "gold": g} for c, g in rows])

``grade_many`` may be called from several threads at once; ``agrade_many`` is its asyncio twin.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib
import logging
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

log = logging.getLogger("thinkgym.verifiers.pool")

_IN_WORKER = False
_HEADER = struct.Struct("<Q")
DEFAULT_PRELOAD = ("thinkgym.verifiers.math_equiv:warmup",)


def in_worker() -> bool:
    """True inside a pool worker: graders run their slow steps directly instead of re-dispatching."""
    return _IN_WORKER


@dataclass
class CallResult:
    """Outcome of one function call in a worker."""

    ok: bool
    value: Any = None
    error: str = ""
    timed_out: bool = False
    elapsed_s: float = 0.0


#: The longest budget an item may get: select() and Thread.join() overflow on 1e10 s, which
#: turned every item into a "bad reply" error and crashed close().
MAX_TIMEOUT_S = 86400.0


def _check_timeout(t: Any) -> None:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= MAX_TIMEOUT_S:
        raise ValueError(f"timeout must be a number of seconds in (0, {MAX_TIMEOUT_S:g}], got {t!r}")


def _resolve(ref: str) -> Callable[..., Any]:
    mod, _, name = ref.partition(":")
    obj: Any = importlib.import_module(mod)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------- worker side


def _write_msg(f: Any, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(_HEADER.pack(len(data)) + data)
    f.flush()


def _read_msg_blocking(f: Any) -> Any:
    head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError
    (n,) = _HEADER.unpack(head)
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)


def _worker_main(preload: Sequence[str], memory_mb: int) -> None:
    """Entry point of a worker process: serve requests from stdin until EOF."""
    global _IN_WORKER
    _IN_WORKER = True
    # The protocol owns the original stdin/stdout; stray prints from graders go to stderr.
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:  # die with the parent even when busy in C code
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os._exit(0)
        # PR_SET_CHILD_SUBREAPER: a descendant orphaned after leaving our process group (a
        # daemon's double fork, setsid) is re-parented here, not to init, so kill() still finds it.
        libc.prctl(36, 1)
    except Exception:  # noqa: BLE001 - not Linux: the EOF on stdin still ends us
        pass
    sys.setrecursionlimit(20000)
    for ref in preload:
        try:
            _resolve(ref)()
        except Exception as e:  # noqa: BLE001 - a failed preload only costs speed
            print(f"thinkgym grader worker: preload {ref} failed: {e!r}", file=sys.stderr)
    if memory_mb > 0:
        try:
            import resource

            with open("/proc/self/statm") as fh:
                vm = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            lim = vm + memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        except Exception:  # noqa: BLE001 - no /proc or no resource module
            pass
    _write_msg(proto_out, ("ready", os.getpid()))
    from thinkgym.verifiers import base
    from thinkgym.verifiers.base import _describe, get_grader

    base._CALLER_LOGS = True  # the parent logs a failed grade, with the item's label

    while True:
        try:
            req = _read_msg_blocking(proto_in)
        except EOFError:
            os._exit(0)
        t0 = time.perf_counter()
        try:
            kind = req[0]
            if kind == "call":
                _, ref, args, kwargs = req
                out: Any = ("ok", _resolve(ref)(*args, **kwargs))
            elif kind == "grade":
                _, spec, origins, completion, gold, meta = req
                for mod in origins:  # modules of the caller that registered graders (rubric parts)
                    if mod not in sys.modules:
                        try:
                            importlib.import_module(mod)
                        except Exception:  # noqa: BLE001 - the lookup below reports what is missing
                            pass
                if isinstance(spec, str):
                    spec = get_grader(spec)
                out = ("ok", spec(completion, gold, **meta))
            else:
                out = ("err", f"unknown request {kind!r}")
        except MemoryError:
            out = ("err", "MemoryError: over the worker's memory limit")
        except RecursionError:
            out = ("err", "RecursionError: input nested too deeply")
        except BaseException as e:  # noqa: BLE001 - report everything, keep serving
            out = ("err", _describe(e))
        try:
            _write_msg(proto_out, out + (time.perf_counter() - t0,))
        except Exception as e:  # noqa: BLE001 - unpicklable result
            _write_msg(proto_out, ("err", f"result not picklable: {e!r}", time.perf_counter() - t0))
        del out, req  # a large result or request should not linger between items


# --------------------------------------------------------------------------- parent side


class _WorkerDied(Exception):
    pass


def _at(label: str) -> str:
    return f" ({label})" if label else ""


def _descendants(root: int) -> list[int]:
    """Live (not zombie) processes below ``root``, from ``/proc``; empty where there is none."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for e in entries:
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat", "rb") as f:
                state, ppid = f.read().rsplit(b")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if state != b"Z":
            children.setdefault(int(ppid), []).append(int(e))
    out, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


class _Worker:
    """One worker process; only the slot thread that owns it talks to it."""

    def __init__(self, preload: Sequence[str], memory_mb: int, start_timeout_s: float) -> None:
        code = (
            "import sys; from thinkgym.verifiers.pool import _worker_main; "
            f"_worker_main({list(preload)!r}, {int(memory_mb)})"
        )
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        # The caller's import path, so graders defined in the caller's modules import in workers.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # own process group: killpg reaches everything it spawns
            env=env,
            close_fds=True,
        )
        self._out_fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        self._buf = b""
        msg = self.recv(time.monotonic() + start_timeout_s)
        if msg is None or msg[0] != "ready":
            self.kill()
            raise RuntimeError("grader worker did not start")

    def send(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(_HEADER.pack(len(data)) + data)  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError) as e:
            raise _WorkerDied(str(e)) from None

    def _fill(self, n: int, deadline: float) -> bool:
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # poll, not select: select() refuses descriptors past 1023, which many workers reach.
            poller = select.poll()
            poller.register(self._out_fd, select.POLLIN)
            if not poller.poll(left * 1000):
                return False
            chunk = os.read(self._out_fd, max(65536, n - len(self._buf)))
            if not chunk:
                raise _WorkerDied("worker exited")
            self._buf += chunk
        return True

    def recv(self, deadline: float) -> Any | None:
        """The next message, or ``None`` when the deadline passes first."""
        if not self._fill(_HEADER.size, deadline):
            return None
        (n,) = _HEADER.unpack(self._buf[: _HEADER.size])
        if not self._fill(_HEADER.size + n, deadline):
            return None
        data = self._buf[_HEADER.size : _HEADER.size + n]
        self._buf = self._buf[_HEADER.size + n :]
        return pickle.loads(data)

    def kill(self) -> None:
        # killpg misses descendants that started their own session; the stopped worker stays
        # alive as their subreaper while each pass kills one generation of them.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGSTOP)
        for _ in range(50):
            escaped = _descendants(self.proc.pid)
            if not escaped:
                break
            for p in escaped:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p, signal.SIGKILL)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()  # type: ignore[union-attr]
            except Exception:  # noqa: BLE001
                pass

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class _Job:
    request: tuple
    timeout_s: float
    future: Future
    on_timeout: Callable[[str, float], Any]
    on_error: Callable[[str, float], Any]
    on_ok: Callable[[Any, float], Any]
    payload: bytes = b""
    #: Names the item in log lines (e.g. the input file and line).
    label: str = ""


class GraderPool:
    """``workers`` persistent processes; every item runs under ``timeout_s`` (hard, process-level)."""

    def __init__(
        self,
        workers: int | None = None,
        timeout_s: float = 5.0,
        memory_mb: int = 2048,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        start_timeout_s: float = 120.0,
    ) -> None:
        _check_timeout(timeout_s)
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a whole number >= 1 (or None for the default), got {workers!r}")
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.timeout_s = float(timeout_s)
        self.memory_mb = memory_mb
        self.preload = tuple(preload)
        self.start_timeout_s = start_timeout_s
        self.restarts = 0  #: workers replaced after a timeout or crash
        self._pid = os.getpid()  # slot threads do not survive a fork
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._procs: dict[int, _Worker] = {}
        self._ready = threading.Condition(self._lock)
        self._threads = [
            threading.Thread(target=self._slot, args=(i,), name=f"grader-slot-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for t in self._threads:
            t.start()

    # -- slot threads
    def _spawn(self, i: int) -> _Worker | None:
        try:
            w = _Worker(self.preload, self.memory_mb, self.start_timeout_s)
        except Exception as e:  # noqa: BLE001
            log.error("grader worker %d failed to start: %s", i, e)
            return None
        with self._lock:
            self._procs[i] = w
            self._ready.notify_all()
        return w

    def _slot(self, i: int) -> None:
        w = self._spawn(i)
        while True:
            job = self._jobs.get()
            if job is None:
                break
            if w is None:
                w = self._spawn(i)
                if w is None:
                    job.future.set_result(job.on_error("grader worker could not start", 0.0))
                    continue
            t0 = time.monotonic()
            died = ""
            try:
                w.send(job.payload)
                msg = w.recv(t0 + job.timeout_s)
            except _WorkerDied as e:
                msg, died = None, f"grader worker died ({e})"
            except Exception as e:  # noqa: BLE001 - e.g. a result the parent cannot unpickle
                # The stream may be out of step now: replace the worker rather than trust it.
                msg, died = None, f"bad reply from grader worker: {type(e).__name__}: {e}"
            elapsed = time.monotonic() - t0
            replace = msg is None
            if replace:
                w.kill()
                self.restarts += 1
                if died:
                    log.error("grader item%s failed: %s; worker %d replaced", _at(job.label), died, w.pid)
                    res = job.on_error(died, elapsed)
                else:
                    log.warning("grader item%s exceeded %gs budget; worker %d killed", _at(job.label), job.timeout_s, w.pid)
                    res = job.on_timeout(f"timed out after {job.timeout_s:g}s (worker killed)", elapsed)
            elif msg[0] == "ok":
                res = job.on_ok(msg[1], msg[2])
            else:
                # Logged here: the worker's own logging does not reach the caller's handlers.
                log.error("grader item%s failed in worker %d: %s", _at(job.label), w.pid, msg[1])
                res = job.on_error(msg[1], msg[2])
            if job.future.set_running_or_notify_cancel():
                job.future.set_result(res)  # answer first: the caller never waits for a restart
            if replace:
                w = None if self._closed else self._spawn(i)
        if w is not None:
            w.kill()

    # -- submission
    def _submit(self, job: _Job) -> Future:
        if self._closed:
            raise RuntimeError("pool is closed")
        if os.getpid() != self._pid:
            raise RuntimeError("a GraderPool cannot be used in a forked child; create one there")
        _check_timeout(job.timeout_s)
        # Serialise here so an unpicklable argument fails in the caller, not in a slot thread.
        try:
            job.payload = pickle.dumps(job.request, protocol=pickle.HIGHEST_PROTOCOL)
        except RecursionError:
            # Data, not a caller bug: one row nested ~500 deep must not take the batch down.
            why = "input nested too deeply to send to a grader worker"
            log.error("grader item%s not run: %s", _at(job.label), why)
            job.future.set_result(job.on_error(why, 0.0))
            return job.future
        self._jobs.put(job)
        return job.future

    def submit_call(self, ref: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Future:
        """Run ``module:function(*args, **kwargs)`` in a worker; the future yields a CallResult."""
        return self._submit(
            _Job(
                ("call", ref, args, kwargs),
                timeout or self.timeout_s,
                Future(),
                on_timeout=lambda why, t: CallResult(False, error=why, timed_out=True, elapsed_s=t),
                on_error=lambda why, t: CallResult(False, error=why, elapsed_s=t),
                on_ok=lambda v, t: CallResult(True, value=v, elapsed_s=t),
            )
        )

    def call(self, ref: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> CallResult:
        return self.submit_call(ref, *args, timeout=timeout, **kwargs).result()

    def submit_grade(
        self, grader: str, completion: str, gold: Any, timeout: float | None = None, *,
        meta: dict[str, Any] | None = None, label: str = "", **kw: Any
    ) -> Future:
        """Grade one item in a worker; the future yields a Grade (``score=None`` on timeout/crash).

        Grader metadata comes as keywords or as ``meta`` (a row's own fields: a field named
        ``timeout`` or ``grader`` there is metadata, never this pool's budget or grader).
        ``label`` names the item in log lines."""
        meta = {**(meta or {}), **kw}
        from thinkgym.verifiers.base import GRADERS, Grade, get_grader

        spec = get_grader(grader)  # unknown grader: fail here, in the caller
        fp = spec.fingerprint
        # Workers know the built-in graders and entry points. A grader registered by the caller's
        # own code travels with the request (module-level functions by reference, rubrics by
        # value), and the modules that registered a rubric's parts are imported in the worker.
        names = [grader, *spec.parts]
        origins = []
        for n in names:
            try:
                o = GRADERS.origin(n)
            except KeyError:
                continue
            if o not in ("__main__", "thinkgym") and all(x.isidentifier() for x in o.split(".")):
                origins.append(o)
        try:
            pickle.dumps(spec)
            ship: Any = spec
        except Exception:  # noqa: BLE001 - a lambda or local function: look it up by name
            ship = grader

        def err(why: str, t: float) -> Grade:
            return Grade.error(why, elapsed_s=t, grader=fp)

        def ok(g: Grade, t: float) -> Grade:
            if g.score is None:  # logged here: the worker's logging never reaches the caller's handlers
                log.error("grader %s failed in a worker%s: %s", g.grader or fp, _at(label), g.reason)
            return g

        return self._submit(
            _Job(("grade", ship, tuple(dict.fromkeys(origins)), completion, gold, meta), timeout or self.timeout_s, Future(),
                 on_timeout=err, on_error=err, on_ok=ok, label=label)
        )

    def _submit_rows(self, grader: str, rows: Iterable[Any], timeout: float | None) -> list[Future]:
        futs = []
        for r in rows:
            if isinstance(r, dict):
                meta = {k: v for k, v in r.items() if k not in ("completion", "gold", "id")}
                futs.append(self.submit_grade(grader, r["completion"], r.get("gold"), timeout, meta=meta))
            else:
                completion, gold = r
                futs.append(self.submit_grade(grader, completion, gold, timeout))
        return futs

    def grade_many(
        self,
        grader: str,
        rows: Iterable[Any],
        *,
        timeout: float | None = None,
        progress: Callable[[int], Any] | None = None,
    ) -> list[Any]:
        """Grades for ``rows`` (dicts with ``completion``, ``gold`` and meta, or pairs), in order."""
        futs = self._submit_rows(grader, rows, timeout)
        out = []
        for f in futs:
            out.append(f.result())
            if progress is not None:
                progress(1)
        return out

    async def agrade_many(self, grader: str, rows: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        """Asyncio variant of :meth:`grade_many`; the event loop is never blocked."""
        futs = self._submit_rows(grader, rows, timeout)
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futs)))

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every slot has a live worker (start-up is not part of any item's budget)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while sum(w.proc.poll() is None for w in self._procs.values()) < self.workers:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._ready.wait(left if left is not None else 1.0)
            return True

    def pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._procs.values() if w.proc.poll() is None]

    def close(self, cancel: bool = False) -> None:
        """Stop the workers (pending items still finish first; with ``cancel``, after an
        interrupt, queued items are cancelled and running ones killed)."""
        if self._closed:
            return
        self._closed = True
        if cancel:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job.future.cancel()
            with self._lock:
                for w in self._procs.values():
                    # Only the signal: the slot thread owns the pipes, sees EOF and cleans up.
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(w.pid, signal.SIGKILL)
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join(timeout=5.0 if cancel else self.timeout_s + 10)
        with self._lock:
            for w in self._procs.values():
                w.kill()
            self._procs.clear()

    def __enter__(self) -> "GraderPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_DEFAULT: GraderPool | None = None
_DEFAULT_LOCK = threading.Lock()


def default_pool() -> GraderPool:
    """The process-wide pool used by graders for their budgeted steps (started on first use)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None or _DEFAULT._closed or _DEFAULT._pid != os.getpid():
            _DEFAULT = GraderPool(workers=min(2, os.cpu_count() or 1))
        return _DEFAULT


def grade_many(grader: str, rows: Iterable[Any], *, timeout: float | None = None, workers: int | None = None) -> list[Any]:
    """Grade ``rows`` with ``grader`` over the default pool (or a temporary one of ``workers``)."""
    if workers is None:
        return default_pool().grade_many(grader, rows, timeout=timeout)
    with GraderPool(workers=workers, timeout_s=timeout or 5.0) as p:
        return p.grade_many(grader, rows)


async def agrade_many(grader: str, rows: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
    """Asyncio variant of :func:`grade_many` over the default pool."""
    return await default_pool().agrade_many(grader, rows, timeout=timeout)


@atexit.register
def _shutdown_default() -> None:
    if _DEFAULT is not None and _DEFAULT._pid == os.getpid():
        _DEFAULT._closed = True
        with _DEFAULT._lock:
            for w in _DEFAULT._procs.values():
                w.kill()
