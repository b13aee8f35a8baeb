"""A new user's slips: grader arguments, grading columns and golds in datasets, numpy knobs,
``</THINK>`` before a tool call, and grader failures in the eval's numbers."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from thinkgym.envs import SingleTurnEnv  # importing it registers the env ids
from thinkgym.sampler.eval import summarize
from thinkgym.tasks import DatasetRowError, JsonlSource, TaskSource, make_task
from thinkgym.verifiers import Grade, register_grader
from thinkgym.verifiers.base import bool_arg

WRONG = "<think>hmm</think><answer>7</answer>"


@register_grader("test_envs_audit2_echo", version="0", kwargs={"flag": bool_arg})
def _echo(completion, gold, **meta):
    return Grade(1.0, details={"meta": meta})


@register_grader("test_envs_audit2_down", version="0")
def _down(completion, gold, **meta):
    raise RuntimeError("grader backend down")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- 1. env grader_kwargs are checked when the env is built -----------------------------------


@pytest.mark.parametrize("env_id, kwargs, match", [
    ("thinkgym/Countdown-v0", {"exactly_onc": True}, r"'exactly_onc'.*takes: exactly_once, partial_credit"),
    ("thinkgym/Arithmetic-v0", {"timout_s": 3}, r"'timout_s'.*takes: math_config, timeout_s"),
    ("thinkgym/Countdown-v0", {"exactly_once": "false"}, r"'exactly_once': expected true or false"),
    ("thinkgym/CountdownRetry-v0", {"partial_credit": 2}, r"'partial_credit'"),
    ("thinkgym/CalculatorTool-v0", {"timeout": 3}, r"'timeout'"),
])
def test_bad_env_grader_kwargs_are_refused_at_make(env_id, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gym.make(env_id, grader_kwargs=kwargs)


def test_good_env_grader_kwargs_still_reach_the_grader():
    env = SingleTurnEnv("arithmetic", grader="test_envs_audit2_echo", grader_kwargs={"flag": True})
    env.reset(options={"index": 0})
    assert env.step("x")[4]["grade"]["details"]["meta"] == {"flag": True}
    with pytest.raises(ValueError, match=r"'flag': expected true or false, got str 'yes'"):
        SingleTurnEnv("arithmetic", grader="test_envs_audit2_echo", grader_kwargs={"flag": "yes"})
    env2 = gym.make("thinkgym/Arithmetic-v0", grader_kwargs={"timeout_s": 3})
    _, info = env2.reset(options={"index": 0})
    assert env2.step(f"<think>x</think><answer>{info['item']['answer']}</answer>")[1] == 1.0


def test_env_grader_kwargs_are_checked_against_the_env_grader_when_given(tmp_path):
    # With grader= set, the kwargs are that grader's (format has no timeout_s).
    with pytest.raises(ValueError, match=r"grader 'format' takes no argument 'timeout_s'"):
        SingleTurnEnv("arithmetic", grader="format", grader_kwargs={"timeout_s": 3})
    # Without it, against every grader a row of the data chooses.
    p = _jsonl(tmp_path / "d.jsonl", [
        {"question": "What is 2+3?", "answer": "5"},
        {"question": "Reach 3", "answer": {"numbers": [1, 2], "target": 3}, "metadata": {"grader": "countdown"}},
    ])
    with pytest.raises(ValueError, match=r"grader 'countdown' takes no argument 'timeout_s'"):
        SingleTurnEnv("jsonl", task_params={"path": str(p)}, grader_kwargs={"timeout_s": 3})


def test_eval_refuses_bad_grader_kwargs_before_sampling(tmp_path):
    from thinkgym.config import ConfigError
    from thinkgym.sampler.eval import EvalConfig, evaluate

    class NoSampler:
        def __getattr__(self, name):
            raise AssertionError(f"the sampler was used ({name}) before the env was checked")

    cfg = EvalConfig(model="m", env="thinkgym/Countdown-v0", env_kwargs={"grader_kwargs": {"exactly_onc": True}},
                     output_dir=str(tmp_path / "e"))
    with pytest.raises(ConfigError, match=r"env_kwargs: .*bad argument 'exactly_onc'"):
        evaluate(cfg, sampler=NoSampler())


def test_item_grader_kwargs_for_its_own_grader_are_not_forced_on_another():
    # Countdown items carry exactly_once for the countdown grader; the format grader takes no
    # such argument, so it is not passed (and the reset is not refused).
    env = SingleTurnEnv("countdown", task_params={"exactly_once": True}, grader="format")
    env.reset(options={"index": 0})
    assert env.step(WRONG)[1] == 1.0


# -- 2. a dataset column cannot choose the grader; a row's metadata can, checked at load -------


def test_a_top_level_grader_column_is_refused_at_load(tmp_path):
    p = _jsonl(tmp_path / "d.jsonl", [
        {"question": "What is 2+3?", "answer": "5", "grader": "format"},
        {"question": "What is 2+3?", "answer": "4", "grader": "Alice"},
    ])
    with pytest.raises(DatasetRowError, match=r"d\.jsonl:1: column 'grader' would decide how this row is graded"):
        SingleTurnEnv("jsonl", task_params={"path": str(p)})
    with pytest.raises(DatasetRowError, match=r"d\.jsonl:1: column 'grader'"):
        JsonlSource(p, metadata_fields=["grader"])  # asking for it by name does not make it a choice
    # Left out, the column is harmless and the math grader grades.
    env = SingleTurnEnv("jsonl", task_params={"path": str(p), "metadata_fields": []})
    env.reset(options={"index": 0})
    assert env.step(WRONG)[1] == 0.0


def test_a_top_level_grader_kwargs_column_is_refused_at_load(tmp_path):
    p = _jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "5", "grader_kwargs": {"timeout_s": "x"}}])
    with pytest.raises(DatasetRowError, match=r"d\.jsonl:1: column 'grader_kwargs'"):
        JsonlSource(p)


def test_metadata_grader_choice_is_checked_at_load(tmp_path):
    p = _jsonl(tmp_path / "d.jsonl", [
        {"question": "q", "answer": "5", "metadata": {"grader": "format"}},
        {"question": "q", "answer": "4", "metadata": {"grader": "Alice"}},
    ])
    with pytest.raises(DatasetRowError, match=r"d\.jsonl:2: metadata 'grader': unknown grader 'Alice'; known: .*math"):
        JsonlSource(p)
    p = _jsonl(tmp_path / "k.jsonl", [
        {"question": "q", "answer": "5"},
        {"question": "q", "answer": "5", "metadata": {"grader_kwargs": {"timout_s": 3}}},
    ])
    with pytest.raises(DatasetRowError, match=r"k\.jsonl:2: metadata 'grader_kwargs\.timout_s': grader 'math' takes no"):
        JsonlSource(p)
    p = _jsonl(tmp_path / "v.jsonl", [{"question": "q", "answer": "5", "metadata": {"grader_kwargs": {"timeout_s": "3"}}}])
    with pytest.raises(DatasetRowError, match=r"v\.jsonl:1: metadata 'grader_kwargs\.timeout_s': expected a number"):
        JsonlSource(p)
    p = _jsonl(tmp_path / "l.jsonl", [{"question": "q", "answer": "5", "metadata": {"grader_kwargs": [1]}}])
    with pytest.raises(DatasetRowError, match=r"l\.jsonl:1: metadata 'grader_kwargs' must be an object"):
        JsonlSource(p)


def test_the_grader_param_wins_over_a_rows_choice(tmp_path):
    p = _jsonl(tmp_path / "d.jsonl", [{"question": "What is 2+3?", "answer": "5", "metadata": {"grader": "format"}}])
    assert JsonlSource(p)[0]["metadata"]["grader"] == "format"  # the row's documented choice
    s = JsonlSource(p, grader="math")
    assert s[0]["metadata"]["grader"] == "math" and s.graders() == {"math"}
    env = SingleTurnEnv("jsonl", task_params={"path": str(p), "grader": "math"})
    env.reset(options={"index": 0})
    assert env.step(WRONG)[1] == 0.0  # the format grader would have paid 1.0
    with pytest.raises(ValueError, match=r"grader: unknown grader 'nope'"):
        JsonlSource(p, grader="nope")


def test_demo_style_rows_keep_working(tmp_path):
    """Items written back with their metadata (as the demo's held-out file) grade as before."""
    it = make_task("countdown", exactly_once=True)[0]
    meta = {k: v for k, v in it["metadata"].items() if k in ("grader", "grader_kwargs", "reference")}
    p = _jsonl(tmp_path / "heldout.jsonl", [{"question": it["question"], "answer": it["answer"], "metadata": meta}])
    for params in ({"path": str(p)}, {"path": str(p), "grader": "countdown"}):
        env = SingleTurnEnv("jsonl", task_params=params)
        _, info = env.reset(options={"index": 0})
        assert info["item"]["metadata"]["grader"] == "countdown"
        assert info["item"]["metadata"]["grader_kwargs"] == {"exactly_once": True}
        assert env.step(it["metadata"]["solution"])[1] == 1.0


# -- 3. golds a grader cannot read fail at load ------------------------------------------------


@pytest.mark.parametrize("answer, grader, match", [
    (True, None, r"a bool \(True\)"),
    ({"a": 1}, None, r"a dict"),
    ([], None, r"an empty list"),
    ([["1"]], None, r"a list in the list"),
    (["1", " "], None, r"an empty string in the list"),
    ("5", "countdown", r"countdown gold must be"),
    ({"numbers": [1, 2], "target": 2.5}, "countdown", r"countdown gold target must be an integer"),
    ("print(1)", "code", r"code tests"),
    (True, "math+format", r"math: a bool"),
])
def test_golds_the_grader_cannot_read_fail_at_load(tmp_path, answer, grader, match):
    good = {"countdown": {"numbers": [1, 2], "target": 3},
            "code": {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "1"}]}}.get(grader, "1")
    p = _jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": good}, {"question": "q", "answer": answer}])
    kw = {} if grader is None else {"grader": grader}
    with pytest.raises(DatasetRowError, match=r"d\.jsonl:2: field 'answer' is not a gold the .* grader can read: " + match):
        JsonlSource(p, **kw)


def test_golds_the_grader_reads_load(tmp_path):
    p = _jsonl(tmp_path / "d.jsonl", [
        {"question": "q", "answer": 5}, {"question": "q", "answer": 2.5}, {"question": "q", "answer": ["1", 2]},
        {"question": "q", "answer": "\\frac{1}{2}"},
        {"question": "q", "answer": {"numbers": [1, 2], "target": 3}, "metadata": {"grader": "countdown"}},
        {"question": "q", "answer": True, "metadata": {"grader": "format"}},  # format ignores the gold
    ])
    assert len(JsonlSource(p)) == 6


# -- 4. ToolEnv reads </THINK> as the graders do -------------------------------------------------


def test_tool_call_after_an_uppercase_think_close_runs():
    env = gym.make("thinkgym/CalculatorTool-v0")
    env.reset(options={"index": 0})
    obs, reward, terminated, truncated, info = env.step(r"<think>I will write \boxed{} later</THINK><tool>3*3</tool>")
    assert obs == "<result>9</result>" and (terminated, truncated) == (False, False)
    assert info["grade"]["reason"] == "tool call; no final answer yet"


# -- 5. numpy integers as task params ----------------------------------------------------------


def test_numpy_ints_are_task_params_like_ints():
    a = make_task("countdown", max_number=np.int64(25), n_numbers=[np.int32(3), np.int64(4)])
    b = make_task("countdown", max_number=25, n_numbers=[3, 4])
    assert a.params == b.params and type(a.params["max_number"]) is int
    assert a[3] == b[3]  # the same items: item keys print the params
    assert make_task("word_problems", difficulty=np.int64(2)).params["difficulty"] == make_task(
        "word_problems", difficulty=2).params["difficulty"]
    assert make_task("arithmetic", parens=np.bool_(False)).params["parens"] is False
    env = SingleTurnEnv("latex_math", task_params={"max_value": np.int16(10)})
    env.reset(options={"index": 0})


@pytest.mark.parametrize("task, params", [
    ("word_problems", {"difficulty": True}),
    ("word_problems", {"difficulty": [0, True]}),
    ("countdown", {"max_number": np.bool_(True)}),
])
def test_bools_are_refused_where_a_knob_takes_ints(task, params):
    with pytest.raises(ValueError, match="must be an int"):
        make_task(task, **params)


# -- 6. the eval leaves grader failures out of its rates ---------------------------------------


def _s(r, a):
    return {"reward": r, "extracted": a, "format_ok": True, "think_tokens": None, "completion_len": 10, "finish_reason": "stop"}


def test_eval_summary_leaves_infra_errors_out_of_the_denominators():
    groups = [[_s(1.0, "4"), _s(None, "4")], [_s(0.0, "1"), _s(0.0, "1")]]
    out = summarize(groups, [1, 2])
    assert out["accuracy"] == pytest.approx(1 / 3)  # was 1/4: the outage counted as a wrong answer
    assert out["pass@1"] == pytest.approx((1.0 + 0.0) / 2)  # problem 1: 1 of 1 graded right
    assert out["pass@2"] == pytest.approx(0.0)  # problem 1 has one graded sample: left out of pass@2
    assert out["maj@2"] == pytest.approx(0.0)
    assert out["infra_errors"] == 1 and out["graded_samples"] == 3 and out["infra_error_rate"] == pytest.approx(0.25)
    everything_failed = summarize([[_s(None, None)]], [1])
    assert everything_failed["infra_errors"] == 1 and everything_failed["graded_samples"] == 0
    for k in ("accuracy", "pass@1", "mean_reward"):
        assert everything_failed[k] != everything_failed[k]  # NaN (null in summary.json), not 0


def test_env_reports_a_grader_failure_as_infra_error_with_a_float_reward(tmp_path):
    p = _jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "5"}])
    env = SingleTurnEnv("jsonl", task_params={"path": str(p), "grader": "test_envs_audit2_down"})
    env.reset(options={"index": 0})
    _, reward, *_, info = env.step("anything")
    assert reward == 0.0 and isinstance(reward, float) and info["infra_error"] is True


def test_grpo_config_check_refuses_bad_grader_kwargs_before_any_model_loads(tmp_path):
    from thinkgym.config import ConfigError
    from thinkgym.grpo.checks import check_config
    from thinkgym.grpo.train import GRPOConfig

    cfg = GRPOConfig(model="m", envs=["thinkgym/Countdown-v0"], output_dir=str(tmp_path / "run"),
                     env_kwargs={"grader_kwargs": {"exactly_onc": True}})
    with pytest.raises(ConfigError, match=r"env_kwargs / eval_env_kwargs: ValueError: grader_kwargs: bad argument 'exactly_onc'"):
        check_config(cfg)


class _BadKwargsSource(TaskSource):
    name = "test_envs_audit2_bad_kwargs"
    grader = "countdown"
    default_size = 2

    def generate(self, i, rng):
        kw = {"exactly_once": True} if i == 0 else {"exactly_once": "yes"}
        return {"question": "Reach 3", "answer": {"numbers": [1, 2], "target": 3}, "metadata": {"grader_kwargs": kw}}


def test_an_items_bad_grader_kwargs_fail_at_its_reset_not_at_every_step():
    env = SingleTurnEnv(_BadKwargsSource())
    env.reset(options={"index": 0})
    assert env.step("<think>x</think><answer>1 + 2</answer>")[1] == 1.0
    with pytest.raises(ValueError, match=r"task 'test_envs_audit2_bad_kwargs', item 1: grader_kwargs: bad argument 'exactly_once'"):
        env.reset(options={"index": 1})
