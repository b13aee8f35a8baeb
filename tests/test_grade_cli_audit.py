"""``thinkgym grade`` from a new user's review: output paths that are not plain files, Ctrl-C on
code, dataset columns that reached the grader, --timeout for code, deep JSON, non-text
completions and invented ids."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest
import typer
from typer.testing import CliRunner

from thinkgym.verifiers import grade
from thinkgym.verifiers.cli import register

RIGHT = {"id": "a", "completion": "<think>t</think>\\boxed{2}", "gold": "2"}
WRONG = {"id": "b", "completion": "<think>t</think>\\boxed{3}", "gold": "2"}


@pytest.fixture(scope="module")
def app():
    a = typer.Typer()
    register(a)
    a.command("noop")(lambda: None)  # keeps typer from collapsing the app into `grade`
    return a


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _grade(app, *args, **kw):
    return CliRunner().invoke(app, ["grade", *args, "-q", "-w", "1"], **kw)


# ------------------------------------------------------------------------------ 1. output paths


def test_output_through_a_symlink_writes_the_target_and_keeps_the_link(app, tmp_path):
    inp = _write(tmp_path / "rows.jsonl", [RIGHT, WRONG])
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "target.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(os.path.join("real", "target.jsonl"))  # relative, as `ln -s` makes them
    r = _grade(app, "-g", "math", "-i", str(inp), "-o", str(link))
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and os.readlink(link) == os.path.join("real", "target.jsonl")
    assert [json.loads(x)["score"] for x in target.read_text().splitlines()] == [1.0, 0.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "real", "rows.jsonl"]
    assert [p.name for p in (tmp_path / "real").iterdir()] == ["target.jsonl"]  # no .partial left
    # A dangling link gets its target created, and stays a link.
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "real" / "new.jsonl")
    assert _grade(app, "-g", "math", "-i", str(inp), "-o", str(dangling)).exit_code == 0
    assert dangling.is_symlink() and len((tmp_path / "real" / "new.jsonl").read_text().splitlines()) == 2


def test_output_to_a_fifo_is_written_through(app, tmp_path):
    inp = _write(tmp_path / "rows.jsonl", [RIGHT, WRONG])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def reader() -> None:
        with open(fifo, "rb") as f:
            got.append(f.read())

    t = threading.Thread(target=reader, daemon=True)  # on the old code it would wait forever
    t.start()
    r = _grade(app, "-g", "math", "-i", str(inp), "-o", str(fifo))
    assert r.exit_code == 0, r.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the pipe was replaced by a file"
    t.join(30)
    assert got and [json.loads(x)["score"] for x in got[0].decode().splitlines()] == [1.0, 0.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "rows.jsonl"]


def test_dash_means_standard_input_and_output():
    inp = "".join(json.dumps(r) + "\n" for r in (RIGHT, WRONG))
    p = subprocess.run([sys.executable, "-m", "thinkgym.cli", "grade", "-g", "math", "-i", "-", "-o", "-", "-w", "1"],
                       input=inp, capture_output=True, text=True, timeout=120, cwd=os.path.dirname(__file__))
    assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in p.stdout.splitlines()]  # stdout is pure JSONL: the summary is on stderr
    assert [(x["id"], x["score"]) for x in rows] == [("a", 1.0), ("b", 0.0)]
    assert "graded 2 rows with math" in p.stderr and "standard output" in p.stderr
    assert not os.path.exists(os.path.join(os.path.dirname(__file__), "-"))


def test_bad_stdin_row_is_named(app, tmp_path):
    r = CliRunner().invoke(app, ["grade", "-g", "math", "-i", "-", "-o", str(tmp_path / "o.jsonl"), "-q"],
                           input=json.dumps(RIGHT) + "\n{oops\n")
    assert r.exit_code == 2 and "<stdin>:2: invalid JSON" in r.output, r.output
    assert not (tmp_path / "o.jsonl").exists()


# ------------------------------------------------------------------------------ 2. Ctrl-C on code

_LOOP_TESTS = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "1"}]}


def _session_procs(sid: int) -> list[str]:
    r = subprocess.run(["ps", "-o", "pid=,comm=", "-s", str(sid)], capture_output=True, text=True)
    return [x.strip() for x in r.stdout.splitlines() if x.strip()]


@pytest.mark.sandbox
def test_ctrl_c_on_code_stops_at_once_and_leaves_nothing(tmp_path):
    inp = _write(tmp_path / "loop.jsonl", [{"id": i, "program": "while True: pass\n", "tests": _LOOP_TESTS} for i in range(12)])
    out = tmp_path / "o.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "thinkgym.cli", "grade", "-g", "code", "-i", str(inp), "-o", str(out), "-q"],
                         start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not any("bwrap" in x for x in _session_procs(p.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)  # the sandboxes are running candidate loops now
        time.sleep(1.0)
        t0 = time.monotonic()
        os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        rc = p.wait(timeout=60)
        took = time.monotonic() - t0
        time.sleep(0.3)
        left = _session_procs(p.pid)
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert rc == 130, p.stderr.read()
    assert took < 4.0, took  # was ~35 s: every queued program ran to its limit
    assert left == [], left
    assert sorted(x.name for x in tmp_path.iterdir()) == ["loop.jsonl"]  # no output, no .partial


# ------------------------------------------------------------------------------ 3. grader kwargs


def test_dataset_columns_never_reach_the_grader(app, tmp_path):
    """A column that happens to share a grader argument's name is data, kept in the output."""
    cd = {"completion": "<think>t</think><answer>12 + 1</answer>", "gold": {"numbers": [12, 1, 12, 9], "target": 13}}
    rows = [{**cd, "id": "x", "exactly_once": True, "timeout_s": "abc", "backend": "docker", "limits": 3,
             "math_config": "bogus", "partial_credit": True}]
    inp = _write(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "o.jsonl"
    r = _grade(app, "-g", "countdown", "-i", str(inp), "-o", str(out))
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())
    assert got["score"] == 1.0 and got["error"] is None  # exactly_once as a column did not apply
    assert got["timeout_s"] == "abc" and got["backend"] == "docker"  # carried through untouched
    # grader_kwargs is the one way to pass them, and it is applied.
    inp = _write(tmp_path / "rows2.jsonl", [{**cd, "grader_kwargs": {"exactly_once": True}}])
    r = _grade(app, "-g", "countdown", "-i", str(inp), "-o", str(out))
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["score"] == 0.0  # 12 and 9 left unused


@pytest.mark.parametrize(
    "grader, kwargs, message",
    [
        ("math", {"timeout_s": "abc"}, "rows.jsonl:2: field 'grader_kwargs.timeout_s': expected a number of seconds"),
        ("math", {"timout_s": 3}, "rows.jsonl:2: field 'grader_kwargs.timout_s': grader 'math' takes no argument 'timout_s'"),
        ("math", {"math_config": {"bogus": 1}}, "rows.jsonl:2: field 'grader_kwargs.math_config': unknown field(s) ['bogus']"),
        ("math", [1], "rows.jsonl:2: field 'grader_kwargs' must be an object"),
        ("countdown", {"exactly_once": "false"}, "rows.jsonl:2: field 'grader_kwargs.exactly_once': expected true or false"),
        ("math+format", {"timeout_s": -1}, "rows.jsonl:2: field 'grader_kwargs.timeout_s'"),
    ],
)
def test_bad_grader_kwargs_are_bad_input(app, tmp_path, grader, kwargs, message):
    inp = _write(tmp_path / "rows.jsonl", [RIGHT, {**WRONG, "grader_kwargs": kwargs}])
    out = tmp_path / "o.jsonl"
    r = _grade(app, "-g", grader, "-i", str(inp), "-o", str(out))
    assert r.exit_code == 2, r.output
    assert message in r.output and r.output.count("error:") == 1, r.output
    assert not out.exists()


def test_good_grader_kwargs_are_accepted_and_kept(app, tmp_path):
    kw = {"timeout_s": 3, "math_config": {"extract": {"last_only": True}}}
    inp = _write(tmp_path / "rows.jsonl", [{**RIGHT, "grader_kwargs": kw}])
    out = tmp_path / "o.jsonl"
    r = _grade(app, "-g", "math", "-i", str(inp), "-o", str(out))
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())
    assert got["score"] == 1.0 and got["grader_kwargs"] == kw  # kept in the output like any column


def test_a_rows_own_timeout_tightens_the_pools(app, tmp_path):
    """In a pool worker the math grader runs sympy inline, under the pool's budget alone: a row's
    grader_kwargs.timeout_s (lower than --timeout) now bounds it too."""
    slow = {"completion": "\\boxed{\\sum_{j=1}^{9999}\\sum_{k=1}^{9999}\\sin(jk)}", "gold": "5", "grader_kwargs": {"timeout_s": 0.5}}
    inp = _write(tmp_path / "rows.jsonl", [slow])
    out = tmp_path / "o.jsonl"
    r = _grade(app, "-g", "math", "-i", str(inp), "-o", str(out), "--timeout", "60")
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())
    assert got["score"] is None and "0.5s" in got["error"] and got["elapsed_s"] < 10, got


# ------------------------------------------------------------------------------ 4. --timeout and --workers for code


@pytest.mark.sandbox
def test_timeout_lowers_the_code_sandbox_limits(app, tmp_path):
    inp = _write(tmp_path / "loop.jsonl", [{"id": 0, "program": "while True: pass\n", "tests": _LOOP_TESTS},
                                           {"id": 1, "program": "print(1)\n", "tests": _LOOP_TESTS}])
    out = tmp_path / "o.jsonl"
    t0 = time.monotonic()
    r = _grade(app, "-g", "code", "-i", str(inp), "-o", str(out), "--timeout", "1")
    took = time.monotonic() - t0
    assert r.exit_code == 0, r.output
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["score"] for x in got] == [0.0, 1.0]  # an honest program still passes
    assert got[0]["elapsed_s"] < 3.0 and took < 6.0, (got[0]["elapsed_s"], took)  # was 8.4 s: 6 CPU-s per case


def test_help_says_what_timeout_and_workers_do_for_code(app):
    r = CliRunner().invoke(app, ["grade", "--help"], env={"COLUMNS": "400"})
    text = " ".join(r.output.split())
    assert "For code it lowers the sandbox's limits" in text
    assert "for code, sandboxes" in text and "Parallel worker processes" not in text


# ------------------------------------------------------------------------------ 5. deep JSON


@pytest.mark.parametrize("depth", [101, 495])
def test_deeply_nested_rows_are_bad_input_not_a_traceback(app, tmp_path, depth):
    deep = '{"completion": "x", "gold": "1", "note": ' + "[" * depth + "]" * depth + "}"
    inp = _write(tmp_path / "rows.jsonl", [RIGHT, deep])
    out = tmp_path / "o.jsonl"
    r = _grade(app, "-g", "math", "-i", str(inp), "-o", str(out))
    assert r.exit_code == 2, (r.output, r.exception)
    assert "rows.jsonl:2: JSON nested too deeply" in r.output
    assert not out.exists()


def test_nesting_at_the_cap_is_graded(app, tmp_path):
    ok = {**RIGHT, "note": json.loads("[" * 99 + "]" * 99)}
    inp = _write(tmp_path / "rows.jsonl", [ok])
    out = tmp_path / "o.jsonl"
    r = _grade(app, "-g", "math", "-i", str(inp), "-o", str(out))
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["score"] == 1.0


# ------------------------------------------------------------------------------ 6. grade() misuse


@pytest.mark.parametrize("completion", [None, 42, ["\\boxed{1}"], b"\\boxed{1}"])
def test_a_non_text_completion_is_an_error_not_a_zero(completion):
    for name, gold in (("math", "1"), ("format", None), ("countdown", {"numbers": [1], "target": 1}), ("math+format", "1")):
        g = grade(name, completion, gold)
        assert g.score is None and "not str" in g.reason, (name, g)


def test_an_argument_the_grader_does_not_read_is_an_error():
    g = grade("math", "<think>t</think>\\boxed{1}", "1", timout_s=3)
    assert g.score is None and "timout_s" in g.reason and "timeout_s" in g.reason
    assert grade("math", "<think>t</think>\\boxed{1}", "1", timeout_s=3).score == 1.0
    g = grade("countdown", "<answer>1</answer>", {"numbers": [1], "target": 1}, exactly_once="no")
    assert g.score is None and "exactly_once" in g.reason
    # A rubric takes what its parts take.
    assert grade("math+format", "<think>t</think>\\boxed{1}", "1", timeout_s=3).score == 1.0


# ------------------------------------------------------------------------------ 7. ids


def test_ids_are_never_invented(app, tmp_path):
    rows = [{"id": 2, **{k: v for k, v in RIGHT.items() if k != "id"}},
            {k: v for k, v in WRONG.items() if k != "id"},
            {k: v for k, v in RIGHT.items() if k != "id"}]
    inp = _write(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "o.jsonl"
    r = _grade(app, "-g", "math", "-i", str(inp), "-o", str(out))
    assert r.exit_code == 0, r.output
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x.get("id") for x in got] == [2, None, None] and "id" not in got[1]  # line 2 is not "id": 2
    assert [x["line"] for x in got] == [1, 2, 3]


def test_a_grader_declares_the_arguments_it_reads_at_registration():
    """``register_grader(kwargs=...)``: a plugin grader gets the same checks as the built-in ones;
    one that declares nothing is passed anything, as before."""
    from thinkgym.verifiers.base import GRADERS, Grade, bool_arg, grade, register_grader

    seen = []

    @register_grader("audit_declared", kwargs={"strict": bool_arg})
    def declared(completion, gold, **meta):
        seen.append(meta)
        return Grade(score=1.0)

    @register_grader("audit_open")
    def open_(completion, gold, **meta):
        seen.append(meta)
        return Grade(score=1.0)

    try:
        assert grade("audit_declared", "x", "y", strict=True).score == 1.0
        g = grade("audit_declared", "x", "y", strict="yes")
        assert g.score is None and "'strict'" in g.reason and "true or false" in g.reason
        g = grade("audit_declared", "x", "y", strcit=True)
        assert g.score is None and "takes no argument 'strcit'" in g.reason and "strict" in g.reason
        assert grade("audit_open", "x", "y", anything=[1]).score == 1.0
        assert seen == [{"strict": True}, {"anything": [1]}]
    finally:
        for n in ("audit_declared", "audit_open"):
            GRADERS._items.pop(n, None)
            GRADERS._origin.pop(n, None)
