"""Bugs found by fuzzing the math, format and countdown graders and answer extraction; each
concrete case failed before its fix. The seeded fuzz tests at the end keep the invariants:
no false pass against an independent exact evaluation, no infrastructure error for an
ordinary answer, the same score twice, and format and extraction agreeing on the answer."""

from __future__ import annotations

import random
import time
from collections import Counter
from fractions import Fraction

import pytest

from thinkgym.verifiers import grade
from thinkgym.verifiers.extract import extract
from thinkgym.verifiers.format import _blank_answer, check_format


def B(ans: str) -> str:
    return f"<think>work it out</think>The answer is \\boxed{{{ans}}}."


# --------------------------------------------------------------------------- math


@pytest.mark.parametrize("pred, gold, score", [
    # both sides percentages: one scale (0.5% read as 0.5 matched 50% read as a fraction)
    (r"0.5\%", r"50\%", 0.0), (r"5000\%", r"50\%", 0.0), (r"50\%", r"50\%", 1.0), (r"50\%", "0.5", 1.0),
    (r"50\%", "50", 1.0),
])
def test_two_percentages_compare_on_one_scale(pred, gold, score):
    assert grade("math", B(pred), gold).score == score


@pytest.mark.parametrize("pred, gold, score", [
    ("5 quadrillion", "5", 0.0), ("1 fourth", "1", 0.0), ("3 twelfths", "3", 0.0), ("5 lakh", "5", 0.0),
    ("2 sextillionths", "2", 0.0), (r"5 \text{ quadrillion}", "5", 0.0), ("5 less", "5", 0.0),
    ("5 decrease", "5", 0.0),
    ("5 months", "5", 1.0), ("7 ways", "7", 1.0),  # counted nouns stay units
])
def test_scale_and_fraction_words_are_not_units(pred, gold, score):
    assert grade("math", B(pred), gold).score == score


@pytest.mark.parametrize("pred, gold, score", [
    # the parser read every integer next to a rational as a mixed number: 2(3) was 5
    ("2(3)", "5", 0.0), ("2(3)", "6", 1.0), ("(12)(3)", "15", 0.0), ("(12)(3)", "36", 1.0),
    ("(-2)(3)", "-5", 0.0), ("2 (3) 4", "9", 0.0), ("(2)(3) + 1", "6", 0.0),
    (r"2\frac{1}{2}", "2.5", 1.0), (r"-2\frac{1}{2}", "-2.5", 1.0), (r"10\frac{3}{4}", "10.75", 1.0),
])
def test_juxtaposition_is_a_product_except_for_a_mixed_number(pred, gold, score):
    assert grade("math", B(pred), gold).score == score


@pytest.mark.parametrize("pred, gold, score", [
    # a braced function argument swallowed the rest of the product: sin{(12)} * 3 was sin(36)
    (r"\sin{(12)} \cdot 3", r"\sin(36)", 0.0), (r"\sin{\left(12\right)} \cdot 3", r"3\sin(12)", 1.0),
    (r"\ln{(6)} \cdot 2", r"\ln 12", 0.0), (r"\log{(2)} / 3", r"\log(2/3)", 0.0),
    (r"\sin{\left(x \right)} \cdot y", r"y \sin(x)", 1.0), (r"\sin{\left(x \right)} \cdot y", r"\sin(xy)", 0.0),
])
def test_braced_function_argument_ends_at_its_brace(pred, gold, score):
    assert grade("math", B(pred), gold).score == score


@pytest.mark.parametrize("pred, gold, score", [
    # sympy read the gold "1e6" as 6e, and a float gold 1e-07 as e - 7
    ("6e", "1e6", 0.0), ("e - 7", 1e-07, 0.0), ("1000^2", "1e6", 1.0),
    # the parser cannot read a repeating decimal: a good gold was score=None for any symbolic answer
    (r"\frac{1}{\sqrt{9}}", r"0.\overline{3}", 1.0), (r"\sqrt{e}", r"0.\overline{3}", 0.0),
    (r"x \le \dfrac{23}{9}", r"(-\infty, 2.\overline{5}]", 1.0), (r"x \le 2.6", r"(-\infty, 2.\overline{5}]", 0.0),
    (r"50\%", r"\frac{\sqrt{4}}{4}", 1.0), (r"8467.97\%", r"84\frac{6797}{10000}", 1.0),
])
def test_fast_path_literals_reach_sympy_as_their_exact_value(pred, gold, score):
    assert grade("math", B(pred), gold).score == score


@pytest.mark.parametrize("pred, gold, score", [
    # the parser's unit removal dropped a trailing letter from any expression
    ("x + 7t", "x + 7", 0.0), ("3t+2t", "3t+2", 0.0), (r"2\pi r h", r"2\pi r", 0.0),
    ("x^2 + 2s", "x^2+2", 0.0), ("10 + 5 g", "15", 0.0),
    ("5cm", "5", 1.0), ("5 m", "5", 1.0), ("2.5kg", "2.5", 1.0), (r"5 \text{cm}^2", "5", 1.0),
])
def test_units_are_dropped_only_after_a_plain_number(pred, gold, score):
    assert grade("math", B(pred), gold).score == score


@pytest.mark.parametrize("pred, gold, score", [
    # the parser's fix for \frac{1}2 read the digit after a whole fraction as its denominator
    (r"\frac{1}{2}1000", "0", 0.0), (r"\frac{1}{2}1000", "500", 1.0), (r"\frac{1}{2} 30", "0", 0.0),
    (r"-\sqrt{\frac{20}{6}}1000!", r"-\sqrt{\frac{20}{6}}", 0.0), (r"\frac1234", "17", 1.0),
    (r"\frac{1}2", "0.5", 1.0), (r"\frac1{2}", "0.5", 1.0),
])
def test_fraction_repair_follows_tex(pred, gold, score):
    assert grade("math", B(pred), gold).score == score


@pytest.mark.parametrize("pred, gold, score", [
    # simplify() turned (55.12)^oo + 2 oo - 55.12^-2 into 0
    (r"(55.12)^\infty - \infty \cdot (-2)", r"(55.12)^{-2}", 0.0), (r"2\infty", r"\infty", 1.0),
    (r"-\infty", r"\infty", 0.0), (r"e^{-\infty}", "0", 1.0),
])
def test_an_infinite_value_equals_only_itself(pred, gold, score):
    assert grade("math", B(pred), gold).score == score


def test_deeply_nested_rational_answer_is_a_quick_zero():
    # evalf doubled its work per level of the parser's unevaluated nesting: 20 divisions ran
    # past the 5 s budget and came back as score=None
    t0 = time.perf_counter()
    g = grade("math", B("12/7" + "/712" * 20), "12/7")
    assert g.score == 0.0, g
    cf = "1"
    for _ in range(20):
        cf = "1+\\frac{1}{" + cf + "}"
    assert grade("math", B(cf), "\\frac{17711}{10946}").score == 1.0
    assert time.perf_counter() - t0 < 5.0


# --------------------------------------------------------------------------- extraction and format


def test_a_box_inside_the_answer_tag_counts_after_an_unclosed_box():
    # an unclosed "\boxed{" before the tag hid the boxed answer from extraction while the
    # format grader passed it
    text = "<think>a</think>\\boxed{ <answer>\\boxed{5}</answer>"
    assert extract(text).answers == ["5"]
    assert grade("math", text, "5").score == 1.0 and check_format(text).score == 1.0
    assert not extract("<think>a</think>\\boxed{ <answer>\\boxed{}</answer>").ok
    # a box the box channel collected is not counted twice
    assert extract("<think>a</think><answer>so \\boxed{5}</answer>").answers == ["5"]


@pytest.mark.parametrize("text", [
    "<think>a</think><answer>\\boxed{} 5</answer>",  # the box (empty) is the answer
    "<think>a</think><answer>5 \\boxed{\\ }</answer>",
])
def test_format_rejects_a_blank_box_inside_the_answer_tag(text):
    g = check_format(text)
    assert g.score == 0.0 and "empty answer" in g.reason, g


# --------------------------------------------------------------------------- countdown


def test_countdown_fraction_is_one_operand():
    # "\frac{2}{3}" became "(2)/(3)": 60 / \frac{2}{3} evaluated as 60 / 2 / 3 = 10
    c = "<think>t</think><answer>60 / \\frac{2}{3}</answer>"
    assert grade("countdown", c, {"numbers": [2, 3, 60], "target": 10}).score == 0.0
    assert grade("countdown", c, {"numbers": [2, 3, 60], "target": 90}).score == 1.0
    c = "<think>t</think><answer>59 \\div \\tfrac{70}{70}</answer>"
    assert grade("countdown", c, {"numbers": [70, 59, 70], "target": 59}).score == 1.0


# --------------------------------------------------------------------------- seeded fuzz


def _expr(r: random.Random, depth: int):
    """(latex, exact sympy value) of a random arithmetic expression, built without the parser."""
    import sympy as sp

    if depth == 0 or r.random() < 0.3:
        k = r.random()
        if k < 0.4:
            n = r.randint(0, 60)
            return str(n), sp.Integer(n)
        if k < 0.6:
            p, q = r.randint(1, 20), r.randint(2, 12)
            return r.choice([f"\\frac{{{p}}}{{{q}}}", f"({p}/{q})"]), sp.Rational(p, q)
        if k < 0.75:
            n = r.choice([2, 3, 5, 8, 12])
            return f"\\sqrt{{{n}}}", sp.sqrt(n)
        if k < 0.85:
            return "\\pi", sp.pi
        return "x", sp.Symbol("x")
    op = r.choice("+-*/^s")
    a, va = _expr(r, depth - 1)
    if op == "s":
        return f"\\sin{{\\left({a}\\right)}}", sp.sin(va)
    if op == "^":
        n = r.choice([2, 3])
        return f"\\left({a}\\right)^{{{n}}}", va**n
    b, vb = _expr(r, depth - 1)
    if op == "/":
        return f"\\frac{{{a}}}{{{b}}}", va / vb
    tex = {"+": "+", "-": "-", "*": "\\cdot"}[op]
    return f"\\left({a}\\right) {tex} \\left({b}\\right)", {"+": va + vb, "-": va - vb, "*": va * vb}[op]


def _differ(a, b) -> bool:
    """Independent truth: the values differ at some random point (40 digits)."""
    import sympy as sp

    rng = random.Random(7)
    for _ in range(4):
        pt = {s: sp.Rational(rng.randint(-90, 90), rng.randint(7, 31)) for s in (a - b).free_symbols}
        d = sp.N((a - b).subs(pt), 40)
        if d.is_finite and abs(d) > 1e-25:
            return True
    return False


def test_seeded_fuzz_math_has_no_false_pass_and_no_infrastructure_error():
    import sympy as sp

    r = random.Random(20240531)
    checked = 0
    while checked < 60:
        gold, vg = _expr(r, r.randint(1, 3))
        pred, vp = _expr(r, r.randint(1, 3)) if r.random() < 0.5 else (gold, vg)
        if any(v.has(sp.zoo, sp.nan, sp.oo) for v in (vg, vp)):
            continue
        if pred == gold:  # a rendering of a slightly different value
            pred = pred.replace("3", "4", 1) if "3" in pred else pred + "+1"
            vp = None
        g = grade("math", B(pred), gold)
        assert g.score is not None, (pred, gold, g)
        assert grade("math", B(pred), gold).score == g.score, (pred, gold)
        if g.score == 1.0 and vp is not None:
            assert not _differ(vp, vg), f"false pass: {pred!r} for gold {gold!r}"
        checked += 1


_SEGS = [
    "<think>", "</think>", "<answer>", "</answer>", "<THINK>", "</Answer>", "\\boxed{", "\\fbox{", "}", "{",
    "\\{", "\\}", "\\boxed ", "$", " ", "\n", ".", "reasoning", "5", "42", "x", "\\frac{1}{2}", "\\text{ }",
    " or ", "\u200b", "\u3164", "\\ ", "{}", "\\boxed{}", "\\boxed{5}", "<answer>5</answer>", "\\\\", "İ",
]


def test_seeded_fuzz_format_and_extraction_agree():
    r = random.Random(11)
    passed = 0
    for _ in range(3000):
        if r.random() < 0.5:
            segs = ["<think>", "reasoning", "</think>", " ",
                    r.choice(["\\boxed{5}", "<answer>5</answer>", "<answer>\\boxed{5}</answer>", "\\fbox{42}"])]
            for _ in range(r.randint(1, 3)):
                segs.insert(r.randrange(len(segs) + 1), r.choice(_SEGS))
            text = "".join(segs)
        else:
            text = "".join(r.choice(_SEGS) for _ in range(r.randint(1, 12)))
        g, ex = check_format(text), extract(text)
        assert check_format(text).score == g.score and extract(text).answers == ex.answers
        if g.score == 1.0:
            passed += 1
            # a well-formed reply has exactly one answer, and it is not blank
            assert ex.ok and (ex.hedged or len(ex.answers) == 1), (text, ex)
            assert not any(_blank_answer(a) for a in ex.answers), (text, ex)
    assert passed > 300


_CD_OPS = {"+": ["+"], "-": ["-", "\u2212"], "*": ["*", "\\times", "\u00d7"], "/": ["/", "\\div"]}


def test_seeded_fuzz_countdown_matches_exact_evaluation():
    r = random.Random(5)
    for _ in range(400):
        nums = [r.randint(1, 30) for _ in range(r.randint(2, 5))]
        pick = r.sample(nums, r.randint(1, len(nums)))
        items = [(str(x), Fraction(x)) for x in pick]
        while len(items) > 1:
            (ta, va), (tb, vb) = items.pop(r.randrange(len(items))), items.pop(r.randrange(len(items)))
            op = r.choice("+-*/") if vb else r.choice("+-*")
            if op == "/" and r.random() < 0.5:
                t = f"\\frac{{{ta}}}{{{tb}}}"
            else:
                t = f"({ta} {r.choice(_CD_OPS[op])} {tb})"
            items.append((t, {"+": va + vb, "-": va - vb, "*": va * vb, "/": va / vb if vb else 0}[op]))
        tex, value = items[0]
        target = int(value) if value.denominator == 1 and r.random() < 0.7 else r.randint(0, 100)
        once = r.random() < 0.3
        want = value == target and (not once or Counter(pick) == Counter(nums))
        g = grade("countdown", f"<think>t</think><answer>{tex}</answer>", {"numbers": nums, "target": target},
                  exactly_once=once)
        assert g.score == (1.0 if want else 0.0), (tex, nums, target, once, g)
