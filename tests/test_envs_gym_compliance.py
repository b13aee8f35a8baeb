"""Every registered env as a Gymnasium user drives it: the spaces hold what reset/step return, the
infos line up, copies and vector envs work, and what Gymnasium cannot do is refused clearly."""

from __future__ import annotations

import copy
import json
import pickle
import warnings

import gymnasium as gym
import pytest

import thinkgym.envs  # noqa: F401  registers the ids
from thinkgym.envs import ENVS, MultiTurnEnv, SingleTurnEnv, TextSpace
from thinkgym.envs.core import MAX_TEXT
from thinkgym.tasks import make_task

ENV_IDS = ENVS.names()
SHARED_INFO_KEYS = {"messages", "index", "task", "turn"}


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_made_env_contract(env_id):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PassiveEnvChecker's warnings are failures here
        env = gym.make(env_id)
        obs, info = env.reset(seed=3)
        assert env.observation_space.contains(obs)
        env.action_space.seed(0)
        action = env.action_space.sample()
        assert env.action_space.contains(action)
        obs2, reward, term, trunc, info2 = env.step(action)
    assert env.observation_space.contains(obs2) and isinstance(reward, float)
    # Both infos say which item and turn they belong to, so vector infos line up across autoresets.
    assert SHARED_INFO_KEYS <= set(info) and SHARED_INFO_KEYS <= set(info2)
    assert (info["turn"], info2["turn"]) == (0, 1)
    assert (info2["index"], info2["task"]) == (info["index"], info["task"])
    turns = env.unwrapped.max_turns  # every env has one, single-turn ones included
    assert isinstance(turns, int) and turns >= 1 and (term or trunc or turns > 1)
    env.close()
    env.close()


@pytest.mark.parametrize("env_id", ["thinkgym/Arithmetic-v0", "thinkgym/CountdownRetry-v0", "thinkgym/CalculatorTool-v0"])
def test_copies_continue_like_the_original(env_id):
    env = gym.make(env_id)
    env.reset(seed=4)
    env.step("<think>x</think><tool>1+1</tool>")
    copies = [copy.deepcopy(env), pickle.loads(pickle.dumps(env))]
    steps = [e.step("<answer>7</answer>")[1:4] if not e.unwrapped._done else None for e in [env, *copies]]
    assert steps[0] == steps[1] == steps[2]
    assert len({e.reset()[1]["index"] for e in [env, *copies]}) == 1  # the RNG state came along


def test_time_limit_and_max_turns_both_truncate():
    short = gym.make("thinkgym/CountdownRetry-v0", max_episode_steps=2)
    short.reset(options={"index": 0})
    assert [short.step("<answer>1</answer>")[2:4] for _ in range(2)] == [(False, False), (False, True)]
    long = gym.make("thinkgym/CountdownRetry-v0", max_episode_steps=10)
    long.reset(options={"index": 0})
    assert [long.step("<answer>1</answer>")[2:4] for _ in range(3)][-1] == (False, True)


def test_sync_vector_env_steps_with_text_and_reports_items():
    venv = gym.make_vec("thinkgym/Arithmetic-v0", num_envs=2, vectorization_mode="sync")
    obs, infos = venv.reset(seed=0)
    src = make_task("arithmetic")
    assert list(obs) == [src[int(i)]["question"] for i in infos["index"]]
    _, rew, term, _, step_infos = venv.step(tuple(infos["item"]["metadata"]["solution"]))
    assert rew.tolist() == [1.0, 1.0] and term.all()
    assert step_infos["index"].tolist() == infos["index"].tolist()
    venv.close()


def test_async_vector_env_without_shared_memory_works_end_to_end():
    venv = gym.make_vec("thinkgym/CountdownRetry-v0", num_envs=2, vectorization_mode="async",
                        vector_kwargs={"shared_memory": False})
    try:
        obs, infos = venv.reset(seed=0, options={"index": 3})
        assert obs[0] == obs[1] == make_task("countdown")[3]["question"]
        obs, rew, term, trunc, infos = venv.step(("<answer>1</answer>", infos["item"]["metadata"]["solution"][1]))
        assert rew.tolist() == [0.0, 1.0] and term.tolist() == [False, True]
        assert "not correct" in obs[0] and obs[1] == ""  # fresh observations, not a stale buffer
        assert infos["index"].tolist() == [3, 3] and infos["turn"].tolist() == [1, 1]
    finally:
        venv.close()
        venv.close()


def test_async_vector_env_with_shared_memory_says_how_to_fix_it():
    # Gymnasium's shared-memory path keeps the observations it read at construction, so text would
    # come back stale; the default used to fail with a message that named no cause or fix.
    with pytest.raises(ValueError, match=r"text observations \(TextSpace\).*vector_kwargs=\{'shared_memory': False\}"):
        gym.make_vec("thinkgym/Arithmetic-v0", num_envs=2, vectorization_mode="async")


def _jsonl_source(tmp_path, question: str):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"question": question, "answer": "1"}) + "\n")
    return make_task("jsonl", path=str(path))


def test_a_prompt_longer_than_the_observation_space_is_refused(tmp_path):
    env = SingleTurnEnv(_jsonl_source(tmp_path, "x" * (MAX_TEXT + 1)))
    with pytest.raises(ValueError, match=r"prompt of item 0 is 1048577 characters; the observation space allows"):
        env.reset(options={"index": 0})
    fits = SingleTurnEnv(_jsonl_source(tmp_path, "x" * MAX_TEXT))
    assert fits.observation_space.contains(fits.reset()[0])


def test_feedback_longer_than_the_observation_space_is_refused_and_the_step_can_be_retried():
    env = MultiTurnEnv("countdown", feedback_fn=lambda g, item: "y" * (MAX_TEXT + 1))
    _, info = env.reset(options={"index": 0})
    with pytest.raises(ValueError, match="the feedback is 1048577 characters"):
        env.step("<answer>1</answer>")
    assert env._turn == 0 and env._messages == info["messages"]


def test_text_space_in_gymnasium_batching_utilities():
    batched = gym.vector.utils.batch_space(TextSpace(20, seed=1), 3)
    sample = batched.sample()
    assert len(sample) == 3 and all(isinstance(s, str) and len(s) <= 20 for s in sample)
