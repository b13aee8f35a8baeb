"""The Docker backend: the same isolation and the same verdicts as the local sandbox.

Needs a running Docker engine and the locally built image (scripts/build_sandbox_image.sh; the
CI script builds it). Skipped, with the reason shown, only when no engine can be reached.
"""

from __future__ import annotations

import json
import os
import time

import pytest

import test_code_grader as cg  # the same attack and honest programs as the local suite
from thinkgym.verifiers import sandbox as sandbox_mod
from thinkgym.verifiers.code import grade_program
from thinkgym.verifiers.sandbox import Limits, SandboxUnavailable

pytestmark = [pytest.mark.docker, pytest.mark.sandbox]


@pytest.fixture(scope="module")
def dsb():
    try:
        from thinkgym.verifiers.docker_sandbox import DockerSandbox

        sb = DockerSandbox(max_parallel=1)  # one warm container: every run reuses it
    except SandboxUnavailable as e:
        pytest.skip(f"Docker backend unavailable: {e}")
    old = sandbox_mod._DEFAULT.get("docker")
    sandbox_mod._DEFAULT["docker"] = sb
    yield sb
    sb.close()
    if old is None:
        sandbox_mod._DEFAULT.pop("docker", None)
    else:
        sandbox_mod._DEFAULT["docker"] = old
    import docker

    left = docker.from_env().containers.list(all=True, filters={"label": f"org.thinkgym.sandbox.owner={sb._owner}"})
    assert left == [], "containers left behind"


def dg(program, tests, **kw):
    kw.setdefault("limits", cg.FAST)
    return grade_program(program, tests, backend="docker", **kw)


def test_container_is_locked_down(dsb):
    code = (
        "import os, json\n"
        "def w(p):\n    try:\n        open(p, 'w').write('1'); return True\n    except OSError:\n        return False\n"
        "print(json.dumps({'uid': os.getuid(), 'net': open('/proc/net/dev').read().split('\\n')[2:],\n"
        "  'env': sorted(os.environ), 'root_rw': w('/x'), 'usr_rw': w('/usr/x'), 'tmp_rw': w('/tmp/x'),\n"
        f"  'project_visible': os.path.exists({os.getcwd()!r})}}))\n"
    )
    r = dsb.run([dsb.python, "-I", "-S", "-c", code])
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["uid"] != 0
    assert [line.split(":")[0].strip() for line in info["net"] if line.strip()] == ["lo"]
    assert not info["root_rw"] and not info["usr_rw"] and info["tmp_rw"]
    assert not info["project_visible"]
    assert "DOCKER_HOST" not in info["env"] and "VIRTUAL_ENV" not in info["env"]


def test_honest_programs_pass(dsb):
    r = dg("def add(a, b):\n    return a + b\n", cg.ADD, limits=None)
    assert r.score == 1.0, r.details
    r = dg("import sys\na, b = map(int, input().split())\nprint(a + b)\nsys.exit(0)\n", cg.SUM_STDIO, limits=None)
    assert r.score == 1.0, r.details
    for name, prog in sorted(cg.HONEST_HEAVY.items()):
        r = grade_program(prog, cg.ADD, backend="docker")
        assert r.score == 1.0, (name, r.details)


@pytest.mark.parametrize(
    "program",
    [cg.EXIT_TRICKS["exit_at_import"], cg.EXIT_TRICKS["kill_everything"], cg.ALWAYS_EQUAL["int_subclass"],
     cg.MONKEYPATCH["json_dumps"], cg.FORGE_ALL_FDS + "def f(x):\n    return 0\n"],
    ids=["exit", "kill_all", "always_equal", "patched_json", "forged_frames"],
)
def test_verdict_hacks_fail(dsb, program):
    r = dg(program, cg.secret_tests())
    assert r.score == 0.0, r.details


def test_resource_bombs_are_bounded(dsb):
    fork = (
        "import os, time\ndef f(x):\n    ok = 0\n    for _ in range(300):\n        try:\n"
        "            if os.fork() == 0:\n                time.sleep(3); os._exit(0)\n            ok += 1\n"
        "        except OSError:\n            break\n    return ok\n"
    )
    r = dg(fork, {"type": "function", "entry_point": "f", "cases": [{"args": [0], "expected": 300}]},
           limits={**cg.FAST, "nproc": 24})
    assert r.score == 0.0 and int(r.details["cases"][0]["got"]) < 32
    mem = "def f(x):\n    return len(bytearray(1500 * 1024 * 1024))\n"
    r = dg(mem, {"type": "function", "entry_point": "f", "cases": [{"args": [0], "expected": 1}]},
           limits={**cg.FAST, "memory_mb": 256})
    assert r.score == 0.0 and "MemoryError" in r.details["cases"][0]["error"]
    disk = "def f(x):\n    with open('big', 'wb') as fh:\n        for _ in range(200):\n            fh.write(b'0' * (1 << 20))\n"
    r = dg(disk, {"type": "function", "entry_point": "f", "cases": [{"args": [0], "expected": None}]},
           limits={**cg.FAST, "scratch_mb": 16})
    assert r.score == 0.0
    flood = "import sys\nfor _ in range(4096):\n    sys.stdout.write('y' * (1 << 20))\n"
    t = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "x"}]}
    r = dg(flood, t, limits={**cg.FAST, "stdout_bytes": 8 << 20})
    assert r.score == 0.0 and r.details["cases"][0]["status"] == "output_limit"


def test_hangs_time_out_and_the_pool_recovers(dsb):
    t0 = time.monotonic()
    r = dg("import time\ndef f(x):\n    time.sleep(60)\n", cg.secret_tests(), limits={"case_s": 1.0, "case_wall_s": 1.0, "wall_s": 10})
    assert [c["status"] for c in r.details["cases"]] == ["timeout", "timeout"]
    # the whole run overruns its wall clock: the container is thrown away, the next run still works
    res = dsb.run([dsb.python, "-I", "-S", "-c", "import time; time.sleep(60)"], b"", Limits(wall_s=1.0))
    assert res.timed_out
    assert dg("def add(a, b):\n    return a + b\n", cg.ADD).score == 1.0
    assert time.monotonic() - t0 < 30


def test_cpu_spent_in_a_child_counts_against_the_case(dsb):
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [1.5], "expected": 1.5}]}
    r = dg(cg.CPU_IN_CHILD, t, limits={"case_s": 0.5, "case_wall_s": 30.0, "wall_s": 40.0})
    assert r.score == 0.0 and r.details["cases"][0]["status"] == "timeout", r.details


def test_an_abandoned_started_ahead_run_cannot_kill_the_next(dsb, monkeypatch):
    """A warm run starts the next run's exec ahead of time. When the next run is a different
    command, that exec is dropped, but its reset (kill every process of the sandbox uid, empty
    /tmp) still runs whenever it gets the CPU: on a busy host, after the next run has started.
    The reset is slowed down here so that order is certain; the next run must still finish."""
    import thinkgym.verifiers.docker_sandbox as dmod

    monkeypatch.setattr(dmod, "_RESET", "sleep 0.5; " + dmod._RESET)
    lim = Limits(wall_s=10.0)
    assert dsb.run([dsb.python, "-I", "-S", "-c", "print(1)"], b"", lim, warm=True).returncode == 0
    r = dsb.run([dsb.python, "-I", "-S", "-c", "import time; time.sleep(1); print('alive')"], b"", lim)
    assert r.returncode == 0 and r.stdout.strip() == b"alive", r


def test_daemons_die_and_nothing_persists_between_runs(dsb):
    marker = b"4343.25"
    daemon = (
        "import os\ndef f(x):\n    if os.fork() == 0:\n        os.setsid()\n        if os.fork() == 0:\n"
        "            os.execv('/usr/bin/sleep', ['sleep', '4343.25'])\n        os._exit(0)\n    return x\n"
    )
    try:
        r = dg(daemon, {"type": "function", "entry_point": "f", "cases": [{"args": [1], "expected": 1}]})
        assert r.score == 1.0, r.details
        assert cg._host_processes_with(marker) == []
    finally:
        for p in cg._host_processes_with(marker):
            os.kill(p, 9)
    plant = (
        "import os\ndef f(x):\n    for p in ('/tmp/planted', os.path.expanduser('~/.planted'), '/dev/shm/planted'):\n"
        "        try:\n            open(p, 'w').write('1')\n        except OSError:\n            pass\n    return 1\n"
    )
    look = (
        "import os\ndef f(x):\n    return [p for p in ('/tmp/planted', os.path.expanduser('~/.planted'), '/dev/shm/planted')\n"
        "            if os.path.exists(p)] + [p for p in os.listdir('/proc') if p.isdigit() and\n"
        "            open('/proc/%s/status' % p).read().split('Uid:')[1].split()[0] == str(os.getuid()) and\n"
        "            int(p) not in (os.getpid(), os.getppid())]\n"
    )
    # A leftover process from run 1 would also show up in run 2 (same warm container).
    linger = "import os, time\ndef f(x):\n    if os.fork() == 0:\n        time.sleep(30); os._exit(0)\n    return 1\n"
    one = {"type": "function", "entry_point": "f", "cases": [{"args": [0], "expected": 1}]}
    assert dg(plant, one).score == 1.0
    assert dg(linger, one).score == 1.0
    r = dg(look, {"type": "function", "entry_point": "f", "cases": [{"args": [0], "expected": []}]})
    assert r.score == 1.0, r.details


def test_a_run_that_kills_its_harness_cannot_poison_the_container(dsb):
    """Killing the harness skips its kill_all, so a daemon of the sandbox uid outlives the run.
    In a reused container it would kill every later run's reset before it runs (each one a
    score=None), or worse. The daemon here gives up by itself after 15 s."""
    evil = (
        "import os, signal, time\n"
        "def f(x):\n"
        "    pp = os.getppid()\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            me, uid, end = os.getpid(), str(os.getuid()), time.time() + 15\n"
        "            old = set(os.listdir('/proc'))\n"
        "            while time.time() < end:\n"
        "                for p in set(os.listdir('/proc')) - old:\n"
        "                    try:\n"
        "                        if p.isdigit() and int(p) != me and open('/proc/%s/status' % p).read()"
        ".split('Uid:')[1].split()[0] == uid:\n"
        "                            os.kill(int(p), signal.SIGKILL)\n"
        "                    except (OSError, IndexError):\n"
        "                        pass\n"
        "            os._exit(0)\n"
        "        os._exit(0)\n"
        "    time.sleep(0.2)\n"
        "    os.kill(pp, signal.SIGKILL)\n"
    )
    assert dg(evil, cg.secret_tests(1)).score == 0.0
    for _ in range(2):
        r = dg("def add(a, b):\n    return a + b\n", cg.ADD)
        assert r.score == 1.0, (r.reason, r.details)


def test_network_none(dsb):
    prog = (
        "import socket\ndef f(x):\n    try:\n        socket.create_connection(('127.0.0.1', x), timeout=1)\n"
        "        return 'connected'\n    except OSError:\n        return 'blocked'\n"
    )
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.5)
    try:
        port = srv.getsockname()[1]
        r = dg(prog, {"type": "function", "entry_point": "f", "cases": [{"args": [port], "expected": "blocked"}]})
        assert r.score == 1.0, r.details
        with pytest.raises(OSError):
            srv.accept()
    finally:
        srv.close()


def test_containers_of_dead_graders_are_removed(dsb):
    import docker

    from thinkgym.verifiers.docker_sandbox import _LABEL, _LABEL_NS, DockerSandbox, _pid_ns

    client = docker.from_env()
    # A grader that died without cleaning up (pid 999999 does not exist here) left this one.
    c = client.containers.create(dsb.image, ["/usr/bin/sleep", "1"], labels={_LABEL: "999999-dead", _LABEL_NS: _pid_ns()})
    try:
        DockerSandbox(max_parallel=1).close()
        assert c.id not in [x.id for x in client.containers.list(all=True)]
    finally:
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            pass
