"""`thinkgym eval` on your own data and task params: ``env`` as a .jsonl file or an HF dataset
folder, ``env_kwargs`` as GRPO's, and the contamination gate checking the items actually served."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from thinkgym.config import ConfigError, from_dict, load_config
from thinkgym.sampler.eval import EvalConfig, check_env, check_train_overlap, evaluate
from thinkgym.tasks import make_task
from thinkgym.tasks.contamination import ContaminationError

ROOT = Path(__file__).resolve().parent.parent
ROWS = [
    {"problem": "What is 2 + 3?", "solution": "5", "level": 1},
    {"problem": "What is 7 * 6?", "solution": "42", "level": 2},
    {"problem": "What is 9 - 4?", "solution": "5", "level": 1},
]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    pytest.importorskip("torch")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


class Oracle:
    """Stands in for a model (a random tiny one answers nothing right): answers each prompt's
    question from ``answers`` (question -> answer; anything else gets "0") and records the
    questions (user turns) it was asked. Tokenizer, chat template, env, grader and the harness are real."""

    backend = "oracle"

    def __init__(self, tokenizer, answers):
        self.tokenizer, self.answers, self.asked = tokenizer, answers, []

    def generate(self, prompts, cfg, seeds=None):
        from thinkgym.sampler.types import Completion

        out = []
        for p in prompts:
            q = re.search(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", self.tokenizer.decode(p), re.S).group(1)
            self.asked.append(q)
            reply = f"<think>\nok\n</think>\n<answer>{self.answers.get(q, '0')}</answer>"
            ids = self.tokenizer.encode(reply, add_special_tokens=False)
            out.append([Completion(prompt_ids=list(p), token_ids=ids, logprobs=[0.0] * len(ids), text=reply,
                                   finish_reason="stop")])
        return out


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_on_a_jsonl_file_with_its_field_mapping(tmp_path, tok):
    data = write_jsonl(tmp_path / "q.jsonl", ROWS)
    answers = {r["problem"]: r["solution"] for r in ROWS[:2]}  # the third is answered wrong
    cfg = from_dict(EvalConfig, {"model": "m", "env": str(data), "n": 2, "limit": 3, "output_dir": str(tmp_path / "e"),
                                 "env_kwargs": {"task_params": {"question_field": "problem", "answer_field": "solution"}}})
    oracle = Oracle(tok, answers)
    summary = evaluate(cfg, sampler=oracle)
    assert summary["env"] == str(data) and summary["problems"] == 3 and summary["samples"] == 6
    assert summary["pass@1"] == pytest.approx(2 / 3) and summary["config"]["env_kwargs"] == cfg.env_kwargs
    rows = [json.loads(line) for line in (tmp_path / "e" / "samples.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in rows] == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert {r["env_id"] for r in rows} == {str(data)}
    assert sorted(set(oracle.asked)) == sorted(r["problem"] for r in ROWS)
    # Without the field mapping the file's rows have no 'question': said before anything samples.
    with pytest.raises(ConfigError, match=r"env: '.*q\.jsonl' could not be built: DatasetRowError: .*missing field 'question'"):
        check_env(EvalConfig(model="m", env=str(data)))
    with pytest.raises(ConfigError, match=r"limit: items 0\.\.4 .* has 3 items"):
        check_env(EvalConfig(model="m", env=str(data), limit=5, env_kwargs=cfg.env_kwargs))


def test_eval_on_an_hf_dataset_folder(tmp_path, tok):
    folder = tmp_path / "ds"
    (folder / "data").mkdir(parents=True)
    write_jsonl(folder / "data" / "test.jsonl", [{"question": r["problem"], "answer": r["solution"]} for r in ROWS])
    oracle = Oracle(tok, {r["problem"]: r["solution"] for r in ROWS})
    summary = evaluate(EvalConfig(model="m", env=str(folder), n=1, limit=3, output_dir=str(tmp_path / "e")), sampler=oracle)
    assert summary["env"] == str(folder) and summary["pass@1"] == 1.0 and summary["problems"] == 3


def test_env_kwargs_reach_a_registered_env_and_its_contamination_gate(tmp_path, tok):
    """The eval serves the items of ``gymnasium.make(env, **env_kwargs)``, and the gate checks those."""
    kw = {"task_params": {"n_operands": [2, 2], "max_value": 30}, "seed": 2}
    src = make_task("arithmetic", seed=2, n_operands=[2, 2], max_value=30)
    items = [src[i] for i in range(4)]
    oracle = Oracle(tok, {it["question"]: it["answer"] for it in items})
    cfg = EvalConfig(model="m", env="thinkgym/Arithmetic-v0", env_kwargs=kw, n=1, limit=4, output_dir=str(tmp_path / "e"))
    summary = evaluate(cfg, sampler=oracle)
    assert oracle.asked == [it["question"] for it in items] and summary["pass@1"] == 1.0
    # Training on exactly these items: refused, and nothing is left in output_dir.
    train = write_jsonl(tmp_path / "train.jsonl", items)
    cfg = EvalConfig(model="m", env="thinkgym/Arithmetic-v0", env_kwargs=kw, limit=4, train_task=str(train),
                     output_dir=str(tmp_path / "f" / "g"))
    with pytest.raises(ContaminationError):
        evaluate(cfg, sampler=Oracle(tok, {}))
    assert not (tmp_path / "f").exists()
    # The env's default items (no env_kwargs) are other ones: the gate passes.
    plain = EvalConfig(model="m", env="thinkgym/Arithmetic-v0", limit=4, train_task=str(train))
    assert check_train_overlap(plain, range(4))["rate"] == 0.0


def test_a_file_env_is_gated_against_a_training_file(tmp_path, tok):
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": r["problem"], "answer": r["solution"]} for r in ROWS])
    cfg = EvalConfig(model="m", env=str(data), limit=3, train_task=str(data), output_dir=str(tmp_path / "e"))
    with pytest.raises(ContaminationError):
        evaluate(cfg, sampler=Oracle(tok, {}))
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("kw, loaded, built", [
    ({"env_kwargs": [1, 2]}, "config: env_kwargs: expected a mapping", "env_kwargs must be a mapping"),
    ({"env_kwargs": {"task_params": 3}}, "config: env_kwargs: task_params must be a mapping", None),
    ({"env": ""}, "config: env must be an env id or the path", None),
])
def test_env_kwargs_type_errors_are_caught_when_the_config_loads(kw, loaded, built):
    with pytest.raises(ConfigError, match=loaded):
        from_dict(EvalConfig, {"model": "m", **kw})
    with pytest.raises(ValueError, match=built or loaded.removeprefix("config: ")):  # an EvalConfig built in code
        EvalConfig(model="m", **kw).validate()


def test_env_errors_name_the_key(tmp_path):
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "answer": "1"}])
    (tmp_path / "notes.txt").write_text("hi\n")
    cases = [
        ({"env": str(tmp_path / "nope.jsonl")},
         r"env: unknown env id '.*nope\.jsonl', and no such file or folder: give a registered env id \(.*"
         r"thinkgym/Arithmetic-v0.*\) or the path of a \.jsonl file or HF dataset folder"),
        ({"env": str(tmp_path / "notes.txt")}, r"env: '.*notes\.txt' is a file but not a dataset file"),
        ({"env": str(data), "env_kwargs": {"task": "arithmetic"}}, r"env_kwargs: 'task' does not apply"),
        ({"env": str(data), "env_kwargs": {"task_params": {"path": "x"}}}, r"env_kwargs: task_params\.path does not apply"),
        ({"env": str(data), "env_kwargs": {"grader": "nope"}}, r"env_kwargs: '.*q\.jsonl' could not be built with env_kwargs"),
        ({"env": "thinkgym/Arithmetic-v0", "env_kwargs": {"max_turns": 3}},
         r"env_kwargs: 'thinkgym/Arithmetic-v0' could not be built with env_kwargs \{'max_turns': 3\}: TypeError"),
        ({"env": "thinkgym/Arithmetic-v0", "env_kwargs": {"task_params": {"max_value": -5}}}, r"env_kwargs: .*max_value"),
    ]
    for kw, msg in cases:
        with pytest.raises(ConfigError, match=msg) as e:
            check_env(EvalConfig(model="m", limit=1, **kw))
        assert "\n" not in str(e.value)


def test_example_config_evaluates_the_sft_examples_distribution():
    import yaml

    sft = yaml.safe_load((ROOT / "examples" / "sft-tiny-cpu.yaml").read_text())
    cfg = load_config(EvalConfig, ROOT / "examples" / "eval-tiny-cpu.yaml", {"model": "m"})
    assert cfg.env == "thinkgym/Arithmetic-v0" and sft["tasks"] == ["arithmetic"]
    assert cfg.env_kwargs["task_params"] == sft["task_params"]["arithmetic"]
    # Held out from what SFT trains on and what it picks best/ by.
    assert cfg.env_kwargs["seed"] not in (sft["task_seed"], sft["eval_env_kwargs"]["seed"])
    check_env(cfg)


# -- the command line ---------------------------------------------------------------------------


def run_eval(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "thinkgym.cli", "eval", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_cli_env_path_and_env_kwargs_refusals_are_one_line(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": r["problem"], "answer": r["solution"]} for r in ROWS])
    out = tmp_path / "out" / "e"
    # A file env gated against itself: refused (exit 3) before the model loads, no output_dir made.
    p = run_eval("--model", tiny_model_dir, "--env", data, "--limit", 3, "--train-task", data, "-o", out)
    assert p.returncode == 3 and "refusing to evaluate" in p.stderr and "contamination" in p.stderr.lower(), p.stderr
    assert not (tmp_path / "out").exists()
    p = run_eval("--model", tiny_model_dir, "--env", tmp_path / "nope.jsonl", "-o", out)
    assert p.returncode == 2 and "no such file or folder" in one_line(p.stderr), p.stderr
    p = run_eval("--model", tiny_model_dir, "--set", "env_kwargs=[1]", "-o", out)
    assert p.returncode == 2 and one_line(p.stderr) == "error: --set env_kwargs=[1]: expected a mapping, got [1]"
    p = run_eval("--model", tiny_model_dir, "--set", "env_kwargs={max_turns: 2}", "-o", out)
    assert p.returncode == 2 and one_line(p.stderr).startswith("error: --set env_kwargs={max_turns: 2}: "), p.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_evaluates_a_jsonl_file_with_env_kwargs_then_refuses_to_overwrite(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "q.jsonl", ROWS)
    out = tmp_path / "e"
    common = ("--model", tiny_model_dir, "--backend", "hf", "--threads", 1, "--n", 2, "--limit", 2,
              "--max-tokens", 4, "-o", out)
    mapping = "env_kwargs={task_params: {question_field: problem, answer_field: solution}, grader: format}"
    p = run_eval(*common, "--env", data, "--set", mapping)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["env"] == str(data) and summary["samples"] == 4 and summary["config"]["env_kwargs"]["grader"] == "format"
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {r["index"] for r in rows} == {0, 1} and {r["env_id"] for r in rows} == {str(data)}
    before = (out / "summary.json").read_text()
    p = run_eval(*common, "--env", "thinkgym/Arithmetic-v0")
    line = one_line(p.stderr)
    assert p.returncode == 2 and re.fullmatch(
        rf"error: --output-dir: '{re.escape(str(out))}' holds an earlier eval \(summary\.json, samples\.jsonl\); "
        r"set overwrite: true \(--set overwrite=true\) to replace it, or choose another output_dir", line), line
    assert (out / "summary.json").read_text() == before


def test_overwrite_replaces_an_earlier_eval_only_when_asked(tmp_path, tok, capfd):
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": r["problem"], "answer": r["solution"]} for r in ROWS])
    out = tmp_path / "e"
    oracle = Oracle(tok, {r["problem"]: r["solution"] for r in ROWS})
    evaluate(EvalConfig(model="m", env=str(data), n=1, limit=3, output_dir=str(out)), sampler=oracle)
    first = (out / "summary.json").read_text()
    other = EvalConfig(model="m", env="thinkgym/Arithmetic-v0", n=1, limit=2, output_dir=str(out))
    with pytest.raises(ConfigError, match="holds an earlier eval"):
        evaluate(other, sampler=oracle)
    assert (out / "summary.json").read_text() == first and len((out / "samples.jsonl").read_text().splitlines()) == 3
    other.overwrite = True
    summary = evaluate(other, sampler=oracle)
    assert "overwrite: replacing an earlier eval's summary.json, samples.jsonl" in capfd.readouterr().err
    assert json.loads((out / "summary.json").read_text())["env"] == "thinkgym/Arithmetic-v0" == summary["env"]
    assert len((out / "samples.jsonl").read_text().splitlines()) == 2
