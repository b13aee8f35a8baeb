"""Eval harness: estimators against hand-computed values, and one real `thinkgym eval` run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from itertools import combinations

import pytest

from thinkgym.sampler.eval import EvalConfig, default_ks, maj_at_k, pass_at_k, summarize


def brute_pass_at_k(n, c, k):
    """Fraction of k-subsets of n samples (c correct) that contain a correct one."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_hand_values():
    assert pass_at_k(8, 0, 1) == 0.0
    assert pass_at_k(8, 8, 8) == 1.0
    assert pass_at_k(8, 2, 1) == pytest.approx(2 / 8)
    # 1 - C(6,2)/C(8,2) = 1 - 15/28
    assert pass_at_k(8, 2, 2) == pytest.approx(13 / 28)
    # 1 - C(7,4)/C(8,4) = 1 - 35/70
    assert pass_at_k(8, 1, 4) == pytest.approx(0.5)
    assert pass_at_k(5, 3, 3) == 1.0  # fewer wrong samples than k
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k))
    assert pass_at_k(200, 10, 100) == pytest.approx(1 - math.comb(190, 100) / math.comb(200, 100))
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_maj_at_k():
    answers = ["3", "5", "5", None, "3", "5"]
    correct = [True, False, False, False, True, False]
    assert maj_at_k(answers, correct, 6) == 0.0  # "5" wins 3-2
    assert maj_at_k(answers, correct, 1) == 1.0
    assert maj_at_k(answers, correct, 2) == 1.0  # tie 1-1: the first seen ("3") wins
    assert maj_at_k(answers, correct, 3) == 0.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0
    assert maj_at_k([" 7", "7 ", "8"], [True, True, False], 3) == 1.0  # whitespace-insensitive


def test_summarize_and_ks():
    assert default_ks(8) == [1, 2, 4, 8] and default_ks(6) == [1, 2, 4, 6] and default_ks(1) == [1]

    def s(r, a, fmt=True, think=None, fin="stop"):
        return {"reward": r, "extracted": a, "format_ok": fmt, "think_tokens": think,
                "completion_len": 10, "finish_reason": fin}

    groups = [
        [s(1.0, "4", think=5), s(0.0, "5"), s(0.0, "5", fmt=False), s(1.0, "4", think=7)],
        [s(0.0, "1", fin="length"), s(None, None, fmt=False), s(0.0, "2"), s(0.0, "2")],
    ]
    out = summarize(groups, [1, 2, 4])
    assert out["pass@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["pass@2"] == pytest.approx((1 - math.comb(2, 2) / math.comb(4, 2)) / 2)
    assert out["pass@4"] == pytest.approx(1.0)  # group 2 has 3 graded samples (one infra error): left out
    assert out["maj@4"] == pytest.approx(1.0)  # "4" vs "5" tie: "4" first -> right; group 2 left out
    assert out["mean_reward"] == pytest.approx(2 / 7)  # the infra error is excluded
    assert out["infra_errors"] == 1 and out["format_rate"] == pytest.approx(6 / 8)
    assert out["mean_think_tokens"] == pytest.approx(6.0) and out["truncation_rate"] == pytest.approx(1 / 8)
    with pytest.raises(ValueError):
        summarize([], [1])


def test_eval_config_validation():
    from thinkgym.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="model"):
        from_dict(EvalConfig, {"env": "thinkgym/Arithmetic-v0"})
    with pytest.raises(ConfigError, match="backend"):
        from_dict(EvalConfig, {"model": "m", "backend": "tgi"})
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(EvalConfig, {"model": "m", "nn": 3})


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"max_tokens": 0}, "max_tokens must be a positive integer"),
        ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
        ({"temperature": float("nan")}, "temperature must be a finite number"),
        ({"top_p": 5.0}, r"top_p must be in \(0, 1\]"),
        ({"budget_mode": "bogus"}, "budget_mode must be 'force' or 'truncate'"),
        ({"think_budget": -1}, "think_budget must be"),
        ({"answer_budget": 0}, "answer_budget must be a positive integer"),
        ({"stop": [""]}, "stop must be a list of non-empty strings"),
        ({"correct_threshold": float("nan")}, "correct_threshold must be a finite number"),
        ({"offset": -1}, "offset must be >= 0"),
        ({"seed": -1}, "seed must be in \\[0, 2\\*\\*32\\)"),
        ({"max_turns": 0}, "max_turns must be >= 1"),
        ({"num_threads": 0}, "num_threads must be >= 1"),
        ({"backend": "vllm-server", "base_url": "localhost:8000"}, "base_url must be an http"),
        ({"backend": "hf", "base_url": "http://127.0.0.1:8000"}, "base_url is only used by backend vllm-server"),
        ({"backend": "vllm-server", "base_url": "http://127.0.0.1:8000", "max_model_len": 256},
         "max_model_len: a vllm-server's context window is set when the server starts"),
    ],
)
def test_eval_sampling_values_rejected_by_the_config(kw, msg):
    from thinkgym.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match=msg):
        from_dict(EvalConfig, {"model": "m", **kw})


def test_output_dir_that_is_a_file_is_a_config_error(tmp_path):
    from thinkgym.config import ConfigError, from_dict

    (tmp_path / "f").write_text("")
    for out in ("f", "f/sub"):
        with pytest.raises(ConfigError, match="output_dir: .* exists and is not a directory"):
            from_dict(EvalConfig, {"model": "m", "output_dir": str(tmp_path / out)})


def test_sampling_config_rejects_non_finite_temperature():
    from thinkgym.sampler.types import SamplingConfig

    for t in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be a finite number"):
            SamplingConfig(temperature=t)
    assert SamplingConfig(temperature=0.0).greedy


class _NoSampler:
    """Fails the test if evaluate() gets as far as sampling."""

    def __getattr__(self, name):
        raise AssertionError(f"the sampler was used ({name}) before the config was checked")


def test_evaluate_checks_the_env_before_sampling(tmp_path):
    from thinkgym.config import ConfigError
    from thinkgym.sampler.eval import evaluate

    cfg = EvalConfig(model="m", env="thinkgym/Nope-v0", output_dir=str(tmp_path / "e"))
    with pytest.raises(ConfigError, match="env: unknown env id 'thinkgym/Nope-v0'"):
        evaluate(cfg, sampler=_NoSampler())
    cfg = EvalConfig(model="m", offset=999_999, limit=2, output_dir=str(tmp_path / "e"))
    with pytest.raises(ConfigError, match="offset \\+ limit.*has 1000000 items"):
        evaluate(cfg, sampler=_NoSampler())
    cfg = EvalConfig(model="m", budget_mode="bogus", output_dir=str(tmp_path / "e"))
    with pytest.raises(ValueError, match="budget_mode"):
        evaluate(cfg, sampler=_NoSampler())
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("name", ["summary.json", "samples.jsonl"])
def test_an_earlier_eval_in_output_dir_is_refused_unless_overwrite(tmp_path, name):
    from thinkgym.config import ConfigError, from_dict

    out = tmp_path / "e"
    out.mkdir()
    (out / "notes.txt").write_text("")  # not an eval's: no objection
    from thinkgym.sampler.eval import evaluate

    with pytest.raises(AssertionError, match="the sampler was used"):  # got past the check
        evaluate(EvalConfig(model="m", output_dir=str(out)), sampler=_NoSampler())
    (out / name).write_text("{}\n")
    with pytest.raises(ConfigError) as e:  # before the env is built or anything samples
        evaluate(EvalConfig(model="m", output_dir=str(out), env="thinkgym/Nope-v0"), sampler=_NoSampler())
    assert str(e.value) == (f"output_dir: '{out}' holds an earlier eval ({name}); set overwrite: true "
                            "(--set overwrite=true) to replace it, or choose another output_dir")
    cfg = from_dict(EvalConfig, {"model": "m", "output_dir": str(out), "overwrite": True})
    with pytest.raises(AssertionError, match="the sampler was used"):
        evaluate(cfg, sampler=_NoSampler())
    assert (out / name).read_text() == "{}\n"  # a failed eval replaces nothing


def test_a_failed_or_refused_eval_creates_no_output_dir(tmp_path):
    from thinkgym.sampler.eval import evaluate
    from thinkgym.tasks.contamination import ContaminationError

    out = tmp_path / "runs" / "e"
    with pytest.raises(AssertionError, match="the sampler was used"):  # sampling fails
        evaluate(EvalConfig(model="m", limit=2, output_dir=str(out)), sampler=_NoSampler())
    assert not (tmp_path / "runs").exists()
    cfg = EvalConfig(model="m", limit=2, output_dir=str(out), train_task="thinkgym/Arithmetic-v0")
    with pytest.raises(ContaminationError):
        evaluate(cfg, sampler=_NoSampler())
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--env", "thinkgym/Nope-v0"], "env: unknown env id 'thinkgym/Nope-v0'"),
        (["--env", "Nope-v0"], "env: unknown env id 'Nope-v0'"),
        (["--config", "{cfg}"], "budget_mode must be 'force' or 'truncate'"),
    ],
)
def test_eval_cli_bad_env_or_sampling_is_one_line_before_the_model_loads(tmp_path, args, msg):
    # A config.json that no model loads from: reaching the sampler would fail differently.
    model = tmp_path / "fake-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (tmp_path / "c.yaml").write_text("budget_mode: bogus\n")
    args = [a.replace("{cfg}", str(tmp_path / "c.yaml")) for a in args]
    cmd = [sys.executable, "-m", "thinkgym.cli", "eval", "--model", str(model), "--backend", "hf",
           "--output-dir", str(tmp_path / "e"), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().startswith("error:") and msg in p.stderr, p.stderr[-2000:]
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
@pytest.mark.vllm
def test_thinkgym_eval_cli(tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    cmd = [sys.executable, "-m", "thinkgym.cli", "eval", "--model", str(tiny_model_dir),
           "--env", "thinkgym/Arithmetic-v0", "--n", "4", "--limit", "3", "--max-tokens", "16",
           "--threads", "1", "--output-dir", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "pass@1" in p.stdout and "maj@4" in p.stdout
    summary = json.loads((out / "summary.json").read_text())
    for k in ("pass@1", "pass@2", "pass@4", "maj@4", "mean_reward", "format_rate", "backend"):
        assert k in summary
    assert summary["backend"] == "vllm" and summary["problems"] == 3 and summary["samples"] == 12
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {r["index"] for r in rows} == {0, 1, 2}
    # The summary is recomputed from the samples file exactly.
    groups = [[r for r in rows if r["group_id"] == g] for g in range(3)]
    again = summarize(groups, [1, 2, 4])
    for k in ("pass@1", "pass@4", "maj@4", "format_rate"):
        assert summary[k] == pytest.approx(again[k])
    assert summary["mean_reward"] == pytest.approx(sum(r["reward"] for r in rows) / 12)


def test_eval_cli_refuses_contaminated_train_task(tiny_model_dir, tmp_path):
    """The train task is the eval task itself: the check refuses before any model loads."""
    cmd = [sys.executable, "-m", "thinkgym.cli", "eval", "--model", str(tiny_model_dir),
           "--env", "thinkgym/Arithmetic-v0", "--limit", "5", "--train-task", "thinkgym/Arithmetic-v0",
           "--output-dir", str(tmp_path / "e")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 3, p.stderr[-2000:]
    assert "contamination" in p.stderr.lower()
    assert not (tmp_path / "e").exists()  # a refused eval leaves no empty output_dir behind
    bad = subprocess.run([sys.executable, "-m", "thinkgym.cli", "eval", "--model", str(tmp_path / "nope"),
                          "--env", "thinkgym/Arithmetic-v0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "is not an HF model directory" in bad.stderr
