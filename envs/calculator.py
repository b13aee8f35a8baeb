"""A safe calculator for tool-use episodes: :mod:`ast` evaluation with exact arithmetic.

Only numbers, ``+ - * / // % **``, unary signs, parentheses and a few functions (``sqrt abs
round min max``) are allowed; names, attributes, calls of anything else and huge powers are
refused with a message the model can read. Rationals stay exact (``1/3 * 3`` is ``1``).
"""

from __future__ import annotations

import ast
import math
import sys
from decimal import Context, Decimal, InvalidOperation
from fractions import Fraction

MAX_CHARS = 500
MAX_DIGITS = 400  # results and intermediates beyond this many digits are refused


class CalculatorError(ValueError):
    """The expression is not allowed or cannot be evaluated."""


def _check_size(v: Fraction) -> Fraction:
    if len(str(abs(v.numerator))) > MAX_DIGITS or len(str(v.denominator)) > MAX_DIGITS:
        raise CalculatorError(f"number with more than {MAX_DIGITS} digits")
    return v


def _pow(a: Fraction, b: Fraction) -> Fraction:
    if b.denominator != 1:
        if b == Fraction(1, 2):
            return _sqrt(a)
        raise CalculatorError("only integer powers (or ** 0.5) are supported")
    e = int(b)
    # Bound the size before computing: |a|^e has about e*log10|a| digits.
    mag = max(abs(a.numerator), a.denominator)
    # mag >= 2 puts log10(mag) >= 0.3, so any |e| over 4 * MAX_DIGITS is too large; testing it
    # first keeps a 400-digit exponent from overflowing the float product.
    if mag > 1 and (abs(e) > 4 * MAX_DIGITS or abs(e) * math.log10(mag) > MAX_DIGITS):
        raise CalculatorError(f"power too large (more than {MAX_DIGITS} digits)")
    if a == 0 and e < 0:
        raise CalculatorError("division by zero")
    return a**e


def _sqrt(a: Fraction) -> Fraction:
    if a < 0:
        raise CalculatorError("square root of a negative number")
    n, d = a.numerator, a.denominator
    rn, rd = math.isqrt(n), math.isqrt(d)
    if rn * rn == n and rd * rd == d:
        return Fraction(rn, rd)
    # Irrational: a 28-digit decimal approximation (Decimal, so huge inputs cannot overflow), in
    # a context of its own: the thread's may have been changed by whoever runs the env.
    ctx = Context(prec=28)
    return Fraction(ctx.divide(ctx.sqrt(Decimal(n)), ctx.sqrt(Decimal(d))))


_FUNCS = {"sqrt": 1, "abs": 1, "round": 1, "min": -1, "max": -1}


def evaluate(expr: str) -> Fraction:
    """Exact value of a calculator expression."""
    if len(expr) > MAX_CHARS:
        raise CalculatorError(f"expression longer than {MAX_CHARS} characters")
    expr = expr.strip().replace("^", "**").replace("×", "*").replace("÷", "/").replace("−", "-")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise CalculatorError(f"syntax error: {e.msg}") from None

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            if isinstance(node.value, float):
                try:
                    return Fraction(Decimal(repr(node.value)))
                except (InvalidOperation, ValueError):
                    raise CalculatorError(f"bad number {node.value!r}") from None
            return _check_size(Fraction(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            op = node.op
            if isinstance(op, ast.Add):
                return _check_size(a + b)
            if isinstance(op, ast.Sub):
                return _check_size(a - b)
            if isinstance(op, ast.Mult):
                return _check_size(a * b)
            if isinstance(op, (ast.Div, ast.FloorDiv, ast.Mod)):
                if b == 0:
                    raise CalculatorError("division by zero")
                if isinstance(op, ast.Div):
                    return _check_size(a / b)
                # Checked too: ``10**399 // 1e-300`` has 700 digits.
                return _check_size(Fraction(a // b) if isinstance(op, ast.FloorDiv) else a % b)
            if isinstance(op, ast.Pow):
                return _check_size(_pow(a, b))
            raise CalculatorError(f"operator {type(op).__name__} is not supported")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and not node.keywords:
            args = [ev(a) for a in node.args]
            name, arity = node.func.id, _FUNCS[node.func.id]
            if (arity > 0 and len(args) != arity) or not args:
                raise CalculatorError(f"{name}() takes {arity if arity > 0 else 'one or more'} argument(s)")
            if name == "sqrt":
                return _sqrt(args[0])
            if name == "abs":
                return abs(args[0])
            if name == "round":
                return Fraction(round(args[0]))
            return min(args) if name == "min" else max(args)
        raise CalculatorError(f"{type(node).__name__} is not allowed; use numbers, + - * / // % ** and sqrt/abs/round/min/max")

    return ev(tree.body)


def format_value(v: Fraction) -> str:
    """Integers exactly; other values as a decimal with up to 12 significant digits."""
    if v.denominator == 1:
        return str(v.numerator)
    if sys.float_info.min <= abs(v) <= sys.float_info.max:
        return f"{float(v):.12g}"
    # Beyond float range (or subnormal, where float keeps few digits): ``10**399 / 3`` would
    # overflow and ``1 / 10**399`` would show as 0.
    return f"{Context(prec=12).divide(Decimal(v.numerator), Decimal(v.denominator)).normalize():g}"


def calculate(expr: str) -> str:
    """The text the calculator tool answers with: a value or ``error: ...``."""
    try:
        return format_value(evaluate(expr))
    except CalculatorError as e:
        return f"error: {e}"
    except (OverflowError, RecursionError, MemoryError, ValueError) as e:
        return f"error: {type(e).__name__}"
