"""MATH-style items whose answers are LaTeX: fractions, radicals, intervals and sets."""

from __future__ import annotations

import math
import random
from fractions import Fraction
from typing import Any, Callable

from thinkgym.tasks.base import Item, TaskSource, format_solution, name_list, register_task, show


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

MAX_VALUE = 10**12


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
    q = f"Compute $\\frac{{{a}}}{{{b}}} {op} \\frac{{{c}}}{{{d}}}$ in lowest terms."
    return q, steps, tex_frac(v), "fraction"


_SQUAREFREE = [k for k in range(2, 60) if all(k % (d * d) for d in range(2, 8))]


def _radical(rng: random.Random, hi: int) -> tuple[str, list[str], str, str]:
    m = rng.choice(_SQUAREFREE[:12])
    form = rng.random()
    if form < 0.2:
        k = rng.randint(2, 2 + hi)
        n = k * k * m
        q = f"Simplify $\\sqrt{{{n}}}$."
        steps = [f"{n} = {k * k} \\cdot {m} and {k * k} = {k}^2 is the largest square factor.",
                 f"So \\sqrt{{{n}}} = {k}\\sqrt{{{m}}}."]
        return q, steps, tex_radical(k, m), "radical"
    if form < 0.4:
        a = rng.randint(1, 6 * hi)
        m = rng.choice(_SQUAREFREE)
        c = Fraction(a, m)
        num = tex_radical(c.numerator, m)
        ans = num if c.denominator == 1 else f"\\frac{{{num}}}{{{c.denominator}}}"
        q = f"Rationalize the denominator of $\\frac{{{a}}}{{\\sqrt{{{m}}}}}$."
        steps = [f"Multiply top and bottom by \\sqrt{{{m}}}: \\frac{{{a}\\sqrt{{{m}}}}}{{{m}}}.",
                 f"Reduce {a}/{m} to {tex_frac(c)}: the result is {ans}."]
        return q, steps, ans, "radical"
    k1, k2 = rng.randint(1, 2 + hi), rng.randint(1, 2 + hi)
    if k1 == k2 == 1:
        k1 = 2
    c1, c2 = rng.randint(1, 5), rng.randint(1, 5)
    n1, n2 = k1 * k1 * m, k2 * k2 * m
    sign = rng.choice(["+", "-"])
    coef = c1 * k1 + c2 * k2 if sign == "+" else c1 * k1 - c2 * k2
    t1 = f"{c1 if c1 > 1 else ''}\\sqrt{{{n1}}}"
    t2 = f"{c2 if c2 > 1 else ''}\\sqrt{{{n2}}}"
    ans = tex_radical(coef, m) if coef else "0"
    q = f"Simplify ${t1} {sign} {t2}$."
    steps = [f"{t1} = {tex_radical(c1 * k1, m)} and {t2} = {tex_radical(c2 * k2, m)}.",
             f"Combine like radicals: ({c1 * k1} {sign} {c2 * k2})\\sqrt{{{m}}} = {ans}."]
    return q, steps, ans, "radical"


def _linear_inequality(rng: random.Random, hi: int) -> tuple[str, list[str], str, str]:
    a = rng.choice([k for k in range(-9, 10) if k not in (0,)])
    b, c = rng.randint(-3 * hi, 3 * hi), rng.randint(-3 * hi, 3 * hi)
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
    q = f"Solve ${_lin(a, b)} {rel} {c}$; give the interval."
    return q, steps, ans, "interval"


def _abs_inequality(rng: random.Random, hi: int) -> tuple[str, list[str], str, str]:
    a = rng.choice([1, 1, 2, 3, 4, 5])
    b, r = rng.randint(-2 * hi, 2 * hi), rng.randint(1, 2 * hi)
    rel = rng.choice(["<", "\\le", ">", "\\ge"])
    inner = _lin(a, -b)
    lo_, hi_ = Fraction(b - r, a), Fraction(b + r, a)
    lt, ht = tex_frac(lo_), tex_frac(hi_)
    div = "" if a == 1 else f", then divide by {a}"
    if rel in ("<", "\\le"):
        br = ("(", ")") if rel == "<" else ("[", "]")
        ans = f"{br[0]}{lt}, {ht}{br[1]}"
        steps = [f"|{inner}| {rel} {r} means -{r} {rel} {inner} {rel} {r}.",
                 f"Add {b}{div}: {lt} {rel} x {rel} {ht}." if b >= 0 else f"Subtract {-b}{div}: {lt} {rel} x {rel} {ht}."]
    else:
        br = ("(", ")") if rel == ">" else ("[", "]")
        ans = f"(-\\infty, {lt}{br[1]} \\cup {br[0]}{ht}, \\infty)"
        lrel = "<" if rel == ">" else "\\le"
        steps = [f"|{inner}| {rel} {r} means {inner} {lrel} -{r} or {inner} {rel} {r}.",
                 f"Solving each: x {lrel} {lt} or x {rel} {ht}."]
    steps.append(f"In interval notation: {ans}.")
    q = f"Solve $|{inner}| {rel} {r}$ in interval notation."
    return q, steps, ans, "interval"


def _quadratic_roots(rng: random.Random, hi: int) -> tuple[str, list[str], str, str]:
    p = rng.randint(1, 6)
    q_ = rng.randint(-3 * hi, 3 * hi)
    r = rng.randint(-3 * hi, 3 * hi)
    while Fraction(q_, p) == r:
        r = rng.randint(-3 * hi, 3 * hi)
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
    q = f"Find the solution set of ${poly} = 0$."
    return q, steps, ans, "set"


def _irrational_roots(rng: random.Random, hi: int) -> tuple[str, list[str], str, str]:
    h = rng.randint(-2 * hi, 2 * hi)
    m = rng.choice(_SQUAREFREE)
    a = rng.choice([1, 1, 2, 3, 4, 5])
    # a (x - h)^2 = a m  ->  a x^2 - 2ah x + a (h^2 - m) = 0
    B, C = -2 * a * h, a * (h * h - m)
    poly = "x^2" if a == 1 else f"{a}x^2"
    if B:
        poly += f" + {B}x" if B > 0 else f" - {-B}x"
    if C:
        poly += f" + {C}" if C > 0 else f" - {-C}"
    hs = "" if h == 0 else f"{h} "
    ans = f"\\{{{hs}- \\sqrt{{{m}}}, {hs}+ \\sqrt{{{m}}}\\}}" if h else f"\\{{-\\sqrt{{{m}}}, \\sqrt{{{m}}}\\}}"
    steps = ([f"Divide by {a}: x^2 {'-' if h >= 0 else '+'} {abs(2 * h)}x {'+' if h * h - m >= 0 else '-'} {abs(h * h - m)} = 0."] if a > 1 else []) + [
             f"Complete the square: (x {'-' if h >= 0 else '+'} {abs(h)})^2 = {m}.",
             f"So x = {h} \\pm \\sqrt{{{m}}}.",
             f"The solution set is {ans}."]
    q = f"Give the real solution set of ${poly} = 0$."
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

    cache_items = True

    description = "MATH-style algebra with LaTeX answers: fractions, radicals, intervals, solution sets."
    grader = "math"
    defaults = {"kinds": None, "max_value": 20}

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        p = super().validate_params(params)
        p["kinds"] = name_list(p["kinds"], KINDS, "kinds", "latex_math kinds")
        if not isinstance(p["max_value"], int) or isinstance(p["max_value"], bool) or p["max_value"] < 3:
            raise ValueError(f"max_value must be an int >= 3, got {show(p['max_value'])}")
        if p["max_value"] > MAX_VALUE:
            # Past this, squares and products no longer print (Python's 4,300-digit limit) or stay small.
            raise ValueError(f"max_value must be <= {MAX_VALUE}, got {show(p['max_value'])}")
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
