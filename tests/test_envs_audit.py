"""Envs under attack: a policy gaming the tool or the feedback, and callers passing bad input."""

from __future__ import annotations

import decimal
import json

import pytest

import thinkgym.envs  # noqa: F401  registers the ids
from thinkgym.envs import MultiTurnEnv, SingleTurnEnv, TextSpace, ToolEnv, default_feedback
from thinkgym.envs.calculator import MAX_DIGITS, calculate
from thinkgym.verifiers import Grade


def test_calculator_floor_division_cannot_exceed_the_digit_bound():
    # 1e-300 is an exact 1/10**300, so each `// 1e-300` used to add 300 unchecked digits.
    for expr in ["10**399 // 1e-300", "((10**399 // 1e-300) // 1e-300) // 1e-300"]:
        assert calculate(expr) == f"error: number with more than {MAX_DIGITS} digits", expr
    assert calculate("10**399 % 1e-300") == "0"  # a small remainder of big operands is fine
    assert calculate("-7 // 2") == "-4" and calculate("-7 % 2") == "1" and calculate("7.5 % 2") == "1.5"


def test_calculator_refuses_a_huge_exponent_by_name():
    # A 400-digit exponent overflowed the float size estimate: "error: OverflowError".
    for expr in ["2 ** (10**399)", "2 ** -(10**399)", "(3/2) ** 2000"]:
        assert calculate(expr) == f"error: power too large (more than {MAX_DIGITS} digits)", expr
    assert calculate("(-1) ** (10**399 + 1)") == "-1" and calculate("2 ** 1328").startswith("58591449")


def test_calculator_shows_values_beyond_float_range():
    assert calculate("10**399 / 3") == "3.33333333333e+398"  # was "error: OverflowError"
    assert calculate("-10**399 / 3") == "-3.33333333333e+398"
    assert calculate("1 / 10**399") == "1e-399"  # was "0"
    assert calculate("1e-320") == "1e-320"  # an exact 1/10**320; a subnormal float showed 9.99988867183e-321
    assert calculate("1 / 3") == "0.333333333333" and calculate("(1/3)**300") == "7.30505658115e-144"


def test_calculator_ignores_the_callers_decimal_context():
    with decimal.localcontext() as ctx:
        ctx.prec = 5
        assert calculate("sqrt(2)").startswith("1.41421356237")


def test_tool_results_are_cut_to_max_result_chars():
    env = ToolEnv("arithmetic", tool=lambda expr: "7" * (2 << 20))
    env.reset(options={"index": 0})
    obs, *_ = env.step("<tool>1</tool>")
    assert env.observation_space.contains(obs) and len(obs) < 2100
    assert obs.startswith("<result>7777") and obs.endswith("...(cut to 2000 characters)</result>")
    short = ToolEnv("arithmetic", tool=lambda expr: "x" * 50, max_result_chars=10)
    short.reset(options={"index": 0})
    assert short.step("<tool>1</tool>")[0] == "<result>xxxxxxxxxx ...(cut to 10 characters)</result>"
    with pytest.raises(ValueError, match="max_result_chars must be >= 1"):
        ToolEnv("arithmetic", max_result_chars=0)


def _boom(*_):
    raise RuntimeError("boom")


@pytest.mark.parametrize("make", [
    lambda: ToolEnv("arithmetic", tool=_boom),
    lambda: MultiTurnEnv("countdown", feedback_fn=_boom),
])
def test_a_step_that_raises_leaves_the_episode_as_it_was(make):
    env = make()
    _, info = env.reset(options={"index": 0})
    with pytest.raises(RuntimeError, match="boom"):
        env.step("<tool>1+1</tool> <answer>1</answer>" if isinstance(env, MultiTurnEnv) else "<tool>1+1</tool>")
    assert env._turn == 0 and env._messages == info["messages"]
    with pytest.raises(ValueError, match="at most"):  # over the action space's bound
        env.step("x" * (env.action_space.max_length + 1))
    assert env._turn == 0 and env._messages == info["messages"]


@pytest.mark.parametrize("bad", [None, 5])
def test_feedback_fn_must_return_text(bad):
    env = MultiTurnEnv("countdown", feedback_fn=lambda g, item: bad)
    env.reset(options={"index": 0})
    with pytest.raises(TypeError, match="feedback_fn must return a str"):
        env.step("<answer>1</answer>")


@pytest.mark.parametrize("kwargs, name", [
    ({"task_params": [("n_operands", 3)]}, "task_params"),
    ({"task_params": "n_operands=3"}, "task_params"),
    ({"grader_kwargs": [1]}, "grader_kwargs"),
    ({"grader_kwargs": "ab"}, "grader_kwargs"),
])
def test_non_mapping_kwargs_name_the_argument(kwargs, name):
    with pytest.raises(TypeError, match=f"{name} must be a dict or None"):
        SingleTurnEnv("arithmetic", **kwargs)


@pytest.mark.parametrize("options", [[("index", 1)], "index"])
def test_reset_options_must_be_a_mapping(options):
    env = SingleTurnEnv("arithmetic")
    with pytest.raises(TypeError, match="options must be a dict or None"):
        env.reset(options=options)


def _code_item(kind: str) -> dict:
    if kind == "function":
        answer = {"type": "function", "entry_point": "f",
                  "cases": [{"args": [i], "expected": i + 1} for i in range(4)]}
    else:
        answer = {"type": "stdio", "cases": [{"stdin": f"{i}\n", "expected_stdout": f"{i + 1}\n"} for i in range(4)]}
    return {"question": "q", "answer": answer, "metadata": {"public_tests": [0, 1]}}


def test_code_feedback_does_not_read_back_hidden_inputs():
    # A candidate that passes the public cases and raises repr(args) on the others: the code
    # grader's reason names hidden case 2 with that error, i.e. with the hidden input.
    cases = [{"passed": True, "status": "ok"}, {"passed": True, "status": "ok"},
             {"passed": False, "status": "exception", "error": "ValueError: SECRET-INPUT (2,)"},
             {"passed": False, "status": "exception", "error": "ValueError: SECRET-INPUT (3,)"}]
    g = Grade(0.0, reason="2/4 cases passed; first failure case 2: exception (ValueError: SECRET-INPUT (2,))",
              details={"cases": cases})
    text = default_feedback(g, _code_item("function"))
    assert "SECRET" not in text and "case 2" not in text
    assert "2/4 cases passed" in text and "2 hidden tests failed." in text
    as_json = {**_code_item("function"), "answer": json.dumps(_code_item("function")["answer"])}  # tests as a JSON string
    assert "SECRET" not in default_feedback(g, as_json)


def test_stdio_feedback_shows_what_the_program_printed():
    cases = [{"passed": False, "status": "wrong_answer", "got": "41\n"},
             {"passed": False, "status": "wrong_answer", "got": ""}] + [{"passed": True, "status": "ok"}] * 2
    text = default_feedback(Grade(0.0, reason="2/4 cases passed", details={"cases": cases}), _code_item("stdio"))
    assert "for input '0\\n' the output should be '1\\n'; got: '41\\n'" in text
    assert "for input '1\\n' the output should be '2\\n'; got: ''" in text


@pytest.mark.parametrize("args, kwargs, exc, msg", [
    (("10",), {}, TypeError, "max_length must be an int, got str"),
    ((1.5,), {}, TypeError, "max_length must be an int, got float"),
    ((5,), {"sample_max_length": -1}, ValueError, "sample_max_length must be >= 0"),
])
def test_text_space_arguments_are_validated(args, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        TextSpace(*args, **kwargs)


def test_tool_env_takes_an_fbox_as_the_final_answer():
    env = ToolEnv("arithmetic")
    _, info = env.reset(options={"index": 0})
    _, r, term, trunc, _ = env.step(f"<think>x</think>\\fbox{{{info['item']['answer']}}}")
    assert (r, term, trunc) == (1.0, True, False)  # the math grader reads \fbox; the env used to ask again
    env.reset(options={"index": 0})
    assert env.step(f"<ANSWER>{info['item']['answer']}</ANSWER>")[1:3] == (1.0, True)


def test_a_refused_reset_does_not_reseed():
    env = SingleTurnEnv("arithmetic")
    env.reset(seed=3)
    expected = [env.reset()[1]["index"] for _ in range(3)]
    env.reset(seed=3)
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(seed=99, options={"idx": 1})
    assert [env.reset()[1]["index"] for _ in range(3)] == expected


def test_tool_env_does_not_run_tools_on_the_last_turn():
    seen = []
    env = ToolEnv("arithmetic", max_turns=2, tool=lambda expr: seen.append(expr) or "1")
    env.reset(options={"index": 0})
    assert env.step("<tool>1+1</tool>")[0] == "<result>1</result>" and seen == ["1+1"]
    obs, r, term, trunc, info = env.step("<tool>2+2</tool>")
    assert (obs, r, term, trunc) == ("", 0.0, False, True) and seen == ["1+1"]  # its result would be dropped
    assert info["grade"]["details"] == {"tool_calls": 1}
