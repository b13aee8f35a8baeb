"""SFT from task items refuses worked solutions that are not in the completion format.

A dataset loaded as a ``jsonl`` / ``hf_dataset`` task keeps its ``solution`` column as
``metadata.solution``; MATH's is a prose worked solution, which SFT would otherwise train on
verbatim as the completion.
"""

from __future__ import annotations

import json

import pytest

from thinkgym.sft_coldstart.data import DataError, task_conversations
from thinkgym.verifiers import grade

# MATH-style rows: "problem", a prose "solution" ending in \boxed{}, plus level/type columns.
# Rows 0 and 2 were converted to the completion format, rows 1, 3 and 4 were not.
MATH_ROWS = [
    {"problem": "If $x + 2 = 5$, what is $x$?", "answer": "3", "level": "Level 1", "type": "Algebra",
     "solution": "<think>\nSubtract 2 from both sides: x = 5 - 2 = 3.\n</think>\n\\boxed{3}"},
    {"problem": "What is $\\frac{1}{2} + \\frac{1}{3}$?", "answer": "\\frac{5}{6}", "level": "Level 1", "type": "Prealgebra",
     "solution": "We have $\\frac{1}{2} + \\frac{1}{3} = \\frac{3}{6} + \\frac{2}{6} = \\boxed{\\frac{5}{6}}$."},
    {"problem": "Compute $7 \\cdot 8$.", "answer": "56", "level": "Level 1", "type": "Prealgebra",
     "solution": "<think>\n7 * 8 = 56.\n</think>\n<answer>56</answer>"},
    {"problem": "Solve $2y = 10$.", "answer": "5", "level": "Level 1", "type": "Algebra",
     "solution": "Dividing both sides by 2, we find $y = \\boxed{5}$."},
    {"problem": "What is $3^2$?", "answer": "9", "level": "Level 1", "type": "Algebra",
     "solution": "Squaring, $3^2 = 3 \\cdot 3 = \\boxed{9}$."},
]
BAD = [1, 3, 4]


@pytest.fixture
def math_jsonl(tmp_path):
    p = tmp_path / "math.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in MATH_ROWS))
    return p


def _params(path):
    return {"path": str(path), "question_field": "problem"}


def test_math_style_prose_solutions_are_refused(math_jsonl):
    # The loader keeps the column: this is what SFT would train on.
    from thinkgym.tasks import make_task

    src = make_task("jsonl", **_params(math_jsonl))
    assert src[1]["metadata"]["solution"] == MATH_ROWS[1]["solution"]
    # And these prose solutions fail the format grader the envs use.
    assert all(grade("format", MATH_ROWS[i]["solution"], None).score == 0.0 for i in BAD)

    with pytest.raises(DataError) as e:
        task_conversations("jsonl", 0, 5, params=_params(math_jsonl))
    msg = str(e.value)
    assert msg.startswith("task 'jsonl' (JsonlSource(")
    assert str(math_jsonl) in msg  # the source
    assert "3 of 5 worked solutions" in msg  # how many
    assert "items 1, 3, 4)" in msg  # which
    assert "item 1: expected exactly one <think> followed by one </think>" in msg  # why, for the first
    assert "'We have $\\\\frac{1}{2}" in msg  # a show()-style excerpt of the first failing one
    assert "Convert the solutions" in msg and "require_solution_format: false" in msg  # what to do


def test_the_check_covers_only_the_requested_items(math_jsonl):
    # Items 0 and 2 are in the format: a range holding only them passes.
    convs = task_conversations("jsonl", 0, 1, params=_params(math_jsonl))
    assert convs[0][-1] == {"role": "assistant", "content": MATH_ROWS[0]["solution"]}
    with pytest.raises(DataError, match=r"1 of 2 worked solutions .*items 3\)"):
        task_conversations("jsonl", 2, 2, params=_params(math_jsonl))


def test_many_failures_name_the_first_five(tmp_path):
    p = tmp_path / "prose.jsonl"
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1), "solution": f"Adding, we get $\\boxed{{{i + 1}}}$."}
            for i in range(9)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"9 of 9 worked solutions .*items 0, 1, 2, 3, 4, \.\.\.\)"):
        task_conversations("jsonl", 0, 9, params={"path": str(p)})


def test_opting_out_trains_on_the_solutions_as_they_are(math_jsonl):
    convs = task_conversations("jsonl", 0, 5, params=_params(math_jsonl), require_solution_format=False)
    assert [c[-1]["content"] for c in convs] == [r["solution"] for r in MATH_ROWS]


def test_hf_dataset_solution_column_is_checked(tmp_path):
    import datasets

    datasets.Dataset.from_list(MATH_ROWS).save_to_disk(str(tmp_path / "math"))
    params = {"path": str(tmp_path / "math"), "question_field": "problem"}
    with pytest.raises(DataError, match=r"task 'hf_dataset' \(HFDatasetSource\(.*3 of 5 worked solutions .*items 1, 3, 4\)"):
        task_conversations("hf_dataset", 0, 5, params=params)
    assert len(task_conversations("hf_dataset", 0, 5, params=params, require_solution_format=False)) == 5


# Every built-in procedural source, both forms of the code problems (their answer is a fenced
# python block inside <answer> tags).
BUILTIN = [
    ("arithmetic", {}), ("countdown", {}), ("word_problems", {}), ("latex_math", {}),
    ("code", {"form": "function"}), ("code", {"form": "stdio"}), ("format", {}),
]


@pytest.mark.parametrize("name, params", BUILTIN, ids=[f"{n}-{p.get('form', '')}".rstrip("-") for n, p in BUILTIN])
def test_builtin_sources_solutions_pass(name, params):
    convs = task_conversations(name, 0, 150, seed=1, params=params)
    sols = [c[-1]["content"] for c in convs]
    assert len(sols) == 150
    # They pass the format grader's full (default) check too, not only the lighter SFT check.
    assert all(grade("format", s, None).score == 1.0 for s in sols)
    if name == "code":
        assert all("</think>\n<answer>\n```python\n" in s for s in sols)


def test_solution_check_is_the_structure_graders_need():
    from thinkgym.sft_coldstart.data import solution_format_problem as problem

    ok = [
        "<think>\nx = 3\n</think>\n\\boxed{3}",
        "<think>x = 3</think>\n<answer>3</answer>",
        # Text after the answer: answer graders read it; only a strict format config minds.
        "<think>x = 3</think>\nSo $x = \\boxed{3}$, since 3 + 2 = 5.",
        # A long code answer: no answer-length limit (extract() caps answers at 2000 characters).
        "<think>plan</think>\n<answer>\n```python\n" + "x = 1\n" * 500 + "```\n</answer>",
    ]
    assert [problem(s) for s in ok] == [None] * len(ok)
    assert grade("format", ok[2], None).score == 0.0  # the format grader's default is stricter
    bad = {
        "We have $x = \\boxed{3}$.": "expected exactly one <think> followed by one </think>",
        "<think>x = 3</think> The answer is 3.": "no well-formed answer (\\boxed{} or <answer>) after </think>",
        "<think> </think>\\boxed{3}": "empty think block",
        "Let me see. <think>x = 3</think>\\boxed{3}": "text before <think>",
        "<think>x is 3 or 4</think>\\boxed{3} or \\boxed{4}": "more than one answer",
        "<think>x = 3 \\boxed{3}": "expected exactly one <think> followed by one </think>",
        "<think>x = 3</think><answer> </answer>": "empty answer",
    }
    assert {s: problem(s) for s in bad} == bad


def _cfg(tmp_path, **kw):
    from thinkgym.config import load_config
    from thinkgym.sft_coldstart.train import SFTConfig

    return load_config(SFTConfig, None, {"output_dir": str(tmp_path / "out"), "train_examples": 3, "eval_examples": 2,
                                         "max_length": 512, **kw})


def test_sft_config_field_reaches_the_task_conversations(tiny_model_dir, math_jsonl, tmp_path):
    from transformers import AutoTokenizer

    from thinkgym.config import ConfigError
    from thinkgym.sft_coldstart.data import trainable_text
    from thinkgym.sft_coldstart.train import SFTConfig, _build_data

    assert SFTConfig().require_solution_format is True
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = {"model": str(tiny_model_dir), "tasks": ["jsonl"], "task_params": {"jsonl": _params(math_jsonl)}}
    # Eval items 0-1 are built first: item 1 fails.
    with pytest.raises(DataError, match=r"1 of 2 worked solutions .*items 1\)"):
        _build_data(_cfg(tmp_path, **data), tok)
    train, evals, dropped, eval_dropped = _build_data(_cfg(tmp_path, **data, require_solution_format=False), tok)
    assert (len(train), len(evals), dropped, eval_dropped) == (3, 2, 0, 0)
    assert trainable_text(tok, train[1])[0].startswith(MATH_ROWS[3]["solution"])  # trained as it is
    # A YAML / --set value, type-checked like every field.
    assert _cfg(tmp_path, **data, require_solution_format="false").require_solution_format is False
    with pytest.raises(ConfigError, match="require_solution_format: expected true/false"):
        _cfg(tmp_path, **data, require_solution_format="sometimes")


def test_chat_datasets_are_not_checked(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from thinkgym.sft_coldstart.train import _build_data

    # Chat rows are the user's own format: a prose assistant turn is trained as given.
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"question": r["problem"], "solution": r["solution"]}) + "\n" for r in MATH_ROWS))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    train, evals, _, _ = _build_data(_cfg(tmp_path, model=str(tiny_model_dir), datasets=[str(chat)], eval_fraction=0), tok)
    assert len(train) == 5 and not evals
