"""Third round of attacks on the code sandbox and grader: a candidate that stops reading its
input, closes its stdout and computes on, prints bytes that are no text; test data no pipe
can carry; a slot directory planted by another user; and guards for what already held.

Every program here is bounded on its own (finite sleeps and loops, capped output).
"""

from __future__ import annotations

import os
import shutil
import socket
import time

import pytest

from thinkgym.verifiers import grade
from thinkgym.verifiers.code import grade_program, validate_tests
from thinkgym.verifiers.sandbox import Limits, LocalSandbox, SandboxUnavailable

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
]

FAST = {"case_s": 2.0, "wall_s": 10.0}
BIG = "x" * 300_000  # several pipe buffers (64 KiB each)


def stdio(stdin: str, expected: str, n: int = 1) -> dict:
    return {"type": "stdio", "cases": [{"stdin": stdin, "expected_stdout": expected}] * n}


def timed(program: str, tests: dict, limits: dict) -> tuple[object, float]:
    t0 = time.monotonic()
    r = grade_program(program, tests, limits=limits)
    return r, time.monotonic() - t0


# Function mode: the worker's input channel is fd 3, read by the harness's own call loop inside
# the candidate's process, so the candidate can stop it from being read.
DEAF_WORKERS = {
    "patched_os_read": "import os, time\nos.read = lambda fd, n: time.sleep(25)\ndef f(s):\n    return len(s)\n",
    "swapped_fd3": "import os\nkeep = os.dup(3)\nr, w = os.pipe()\nos.dup2(r, 3)\ndef f(s):\n    return len(s)\n",
}


@pytest.mark.parametrize("name", sorted(DEAF_WORKERS))
def test_a_program_that_never_reads_a_large_input_fails_its_case_not_the_whole_run(name):
    # The harness wrote the input with a blocking write: past the 64 KiB pipe buffer it hung
    # until the sandbox's wall clock killed the run (30 s here) instead of the case's 1 s.
    lim = {"case_s": 1.0, "case_wall_s": 1.0, "wall_s": 30.0}
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [BIG], "expected": len(BIG)}] * 2}
    r, dt = timed(DEAF_WORKERS[name], t, lim)
    assert r.score == 0.0, (r.reason, r.details)
    assert [c["status"] for c in r.details["cases"]] == ["timeout", "timeout"], r.details
    assert dt < lim["wall_s"] / 3, f"took {dt:.1f} s"
    # Programs that do read a large input are graded as before, in both modes.
    r = grade_program("def f(s):\n    return len(s)\n", t, limits=lim)
    assert r.score == 1.0, r.details
    r = grade_program("import sys\nprint(len(sys.stdin.read()))\n", stdio(BIG, str(len(BIG)), 2), limits=lim)
    assert r.score == 1.0, r.details
    # A stdio program that never reads its large stdin is judged on what it printed, at once.
    r, dt = timed("print(1)\n", stdio(BIG, "1", 2), lim)
    assert r.score == 1.0 and dt < lim["wall_s"] / 3, (r.details, dt)


def test_a_program_that_closes_stdout_still_has_its_cpu_limited():
    # At EOF on its stdout the harness waited for the exit on the wall clock alone: a program
    # that closed its stdout computed on for case_wall_s, past its CPU limit.
    spin = "import os, time\nos.close(1)\nend = time.time() + 25\nwhile time.time() < end:\n    pass\n"
    lim = {"case_s": 1.0, "case_wall_s": 20.0, "wall_s": 30.0}
    r, dt = timed(spin, stdio("", "x"), lim)
    case = r.details["cases"][0]
    assert r.score == 0.0 and case["status"] == "timeout" and "CPU" in case["error"], r.details
    assert dt < lim["case_wall_s"] / 2, f"took {dt:.1f} s"
    # Closing stdout after printing the answer and then exiting is still a pass.
    r = grade_program("import os\nprint('x', flush=True)\nos.close(1)\n", stdio("", "x"), limits=FAST)
    assert r.score == 1.0, r.details


def test_output_that_is_not_valid_utf8_never_matches():
    # The harness decoded stdout with errors="replace": b"\xff" read as U+FFFD and matched an
    # expected output holding that character.
    t = stdio("", "\ufffd")
    r = grade_program("import os\nos.write(1, b'\\xff')\n", t, limits=FAST)
    assert r.score == 0.0 and r.details["cases"][0]["status"] == "wrong_answer", r.details
    assert "UTF-8" in r.details["cases"][0]["error"]
    r = grade_program("import os\nos.write(1, b'ok \\xc3')\n", stdio("", "ok"), limits=FAST)  # cut mid-character
    assert r.score == 0.0, r.details
    assert grade_program("print('\\ufffd')\n", t, limits=FAST).score == 1.0


@pytest.mark.parametrize("field", ["stdin", "expected_stdout"])
def test_a_lone_surrogate_in_stdio_tests_is_an_error_not_a_silent_zero(field):
    # Not encodable on a pipe: the harness failed on the stdin (a "harness error" 0.0) and no
    # output could match the expected one, so every program, honest ones too, got 0.0.
    case = {"stdin": "a\n", "expected_stdout": "a"}
    case[field] = case[field] + "\ud800"
    t = {"type": "stdio", "cases": [case]}
    with pytest.raises(ValueError, match="surrogate"):
        validate_tests(t)
    r = grade("code", "```python\nimport sys\nsys.stdout.write(sys.stdin.read())\n```", t, limits=FAST)
    assert r.score is None and "surrogate" in r.reason, r.reason
    # Any other text, NUL and control characters included, still goes through.
    text = "a\x00b\x7f\u2028\U0001f600\n"
    assert grade_program("import sys\nsys.stdout.write(sys.stdin.read())\n", stdio(text, text), limits=FAST).score == 1.0


def test_a_run_killed_for_its_total_output_says_so():
    # Each case is capped on its own (half of stdout_bytes); three of them pass the run's cap.
    # The reason said the result channel was tampered with.
    t = stdio("", "y" * (6 << 20), 3)
    r = grade_program("import sys\nsys.stdout.write('y' * (6 << 20))\n", t,
                      limits={**FAST, "wall_s": 20.0, "stdout_bytes": 16 << 20})
    assert r.score == 0.0 and "output limit of the run" in r.reason, r.reason


def test_a_slot_directory_planted_by_another_user_is_refused(tmp_path, monkeypatch):
    # As root the sandbox locks its uid slots in a directory under the shared temp dir. One
    # that someone else made first (writable by others, or a symlink to theirs) would let them
    # hold every slot or have root open their symlinks for writing.
    from thinkgym.verifiers import sandbox as sbx

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chmod(theirs, 0o777)
    monkeypatch.setattr(sbx, "_SLOT_DIR", str(theirs))
    with pytest.raises(SandboxUnavailable, match="slot directory"):
        sbx._Uids(True)
    link = tmp_path / "link"
    os.chmod(theirs, 0o700)
    link.symlink_to(theirs)
    monkeypatch.setattr(sbx, "_SLOT_DIR", str(link))
    with pytest.raises(SandboxUnavailable, match="slot directory"):
        sbx._Uids(True)
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)
        monkeypatch.setattr(sbx, "_SLOT_DIR", str(theirs))
        with pytest.raises(SandboxUnavailable, match="slot directory"):
            sbx._Uids(True)
    ours = tmp_path / "ours"
    monkeypatch.setattr(sbx, "_SLOT_DIR", str(ours))
    uids = sbx._Uids(True)
    uids.release(uids.acquire())
    assert (os.stat(ours).st_mode & 0o777) == 0o700


# ------------------------------------------------------------------------------------------
# Guards: attacks that already failed, kept failing.


def test_guard_host_abstract_unix_socket_and_flooded_pipes():
    sb = LocalSandbox(max_parallel=1, spares=0)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = b"\0thinkgym-redteam3-%d" % os.getpid()
    srv.bind(name)
    srv.listen(1)
    try:
        code = (
            "import socket\ns = socket.socket(socket.AF_UNIX)\n"
            f"try:\n    s.connect({name!r}); print('CONNECTED')\nexcept OSError:\n    print('blocked')\n"
        )
        r = sb.run([sb.python, "-I", "-S", "-c", code], b"", Limits(wall_s=10))
        assert r.stdout == b"blocked\n", r.stdout + r.stderr  # its own network namespace
    finally:
        srv.close()
    # stdout and stderr flooded at once while 1 MiB of stdin goes unread: no deadlock.
    flood = "import os\nfor _ in range(200):\n    os.write(2, b'e' * (1 << 20)); os.write(1, b'o' * (1 << 20))\n"
    t0 = time.monotonic()
    r = sb.run([sb.python, "-I", "-S", "-c", flood], b"i" * (1 << 20), Limits(wall_s=20, stdout_bytes=4 << 20))
    assert r.stdout_truncated and r.stderr_truncated and not r.timed_out
    assert time.monotonic() - t0 < 10
