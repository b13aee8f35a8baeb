"""Gymnasium envs: API contract, check_env on every id, multi-turn, tools, vector envs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env

import thinkgym.envs  # noqa: F401  registers the ids
from thinkgym.envs import (
    DEFAULT_SYSTEM_PROMPT,
    ENVS,
    MultiTurnEnv,
    SingleTurnEnv,
    TextSpace,
    ToolEnv,
    env_id_for_task,
    list_envs,
)
from thinkgym.envs.calculator import calculate
from thinkgym.tasks import make_task
from thinkgym.verifiers import Grade, register_grader

BUILTIN_IDS = [
    "thinkgym/Arithmetic-v0", "thinkgym/Countdown-v0", "thinkgym/WordProblems-v0", "thinkgym/LatexMath-v0",
    "thinkgym/Code-v0", "thinkgym/Format-v0", "thinkgym/CodeRetry-v0", "thinkgym/CountdownRetry-v0",
    "thinkgym/CalculatorTool-v0",
]


def test_every_builtin_id_is_registered_and_listed():
    ids = list_envs()
    assert set(BUILTIN_IDS) <= set(ids)
    assert all(ids[i] for i in BUILTIN_IDS)
    for i in BUILTIN_IDS:
        assert i in gym.registry
    assert env_id_for_task("word_problems") == "thinkgym/WordProblems-v0"


@pytest.mark.parametrize("env_id", BUILTIN_IDS)
def test_check_env_passes(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped)
    env.close()


def test_text_space_accepts_any_text():
    sp = TextSpace(max_length=50, seed=0)
    for s in ["", "two words\nnew line\t tab", "∑ π → 😀 中文", "<think>x</think><answer>1</answer>"]:
        assert sp.contains(s)
    assert not sp.contains("x" * 51) and not sp.contains(b"bytes") and not sp.contains(3)
    samples = [sp.sample() for _ in range(200)]
    assert all(sp.contains(s) for s in samples)
    joined = "".join(samples)
    assert " " in joined and "\n" in joined
    sp2 = TextSpace(max_length=50, seed=0)
    assert [sp2.sample() for _ in range(200)] == samples  # seeded
    assert sp == TextSpace(max_length=50) and sp != TextSpace(max_length=51)
    assert not gym.spaces.Text(100).contains("two words")  # why TextSpace exists


def test_reset_contract_and_index_option():
    env = gym.make("thinkgym/Countdown-v0")
    src = make_task("countdown", seed=0)
    obs, info = env.reset(options={"index": 7})
    assert obs == src[7]["question"] and info["index"] == 7 and info["task"] == "countdown"
    assert info["item"] == src[7]
    assert info["messages"] == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": obs},
    ]
    assert "<think>" in DEFAULT_SYSTEM_PROMPT and "<answer>" in DEFAULT_SYSTEM_PROMPT
    # np.int64 index (what a vectorized collector might pass) works.
    assert env.reset(options={"index": np.int64(7)})[0] == obs
    # Without an index, it comes from the env's seeded np_random.
    a = [env.reset(seed=5)[1]["index"]] + [env.reset()[1]["index"] for _ in range(3)]
    b = [env.reset(seed=5)[1]["index"]] + [env.reset()[1]["index"] for _ in range(3)]
    assert a == b and len(set(a)) > 1
    with pytest.raises(IndexError, match="out of range"):
        env.reset(options={"index": 10**7})
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"idx": 1})
    for bad in (True, 2.7, "3", None):  # no silent rounding or parsing of an index
        with pytest.raises(TypeError, match="must be an int"):
            env.reset(options={"index": bad})
    assert env.reset(options={"index": np.int64(3)})[1]["index"] == 3


def test_single_turn_step_right_wrong_and_done():
    env = SingleTurnEnv("arithmetic", seed=3, task_params={"n_operands": 3})
    obs, info = env.reset(options={"index": 0})
    item = info["item"]
    with pytest.raises(TypeError):
        env.step(123)
    obs2, r, term, trunc, info2 = env.step(item["metadata"]["solution"])
    assert (obs2, r, term, trunc) == ("", 1.0, True, False)
    assert info2["infra_error"] is False and info2["feedback"] is None and info2["turn"] == 1
    assert info2["grade"]["score"] == 1.0 and info2["grade"]["grader"].startswith("math@")
    assert "elapsed_s" not in info2["grade"] and env.last_grade.elapsed_s > 0
    assert info2["messages"][-1] == {"role": "assistant", "content": item["metadata"]["solution"]}
    with pytest.raises(ResetNeeded):
        env.step("again")
    env.reset(options={"index": 0})
    _, r, term, _, info3 = env.step(f"<think>hmm</think><answer>{int(item['answer']) + 1}</answer>")
    assert r == 0.0 and term and info3["grade"]["score"] == 0.0
    fresh = SingleTurnEnv("arithmetic")
    with pytest.raises(ResetNeeded):
        fresh.step("x")


def test_task_instance_grader_override_and_no_system_prompt():
    src = make_task("format", seed=1, size=10)
    env = SingleTurnEnv(src, system_prompt=None)
    obs, info = env.reset(options={"index": 9})
    assert [m["role"] for m in info["messages"]] == ["user"]
    _, r, *_ = env.step("<think>ok</think>\n<answer>whatever</answer>")
    assert r == 1.0  # format grader: structure only
    strict = SingleTurnEnv(src, grader="math")
    strict.reset(options={"index": 9})
    assert strict.step("<think>ok</think>\n<answer>whatever</answer>")[1] == 0.0
    with pytest.raises(ValueError, match="task_params/size"):
        SingleTurnEnv(src, task_params={"puzzles": "upper"})
    with pytest.raises(KeyError, match="unknown grader 'nope'"):
        SingleTurnEnv("format", grader="nope")
    with pytest.raises(KeyError, match="unknown task source 'nope'"):
        SingleTurnEnv("nope")


@register_grader("test_envs_boom", version="0")
def _boom(completion, gold, **meta):
    raise RuntimeError("grader crashed")


def test_grader_crash_is_infra_error_with_zero_reward():
    env = SingleTurnEnv("arithmetic", grader="test_envs_boom")
    env.reset(options={"index": 1})
    _, r, term, _, info = env.step("<think>x</think><answer>1</answer>")
    assert r == 0.0 and term and info["infra_error"] is True and info["grade"]["score"] is None
    assert "grader crashed" in info["grade"]["reason"]


def test_multi_turn_countdown_feedback_success_and_truncation():
    env = gym.make("thinkgym/CountdownRetry-v0")
    obs, info = env.reset(options={"index": 2})
    item = info["item"]
    n0 = item["answer"]["numbers"][0]
    wrong = f"<think>guess</think>\n<answer>{n0}</answer>"
    obs, r, term, trunc, info = env.step(wrong)
    assert (r, term, trunc) == (0.0, False, False) and info["turn"] == 1
    assert obs == info["feedback"] and "not correct" in obs and f"evaluates to {n0}," in obs
    assert [m["role"] for m in info["messages"]] == ["system", "user", "assistant", "user"]
    assert info["messages"][-1]["content"] == obs
    obs, r, term, trunc, info = env.step(item["metadata"]["solution"])
    assert (obs, r, term, trunc) == ("", 1.0, True, False) and info["turn"] == 2
    # Three wrong answers: truncated at the turn limit, no trailing feedback turn.
    env.reset(options={"index": 2})
    for _ in range(3):
        obs, r, term, trunc, info = env.step(wrong)
    assert (obs, term, trunc, info["turn"], info["feedback"]) == ("", False, True, 3, None)
    assert info["messages"][-1]["role"] == "assistant" and len(info["messages"]) == 2 + 3 + 2
    with pytest.raises(ResetNeeded):
        env.step(wrong)
    with pytest.raises(ValueError):
        MultiTurnEnv("countdown", max_turns=0)


@pytest.mark.sandbox
def test_code_retry_feedback_shows_failing_test():
    env = gym.make("thinkgym/CodeRetry-v0", task_params={"templates": "add_k"})
    obs, info = env.reset(options={"index": 0})
    item = info["item"]
    ep = item["answer"]["entry_point"]
    bad = f"<think>x</think>\n<answer>\n```python\ndef {ep}(xs):\n    return xs\n```\n</answer>"
    first = env.step(bad)
    obs, r, term, trunc, info = first
    assert r == 0.0 and not term and not trunc, info["grade"]
    assert "Test 1 failed" in obs and f"{ep}(" in obs and "should return" in obs
    # Only the public cases are quoted; hidden ones are counted, never shown with their answers.
    cases = info["grade"]["details"]["cases"]
    assert item["metadata"]["public_tests"] == [0, 1] and len(cases) > 2
    hidden_failed = sum(not c["passed"] for c in cases[2:])
    assert hidden_failed and f"{hidden_failed} hidden test" in obs
    assert not any(f"Test {i} " in obs for i in range(2, len(cases)))
    obs, r, term, trunc, info = env.step(item["metadata"]["solution"])
    assert r == 1.0 and term, info["grade"]
    # Same seed, same actions: the same transition, timings of the sandbox runs aside.
    env.reset(options={"index": 0})
    again = env.step(bad)
    assert again[4]["grade"] == first[4]["grade"] and again[0] == first[0]
    assert "time_s" in env.unwrapped.last_grade.details["cases"][0]  # kept on the Grade itself


def test_tool_env_calculator_round_trip():
    env = gym.make("thinkgym/CalculatorTool-v0")
    obs, info = env.reset(options={"index": 4})
    item = info["item"]
    assert "<tool>" in info["messages"][0]["content"]
    expr = item["metadata"]["expression"]
    obs, r, term, trunc, info = env.step(f"<think>let me compute</think><tool>{expr}</tool>")
    assert obs == f"<result>{item['answer']}</result>" and r == 0.0 and not term and not trunc
    assert info["grade"]["reason"].startswith("tool call") and info["messages"][-1] == {"role": "user", "content": obs}
    t0 = time.monotonic()
    obs, *_ = env.step("<tool>" * 80_000)  # unclosed tags: one linear scan, not a regex per tag
    assert "No <tool> call" in obs and time.monotonic() - t0 < 5
    env.reset(options={"index": 4})
    env.step(f"<tool>{expr}</tool>")
    obs, r, term, trunc, info = env.step("<tool>__import__('os')</tool> <tool>2**100000</tool>")
    assert obs.count("<result>error:") == 2
    obs, r, term, trunc, info = env.step(f"<think>done</think><answer>{item['answer']}</answer>")
    assert (obs, r, term, trunc) == ("", 1.0, True, False) and info["turn"] == 3
    env.reset(options={"index": 4})
    for _ in range(4):
        obs, r, term, trunc, info = env.step("just chatting")
    assert trunc and not term and r == 0.0
    with pytest.raises(ValueError):
        ToolEnv("arithmetic", max_turns=0)


def test_calculator_is_exact_and_safe():
    assert calculate("1/3*3") == "1"
    assert calculate("(2 + 3) * 4 - 10 / 4") == "17.5"
    assert calculate("2 ^ 10") == "1024" and calculate("sqrt(144)") == "12" and calculate("7 // 2 + 7 % 2") == "4"
    assert calculate("sqrt(2)").startswith("1.41421356237")
    assert calculate("max(3, 9, 4) - min(2, 5)") == "7" and calculate("round(2.6) + abs(-3)") == "6"
    for bad in ["__import__('os').system('x')", "open('f')", "x + 1", "2 ** 10 ** 10", "9 ** 9 ** 9",
                "1 / 0", "sqrt(-1)", "'a' * 3", "[1] * 3", "1 if 1 else 2", "(" * 300 + "1" + ")" * 300, "1" * 600]:
        assert calculate(bad).startswith("error:"), bad


def test_vector_envs_sync_and_make_vec():
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("thinkgym/Arithmetic-v0") for _ in range(3)])
    obs, infos = envs.reset(seed=0)
    assert isinstance(obs, tuple) and len(obs) == 3 and all(isinstance(o, str) and o for o in obs)
    # Vector infos are stacked per key: item -> metadata -> solution is an array over envs.
    actions = tuple(infos["item"]["metadata"]["solution"])
    assert len(actions) == 3 and all(a.startswith("<think>") for a in actions)
    obs, rew, term, trunc, infos = envs.step(actions)
    assert rew.tolist() == [1.0, 1.0, 1.0] and term.all() and not trunc.any()
    envs.close()
    venv = gym.make_vec("thinkgym/Countdown-v0", num_envs=2, vectorization_mode="sync")
    obs, infos = venv.reset(seed=1, options={"index": 5})
    assert obs[0] == obs[1] == make_task("countdown")[5]["question"]
    obs, rew, term, trunc, infos = venv.step(("<think>x</think><answer>1</answer>", infos["item"]["metadata"]["solution"][1]))
    assert rew.tolist() == [0.0, 1.0] and term.all()
    venv.close()


def test_task_source_for_env_and_contamination_gate():
    from thinkgym.envs import task_source_for_env
    from thinkgym.tasks.contamination import check_contamination

    src = task_source_for_env("thinkgym/CalculatorTool-v0", seed=2, size=100)
    assert src.params["max_value"] == 1000 and len(src) == 100
    assert src[3] == make_task("arithmetic", seed=2, n_operands=[3, 5], max_value=1000)[3]
    train = task_source_for_env("thinkgym/Countdown-v0", seed=0, size=2000)
    rep = check_contamination(train, task_source_for_env("thinkgym/Countdown-v0", seed=1, size=200), threshold=0.05)
    assert rep.rate <= 0.05
    with pytest.raises(KeyError, match="unknown env"):
        task_source_for_env("thinkgym/Nope-v0")


def test_env_kwargs_via_make_and_render():
    env = gym.make("thinkgym/Arithmetic-v0", seed=9, task_params={"n_operands": 2, "max_value": 9}, render_mode="ansi")
    obs, info = env.reset(options={"index": 0})
    assert obs == make_task("arithmetic", seed=9, n_operands=2, max_value=9)[0]["question"]
    env.step("<think>a</think><answer>0</answer>")
    text = env.render()
    assert "[user]" in text and "[assistant]" in text
    assert ENVS.get("thinkgym/CodeRetry-v0").kwargs["max_turns"] == 3


def test_module_qualified_make_and_determinism_across_processes():
    # Gymnasium 1.x no longer loads the `gymnasium.envs` entry-point group, so a fresh process
    # uses the "module:id" form (or imports thinkgym.envs first).
    code = (
        "import json, gymnasium as gym\n"
        "env = gym.make('thinkgym.envs:thinkgym/WordProblems-v0')\n"
        "out = [env.reset(seed=11)[0]] + [env.reset()[0] for _ in range(2)]\n"
        "out.append(env.reset(options={'index': 3})[0])\n"
        "print(json.dumps(out))\n"
    )
    outs = []
    for hs in ("1", "999"):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONHASHSEED": hs})
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout))
    assert outs[0] == outs[1]
    assert outs[0][3] == make_task("word_problems")[3]["question"]


def test_importing_core_rooms_does_not_import_torch():
    code = (
        "import sys, json\n"
        "import thinkgym.tasks, thinkgym.envs, thinkgym.verifiers, thinkgym.tasks.contamination\n"
        "import thinkgym.tasks.cli, thinkgym.envs.cli\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'vllm', 'transformers', 'deepspeed', 'datasets'})\n"
        "print(json.dumps(heavy))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


@register_grader("test_envs_echo_meta", version="0")
def _echo_meta(completion, gold, **meta):
    return Grade(1.0, details={"meta": meta, "gold": gold})


def test_grade_gets_item_grader_kwargs_and_env_overrides():
    env = SingleTurnEnv("countdown", task_params={"exactly_once": True}, grader="test_envs_echo_meta",
                        grader_kwargs={"extra": 1})
    _, rinfo = env.reset(options={"index": 0})
    info = env.step("anything")[4]
    assert info["grade"]["details"] == {"meta": {"exactly_once": True, "extra": 1}, "gold": rinfo["item"]["answer"]}
    plain = SingleTurnEnv("countdown", grader="test_envs_echo_meta")
    plain.reset(options={"index": 0})
    assert plain.step("x")[4]["grade"]["details"]["meta"] == {}


def test_tool_call_after_characters_that_lowercase_longer():
    env = gym.make("thinkgym/CalculatorTool-v0")
    env.reset(options={"index": 0})
    obs, *_ = env.step("İ<tool>12+30</tool>")
    assert obs == "<result>42</result>"


@pytest.mark.parametrize(
    "cls, kwargs, exc, msg",
    [
        (ToolEnv, {"max_calls_per_turn": -1}, ValueError, "max_calls_per_turn must be >= 1, got -1"),
        (ToolEnv, {"max_calls_per_turn": 0}, ValueError, "max_calls_per_turn must be >= 1"),
        (ToolEnv, {"max_calls_per_turn": 2.0}, TypeError, "max_calls_per_turn must be a positive int, got float"),
        (ToolEnv, {"max_turns": 2.5}, TypeError, "max_turns must be a positive int, got float 2.5"),
        (ToolEnv, {"max_turns": True}, TypeError, "max_turns must be a positive int, got bool"),
        (ToolEnv, {"tool": "calc"}, TypeError, "tool must be callable"),
        (MultiTurnEnv, {"max_turns": 2.5}, TypeError, "max_turns must be a positive int"),
        (MultiTurnEnv, {"max_turns": "3"}, TypeError, "max_turns must be a positive int, got str"),
        (MultiTurnEnv, {"success_score": 1.5}, ValueError, r"success_score must be a number in \[0, 1\]"),
        (MultiTurnEnv, {"success_score": True}, ValueError, "success_score"),
        (MultiTurnEnv, {"feedback_fn": None}, TypeError, "feedback_fn must be callable"),
        (SingleTurnEnv, {"size": 2.5}, TypeError, "size must be a positive int"),
        (SingleTurnEnv, {"size": 0}, ValueError, "size must be >= 1"),
        (SingleTurnEnv, {"system_prompt": 3}, TypeError, "system_prompt must be a str or None"),
    ],
)
def test_env_constructor_arguments_are_validated(cls, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        cls("arithmetic", **kwargs)


def test_env_constructor_validation_through_gym_make():
    with pytest.raises(ValueError, match="max_calls_per_turn must be >= 1, got -1"):
        gym.make("thinkgym/CalculatorTool-v0", max_calls_per_turn=-1)
    env = ToolEnv("arithmetic", max_turns=np.int64(2), max_calls_per_turn=np.int32(1))
    assert type(env.max_turns) is int and env.max_calls_per_turn == 1
    env.reset(options={"index": 0})
    obs, *_ = env.step("<tool>1+1</tool><tool>2+2</tool>")
    assert obs == "<result>2</result>\n(only the first 1 tool calls were run)"
