"""Rubrics: weighted composition of named graders, breakdown kept, weight 0 = logged only."""

import pytest

from thinkgym.verifiers import Grade, get_grader, grade, register_grader
from thinkgym.verifiers.rubric import Rubric, register_rubric


@register_grader("test-rubric-half", version="2")
def _half(completion, gold, **meta):
    return Grade(0.5, reason="half", components={"inner": 0.25})


@register_grader("test-rubric-broken")
def _broken(completion, gold, **meta):
    raise RuntimeError("backend down")


@register_grader("test-rubric-echo")
def _echo(completion, gold, **meta):
    return Grade(1.0 if meta.get("flag") else 0.0, reason=f"flag={meta.get('flag')}")


RIGHT_WELL_FORMED = "<think>2+2</think>\\boxed{4}"
RIGHT_SLOPPY = "<think></think>\\boxed{4} and more words"
WRONG_WELL_FORMED = "<think>2+2</think>\\boxed{5}"


def test_math_plus_format_is_registered_and_weighted():
    g = grade("math+format", RIGHT_WELL_FORMED, "4")
    assert g.score == 1.0 and g.components["math"] == 1.0 and g.components["format"] == 1.0
    assert g.components["format.think_nonempty"] == 1.0 and g.extracted == "4"
    # The parts' versions are in the rubric's fingerprint: its scores change with theirs.
    parts = "+".join(get_grader(n).fingerprint for n in ("math", "format"))
    assert g.grader == f"math+format@1({parts})" and parts.startswith("math@") and "format@" in parts
    sloppy = grade("math+format", RIGHT_SLOPPY, "4")
    assert sloppy.score == pytest.approx(1.0 / 1.1)
    wrong = grade("math+format", WRONG_WELL_FORMED, "4")
    assert wrong.score == pytest.approx(0.1 / 1.1)
    assert sloppy.score > wrong.score  # correctness dominates format


def test_weight_zero_is_logged_only_and_partial_credit_passes_through():
    r = Rubric({"math": 1.0, "test-rubric-half": 0.0})
    g = r(RIGHT_WELL_FORMED, "4")
    assert g.score == 1.0 and g.components["test-rubric-half"] == 0.5
    assert g.components["test-rubric-half.inner"] == 0.25
    r2 = Rubric({"math": 1.0, "test-rubric-half": 1.0})
    assert r2(RIGHT_WELL_FORMED, "4").score == pytest.approx(0.75)


def test_failed_weighted_component_is_infra_error_but_zero_weight_failure_is_not():
    g = Rubric({"math": 1.0, "test-rubric-broken": 1.0})(RIGHT_WELL_FORMED, "4")
    assert g.score is None and "test-rubric-broken" in g.reason and g.components["math"] == 1.0
    g = Rubric({"math": 1.0, "test-rubric-broken": 0.0})(RIGHT_WELL_FORMED, "4")
    assert g.score == 1.0 and g.components["test-rubric-broken"] is None


def test_component_meta_is_routed():
    r = Rubric({"test-rubric-echo": 1.0, "math": 0.0})
    assert r("x", "1", component_meta={"test-rubric-echo": {"flag": True}}).score == 1.0
    assert r("x", "1").score == 0.0


def test_registered_rubric_and_bad_weights():
    register_rubric("test-rubric-combo", {"math": 3, "format": 1})
    assert grade("test-rubric-combo", WRONG_WELL_FORMED, "4").score == pytest.approx(0.25)
    for bad in ({}, {"math": -1.0}, {"math": 0.0}, {"math": float("nan")}):
        with pytest.raises(ValueError):
            Rubric(bad)
    g = grade("test-rubric-combo", RIGHT_WELL_FORMED, "4")
    assert g.details["weights"] == {"math": 3, "format": 1}


def test_reward_hack_format_alone_is_not_enough():
    # Perfect structure, answer hidden in think only: math 0, format fails too (no final answer).
    g = grade("math+format", "<think>\\boxed{4}</think>", "4")
    assert g.components["math"] == 0.0 and g.score < 0.1


def test_rubric_and_custom_graders_run_in_pool_workers():
    # Workers import the module that registered a grader, so user graders work in the pool too.
    from thinkgym.verifiers.pool import GraderPool

    register_rubric("test-rubric-pooled", {"math": 1.0, "test-rubric-half": 1.0})
    with GraderPool(workers=1, timeout_s=5) as pool:
        a, b = pool.grade_many("test-rubric-pooled", [(RIGHT_WELL_FORMED, "4"), (WRONG_WELL_FORMED, "4")])
        c = pool.grade_many("test-rubric-half", [("x", "1")])[0]
    assert (a.score, b.score, c.score) == (0.75, 0.25, 0.5)
    assert a.components["test-rubric-half.inner"] == 0.25
