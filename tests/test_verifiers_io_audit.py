"""Input and output edges of grading: sandbox limits out of range, numbers JSON cannot hold,
worker counts, the judge's own time budget under ``thinkgym grade``, output paths, budget log
lines and ``thinkgym graders``."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from http.server import BaseHTTPRequestHandler

import pytest
from conftest import loopback_server, send_body
from typer.testing import CliRunner

from thinkgym.cli import app
from thinkgym.jsonl import dumps_line, iter_jsonl
from thinkgym.verifiers import grade
from thinkgym.verifiers.cli import InputError, _submit_all, read_rows
from thinkgym.verifiers.pool import GraderPool
from thinkgym.verifiers.sandbox import Limits

runner = CliRunner()

ADD_TESTS = {"type": "stdio", "cases": [{"stdin": "1 2\n", "expected_stdout": "3\n"}]}
ADD = "a, b = map(int, input().split())\nprint(a + b)\n"


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _grade(*args: str):
    return runner.invoke(app, ["grade", *args, "--quiet"])


# --------------------------------------------------------------------------- sandbox limits

BAD_LIMITS = [
    {"case_s": -1}, {"nproc": 0}, {"wall_s": -5}, {"stdout_bytes": 0}, {"wall_s": math.inf},
    {"case_wall_s": math.nan}, {"case_s": 0}, {"memory_mb": -1}, {"nofile": 2}, {"scratch_mb": 0},
    {"cpu_s": 2.5}, {"nproc": True}, {"wall_s": 1e9},
]


@pytest.mark.parametrize("bad", BAD_LIMITS, ids=lambda d: f"{next(iter(d))}={next(iter(d.values()))}")
def test_limits_refuse_values_out_of_range(bad):
    with pytest.raises((ValueError, TypeError), match=rf"Limits\.{next(iter(bad))}"):
        Limits(**bad)
    with pytest.raises((ValueError, TypeError)):
        Limits().replace(**bad)


def test_limits_accept_their_defaults_and_small_sane_values():
    Limits()
    Limits(wall_s=0.5, case_s=0.05, case_wall_s=None, cpu_s=1, nproc=4, stdout_bytes=4096, fsize_mb=0, stderr_bytes=0)


@pytest.mark.parametrize("bad", [{"case_s": -1}, {"nproc": 0}, {"wall_s": -5}, {"stdout_bytes": 0}])
def test_grade_refuses_bad_limits_instead_of_scoring_a_correct_program(bad):
    # Before: 0.0 ("CPU time limit (-1 s) exceeded", "harness error: BlockingIOError") or a
    # sandbox error, for a correct program.
    g = grade("code", f"```python\n{ADD}```", ADD_TESTS, limits=bad)
    assert g.score is None and next(iter(bad)) in g.reason, g


@pytest.mark.parametrize("bad", [{"case_s": -1}, {"nproc": 0}, {"wall_s": -5}, {"stdout_bytes": 0}])
def test_grade_cli_refuses_bad_limits_with_file_and_line(tmp_path, bad):
    ok = {"program": ADD, "tests": ADD_TESTS}
    inp = _write(tmp_path / "rows.jsonl", [ok, {**ok, "grader_kwargs": {"limits": bad}}])
    out = tmp_path / "out.jsonl"
    r = _grade("-g", "code", "-i", str(inp), "-o", str(out))
    assert r.exit_code == 2, r.output
    assert "rows.jsonl:2: field 'grader_kwargs.limits'" in r.output and next(iter(bad)) in r.output
    assert not out.exists()


# --------------------------------------------------------------------------- numbers JSON cannot hold


def test_a_number_beyond_float_range_is_refused_naming_file_line_and_field(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"gold": "1"}\n{"completion": "x", "gold": 1e999}\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl:2: field 'gold': number 1e999 is out of range"):
        list(iter_jsonl(p))
    p.write_text('{"x": {"y": [1, -1e400]}}\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl:1: field 'x\.y\[1\]': number -1e400"):
        list(iter_jsonl(p))
    # What stays in range is read as before, and a tiny number is just 0.
    p.write_text('{"a": 1.5e308, "b": "1e999", "c": 1e-999}\n')
    assert [r for _, r in iter_jsonl(p)] == [{"a": 1.5e308, "b": "1e999", "c": 0.0}]


def test_dumps_line_never_writes_nan_or_infinity():
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError):
            dumps_line({"x": bad})
    assert dumps_line({"x": 1e308}) == '{"x": 1e+308}\n'


@pytest.mark.parametrize("line", ['{"completion": "\\\\boxed{1}", "gold": 1e999}',
                                  '{"completion": "\\\\boxed{1}", "gold": "1", "x": -1e400}'])
def test_grade_cli_refuses_an_infinite_number_instead_of_writing_infinity(tmp_path, line):
    # Before: gold 1e999 scored 0.0 and was written back as Infinity, which no reader takes.
    inp = tmp_path / "rows.jsonl"
    inp.write_text(line + "\n")
    out = tmp_path / "out.jsonl"
    r = _grade("-g", "math", "-i", str(inp), "-o", str(out))
    assert r.exit_code == 2 and "rows.jsonl:1: field" in r.output and "out of range" in r.output, r.output
    assert not out.exists()


# --------------------------------------------------------------------------- workers


@pytest.mark.parametrize("workers", [0, -1, 2.5, True, "2"])
def test_grader_pool_refuses_a_worker_count_that_is_not_a_positive_integer(workers):
    with pytest.raises(ValueError, match="workers must be"):
        GraderPool(workers=workers)


def test_grade_starts_no_more_workers_than_rows_nor_than_a_few_per_cpu():
    rows = [(1, {"completion": "\\boxed{2}", "gold": "2"}), (2, {"completion": "\\boxed{3}", "gold": "2"})]
    futures, close = _submit_all("math", rows, 8, None, "rows.jsonl")
    try:
        pool = close.__self__
        assert pool.workers == 2 and pool.wait_ready(120) and len(pool.pids()) == 2
        assert [f.result().score for f in futures] == [1.0, 0.0]
    finally:
        close()
    from thinkgym.verifiers.cli import _worker_count

    cpus = os.cpu_count() or 1
    assert _worker_count(64, 2) == 2
    assert _worker_count(100_000, 10**6) == 2 * cpus
    assert _worker_count(None, 0) == 1


# --------------------------------------------------------------------------- judge budget


class _SlowJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible judge that answers CORRECT after ``delay`` seconds."""

    delay = 6.0

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        nonce = re.search(r"<<<CANDIDATE (\w+)>>>", body["messages"][0]["content"]).group(1)
        time.sleep(self.delay)
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": f"VERDICT {nonce}: CORRECT"},
                                       "finish_reason": "stop"}]}).encode()
        send_body(self, 200, out)


def test_grade_cli_gives_a_judge_row_the_judges_own_budget(tmp_path):
    # Before: the default 5 s per item killed the worker ("timed out after 5s (worker killed)")
    # while grade("judge", ...) returned 1.0 after 6 s.
    with loopback_server(_SlowJudge) as url:
        cfg = {"base_url": url + "/v1", "model": "stub", "timeout_s": 30.0, "max_retries": 0, "cache": False}
        row = {"completion": "<think>t</think>\\boxed{4}", "gold": "4", "grader_kwargs": {"judge_config": cfg}}
        inp = _write(tmp_path / "rows.jsonl", [row])
        out = tmp_path / "out.jsonl"
        r = _grade("-g", "judge", "-i", str(inp), "-o", str(out))
        assert r.exit_code == 0, r.output
        got = json.loads(out.read_text())
        assert got["score"] == 1.0 and got["elapsed_s"] >= 5.5, got
        # An explicit --timeout still governs.
        r = _grade("-g", "judge", "-i", str(inp), "-o", str(out), "--timeout", "1")
        got = json.loads(out.read_text())
        assert got["score"] is None and "timed out after 1s" in got["error"], got


def test_judge_budget_covers_every_attempt_and_backoff():
    from thinkgym.verifiers.cli import _judge_budget
    from thinkgym.verifiers.judge import JudgeConfig

    # Defaults: 4 attempts of 60 s and 3 backoffs (0.5, 1, 2 s, up to 25% more each).
    assert 4 * 60 + 3.5 * 1.25 < _judge_budget(None) < 4 * 60 + 3.5 * 1.25 + 60
    assert _judge_budget({"timeout_s": 2.0, "max_retries": 0}) == pytest.approx(2.0 + 10.0)
    assert _judge_budget(JudgeConfig(timeout_s=3600.0, max_retries=10**6)) == 86400.0  # the pool's longest


def test_read_rows_refuses_a_judge_config_its_class_refuses(tmp_path):
    inp = _write(tmp_path / "rows.jsonl", [{"completion": "x", "grader_kwargs": {"judge_config": {"timeout_s": -1.0}}}])
    with pytest.raises(InputError, match=r"rows\.jsonl:1: field 'grader_kwargs\.judge_config'.*timeout_s"):
        read_rows(inp, "judge")


# --------------------------------------------------------------------------- output path


def test_output_path_ending_in_a_slash_is_refused(tmp_path):
    inp = _write(tmp_path / "rows.jsonl", [{"completion": "\\boxed{1}", "gold": "1"}])
    r = _grade("-g", "math", "-i", str(inp), "-o", str(tmp_path / "newdir") + "/")
    assert r.exit_code == 2 and "ends in a slash" in r.output, r.output
    assert not (tmp_path / "newdir").exists()  # before: a regular file named newdir
    (tmp_path / "there").mkdir()
    r = _grade("-g", "math", "-i", str(inp), "-o", str(tmp_path / "there") + "/")
    assert r.exit_code == 2 and "is a directory" in r.output, r.output


# --------------------------------------------------------------------------- budget log line


def test_a_sub_second_budget_is_logged_as_it_is(caplog):
    with GraderPool(workers=1, timeout_s=5.0, preload=()) as pool:
        assert pool.wait_ready(60)
        with caplog.at_level(logging.WARNING, logger="thinkgym.verifiers.pool"):
            res = pool.call("time:sleep", 30, timeout=0.04)
    assert res.timed_out and res.error == "timed out after 0.04s (worker killed)"
    assert "exceeded 0.04s budget" in caplog.text, caplog.text  # before: "exceeded 0.0s budget"


# --------------------------------------------------------------------------- thinkgym graders


def test_graders_lists_builtins_and_registered_graders_with_their_arguments():
    from thinkgym.verifiers.base import GRADERS, Grade, bool_arg, register_grader

    @register_grader("io_audit_declared", version="3", kwargs={"strict": bool_arg})
    def declared(completion, gold, **meta):
        """Declares what it reads."""
        return Grade(score=1.0)

    @register_grader("io_audit_open")
    def open_(completion, gold, **meta):
        return Grade(score=1.0)

    try:
        r = runner.invoke(app, ["graders", "--json"])
        assert r.exit_code == 0, r.output
        rows = {g["name"]: g for g in json.loads(r.output)}
        assert rows["math"]["fingerprint"].startswith("math@") and "timeout_s" in rows["math"]["kwargs"]
        assert rows["code"]["kwargs"] == ["backend", "final_section_only", "limits", "partial_credit"]
        assert "judge_config" in rows["judge"]["kwargs"] and "format_config" in rows["math+format"]["kwargs"]
        assert rows["io_audit_declared"] == {"name": "io_audit_declared", "fingerprint": "io_audit_declared@3",
                                             "description": "Declares what it reads.", "kwargs": ["strict"],
                                             "origin": __name__}
        assert rows["io_audit_open"]["kwargs"] is None  # undeclared: anything is passed
        r = runner.invoke(app, ["graders"])
        math_fp = rows["math"]["fingerprint"]
        assert r.exit_code == 0 and math_fp in r.output and "io_audit_declared@3" in r.output
        assert "graders" in runner.invoke(app, ["--help"]).output
    finally:
        for n in ("io_audit_declared", "io_audit_open"):
            GRADERS._items.pop(n, None)
            GRADERS._origin.pop(n, None)


def test_graders_help_is_useful():
    r = runner.invoke(app, ["graders", "--help"])
    assert r.exit_code == 0 and "--json" in r.output and "grader_kwargs" in r.output

