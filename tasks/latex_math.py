"""MATH-style items whose answers are LaTeX: fractions, radicals, intervals and sets."""

from __future__ import annotations

import math
import random
from fractions import Fraction
from typing import Any, Callable

from thinkgym.tasks.base import Item, TaskSource, format_solution, register_task


def tex_frac(v: Fraction) -> str:
    """``\\frac{p}{q}`` with the sign in front; integers stay integers."""
    if v.denominator == 1:
        return str(v.numerator)
    sign = "-" if v < 0 else ""
    return f"{sign}\\frac{{{abs(v.numerator)}}}{{{v.denominator}}}"


def tex_radical(coef: int, rad: int) -> str:
    if rad == 1:
        return str(coef)
    c = "" if coef == 1 else ("-" if coef == -1 else str(coef))
    return f"{c}\\sqrt{{{rad}}}"


def split_square(n: int) -> tuple[int, int]:
    """n = k^2 * m with m squarefree; returns (k, m)."""
    k, m = 1, n
    d = 2
    while d * d <= m:
        while m % (d * d) == 0:
            m //= d * d
            k *= d
        d += 1
    return k, m


def _lin(a: int, b: int) -> str:
    """``ax + b`` in LaTeX."""
    s = "x" if a == 1 else ("-x" if a == -1 else f"{a}x")
    if b:
        s += f" + {b}" if b > 0 else f" - {-b}"
    return s


Gen = Callable[[random.Random, int], tuple[str, list[str], str, str]]


def _fraction_sum(rng: random.Random, hi: int) -> tuple[str, list[str], str, str]:
    a, c = rng.randint(1, hi), rng.randint(1, hi)
    b, d = rng.randint(2, hi), rng.randint(2, hi)
    op = rng.choice(["+", "-", "\\cdot", "\\div"])
    x, y = Fraction(a, b), Fraction(c, d)
    if op == "+":
        v = x + y
        steps = [f"Common denominator {b} \\cdot {d} = {b * d}: \\frac{{{a * d}}}{{{b * d}}} + \\frac{{{c * b}}}{{{b * d}}} = \\frac{{{a * d + c * b}}}{{{b * d}}}."]
    elif op == "-":
        v = x - y
        steps = [f"Common denominator {b} \\cdot {d} = {b * d}: \\frac{{{a * d}}}{{{b * d}}} - \\frac{{{c * b}}}{{{b * d}}} = \\frac{{{a * d - c * b}}}{{{b * d}}}."]
    elif op == "\\cdot":
        v = x * y
        steps = [f"Multiply numerators and denominators: \\frac{{{a * c}}}{{{b * d}}}."]
    else:
        v = x / y
        steps = [f"Dividing by \\frac{{{c}}}{{{d}}} is multiplying by \\frac{{{d}}}{{{c}}}: \\frac{{{a * d}}}{{{b * c}}}."]
    steps.append(f"In lowest terms this is {tex_frac(v)}.")
    q = f"Compute $\\frac{{{a}}}{{{b}}} {op} \\frac{{{c}}}{{{d}}}$ and write the result as a fraction in lowest terms."
    return q, steps, tex_frac(v), "fraction"


def _radical(rng: random.Random, hi: int) -> tuple[str, list[str], str, str]:
    m = rng.choice([2, 3, 5, 6, 7, 10, 11, 13, 14, 15])
    k1, k2 = rng.randint(2, 2 + hi // 3), rng.randint(1, 2 + hi // 3)
    if rng.random() < 0.5:
        n = k1 * k1 * m
        q = f"Simplify $\\sqrt{{{n}}}$."
        steps = [f"{n} = {k1 * k1} \\cdot {m} and {k1 * k1} = {k1}^2 is the largest square factor.",
                 f"So \\sqrt{{{n}}} = {k1}\\sqrt{{{m}}}."]
        return q, steps, tex_radical(k1, m), "radical"
    n1, n2 = k1 * k1 * m, k2 * k2 * m
    sign = rng.choice(["+", "-"])
    coef = k1 + k2 if sign == "+" else k1 - k2
    q = f"Simplify $\\sqrt{{{n1}}} {sign} \\sqrt{{{n2}}}$."
    steps = [f"\\sqrt{{{n1}}} = {tex_radical(k1, m)} and \\sqrt{{{n2}}} = {tex_radical(k2, m)}.",
             f"Combine like radicals: ({k1} {sign} {k2})\\sqrt{{{m}}} = {tex_radical(coef, m) if coef else '0'}."]
    return q, steps, (tex_radical(coef, m) if coef else "0"), "radical"


def _linear_inequality(rng: random.Random, hi: int) -> tuple[str, list[str], str, str]:
    a = rng.choice([k for k in range(-9, 10) if k not in (0,)])
    b, c = rng.randint(-hi, hi), rng.randint(-hi, hi)
    rel = rng.choice(["<", "\\le", ">", "\\ge"])
    r = Fraction(c - b, a)
    flip = {"<": ">", "\\le": "\\ge", ">": "<", "\\ge": "\\le"}
    rel2 = flip[rel] if a < 0 else rel
    ax = _lin(a, 0)
    steps = [f"Move {b} to the right: {ax} {rel} {c - b}." if b else f"{ax} {rel} {c}."]
    if a < 0:
        steps.append(f"Divide by {a}, which is negative, so the inequality flips: x {rel2} {tex_frac(r)}.")
    else:
        steps.append(f"Divide by {a}: x {rel2} {tex_frac(r)}.")
    rt = tex_frac(r)
    ans = {"<": f"(-\\infty, {rt})", "\\le": f"(-\\infty, {rt}]", ">": f"({rt}, \\infty)",
           "\\ge": f"[{rt}, \\infty)"}[rel2]
    steps.append(f"In interval notation: {ans}.")
    q = f"Solve ${_lin(a, b)} {rel} {c}$. Give the answer in interval notation."
    return q, steps, ans, "interval"


def _abs_inequality(rng: random.Random, hi: int) -> tuple[str, list[str], str, str]:
    h, r = rng.randint(-hi, hi), rng.randint(1, hi)
    rel = rng.choice(["<", "\\le", ">", "\\ge"])
    inner = _lin(1, -h)
    lo_, hi_ = h - r, h + r
    if rel in ("<", "\\le"):
        br = ("(", ")") if rel == "<" else ("[", "]")
        ans = f"{br[0]}{lo_}, {hi_}{br[1]}"
        steps = [f"|{inner}| {rel} {r} means -{r} {rel} {inner} {rel} {r}.",
                 f"Add {h}: {lo_} {rel} x {rel} {hi_}." if h >= 0 else f"Subtract {-h}: {lo_} {rel} x {rel} {hi_}."]
    else:
        br = ("(", ")") if rel == ">" else ("[", "]")
        ans = f"(-\\infty, {lo_}{br[1]} \\cup {br[0]}{hi_}, \\infty)"
        lt = "<" if rel == ">" else "\\le"
        steps = [f"|{inner}| {rel} {r} means {inner} {lt} -{r} or {inner} {rel} {r}.",
                 f"So x {lt} {lo_} or x {rel} {hi_}."]
    steps.append(f"In interval notation: {ans}.")
    q = f"Find all real $x$ with $|{inner}| {rel} {r}$. Write the solution set in interval notation."
    return q, steps, ans, "interval"


def _quadratic_roots(rng: random.Random, hi: int) -> tuple[str, list[str], str, str]:
    p = rng.randint(1, 4)
    q_ = rng.randint(-hi, hi)
    r = rng.randint(-hi, hi)
    while Fraction(q_, p) == r:
        r = rng.randint(-hi, hi)
    # (p x - q)(x - r) = p x^2 - (p r + q) x + q r
    A, B, C = p, -(p * r + q_), q_ * r
    poly = ("x^2" if A == 1 else f"{A}x^2")
    if B:
        poly += (f" + {B}x" if B > 0 else f" - {-B}x").replace(" 1x", " x")
    if C:
        poly += f" + {C}" if C > 0 else f" - {-C}"
    roots = sorted({Fraction(q_, p), Fraction(r)})
    f1 = f"{p}x - {q_}" if q_ >= 0 else f"{p}x + {-q_}"
    f1 = f1.replace("1x", "x") if p == 1 else f1
    f2 = _lin(1, -r)
    ans = "\\{" + ", ".join(tex_frac(x) for x in roots) + "\\}"
    steps = [f"Factor: {poly} = ({f1})({f2}).",
             f"Set each factor to zero: x = {tex_frac(Fraction(q_, p))} or x = {r}.",
             f"The solution set is {ans}."]
    q = f"Find the set of all real solutions of ${poly} = 0$."
    return q, steps, ans, "set"


def _irrational_roots(rng: random.Random, hi: int) -> tuple[str, list[str], str, str]:
    h = rng.randint(-hi, hi)
    m = rng.choice([2, 3, 5, 6, 7, 10, 11])
    # (x - h)^2 = m  ->  x^2 - 2h x + h^2 - m = 0
    B, C = -2 * h, h * h - m
    poly = "x^2"
    if B:
        poly += f" + {B}x" if B > 0 else f" - {-B}x"
    if C:
        poly += f" + {C}" if C > 0 else f" - {-C}"
    hs = "" if h == 0 else f"{h} "
    ans = f"\\{{{hs}- \\sqrt{{{m}}}, {hs}+ \\sqrt{{{m}}}\\}}" if h else f"\\{{-\\sqrt{{{m}}}, \\sqrt{{{m}}}\\}}"
    steps = [f"Complete the square: {poly} = 0 becomes (x {'-' if h >= 0 else '+'} {abs(h)})^2 = {m}.",
             f"So x = {h} \\pm \\sqrt{{{m}}}.",
             f"The solution set is {ans}."]
    q = f"Solve ${poly} = 0$ over the reals and give the solution set."
    return q, steps, ans, "set"


KINDS: dict[str, Gen] = {
    "fraction": _fraction_sum,
    "radical": _radical,
    "linear_inequality": _linear_inequality,
    "abs_inequality": _abs_inequality,
    "quadratic": _quadratic_roots,
    "irrational_roots": _irrational_roots,
}


@register_task("latex_math")
class LatexMath(TaskSource):
    """Fractions, radicals, intervals and solution sets with LaTeX answers."""

    description = "MATH-style algebra with LaTeX answers: fractions, radicals, intervals, solution sets."
    grader = "math"
    defaults = {"kinds": None, "max_value": 12}

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        p = super().validate_params(params)
        if p["kinds"] is not None:
            if isinstance(p["kinds"], str):
                p["kinds"] = p["kinds"].split(",")
            bad = sorted(set(p["kinds"]) - set(KINDS))
            if bad or not p["kinds"]:
                raise ValueError(f"unknown latex_math kinds {bad}; known: {sorted(KINDS)}")
            p["kinds"] = sorted(p["kinds"])
        if not isinstance(p["max_value"], int) or p["max_value"] < 3:
            raise ValueError(f"max_value must be an int >= 3, got {p['max_value']!r}")
        return p

    def generate(self, i: int, rng: random.Random) -> Item:
        kind = rng.choice(self.params["kinds"] or sorted(KINDS))
        q, steps, ans, answer_type = KINDS[kind](rng, self.params["max_value"])
        return {
            "question": q,
            "answer": ans,
            "metadata": {
                "kind": kind,
                "answer_type": answer_type,
                "difficulty": len(steps) + int(math.log10(self.params["max_value"])),
                "solution": format_solution(steps, ans),
            },
        }
