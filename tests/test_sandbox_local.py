"""The local (bubblewrap) sandbox on its own: isolation, limits, timeouts, caps, cleanup.

Every program run here is bounded by itself (finite loops, self-ending sleeps).
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from thinkgym.verifiers.sandbox import Limits, LocalSandbox, get_sandbox

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
]


@pytest.fixture(scope="module")
def sb():
    return LocalSandbox(max_parallel=2)


def py(sb, code: str, stdin: bytes = b"", **limits):
    return sb.run([sb.python, "-I", "-S", "-c", code], stdin, Limits().replace(**limits) if limits else None)


def test_isolated_view_of_the_machine(sb):
    code = (
        "import os, json\n"
        "print(json.dumps({'uid': os.getuid(), 'pids': sorted(int(p) for p in os.listdir('/proc') if p.isdigit()),\n"
        "  'env': dict(os.environ), 'cwd': os.getcwd(), 'root': sorted(os.listdir('/')),\n"
        "  'net': open('/proc/net/dev').read().split('\\n')[2:], 'host': os.uname().nodename,\n"
        f"  'project_visible': os.path.exists({os.getcwd()!r}), 'stdin': input()}}))\n"
    )
    r = py(sb, code, b"hi\n")
    assert r.returncode == 0 and r.error is None, r.stderr
    import json

    info = json.loads(r.stdout)
    assert info["uid"] != 0
    assert info["pids"] == [1, 2]  # own PID namespace: the namespace init and us
    assert set(info["env"]) <= {"HOME", "TMPDIR", "PATH", "LANG", "PYTHONDONTWRITEBYTECODE", "PWD"}
    assert info["env"]["HOME"] == "/tmp" and info["cwd"] == "/tmp"
    assert [line.split(":")[0].strip() for line in info["net"] if line.strip()] == ["lo"]
    assert info["host"] == "sandbox"
    assert not info["project_visible"]
    assert "home" not in info["root"] and "work" not in info["root"]
    assert info["stdin"] == "hi"


def test_read_only_except_scratch(sb):
    code = (
        "import os\nfor p in ('/usr/x', '/x', os.__file__ + '.evil', '/proc/sys/kernel/hostname'):\n"
        "    try:\n        open(p, 'w').write('1'); print('WROTE', p)\n    except OSError as e:\n        print('no', e.errno)\n"
        "open('/tmp/ok', 'w').write('1'); print('scratch ok')\n"
    )
    r = py(sb, code)
    assert b"WROTE" not in r.stdout and b"scratch ok" in r.stdout, r.stdout + r.stderr


def test_rlimits_are_applied(sb):
    r = py(sb, "print(open('/proc/self/limits').read())", cpu_s=7, memory_mb=512, nofile=100, fsize_mb=3, nproc=20)
    lim = {line[:26].strip(): line[26:].split() for line in r.stdout.decode().splitlines()[1:]}
    assert lim["Max cpu time"][:2] == ["7", "7"]
    assert lim["Max address space"][0] == str(512 << 20)
    assert lim["Max open files"][0] == "100"
    assert lim["Max file size"][0] == str(3 << 20)
    assert lim["Max processes"][0] == "20"


def test_process_limit_holds_even_though_we_are_root(sb):
    code = (
        "import os, time\nn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
        "    if pid == 0:\n        time.sleep(2); os._exit(0)\n    n += 1\nprint(n)\n"
    )
    r = py(sb, code, nproc=12)
    assert 0 < int(r.stdout) < 12


def test_wall_timeout_kills_the_whole_tree(sb):
    marker = "7777.125"
    code = (
        "import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"if os.fork() == 0:\n    os.setsid()\n    os.execv('/usr/bin/sleep', ['sleep', '{marker}'])\n"
        "time.sleep(20)\n"
    )
    t0 = time.monotonic()
    r = py(sb, code, wall_s=1.0)
    assert r.timed_out and r.returncode != 0
    assert time.monotonic() - t0 < 5
    survivors = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if open(f"/proc/{p}/cmdline", "rb").read() == b"sleep\0" + marker.encode() + b"\0":
                    survivors.append(int(p))
            except OSError:
                pass
    for p in survivors:  # only if the sandbox failed
        os.kill(p, 9)
    assert survivors == []


def test_kill_running_stops_every_running_sandbox_at_once(sb):
    """An interrupted batch (Ctrl-C on `thinkgym grade --grader code`) kills what runs instead of
    waiting out each program's limits."""
    import threading

    results = []
    threads = [threading.Thread(target=lambda: results.append(py(sb, "while True: pass", case_s=60, wall_s=60)))
               for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(sb._running) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    waited = 20 - (deadline - time.monotonic())
    t0 = time.monotonic()
    assert sb.kill_running() == 2
    for t in threads:
        t.join(10)
    assert time.monotonic() - t0 < 5 and len(results) == 2, (waited, time.monotonic() - t0, results, len(sb._running))
    assert all(r.returncode != 0 for r in results) and not sb._running


def test_stdout_cap_kills_flood_and_stderr_is_truncated(sb):
    t0 = time.monotonic()
    # bounded: at most 2 GiB
    r = py(sb, "import sys\nfor _ in range(2048):\n    sys.stdout.write('x' * (1 << 20))\n", stdout_bytes=1 << 20)
    assert r.stdout_truncated and len(r.stdout) == 1 << 20 and r.returncode != 0
    r = py(sb, "import sys\nsys.stderr.write('e' * (4 << 20)); print('done')\n", stderr_bytes=1000)
    assert r.returncode == 0 and r.stdout == b"done\n"
    assert r.stderr_truncated and len(r.stderr) == 1000
    assert time.monotonic() - t0 < 20


def test_bounded_parallelism_and_distinct_uids():
    sb2 = LocalSandbox(max_parallel=2)
    results = []

    def one():
        results.append(py(sb2, "import os, time\ntime.sleep(0.6)\nprint(os.getuid())"))

    ths = [threading.Thread(target=one) for _ in range(4)]
    t0 = time.monotonic()
    [t.start() for t in ths]
    [t.join() for t in ths]
    assert time.monotonic() - t0 >= 1.2  # 4 runs of 0.6 s, two at a time
    assert all(r.returncode == 0 for r in results)
    if os.geteuid() == 0:
        assert len({r.stdout for r in results}) >= 2  # concurrent runs never share a uid


def test_sandbox_failure_is_reported_as_error():
    bad = LocalSandbox(ro_binds=["/nonexistent-thinkgym-path"])
    r = bad.run([bad.python, "-c", "pass"])
    assert r.error and "nonexistent" in r.error


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown sandbox limit"):
        Limits().replace(wall=3)
    with pytest.raises(ValueError, match="unknown sandbox backend"):
        get_sandbox("vm")


def test_seccomp_blocks_new_namespaces_but_not_threads_or_subprocesses(sb):
    import platform

    if platform.machine() != "x86_64":
        pytest.skip("the seccomp filter is built for x86-64 only")
    r = sb.run(["/usr/bin/unshare", "-Ur", "true"])
    assert r.returncode != 0 and b"Operation not permitted" in r.stderr
    code = (
        "import threading, subprocess, os, ctypes\nout = []\n"
        "t = threading.Thread(target=out.append, args=(1,)); t.start(); t.join()\n"
        "out.append(subprocess.run(['/bin/echo', 'sub'], capture_output=True).stdout.strip().decode())\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "out.append(libc.unshare(0x10000000))  # CLONE_NEWUSER\n"
        "out.append(libc.mount(b'x', b'/tmp', b'tmpfs', 0, None))\n"
        "print(out)\n"
    )
    r = py(sb, code)
    assert r.stdout.strip() == b"[1, 'sub', -1, -1]", r.stderr


def test_binds_are_read_only_even_where_permissions_allow_writing():
    import pathlib
    import tempfile

    # Outside /tmp: the sandbox's own scratch tmpfs covers /tmp.
    d = pathlib.Path(tempfile.mkdtemp(prefix="thinkgym-ro-", dir="/var/tmp"))
    try:
        os.chmod(d, 0o777)  # the sandbox uid could write here if the mount allowed it
        sb2 = LocalSandbox(ro_binds=[str(d)], spares=0)
        r = sb2.run([sb2.python, "-I", "-S", "-c", f"import os\ntry:\n    open({str(d / 'x')!r}, 'w')\n"
                     "except OSError as e:\n    print(e.errno)\nelse:\n    print('WROTE')\n"
                     f"print(os.listdir({str(d)!r}))"])
        assert r.stdout.split() == [b"30", b"[]"], r.stdout + r.stderr  # EROFS
        assert not (d / "x").exists()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_warm_runs_use_prestarted_sandboxes_one_run_each():
    sb2 = LocalSandbox(max_parallel=1, spares=1)
    try:
        # A program that reads its stdin first may be started ahead; each run gets its own sandbox.
        code = "import os, sys\nsys.stdin.read()\nprint(os.path.exists('/tmp/seen'))\nopen('/tmp/seen', 'w')\n"
        runs = []
        for _ in range(3):
            runs.append(py_warm(sb2, code))
            for _ in range(500):  # spares are started in the background
                if any(sb2._spare.values()):
                    break
                time.sleep(0.01)
        assert [r.stdout for r in runs] == [b"False\n"] * 3
        assert [r.info["prestarted"] for r in runs] == [False, True, True]
        # without the promise nothing is started ahead
        assert sb2.run([sb2.python, "-I", "-S", "-c", "pass"]).info["prestarted"] is False
    finally:
        sb2.close()


def py_warm(sb, code):
    return sb.run([sb.python, "-I", "-S", "-c", code], b"go", None, warm=True)


def test_spares_outlive_the_thread_that_asked_for_them():
    # bwrap dies with the thread that started it; spares must not belong to a caller's thread.
    sb2 = LocalSandbox(max_parallel=1, spares=1)
    try:
        code = "import sys\nprint(sys.stdin.read())"
        th = threading.Thread(target=py_warm, args=(sb2, code))
        th.start()
        th.join()
        time.sleep(0.5)
        r = py_warm(sb2, code)
        assert r.stdout == b"go\n" and r.info["prestarted"], (r, r.stderr)
    finally:
        sb2.close()


def test_forked_children_do_not_keep_the_parents_uid_slots():
    import fcntl

    from thinkgym.verifiers import sandbox as sbx

    uids = sbx._Uids(True)
    slot = uids.acquire()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a long-lived forked worker (multiprocessing, DataLoader)
        os.write(w, b"1")  # the fork hooks have run by now
        time.sleep(3)
        os._exit(0)
    try:
        os.read(r, 1)
        uids.release(slot)
        fd = os.open(os.path.join(sbx._SLOT_DIR, f"{slot}.lock"), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the child still holds it
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
