"""The countdown grader: exact, safe evaluation of the model's expression."""

from __future__ import annotations

import pytest

from thinkgym.verifiers import grade
from thinkgym.verifiers.countdown import ExpressionError, check_expression, evaluate

GOLD = {"numbers": [3, 7, 12, 25], "target": 94}


def c(ans: str) -> str:
    return f"<think>try things</think>\n<answer>{ans}</answer>"


@pytest.mark.parametrize(
    "answer",
    [
        "3 * 25 + 7 + 12",
        "12 + 7 + 25 * 3",
        "(25 * 3) + (7 + 12)",
        "25 × 3 + 7 + 12",
        "25 \\times 3 + 7 + 12 = 94",
        "$25 \\cdot 3 + 12 + 7$",
        "7 + 12 + 3 * 25",
    ],
)
def test_any_valid_expression_is_right(answer):
    g = grade("countdown", c(answer), GOLD)
    assert g.score == 1.0, g
    assert g.grader == "countdown@2"


@pytest.mark.parametrize(
    "answer, why",
    [
        ("3 * 25 + 7 + 12 + 3 - 3", "not available"),  # 3 three times
        ("25 * 3 + 19", "not available"),  # 19 not given
        ("25 * 3 + 7 + 12 + 0", "not available"),
        ("3 * 25 + 7 * 12 - 65", "not available"),
        ("3 * 25 + 7 + 11", "not available"),
        ("3 * 25 + 7 - 12", "evaluates to 70"),
        ("25 * 3 + 7 + 12 = 95", "not the target"),
        ("25 * 3 + 7 + 12 = 999 = 94", "not the target"),  # every link of a chain is a claim
        ("25 % 3 + 7", "not allowed"),
        ("25 ** 3", "not allowed"),
        ("__import__('os').system('true')", "not allowed"),
        ("94.0", "not allowed"),
        ("x + 94", "not allowed"),
        ("25 / (7 - 7)", "division by zero"),
        ("3 * 25 +", "not an arithmetic expression"),
    ],
)
def test_wrong_or_forbidden_expressions_score_zero(answer, why):
    g = grade("countdown", c(answer), GOLD)
    assert g.score == 0.0 and why in g.reason, g


def test_exact_fractions_and_multiplicity():
    # 8 / (3 - 8/3) = 24 only in exact arithmetic; floats give 23.999999999999996.
    gold = {"numbers": [3, 3, 8, 8], "target": 24}
    assert grade("countdown", c("8 / (3 - 8 / 3)"), gold).score == 1.0
    assert evaluate("8 / (3 - 8 / 3)")[0] == 24
    with pytest.raises(ExpressionError, match="division by zero"):
        evaluate("8 / (3 - 3)")
    assert check_expression("8 / (3 - 3)", [3, 3, 8], 24)[1] == "division by zero"


def test_exactly_once_is_configurable():
    partial = c("3 * 25 + 19")  # not available at all
    sub = c("25 * 3 + 7 + 12")
    assert grade("countdown", sub, GOLD, exactly_once=True).score == 1.0
    g = grade("countdown", c("25 * 3 + 12 + 7 * 1"), {"numbers": [1, 3, 7, 12, 25, 50], "target": 94}, exactly_once=True)
    assert g.score == 0.0 and "missing [50]" in g.reason
    assert grade("countdown", c("25 * 3 + 12 + 7 * 1"), {"numbers": [1, 3, 7, 12, 25, 50], "target": 94}).score == 1.0
    assert grade("countdown", partial, GOLD, exactly_once=True).score == 0.0


def test_partial_credit_for_the_right_numbers_only():
    kw = {"partial_credit": 0.25, "exactly_once": True}
    right = grade("countdown", c("3 * 25 + 7 + 12"), GOLD, **kw)
    assert right.score == 1.0 and right.components == {"correct": 1.0, "numbers_valid": 1.0}
    miss = grade("countdown", c("3 * 25 + 7 - 12"), GOLD, **kw)  # the given numbers, wrong value
    assert miss.score == 0.25 and miss.components == {"correct": 0.0, "numbers_valid": 1.0}
    for bad in ("3 * 26 + 7 + 12", "3 * 25 + 7", "3 * 25 + 7 + 12 + 12", "3 * (25 + 7 + 12"):
        g = grade("countdown", c(bad), GOLD, **kw)  # made-up, missing, reused number; not an expression
        assert g.score == 0.0 and g.components["correct"] == 0.0, (bad, g)
    assert grade("countdown", c("3 * 25 + 7 - 12"), GOLD).score == 0.0  # off by default
    assert grade("countdown", "no answer", GOLD, **kw).score == 0.0
    g = grade("countdown", c("3 * 25 + 7 - 12"), GOLD, partial_credit=1.0)
    assert g.is_error and "partial_credit" in g.reason  # a bad knob is the grader's error, not a 0


def test_extraction_policy_and_gold_forms():
    assert grade("countdown", "<think>3 * 25 + 7 + 12</think> no answer", GOLD).score == 0.0
    assert grade("countdown", "<think>never closed <answer>3 * 25 + 7 + 12</answer>", GOLD).score == 0.0
    assert grade("countdown", "<think>x</think> \\boxed{3 * 25 + 7 + 12}", GOLD).score == 1.0
    hedge = "<think>x</think><answer>3 * 25 + 7 + 12</answer><answer>25 * 3 + 19</answer>"
    assert grade("countdown", hedge, GOLD).score == 0.0
    # The gold may come as a JSON string; a malformed gold is an infrastructure error, not 0.
    assert grade("countdown", c("3 * 25 + 7 + 12"), '{"numbers": [3, 7, 12, 25], "target": 94}').score == 1.0
    bad = grade("countdown", c("1"), {"target": 1})
    assert bad.score is None and "countdown gold" in bad.reason


def test_huge_or_deep_input_is_rejected_quickly():
    assert grade("countdown", c("9" * 40 + " * 9"), GOLD).score == 0.0
    assert grade("countdown", c("(" * 150 + "1" + ")" * 150), GOLD).score == 0.0
    assert grade("countdown", c("-" * 250 + "1"), GOLD).score == 0.0


@pytest.mark.parametrize(
    "answer, gold",
    [
        ("\\frac{12}{12} + 12", {"numbers": [12, 12, 12, 9], "target": 13}),
        ("12 + \\dfrac{12}{12}", {"numbers": [12, 12, 12, 9], "target": 13}),
        ("\\frac{8}{3 - \\frac{8}{3}}", {"numbers": [3, 3, 8, 8], "target": 24}),  # nested
        ("\\frac { 8 } { 3 - \\tfrac{8}{3} }", {"numbers": [3, 3, 8, 8], "target": 24}),
        ("12 \\div 12 \\cdot 1 + 12", {"numbers": [12, 1, 12, 12], "target": 13}),
    ],
)
def test_latex_fractions_are_division(answer, gold):
    g = grade("countdown", c(answer), gold)
    assert g.score == 1.0, g


def test_unbraced_or_unclosed_latex_fraction_is_not_an_expression():
    gold = {"numbers": [12, 12, 12], "target": 13}
    for answer in ("\\frac12 + 12", "\\frac{12}{12 + 12"):
        g = grade("countdown", c(answer), gold)
        assert g.score == 0.0 and "not an arithmetic expression" in g.reason, g


def test_stated_result_may_be_written_as_a_decimal():
    gold = {"numbers": [12, 1, 12, 9], "target": 13}
    for answer in ("12 + 1 = 13.0", "12 + 1 = 13.00", "12 + 1 = 13"):
        assert grade("countdown", c(answer), gold).score == 1.0, answer
    for answer in ("12 + 1 = 14.0", "12 + 1 = 13.5", "12 + 1 = 13.0 = 12.0"):
        g = grade("countdown", c(answer), gold)
        assert g.score == 0.0 and "not the target" in g.reason, (answer, g)
    g = grade("countdown", c("12.0 + 1 = 13"), gold)  # a float in the expression is still no number
    assert g.score == 0.0 and "not allowed" in g.reason, g


@pytest.mark.parametrize(
    "gold, why",
    [
        ({"numbers": [12, 1.9], "target": 13}, "numbers must be integers, got 1.9"),
        ({"numbers": [12, True], "target": 13}, "numbers must be integers, got True"),
        ({"numbers": [12, 1], "target": 13.5}, "target must be an integer, got 13.5"),
        ({"numbers": [], "target": 13}, "numbers must be a non-empty list"),
        ({"numbers": "12", "target": 13}, "numbers must be a non-empty list"),
        ([], "countdown gold must be"),
        ("[]", "countdown gold must be"),
        ("not json", "not JSON"),
    ],
)
def test_invalid_gold_is_a_data_error(gold, why):
    g = grade("countdown", c("12 + 1"), gold)
    assert g.score is None and why in g.reason, g


def test_gold_integers_written_losslessly_otherwise_are_accepted():
    assert grade("countdown", c("12 + 1"), {"numbers": [12.0, "1"], "target": "13"}).score == 1.0
