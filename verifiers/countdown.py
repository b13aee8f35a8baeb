"""Countdown grader: the answer is an arithmetic expression over the given numbers.

Any valid expression that hits the target is right, so the expression is evaluated, never
string-matched. It is parsed with :mod:`ast` and only numbers, ``+ - * /``, unary minus and
parentheses are allowed; arithmetic is exact (:class:`fractions.Fraction`), so ``7 / 2 * 2``
is 7 and float rounding cannot make a wrong expression right. Each given number may be used at
most once (``exactly_once=True``: each exactly once), counting multiplicity.
"""

from __future__ import annotations

import ast
import json
import numbers
import re
from collections import Counter
from fractions import Fraction
from typing import Any

from thinkgym.verifiers.base import Grade, bool_arg, fraction_arg, register_grader
from thinkgym.verifiers.extract import extract

# Version 2: the same answer written twice (same value from the same numbers, or the same text) is
# one answer, no longer "several different answers".
VERSION = "2"
_MAX_CHARS = 300  # a countdown answer is short; a long one is a hack attempt or a ramble
_MAX_NUMBER_DIGITS = 12


class ExpressionError(ValueError):
    """The answer is not an allowed arithmetic expression."""


_NOT_ARITHMETIC = re.compile(r"[^0-9+\-*/() \t\n]")


_FRAC = re.compile(r"\\[dt]?frac(?![a-zA-Z])")


def _brace_group_end(s: str, i: int) -> int | None:
    """Index just past the ``{...}`` group that starts at ``s[i]`` (after spaces), or None."""
    while i < len(s) and s[i].isspace():
        i += 1
    if i >= len(s) or s[i] != "{":
        return None
    depth = 0
    for j in range(i, len(s)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return j + 1
    return None


def _fracs_to_division(expr: str) -> str:
    r"""``\frac{a}{b}`` -> ``((a)/(b))``, nested ones included.

    The rightmost ``\frac`` is rewritten first: its arguments hold no ``\frac`` still to do, so
    plain brace matching finds them and no recursion is needed. A ``\frac`` without two brace
    groups (``\frac12``) is left as is and fails to parse.
    """
    while True:
        fracs = list(_FRAC.finditer(expr))
        if not fracs:
            return expr
        m = fracs[-1]
        num_end = _brace_group_end(expr, m.end())
        den_end = _brace_group_end(expr, num_end) if num_end is not None else None
        if den_end is None:
            return expr
        num = expr[m.end():num_end].strip()[1:-1]
        den = expr[num_end:den_end].strip()[1:-1]
        # The quotient is one operand: "60 / \\frac{2}{3}" is 60 / (2/3) = 90, not 60 / 2 / 3 = 10.
        expr = f"{expr[:m.start()]}(({num})/({den})){expr[den_end:]}"


def _normalize(expr: str) -> str:
    if len(expr) > 4 * _MAX_CHARS:
        return expr  # far too long to be an answer even after rewriting: evaluate() rejects it
    expr = _fracs_to_division(expr)
    # Common typography: x and · for times, ÷ for divide, unicode minus, LaTeX operators.
    for a, b in (("\\times", "*"), ("\\cdot", "*"), ("\\ast", "*"), ("\\div", "/"), ("×", "*"), ("·", "*"),
                 ("⋅", "*"), ("∗", "*"), ("÷", "/"), ("−", "-"), ("\\left", ""), ("\\right", ""), ("{", "("),
                 ("}", ")"), ("$", "")):
        expr = expr.replace(a, b)
    expr = re.sub(r"\s", " ", expr)  # a no-break space is a space, not a syntax error
    return re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", expr)


def evaluate(expr: str) -> tuple[Fraction, list[int]]:
    """Exact value of ``expr`` and the integer literals it uses, in order."""
    if len(expr) > _MAX_CHARS:
        raise ExpressionError(f"expression longer than {_MAX_CHARS} characters")
    # Python's grammar is wider than arithmetic: "0b1100", "0o14" and "1_2" are integer literals
    # the model never wrote as given numbers, and "#" starts a comment that hides the rest.
    bad = _NOT_ARITHMETIC.search(expr)
    if bad:
        raise ExpressionError(f"not an arithmetic expression: {bad.group()!r} is not allowed "
                              "(only integers, + - * / and parentheses)")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise ExpressionError(f"not an arithmetic expression: {e.msg}") from None
    used: list[int] = []

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            if len(str(node.value)) > _MAX_NUMBER_DIGITS:
                raise ExpressionError("number too large")
            used.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if b == 0:
                raise ExpressionError("division by zero")
            return a / b
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        what = type(node).__name__
        if isinstance(node, ast.Constant):
            what = f"literal {node.value!r}"
        elif isinstance(node, ast.BinOp):
            what = f"operator {type(node.op).__name__}"
        raise ExpressionError(f"{what} is not allowed (only integers, + - * / and parentheses)")

    return ev(tree.body), used


def _gold_int(x: Any, what: str) -> int:
    """An integer from the gold, converted only when nothing is lost (12.0, "12"); else ValueError."""
    # numpy scalars (a dataset read through pandas holds np.int64) count as the numbers they are.
    if isinstance(x, numbers.Integral) and not isinstance(x, bool):
        return int(x)
    if isinstance(x, numbers.Real) and not isinstance(x, bool) and float(x).is_integer():
        return int(x)
    if isinstance(x, str) and re.fullmatch(r"\s*-?\d{1,%d}\s*" % _MAX_NUMBER_DIGITS, x):
        return int(x)
    # Truncating 1.9 to 1 would grade against a puzzle nobody asked.
    raise ValueError(f"countdown gold {what}, got {x!r:.80}")


def _parse_gold(gold: Any) -> tuple[list[int], Fraction]:
    """Validated ``(numbers, target)``; a bad gold is a data error (ValueError), never a score."""
    if isinstance(gold, str):
        try:
            gold = json.loads(gold)
        except ValueError:
            raise ValueError(f"countdown gold is a string but not JSON: {gold[:80]!r}") from None
    if not isinstance(gold, dict) or "numbers" not in gold or "target" not in gold:
        raise ValueError(f"countdown gold must be {{'numbers': [...], 'target': N}}, got {gold!r:.80}")
    given = gold["numbers"]
    if type(given).__module__ == "numpy" and hasattr(given, "tolist"):  # a numpy array column
        given = given.tolist()
    if not isinstance(given, (list, tuple)) or not given:
        raise ValueError(f"countdown gold numbers must be a non-empty list, got {given!r:.80}")
    nums = [_gold_int(x, "numbers must be integers") for x in given]
    return nums, Fraction(_gold_int(gold["target"], "target must be an integer"))


_DECIMAL = re.compile(r"\s*-?\d{1,%d}\.\d{1,%d}\s*" % (_MAX_NUMBER_DIGITS, _MAX_NUMBER_DIGITS))


def _stated_result(rhs: str) -> Fraction:
    """Exact value of what follows ``=``.

    A result written as a decimal (``13.0``) is a claim about the value, not a use of a number,
    so it is read exactly; the expression itself stays integers only.
    """
    text = _normalize(rhs)
    if _DECIMAL.fullmatch(text):
        return Fraction(text.strip())
    return evaluate(text)[0]


def check_expression(expr: str, numbers: list[int], target: Fraction | int, exactly_once: bool = False) -> tuple[bool, str]:
    """(right?, reason) for one expression; raises nothing."""
    right, _, why = _verdict(expr, numbers, target, exactly_once)
    return right, why


def _verdict(expr: str, numbers: list[int], target: Fraction | int, exactly_once: bool) -> tuple[bool, bool, str]:
    """(right?, well-formed over the allowed numbers?, reason)."""
    lhs = expr
    if "=" in expr:
        # "3 * 4 + 2 = 14": the stated result must be the target too.
        # A chain "12 + 1 = 999 = 13" states every link: each one must be the target.
        parts = expr.split("=")
        lhs = parts[0]
        for rhs in parts[1:]:
            try:
                stated = _stated_result(rhs)
            except ExpressionError as e:
                return False, False, f"after '=': {e}"
            if stated != target:
                return False, False, f"states {rhs.strip()}, not the target"
    try:
        value, used = evaluate(_normalize(lhs))
    except ExpressionError as e:
        return False, False, str(e)
    have, want = Counter(used), Counter(numbers)
    extra = have - want
    if extra:
        return False, False, f"uses numbers not available (or too often): {sorted(extra.elements())}"
    if exactly_once and have != want:
        return False, False, f"does not use every number exactly once: missing {sorted((want - have).elements())}"
    if value != target:
        return False, True, f"evaluates to {value}, not {target}"
    return True, True, "reaches the target"


def _answer_key(expr: str) -> Any:
    """What makes two answers one: ``\\boxed{12 + 1}`` and ``<answer>12+1</answer>`` (or ``1 + 12``)
    are the same answer written twice, not a hedge.

    An expression without ``=`` is graded on its value and the numbers it uses alone, so answers
    alike in both get the same grade whichever is taken; anything else (a stated result, an
    expression that does not parse) must match as text up to whitespace. Different values stay
    different answers."""
    text = re.sub(r"\s+", "", _normalize(expr))
    if "=" in text:
        return text
    try:
        value, used = evaluate(_normalize(expr))
    except ExpressionError:
        return text
    return value, tuple(sorted(used))


@register_grader("countdown", version=VERSION, kwargs={"exactly_once": bool_arg, "partial_credit": fraction_arg})
def grade_countdown(completion: str, gold: Any, **meta: Any) -> Grade:
    """Countdown: the <answer>/boxed expression uses the given numbers and equals the target."""
    numbers, target = _parse_gold(gold)
    exactly_once = meta.get("exactly_once", False)
    if not isinstance(exactly_once, bool):  # bool("false") is True: a quoted YAML/JSON value is a config bug
        raise ValueError(f"exactly_once must be true or false, got {exactly_once!r}")
    ex = extract(completion)
    if not ex.ok:
        return Grade(0.0, reason=ex.reason)
    firsts: dict[Any, str] = {}
    for a in ex.answers:
        firsts.setdefault(_answer_key(a), a)
    distinct = list(firsts.values())
    if len(distinct) > 1:
        return Grade(0.0, extracted=ex.joined(), reason="several different answers")
    ok, valid, why = _verdict(distinct[0], numbers, target, exactly_once)
    partial = float(meta.get("partial_credit", 0.0))
    if not 0.0 <= partial < 1.0:
        raise ValueError(f"partial_credit must be in [0, 1), got {partial}")
    if not partial:
        return Grade(1.0 if ok else 0.0, extracted=distinct[0], reason=why)
    # Reward shaping for RL: a well-formed expression over the allowed numbers that misses the
    # target earns ``partial_credit``; the "correct" component stays strict for accuracy metrics.
    return Grade(1.0 if ok else partial if valid else 0.0, extracted=distinct[0], reason=why,
                 components={"correct": float(ok), "numbers_valid": float(valid)})
