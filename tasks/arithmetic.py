"""Integer arithmetic and countdown: expression trees with step-by-step evaluation traces."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

from thinkgym.tasks.base import Item, TaskSource, check_bool, format_solution, register_task, show

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


@dataclass
class Node:
    """A binary expression tree: a leaf holds ``value``; an inner node holds ``op`` and children."""

    value: Fraction | None = None
    op: str | None = None
    left: "Node | None" = None
    right: "Node | None" = None

    @property
    def is_leaf(self) -> bool:
        return self.op is None

    def eval(self) -> Fraction:
        if self.is_leaf:
            return self.value  # type: ignore[return-value]
        a, b = self.left.eval(), self.right.eval()  # type: ignore[union-attr]
        if self.op == "+":
            return a + b
        if self.op == "-":
            return a - b
        if self.op == "*":
            return a * b
        return a / b

    def render(self, top: bool = True) -> str:
        if self.is_leaf:
            v = self.value
            s = str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"  # type: ignore[union-attr]
            return f"({s})" if (v < 0 and not top) else s  # type: ignore[operator]
        p = _PREC[self.op]  # type: ignore[index]
        ls = self.left.render(False)  # type: ignore[union-attr]
        rs = self.right.render(False)  # type: ignore[union-attr]
        if not self.left.is_leaf and _PREC[self.left.op] < p:  # type: ignore[union-attr,index]
            ls = f"({ls})"
        # Right operands of equal precedence are bracketed too, so the text always shows the
        # order in which the trace evaluates them.
        if not self.right.is_leaf and _PREC[self.right.op] <= p:  # type: ignore[union-attr,index]
            rs = f"({rs})"
        return f"{ls} {self.op} {rs}"


def _num(v: int | Fraction) -> Node:
    return Node(value=Fraction(v))


def _fmt(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def evaluation_trace(tree: Node) -> tuple[list[str], Fraction]:
    """Reduce ``tree`` one operation at a time (post-order); one line per step."""
    import copy

    t = copy.deepcopy(tree)
    lines = []

    def first_reducible(n: Node) -> Node | None:
        if n.is_leaf:
            return None
        for c in (n.left, n.right):
            r = first_reducible(c)  # type: ignore[arg-type]
            if r is not None:
                return r
        return n

    while not t.is_leaf:
        n = first_reducible(t)
        assert n is not None
        a, b, op = n.left.value, n.right.value, n.op  # type: ignore[union-attr]
        v = n.eval()
        rhs = f"({_fmt(b)})" if b < 0 else _fmt(b)  # type: ignore[operator,arg-type]
        step = f"{_fmt(a)} {op} {rhs} = {_fmt(v)}"  # type: ignore[arg-type]
        n.op, n.left, n.right, n.value = None, None, None, v
        lines.append(step if t.is_leaf else f"{step}, so the expression becomes {t.render()}.")
    return lines, t.value  # type: ignore[return-value]


# Upper bounds on the knobs. Trees, their rendering and their traces recurse once per operand,
# and Python cannot print an integer of more than 4,300 digits, so both the operand count and
# the size of a number stay where every item can be built and shown.
MAX_OPERANDS = 50
MAX_VALUE = 10**12
MAX_NUMBERS = 10  # countdown
MAX_NUMBER = 10**6  # countdown
# Up to this max_value a divisor is picked from a full scan of 2..max_value (the original
# method, which fixes the items of every existing configuration); above it, from trial division.
_DIVISOR_SCAN = 10_000


def _divisors(v: int, hi: int) -> Sequence[int]:
    """The divisors of ``v`` in ``[2, hi]``, ascending (all of them when ``v`` is 0).

    For ``hi`` above ``_DIVISOR_SCAN`` the work is bounded by that many trial divisions instead
    of ``hi``: the list is then complete when ``|v| <= _DIVISOR_SCAN**2`` and otherwise holds the
    divisors up to ``_DIVISOR_SCAN`` and their cofactors up to ``hi``.
    """
    if v == 0:
        return range(2, hi + 1)
    v = abs(v)
    if hi <= _DIVISOR_SCAN:
        return [d for d in range(2, hi + 1) if v % d == 0]
    found = set()
    for d in range(1, min(_DIVISOR_SCAN, math.isqrt(v)) + 1):
        if v % d == 0:
            found.update(x for x in (d, v // d) if 2 <= x <= hi)
    return sorted(found)


def _span(v: Any, name: str) -> tuple[int, int]:
    """A knob given as an int or as [lo, hi]."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v, v
    if (isinstance(v, (list, tuple)) and len(v) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in v) and v[0] <= v[1]):
        return int(v[0]), int(v[1])
    raise ValueError(f"{name} must be an int or [lo, hi] with lo <= hi, got {show(v)}")


def _as_list(p: dict[str, Any], *names: str) -> None:
    """[lo, hi] knobs given as tuples become lists: params are part of every item's identity, so
    (2, 4) from Python and [2, 4] from a config or another process must give the same items."""
    for n in names:
        if isinstance(p[n], tuple):
            p[n] = list(p[n])


@register_task("arithmetic")
class Arithmetic(TaskSource):
    """Multi-operand integer arithmetic with operator precedence and parentheses."""

    cache_items = True

    description = "Multi-operand integer arithmetic (+ - * /, precedence, parentheses); exact integer answer."
    grader = "math"
    defaults = {"n_operands": [2, 4], "max_value": 100, "ops": "+-*", "parens": True}

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        p = super().validate_params(params)
        lo, hi = _span(p["n_operands"], "n_operands")
        if lo < 2:
            raise ValueError(f"n_operands must be >= 2, got {show(p['n_operands'])}")
        if hi > MAX_OPERANDS:
            raise ValueError(f"n_operands must be <= {MAX_OPERANDS}, got {show(p['n_operands'])}")
        if not isinstance(p["max_value"], int) or p["max_value"] < 2:
            raise ValueError(f"max_value must be an int >= 2, got {show(p['max_value'])}")
        if p["max_value"] > MAX_VALUE:
            raise ValueError(f"max_value must be <= {MAX_VALUE}, got {show(p['max_value'])}")
        if isinstance(p["ops"], (list, tuple)) and all(isinstance(o, str) for o in p["ops"]):
            p["ops"] = "".join(p["ops"])  # one spelling, one set of items
        if not isinstance(p["ops"], str) or not p["ops"] or set(p["ops"]) - set("+-*/"):
            raise ValueError(f"ops must be a non-empty string of + - * /, got {show(p['ops'])}")
        check_bool(p, "parens")
        _as_list(p, "n_operands")
        return p

    def _tree(self, rng: random.Random, n: int) -> Node:
        ops, hi = self.params["ops"], self.params["max_value"]
        if n == 1:
            return _num(rng.randint(1, hi))
        op = rng.choice(ops)
        if op == "/":
            # Exact division: the divisor is a leaf that divides the left operand's value.
            left = self._tree(rng, n - 1)
            v = left.eval()
            divs = _divisors(int(v), hi)  # values stay integers: every division is exact
            if not divs:
                return Node(op="*", left=left, right=_num(rng.randint(2, hi)))
            return Node(op="/", left=left, right=_num(rng.choice(divs)))
        k = rng.randint(1, n - 1) if self.params["parens"] else n - 1
        return Node(op=op, left=self._tree(rng, k), right=self._tree(rng, n - k))

    def generate(self, i: int, rng: random.Random) -> Item:
        lo, hi = _span(self.params["n_operands"], "n_operands")
        n = rng.randint(lo, hi)
        tree = self._tree(rng, n)
        expr = tree.render()
        steps, value = evaluation_trace(tree)
        intro = "Multiplication and division come before addition and subtraction; brackets first."
        lines = [f"Evaluate {expr} one operation at a time.", intro, *steps]
        phrasing = rng.choice(["Compute", "Evaluate", "Calculate", "What is", "Find the value of"])
        q = f"{phrasing} {expr}" + ("?" if phrasing == "What is" else ".")
        ans = _fmt(value)
        return {
            "question": q,
            "answer": ans,
            "metadata": {
                "expression": expr,
                "solution": format_solution(lines, ans),
                "difficulty": n - 1 + expr.count("("),
            },
        }


def _countdown_tree(rng: random.Random, nums: list[int]) -> Node | None:
    """A random expression over ``nums`` (in the given order) with positive integer intermediates."""
    if len(nums) == 1:
        return _num(nums[0])
    k = rng.randint(1, len(nums) - 1)
    left, right = _countdown_tree(rng, nums[:k]), _countdown_tree(rng, nums[k:])
    if left is None or right is None:
        return None
    a, b = left.eval(), right.eval()
    ops = ["+", "*"]
    if a > b:
        ops.append("-")
    if b > 1 and a % b == 0:
        ops.append("/")
    if a == 1 or b == 1:
        ops.remove("*")  # multiplying by one is a no-op step; keep solutions meaningful
    return Node(op=rng.choice(ops), left=left, right=right)


@register_task("countdown")
class Countdown(TaskSource):
    """Reach a target from given numbers with + - * / and parentheses."""

    cache_items = True

    description = "Countdown: combine the given numbers with + - * / to hit the target; any valid expression counts."
    grader = "countdown"
    defaults = {"n_numbers": [3, 5], "max_number": 25, "target": [10, 250], "exactly_once": False}

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        p = super().validate_params(params)
        lo, hi = _span(p["n_numbers"], "n_numbers")
        tlo, _ = _span(p["target"], "target")
        if lo < 2:
            raise ValueError(f"n_numbers must be >= 2, got {show(p['n_numbers'])}")
        if hi > MAX_NUMBERS:
            raise ValueError(f"n_numbers must be <= {MAX_NUMBERS}, got {show(p['n_numbers'])}")
        if not isinstance(p["max_number"], int) or p["max_number"] < 2:
            raise ValueError(f"max_number must be an int >= 2, got {show(p['max_number'])}")
        if p["max_number"] > MAX_NUMBER:
            raise ValueError(f"max_number must be <= {MAX_NUMBER}, got {show(p['max_number'])}")
        if tlo < 1:
            raise ValueError(f"target must be positive, got {show(p['target'])}")
        check_bool(p, "exactly_once")
        _as_list(p, "n_numbers", "target")
        # Intermediates are positive integers and a + b <= a * b for a, b >= 2, so no expression
        # over n numbers of at most max_number exceeds max_number ** n.
        reach = p["max_number"] ** hi
        if tlo > reach:
            raise ValueError(
                f"target {show(p['target'])} is out of reach: with n_numbers {show(p['n_numbers'])} and "
                f"max_number {p['max_number']} no expression exceeds {reach}"
            )
        return p

    def generate(self, i: int, rng: random.Random) -> Item:
        nlo, nhi = _span(self.params["n_numbers"], "n_numbers")
        tlo, thi = _span(self.params["target"], "target")
        once = bool(self.params["exactly_once"])
        for _ in range(10_000):
            n = rng.randint(nlo, nhi)
            nums = [rng.randint(1, self.params["max_number"]) for _ in range(n)]
            used = nums[:] if once else rng.sample(nums, rng.randint(2, n))
            rng.shuffle(used)
            tree = _countdown_tree(rng, used)
            if tree is None:
                continue
            t = tree.eval()
            if t.denominator == 1 and tlo <= t <= thi and not (len(used) > 1 and t in nums):
                break
        else:
            raise ValueError(
                f"countdown: no instance with a target in {[tlo, thi]} found in 10000 tries with "
                f"n_numbers {show(self.params['n_numbers'])} and max_number {self.params['max_number']}; "
                "widen target or change n_numbers or max_number"
            )
        target = int(t)
        expr = tree.render()
        steps, _ = evaluation_trace(tree)
        rule = "exactly once" if once else "at most once"
        listed = ", ".join(map(str, nums))
        q = f"Using each of {listed} {rule}, make {target} with + - * / and parentheses."
        lines = [
            f"I need {target} from {listed}, each number {rule}.",
            f"Try {expr}:",
            *steps,
            f"That gives {target}, and it uses {', '.join(map(str, used))}, each {rule}.",
        ]
        meta: dict[str, Any] = {
            "reference": expr,
            "solution": format_solution(lines, expr),
            "difficulty": len(used) - 1,
        }
        if once:
            meta["grader_kwargs"] = {"exactly_once": True}
        return {"question": q, "answer": {"numbers": nums, "target": target}, "metadata": meta}
