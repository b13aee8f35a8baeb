"""`thinkgym tasks`, `envs`, `sample-tasks` and `contamination`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thinkgym.cli import app
from thinkgym.tasks import make_task

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_tasks_lists_builtins_with_graders():
    r = invoke("tasks")
    assert r.exit_code == 0, r.output
    for name in ("arithmetic", "countdown", "word_problems", "latex_math", "code", "format", "jsonl", "hf_dataset"):
        assert name in r.output
    rows = {t["name"]: t for t in json.loads(invoke("tasks", "--json").output)}
    assert rows["countdown"]["grader"] == "countdown" and rows["code"]["grader"] == "code"
    assert "n_operands" in rows["arithmetic"]["params"]


def test_envs_lists_ids():
    r = invoke("envs", "--json")
    assert r.exit_code == 0, r.output
    rows = {e["id"]: e for e in json.loads(r.output)}
    assert rows["thinkgym/CodeRetry-v0"]["kind"] == "MultiTurnEnv"
    assert rows["thinkgym/CalculatorTool-v0"]["kind"] == "ToolEnv"
    assert rows["thinkgym/Countdown-v0"]["task"] == "countdown"
    assert "thinkgym/Arithmetic-v0" in invoke("envs").output


def test_sample_tasks_text_json_params_and_seed():
    r = invoke("sample-tasks", "arithmetic", "-n", "2", "--seed", "4", "--start", "10", "--param", "n_operands=3")
    assert r.exit_code == 0, r.output
    src = make_task("arithmetic", seed=4, n_operands=3)
    assert f"question: {src[10]['question']}" in r.output and f"question: {src[11]['question']}" in r.output
    assert "index=12" not in r.output and "solution:\n<think>" in r.output
    r = invoke("sample-tasks", "countdown", "-n", "3", "--json", "-p", "exactly_once=true", "-p", "n_numbers=[4,4]")
    lines = [json.loads(x) for x in r.output.strip().splitlines()]
    assert [x["index"] for x in lines] == [0, 1, 2]
    assert all(len(x["answer"]["numbers"]) == 4 and x["metadata"]["grader_kwargs"] == {"exactly_once": True} for x in lines)
    assert lines[0]["question"] == make_task("countdown", exactly_once=True, n_numbers=[4, 4])[0]["question"]
    # An env id samples its task with the env's knobs.
    r = invoke("sample-tasks", "thinkgym/CalculatorTool-v0", "-n", "1", "--json")
    item = json.loads(r.output)
    assert item["question"] == make_task("arithmetic", n_operands=[3, 5], max_value=1000)[0]["question"]


def test_sample_tasks_from_jsonl_and_errors(tmp_path):
    p = tmp_path / "mine.jsonl"
    p.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n")
    r = invoke("sample-tasks", str(p))
    assert r.exit_code == 0 and "question: 2+2?" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok", "answer": 1}\n{"question": "no answer"}\n')
    r = invoke("sample-tasks", str(bad))
    assert r.exit_code == 2 and "bad.jsonl:2: missing field 'answer'" in r.output
    r = invoke("sample-tasks", "nonexistent_task")
    assert r.exit_code == 2 and "neither a registered task" in r.output
    r = invoke("sample-tasks", "arithmetic", "--param", "n_operands=1")
    assert r.exit_code == 2 and "n_operands must be >= 2" in r.output
    r = invoke("sample-tasks", "arithmetic", "--param", "oops")
    assert r.exit_code == 2 and "KEY=VALUE" in r.output


def test_contamination_command_exit_codes(tmp_path):
    r = invoke("contamination", "--train", "countdown", "--eval", "countdown", "--train-limit", "300",
               "--eval-limit", "50", "--train-seed", "0", "--eval-seed", "0", "--show", "2")
    assert r.exit_code == 1, r.output
    assert "50 of 50 eval items (100.00%)" in r.output and "eval #0:" in r.output and "FAIL" in r.output
    # Different seeds of arithmetic barely overlap; a 10% threshold passes.
    r = invoke("contamination", "--train", "arithmetic", "--eval", "arithmetic", "--train-limit", "500",
               "--eval-limit", "100", "--threshold", "0.1", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["passed"] and rep["eval_items"] == 100 and rep["train_items"] == 500 and rep["rate"] <= 0.1
    # Files work on either side; a leaked eval question is listed.
    train = tmp_path / "train.jsonl"
    ev = make_task("word_problems", seed=9, size=20)
    rows = [{"question": make_task("word_problems", seed=1)[i]["question"], "answer": "0"} for i in range(30)]
    rows.append({"question": ev[5]["question"], "answer": ev[5]["answer"]})
    train.write_text("".join(json.dumps(x) + "\n" for x in rows))
    r = invoke("contamination", "--train", str(train), "--eval", "word_problems", "--eval-seed", "9",
               "--eval-limit", "20", "--json")
    rep = json.loads(r.output)
    assert [5, 30] in [c[:2] for c in rep["contaminated"]]
    assert r.exit_code == 1
    # Source knobs: a file with other field names, and a task restricted to some templates.
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"problem": ev[5]["question"], "solution": "x"}) + "\n")
    r = invoke("contamination", "--train", str(other), "--train-param", "question_field=problem",
               "--train-param", "answer_field=solution", "--eval", "word_problems", "--eval-seed", "9",
               "--eval-limit", "20", "--eval-param", "difficulty=[0,2]", "--json")
    assert r.exit_code == 1 and [5, 0] in [c[:2] for c in json.loads(r.output)["contaminated"]]


@pytest.mark.parametrize("cmd", ["tasks", "envs", "sample-tasks", "contamination"])
def test_help_is_useful(cmd):
    r = invoke(cmd, "--help")
    assert r.exit_code == 0
    assert len(r.output) > 300 and "Usage" in r.output
    if cmd == "sample-tasks":
        assert "--param" in r.output and "Example" in r.output
    if cmd == "contamination":
        assert "--threshold" in r.output and "--train-limit" in r.output


def test_installed_script_runs():
    exe = Path(sys.executable).parent / "thinkgym"
    r = subprocess.run([str(exe), "sample-tasks", "latex_math", "-n", "1", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    item = json.loads(r.stdout)
    assert item == {"index": 0, **make_task("latex_math")[0]}


def _no_traceback(r) -> None:
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output


def test_item_generation_errors_are_messages():
    # Reachable in principle, but the search for an instance gives up: a message, not a traceback.
    rare = ["-p", "n_numbers=[6,6]", "-p", "max_number=5", "-p", "target=[15000,15625]"]
    r = invoke("sample-tasks", "countdown", "-n", "1", *rare)
    _no_traceback(r)
    assert r.exit_code == 2 and "'countdown' item 0: countdown: no instance with a target in [15000, 15625]" in r.output
    r = invoke("contamination", "--train", "countdown", "--eval", "countdown", "--train-limit", "5",
               *[x.replace("-p", "--train-param") for x in rare])
    _no_traceback(r)
    assert r.exit_code == 2 and "--train 'countdown' item 0: countdown: no instance" in r.output
    # Out of reach altogether: refused before any item is built, in either command.
    unreachable = ["n_numbers=[2,2]", "max_number=2", "target=[100,200]"]
    r = invoke("sample-tasks", "countdown", "-n", "1", *[a for p in unreachable for a in ("--param", p)])
    assert r.exit_code == 2 and "target [100, 200] is out of reach" in r.output
    r = invoke("contamination", "--train", "countdown", "--eval", "countdown",
               *[a for p in unreachable for a in ("--train-param", p)])
    assert r.exit_code == 2 and "target [100, 200] is out of reach" in r.output


def test_sample_tasks_bounds_knobs_instead_of_recursing():
    r = invoke("sample-tasks", "arithmetic", "--param", "n_operands=3000", "--param", "parens=false")
    _no_traceback(r)
    assert r.exit_code == 2 and "n_operands must be <= 50" in r.output


def test_sample_tasks_output_is_valid_json_and_utf8(tmp_path):
    # A lone surrogate (a valid JSON escape, not valid Unicode) cannot be written as UTF-8.
    p = tmp_path / "s.jsonl"
    p.write_text('{"question": "caf\\u00e9 \\ud800?", "answer": "1", "metadata": {"note": "\\udfff"}}\n')
    r = invoke("sample-tasks", str(p), "--json")
    _no_traceback(r)
    assert r.exit_code == 0, r.output
    item = json.loads(r.output)
    assert item["question"] == "caf\u00e9 \ud800?" and item["metadata"]["note"] == "\udfff"  # nothing lost
    r = invoke("sample-tasks", str(p))
    _no_traceback(r)
    assert r.exit_code == 0 and "question: caf\u00e9 \\ud800?" in r.output
    # NaN has no JSON spelling: a message naming the item and field, not `NaN` in the output. An HF
    # dataset holds it as a float; a JSONL file cannot (JSON has no NaN) and is refused at its line.
    import datasets

    rows = [{"question": "q", "answer": "1", "metadata": {"score": 1.0}},
            {"question": "q", "answer": "2", "metadata": {"score": float("nan")}}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "nan_ds"))
    r = invoke("sample-tasks", str(tmp_path / "nan_ds"), "--json")
    _no_traceback(r)
    assert r.exit_code == 2 and "item 1: metadata.score holds NaN or Infinity" in r.output
    assert json.loads(r.output.splitlines()[0])["answer"] == "1"
    nan = tmp_path / "n.jsonl"
    nan.write_text('{"question": "q", "answer": "1"}\n{"question": "q", "answer": NaN}\n')
    r = invoke("sample-tasks", str(nan), "--json")
    _no_traceback(r)
    assert r.exit_code == 2 and "n.jsonl:2: invalid JSON (NaN is not a JSON value" in r.output


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_version_flag_needs_no_command():
    from thinkgym import __version__

    r = invoke("--version")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == __version__


def test_grade_bad_code_tests_and_directory_input_are_messages(tmp_path):
    # A test spec the sandbox cannot run is bad input: one line naming file, line and field.
    p = tmp_path / "programs.jsonl"
    ok = {"program": "print(1)", "tests": {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "1"}]}}
    bad = {"program": "print(1)", "tests": {"cases": [{"input": 1}]}}
    p.write_text(json.dumps(ok) + "\n" + json.dumps(bad) + "\n")
    r = invoke("grade", "--grader", "code", "--input", str(p), "--output", str(tmp_path / "out.jsonl"), "-q")
    _no_traceback(r)
    assert r.exit_code == 2 and "programs.jsonl:2: field 'tests': code tests 'type' must be" in r.output
    assert not (tmp_path / "out.jsonl").exists()
    r = invoke("grade", "--grader", "math", "--input", str(tmp_path), "--output", str(tmp_path / "out.jsonl"))
    assert r.exit_code == 2 and "is a directory, not a JSONL file" in r.output


def test_sample_tasks_unreadable_hf_folder_is_a_message(tmp_path):
    # Two JSONL files whose columns disagree: `datasets` refuses them with its own exception type.
    (tmp_path / "a.jsonl").write_text(json.dumps({"question": "q", "answer": "1", "x": "s"}) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"question": "q", "answer": "1", "x": [1]}) + "\n")
    for args in (("sample-tasks", str(tmp_path)), ("contamination", "--train", str(tmp_path), "--eval", "arithmetic")):
        r = invoke(*args)
        _no_traceback(r)
        assert r.exit_code == 2 and "cannot read it as an HF dataset" in r.output, r.output


def test_train_config_check_errors_name_the_file(tmp_path):
    cfg = EXAMPLES / "grpo-tiny-cpu.yaml"
    r = invoke("train", "--config", str(cfg), "--model", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "g"))
    _no_traceback(r)
    # The value came from --model, not from the file: the message says so.
    assert r.exit_code == 2 and "error: --model: " in r.output and "is not an HF model directory" in r.output, r.output


def test_sft_mistyped_local_model_path_fails_fast(tmp_path, monkeypatch):
    # `runs/nope` reads like a hub id ORG/NAME; with a runs/ folder here it is a mistyped path.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never reach the hub, whatever the code does
    (tmp_path / "runs").mkdir()
    r = invoke("sft", "--config", str(EXAMPLES / "sft-tiny-cpu.yaml"), "--model", "runs/nope", "-o", "out")
    _no_traceback(r)
    assert r.exit_code == 2 and "'runs/nope': no such directory" in r.output, r.output


def test_sft_resume_without_checkpoint_says_so(tmp_path, monkeypatch):
    import thinkgym.sft_coldstart.train as sft_train

    seen = {}

    def fake_train(cfg):
        seen["resume"] = cfg.resume
        return {"final": "f", "best": "b", "steps": 0, "best_eval_loss": None, "best_eval_accuracy": None,
                "tokens_per_s": 0.0, "seconds": 0.0}

    monkeypatch.setattr(sft_train, "train", fake_train)
    r = invoke("sft", "--config", str(EXAMPLES / "sft-tiny-cpu.yaml"), "-o", str(tmp_path / "run"), "--resume")
    assert r.exit_code == 0, r.output
    assert seen == {"resume": True} and "--resume: no checkpoint in" in r.output and "starting a fresh run" in r.output


def test_tiny_model_does_not_replace_a_model_silently(tmp_path):
    out = tmp_path / "final"
    out.mkdir()
    (out / "config.json").write_text('{"trained": true}')
    r = invoke("tiny-model", "--out", str(out))
    _no_traceback(r)
    assert r.exit_code == 2 and "already holds a model (config.json)" in r.output and "--overwrite" in r.output
    assert (out / "config.json").read_text() == '{"trained": true}'
