"""``--resume`` with another config: the checkpoint's ``trainer_state.json`` holds the config that
saved it. Changes that make the resumed run another experiment (model, prompt stream, batch
shape, algorithm) are refused in one line before anything loads, unless ``resume_allow_changes``
names them; the knobs a run legitimately changes (max_steps, lr, eval, checkpointing) are listed
once as a warning. A resumed run used to train on another env, lr and group size without a word."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import yaml
from test_grpo_train import fake_model_dir, tiny_cfg

from thinkgym.config import ConfigError, load_config
from thinkgym.grpo import checks
from thinkgym.grpo.checks import check_resume
from thinkgym.grpo.train import GRPOConfig, check_config


@pytest.fixture(autouse=True)
def _one_process(monkeypatch):
    for k in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(checks, "_resume_seen", type(checks._resume_seen)())


def saved_run(tmp_path: Path, out: Path | None = None, **kw) -> GRPOConfig:
    """A config and a fake step-2 checkpoint in its output_dir (``out``, default tmp_path/run)
    that holds it (no weights)."""
    out = out or tmp_path / "run"
    cfg = load_config(GRPOConfig, None, {"model": str(fake_model_dir(tmp_path)), "output_dir": str(out), **kw})
    ck = out / "checkpoints" / "step_000002"
    ck.mkdir(parents=True)
    (ck / "rank0_state.pt").write_bytes(b"")
    (ck / "trainer_state.json").write_text(json.dumps({"step": 2, "config": asdict(cfg)}))
    (out / "checkpoints" / "latest").write_text(ck.name)
    return cfg


def test_the_reported_change_is_refused_naming_each_field(tmp_path):
    """The report: envs, lr and group_size changed on --resume. envs and group_size are refused,
    in one line with old -> new and the ways on; lr is not (it is not refused)."""
    cfg = saved_run(tmp_path)
    new = load_config(GRPOConfig, None, {**asdict(cfg), "envs": ["thinkgym/Countdown-v0"], "lr": 1e-3, "group_size": 4})
    with pytest.raises(ConfigError) as e:
        check_resume(new)
    msg = str(e.value)
    assert "\n" not in msg
    assert "envs ['thinkgym/Arithmetic-v0'] -> ['thinkgym/Countdown-v0']" in msg
    assert "group_size 8 -> 4" in msg
    assert "lr " not in msg
    assert "resume_allow_changes: [envs, group_size]" in msg
    assert "another output_dir" in msg and str(Path(cfg.output_dir) / "checkpoints" / "step_000002" / "hf") in msg


@pytest.mark.parametrize("field, value", [
    ("model", "Qwen/Qwen2.5-0.5B"),
    ("seed", 7),
    ("envs", ["thinkgym/Countdown-v0"]),
    ("env_kwargs", {"task_params": {"n_operands": 3}}),
    ("max_turns", 2),
    ("prompts_per_step", 16),
    ("group_size", 4),
    ("advantage", "rloo"),
    ("std_normalize", False),
    ("aggregation", "seq_mean"),
    ("importance_sampling_level", "sequence"),
    ("kl_estimator", "k1"),
    ("dtype", "bf16"),
])
def test_each_refused_field_is_refused_and_the_hatch_lets_it_through(tmp_path, capsys, field, value):
    cfg = saved_run(tmp_path)
    with pytest.raises(ConfigError, match=rf"saved with another {field}, .*{field} {re.escape(repr(getattr(cfg, field)))} "
                                          rf"-> {re.escape(repr(value))}.*resume_allow_changes: \[{field}\]"):
        check_resume(replace(cfg, **{field: value}))
    check_resume(replace(cfg, **{field: value}, resume_allow_changes=[field]))
    said = capsys.readouterr().out
    assert "config changed since it was saved" in said and f"{field} " in said and "(resume_allow_changes)" in said


def test_kl_in_reward_is_refused(tmp_path):
    cfg = saved_run(tmp_path, kl_coef=0.1)
    with pytest.raises(ConfigError, match=r"kl_in_reward False -> True"):
        check_resume(replace(cfg, kl_in_reward=True))


def test_every_refused_field_is_a_config_field_and_the_test_covers_it():
    names = {f for f in GRPOConfig.__dataclass_fields__}
    assert set(checks.RESUME_REFUSED) <= names
    covered = {p[0] for p in test_each_refused_field_is_refused_and_the_hatch_lets_it_through.pytestmark[0].args[1]}
    assert set(checks.RESUME_REFUSED) == covered | {"kl_in_reward"}


def test_knobs_a_run_changes_are_listed_once_not_refused(tmp_path, capsys):
    """max_steps (extending the run), the lr and its schedule, eval, checkpointing, logging and
    the sampler's speed settings: a warning that lists each (old -> new), once."""
    cfg = saved_run(tmp_path, max_steps=10)
    new = replace(cfg, max_steps=20, lr=5e-7, warmup_steps=3, min_lr_ratio=0.1, save_every=5, keep_checkpoints=4,
                  eval_every=5, eval_prompts=8, progress=False, tensorboard=False, max_bad_steps=9,
                  debug_nan_steps=[3], kl_coef=0.01, entropy_coef=0.001, max_tokens=256, micro_batch_size=4,
                  sampler_kwargs={"gpu_memory_utilization": 0.5}, overwrite=True)
    check_resume(new)
    check_resume(new)  # the CLI and train() both check: said once
    said = capsys.readouterr().out
    assert said.count("config changed since it was saved") == 1
    for change in ("max_steps 10 -> 20", "lr 1e-06 -> 5e-07", "warmup_steps 0 -> 3", "min_lr_ratio 1.0 -> 0.1",
                   "save_every 50 -> 5", "keep_checkpoints 2 -> 4", "eval_every 0 -> 5", "eval_prompts 0 -> 8",
                   "progress True -> False", "max_bad_steps 3 -> 9", "debug_nan_steps [] -> [3]",
                   "sampler_kwargs {} -> {'gpu_memory_utilization': 0.5}", "micro_batch_size 8 -> 4"):
        assert change in said, change
    assert "overwrite" not in said and "output_dir" not in said


def test_an_unchanged_config_resumes_silently(tmp_path, capsys):
    cfg = saved_run(tmp_path, env_kwargs={"task_params": {"target": (1, 9)}})  # a tuple: saved as a JSON list
    check_resume(replace(cfg))
    check_resume(replace(cfg, lora_alpha=32, lora_target_modules=["q_proj"]))  # no adapter: nothing to compare
    assert capsys.readouterr().out == ""


def test_the_model_by_another_path_or_as_its_hub_id_is_the_same_model(tmp_path, monkeypatch, capsys):
    """The run saves the resolved model: a hub id as its cache snapshot. Resuming with the hub id,
    or the same directory by another path, changes nothing."""
    cfg = saved_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    check_resume(replace(cfg, model="fake-model"))  # relative
    check_resume(replace(cfg, model=str(tmp_path / "." / "fake-model")))
    snap = tmp_path / "hub" / "models--Org--Tiny-Model" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (tmp_path / "h").mkdir()
    hub = saved_run(tmp_path / "h", model=str(snap))
    check_resume(replace(hub, model="Org/Tiny-Model"))
    assert capsys.readouterr().out == ""
    with pytest.raises(ConfigError, match="saved with another model"):
        check_resume(replace(hub, model="Org/Other-Model"))
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="saved with another model"):
        check_resume(replace(cfg, model=str(other)))


def test_what_cannot_load_is_refused_whatever_the_hatch_says(tmp_path):
    cfg = saved_run(tmp_path)
    with pytest.raises(ConfigError, match="holds ZeRO stage 2 optimizer state"):
        check_resume(replace(cfg, zero_stage=1, resume_allow_changes=["seed"]))
    with pytest.raises(ConfigError, match="saved with lora_r 0"):
        check_resume(replace(cfg, lora_r=8, resume_allow_changes=["model"]))
    with pytest.raises(ConfigError, match="holds no critic"):
        check_resume(replace(cfg, advantage="gae", resume_allow_changes=["advantage"]))


@pytest.mark.parametrize("allow", [["zero_stage"], ["lr"], ["lora_r"], ["sed"]])
def test_resume_allow_changes_names_only_refused_fields(tmp_path, allow):
    with pytest.raises(ConfigError, match=r"resume_allow_changes: \[.*\] cannot be listed.*'seed'"):
        load_config(GRPOConfig, None, {"model": "m", "resume_allow_changes": allow})


def test_check_config_refuses_before_anything_loads(tmp_path):
    """The model is a fake directory (no weights): a refusal from check_config, which train()
    runs first, comes before any load."""
    from thinkgym.grpo.train import train

    cfg = saved_run(tmp_path, sampler_backend="hf")
    with pytest.raises(ConfigError, match="saved with another seed"):
        check_config(replace(cfg, seed=3), resume=True)
    with pytest.raises(ConfigError, match="saved with another seed"):
        train(replace(cfg, seed=3), resume=True)
    assert not (Path(cfg.output_dir) / "config.yaml").exists()  # nothing written either
    assert check_config(replace(cfg, max_steps=200), resume=True) > 0


@pytest.mark.slow
@pytest.mark.vllm
def test_resume_run_refuses_another_group_size_and_continues_with_a_longer_max_steps(tmp_path, tiny_model_dir, capsys):
    """One real step, then --resume: another group_size is refused before anything loads; a longer
    max_steps and another lr continue the run, said once. config.yaml holds each run's config."""
    from thinkgym.grpo.train import train

    out = tmp_path / "run"
    kw = dict(tensorboard=False, minibatches=1, micro_batch_size=8)
    train(tiny_cfg(tiny_model_dir, out, max_steps=1, **kw))
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["max_steps"] == 1 and written["model"] == str(tiny_model_dir) and written["lr"] == 1e-3
    with pytest.raises(ConfigError, match=r"saved with another group_size, .*group_size 4 -> 2"):
        train(tiny_cfg(tiny_model_dir, out, max_steps=2, group_size=2, micro_batch_size=4, minibatches=1,
                       tensorboard=False), resume=True)
    capsys.readouterr()
    res = train(tiny_cfg(tiny_model_dir, out, max_steps=2, lr=2e-3, **kw), resume=True)
    assert [r["step"] for r in res["history"]] == [1, 2]
    said = capsys.readouterr().out
    assert said.count("config changed since it was saved") == 1
    assert "max_steps 1 -> 2" in said and "lr 0.001 -> 0.002" in said
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["max_steps"] == 2 and written["lr"] == 2e-3
    assert not (out / "config.yaml.tmp").exists()


def test_run_config_names_a_hub_model_by_its_repo_id(tmp_path):
    """A hub id runs from its HF-cache snapshot; config.yaml names the repo, so it runs elsewhere."""
    import yaml

    from thinkgym.grpo.engine import write_run_config
    from thinkgym.grpo.train import GRPOConfig

    snap = tmp_path / "hub" / "models--acme--tiny-reasoner" / "snapshots" / "0123abc"
    for model, want in ((str(snap), "acme/tiny-reasoner"), (str(tmp_path / "local"), str(tmp_path / "local"))):
        write_run_config(tmp_path / "run", GRPOConfig(model=model, output_dir=str(tmp_path / "run")), rank=0)
        assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"] == want
