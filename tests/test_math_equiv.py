"""Table-driven tests of the ``math`` grader: (gold, completion, expected score).

Every row was written for this project. Completions are wrapped as a real model would write
them (think block, then a box or answer tag) unless the row is about the wrapping itself.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from thinkgym.verifiers import grade
from thinkgym.verifiers.math_equiv import answers_equal, normalize, parse_number


def B(ans: str) -> str:
    return f"<think>work it out</think>The answer is \\boxed{{{ans}}}."


def T(ans: str) -> str:
    return f"<think>work it out</think><answer>{ans}</answer>"


RIGHT = 1.0
WRONG = 0.0

ROWS: list[tuple[object, str, float]] = [
    # --- integers, signs, Unicode minus
    ("42", B("42"), RIGHT),
    (42, B("42"), RIGHT),
    ("42", B("042"), RIGHT),
    ("42", B("+42"), RIGHT),
    ("42", B("43"), WRONG),
    ("-7", B("-7"), RIGHT),
    ("-7", B("\u22127"), RIGHT),
    ("-7", B("7"), WRONG),
    ("0", B("0"), RIGHT),
    ("0", B("-0"), RIGHT),
    ("0", B("1"), WRONG),
    (-3, T("\u2212 3"), RIGHT),
    # --- large integers: exact, off by one is wrong
    ("123456789012345678901234567890", B("123456789012345678901234567890"), RIGHT),
    ("123456789012345678901234567890", B("123456789012345678901234567891"), WRONG),
    ("1" + "0" * 1500, B("1" + "0" * 1500), RIGHT),
    ("1" + "0" * 1500, B("1" + "0" * 1499 + "1"), WRONG),
    ("18446744073709551616", B("2^{64}"), RIGHT),
    ("18446744073709551615", B("2^{64}"), WRONG),
    (10**20, B("10^{20}"), RIGHT),
    (10**20 + 1, B("10^{20}"), WRONG),
    # --- thousands separators
    ("1000", B("1,000"), RIGHT),
    ("1000", B("1\\,000"), RIGHT),
    ("1000", B("1 000"), RIGHT),
    ("1000", B("1{,}000"), RIGHT),
    ("1234567", B("1,234,567"), RIGHT),
    ("1234567", B("1\\,234\\,567"), RIGHT),
    ("1234567", B("1 234 567"), RIGHT),
    ("1234567", B("1,234,568"), WRONG),
    ("1234.5", B("1,234.5"), RIGHT),
    (1000000, B("1\\,000\\,000"), RIGHT),
    # --- decimals and fractions
    ("0.5", B("\\frac{1}{2}"), RIGHT),
    ("1/2", B("0.5"), RIGHT),
    ("\\frac{1}{2}", B("0.50"), RIGHT),
    ("\\frac{1}{2}", B("\\dfrac{1}{2}"), RIGHT),
    ("\\frac{1}{2}", B("\\tfrac{1}{2}"), RIGHT),
    ("\\frac{1}{2}", B("\\frac12"), RIGHT),
    ("\\frac{1}{2}", B("2/4"), RIGHT),
    ("\\frac{1}{2}", B(".5"), RIGHT),
    ("\\frac{1}{2}", B("0.51"), WRONG),
    ("\\frac{3}{4}", B("0.75"), RIGHT),
    ("\\frac{3}{4}", B("\\frac{4}{3}"), WRONG),
    ("-\\frac{3}{4}", B("-0.75"), RIGHT),
    ("-\\frac{3}{4}", B("\\frac{-3}{4}"), RIGHT),
    ("-\\frac{3}{4}", B("0.75"), WRONG),
    (0.125, B("\\frac{1}{8}"), RIGHT),
    (2.5, B("\\frac{5}{2}"), RIGHT),
    (2.5, B("2\\frac{1}{2}"), RIGHT),
    ("\\frac{7}{8}", B("0.875"), RIGHT),
    # --- repeating decimals
    ("\\frac{1}{3}", B("0.\\overline{3}"), RIGHT),
    ("\\frac{2}{3}", B("0.\\overline{6}"), RIGHT),
    ("\\frac{1}{6}", B("0.1\\overline{6}"), RIGHT),
    ("\\frac{1}{7}", B("0.\\overline{142857}"), RIGHT),
    ("\\frac{1}{3}", B("0.\\overline{6}"), WRONG),
    # --- approximations are wrong
    ("\\frac{1}{3}", B("0.33"), WRONG),
    ("\\frac{1}{3}", B("0.333333"), WRONG),
    ("2\\pi", B("6.28"), WRONG),
    ("2\\pi", B("6.283185307"), WRONG),
    ("\\sqrt{2}", B("1.414"), WRONG),
    ("\\frac{22}{7}", B("\\pi"), WRONG),
    ("\\pi", B("3.14"), WRONG),
    ("e", B("2.718"), WRONG),
    # --- scientific notation
    ("0.00042", B("4.2e-4"), RIGHT),
    ("0.00042", B("4.2E-4"), RIGHT),
    ("0.00042", B("4.2\\times10^{-4}"), RIGHT),
    ("0.00042", B("4.2 \\times 10^{-5}"), WRONG),
    ("602000000000000000000000", B("6.02\\times10^{23}"), RIGHT),
    ("6.02\\times 10^{23}", B("6.02 \\cdot 10^{23}"), RIGHT),
    ("6.02\\times 10^{23}", B("6.02\u00d710^{23}"), RIGHT),
    ("6.02\\times 10^{23}", B("6.02\\times10^{22}"), WRONG),
    ("1e6", B("1000000"), RIGHT),
    ("3\\times 10^8", B("300000000"), RIGHT),
    # --- tiny values that differ
    ("2^{-99}", B("2^{-98}"), WRONG),
    ("2^{-99}", B("2^{-99}"), RIGHT),
    ("2^{-99}", B("\\frac{1}{2^{99}}"), RIGHT),
    ("10^{-30}", B("10^{-31}"), WRONG),
    ("10^{-30}", B("1e-30"), RIGHT),
    # --- radicals and algebraic forms
    ("\\sqrt{2}", B("\\sqrt{2}"), RIGHT),
    ("\\sqrt{2}", B("\\frac{2}{\\sqrt{2}}"), RIGHT),
    ("\\sqrt{2}", B("\\frac{\\sqrt{8}}{2}"), RIGHT),
    ("2\\sqrt{2}", B("\\sqrt{8}"), RIGHT),
    ("\\frac{\\sqrt{3}}{2}", B("\\frac{1}{2}\\sqrt{3}"), RIGHT),
    ("\\frac{\\sqrt{3}}{3}", B("\\frac{1}{\\sqrt{3}}"), RIGHT),
    ("\\sqrt{3}", B("\\sqrt{2}"), WRONG),
    ("2\\sqrt{2}", B("\\sqrt{6}"), WRONG),
    ("3", B("\\sqrt[3]{27}"), RIGHT),
    ("1+\\sqrt{5}", B("\\sqrt{5}+1"), RIGHT),
    ("\\frac{1+\\sqrt{5}}{2}", B("\\frac{1}{2}+\\frac{\\sqrt{5}}{2}"), RIGHT),
    ("\\frac{1+\\sqrt{5}}{2}", B("\\frac{1-\\sqrt{5}}{2}"), WRONG),
    # --- pi, e and constants
    ("2\\pi", B("2\\pi"), RIGHT),
    ("2\\pi", B("\\pi \\cdot 2"), RIGHT),
    ("2\\pi", B("\\frac{4\\pi}{2}"), RIGHT),
    ("\\frac{\\pi}{2}", B("\\pi/2"), RIGHT),
    ("\\frac{\\pi}{2}", B("\\frac{\\pi}{3}"), WRONG),
    ("\\pi", B("\u03c0"), RIGHT),
    ("\\infty", B("\\infty"), RIGHT),
    ("\\infty", B("-\\infty"), WRONG),
    # --- algebraic expressions
    ("x^2+2x+1", B("(x+1)^2"), RIGHT),
    ("x^2-1", B("(x-1)(x+1)"), RIGHT),
    ("x^2-1", B("(x-1)^2"), WRONG),
    ("2x+3", B("3+2x"), RIGHT),
    ("2x+3", B("2x+4"), WRONG),
    ("\\frac{x}{2}", B("0.5x"), RIGHT),
    ("a+b", B("b+a"), RIGHT),
    ("\\sin^2 x + \\cos^2 x", B("1"), RIGHT),
    # --- "x = 3" for gold 3, and equations
    ("3", B("x = 3"), RIGHT),
    ("3", B("x=3"), RIGHT),
    ("3", B("n = 3"), RIGHT),
    ("3", B("x_1 = 3"), RIGHT),
    ("3", B("x = 4"), WRONG),
    ("\\frac{1}{2}", B("p = 0.5"), RIGHT),
    ("y = 2x + 1", B("y = 1 + 2x"), RIGHT),
    ("y = 2x + 1", B("y = 2x - 1"), WRONG),
    # --- units and \text
    ("5", B("5 \\text{ cm}"), RIGHT),
    ("5", B("5\\,\\text{cm}"), RIGHT),
    ("5", B("5 \\mathrm{m}"), RIGHT),
    ("5", B("5 \\text{ meters}"), RIGHT),
    ("12", B("12 \\text{ apples}"), RIGHT),
    ("12", B("13 \\text{ apples}"), WRONG),
    ("30", B("30^\\circ"), RIGHT),
    ("30", B("30^{\\circ}"), RIGHT),
    ("30", B("30\u00b0"), RIGHT),
    ("20", B("\\$20"), RIGHT),
    ("9.5", B("\\$9.50"), RIGHT),
    ("even", B("\\text{even}"), RIGHT),
    ("even", B("\\text{odd}"), WRONG),
    # --- percent
    ("50", B("50\\%"), RIGHT),
    ("50\\%", B("50"), RIGHT),
    ("50\\%", B("0.5"), RIGHT),
    ("0.5", B("50\\%"), RIGHT),
    ("50", B("0.5"), WRONG),
    ("0.5", B("50"), WRONG),
    ("25\\%", B("2.5\\%"), WRONG),
    ("12.5", B("12.5\\%"), RIGHT),
    # --- sets: order does not matter
    ("\\{1, 2, 3\\}", B("\\{3, 1, 2\\}"), RIGHT),
    ("\\{1, 2, 3\\}", B("\\{1, 2\\}"), WRONG),
    ("\\{1, 2, 3\\}", B("\\{1, 2, 4\\}"), WRONG),
    ("\\{\\frac{1}{2}, 2\\}", B("\\{2, 0.5\\}"), RIGHT),
    ("\\{-1, 1\\}", B("\\{1, -1\\}"), RIGHT),
    ("\\{-1, 1\\}", B("\\pm 1"), RIGHT),
    # --- multi-part gold (a set of solutions)
    (["2", "3"], B("2, 3"), RIGHT),
    (["2", "3"], B("3, 2"), RIGHT),
    (["2", "3"], "<think>t</think> \\boxed{2} and \\boxed{3}", RIGHT),
    (["2", "3"], "<think>t</think> \\boxed{x=2} and \\boxed{x=3}", RIGHT),
    (["2", "3"], B("2"), WRONG),
    (["2", "3"], B("2, 3, 4"), WRONG),
    (["2", "3"], B("\\{2, 3\\}"), RIGHT),
    ([2, -2], B("\\pm 2"), RIGHT),
    (["1+\\sqrt{2}", "1-\\sqrt{2}"], B("1 \\pm \\sqrt{2}"), RIGHT),
    ("1 \\pm \\sqrt{2}", B("1+\\sqrt{2}, 1-\\sqrt{2}"), RIGHT),
    ("1 \\pm \\sqrt{2}", B("1+\\sqrt{2}"), WRONG),
    ("2, 3", B("3, 2"), RIGHT),
    ("2, 3", "<think>t</think> \\boxed{2} \\boxed{3}", RIGHT),
    (["3", "4"], "<think>t</think> \\boxed{3} \\boxed{3.0} \\boxed{4}", RIGHT),  # a value repeated in another form
    (["3", "4"], "<think>t</think> \\boxed{3} \\boxed{3.0}", WRONG),
    ([str(i) for i in range(12)], B(", ".join(str(i) for i in reversed(range(12)))), RIGHT),
    ([str(i) for i in range(12)], B(", ".join(str(i) for i in range(1, 13))), WRONG),
    # --- ordered tuples: order matters
    ("(1, 2)", B("(1, 2)"), RIGHT),
    ("(1, 2)", B("(2, 1)"), WRONG),
    ("(3, 1)", B("(5, 0)"), WRONG),
    ("(1, 2, 3)", B("(1,2,3)"), RIGHT),
    ("(1, 2, 3)", B("(3, 2, 1)"), WRONG),
    ("(\\frac{1}{2}, 3)", B("(0.5, 3)"), RIGHT),
    ("(1, 2)", B("(1, 2, 3)"), WRONG),
    # --- intervals and unions
    ("[1, 2)", B("[1, 2)"), RIGHT),
    ("[1, 2)", B("[1, 2]"), WRONG),
    ("[1, 2)", B("(1, 2)"), WRONG),
    ("(-\\infty, 3)", B("(-\\infty, 3]"), WRONG),
    ("(-\\infty, 3)", B("\\left(-\\infty, 3\\right)"), RIGHT),
    ("(-\\infty, 1) \\cup (2, \\infty)", B("(2, \\infty) \\cup (-\\infty, 1)"), RIGHT),
    ("(-\\infty, 1) \\cup (2, \\infty)", B("(-\\infty, 1] \\cup (2, \\infty)"), WRONG),
    ("[0, \\frac{1}{2}]", B("[0, 0.5]"), RIGHT),
    # --- inequalities are the sets they describe
    ("(2, \\infty)", B("x > 2"), RIGHT),
    ("x > 2", B("(2, \\infty)"), RIGHT),
    ("x \\geq 1", B("[1, \\infty)"), RIGHT),
    ("x \\geq 1", B("(1, \\infty)"), WRONG),
    ("[1, 3]", B("1 \\le x \\le 3"), RIGHT),
    ("(1, 3)", B("1 \\le x \\le 3"), WRONG),
    ("[1, 2]", B("x \\in [1, 2]"), RIGHT),
    ("(-\\infty, 1) \\cup (3, \\infty)", B("x < 1 \\text{ or } x > 3"), RIGHT),
    ("(-\\infty, 1) \\cup (3, \\infty)", B("x < 1 \\text{ or } x \\geq 3"), WRONG),
    ("2", B("x < 2 \\text{ or } x > 3"), WRONG),
    # --- word answers compare as text; function-style golds
    ("\\text{Yes}", B("yes"), RIGHT),
    ("no", B("on"), WRONG),
    ("5", B("5 dollars"), RIGHT),
    ("5", B("5 \\text{ cm}^2"), RIGHT),
    ("f(x) = 2x", B("2x"), RIGHT),
    ("f(x) = 2x", B("f(x) = x + x"), RIGHT),
    ("x = 3", B("3"), RIGHT),
    ("1", B("0.\\overline{9}"), RIGHT),
    # --- matrices
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", B("\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}"), RIGHT),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", B("\\begin{pmatrix}1&3\\\\2&4\\end{pmatrix}"), WRONG),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", B("\\begin{pmatrix}1&2\\end{pmatrix}"), WRONG),
    ("\\begin{pmatrix}\\frac{1}{2}&0\\\\0&1\\end{pmatrix}", B("\\begin{bmatrix}0.5&0\\\\0&1\\end{bmatrix}"), RIGHT),
    # --- multiple choice
    ("B", B("B"), RIGHT),
    ("B", B("(B)"), RIGHT),
    ("B", B("\\text{(B)}"), RIGHT),
    ("B", B("b"), RIGHT),
    ("B", B("C"), WRONG),
    ("B", B("A, B, C, D"), WRONG),
    ("B", B("ABCD"), WRONG),
    ("B", "<think>t</think>\\boxed{A}\\boxed{B}\\boxed{C}\\boxed{D}", WRONG),
    ("B", B("B or C"), WRONG),
    # --- other functions
    ("10", B("\\binom{5}{2}"), RIGHT),
    ("120", B("5!"), RIGHT),
    ("3", B("\\log_2 8"), RIGHT),
    ("\\frac{1}{2}", B("\\sin\\frac{\\pi}{6}"), RIGHT),
    ("\\frac{1}{2}", B("\\cos\\frac{\\pi}{6}"), WRONG),
    # --- extraction policy seen through the grader
    ("3", "<think>\\boxed{3}</think> I don't know", WRONG),  # answer only inside think
    ("3", "<think>the answer is \\boxed{3}", WRONG),  # think never closed
    ("3", "<think>t</think> the answer is 3", WRONG),  # no channel
    ("0", B(""), WRONG),  # empty answer is wrong even for gold 0
    ("0", T(""), WRONG),
    ("3", "<think>t</think>\\boxed{3} \\boxed{3}", RIGHT),  # repeating the same value
    ("3", "<think>t</think>\\boxed{3} \\boxed{3.0}", RIGHT),
    ("3", "<think>t</think>\\boxed{3} \\boxed{4}", WRONG),  # several different answers
    ("3", "<think>t</think>" + "".join(f"\\boxed{{{i}}}" for i in range(10)), WRONG),  # box spam
    ("41", B("41 or 42"), WRONG),  # hedging
    ("41", B("41, 42"), WRONG),  # boxed candidate list
    ("41", B("\\{41, 42\\}"), WRONG),
    ("3", "<think>\\boxed{9}</think>\\boxed{3}", RIGHT),  # only the final section counts
    ("3", T("\\boxed{3}"), RIGHT),
    ("3", "\\boxed{3}", RIGHT),  # no think block at all: the whole text is final
    ("3", B("$3$"), RIGHT),
    ("3", T("x = 3"), RIGHT),
    # --- reward-hacking probes
    ("3", "<think>t</think><answer>I think \\boxed{3}</answer> \\boxed{4}", WRONG),
    ("3", "<think>t</think>\\boxed{3}</think>", WRONG),  # a stray </think> after the answer empties the final section
    ("3", "<think>t</think>\\boxed{3, 3, 3}", RIGHT),  # the same value repeated is one value
    ("3", "<think>t</think>\\boxed{3 \\lor 4}", WRONG),
    ("3", "<think>t</think>\\boxed{3 \\text{ or } 4}", WRONG),
    ("3", B("\\pm 3"), WRONG),  # two values for a single answer
    ("3", B("x"), WRONG),  # a free variable is not a wildcard
    ("3", B("\\infty"), WRONG),
    ("3", B("0/0"), WRONG),
    ("3", B("3 = 3"), WRONG),
    ("C", T("A B C D"), WRONG),
    ("C", T("A, B, C, D, E"), WRONG),
    ("C", "<think>t</think><answer>C</answer><answer>D</answer>", WRONG),
    ("7", "<think>t</think>\\boxed{\\boxed{7}}", RIGHT),
    ("7", "<think>t</think>" + "\\boxed{7}" * 50, RIGHT),  # spam of one value is harmless
    # --- garbage never equals anything
    ("3", B("\\frac{"), WRONG),
    ("3", B("}}{{"), WRONG),
    ("3", B("three"), WRONG),
    ("3", B("\\text{I cannot solve this}"), WRONG),
]


@pytest.mark.parametrize("gold, completion, expected", ROWS, ids=[f"row{i}" for i in range(len(ROWS))])
def test_math_table(gold, completion, expected):
    g = grade("math", completion, gold)
    assert g.score == expected, (gold, completion, g)


def test_table_is_large_and_balanced():
    assert len(ROWS) >= 150
    assert sum(r[2] == RIGHT for r in ROWS) >= 60 and sum(r[2] == WRONG for r in ROWS) >= 60


def test_fast_paths_do_not_need_sympy():
    assert parse_number("4.2e-4")[0] == Fraction(42, 100000)
    assert parse_number("1,234,567")[0] == 1234567
    assert parse_number("-\\frac{3}{4}")[0] == -0.75
    assert parse_number("50\\%") is not None and parse_number("50\\%")[1]
    assert parse_number("x") is None
    assert normalize("\\left( 1,2 \\right)") == "( 1,2 )"


def test_grade_carries_extracted_answer_and_fingerprint():
    g = grade("math", B("\\dfrac{1}{2}"), "0.5")
    assert g.score == 1.0 and g.extracted == "\\dfrac{1}{2}" and g.grader == "math@3"
    g = grade("math", "no box here", "1")
    assert g.score == 0.0 and "no answer channel" in g.reason


def test_config_from_plain_dicts():
    two_boxes = "<think>t</think>\\boxed{4} \\boxed{3}"
    assert grade("math", two_boxes, "3").score == 0.0
    assert grade("math", two_boxes, "3", math_config={"extract": {"last_only": True}}).score == 1.0
    g = grade("math", B("1"), "1", math_config={"no_such_knob": 1})
    assert g.score is None and "no_such_knob" in g.reason  # a config typo is loud, not a silent 0


def test_bad_gold_type_is_infrastructure_error_not_zero():
    g = grade("math", B("1"), {"not": "a number"})
    assert g.score is None and "gold must be" in g.reason


def test_import_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, time; t = time.perf_counter(); import thinkgym.verifiers; dt = time.perf_counter() - t; "
        "heavy = [m for m in ('torch', 'vllm', 'transformers', 'sympy', 'latex2sympy2_extended') if m in sys.modules]; "
        "print(heavy, dt)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("[] "), out


def test_answers_equal_direct():
    assert answers_equal("x=3", "3") is True
    # Integers beyond int()'s 4300-digit limit still compare exactly.
    assert answers_equal("9" * 6000, "9" * 6000) is True
    assert answers_equal("9" * 6000, "9" * 5999 + "8") is False
    assert answers_equal("0.33", "\\frac{1}{3}") is False


# --- adversarial answers found by an audit: each scored wrong before the fix -------------------


@pytest.mark.parametrize("pred, gold, score", [
    # a LaTeX row break "\\ " is not a control space "\ ": the vectors must compare entry by entry
    (r"\begin{pmatrix} 2 \\ 1 \end{pmatrix}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", 0.0),
    (r"\begin{pmatrix} 0 \\ 3 \end{pmatrix}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", 0.0),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}", 1.0),
    (r"5\ 000", "5000", 1.0),
    # digits in a base
    ("1011_3", "1011_2", 0.0), ("12_3", "12", 0.0), ("12_2", "12_2", 1.0), ("1011_2", "11", 1.0),
    ("A3_{16}", "163", 1.0), ("a_2", "b_3", 0.0),
    # words that change the value are not units
    ("5 thousand", "5", 0.0), ("5 squared", "5", 0.0), ("5 is wrong", "5", 0.0),
    (r"5\text{ million}", "5", 0.0), (r"5 \text{ squared}", "5", 0.0),
    ("12 apples", "12", 1.0), (r"5 \text{ cm}", "5", 1.0), ("50 percent", "0.5", 1.0), ("50 percent", "50", 1.0),
    (r"x < 1 \text{ or } x > 3", r"(-\infty,1)\cup(3,\infty)", 1.0),
    # sympy cannot compare the answer's structure: a wrong answer, not an infrastructure error
    (r"6 \mod 7", "5", 0.0),
    # an undefined term is not dropped from a sum (sympy treats 0 * oo as a zero coefficient)
    (r"5 + 0\cdot\infty", "5", 0.0), (r"5 + (\infty - \infty)", "5", 0.0), (r"\infty", r"\infty", 1.0),
    # redundant pairs: 40 levels of parentheses ran past the 5 s budget in a fresh worker (score None)
    ("(" * 80 + "5" + ")" * 80, "5", 1.0), ("f((x))", "f(x)", 1.0),
    ("((1)+(2))", "3", 1.0), (r"\frac{{1}}{2}", "0.5", 1.0),
])
def test_adversarial_answers(pred, gold, score):
    assert grade("math", B(pred), gold).score == score


def test_empty_gold_is_an_infrastructure_error():
    g = grade("math", B("5"), "")
    assert g.score is None and "empty gold" in g.reason


@pytest.mark.parametrize("pred, gold", [(r"\varnothing", r"\emptyset"), ("\u2205", r"\emptyset"), ("\u00bd", "0.5"), ("\u00be", "3/4")])
def test_unicode_and_synonym_forms(pred, gold):
    assert grade("math", B(pred), gold).score == 1.0


# --- text after a number is dropped as a unit only when it reads as one --------------------------


@pytest.mark.parametrize("pred, gold, score", [
    # digits, value punctuation or connectives inside the text change the value
    (r"5\text{000}", "5", 0.0), (r"5\mathrm{.5}", "5", 0.0), (r"5\mathbf{7}", "5", 0.0),
    (r"5\text{-7}", "5", 0.0), (r"5 \text{ to 7}", "5", 0.0), (r"5 \text{, 6}", "5", 0.0),
    (r"5 \text{ (approx. 6)}", "5", 0.0), (r"5 \text{ to infinity}", "5", 0.0), (r"5 \text{ doubled}", "5", 0.0),
    # digits glued to a number are part of it
    (r"1\text{2}", "1", 0.0), (r"1\text{2}", "12", 1.0), (r"5\text{000}", "5000", 1.0), (r"5\mathrm{.5}", "5.5", 1.0),
    # units stay units
    (r"5 \text{ m/s^2}", "5", 1.0), (r"5 \text{ sq. ft}", "5", 1.0), (r"5 \text{ square meters}", "5", 1.0),
    (r"5 \text{m} \text{s}", "5", 1.0), (r"5 \text{ cm}^2", "5", 1.0), (r"\frac{1}{2} \text{ cm}", "0.5", 1.0),
    (r"5\text{ }", "5", 1.0), (r"50\text{\%}", "0.5", 1.0),
])
def test_text_after_a_number_is_a_unit_only_when_it_reads_as_one(pred, gold, score):
    assert grade("math", B(pred), gold).score == score


@pytest.mark.parametrize("pred, gold, score", [
    ("5 millionths", "5", 0.0), ("5 doubled", "5", 0.0), ("5 tens", "5", 0.0), ("5 dozen", "5", 0.0),
    ("5 times", "5", 0.0), ("5 to 7", "5", 0.0), ("5 hours", "5", 1.0), ("5 inches", "5", 1.0),
    ("3 square meters", "3", 1.0), ("12 Apples", "12", 1.0), ("7 ways", "7", 1.0), ("2.5 kg", "2.5", 1.0),
    ("4 pencils", "4", 1.0),  # any counted noun: prose that states no other value keeps the number
])
def test_plain_words_after_a_number_are_dropped_unless_they_change_the_value(pred, gold, score):
    assert grade("math", B(pred), gold).score == score


@pytest.mark.parametrize("pred, gold, score", [
    (r"5 \text{ and 6}", "5", 0.0), (r"5 \text{ or maybe 6}", "5", 0.0),
    (r"x < 1 \text{ or } x > 3", r"(-\infty,1)\cup(3,\infty)", 1.0),  # a bare "or" joins inequalities
])
def test_text_joining_values_is_a_hedge(pred, gold, score):
    assert grade("math", B(pred), gold).score == score


@pytest.mark.parametrize("gold", [r"\frac{1}{2", "1 +", r"\unknowncmd{2}", r"\sqrt[3]{343", ["5", r"\frac{1}{"]])
@pytest.mark.parametrize("isolate", [True, False])
def test_unparseable_gold_is_a_data_error_not_a_wrong_answer(gold, isolate):
    for pred in (r"\frac{1}{2}", "5", "yes"):
        g = grade("math", B(pred), gold, math_config={"isolate": isolate})
        assert g.score is None and "unparseable gold" in g.reason and repr(gold) in g.reason, (pred, g)


@pytest.mark.parametrize("pred, gold, score", [
    ("yes", "yes", 1.0), ("no", "yes", 0.0), ("Paris", "Paris", 1.0), ("paris", r"\text{Paris}", 1.0),
    ("London", "Paris", 0.0), ("St. Louis", "St. Louis", 1.0), ("st. louis", "St. Louis", 1.0),
    ("Chicago", "St. Louis", 0.0), ("5", "St. Louis", 0.0), ("(B)", "B", 1.0), ("C", "B", 0.0),
])
def test_text_golds_still_compare_as_text(pred, gold, score):
    assert grade("math", B(pred), gold).score == score


def test_bare_boxed_token_is_graded():
    assert grade("math", r"<think>t</think>The answer is \boxed 5.", "5").score == 1.0
    assert grade("math", r"<think>t</think>The answer is \boxed 5.", "6").score == 0.0
