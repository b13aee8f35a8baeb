"""Fourth audit of the ``math`` grader: answers too large to evaluate, and misreads (a bare
letter after a number, ``\\approx``, dot notation for repeating decimals, ``\\lg``). Every test
function failed before its fix; rows and tests marked ``guard`` passed before too and check
that a fix does not overreach."""

from __future__ import annotations

import time

import pytest

from thinkgym.verifiers import get_grader, grade


def B(ans: str) -> str:
    return f"<think>work it out</think>The answer is \\boxed{{{ans}}}."


def score(pred: str, gold: object) -> float | None:
    return grade("math", B(pred), gold).score


@pytest.fixture(scope="module", autouse=True)
def _warm_pool():
    # the default pool's one-off start (importing sympy in the workers) is not an item's cost
    assert score(r"\sqrt{9}", "3") == 1.0


# --------------------------------------------------------------------------- reward hacking


@pytest.mark.parametrize("pred, gold", [
    # each ran past the budget: score=None, an infrastructure error with no penalty in GRPO
    (r"9^{9^{9^9}}", "42"),
    (r"x^{10^{10}}", "42"),
    (r"x^{10^6}", "42"),
    (r"\prod_{k=1}^{10^9} k", "42"),
    (r"\prod_{k=1}^{10^9} 2", "42"),
    (r"\sum_{k=1}^{10^9} \frac{1}{k}", "42"),
    (r"\binom{10000000000}{5000000000}", "42"),  # computed by the parser while reading
    (r"\pi^{10^{10^{10}}}", "42"),
    (r"e^{e^{e^{10}}}", "42"),
    (r"\frac{9^{9^{9^9}}}{2} + 1", "42"),
    # equal to the key only by cancelling numbers no answer needs: unreadable all the same
    (r"2^{2^{40}} - 2^{2^{40}} + 42", "42"),
])
def test_answers_too_large_to_evaluate_are_a_quick_zero(pred, gold):
    t0 = time.monotonic()
    g = grade("math", B(pred), gold, timeout_s=3.0)
    assert g.score == 0.0, g
    assert "unreadable" in g.details and "unreadable" in g.reason and g.extracted
    assert time.monotonic() - t0 < 2.5


@pytest.mark.parametrize("pred, gold, want", [
    # guards: sizes real answers have, and closed forms sympy evaluates at once
    (r"\sum_{k=1}^{100000} k", "5000050000", 1.0),  # a polynomial sum has a closed form
    (r"2^{100}", "1267650600228229401496703205376", 1.0),
    (r"\ln(e^{10^{10}})", r"10^{10}", 1.0),  # e^x is never written out
    (r"\pi^{10^{10}}", "42", 0.0),
    (r"\prod_{k=1}^{100} k", "100!", 1.0),
    (r"(10^{10})!", r"(10^{10})!", 1.0),
])
def test_large_but_readable_answers_still_compare(pred, gold, want):
    assert score(pred, gold) == want


def test_a_huge_answer_against_a_huge_key_is_compared_not_read_as_wrong():
    # guard: the key needs such a number too, so the comparison is the grader's job
    g = grade("math", B(r"9^{9^{9^9}}"), r"9^{9^{9^9}}+0")
    assert g.score == 1.0 and not g.details, g
    g = grade("math", B(r"2^{2^{40}}"), r"2^{1099511627776}", timeout_s=3.0)
    assert g.score != 0.0 and "unreadable" not in g.details, g


def test_a_slow_comparison_of_a_readable_answer_stays_an_error():
    # guard: only absurd sizes are judged; a sum sympy adds term by term past the budget is
    # still an infrastructure error, not a wrong answer
    g = grade("math", B(r"\sum_{k=1}^{9999} \sin k"), "1", timeout_s=1.0)
    assert g.score is None and "budget" in g.reason


# --------------------------------------------------------------------------- misreads


@pytest.mark.parametrize("pred, gold, want", [
    # the parser's unit list dropped a bare m, s, g, t, h, c, d, l or o after a number: in a
    # key it may be a variable, so a plain number is not that answer
    ("5", "5m", 0.0), ("7", "7 m", 0.0), ("3", "3s", 0.0), ("4", "4t", 0.0), ("5", "5 m", 0.0),
    ("5", r"5 m^2", 0.0),
    ("5m", "5m", 1.0), ("5 m", "5m", 1.0), ("5m", "5 m", 1.0), ("5m", "5t", 0.0),
    # guards: an answer's unit letter against a plain-number key is a unit, as before; written
    # as text a letter is a unit anywhere; words are units as before
    ("5m", "5", 1.0), ("5 m", "5", 1.0), ("5x", "5", 0.0),
    ("5", r"5\text{ m}", 1.0), ("5", r"5\,\mathrm{m}", 1.0), ("5", "5cm", 1.0), ("5", "5 kg", 1.0),
    ("2", "2n", 0.0),
])
def test_a_bare_letter_after_a_number_in_the_key_is_a_variable(pred, gold, want):
    assert score(pred, gold) == want


@pytest.mark.parametrize("pred, gold, want", [
    # an approximation that contradicts the value read as the value before it
    (r"3 \approx 4", "3", 0.0), (r"3 \approx 4", "4", 0.0), (r"1000 \approx 999", "1000", 0.0),
    (r"\frac{1}{3} \approx 0.5", r"\frac{1}{3}", 0.0),
    # guards: a consistent approximation keeps the exact value (as the parser and Math-Verify
    # read it), rounded or truncated; a name on the left takes the value on the right
    (r"\frac{1}{3} \approx 0.33", r"\frac{1}{3}", 1.0), (r"\pi \approx 3.1415", r"\pi", 1.0),
    (r"\sqrt{2} \approx 1.41", r"\sqrt{2}", 1.0), (r"\pi \approx 3.14", "3.14", 0.0),
    (r"x \approx 3.14", "3.14", 1.0), (r"\frac{22}{7} \approx 3", r"\frac{22}{7}", 1.0),
])
def test_an_approximation_that_contradicts_the_value_is_no_answer(pred, gold, want):
    g = grade("math", B(pred), gold)
    assert g.score == want, g


@pytest.mark.parametrize("pred, gold", [
    (r"0.\dot3", r"\frac{1}{3}"), (r"0.\dot{3}", "1/3"), (r"0.1\dot{6}", r"\frac{1}{6}"),
    (r"0.\dot{1}\dot{2}", r"\frac{4}{33}"), (r"0.\dot{1}4\dot{2}", r"\frac{142}{999}"),
    (r"x = 0.\dot{6}", r"\frac{2}{3}"), (r"\frac{1}{3}", r"0.\dot{3}"),
])
def test_dot_notation_for_repeating_decimals(pred, gold):
    assert score(pred, gold) == 1.0
    assert score(pred, "0.33") == 0.0  # guard: still exact


@pytest.mark.parametrize("pred, gold, want", [
    (r"\lg 100", "2", 1.0), (r"\lg{1000}", "3", 1.0), (r"\lg 100", r"\log_{10} 100", 1.0),
    (r"\lg x", r"\log_{10} x", 1.0), (r"\lg 100", "100", 0.0),
])
def test_lg_is_the_common_logarithm(pred, gold, want):
    assert score(pred, gold) == want


@pytest.mark.parametrize("pred, gold, want", [
    # guards: a mixed-unit length is not converted; it matches only itself, never a part of it
    (r"4 \text{ feet } 6 \text{ inches}", "4", 0.0), (r"4 \text{ feet } 6 \text{ inches}", "4.5", 0.0),
    (r"4 \text{ feet } 6 \text{ inches}", "6", 0.0),
    (r"4 \text{ feet } 6 \text{ inches}", r"4 \text{ feet } 6 \text{ inches}", 1.0),
    # guard: j stays a variable (the imaginary unit only as i)
    ("3+4j", "3+4i", 0.0),
])
def test_left_as_they_were(pred, gold, want):
    assert score(pred, gold) == want


def test_fingerprint_is_bumped():
    # scores changed: a cached grade of the previous version must not be reused
    assert get_grader("math").fingerprint == "math@3"
