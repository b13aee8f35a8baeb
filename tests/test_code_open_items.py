"""The code grader's memory per grade, the grade CLI's Docker backend and its Ctrl-C, and the
grader's version.

* A case's output reaches the grader as raw bytes after the harness's report and is compared in
  place, line by line; a failed case's output is not sent at all. A program printing 64 MiB in
  each of 3 cases had the grading process hold 192 MB (bytes, slices, JSON text, parsed strings).
* ``thinkgym grade --grader code`` takes ``grader_kwargs.backend``: Ctrl-C now stops Docker runs
  too (``DockerSandbox.kill_running`` kills the containers of the runs in progress).
"""

from __future__ import annotations

import codecs
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc

import pytest

from thinkgym.verifiers import sandbox as sandbox_mod
from thinkgym.verifiers.code import _norm_stdout, grade_program, read_result

pytestmark = pytest.mark.sandbox


def _peak_mib(fn):
    """(fn(), peak MiB of Python allocations while it ran, over all threads)."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------------------ 1. memory


def test_a_flood_of_output_costs_the_grader_no_memory():
    """3 cases of a program printing 64 MiB (each cut at the per-case cap of 16 MiB): 192 MB."""
    t = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "hello"}] * 3}
    prog = "import sys\nsys.stdout.write('x' * (64 << 20))\n"
    grade_program("print('hello')", t)  # start-up allocations are not the grade's
    g, peak = _peak_mib(lambda: grade_program(prog, t, partial_credit=True))
    assert g.score == 0.0 and [c["status"] for c in g.details["cases"]] == ["output_limit"] * 3, g
    assert peak < 8, peak


def test_a_long_passing_output_is_held_once():
    """Two passing cases of 15 MiB (the expected line, then whitespace) each: 120 MB before."""
    t = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "hello\n"}] * 2}
    prog = "import sys\nsys.stdout.write('hello' + ' \\u3000\\n' * (3 << 20))\n"
    grade_program("print('hello')", t)
    g, peak = _peak_mib(lambda: grade_program(prog, t))
    assert g.score == 1.0, g.reason
    assert peak < 40, peak  # the run's output (30 MB) once, plus a chunk decoded at a time


def test_control_characters_no_longer_inflate_the_output():
    """Each one took 6 bytes as JSON: 11 MiB of them passed the run's 64 MiB cap and a correct
    program got 0 ("output limit of the run exceeded")."""
    text = "\x01" * (11 << 20)
    t = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": text}]}
    g = grade_program("import sys\nsys.stdout.write('\\x01' * (11 << 20))\n", t)
    assert g.score == 1.0, g.reason


def _reference(got: bytes, want: str) -> bool:
    try:
        return _norm_stdout(got.decode("utf-8")) == _norm_stdout(want)
    except UnicodeDecodeError:
        return False


_OUTPUTS = [
    b"", b"\n", b" \n\t\n", b"7", b"7\n", b"7  \n\n", b"7\r\n", b"7\r\r\n", b"7\rx", b"7 x", b"x7",
    b"1\n2", b"1\n2\n", b"1\r\n2\r\n", b"1\n\n2", b"1\n2\n3", b"1 \n2 \n \n", b"1\n2\x00",
    "1\u2028\n2\xa0\u3000\x85\x0b\x0c\x1c\n".encode(), "1\u20282".encode(), "é\n".encode(),
    b"\xc3\xa9\n", b"\xc3\n", b"1\n\xff", b"1\n2 \xff", b"\xed\xa0\x80", "\ufffd".encode(),
    b"\xe3\x80", b"1\n2\xe3\x80\x80",
]
_EXPECTED = ["", "7", "7\n", "1\n2", "1\n2\n\n", "1 \n 2", "1\n\n2", "\n1\n2", "é", "\ufffd", "7\rx", "1\n2\n3"]


@pytest.mark.parametrize("want", _EXPECTED)
def test_in_place_comparison_is_the_normalised_one(want):
    from thinkgym.verifiers.code import _stdout_matches

    for got in _OUTPUTS:
        assert _stdout_matches(memoryview(got), _norm_stdout(want)) == _reference(got, want), (got, want)


def test_in_place_comparison_across_decoding_chunks():
    from thinkgym.verifiers.code import _CHUNK, _stdout_matches

    pad = "\u3000".encode()  # 3 bytes: some land astride a chunk boundary
    got = b"ok" + pad * (_CHUNK // 3 + 5) + b"\n\n" + pad * 7
    assert _stdout_matches(memoryview(got), "ok") and _reference(got, "ok")
    bad = got[: _CHUNK + 1] + b"\xff" + got[_CHUNK + 2 :]
    assert not _stdout_matches(memoryview(bad), "ok") and not _reference(bad, "ok")
    assert codecs.decode(got, "utf-8")  # the test's own input is valid


def test_invalid_utf8_output_is_still_named():
    t = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "\ufffd"}]}
    g = grade_program("import sys\nsys.stdout.buffer.write(b'\\xff')\n", t)
    case = g.details["cases"][0]
    assert g.score == 0.0 and case["error"] == "output is not valid UTF-8" and case["got"] == "\ufffd", case


def test_result_frame_outputs_are_exact():
    nonce = b"0123456789abcdef0123456789abcdef"
    meta = json.dumps({"cases": [{"status": "ok", "out_bytes": 3}, {"status": "x"}, {"status": "ok", "out_bytes": 2}]}).encode()
    frame = b"\x02" + nonce + b" %d 5\n" % len(meta) + meta + b"abcde"
    payload, _ = read_result(frame, nonce)
    assert [bytes(c.get("out", b"-")) for c in payload["cases"]] == [b"abc", b"-", b"de"]
    assert read_result(frame + b"f", nonce)[0] is None  # one byte more
    assert read_result(frame[:-1], nonce)[0] is None
    short = frame.replace(b" %d 5\n" % len(meta), b" %d 4\n" % len(meta))[:-1]
    assert read_result(short, nonce)[0] is None  # the outputs' total length disagrees with the cases'
    assert read_result(frame.replace(b" 5\n", b" 5 0\n"), nonce)[0] is None
    assert read_result(frame.replace(b" 5\n", b" x\n"), nonce)[0] is None


def test_function_replies_are_judged_as_before():
    t = {"type": "function", "entry_point": "f",
         "cases": [{"args": [2], "expected": "é" * 2}, {"args": [3], "expected": [1, 2]}, {"args": [0], "expected": 1}]}
    g = grade_program("def f(n):\n    return 'é' * n if n == 2 else [1] * 600 if n == 3 else 1 / n\n", t, partial_credit=True)
    cases = g.details["cases"]
    assert [c["status"] for c in cases] == ["ok", "wrong_answer", "exception"], cases
    assert "more elements" in cases[1]["error"] and "ZeroDivisionError" in cases[2]["error"]


# ------------------------------------------------------------------------------ 3. version


def test_the_code_grader_is_version_2():
    from thinkgym.verifiers import get_grader

    assert get_grader("code").fingerprint == "code@2"


# ------------------------------------------------------------------------------ 2. Docker backend


def _docker_sandbox():
    try:
        return sandbox_mod.get_sandbox("docker")
    except sandbox_mod.SandboxUnavailable as e:
        pytest.skip(f"Docker backend unavailable: {e}")


def test_kill_running_stops_docker_runs():
    sb = _docker_sandbox()
    t = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "1"}]}
    lim = {"case_s": 30.0, "case_wall_s": 30.0, "wall_s": 40.0}
    res: dict = {}
    th = threading.Thread(target=lambda: res.update(g=grade_program("while True: pass\n", t, backend="docker", limits=lim)))
    th.start()
    deadline = time.monotonic() + 30
    while not sb._running and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the candidate is looping now
    t0 = time.monotonic()
    assert sandbox_mod.kill_running() >= 1
    th.join(20)
    took = time.monotonic() - t0
    assert not th.is_alive() and took < 5.0, took
    assert res["g"].score in (0.0, None), res["g"]
    assert not sb._running
    # The killed container is not reused; the next run gets a working one.
    assert grade_program("print(1)", t, backend="docker").score == 1.0


def _ps(owner_pid: int) -> list[str]:
    r = subprocess.run(["docker", "ps", "-aq", "--filter", "label=org.thinkgym.sandbox.owner"],
                       capture_output=True, text=True)
    ids = r.stdout.split()
    if not ids:
        return []
    r = subprocess.run(["docker", "inspect", "-f", '{{index .Config.Labels "org.thinkgym.sandbox.owner"}}', *ids],
                       capture_output=True, text=True)
    return [x for x in r.stdout.split() if x.startswith(f"{owner_pid}-")]


def test_grade_cli_takes_a_docker_backend_and_ctrl_c_stops_it(tmp_path):
    _docker_sandbox()
    tests = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "1"}]}
    rows = [{"id": i, "program": "while True: pass\n", "tests": tests, "grader_kwargs": {"backend": "docker"}} for i in range(12)]
    inp = tmp_path / "loop.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "thinkgym.cli", "grade", "-g", "code", "-i", str(inp), "-o", str(out), "-q"],
                         start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not _ps(p.pid) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)  # the containers are running candidate loops now
        t0 = time.monotonic()
        os.killpg(p.pid, signal.SIGINT)
        rc = p.wait(timeout=60)
        took = time.monotonic() - t0
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert rc == 130, p.stderr.read()
    assert took < 8.0, took  # the loops run 6 CPU-s a case, 30 s a run: they were killed
    assert _ps(p.pid) == []  # its containers are removed at exit
    assert sorted(x.name for x in tmp_path.iterdir()) == ["loop.jsonl"]


def _cli(tmp_path, rows, env=None):
    inp = tmp_path / "rows.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return subprocess.run([sys.executable, "-m", "thinkgym.cli", "grade", "-g", "code", "-i", str(inp), "-o", "-", "-q"],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)


def test_grade_cli_grades_on_docker(tmp_path):
    _docker_sandbox()
    tests = {"type": "stdio", "cases": [{"stdin": "2\n", "expected_stdout": "4"}]}
    r = _cli(tmp_path, [{"program": "print(int(input()) * 2)", "tests": tests, "grader_kwargs": {"backend": "docker"}}])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["score"] == 1.0


def test_grade_cli_backend_errors_are_clear(tmp_path):
    tests = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "1"}]}
    r = _cli(tmp_path, [{"program": "print(1)", "tests": tests, "grader_kwargs": {"backend": "dockr"}}])
    assert r.returncode == 2 and "field 'grader_kwargs.backend': must be one of 'local', 'docker', got 'dockr'" in r.stderr, r.stderr
    # No engine (or, here, no image): one message before any grading, not an error per row.
    r = _cli(tmp_path, [{"program": "print(1)", "tests": tests, "grader_kwargs": {"backend": "docker"}}] * 3,
             env={"THINKGYM_SANDBOX_IMAGE": "thinkgym-no-such-image:0"})
    assert r.returncode == 2 and "grader_kwargs.backend 'docker'" in r.stderr and r.stdout == "", r.stderr
