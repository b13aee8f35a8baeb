"""Graders and config overrides: numpy and non-finite golds, per-field checks of config
arguments, verdict word ends, invisible text before <think>, duplicate countdown answers,
text-valued ``--set`` overrides and a plugin grader that declares its arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from thinkgym.verifiers.base import check_kwargs, get_grader, grade
from thinkgym.verifiers.judge import parse_verdict

THINK = "<think>x</think> "


def B(ans: str) -> str:
    return THINK + "\\boxed{" + ans + "}"


# --------------------------------------------------------------------------- numpy golds


@pytest.mark.parametrize("pred,gold", [
    ("0.5", np.float64(0.5)),
    ("3", np.int64(3)),
    ("3", np.int32(3)),
    ("0.1", np.float32(0.1)),  # its shortest text is the decimal meant, not 0.100000001490116
    ("\\frac{1}{2}", Fraction(1, 2)),
    ("1, 2", [np.int64(1), np.float64(2.0)]),
])
def test_math_numpy_golds_are_their_numbers(pred, gold):
    g = grade("math", B(pred), gold)
    assert g.score == 1.0, g.reason
    assert grade("math", B("7"), gold).score == 0.0


def test_math_numpy_bool_gold_is_refused():
    g = grade("math", B("1"), np.bool_(True))
    assert g.score is None and "not bool" in g.reason


def test_countdown_numpy_golds_are_their_numbers():
    c = THINK + "<answer>12 + 1</answer>"
    for gold in ({"numbers": [np.int64(12), np.int64(1)], "target": np.int64(13)},
                 {"numbers": np.array([12, 1]), "target": np.float64(13.0)},
                 {"numbers": (12, 1), "target": np.float32(13)}):
        g = grade("countdown", c, gold)
        assert g.score == 1.0, g.reason
    g = grade("countdown", c, {"numbers": [12, 1], "target": np.float64(13.5)})
    assert g.score is None and "target must be an integer" in g.reason
    g = grade("countdown", c, {"numbers": [np.bool_(True), 1], "target": 13})
    assert g.score is None


# --------------------------------------------------------------------------- non-finite golds


@pytest.mark.parametrize("gold", [float("nan"), np.float64("nan"), [1, float("nan")]])
def test_math_nan_gold_is_a_data_error(gold):
    for pred in ("nan", "1", "\\text{nan}"):
        g = grade("math", B(pred), gold)
        assert g.score is None and "NaN" in g.reason, (pred, g)


def test_math_infinite_gold_is_infinity():
    # sympy's oo: \infty (or the Unicode sign) equals float("inf"), and -\infty equals -inf.
    assert grade("math", B("\\infty"), float("inf")).score == 1.0
    assert grade("math", B("+\\infty"), np.float64("inf")).score == 1.0
    assert grade("math", B("\u221e"), float("inf")).score == 1.0
    assert grade("math", B("-\\infty"), float("-inf")).score == 1.0
    assert grade("math", B("-\\infty"), float("inf")).score == 0.0
    assert grade("math", B("\\infty"), float("-inf")).score == 0.0
    assert grade("math", B("10^{308}"), float("inf")).score == 0.0


# --------------------------------------------------------------------------- config arguments


@pytest.mark.parametrize("name,kw,msg", [
    ("judge", {"judge_config": {"timeout_s": True, "base_url": "http://127.0.0.1:9/v1"}},
     "field 'timeout_s' of JudgeConfig must be a number, got bool True"),
    ("judge", {"judge_config": {"max_retries": 1.5}}, "field 'max_retries' of JudgeConfig must be an integer, got float 1.5"),
    ("judge", {"judge_config": {"max_retries": 2.0}}, "field 'max_retries' of JudgeConfig must be an integer, got float 2.0"),
    ("judge", {"judge_config": {"model": 3}}, "field 'model' of JudgeConfig must be a string, got int 3"),
    ("judge", {"judge_config": {"mode": "scores"}}, "field 'mode' of JudgeConfig must be one of ['binary', 'score'], got str 'scores'"),
    ("judge", {"judge_config": {"nonce_secret": 5}}, "field 'nonce_secret' of JudgeConfig must be a string or null, got int 5"),
    ("judge", {"judge_config": {"timeout_s": -1}}, "JudgeConfig.timeout_s must be a finite number > 0, got -1"),
    ("math", {"math_config": {"timeout_s": "5"}}, "field 'timeout_s' of MathConfig must be a number, got str '5'"),
    ("math", {"math_config": {"extract": {"last_only": 1}}},
     "field 'extract' of MathConfig: field 'last_only' of ExtractConfig must be true or false, got int 1"),
    ("math", {"math_config": {"extract": {"channels": ["boxed", 3]}}}, "field 'channels' of ExtractConfig item 1 must be a string"),
    ("format", {"format_config": {"min_think_chars": 2.0}}, "field 'min_think_chars' of FormatConfig must be an integer, got float 2.0"),
])
def test_config_argument_errors_name_the_field_and_its_value(name, kw, msg):
    key, why = check_kwargs(name, kw)
    assert key == next(iter(kw)) and msg in why, why
    assert "{'" not in why  # the field's value, not the whole object
    g = grade(name, B("1"), "1", **kw)
    assert g.score is None and msg in g.reason


def test_config_argument_good_values_pass():
    assert check_kwargs("judge", {"judge_config": {"timeout_s": 5, "max_retries": np.int64(2), "nonce_secret": None}}) is None
    assert check_kwargs("math", {"math_config": {"timeout_s": 3, "extract": {"last_only": True, "channels": ["boxed"]}}}) is None
    assert grade("math", B("2") + " \\boxed{3}", "3", math_config={"extract": {"last_only": True}, "timeout_s": 3}).score == 1.0
    # An argument that is not an object still shows what it got.
    assert check_kwargs("format", {"format_config": "strict"})[1].endswith("got str 'strict'")


# --------------------------------------------------------------------------- judge verdicts

N = "0123456789abcdef"


@pytest.mark.parametrize("word", [
    "CORRECT_ish", "CORRECTLY", "CORRECT1", "CORRECT\u00e9", "CORRECT\u0301", "CORRECT\u203fish", "CORRECT-ish",
    "CORRECT__ish", "INCORRECTLY", "INCORRECT_ish", "NOT CORRECT",
])
def test_judge_verdict_word_must_end_as_a_word(word):
    score, why = parse_verdict(f"Looks fine.\nVERDICT {N}: {word}", N, "x")
    assert score is None and "no verdict" in why


@pytest.mark.parametrize("word,score", [
    ("CORRECT", 1.0), ("INCORRECT", 0.0), ("_CORRECT_", 1.0), ("__INCORRECT__", 0.0), ("**CORRECT**", 1.0),
    ("CORRECT.", 1.0), ("CORRECT - the values match", 1.0), ("correct", 1.0),
])
def test_judge_verdict_with_punctuation_or_emphasis_counts(word, score):
    assert parse_verdict(f"VERDICT {N}: {word}", N, "x")[0] == score


def test_judge_score_must_end_as_a_word():
    assert parse_verdict(f"SCORE {N}: 7th", N, "x", "score")[0] is None
    assert parse_verdict(f"SCORE {N}: 7/10.", N, "x", "score")[0] == 0.7


# --------------------------------------------------------------------------- format


@pytest.mark.parametrize("lead", ["\ufeff", "\u200b\n", " \ufeff "])
def test_format_invisible_text_before_think_is_no_text(lead):
    g = grade("format", lead + "<think>x</think> \\boxed{3}", None)
    assert g.score == 1.0, g.reason
    g = grade("format", lead + "a<think>x</think> \\boxed{3}", None)
    assert g.score == 0.0 and "text before <think>" in g.reason


# --------------------------------------------------------------------------- countdown duplicates

GOLD = {"numbers": [12, 1, 5], "target": 13}


@pytest.mark.parametrize("completion", [
    THINK + "\\boxed{12 + 1}\n<answer>12+1</answer>",
    THINK + "\\boxed{1 + 12}\n<answer>12+1</answer>",  # same value from the same numbers
    THINK + "\\boxed{12 + 1 = 13}\n<answer>12+1=13</answer>",
])
def test_countdown_same_answer_twice_is_one_answer(completion):
    g = grade("countdown", completion, GOLD)
    assert g.score == 1.0, g.reason


@pytest.mark.parametrize("completion", [
    THINK + "\\boxed{12 + 1}\n<answer>12+5</answer>",  # different values
    THINK + "\\boxed{12 + 5 - 5 + 1}\n<answer>12+1</answer>",  # same value, other numbers
    THINK + "\\boxed{12 + 1 = 13}\n<answer>12+1</answer>",  # a stated result must match as text
])
def test_countdown_different_answers_stay_a_hedge(completion):
    g = grade("countdown", completion, GOLD)
    assert g.score == 0.0 and g.reason == "several different answers"


def test_countdown_duplicate_wrong_answers_keep_partial_credit():
    g = grade("countdown", THINK + "\\boxed{12 + 5}\n<answer>5+12</answer>", GOLD, partial_credit=0.1)
    assert g.score == 0.1 and g.components == {"correct": 0.0, "numbers_valid": 1.0}


# --------------------------------------------------------------------------- versions


def test_fingerprints_of_graders_whose_scores_changed():
    assert get_grader("countdown").fingerprint == "countdown@2"
    assert get_grader("format").fingerprint == "format@2"
    assert get_grader("judge").fingerprint == "judge@2"
    assert get_grader("math").fingerprint == "math@3"


# --------------------------------------------------------------------------- --set on text fields


def test_set_gives_text_fields_their_text():
    from thinkgym.config import ConfigError, load_config, parse_sets
    from thinkgym.grpo.train import GRPOConfig
    from thinkgym.sft_coldstart.train import SFTConfig

    cfg = load_config(GRPOConfig, None, parse_sets(["output_dir=2024-01-01", "model=1.10", "lr=3e-4"]))
    assert (cfg.output_dir, cfg.model, cfg.lr) == ("2024-01-01", "1.10", 3e-4)
    cfg = load_config(GRPOConfig, None, parse_sets(["model='1.10'", "output_dir=null"]))
    assert (cfg.model, cfg.output_dir) == ("1.10", GRPOConfig().output_dir)  # quoted whole: the string inside
    base = ["tasks=[arithmetic]"]
    cfg = load_config(SFTConfig, None, parse_sets(base + ["system_prompt=yes", "model=0x10"]))
    assert (cfg.system_prompt, cfg.model) == ("yes", "0x10")
    # Other types still read YAML.
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(GRPOConfig, None, parse_sets(["lr=fast"]))
    # Text that is not YAML: a text field takes it when the config class is known.
    cfg = load_config(SFTConfig, None, parse_sets(base + ["system_prompt=Note: a: b"], cls=SFTConfig))
    assert cfg.system_prompt == "Note: a: b"
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_sets(["lr=a: b: c"], cls=SFTConfig)


def test_set_text_survives_overrides_update():
    from thinkgym.config import Overrides, load_config, parse_sets
    from thinkgym.grpo.train import GRPOConfig

    ov = Overrides()
    ov.put("model", "m", "--model")
    ov.update(parse_sets(["output_dir=2024-01-01"]))
    cfg = load_config(GRPOConfig, None, ov)
    assert (cfg.model, cfg.output_dir) == ("m", "2024-01-01")
    # A typed option given after a --set of the same key wins, with its own value.
    ov.put("output_dir", "runs/x", "--output-dir")
    assert load_config(GRPOConfig, None, ov).output_dir == "runs/x"


# --------------------------------------------------------------------------- plugin example

PLUGIN = Path(__file__).resolve().parent.parent / "examples" / "plugin"


@pytest.mark.slow
def test_plugin_example_grader_declares_its_arguments(tmp_path):
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(site), str(PLUGIN)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    code = r"""
import json
from thinkgym.verifiers import grade
c = "<think>x</think><answer>ABC</answer>"
out = {k: (g.score, g.reason) for k, g in {
    "plain": grade("exact_text", c, "abc"),
    "ignore_case": grade("exact_text", c, "abc", ignore_case=True),
    "typo": grade("exact_text", c, "abc", ignore_cas=True),
    "kind": grade("exact_text", c, "abc", ignore_case="yes"),
}.items()}
print(json.dumps(out))
"""
    env = {**os.environ, "PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["plain"][0] == 0.0 and out["ignore_case"][0] == 1.0
    assert out["typo"][0] is None and "takes no argument 'ignore_cas'" in out["typo"][1]
    assert out["kind"][0] is None and "expected true or false" in out["kind"][1]
