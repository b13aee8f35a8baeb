"""Docker backend of the code sandbox: same interface as :class:`~thinkgym.verifiers.sandbox.LocalSandbox`.

Each container: ``--network none``, read-only root, a size-limited tmpfs at ``/tmp`` (scratch and
``HOME``), memory / pids / CPU limits, every capability dropped, ``no-new-privileges``, a non-root
uid (one per container, so ``RLIMIT_NPROC`` and ``kill -1`` never reach another container), and
``docker-init`` as PID 1 to reap orphans. The image (``scripts/build_sandbox_image.sh``) is an
empty root filesystem; the host's ``/usr`` and Python install are bound into it read-only.

Containers are kept warm in a pool, one run at a time each, and reset before every run: every
process of the sandbox uid is killed and the scratch tmpfs is emptied before the program starts,
so nothing from an earlier run survives into the next. A container whose run overran its wall
clock, or whose program did not exit with status 0, is killed and replaced: a program that kills
its own supervisor (the code harness, which would have killed every process of the uid) may leave
a process behind that kills the next run's reset before it runs, and with it every later run.
:meth:`DockerSandbox.kill_running` (an interrupted batch) kills the containers of the runs in
progress, which are then replaced like any other.
"""

from __future__ import annotations

import atexit
import io
import os
import queue
import selectors
import socket
import struct
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

from thinkgym.verifiers.sandbox import Limits, RunResult, SandboxUnavailable, _base_python

__all__ = ["DockerSandbox", "DEFAULT_IMAGE"]

DEFAULT_IMAGE = os.environ.get("THINKGYM_SANDBOX_IMAGE", "thinkgym-sandbox:1")
_UID_BASE = 10001
_LABEL = "org.thinkgym.sandbox.owner"
# Owner pids are only meaningful in the PID namespace they come from.
_LABEL_NS = "org.thinkgym.sandbox.pidns"


def _pid_ns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "unknown"
# Kill whatever an earlier run left behind (same uid), empty every writable place (scratch,
# POSIX shared memory and message queues, SysV IPC), then run.
_RESET = (
    'kill -9 -1 2>/dev/null; chmod -R u+rwX /tmp /dev/shm 2>/dev/null; '
    'find /tmp /dev/shm /dev/mqueue -mindepth 1 -delete 2>/dev/null; ipcrm -a 2>/dev/null; '
    'cd /tmp && exec "$@"'
)


class _StillRunning(Exception):
    """An abandoned started-ahead exec did not exit: its container cannot be reused safely."""


class DockerSandbox:
    """Warm pool of locked-down containers driven through the ``docker`` SDK."""

    name = "docker"

    def __init__(self, image: str = DEFAULT_IMAGE, max_parallel: int | None = None, cpus: float = 1.0) -> None:
        try:
            import docker  # lazy: importing thinkgym.verifiers must not need the SDK
        except ImportError as e:  # pragma: no cover - docker is in the dev extras
            raise SandboxUnavailable("the Docker backend needs the docker SDK: pip install 'thinkgym[docker]'") from e
        try:
            self.client = docker.from_env(timeout=30)
            self.client.ping()
        except Exception as e:  # noqa: BLE001 - any connection failure means "no engine"
            raise SandboxUnavailable(f"Docker engine not reachable: {e}") from e
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound as e:
            raise SandboxUnavailable(f"sandbox image {image!r} not found; build it: bash scripts/build_sandbox_image.sh") from e
        self.image = image
        self.cpus = cpus
        self.max_parallel = max_parallel or os.cpu_count() or 1
        exe, prefix = _base_python()
        self._mounts: dict[str, dict] = {"/usr": {"bind": "/usr", "mode": "ro"}}
        for d in ("/bin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.isdir(d) and not os.path.islink(d):
                self._mounts[d] = {"bind": d, "mode": "ro"}
        self._env = {"HOME": "/tmp", "TMPDIR": "/tmp", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                     "PYTHONDONTWRITEBYTECODE": "1"}
        if prefix == "/usr" or prefix.startswith("/usr/"):
            self.python = exe
        else:
            # Bound at a fixed path so the image does not depend on where Python lives here.
            self._mounts[prefix] = {"bind": "/opt/python", "mode": "ro"}
            self.python = "/opt/python/" + os.path.relpath(exe, prefix)
            self._env["LD_LIBRARY_PATH"] = "/opt/python/lib"
        self._owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._remove_orphans()
        self._pools: dict[tuple, queue.SimpleQueue] = {}
        self._sem = threading.BoundedSemaphore(self.max_parallel)
        self._lock = threading.Lock()
        self._all: list[Any] = []
        self._running: set[_Box] = set()  # guarded by _lock
        self._next_slot = 0
        self._closed = False
        self._pid = os.getpid()
        self._parker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thinkgym-docker-park")
        atexit.register(self.close)

    # -- containers -------------------------------------------------------------------------

    def _remove_orphans(self) -> None:
        """Remove containers left by a grader process on this host that died without cleaning up."""
        try:
            for c in self.client.containers.list(all=True, filters={"label": f"{_LABEL_NS}={_pid_ns()}"}):
                pid = int(str(c.labels.get(_LABEL, "0-")).split("-")[0] or 0)
                if pid > 0 and not os.path.exists(f"/proc/{pid}"):
                    c.remove(force=True)
        except Exception:  # noqa: BLE001 - best effort; never blocks grading
            pass

    def _key(self, lim: Limits) -> tuple:
        return (lim.memory_mb, lim.nproc, lim.scratch_mb, lim.nofile, lim.fsize_mb)

    def _create(self, lim: Limits) -> tuple[Any, int]:
        with self._lock:
            slot = self._next_slot % 1000
            self._next_slot += 1
        uid = _UID_BASE + slot
        name = f"thinkgym-sandbox-{self._owner}-{slot}"
        kw = dict(name=name, labels={_LABEL: self._owner, _LABEL_NS: _pid_ns()})
        try:
            c = self._start(lim, kw)
        except Exception:
            try:  # a container that was created but failed to start
                self.client.containers.get(name).remove(force=True)
            except Exception:  # noqa: BLE001
                pass
            raise
        with self._lock:
            self._all.append(c)
        return c, uid

    def _start(self, lim: Limits, kw: dict) -> Any:
        mb = 1 << 20
        return self.client.containers.run(
            self.image,
            ["/usr/bin/sleep", "infinity"],
            detach=True,
            init=True,
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": f"size={lim.scratch_mb}m,mode=1777,exec"},
            volumes=self._mounts,
            environment=self._env,
            working_dir="/tmp",
            # The container's memory also holds the scratch tmpfs.
            mem_limit=f"{lim.memory_mb + lim.scratch_mb + 64}m",
            memswap_limit=f"{lim.memory_mb + lim.scratch_mb + 64}m",
            pids_limit=lim.nproc + 8,
            nano_cpus=int(self.cpus * 1e9),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            ulimits=[
                {"Name": "nofile", "Soft": lim.nofile, "Hard": lim.nofile},
                {"Name": "fsize", "Soft": lim.fsize_mb * mb, "Hard": lim.fsize_mb * mb},
                {"Name": "core", "Soft": 0, "Hard": 0},
            ],
            auto_remove=False,
            **kw,
        )

    def _discard(self, c: Any) -> None:
        try:
            c.remove(force=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        with self._lock:
            if c in self._all:
                self._all.remove(c)

    # -- one run -----------------------------------------------------------------------------

    def run(
        self, argv: Sequence[str], stdin: bytes = b"", limits: Limits | None = None, *, warm: bool = False
    ) -> RunResult:
        lim = limits or Limits()
        if self._closed:
            raise RuntimeError("DockerSandbox is closed")
        self._sem.acquire()
        t0 = time.monotonic()
        key = self._key(lim)
        with self._lock:
            pool = self._pools.setdefault(key, queue.SimpleQueue())
        try:
            try:
                box = pool.get_nowait()
            except queue.Empty:
                try:
                    box = _Box(*self._create(lim))
                except Exception as e:  # noqa: BLE001
                    return RunResult(None, error=f"could not start a sandbox container: {e}",
                                     elapsed_s=time.monotonic() - t0)
            cmd = self._command(argv, lim)
            try:
                started = self._unpark(box, cmd if warm else None)
            except _StillRunning:
                self._discard(box.c)
                try:
                    box = _Box(*self._create(lim))
                except Exception as e:  # noqa: BLE001
                    return RunResult(None, error=f"could not start a sandbox container: {e}",
                                     elapsed_s=time.monotonic() - t0)
                started = None
            if started is None:
                try:
                    started = self._exec_start(box, cmd)
                except Exception as e:  # noqa: BLE001
                    self._discard(box.c)
                    return RunResult(None, error=f"docker exec failed: {e}", elapsed_s=time.monotonic() - t0)
            with self._lock:
                self._running.add(box)
            try:
                res, healthy = self._exec_io(*started, stdin, lim, t0 + lim.wall_s)
            finally:
                with self._lock:
                    self._running.discard(box)
            if healthy and not box.killed:
                if warm:
                    # Start the next run's program now (it waits for its stdin), so the exec
                    # round trips overlap with whatever the caller does next.
                    try:
                        box.parked = (cmd, self._parker.submit(self._exec_start, box, cmd))
                    except RuntimeError:  # interpreter shutting down: this run's result still counts
                        pass
                pool.put(box)
            else:
                self._discard(box.c)
        finally:
            self._sem.release()
        res.elapsed_s = time.monotonic() - t0
        return res

    def _command(self, argv: Sequence[str], lim: Limits) -> list[str]:
        mb = 1 << 20
        return ["/usr/bin/prlimit", f"--cpu={lim.cpu_s}", f"--as={lim.memory_mb * mb}",
                "/bin/sh", "-c", _RESET, "sh", *argv]

    def _exec_start(self, box: "_Box", cmd: list[str]) -> tuple[str, Any]:
        api = self.client.api
        eid = api.exec_create(box.c.id, cmd, stdin=True, stdout=True, stderr=True, user=f"{box.uid}:{box.uid}",
                              environment=self._env, workdir="/tmp")["Id"]
        return eid, api.exec_start(eid, socket=True)

    def _unpark(self, box: "_Box", cmd: list[str] | None, reuse: bool = True) -> tuple[str, Any] | None:
        """The exec started ahead for ``cmd``, if any; a parked exec for another command is closed
        (and, when the container is to be ``reuse``d, waited for)."""
        if box.parked is None:
            return None
        pcmd, fut = box.parked
        box.parked = None
        try:
            started = fut.result()
        except Exception:  # noqa: BLE001 - start it again the normal way
            return None
        if cmd is not None and pcmd == cmd:
            return started
        try:  # its stdin closes, so the waiting program exits
            started[1].close()
        except OSError:
            pass
        # Its reset (``kill -9 -1``, emptying /tmp) may not have run yet on a busy host; a run
        # started now could be killed by it. Start the next one only once it has exited.
        if reuse and not self._exited(started[0], 5.0):
            raise _StillRunning
        return None

    def _exited(self, eid: str, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                if not self.client.api.exec_inspect(eid).get("Running"):
                    return True
            except Exception:  # noqa: BLE001 - cannot tell: treat it as still running
                return False
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def _exec_io(self, eid: str, sock: Any, stdin: bytes, lim: Limits, deadline: float) -> tuple[RunResult, bool]:
        api = self.client.api
        raw: socket.socket = getattr(sock, "_sock", sock)
        out, err = io.BytesIO(), bytearray()  # BytesIO: getvalue() does not copy (see sandbox.pump)
        out_trunc = err_trunc = timed_out = False
        buf = bytearray()
        raw.setblocking(False)
        sel = selectors.DefaultSelector()
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if stdin else 0)
        sel.register(raw, events)
        if not stdin:
            _shutdown_write(raw)
        view, pos, done = memoryview(stdin), 0, False
        while not done:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for _, ev in sel.select(min(left, 1.0)):
                if ev & selectors.EVENT_WRITE and pos < len(view):
                    try:
                        pos += raw.send(view[pos : pos + 65536])
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        pos = len(view)
                    if pos >= len(view):
                        sel.modify(raw, selectors.EVENT_READ)
                        _shutdown_write(raw)
                if ev & selectors.EVENT_READ:
                    try:
                        chunk = raw.recv(1 << 16)
                    except (BlockingIOError, InterruptedError):
                        continue
                    if not chunk:
                        done = True
                        break
                    buf += chunk
                    # Docker multiplexes the streams: 8-byte header (stream, 0, 0, 0, size).
                    while len(buf) >= 8:
                        stream, size = buf[0], struct.unpack(">I", buf[4:8])[0]
                        if len(buf) < 8 + size:
                            break
                        data = buf[8 : 8 + size]
                        del buf[: 8 + size]
                        if stream == 1:
                            room = lim.stdout_bytes - out.tell()
                            out.write(data[: max(room, 0)])
                            if len(data) > room:
                                out_trunc = done = True
                        elif stream == 2:
                            room = lim.stderr_bytes - len(err)
                            if room > 0:
                                err += data[:room]
                            if len(data) > room:
                                err_trunc = True
                    if done:
                        break
        sel.close()
        try:
            sock.close()
        except OSError:
            pass
        healthy = not (timed_out or out_trunc)
        rc: int | None = None
        if healthy:
            for _ in range(100):
                info = api.exec_inspect(eid)
                if not info.get("Running"):
                    rc = info.get("ExitCode")
                    break
                time.sleep(0.005)
            else:
                healthy = False
            # A clean exit is the program's word that nothing of it is left (the code harness
            # exits 0 only after killing every process of the uid); anything else may have left
            # a process of this uid that would outlive the next run's reset by killing it first.
            healthy = healthy and rc == 0
        else:
            rc = 137
        return RunResult(rc, out.getvalue(), bytes(err), out_trunc, err_trunc, timed_out), healthy

    def kill_running(self) -> int:
        """Kill the containers of the runs in progress now (an interrupted batch: each ``run``
        returns at once, its program killed, and its container is replaced); returns how many.
        The caller stops starting new ones."""
        with self._lock:
            running = list(self._running)
        for box in running:
            box.killed = True
            try:
                # SIGKILL to the container's init: every process in it dies, and the exec's
                # stream ends, which ends the run's read loop.
                box.c.kill()
            except Exception:  # noqa: BLE001 - already dead or gone
                pass
        return len(running)

    def close(self) -> None:
        """Remove every container this sandbox started."""
        if os.getpid() != self._pid:  # a forked copy must not remove the parent's containers
            return
        self._closed = True
        with self._lock:
            cs, self._all = self._all, []
            boxes = [b for q in self._pools.values() for b in _drain(q)]
            self._pools.clear()
        for b in boxes:
            self._unpark(b, None, reuse=False)
        self._parker.shutdown(wait=False)
        for c in cs:
            try:
                c.remove(force=True)
            except Exception:  # noqa: BLE001
                pass


class _Box:
    """A warm container, its sandbox uid and maybe an exec started ahead for the next run."""

    def __init__(self, c: Any, uid: int) -> None:
        self.c, self.uid = c, uid
        self.parked: tuple[list[str], Future] | None = None
        self.killed = False  # by kill_running: never reused


def _drain(q: queue.SimpleQueue) -> list:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def _shutdown_write(raw: socket.socket) -> None:
    try:
        raw.shutdown(socket.SHUT_WR)
    except OSError:
        pass
