"""Reward hacks and failure modes found by auditing extraction, format, countdown, rubric, the
grader pool and ``thinkgym grade``; each test failed before its fix."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from fractions import Fraction

import pytest

from thinkgym.verifiers import Grade, grade, register_grader
from thinkgym.verifiers.extract import extract
from thinkgym.verifiers.format import check_format
from thinkgym.verifiers.rubric import Rubric


# --------------------------------------------------------------------------- extraction


def test_think_close_tag_is_case_insensitive_like_the_format_grader():
    # "</THINK>" passed the format grader but extraction read it as thinking never closed.
    text = "<think>a</THINK> \\boxed{5}"
    assert extract(text).answers == ["5"]
    assert grade("math", text, "5").score == 1.0 and check_format(text).score == 1.0
    # ...and a box inside an upper-case think block is not a final answer.
    assert not extract("<THINK>\\boxed{4}</THINK>").ok
    assert grade("math", "<THINK>so \\boxed{4}</THINK>", "4").score == 0.0
    assert extract("<Think>never closed \\boxed{4}").reason.startswith("thinking never closed")


def test_think_block_reopened_after_the_last_close_is_unfinished_thinking():
    text = "<think>a</think> let me check again <think>maybe \\boxed{41}"
    assert not extract(text).ok and "never closed" in extract(text).reason
    assert grade("math", text, "41").score == 0.0
    assert grade("countdown", "<think>a</think><think><answer>12 + 1</answer>", {"numbers": [12, 1], "target": 13}).score == 0.0


# --------------------------------------------------------------------------- format


@pytest.mark.parametrize(
    "text",
    [
        "<think>a</think>\\boxed{42}<answer>41</answer>",  # a box before the tag is a second answer
        "<think>a</think>So \\boxed{42}, i.e. <answer>42</answer>",
        "<think>a</think><answer>\\boxed{5}\\boxed{6}</answer>",  # two boxes in one tag
    ],
)
def test_format_counts_every_answer_across_channels(text):
    g = check_format(text)
    assert g.score == 0.0 and "more than one answer" in g.reason, g
    assert len(extract(text).answers) == 2  # what the answer graders see


@pytest.mark.parametrize(
    "answer",
    ["<answer>\\boxed{}</answer>", "\\boxed{\\boxed{}}", "\\boxed{\\fbox{ }}", "\\boxed{\\relax}",
     "\\boxed{\\kern1em}", "\\boxed{\\hskip 2pt}", "\\boxed{\\left.\\right.}", "\\boxed{\\hfill}",
     "\\boxed{\\mspace{2mu}}", "\\boxed{\\underline{}}"],
)
def test_format_rejects_more_answers_that_typeset_as_nothing(answer):
    g = check_format("<think>a</think>" + answer)
    assert g.score == 0.0 and "empty answer" in g.reason, g


def test_format_answer_count_is_linear_in_tags_and_boxes():
    text = "<think>a</think>" + "\\boxed{1}" * 20_000 + "<answer>\\boxed{1}</answer>" * 20_000
    t0 = time.perf_counter()
    assert check_format(text).score == 0.0
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize(
    "answer",
    ["<answer>\\boxed{5}</answer>", "<answer>so \\boxed{5}.</answer>", "\\boxed{\\overline{3}}",
     "\\boxed{\\emptyset}", "\\boxed{\\underline{x}}", "\\boxed{\\left(1, 2\\right)}"],
)
def test_format_still_accepts_real_answers(answer):
    assert check_format("<think>a</think>" + answer).score == 1.0


# --------------------------------------------------------------------------- countdown

GOLD = {"numbers": [3, 7, 12, 25], "target": 94}


def _c(ans: str) -> str:
    return f"<think>t</think><answer>{ans}</answer>"


@pytest.mark.parametrize(
    "answer",
    ["3 * 25 + 7 + 0b1100", "3 * 25 + 7 + 0o14", "3 * 25 + 7 + 1_2", "3 * 25 + 7 + 12 # then check 25*3",
     "3 * 25 + 7 + 12 #"],
)
def test_countdown_rejects_python_only_literals_and_comments(answer):
    g = grade("countdown", _c(answer), GOLD)
    assert g.score == 0.0 and "not an arithmetic expression" in g.reason, g


@pytest.mark.parametrize("answer", ["3 ⋅ 25 + 7 + 12", "3 ∗ 25 + 7 + 12", "3 \\ast 25 + 7 + 12", "3\u00a0*\u00a025 + 7 + 12"])
def test_countdown_reads_more_typography(answer):
    assert grade("countdown", _c(answer), GOLD).score == 1.0


def test_countdown_exactly_once_must_be_a_bool():
    # bool("false") is True: a quoted value silently made the puzzle stricter.
    g = grade("countdown", _c("3 * 25 + 7 + 12"), {"numbers": [3, 7, 12, 25, 1], "target": 94}, exactly_once="false")
    assert g.score is None and "exactly_once" in g.reason


# --------------------------------------------------------------------------- rubric and base


@pytest.mark.parametrize("weights", [{"math": float("inf"), "format": 1.0}, {"math": 1e308, "format": 1e308}])
def test_rubric_rejects_weights_whose_sum_is_not_finite(weights):
    # inf/inf is NaN, which the clamp turned into a silent 0 for a right answer.
    with pytest.raises(ValueError, match="finite"):
        Rubric(weights)


class _BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


@register_grader("test-audit-badstr")
def _badstr(completion, gold, **meta):
    raise _BadStr()


@register_grader("test-audit-fraction")
def _fraction(completion, gold, **meta):
    return Grade(Fraction(1, 2))


def test_exception_with_a_failing_str_is_still_an_infrastructure_error():
    g = grade("test-audit-badstr", "x", None)  # used to raise RuntimeError out of the grader call
    assert g.score is None and "_BadStr" in g.reason


def test_non_float_score_becomes_a_float():
    g = grade("test-audit-fraction", "x", None)
    assert g.score == 0.5 and type(g.score) is float  # a Fraction was written to JSON as "1/2"
    assert json.dumps(g.to_dict(), default=str).count('"score": 0.5') == 1


# --------------------------------------------------------------------------- pool


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _orphan_daemon_then_hang(pidfile: str) -> None:
    # The shell exits at once: the sleep is orphaned, in a session of its own, out of killpg's reach.
    subprocess.run(["sh", "-c", f"setsid sleep 60 & echo $! > {pidfile}"], check=True)
    time.sleep(60)


@pytest.fixture(scope="module")
def pool():
    from thinkgym.verifiers.pool import GraderPool

    p = GraderPool(workers=1, timeout_s=5, preload=())
    assert p.wait_ready(60)
    yield p
    p.close()


def test_timeout_kills_a_descendant_that_left_the_process_group(pool, tmp_path):
    pidfile = tmp_path / "daemon.pid"
    res = pool.call("test_graders_audit:_orphan_daemon_then_hang", str(pidfile), timeout=2.0)
    assert res.timed_out
    daemon = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(daemon) and time.monotonic() < deadline:
        time.sleep(0.05)
    survived = _alive(daemon)
    if survived:
        os.kill(daemon, 9)
    assert not survived, "a setsid'd descendant outlived the timed-out worker"
    assert pool.call("math:sqrt", 16.0).value == 4.0


def test_worker_failures_are_logged_in_the_caller(pool, caplog):
    with caplog.at_level(logging.ERROR, logger="thinkgym.verifiers.pool"):
        assert "died" in pool.call("os:_exit", 3).error
        assert "ValueError" in pool.call("builtins:int", "x").error
        assert pool.submit_grade("test-audit-badstr", "x", None).result().score is None
    text = caplog.text
    assert "worker died" in text and "ValueError" in text and "test-audit-badstr" in text


@pytest.mark.parametrize("bad", [1e10, float("inf"), float("nan"), -1.0])
def test_timeouts_out_of_range_fail_in_the_caller(pool, bad):
    from thinkgym.verifiers.pool import GraderPool

    with pytest.raises(ValueError, match="timeout"):
        GraderPool(workers=1, timeout_s=bad)
    # 1e10 s overflowed select(): every item became a "bad reply" and the worker was killed.
    with pytest.raises(ValueError, match="timeout"):
        pool.submit_call("math:sqrt", 4.0, timeout=bad)
    assert pool.call("math:sqrt", 4.0).value == 2.0


def test_grade_cli_rejects_a_timeout_too_large_for_the_pool(tmp_path):
    import typer
    from typer.testing import CliRunner

    from thinkgym.verifiers.cli import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    inp = tmp_path / "rows.jsonl"
    inp.write_text(json.dumps({"completion": "<think>a</think>\\boxed{1}"}) + "\n")
    r = CliRunner().invoke(app, ["grade", "-g", "format", "-i", str(inp), "-o", str(tmp_path / "o.jsonl"),
                                 "-q", "--timeout", "1e10"])
    assert r.exit_code == 2 and "--timeout" in r.output, (r.output, r.exception)
