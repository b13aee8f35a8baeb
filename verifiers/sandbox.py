"""Run untrusted programs in an isolated, resource-limited sandbox.

Two backends share one interface, :class:`Sandbox`: ``run(argv, stdin, limits) -> RunResult``.

* :class:`LocalSandbox` (default, no daemon): bubblewrap namespaces. Every run gets fresh PID,
  network (not even the host's loopback), IPC and UTS namespaces, a read-only view of only the
  interpreter and system libraries (no project files, no home, no datasets), an empty
  size-limited tmpfs as scratch and ``HOME``, and a clean environment. The program runs as a
  non-root uid with rlimits on CPU, address space, file size, open files and processes.
  Root ignores ``RLIMIT_NPROC``, so as root each concurrent run claims its own uid (a slot,
  locked across processes with ``flock``) and, where cgroups are writable, a pids cgroup with
  ``pids.max`` and a memory cgroup capping the whole run at memory + scratch + 64 MB
  (``RLIMIT_AS`` caps each process only: children, memfd and SysV shm would add up). As a normal
  user bubblewrap makes a user namespace, in which ``RLIMIT_NPROC`` counts only that sandbox's
  processes; memory is then capped per process only. When the run ends or times out, the namespace's init
  dies, which kills every process in it (daemons, double forks, SIGTERM-ignorers), and the
  cgroup is swept until empty. The scratch tmpfs vanishes with the namespace, so nothing persists.
  A seccomp filter (x86-64) refuses new namespaces, mounts, ptrace, BPF, io_uring and keyrings.
  Throughput: for programs that read their stdin before doing anything (``warm=True``, like the
  code harness) fresh sandboxes are started ahead of need, so namespace setup and interpreter
  start overlap with the previous run; each pre-started sandbox still serves exactly one run.
* :class:`~thinkgym.verifiers.docker_sandbox.DockerSandbox`: the same interface on the Docker engine.

Output is read concurrently with a cap, so a flood neither blocks the program nor exhausts memory.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import io
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol, Sequence

__all__ = ["Limits", "RunResult", "Sandbox", "SandboxUnavailable", "LocalSandbox", "get_sandbox"]


#: Longest time limit, seconds (as the grader pool's: select() overflows on far larger ones).
_MAX_S = 86400.0
#: Time limits and the value each must exceed.
_SECONDS = {"wall_s": 0.0, "case_s": 0.0, "case_wall_s": 0.0}
#: Whole-number limits and their least sensible value: below it the harness itself cannot run
#: (it needs a few processes, a few files and room to report), so every program would fail.
_COUNTS = {"cpu_s": 1, "memory_mb": 16, "nproc": 4, "fsize_mb": 0, "nofile": 16, "stdout_bytes": 4096,
           "stderr_bytes": 0, "scratch_mb": 1}
_WHY_MIN = {"nproc": " (the harness and the program need a few processes)",
            "nofile": " (the harness and the program need a few open files)",
            "stdout_bytes": " (the harness reports through stdout)",
            "memory_mb": " (the interpreter needs that much to start)"}


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run. Defaults let honest contest programs pass.

    Every field is checked on construction (and by :meth:`replace`): times are finite numbers of
    seconds in (0, 86400], counts whole numbers at or above the least the harness can run with;
    anything else raises ``ValueError`` (``TypeError`` for a value of the wrong kind)."""

    #: Wall-clock budget of the whole run (all test cases), seconds.
    wall_s: float = 30.0
    #: CPU seconds one test case may use (measured by the code harness on the candidate, so a
    #: busy machine does not turn honest programs into timeouts).
    case_s: float = 6.0
    #: Wall-clock backstop per test case for programs that block or sleep; None: 2 x case_s.
    case_wall_s: float | None = None
    #: CPU seconds per process (RLIMIT_CPU).
    cpu_s: int = 10
    #: Address space per process, MiB (RLIMIT_AS; Docker: the container's memory limit).
    memory_mb: int = 2048
    #: Processes + threads in the sandbox (cgroup pids.max and/or RLIMIT_NPROC).
    nproc: int = 64
    #: Largest file the program may write, MiB (RLIMIT_FSIZE).
    fsize_mb: int = 64
    #: Open file descriptors per process (RLIMIT_NOFILE).
    nofile: int = 256
    #: Captured stdout cap, bytes; the run is killed when it is exceeded.
    stdout_bytes: int = 64 << 20
    #: Captured stderr cap, bytes; the rest is read and dropped.
    stderr_bytes: int = 64 << 10
    #: Size of the scratch tmpfs (cwd, HOME, /tmp), MiB.
    scratch_mb: int = 64

    def __post_init__(self) -> None:
        # A limit out of range does not fail loudly in the sandbox: nproc=0 or a tiny stdout cap
        # break the harness, a negative time is "exceeded" at once, and each turned a correct
        # program into a 0.0. So every field is checked here, before anything runs.
        for name, lo in _SECONDS.items():
            v = getattr(self, name)
            if v is None and name == "case_wall_s":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"Limits.{name} must be a number of seconds, got {type(v).__name__} {v!r:.40}")
            if not (math.isfinite(v) and lo < v <= _MAX_S):
                raise ValueError(f"Limits.{name} must be a number of seconds in ({lo:g}, {_MAX_S:g}], got {v!r}")
        for name, lo in _COUNTS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"Limits.{name} must be a whole number, got {type(v).__name__} {v!r:.40}")
            if v < lo:
                raise ValueError(f"Limits.{name} must be at least {lo}{_WHY_MIN.get(name, '')}, got {v}")

    def replace(self, **kw: object) -> "Limits":
        unknown = set(kw) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown sandbox limit(s) {sorted(unknown)}; known: {sorted(self.__dataclass_fields__)}")
        return replace(self, **kw)  # type: ignore[arg-type]


@dataclass
class RunResult:
    """What came out of one run. ``error`` is set only when the sandbox itself failed."""

    returncode: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    timed_out: bool = False
    elapsed_s: float = 0.0
    error: str | None = None
    info: dict = field(default_factory=dict)


class SandboxUnavailable(RuntimeError):
    """The backend cannot run here (missing binary, no engine, no image)."""


class Sandbox(Protocol):
    name: str
    #: Path of a Python interpreter inside the sandbox (stdlib only, no site-packages).
    python: str

    def run(
        self, argv: Sequence[str], stdin: bytes = b"", limits: Limits | None = None, *, warm: bool = False
    ) -> RunResult:
        """Run ``argv`` with ``stdin``. ``warm=True`` promises that the program does nothing
        before reading its stdin (like the code harness), so it may be started ahead of time."""
        ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Output pump shared by the backends that talk to a local process.


def pump(
    proc: subprocess.Popen, stdin: bytes, limits: Limits, deadline: float, kill: "callable"
) -> RunResult:
    """Feed ``stdin`` and drain stdout/stderr concurrently until exit, cap or deadline."""
    sel = selectors.DefaultSelector()
    # BytesIO hands its buffer over at getvalue() where bytes(bytearray) would copy it: the
    # output runs to tens of MB, so peak memory stays at one copy.
    out, err = io.BytesIO(), bytearray()
    out_trunc = err_trunc = timed_out = False
    if proc.stdin is not None:
        if stdin:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    view = memoryview(stdin)
    pos = 0
    open_readers = 2
    killed = False
    while open_readers:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for key, _ in sel.select(min(left, 1.0)):
            if key.fileobj is proc.stdin:
                try:
                    pos += os.write(proc.stdin.fileno(), view[pos : pos + 65536])
                except BlockingIOError:
                    continue  # full again: dropping the rest would silently cut the program's input
                except OSError:  # the program closed its stdin: not an error of ours
                    pos = len(view)
                if pos >= len(view):
                    sel.unregister(proc.stdin)
                    proc.stdin.close()
                continue
            chunk = os.read(key.fileobj.fileno(), 1 << 16)
            if not chunk:
                sel.unregister(key.fileobj)
                open_readers -= 1
                continue
            if key.data == "out":
                room = limits.stdout_bytes - out.tell()
                out.write(chunk[: max(room, 0)])
                if len(chunk) > room:
                    # Our own harness never writes this much; a flood means a broken or
                    # hostile run, so stop it instead of reading it to the end.
                    out_trunc = True
                    kill()
                    killed = True
            else:
                room = limits.stderr_bytes - len(err)
                if room > 0:
                    err += chunk[:room]
                if len(chunk) > room:
                    err_trunc = True
        if killed:
            break
    sel.close()
    if timed_out or killed:
        kill()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None and not f.closed:
            f.close()
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        kill()
        rc = proc.wait()
    return RunResult(rc, out.getvalue(), bytes(err), out_trunc, err_trunc, timed_out)


# ---------------------------------------------------------------------------------------------
# Local backend.

_UID_BASE = int(os.environ.get("THINKGYM_SANDBOX_UID_BASE", "2000100000"))
_N_UIDS = 256
_SLOT_DIR = os.path.join(tempfile.gettempdir(), f"thinkgym-sandbox-slots-{os.geteuid()}")


def _cap(name: str, value: int) -> int:
    """``value``, lowered to this process's hard limit (inside the sandbox it cannot be raised)."""
    import resource

    hard = resource.getrlimit(getattr(resource, "RLIMIT_" + name))[1]
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def _base_python() -> tuple[str, str]:
    """The real interpreter behind this (possibly venv) Python, and its install prefix."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    return exe, os.path.realpath(sys.base_prefix)


# seccomp: syscalls a solution never needs and that widen the kernel's attack surface (new
# namespaces, mounts, tracing, keyrings, BPF, io_uring, modules). x86-64 only; elsewhere the
# namespaces and limits still apply, without this filter.
_X86_64_BLOCKED = {
    "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kexec_load": 246,
    "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176, "bpf": 321,
    "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250, "add_key": 248, "request_key": 249,
    "open_by_handle_at": 304, "name_to_handle_at": 303, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    "swapon": 167, "swapoff": 168, "reboot": 169, "acct": 163, "iopl": 172, "ioperm": 173,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "syslog": 103,
}
_CLONE, _CLONE3 = 56, 435
_CLONE_NS_FLAGS = 0x7E020000  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET


def seccomp_program() -> bytes | None:
    """A classic-BPF seccomp filter (as bwrap's ``--add-seccomp-fd`` reads it), or None."""
    import platform
    import struct

    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill = 0x7FFF0000, 0x80000000
    eperm, enosys = 0x00050000 | 1, 0x00050000 | 38
    blocked = sorted(_X86_64_BLOCKED.values())
    # Layout: header(4) | blocked checks | clone3 | clone | ld args0 | jset | ALLOW | EPERM | ENOSYS
    n_head = 5
    i_clone3 = n_head + len(blocked)
    i_clone, i_arg, i_jset = i_clone3 + 1, i_clone3 + 2, i_clone3 + 3
    i_allow, i_eperm, i_enosys = i_jset + 1, i_jset + 2, i_jset + 3
    prog = [
        (ld, 0, 0, 4),                       # 0: arch
        (jeq, 1, 0, 0xC000003E),             # 1: AUDIT_ARCH_X86_64?
        (ret, 0, 0, kill),                   # 2: other ABIs (i386 via int 0x80): kill
        (ld, 0, 0, 0),                       # 3: syscall nr
        (jge, i_eperm - 5, 0, 0x40000000),   # 4: x32 ABI
    ]
    for k, nr in enumerate(blocked):
        i = n_head + k
        prog.append((jeq, i_eperm - i - 1, 0, nr))
    prog.append((jeq, i_enosys - i_clone3 - 1, 0, _CLONE3))  # no clone3: libc falls back to clone
    prog.append((jeq, 0, i_allow - i_clone - 1, _CLONE))
    prog.append((ld, 0, 0, 16))  # clone flags (low 32 bits of args[0])
    prog.append((jset, i_eperm - i_jset - 1, i_allow - i_jset - 1, _CLONE_NS_FLAGS))
    prog += [(ret, 0, 0, allow), (ret, 0, 0, eperm), (ret, 0, 0, enosys)]
    return b"".join(struct.pack("<HBBI", *ins) for ins in prog)


class _SlotCgroup:
    """A writable cgroup per slot for one controller (cgroup v1 or v2), if the OS lets us make one."""

    def __init__(self, controller: str, limit_v1: str, limit_v2: str, probe: str) -> None:
        self.root: str | None = None
        self.v2 = False
        self.limit_file = limit_v1
        for base, v2 in ((f"/sys/fs/cgroup/{controller}", False), ("/sys/fs/cgroup", True)):
            if v2 and not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
                continue
            if not os.path.isdir(base):
                continue
            limit = limit_v2 if v2 else limit_v1
            try:
                if v2:
                    with open("/sys/fs/cgroup/cgroup.controllers") as f:
                        if controller not in f.read().split():
                            continue
                root = os.path.join(base, "thinkgym-sandbox")
                os.makedirs(root, exist_ok=True)
                if v2:
                    with open(os.path.join(root, "cgroup.subtree_control"), "w") as f:
                        f.write("+" + controller)
                probe_dir = os.path.join(root, "probe")
                os.makedirs(probe_dir, exist_ok=True)
                with open(os.path.join(probe_dir, limit), "w") as f:
                    f.write(probe)
                os.rmdir(probe_dir)
                self.root, self.v2, self.limit_file = root, v2, limit
                return
            except OSError:
                continue

    def slot(self, i: int, value: int) -> str | None:
        if self.root is None:
            return None
        path = os.path.join(self.root, f"slot-{i}")
        try:
            os.makedirs(path, exist_ok=True)
            with open(os.path.join(path, self.limit_file), "w") as f:
                f.write(str(value))
            return path
        except OSError:
            return None

    @staticmethod
    def sweep(path: str, timeout: float = 5.0) -> int:
        """SIGKILL every process left in the cgroup until it is empty; returns how many were found."""
        found = 0
        end = time.monotonic() + timeout
        while True:
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    pids = [int(p) for p in f.read().split()]
            except OSError:
                return found
            if not pids:
                return found
            found += len(pids)
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > end:
                raise RuntimeError(f"processes {pids} survive in {path}")
            time.sleep(0.005)


def _private_dir(path: str) -> None:
    """Make ``path`` (0700), or check that the one already there is ours alone.

    It lives in the shared temp dir, where another local user can plant it first: as their
    directory they could hold every slot's lock (no sandbox could start) or put symlinks in it
    that we, as root, would open for writing.
    """
    import stat

    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SandboxUnavailable(
            f"sandbox slot directory {path} is not a directory owned by uid {os.geteuid()} and writable by it "
            "alone (planted by another user?); remove it"
        )


class _Uids:
    """Sandbox uids, one per live sandbox, claimed with ``flock`` so other processes skip them."""

    def __init__(self, enabled: bool) -> None:
        self._lock = threading.Lock()
        self._enabled = enabled
        self._held: dict[int, int] = {}
        self._n = 0
        if enabled:
            _private_dir(_SLOT_DIR)
        # A forked child (multiprocessing, DataLoader workers) shares the lock fds: close its
        # copies, or the parent's slots stay locked for as long as the child lives.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (u := ref()) is not None and u._after_fork())

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork
        for fd in self._held.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._held = {}

    def acquire(self) -> int:
        with self._lock:
            if not self._enabled:
                self._n += 1
                return self._n
            for i in range(_N_UIDS):
                if i in self._held:
                    continue
                fd = os.open(os.path.join(_SLOT_DIR, f"{i}.lock"),
                             os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self._held[i] = fd
                return i
        raise RuntimeError(f"all {_N_UIDS} sandbox uids are in use")

    def release(self, i: int) -> None:
        if self._enabled:
            with self._lock:
                fd = self._held.pop(i)
            os.close(fd)


@dataclass(eq=False)  # by identity: held in a set while running
class _Started:
    proc: subprocess.Popen
    slot: int
    cgroup: str | None


class LocalSandbox:
    """bubblewrap + rlimits (+ pids and memory cgroups as root). See the module docstring."""

    name = "local"

    def __init__(
        self, max_parallel: int | None = None, ro_binds: Sequence[str] = (), spares: int | None = None,
        seccomp: bool = True,
    ) -> None:
        self.bwrap = shutil.which("bwrap")
        self.prlimit = shutil.which("prlimit")
        self.setpriv = shutil.which("setpriv")
        missing = [n for n, p in (("bwrap", self.bwrap), ("prlimit", self.prlimit)) if p is None]
        self.root = os.geteuid() == 0
        if self.root and self.setpriv is None:
            missing.append("setpriv")
        if missing:
            raise SandboxUnavailable(
                f"local sandbox needs {', '.join(missing)} (Debian/Ubuntu: apt-get install bubblewrap util-linux)"
            )
        self.python, prefix = _base_python()
        self.max_parallel = max_parallel or os.cpu_count() or 1
        # Sandboxes started ahead of need: a fresh namespace + interpreter per run is the
        # expensive part, so it is paid while the previous run executes. Each serves one run.
        self.spares = self.max_parallel if spares is None else spares
        self._sem = threading.BoundedSemaphore(self.max_parallel)
        self._uids = _Uids(enabled=self.root)
        # As root: per-slot cgroups. pids caps processes (root ignores RLIMIT_NPROC); memory caps
        # the whole run, where RLIMIT_AS caps each process only (children, memfd and SysV shm
        # would otherwise add up past memory_mb).
        self._cgroups = ([_SlotCgroup("pids", "pids.max", "pids.max", "8"),
                          _SlotCgroup("memory", "memory.limit_in_bytes", "memory.max", str(64 << 20))]
                         if self.root else [])
        self._prefix_args = self._static_args([prefix, *ro_binds])
        self._seccomp = seccomp_program() if seccomp else None
        self._spare: dict[tuple, list[_Started]] = {}
        self._spare_lock = threading.Lock()
        self._closed = False
        self._running: set[_Started] = set()  # guarded by _spare_lock
        self._pid = os.getpid()  # spares belong to the process that started them, not to forks
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thinkgym-sandbox-spares")
        atexit.register(self.close)

    def _static_args(self, binds: Sequence[str]) -> list[str]:
        """The bwrap arguments that do not change between runs (computed once)."""
        a = [self.bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net",
             "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
        if self.root:
            # Privileged bwrap keeps only what setpriv needs to drop to the slot uid.
            a += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                  "--cap-add", "CAP_SETPCAP"]
        else:
            a += ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
        a += ["--ro-bind", "/usr", "/usr"]
        for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(d):
                a += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                a += ["--ro-bind", d, d]
        made = {"/", "/usr", "/tmp"}
        for b in binds:
            b = os.path.realpath(b)
            if b == "/usr" or b.startswith("/usr/"):
                continue
            parts = b.strip("/").split("/")
            for k in range(1, len(parts)):
                anc = "/" + "/".join(parts[:k])
                if anc not in made:
                    # Parents default to the host's mode (e.g. 0700 /root), which the
                    # sandbox uid could not traverse.
                    a += ["--perms", "0755", "--dir", anc]
                    made.add(anc)
            a += ["--ro-bind", b, b]
        a += ["--proc", "/proc", "--dev", "/dev", "--chdir", "/tmp", "--clearenv",
              "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp", "--setenv", "PATH", "/usr/bin:/bin",
              "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1"]
        return a

    def command(self, argv: Sequence[str], limits: Limits, slot: int) -> tuple[list[str], str | None]:
        cmd = list(self._prefix_args)
        cmd += ["--perms", "1777", "--size", str(limits.scratch_mb << 20), "--tmpfs", "/tmp"]
        mb = 1 << 20
        cmd += ["--", self.prlimit, f"--cpu={_cap('CPU', limits.cpu_s)}", f"--as={_cap('AS', limits.memory_mb * mb)}",
                f"--fsize={_cap('FSIZE', limits.fsize_mb * mb)}", f"--nofile={_cap('NOFILE', limits.nofile)}",
                "--core=0", f"--nproc={_cap('NPROC', limits.nproc)}"]
        cg = None
        if self.root:
            uid = _UID_BASE + slot
            cmd += [self.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                    "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
            # The memory cap holds the scratch tmpfs too, as the Docker backend's does.
            values = (limits.nproc + 4, (limits.memory_mb + limits.scratch_mb + 64) * mb)
            cgs = [c.slot(slot, v) for c, v in zip(self._cgroups, values)]
            cg = cgs[0] if cgs else None
            joined = list(dict.fromkeys(c for c in cgs if c))  # cgroup v2: one directory for both
            if joined:
                # Join the cgroups before bwrap forks, so nothing in the sandbox starts outside them.
                cmd += list(argv)
                join = " && ".join(f'echo $$ > "${i}/cgroup.procs"' for i in range(len(joined)))
                sh = ["/bin/sh", "-c", f'{join} && shift {len(joined) - 1} && exec "$@"'.replace("shift 0 && ", ""), *joined]
                return sh + cmd, cg
        cmd += list(argv)
        return cmd, cg

    def _start(self, argv: Sequence[str], limits: Limits) -> _Started:
        slot = self._uids.acquire()
        fd = -1
        try:
            cmd, cg = self.command(argv, limits, slot)
            pass_fds: tuple[int, ...] = ()
            if self._seccomp is not None:
                fd = os.memfd_create("thinkgym-seccomp", 0)
                os.write(fd, self._seccomp)
                os.lseek(fd, 0, os.SEEK_SET)
                pass_fds = (fd,)
                i = cmd.index(self.bwrap) + 1
                cmd[i:i] = ["--add-seccomp-fd", str(fd)]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env={}, close_fds=True, pass_fds=pass_fds)
        except BaseException:
            self._uids.release(slot)
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        return _Started(proc, slot, cg)

    def _finish(self, st: _Started) -> int:
        """Kill what is left of a started sandbox, reap it, free its uid; returns processes swept."""
        swept = 0
        try:
            if st.proc.poll() is None:
                st.proc.kill()
            for f in (st.proc.stdin, st.proc.stdout, st.proc.stderr):
                if f is not None and not f.closed:
                    f.close()
            st.proc.wait()
            if st.cgroup:
                swept = _SlotCgroup.sweep(st.cgroup)
        finally:
            self._uids.release(st.slot)
        return swept

    def _take(self, argv: Sequence[str], limits: Limits) -> tuple[_Started, bool]:
        key = (tuple(argv), limits)
        with self._spare_lock:
            if os.getpid() != self._pid:  # a forked copy: the parent's spares are not ours to use
                self._spare.clear()
                self._pid = os.getpid()
                self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thinkgym-sandbox-spares")
            pool = self._spare.pop(key, [])
            # Keep spares for the most recent configurations only.
            stale = [k for k in self._spare if k != key][: max(len(self._spare) - 1, 0)]
            dropped = [st for k in stale for st in self._spare.pop(k)]
            self._spare[key] = pool
            st = pool.pop(0) if pool else None
        for d in dropped:
            self._finish(d)
        if st is not None and st.proc.poll() is not None:  # died while waiting: start afresh
            self._finish(st)
            st = None
        prestarted = st is not None
        if st is None:
            st = self._start(argv, limits)
        # bwrap dies with the *thread* that started it (PR_SET_PDEATHSIG), so spares are
        # started by one long-lived thread, never by a caller's possibly short-lived one.
        try:
            self._spawner.submit(self._top_up, key, argv, limits)
        except RuntimeError:  # interpreter shutting down: no more spares
            pass
        return st, prestarted

    def _top_up(self, key: tuple, argv: Sequence[str], limits: Limits) -> None:
        while not self._closed and os.getpid() == self._pid:
            with self._spare_lock:
                if key not in self._spare or len(self._spare[key]) >= self.spares:
                    return
            new = self._start(argv, limits)
            with self._spare_lock:
                if key in self._spare and not self._closed:
                    self._spare[key].append(new)
                    continue
            self._finish(new)
            return

    def run(
        self, argv: Sequence[str], stdin: bytes = b"", limits: Limits | None = None, *, warm: bool = False
    ) -> RunResult:
        limits = limits or Limits()
        if self._closed:
            raise RuntimeError("LocalSandbox is closed")
        self._sem.acquire()
        t0 = time.monotonic()
        try:
            st, prestarted = self._take(argv, limits) if warm and self.spares > 0 else (self._start(argv, limits), False)

            def kill() -> None:
                # The outer bwrap takes the namespace's init with it (PR_SET_PDEATHSIG), and
                # the kernel then kills every process left in the PID namespace.
                try:
                    st.proc.kill()
                except ProcessLookupError:
                    pass

            with self._spare_lock:
                self._running.add(st)
            try:
                res = pump(st.proc, stdin, limits, t0 + limits.wall_s, kill)
            finally:
                with self._spare_lock:
                    self._running.discard(st)
                swept = self._finish(st)
            res.info.update(swept=swept, prestarted=prestarted)
        finally:
            self._sem.release()
        res.elapsed_s = time.monotonic() - t0
        if res.returncode == 1 and res.stderr.startswith(b"bwrap:"):
            res.error = res.stderr.decode(errors="replace").strip()
        return res

    def kill_running(self) -> int:
        """Kill every sandbox running now (an interrupted batch: each ``run`` returns at once, as
        after its wall-clock limit); returns how many. The caller stops starting new ones."""
        with self._spare_lock:
            running = list(self._running)
        for st in running:
            try:
                st.proc.kill()  # the outer bwrap: its PID namespace dies with it, once set up
            except ProcessLookupError:
                pass
            if st.cgroup:
                # A bwrap killed while it sets up can leave its child running (and holding the
                # output pipe: the run would wait out its wall clock). The slot's cgroup has it.
                try:
                    _SlotCgroup.sweep(st.cgroup, timeout=0.5)
                except RuntimeError:
                    pass
        return len(running)

    def close(self) -> None:
        """Stop the pre-started sandboxes."""
        if os.getpid() != self._pid:
            return
        self._closed = True
        self._spawner.shutdown(wait=True)
        with self._spare_lock:
            spares = [st for pool in self._spare.values() for st in pool]
            self._spare.clear()
        for st in spares:
            try:
                self._finish(st)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass


_DEFAULT: dict[str, Sandbox] = {}
_DEFAULT_LOCK = threading.Lock()


def get_sandbox(backend: str = "local") -> Sandbox:
    """A process-wide shared sandbox per backend name (``local`` or ``docker``)."""
    with _DEFAULT_LOCK:
        sb = _DEFAULT.get(backend)
        if sb is not None and getattr(sb, "_pid", os.getpid()) != os.getpid():
            sb = None  # inherited through fork: its spares / containers belong to the parent
        if sb is None:
            if backend == "local":
                sb = LocalSandbox()
            elif backend == "docker":
                from thinkgym.verifiers.docker_sandbox import DockerSandbox

                sb = DockerSandbox()
            else:
                raise ValueError(f"unknown sandbox backend {backend!r}; use 'local' or 'docker'")
            _DEFAULT[backend] = sb
        return sb


def kill_running() -> int:
    """Kill the sandboxes this process runs now, on every shared backend that can (an interrupted
    grading batch); returns how many."""
    with _DEFAULT_LOCK:
        boxes = [sb for sb in _DEFAULT.values() if getattr(sb, "_pid", os.getpid()) == os.getpid()]
    return sum(sb.kill_running() for sb in boxes if hasattr(sb, "kill_running"))
