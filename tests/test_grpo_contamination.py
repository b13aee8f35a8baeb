"""The learner's held-out contamination gate: ``eval_prompts`` items that repeat a question
training may sample are reported (``eval_contamination: warn``), refused (``error``) before any
model loads, or not looked at (``off``).

Real envs throughout: countdown with two numbers of at most 3 has a few dozen distinct questions,
so different indices (and other seeds) hold the same question."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import pytest

from thinkgym.config import ConfigError, load_config
from thinkgym.grpo import checks
from thinkgym.grpo.train import GRPOConfig, check_config, train

CD = "thinkgym/Countdown-v0"
TINY = {"task_params": {"n_numbers": 2, "max_number": 3, "target": [1, 9]}, "size": 200}
N_ITEMS, EVAL = 200, 20


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    for k in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(k, raising=False)


def make_cfg(tmp_path: Path, **kw) -> GRPOConfig:
    """2 steps x 4 prompts x 3 sampling rounds: training can sample indices [0, 24)."""
    model = tmp_path / "fake-model"  # passes the config.json check; nothing could load from it
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    base = dict(model=str(model), output_dir=str(tmp_path / "out"), sampler_backend="hf", envs=[CD],
                env_kwargs=TINY, eval_prompts=EVAL, max_steps=2, prompts_per_step=4, group_size=2,
                micro_batch_size=8)
    return load_config(GRPOConfig, None, {**base, **kw})


def questions(env_id: str, kw: dict, indices) -> list[str]:
    """The questions the env built with ``kw`` serves at ``indices``."""
    env = gym.make(env_id, **kw)
    try:
        return [env.unwrapped.source[i]["question"] for i in indices]
    finally:
        env.close()


HELD = [N_ITEMS - 1 - j for j in range(EVAL)]  # grpo.rollouts.evaluate's indices


def overlap(train_q: list[str], eval_q: list[str]) -> int:
    seen = set(train_q)
    return sum(q in seen for q in eval_q)


def test_duplicate_questions_at_other_indices_are_reported_once(tmp_path, capsys):
    cfg = make_cfg(tmp_path)
    assert check_config(cfg) == N_ITEMS
    assert check_config(cfg) == N_ITEMS  # the CLI checks, then train() checks again
    rep = checks.check_eval_contamination(cfg, N_ITEMS)
    train_q, eval_q = questions(CD, TINY, range(24)), questions(CD, TINY, HELD)
    assert overlap(train_q, eval_q) == 12  # 12 of the 20 held-out questions are among the first 24
    assert (rep["train_items"], rep["eval_items"], rep["train_indices_reachable"]) == (24, 20, 24)
    assert len(rep["contaminated"]) == 12 and rep["rate"] == pytest.approx(0.6)
    for e, t, _ in rep["contaminated"]:
        assert eval_q[e] == train_q[t]
    out = capsys.readouterr().out
    assert out.count("held-out contamination: 12 of 20 held-out items (60.00%") == 1, out
    assert out.count("WARNING: held-out items repeat training questions") == 1
    assert "[0, 24)" in out


@pytest.mark.parametrize("kw, reach, hits", [
    ({"dynamic_sampling": False}, 8, 6),                        # one sampling round a step
    ({}, 24, 12),                                               # max_sampling_tries (3) rounds
    ({"max_steps": 100}, N_ITEMS - EVAL, 20),                   # the whole train range
])
def test_train_side_is_what_training_can_sample(tmp_path, kw, reach, hits):
    rep = checks.check_eval_contamination(make_cfg(tmp_path, **kw), N_ITEMS)
    assert rep["train_indices_reachable"] == rep["train_items"] == reach
    assert len(rep["contaminated"]) == hits == overlap(questions(CD, TINY, range(reach)), questions(CD, TINY, HELD))


def test_every_rank_samples_its_own_prompts(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun / deepspeed set it
    rep = checks.check_eval_contamination(make_cfg(tmp_path), N_ITEMS)
    assert rep["train_items"] == 48 and len(rep["contaminated"]) == 17


def test_work_is_capped_and_the_log_says_what_was_checked(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checks, "CONTAMINATION_MAX_ITEMS", 10)
    rep = checks.check_eval_contamination(make_cfg(tmp_path, max_steps=100), N_ITEMS)
    assert (rep["train_items"], rep["eval_items"], rep["train_indices_reachable"]) == (10, 10, 180)
    hits = overlap(questions(CD, TINY, range(10)), questions(CD, TINY, HELD[:10]))
    assert len(rep["contaminated"]) == hits
    out = capsys.readouterr().out
    assert f"{hits} of 10 held-out items" in out and "eval_prompts=20" in out
    assert "[0, 10) (10 items; the run can sample [0, 180))" in out


def test_another_seed_in_eval_env_kwargs_does_not_make_items_held_out(tmp_path):
    cfg = make_cfg(tmp_path, eval_env_kwargs={"seed": 7})
    rep = checks.check_eval_contamination(cfg, check_config(cfg))
    hits = overlap(questions(CD, TINY, range(24)), questions(CD, {**TINY, "seed": 7}, HELD))
    assert hits == 13 and len(rep["contaminated"]) == 13


def test_eval_env_kwargs_build_the_held_out_side(tmp_path, capsys):
    # Three numbers on the eval side: no held-out question can be a two-number training question.
    three = {"task_params": {"n_numbers": 3, "max_number": 3, "target": [1, 9]}}
    cfg = make_cfg(tmp_path, eval_env_kwargs=three, eval_contamination="error")
    assert check_config(cfg) == N_ITEMS
    rep = checks.check_eval_contamination(cfg, N_ITEMS)
    assert rep["rate"] == 0.0 and rep["eval_items"] == EVAL
    assert "WARNING" not in capsys.readouterr().out


def test_error_refuses_before_any_model_loads(tmp_path):
    cfg = make_cfg(tmp_path, eval_contamination="error")
    with pytest.raises(ConfigError, match=r"held-out items repeat training questions.*12 of 20 eval items"):
        check_config(cfg)
    # train() runs the same check first: the fake model directory would fail to load otherwise.
    with pytest.raises(ConfigError, match="eval_contamination: error"):
        train(cfg)
    assert not (tmp_path / "out").exists()


def test_off_and_no_eval_prompts_skip_the_check(tmp_path, capsys):
    for kw in ({"eval_contamination": "off"}, {"eval_prompts": 0, "eval_contamination": "error"}):
        cfg = make_cfg(tmp_path, **kw)
        assert check_config(cfg) == N_ITEMS
        assert checks.check_eval_contamination(cfg, N_ITEMS) is None
    assert "contamination" not in capsys.readouterr().out


def test_bad_values_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"eval_contamination: must be one of \['error', 'warn', 'off'\]"):
        make_cfg(tmp_path, eval_contamination="strict")
    cfg = GRPOConfig(model=str(tmp_path), eval_contamination="Error")  # built in code: no load_config
    with pytest.raises(ConfigError, match="eval_contamination must be 'error', 'warn' or 'off', got 'Error'"):
        check_config(cfg)


def test_an_env_not_backed_by_a_registered_task_is_skipped(tmp_path, capsys):
    custom = "gtcontam/CustomCountdown-v0"  # a custom env factory: Gymnasium knows it, thinkgym does not
    gym.register(id=custom, entry_point="thinkgym.envs.core:SingleTurnEnv", kwargs={"task": "countdown"})
    try:
        # Mixed round-robin: even indices come from Countdown-v0 (checked), odd ones from the custom env.
        rep = checks.check_eval_contamination(make_cfg(tmp_path, envs=[CD, custom]), N_ITEMS)
        assert rep["skipped_envs"] == [custom]
        even_train, even_held = range(0, 24, 2), [i for i in HELD if i % 2 == 0]
        assert (rep["train_items"], rep["eval_items"]) == (12, 10)
        hits = overlap(questions(CD, TINY, even_train), questions(CD, TINY, even_held))
        assert hits == 4 and len(rep["contaminated"]) == hits
        assert checks.check_eval_contamination(make_cfg(tmp_path, envs=[custom]), N_ITEMS) is None
    finally:
        del gym.registry[custom]
    assert f"held-out contamination check skips env {custom}" in capsys.readouterr().out
