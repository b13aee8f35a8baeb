"""``thinkgym grade``: parallel grading of JSONL files; exit 0 on wrong answers, 2 on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import typer
from typer.testing import CliRunner

from thinkgym.verifiers.cli import register


@pytest.fixture(scope="module")
def app():
    a = typer.Typer()
    register(a)

    @a.command("noop")  # a second command keeps typer from collapsing the app into `grade`
    def _noop() -> None:
        pass

    return a


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


MATH_ROWS = [
    {"id": "a", "completion": "<think>t</think>\\boxed{\\frac{1}{2}}", "gold": "0.5"},
    {"id": "b", "completion": "<think>t</think>\\boxed{3}", "gold": 4},
    {"id": "c", "completion": "<think>t</think>\\boxed{\\sum_{j=1}^{9999}\\sum_{k=1}^{9999}\\sin(jk)}", "gold": "1"},
    {"id": "d", "completion": "<think>\\boxed{2}</think>", "gold": [2]},
    {"id": "e", "completion": "<think>t</think>\\boxed{2, 3}", "gold": ["3", "2"]},
]


def test_math_file_graded_in_order_with_summary(app, tmp_path):
    inp = _write(tmp_path / "rows.jsonl", MATH_ROWS)
    out = tmp_path / "out" / "graded.jsonl"
    t0 = time.monotonic()
    r = CliRunner().invoke(app, ["grade", "--grader", "math", "--input", str(inp), "--output", str(out),
                                 "--workers", "2", "--timeout", "1.5", "--quiet"])
    assert r.exit_code == 0, r.output
    assert time.monotonic() - t0 < 60
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in rows] == ["a", "b", "c", "d", "e"]
    assert [x["score"] for x in rows] == [1.0, 0.0, None, 0.0, 1.0]
    assert rows[0]["extracted"] == "\\frac{1}{2}" and rows[0]["error"] is None and rows[0]["elapsed_s"] >= 0
    assert "timed out" in rows[2]["error"] and rows[2]["grader"] == "math@3"
    assert rows[1]["gold"] == 4 and rows[1]["completion"] == MATH_ROWS[1]["completion"]  # input kept
    assert "graded 5 rows with math: 2 right, 2 wrong, 0 partial, 1 errors" in r.output
    assert not (tmp_path / "out" / "graded.jsonl.partial").exists()


@pytest.mark.parametrize(
    "lines, message",
    [
        ([MATH_ROWS[0], "{not json", MATH_ROWS[1]], "rows.jsonl:2: invalid JSON"),
        ([MATH_ROWS[0], {"id": 1, "completion": "x"}], "rows.jsonl:2: missing field 'gold'"),
        ([{"id": 1, "gold": "1"}], "rows.jsonl:1: missing field 'completion'"),
        ([{"id": 1, "completion": 5, "gold": "1"}], "rows.jsonl:1: field 'completion' has type int"),
        ([{"id": 1, "completion": "x", "gold": None}], "rows.jsonl:1: field 'gold' has type NoneType"),
        (["[1, 2]"], "rows.jsonl:1: a row must be a JSON object"),
        # Python's json would read these; a NaN gold then "equals" a NaN answer (1.0).
        (['{"completion": "<answer>NaN</answer>", "gold": NaN}'], "rows.jsonl:1: invalid JSON (NaN is not a JSON value"),
        (['{"completion": "x", "gold": -Infinity}'], "rows.jsonl:1: invalid JSON (-Infinity is not a JSON value"),
    ],
)
def test_bad_input_names_file_line_and_field(app, tmp_path, lines, message):
    inp = _write(tmp_path / "rows.jsonl", lines)
    out = tmp_path / "graded.jsonl"
    r = CliRunner().invoke(app, ["grade", "-g", "math", "-i", str(inp), "-o", str(out), "-q"])
    assert r.exit_code == 2
    assert message in r.output
    assert not out.exists()


def test_non_utf8_input_is_a_clear_error(app, tmp_path):
    inp = tmp_path / "rows.jsonl"
    inp.write_bytes(json.dumps(MATH_ROWS[0]).encode() + b"\n" + b'{"completion": "\xff", "gold": "1"}\n')
    r = CliRunner().invoke(app, ["grade", "-g", "math", "-i", str(inp), "-o", str(tmp_path / "o.jsonl"), "-q"])
    assert r.exit_code == 2 and "rows.jsonl:2: not UTF-8" in r.output


def test_unknown_grader_and_missing_file(app, tmp_path):
    inp = _write(tmp_path / "rows.jsonl", MATH_ROWS[:1])
    r = CliRunner().invoke(app, ["grade", "-g", "nope", "-i", str(inp), "-o", str(tmp_path / "o.jsonl")])
    assert r.exit_code == 2 and "unknown grader 'nope'" in r.output
    r = CliRunner().invoke(app, ["grade", "-g", "math", "-i", str(tmp_path / "absent.jsonl"), "-o", str(tmp_path / "o.jsonl")])
    assert r.exit_code == 2 and "absent.jsonl: no such file" in r.output


def test_row_fields_named_like_pool_arguments_stay_row_metadata(app, tmp_path):
    """A row's own "timeout" or "grader" field must not lift the budget or pick the grader."""
    rows = [{"id": "slow", "completion": "<think>t</think>\\boxed{\\sum_{j=1}^{9999}\\sum_{k=1}^{9999}\\sin(jk)}", "gold": "1", "timeout": 100000},
            {"id": "g", "completion": "<think>t</think>\\boxed{2}", "gold": "2", "grader": "format"}]
    inp = _write(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "o.jsonl"
    t0 = time.monotonic()
    r = CliRunner().invoke(app, ["grade", "-g", "math", "-i", str(inp), "-o", str(out), "-q", "--timeout", "1"])
    assert r.exit_code == 0, r.output
    assert time.monotonic() - t0 < 30
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert got[0]["score"] is None and "timed out" in got[0]["error"]
    assert got[1]["score"] == 1.0 and got[1]["grader"] == "math@3"
    assert got[1]["input_grader"] == "format"  # the row's own value is kept, not overwritten


def test_unwritable_output_is_a_clear_error(app, tmp_path):
    inp = _write(tmp_path / "rows.jsonl", MATH_ROWS[:1])
    (tmp_path / "a_file").write_text("")
    r = CliRunner().invoke(app, ["grade", "-g", "math", "-i", str(inp), "-o", str(tmp_path / "a_file" / "o.jsonl"), "-q"])
    assert r.exit_code == 2 and "cannot write the output" in r.output, r.output


def test_output_that_is_a_directory_fails_before_grading(app, tmp_path, monkeypatch):
    def no_grading(*a, **k):
        raise AssertionError("graded although the output cannot be written")

    monkeypatch.setattr("thinkgym.verifiers.pool.GraderPool", no_grading)
    inp = _write(tmp_path / "rows.jsonl", MATH_ROWS[:1])
    (tmp_path / "outdir").mkdir()
    for out, message in [(tmp_path / "outdir", "it is a directory"),
                         (tmp_path / "rows.jsonl" / "x" / "o.jsonl", "rows.jsonl is not a directory")]:
        r = CliRunner().invoke(app, ["grade", "-g", "math", "-i", str(inp), "-o", str(out), "-q"])
        assert r.exit_code == 2 and "cannot write the output" in r.output and message in r.output, r.output
        assert "Traceback" not in r.output
    assert list((tmp_path / "outdir").iterdir()) == []
    assert inp.read_text() == json.dumps(MATH_ROWS[0]) + "\n"


def test_failed_final_rename_keeps_the_graded_rows(app, tmp_path, monkeypatch):
    from pathlib import Path

    def refuse(self, target):
        raise IsADirectoryError(21, "Is a directory")

    monkeypatch.setattr(Path, "replace", refuse)
    inp = _write(tmp_path / "rows.jsonl", MATH_ROWS[:2])
    r = CliRunner().invoke(app, ["grade", "-g", "math", "-i", str(inp), "-o", str(tmp_path / "o.jsonl"), "-q", "-w", "1"])
    assert r.exit_code == 2 and "the graded rows are in" in r.output, r.output
    kept = [json.loads(x) for x in (tmp_path / "o.jsonl.partial").read_text().splitlines()]
    assert [x["score"] for x in kept] == [1.0, 0.0]


def test_lone_surrogate_escape_is_written_back_unchanged(app, tmp_path):
    inp = tmp_path / "rows.jsonl"
    inp.write_text('{"completion": "</think>\\\\boxed{4} \\ud800 é", "gold": "4", "note": "\\udc00"}\n', encoding="utf-8")
    out = tmp_path / "o.jsonl"
    r = CliRunner().invoke(app, ["grade", "-g", "math", "-i", str(inp), "-o", str(out), "-q", "-w", "1"])
    assert r.exit_code == 0, r.output
    text = out.read_text(encoding="utf-8")
    assert "\\ud800 é" in text  # the escape is kept and other text stays readable
    row = json.loads(text)
    assert row["completion"] == "</think>\\boxed{4} \ud800 é" and row["note"] == "\udc00" and row["score"] == 1.0


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"completion": "x", "gold": ' + "1" * 5000 + "}", "rows.jsonl:2: an integer with more than"),
        ('{"completion": "x", "gold": ' + "[" * 100000 + "]" * 100000 + "}", "rows.jsonl:2: JSON nested too deeply"),
    ],
)
def test_json_that_python_refuses_is_a_clear_error(app, tmp_path, line, message):
    inp = _write(tmp_path / "rows.jsonl", [MATH_ROWS[0], line])
    out = tmp_path / "o.jsonl"
    r = CliRunner().invoke(app, ["grade", "-g", "math", "-i", str(inp), "-o", str(out), "-q"])
    assert r.exit_code == 2 and message in r.output, r.output
    assert not out.exists()


def test_countdown_gold_object_is_accepted(app, tmp_path):
    rows = [{"id": "ok", "completion": "<think>t</think><answer>12 + 1</answer>", "gold": {"numbers": [12, 1, 12, 9], "target": 13}},
            {"id": "str", "completion": "<think>t</think><answer>12 + 1</answer>", "gold": '{"numbers": [12, 1], "target": 13}'},
            {"id": "bad", "completion": "<think>t</think><answer>12 + 1</answer>", "gold": {"numbers": [12, 1.9], "target": 13}}]
    inp = _write(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "o.jsonl"
    r = CliRunner().invoke(app, ["grade", "-g", "countdown", "-i", str(inp), "-o", str(out), "-q", "-w", "1"])
    assert r.exit_code == 0, r.output
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["score"] for x in got] == [1.0, 1.0, None]
    assert got[0]["gold"] == rows[0]["gold"] and "numbers must be integers" in got[2]["error"]


def test_input_columns_named_like_results_are_kept_with_a_prefix(app, tmp_path):
    row = {"id": "a", "completion": "<think>t</think>\\boxed{4}", "gold": "4", "grader": "x", "score": 0.5,
           "reason": "r", "error": "e", "extracted": "z", "elapsed_s": 9, "input_score": "older", "input_reason": "kept"}
    inp = _write(tmp_path / "rows.jsonl", [row])
    out = tmp_path / "o.jsonl"
    r = CliRunner().invoke(app, ["grade", "-g", "math", "-i", str(inp), "-o", str(out), "-q", "-w", "1"])
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())
    assert got["score"] == 1.0 and got["grader"] == "math@3" and got["error"] is None
    assert {k: got["input_" + k] for k in ("grader", "score", "reason", "error", "extracted", "elapsed_s")} == \
        {"grader": "x", "score": 0.5, "reason": "r", "error": "e", "extracted": "z", "elapsed_s": 9}
    assert got["input_input_score"] == "older" and got["input_input_reason"] == "kept"
    # Re-grading the output keeps both rounds of results.
    again = tmp_path / "o2.jsonl"
    r = CliRunner().invoke(app, ["grade", "-g", "format", "-i", str(out), "-o", str(again), "-q", "-w", "1"])
    assert r.exit_code == 0, r.output
    got2 = json.loads(again.read_text())
    assert got2["grader"] == "format@2" and got2["input_grader"] == "math@3" and got2["input_input_grader"] == "x"
    assert got2["input_input_input_score"] == "older"
    assert got2["input_line"] == 1 and got2["line"] == 1
    assert len(got2) == len(got) + 7  # every column survived, none merged (7 result columns, line included)


def test_format_rows_need_no_gold(app, tmp_path):
    inp = _write(tmp_path / "rows.jsonl", [{"completion": "<think>a</think>\\boxed{1}"}, {"completion": "no tags"}])
    out = tmp_path / "o.jsonl"
    r = CliRunner().invoke(app, ["grade", "-g", "format", "-i", str(inp), "-o", str(out), "-q", "-w", "1"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    # No id is invented: the line number is its own column, so it never collides with a row's id.
    assert [x["score"] for x in rows] == [1.0, 0.0] and [x["line"] for x in rows] == [1, 2]
    assert all("id" not in x for x in rows)


@pytest.mark.sandbox
def test_code_rows_use_the_code_grader(app, tmp_path):
    tests = {"type": "function", "entry_point": "add", "cases": [{"args": [1, 2], "expected": 3}, {"args": [2, 2], "expected": 4}]}
    rows = [
        {"id": "ok", "program": "def add(a, b):\n    return a + b\n", "tests": tests},
        {"id": "bad", "program": "def add(a, b):\n    return 3\n", "tests": tests},
    ]
    inp = _write(tmp_path / "code.jsonl", rows)
    out = tmp_path / "o.jsonl"
    r = CliRunner().invoke(app, ["grade", "-g", "code", "-i", str(inp), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["score"] for x in got] == [1.0, 0.0] and got[0]["elapsed_s"] > 0
    bad = _write(tmp_path / "bad.jsonl", [{"id": 1, "program": "x = 1"}])
    r = CliRunner().invoke(app, ["grade", "-g", "code", "-i", str(bad), "-o", str(out), "-q"])
    assert r.exit_code == 2 and "bad.jsonl:1: missing field 'tests'" in r.output


def test_real_entry_point(tmp_path):
    inp = _write(tmp_path / "rows.jsonl", MATH_ROWS[:2])
    out = tmp_path / "o.jsonl"
    p = subprocess.run([sys.executable, "-m", "thinkgym.cli", "grade", "--grader", "math", "--input", str(inp),
                        "--output", str(out), "--workers", "1"],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS="120"))
    assert p.returncode == 0, p.stderr
    assert "1 right, 1 wrong" in p.stdout
    assert len(out.read_text().splitlines()) == 2
