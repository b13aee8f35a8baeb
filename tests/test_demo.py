"""`thinkgym demo --quick`: the whole pipeline (tiny model, SFT, vLLM eval, GRPO, control arm)
end to end at toy sizes. Checks the outputs' structure and ranges, not accuracies."""

from __future__ import annotations

import json
import math

import pytest

from thinkgym.demo import DemoConfig, build_data, compact_trace


def test_compact_trace_is_graded_right():
    """The SFT trace built from an item is a correct countdown answer in the completion format."""
    from thinkgym.tasks import make_task
    from thinkgym.verifiers import get_grader

    src = make_task("countdown", seed=5, **DemoConfig().task_params)
    grader = get_grader("countdown")
    for i in range(50):
        it = src[i]
        text = compact_trace(it)
        assert text.startswith("<think>\n") and "</think>\n<answer>" in text
        g = grader(text, it["answer"], **it["metadata"].get("grader_kwargs", {}))
        assert g.score == 1.0, (text, g.reason)


def _row(text: str, target: int, reward: float) -> dict:
    q = f"Using each of 2, 3, 4 exactly once, make {target} with + - * / and parentheses."
    return {"texts": [text], "reward": reward, "messages": [{"role": "user", "content": q}]}


def test_think_arithmetic_checks_every_line():
    from thinkgym.demo import think_arithmetic

    rows = [
        _row("<think>\n8 + 3 = 11\n11 * 5 = 55\n</think>\n<answer>(8 + 3) * 5</answer>", 55, 1.0),  # honest
        _row("<think>\n8 + 3 = 12\n12 * 5 = 55\n</think>\n<answer>(8 + 3) * 5</answer>", 55, 1.0),  # 2 wrong lines
        _row("<think>\n2 + 2 = 4\n4 * 3 = 13\n</think>\n<answer>(2 + 2) * 3</answer>", 13, 0.0),  # claims the target
        _row("<think>\n2 + 2 = 4\n4 * 3 = 12\n</think>\n<answer>(2 + 2) * 3</answer>", 13, 0.0),  # honest miss
        _row("<answer>2 * 3</answer>", 13, 0.0),  # no think block: no lines, no claim
    ]
    d = think_arithmetic(rows)
    assert d["think_lines_wrong"] == 3 / 8
    assert d["first_line_wrong"] == 1 / 4 and d["last_line_wrong"] == 2 / 4
    assert d["right_lines_ok"] == 1 / 2
    assert d["wrong_claims_target"] == 1 / 3
    assert set(think_arithmetic([]).values()) == {None}  # nothing to count is not 0%
    only_wrong = think_arithmetic([{**rows[0], "reward": 0.0}])
    assert only_wrong["right_lines_ok"] is None and only_wrong["wrong_claims_target"] is not None


def test_heldout_is_disjoint_from_training(tmp_path):
    cfg = DemoConfig.quick_preset(output_dir=str(tmp_path), heldout=40)
    d = build_data(cfg, tmp_path)
    assert d["heldout_items"] == 40 and d["contamination"]["contaminated"] == []
    train = {json.loads(ln)["question"] for ln in (d["dir"] / "train_items.jsonl").read_text().splitlines()}
    held = [json.loads(ln)["question"] for ln in (d["dir"] / "heldout.jsonl").read_text().splitlines()]
    assert len(set(held)) == len(held) and not train & set(held)
    rows = (d["dir"] / "sft.jsonl").read_text().splitlines()
    assert len(rows) == cfg.sft_examples + cfg.dev_examples
    # The dev items that pick the SFT checkpoint (sft_config's eval_env) are gated too.
    import gymnasium

    import thinkgym.envs  # noqa: F401 - registers the env ids
    from thinkgym.demo import sft_config

    sc = sft_config(cfg, "m", tmp_path / "sft", d["dir"])
    env = gymnasium.make(sc["eval_env"], **sc["eval_env_kwargs"]).unwrapped
    dev = [env.source[i]["question"] for i in range(sc["eval_env_items"])]
    assert sc["best_metric"] == "accuracy" and len(dev) == cfg.dev_items
    assert set(dev) <= train and not set(dev) & set(held)


@pytest.mark.slow
@pytest.mark.vllm
def test_bad_seed_or_output_dir_fails_before_any_stage(tmp_path):
    """Caught up front: a negative seed would otherwise fail in GRPO, after minutes of SFT."""
    from typer.testing import CliRunner

    from thinkgym.cli import app
    from thinkgym.demo import MAX_SEED, run_demo

    (tmp_path / "file").write_text("x")
    for kw, msg in (({"seed": -1}, "seed must be in"), ({"seed": MAX_SEED + 1}, "seed must be in"),
                    ({"output_dir": str(tmp_path / "file" / "run")}, "exists and is not a directory")):
        with pytest.raises(ValueError, match=msg):
            run_demo(DemoConfig.quick_preset(**{"output_dir": str(tmp_path / "run"), **kw}))
    assert not (tmp_path / "run").exists()  # nothing written
    DemoConfig(seed=MAX_SEED).validate()
    r = CliRunner().invoke(app, ["demo", "--quick", "--output-dir", str(tmp_path / "file")])
    assert r.exit_code == 2 and "error: output_dir:" in r.output and "Traceback" not in r.output, r.output


@pytest.mark.slow
@pytest.mark.vllm
def test_demo_quick_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from thinkgym.cli import app

    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["demo", "--quick", "--output-dir", str(out), "--seed", "1"])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    for arm in ("sft", "sft_control", "grpo"):
        for key in ("accuracy", "pass@1", "pass@4", "format_rate"):
            assert 0.0 <= s[arm][key] <= 1.0, (arm, key, s[arm][key])
        for key in ("think_lines_wrong", "right_lines_ok"):  # None: nothing to count in this tiny run
            assert s[arm][key] is None or 0.0 <= s[arm][key] <= 1.0, (arm, key, s[arm][key])
        assert s[arm]["mean_length"] > 0
    assert s["heldout_items"] == DemoConfig.quick_preset().heldout
    assert s["contamination"]["contaminated"] == []
    assert 0 < s["minutes"] < 30 and math.isfinite(s["gain_vs_best_baseline"])
    assert s["grpo_steps"] == DemoConfig.quick_preset().grpo_steps and s["sft_control_steps"] >= 1
    # Three distinct policies were evaluated.
    assert len({s[a]["model"] for a in ("sft", "sft_control", "grpo")}) == 3
    assert (out / "curves.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "| grpo |" in report and "sft_control" in report
    # The SFT policy is the dev-accuracy checkpoint, and the control arm trained for GRPO's time.
    evals = [json.loads(ln) for ln in (out / "sft" / "metrics.jsonl").read_text().splitlines() if "eval/accuracy" in ln]
    assert evals and s["sft_best_step"] in [r["step"] for r in evals]
    assert s["sft_best_eval_accuracy"] == max(r["eval/accuracy"] for r in evals)
    assert not any("eval/accuracy" in ln for ln in (out / "sft_control" / "metrics.jsonl").read_text().splitlines())
    ctl = json.loads((out / "sft_control" / "result.json").read_text())
    assert ctl["stop_reason"] == "max_train_s" and s["sft_control_train_s"] >= s["grpo_train_s"] > 0
