"""The code grader: honest programs get full credit, every known reward hack gets nothing.

Every attack here is bounded on its own (finite forks, capped memory/disk, loopback only,
self-terminating sleepers), so a broken sandbox cannot take the test machine down.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time

import pytest

from thinkgym.verifiers import get_grader, grade
from thinkgym.verifiers.code import extract_code, grade_program, validate_tests, values_equal

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
]

ADD = {"type": "function", "entry_point": "add", "cases": [{"args": [i, 2 * i], "expected": 3 * i} for i in range(5)]}
SUM_STDIO = {
    "type": "stdio",
    "cases": [{"stdin": "3 4\n", "expected_stdout": "7\n"}, {"stdin": "10 -5\n", "expected_stdout": "5"}],
}
FAST = {"case_s": 2.0, "wall_s": 10.0}


def g(program: str, tests=ADD, **kw):
    kw.setdefault("limits", FAST)
    return grade_program(program, tests, **kw)


# ------------------------------------------------------------------------------------------
# Honest programs


def test_function_correct_and_wrong():
    ok = g("def add(a, b):\n    return a + b\n")
    assert ok.score == 1.0 and ok.components["pass_frac"] == 1.0
    assert [c["status"] for c in ok.details["cases"]] == ["ok"] * 5
    bad = g("def add(a, b):\n    return a - b\n")
    assert bad.score == 0.0
    # case 0 is add(0, 0) == 0, so a - b passes exactly one case
    assert bad.components["pass_frac"] == pytest.approx(0.2)
    assert bad.details["cases"][1]["status"] == "wrong_answer"


def test_partial_credit_is_fraction_passed():
    prog = "def add(a, b):\n    return a + b if a < 3 else 0\n"
    assert g(prog).score == 0.0
    assert g(prog, partial_credit=True).score == pytest.approx(3 / 5)


def test_stdio_whole_output_trailing_whitespace_ignored():
    assert g("a, b = map(int, input().split())\nprint(a + b, '  ')\nprint()\n", SUM_STDIO).score == 1.0
    # a prefix of the right output is not the right output
    two = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "1\n2\n"}]}
    assert g("print(1)", two).score == 0.0
    assert g("print(1); print(2); print(3)", two).score == 0.0


def test_sys_exit_zero_after_printing_passes():
    prog = "import sys\na, b = map(int, input().split())\nprint(a + b)\nsys.exit(0)\n"
    assert g(prog, SUM_STDIO).score == 1.0
    # a crash after printing is a runtime error, like any judge
    crash = "a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(3)\n"
    r = g(crash, SUM_STDIO)
    assert r.score == 0.0 and r.details["cases"][0]["status"] == "runtime_error"


def test_floats_with_tolerance_and_structures():
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [], "expected": [0.3, {"k": [1, "x"]}, None, True]}]}
    assert g("def f():\n    return [0.1 + 0.2, {'k': (1, 'x')}, None, True]\n", t).score == 1.0
    assert g("def f():\n    return [0.31, {'k': [1, 'x']}, None, True]\n", t).score == 0.0
    assert g("def f():\n    return [0.3, {'k': [1, 'x']}, None, 1]\n", t).score == 0.0  # bool is not int
    assert values_equal(2.0, 2) and not values_equal(True, 1) and values_equal(float("nan"), float("nan"))
    assert not values_equal(1000000.5, 1000000) and not values_equal(float("inf"), 10**400)  # int answers are exact


def test_class_method_entry_point():
    t = {"type": "function", "entry_point": "Solution.twice", "cases": [{"args": [4], "expected": 8}]}
    assert g("class Solution:\n    def twice(self, x):\n        return 2 * x\n", t).score == 1.0


HONEST_HEAVY = {
    "cpu_1s": (
        "import time\ndef add(a, b):\n    t = time.process_time()\n    while time.process_time() - t < 0.25:\n"
        "        pass\n    return a + b\n"
    ),
    "deep_recursion_thread": (
        "import sys, threading\nsys.setrecursionlimit(300000)\nthreading.stack_size(512 * 1024 * 1024)\n"
        "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n"
        "def add(a, b):\n    out = []\n    t = threading.Thread(target=lambda: out.append(depth(100000)))\n"
        "    t.start(); t.join()\n    return a + b + out[0] - 100000\n"
    ),
    "threads_and_scratch": (
        "import threading, os\ndef add(a, b):\n    res = []\n"
        "    ts = [threading.Thread(target=lambda i=i: res.append(i)) for i in range(8)]\n"
        "    [t.start() for t in ts]; [t.join() for t in ts]\n"
        "    with open('scratch.txt', 'w') as f:\n        f.write(str(a + b) * 1000)\n"
        "    with open(os.path.expanduser('~/x'), 'w') as f:\n        f.write('1')\n"
        "    return int(open('scratch.txt').read()[:len(str(a + b))]) if sorted(res) == list(range(8)) else None\n"
    ),
}


@pytest.mark.parametrize("name", sorted(HONEST_HEAVY))
def test_honest_programs_get_full_credit_under_default_limits(name):
    r = grade_program(HONEST_HEAVY[name], ADD)
    assert r.score == 1.0, r.details


def test_megabytes_of_output_pass():
    t = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "x" * 999 + "\n" + ("y" * 999 + "\n") * 4000}]}
    prog = "import sys\nsys.stdout.write('x' * 999 + '\\n')\nfor _ in range(4000):\n    print('y' * 999)\n"
    r = grade_program(prog, t)
    assert r.score == 1.0, r.reason


# ------------------------------------------------------------------------------------------
# Completion-level grader


def test_registered_code_grader_extracts_last_python_block_of_final_section():
    completion = (
        "<think>```python\ndef add(a, b):\n    return 0\n```</think>\nFirst try:\n```python\ndef add(a, b):\n"
        "    return 0\n```\nFixed:\n```python\ndef add(a, b):\n    return a + b\n```\n"
    )
    r = grade("code", completion, ADD)
    assert r.score == 1.0 and r.grader == "code@2"
    assert "return a + b" in r.extracted
    # the code inside the thinking section is never graded
    assert grade("code", "<think>```python\ndef add(a,b): return a+b\n```</think>no code", ADD).score == 0.0
    assert grade("code", "<think>unfinished ```python\ndef add(a,b): return a+b\n```", ADD).score == 0.0
    assert grade("code", "```python\ndef add(a, b):\n    return 0\n```", json.dumps(ADD), partial_credit=True).score == pytest.approx(0.2)
    assert get_grader("code").description


def test_extract_code_languages_and_fallback():
    assert extract_code("```py\nx = 1\n```\n```\ny = 2\n```") == "x = 1\n"
    assert extract_code("text\n```\ny = 2\n```\n") == "y = 2\n"
    assert extract_code("```js\nlet x\n```") is None
    # CommonMark closing: the same fence character, at least as long, alone on its line.
    assert extract_code("````python\nx = '```'\n```\ny = 1\n````") == "x = '```'\n```\ny = 1\n"
    assert extract_code("```python\nx = 1\n~~~\n") is None  # never closed: plain text


def test_extract_code_takes_linear_time_on_unclosed_fences():
    # A lazy-body regex rescans the rest of the text from every unclosed fence (minutes here).
    t0 = time.monotonic()
    assert extract_code("```a\n" * 80_000) is None
    assert extract_code("````\n" + "```a\n" * 80_000 + "```\n") is None
    assert time.monotonic() - t0 < 5


def test_bad_tests_are_clear_errors():
    with pytest.raises(ValueError, match="entry_point"):
        validate_tests({"type": "function", "cases": [{"args": [], "expected": 1}]})
    with pytest.raises(ValueError, match="case 0: missing field 'expected_stdout'"):
        validate_tests({"type": "stdio", "cases": [{"stdin": ""}]})
    with pytest.raises(ValueError, match="'type'"):
        validate_tests({"type": "assert", "cases": [1]})
    # through the registry, a malformed gold is an infrastructure error, never a silent 0
    r = grade("code", "```python\npass\n```", {"type": "nope"})
    assert r.score is None and "type" in r.reason


# ------------------------------------------------------------------------------------------
# Attacks. A random expected value the candidate cannot guess, so only forging could pass.

SECRET = 7_391_004_217_563


def secret_tests(n: int = 2) -> dict:
    return {"type": "function", "entry_point": "f", "cases": [{"args": [i], "expected": SECRET + i} for i in range(n)]}


def assert_hack_fails(program: str, tests=None, **kw):
    tests = tests or secret_tests()
    r = g(program, tests, **kw)
    assert r.score == 0.0, (r.reason, r.details)  # a hack is a plain 0, never an infrastructure error
    assert r.components["pass_frac"] == 0.0
    return r


EXIT_TRICKS = {
    "exit_at_import": "import sys\nsys.exit(0)\ndef f(x):\n    return 0\n",
    "os_exit_in_call": "import os\ndef f(x):\n    os._exit(0)\n",
    "exit_in_call": "def f(x):\n    raise SystemExit(0)\n",
    "atexit_marker": "import atexit\natexit.register(lambda: print('ALL TESTS PASSED'))\ndef f(x):\n    return 0\n",
    "kill_parent": "import os, signal\ndef f(x):\n    os.kill(os.getppid(), signal.SIGKILL)\n    return 0\n",
    "kill_everything": "import os, signal\ndef f(x):\n    os.kill(-1, signal.SIGKILL)\n",
    # Once the harness has started, a failure the candidate stages is its own 0, not an
    # infrastructure error (score=None would drop the sample instead of penalising it).
    "forged_sandbox_error": "import os, resource\n"
    "os.write(2, b'bwrap: Creating new namespace failed: Resource temporarily unavailable\\n')\n"
    "resource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (0, 0))\ndef f(x):\n    return 0\n",
}


@pytest.mark.parametrize("name", sorted(EXIT_TRICKS))
def test_exit_tricks_fail(name):
    assert_hack_fails(EXIT_TRICKS[name])


ALWAYS_EQUAL = {
    "eq_object": "class A:\n    def __eq__(s, o):\n        return True\n    __hash__ = object.__hash__\ndef f(x):\n    return A()\n",
    "int_subclass": "class I(int):\n    def __eq__(s, o):\n        return True\n    def __ne__(s, o):\n        return False\n"
    "    __hash__ = int.__hash__\ndef f(x):\n    return I(0)\n",
    "str_subclass": "class S(str):\n    def __eq__(s, o):\n        return True\ndef f(x):\n    return S('x')\n",
    "list_subclass": "class L(list):\n    def __eq__(s, o):\n        return True\ndef f(x):\n    return L()\n",
    "nan": "def f(x):\n    return float('nan')\n",
}


@pytest.mark.parametrize("name", sorted(ALWAYS_EQUAL))
def test_always_equal_objects_fail(name):
    assert_hack_fails(ALWAYS_EQUAL[name])


MONKEYPATCH = {
    "builtins": "import builtins\nbuiltins.isinstance = lambda *a: True\nbuiltins.len = lambda x: 0\n"
    "builtins.type = lambda *a: int\ndef f(x):\n    return 0\n",
    "unittest_and_isclose": "import unittest, math, operator\nunittest.TestCase.assertEqual = lambda *a, **k: None\n"
    "math.isclose = lambda *a, **k: True\noperator.eq = lambda a, b: True\ndef f(x):\n    return 0\n",
    "json_dumps": "import json\njson.dumps = lambda *a, **k: '" + str(SECRET) + "'\ndef f(x):\n    return 0\n",
    "json_forged_reply": "import json\n_d = json.dumps\njson.dumps = lambda o, **k: _d(True) if o is None else _d(o, **k)\n"
    "def f(x):\n    return None\n",
    "sys_modules": "import sys, types\nsys.modules['json'] = types.ModuleType('json')\ndef f(x):\n    return 0\n",
}


@pytest.mark.parametrize("name", sorted(MONKEYPATCH))
def test_builtins_and_unittest_monkeypatching_fail(name):
    assert_hack_fails(MONKEYPATCH[name])


FORGE_ALL_FDS = (
    "import os\n"
    "frame = b'00000000000000000000000000000000 20\\n{\"cases\": []}' \n"
    "for fd in range(0, 64):\n"
    "    for payload in (b'PASSED\\n', b'\\x02', frame, b'14\\n{\"ok\": %d}' % {secret}):\n"
    "        try:\n            os.write(fd, payload)\n        except OSError:\n            pass\n"
).replace("{secret}", str(SECRET))


def test_output_markers_and_forged_frames_fail():
    assert_hack_fails(FORGE_ALL_FDS + "def f(x):\n    return 0\n")
    # stdio: printing markers or the expected output of another case does not help either
    t = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": str(SECRET)}]}
    assert_hack_fails("print('OK'); print('PASSED'); print('All 1 tests passed')", t)
    assert_hack_fails(FORGE_ALL_FDS, t)


def test_harness_channel_and_memory_are_out_of_reach():
    # The program reports which privileged handles it managed to open; expected: none.
    prog = (
        "import os\ndef f(x):\n    got = []\n    pp = os.getppid()\n"
        "    for p in (f'/proc/{pp}/fd/0', f'/proc/{pp}/fd/1', f'/proc/{pp}/mem', f'/proc/{pp}/environ',\n"
        "              '/proc/1/fd/1', '/proc/1/mem', '/proc/1/root/etc/shadow'):\n"
        "        for mode in ('rb', 'wb'):\n"
        "            try:\n                open(p, mode).close(); got.append(p + ' ' + mode)\n"
        "            except OSError:\n                pass\n    return got\n"
    )
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [0], "expected": []}]}
    r = g(prog, t)
    assert r.score == 1.0, r.details


def test_test_files_and_expected_values_are_not_visible(tmp_path):
    spec = secret_tests(1)
    path = tmp_path / "tests.json"
    path.write_text(json.dumps(spec))
    prog = (
        "import os, re\n"
        "def f(x):\n"
        "    found = []\n"
        f"    for p in [{str(path)!r}, '/proc/1/cmdline', '/proc/1/environ', '/proc/self/environ',\n"
        f"              {str(tmp_path)!r}, {os.getcwd()!r}, '/home', os.path.expanduser('~')]:\n"
        "        try:\n"
        "            for root, dirs, files in os.walk(p) if os.path.isdir(p) else [('', [], [p])]:\n"
        "                for n in files[:2000]:\n"
        "                    try:\n"
        "                        found += re.findall(rb'\\d{13}', open(os.path.join(root, n), 'rb').read(1 << 20))\n"
        "                    except OSError:\n"
        "                        pass\n"
        "        except OSError:\n"
        "            pass\n"
        "    return int(found[0]) if found else -1\n"
    )
    r = assert_hack_fails(prog, spec)
    assert r.details["cases"][0].get("got") == "-1", r.details


def test_fork_bomb_is_bounded_by_process_limit():
    # Finite on purpose: at most 300 forks, each child exits within 3 s on its own.
    prog = (
        "import os, time\ndef f(x):\n    ok = 0\n    for _ in range(300):\n        try:\n"
        "            if os.fork() == 0:\n                time.sleep(3); os._exit(0)\n            ok += 1\n"
        "        except OSError:\n            break\n    return ok\n"
    )
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [0], "expected": 300}]}
    r = g(prog, t, limits={**FAST, "nproc": 24})
    assert r.score == 0.0
    assert int(r.details["cases"][0]["got"]) < 24


def test_memory_and_disk_bombs_are_bounded():
    # 1.5 GB allocation under a 256 MiB address-space limit (bounded even if the limit failed).
    mem = "def f(x):\n    b = bytearray(1500 * 1024 * 1024)\n    return len(b)\n"
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [0], "expected": 1500 * 1024 * 1024}]}
    r = assert_hack_fails(mem, t, limits={**FAST, "memory_mb": 256})
    assert "MemoryError" in r.details["cases"][0]["error"]
    # At most 200 MB written into a 16 MiB scratch tmpfs.
    disk = (
        "def f(x):\n    with open('big', 'wb') as fh:\n        for _ in range(200):\n"
        "            fh.write(b'0' * (1 << 20))\n    return 1\n"
    )
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [0], "expected": 1}]}
    r = assert_hack_fails(disk, t, limits={**FAST, "scratch_mb": 16})
    assert "Error" in r.details["cases"][0]["error"]


def test_stdout_and_stderr_floods_are_capped_and_fast():
    # Bounded floods: at most 4 GiB each, cut off long before that.
    t = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "x"}]}
    t0 = time.monotonic()
    r = assert_hack_fails("import sys\nfor _ in range(4096):\n    sys.stdout.write('y' * (1 << 20))\n", t,
                          limits={**FAST, "stdout_bytes": 8 << 20})
    assert r.details["cases"][0]["status"] == "output_limit"
    r = assert_hack_fails("import sys\nfor _ in range(4096):\n    sys.stderr.write('z' * (1 << 20))\n", t)
    assert len(r.details["stderr"]) <= 2000
    # Function mode: prints go nowhere, and the call still returns.
    ok = g("def f(x):\n    for _ in range(200):\n        print('y' * (1 << 20))\n    return x\n",
           {"type": "function", "entry_point": "f", "cases": [{"args": [1], "expected": 1}]})
    assert ok.score == 1.0
    assert time.monotonic() - t0 < 30


def test_sleeping_forever_and_ignoring_signals_time_out():
    t0 = time.monotonic()
    sleeper = "import time\ndef f(x):\n    time.sleep(60)\n"  # finite: ends by itself after 60 s
    r = assert_hack_fails(sleeper, limits={"case_s": 1.0, "case_wall_s": 1.0, "wall_s": 10})
    assert [c["status"] for c in r.details["cases"]] == ["timeout", "timeout"]
    stubborn = (
        "import signal, time\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):\n"
        "    signal.signal(s, signal.SIG_IGN)\n"
        "def f(x):\n    end = time.time() + 60\n    while time.time() < end:\n        pass\n"
    )
    r = assert_hack_fails(stubborn, limits={"case_s": 1.0, "wall_s": 10})
    assert [c["status"] for c in r.details["cases"]] == ["timeout", "timeout"]
    # A stdio program that never exits is stopped by the whole-run wall clock too.
    t = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "1"}] * 3}
    r = assert_hack_fails("import time\nprint(1, flush=True)\ntime.sleep(60)\n", t, limits={"case_s": 1.0, "wall_s": 2.5})
    assert time.monotonic() - t0 < 20


def _host_processes_with(marker: bytes) -> list[int]:
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if f.read() == b"sleep\0" + marker + b"\0":
                        found.append(int(p))
            except OSError:
                pass
    return found


def test_daemons_and_threads_do_not_outlive_the_run():
    marker = b"4242.25"
    # A double-forked, setsid'ed daemon (a `sleep` that ends by itself) plus a non-daemon thread.
    prog = (
        "import os, threading, time\n"
        "def f(x):\n"
        "    if os.fork() == 0:\n        os.setsid()\n        if os.fork() == 0:\n"
        "            os.execv('/usr/bin/sleep', ['sleep', '4242.25'])\n        os._exit(0)\n"
        "    threading.Thread(target=time.sleep, args=(30,)).start()\n"
        "    return x\n"
    )
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [1], "expected": 1}]}
    try:
        r = g(prog, t)
        assert r.score == 1.0, r.details  # daemons are not a failure in themselves...
        assert _host_processes_with(marker) == []  # ...but nothing survives the run
        st = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "ok"}]}
        r = g("import os\nif os.fork() == 0:\n    os.setsid()\n    os.execv('/usr/bin/sleep', ['sleep', '4242.25'])\n"
              "print('ok')\n", st)
        assert r.score == 1.0, r.details
        assert _host_processes_with(marker) == []
    finally:
        for p in _host_processes_with(marker):  # only if the sandbox failed
            os.kill(p, 9)


def test_network_is_unreachable_even_on_loopback():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    accepted = []
    stop = threading.Event()

    def accept_loop():
        while not stop.is_set():
            try:
                accepted.append(srv.accept()[0])
            except OSError:
                pass

    th = threading.Thread(target=accept_loop, daemon=True)
    th.start()
    prog = (
        "import socket\ndef f(port):\n    out = []\n"
        "    for fam, host in ((socket.AF_INET, '127.0.0.1'), (socket.AF_INET6, '::1')):\n"
        "        try:\n            s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(1)\n"
        "            s.connect((host, port)); s.sendall(b'leak'); out.append('connected ' + host)\n"
        "        except OSError as e:\n            out.append('blocked')\n"
        "    try:\n        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('8.8.8.8', 53))\n"
        "        out.append('udp sent')\n    except OSError:\n        out.append('blocked')\n"
        "    return out\n"
    )
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [port], "expected": ["blocked"] * 3}]}
    try:
        r = g(prog, t)
        time.sleep(0.3)
        assert accepted == []
        assert r.score == 1.0, r.details  # the program itself saw every attempt fail
    finally:
        stop.set()
        th.join(2)
        srv.close()
        for c in accepted:
            c.close()


def test_writes_outside_scratch_fail_and_nothing_persists_between_runs():
    import sys
    import sysconfig

    targets = [
        sysconfig.get_paths()["stdlib"] + "/sitecustomize.py",
        sysconfig.get_paths()["purelib"] + "/evil.pth",
        sys.base_prefix + "/thinkgym_evil",
        "/usr/lib/thinkgym_evil",
        "/etc/thinkgym_evil",
        "/thinkgym_evil",
        "/dev/shm/thinkgym_evil",
    ]
    prog = (
        "import os\ndef f(paths):\n    wrote = []\n    for p in paths:\n        try:\n"
        "            with open(p, 'w') as fh:\n                fh.write('import os; os._exit(0)')\n"
        "            wrote.append(p)\n        except OSError:\n            pass\n    return wrote\n"
    )
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [targets], "expected": []}]}
    r = g(prog, t)
    assert r.score == 1.0, r.details
    assert not any(os.path.exists(p) for p in targets)
    # run 1 plants files in every writable place it has; run 2 looks for them
    plant = (
        "import os\ndef f(x):\n"
        "    for p in ('/tmp/planted', os.path.expanduser('~/.planted'), 'planted', '/var/tmp/planted'):\n"
        "        try:\n            open(p, 'w').write('1')\n        except OSError:\n            pass\n    return 1\n"
    )
    look = (
        "import os\ndef f(x):\n"
        "    return [p for p in ('/tmp/planted', os.path.expanduser('~/.planted'), 'planted', '/var/tmp/planted')\n"
        "            if os.path.exists(p)]\n"
    )
    assert g(plant, {"type": "function", "entry_point": "f", "cases": [{"args": [0], "expected": 1}]}).score == 1.0
    r = g(look, {"type": "function", "entry_point": "f", "cases": [{"args": [0], "expected": []}]})
    assert r.score == 1.0, r.details


def test_any_text_survives_the_result_channel():
    text = 'tab\tquote" back\\slash \x01\x1f é 漢字 \u2028 end'
    t = {"type": "stdio", "cases": [{"stdin": text, "expected_stdout": text}]}
    assert g("import sys\nsys.stdout.write(sys.stdin.read())\n", t).score == 1.0
    # a lone surrogate in an exception message must not break the harness's report
    r = g("def f(x):\n    raise ValueError('\\ud800 bad')\n", secret_tests(1))
    assert r.score == 0.0 and r.details["cases"][0]["status"] == "exception"
    ft = {"type": "function", "entry_point": "f", "cases": [{"args": [text], "expected": [text, {"k": text}]}]}
    assert g("def f(s):\n    return [s, {'k': s}]\n", ft).score == 1.0


def test_grade_programs_in_parallel():
    from thinkgym.verifiers.code import grade_programs

    progs = [("def add(a, b):\n    return a + b\n", ADD), ("def add(a, b):\n    return a * b\n", ADD)] * 3
    gs = grade_programs(progs, limits=FAST)
    assert [x.score for x in gs] == [1.0, 0.0] * 3


def test_forked_grader_process_gets_its_own_sandbox():
    # A worker forked from a process with pre-started sandboxes must not share them.
    assert g("def add(a, b):\n    return a + b\n").score == 1.0  # parent has spares now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ok = g("def add(a, b):\n    return a + b\n").score == 1.0
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.waitpid(pid, 0)
    assert got == b"1"
    assert g("def add(a, b):\n    return a + b\n").score == 1.0  # the parent's spares still work


def test_case_time_limit_counts_cpu_not_wall_clock():
    # Waiting is not computing: a slow-but-idle case passes, a busy one hits the CPU limit,
    # however loaded the machine is.
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [1.5], "expected": 1.5}]}
    idle = "import time\ndef f(x):\n    time.sleep(x)\n    return x\n"
    assert g(idle, t, limits={"case_s": 0.5, "case_wall_s": 8.0}).score == 1.0
    busy = "import time\ndef f(x):\n    t = time.process_time()\n    while time.process_time() - t < x:\n        pass\n    return x\n"
    r = g(busy, t, limits={"case_s": 0.5, "case_wall_s": 30.0, "wall_s": 40.0})
    assert r.score == 0.0 and r.details["cases"][0]["status"] == "timeout"
    st = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "ok"}]}
    assert g("import time\ntime.sleep(1.5)\nprint('ok')\n", st, limits={"case_s": 0.5, "case_wall_s": 8.0}).score == 1.0


CPU_IN_CHILD = (
    "import os, time\n"
    "def f(x):\n"
    "    r, w = os.pipe()\n"
    "    if os.fork() == 0:\n"
    "        t = time.process_time()\n"
    "        while time.process_time() - t < x:\n"
    "            pass\n"
    "        os.write(w, b'ok')\n"
    "        os._exit(0)\n"
    "    os.read(r, 2)\n"
    "    os.wait()\n"
    "    return x\n"
)


def test_cpu_spent_in_a_child_counts_against_the_case():
    """Computing in a forked child (the parent only waits) or in a daemon left at import must
    not slip past the per-case CPU limit; in stdio mode as well."""
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [1.5], "expected": 1.5}]}
    r = g(CPU_IN_CHILD, t, limits={"case_s": 0.5, "case_wall_s": 30.0, "wall_s": 40.0})
    assert r.score == 0.0 and r.details["cases"][0]["status"] == "timeout", r.details
    st = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "ok"}]}
    r = g(CPU_IN_CHILD.replace("    return x\n", "    return x\nf(1.5)\nprint('ok')\n"), st,
          limits={"case_s": 0.5, "case_wall_s": 30.0, "wall_s": 40.0})
    assert r.score == 0.0 and r.details["cases"][0]["status"] == "timeout", r.details


# 8 grandchildren of 0.3 s CPU each: reaped by a child that lives on, or orphaned and reaped
# by the sandbox's init. Neither left its CPU where the harness looked.
CPU_IN_GRANDCHILDREN = (
    "import os, time\n"
    "def burn():\n"
    "    t = time.process_time()\n"
    "    while time.process_time() - t < 0.3:\n"
    "        pass\n"
    "def f(x):\n"
    "    r, w = os.pipe()\n"
    "    if os.fork() == 0:\n"
    "        for _ in range(8):\n"
    "            if os.fork() == 0:\n"
    "                burn(); os._exit(0)\n"
    "            os.wait()\n"
    "        os.write(w, b'k'); time.sleep(0.5); os._exit(0)\n"
    "    os.read(r, 1)\n"
    "    return x\n"
)
CPU_IN_ORPHANS = (
    "import os, time\n"
    "def f(x):\n"
    "    for _ in range(8):\n"
    "        r, w = os.pipe()\n"
    "        if os.fork() == 0:\n"
    "            if os.fork() == 0:\n"
    "                t = time.process_time()\n"
    "                while time.process_time() - t < 0.3:\n"
    "                    pass\n"
    "                os.write(w, b'k'); os._exit(0)\n"
    "            os._exit(0)\n"
    "        os.wait(); os.read(r, 1); os.close(r); os.close(w)\n"
    "        time.sleep(0.05)\n"
    "    return x\n"
)


@pytest.mark.parametrize("name", ["grandchildren", "orphans"])
def test_cpu_spent_in_grandchildren_and_orphans_counts_against_the_case(name):
    prog = CPU_IN_GRANDCHILDREN if name == "grandchildren" else CPU_IN_ORPHANS
    lim = {"case_s": 0.5, "case_wall_s": 30.0, "wall_s": 40.0}
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [1], "expected": 1}]}
    r = g(prog, t, limits=lim)
    assert r.score == 0.0 and r.details["cases"][0]["status"] == "timeout", r.details
    st = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "1"}]}
    r = g(prog + "print(f(1))\n", st, limits=lim)
    assert r.score == 0.0 and r.details["cases"][0]["status"] == "timeout", r.details


def test_stopping_the_harness_does_not_stretch_the_case_limits():
    """SIGSTOP the harness (same uid), overrun the case, reply, and let a helper SIGCONT it:
    the reply is already waiting when the harness looks again, but the case still timed out."""
    prog = (
        "import os, signal, time\n"
        "def f(x):\n"
        "    pp = os.getppid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(2.5); os.kill(pp, signal.SIGCONT); os._exit(0)\n"
        "    time.sleep(0.01)\n"
        "    os.kill(pp, signal.SIGSTOP)\n"
        "    time.sleep(2)\n"
        "    return x\n"
    )
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [1], "expected": 1}]}
    r = g(prog, t, limits={"case_s": 0.5, "case_wall_s": 1.0, "wall_s": 10.0})
    assert r.score == 0.0 and r.details["cases"][0]["status"] == "timeout", r.details


def test_cpu_rlimit_does_not_kill_a_worker_that_answered_many_cases():
    """RLIMIT_CPU counts a process's whole life, while the case limit is per case: a function
    worker that serves every case must not be killed once their sum passes cpu_s."""
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [i], "expected": i} for i in range(6)]}
    prog = ("import time\ndef f(x):\n    t = time.process_time()\n"
            "    while time.process_time() - t < 0.45:\n        pass\n    return x\n")
    r = g(prog, t, limits={"case_s": 1.0, "cpu_s": 2, "wall_s": 30.0})
    assert r.score == 1.0, r.details


# f(x) "needs" x CPU seconds. Knowing the later inputs (the harness's memory is forked into the
# worker), each easy case spends its spare budget on the hard one, so no single case overruns.
AMORTIZE = (
    "import gc, time\n"
    "def burn(s):\n"
    "    t = time.process_time()\n"
    "    while time.process_time() - t < s:\n"
    "        pass\n"
    "owed, done = None, {}\n"
    "def f(x):\n"
    "    global owed\n"
    "    if owed is None:\n"
    "        owed = {}\n"
    "        for o in gc.get_objects():\n"
    "            if isinstance(o, list) and o and all(isinstance(a, list) and len(a) == 1 for a in o):\n"
    "                owed.update((a[0], a[0]) for a in o if isinstance(a[0], float))\n"
    "    budget = 0.8\n"
    "    if x not in done:\n"
    "        need = owed.pop(x, x); burn(need); done[x] = 2 * x; budget -= need\n"
    "    for k in list(owed):\n"
    "        step = max(min(budget, owed[k]), 0); burn(step); owed[k] -= step; budget -= step\n"
    "        if owed[k] <= 1e-9:\n"
    "            owed.pop(k); done[k] = 2 * k\n"
    "    return done[x]\n"
)


def test_later_inputs_are_not_visible_so_cpu_cannot_be_spread_over_cases():
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [x], "expected": 2 * x} for x in (0.3, 0.31, 1.4)]}
    r = g(AMORTIZE, t, limits={"case_s": 1.0, "case_wall_s": 10.0, "wall_s": 20.0})
    assert r.score == 0.0 and r.details["cases"][2]["status"] == "timeout", r.details
    # what the worker can find of the cases' inputs: its own and earlier ones
    probe = ("import gc\ndef f(x):\n    return sorted({v for o in gc.get_objects() if isinstance(o, list)\n"
             "                   for v in o if isinstance(v, int) and 7_000_000_000 < v < 8_000_000_000})\n")
    marks = [7_000_000_001, 7_000_000_002, 7_000_000_003]
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [m], "expected": marks[: i + 1]} for i, m in enumerate(marks)]}
    r = g(probe, t)
    assert r.score == 1.0, r.details


def test_a_failing_sandbox_is_an_infrastructure_error_not_an_exception(monkeypatch, caplog):
    from thinkgym.verifiers.code import grade_programs
    from thinkgym.verifiers.sandbox import get_sandbox

    def boom(*a, **k):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(get_sandbox("local"), "run", boom)
    r = g("def add(a, b):\n    return a + b\n")
    assert r.score is None and "sandbox error" in r.reason, r.reason
    assert "code sandbox (local) failed" in caplog.text
    # one failing run does not take the rest of a batch down
    assert [x.score for x in grade_programs([("def add(a, b):\n    return a + b\n", ADD)] * 2)] == [None, None]


def test_memory_is_capped_per_run_not_only_per_process():
    """RLIMIT_AS bounds each process; children (or memfd / SysV shm) could add up to several
    times memory_mb. As root the local backend puts the whole run in a memory cgroup."""
    from thinkgym.verifiers.sandbox import get_sandbox

    if not any(c.root and "memory" in c.root for c in getattr(get_sandbox("local"), "_cgroups", [])):
        pytest.skip("no writable memory cgroup here (needs root and cgroup v1 memory or v2)")
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [3], "expected": 0}]}
    # Each child holds 150 MB (under RLIMIT_AS); together 450 MB, past the 256 + 16 + 64 MB cap.
    children = (
        "import os, time\n"
        "def f(n):\n"
        "    kids = []\n"
        "    for _ in range(n):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            b = bytearray(150 << 20)\n"
        "            for k in range(0, len(b), 4096):\n"
        "                b[k] = 1\n"
        "            time.sleep(1)\n"
        "            os._exit(0)\n"
        "        kids.append(pid)\n"
        "    return sum(os.waitpid(p, 0)[1] != 0 for p in kids)  # children killed\n"
    )
    lim = {"case_s": 4.0, "wall_s": 15.0, "memory_mb": 256, "scratch_mb": 16}
    assert g(children, t, limits=lim).score == 0.0
    assert g(children.replace("150 << 20", "40 << 20"), t, limits=lim).score == 1.0  # 120 MB fits


def test_result_frame_must_carry_the_nonce_and_nothing_else():
    from thinkgym.verifiers.code import read_result

    nonce = b"0123456789abcdef0123456789abcdef"
    body = b'{"cases": []}'
    good = b"\x02" + nonce + b" %d\n" % len(body) + body
    assert read_result(good, nonce) == ({"cases": []}, "")
    forged = b"\x02" + b"f" * 32 + b" %d\n" % len(body) + body
    assert read_result(forged, nonce)[0] is None  # wrong nonce
    assert read_result(good + b"PASSED", nonce)[0] is None  # extra bytes
    assert read_result(b"\x02PASSED\n" + good[1:], nonce)[0] is None  # anything before the frame
    assert read_result(b"\x02" + nonce + b" 3\n[1]", nonce)[0] is None  # not an object
    assert read_result(body, nonce)[0] is None
