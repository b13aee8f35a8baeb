"""Small programming problems with tests, in function or stdin/stdout form.

Each template has a reference implementation (trusted code written here, executed at generation
time to compute expected outputs) and a plan that becomes the worked solution. The gold answer
is the tests dict the code grader consumes::

    {"type": "function", "entry_point": NAME, "cases": [{"args": [...], "expected": JSON}]}
    {"type": "stdio", "cases": [{"stdin": STR, "expected_stdout": STR}]}
"""

from __future__ import annotations

import io
import random
from contextlib import redirect_stdout
from dataclasses import dataclass
from typing import Any, Callable

from thinkgym.tasks.base import Item, TaskSource, format_solution, name_list, register_task

WORDS = (
    "alpha river stone cloud maple tiger ocean pixel candle forest lemon rocket silver garden "
    "thunder meadow copper violet harbor falcon desert prism orbit willow ember quartz"
).split()


@dataclass
class Problem:
    kind: str  # "function" or "stdio"
    statement: str
    code: str
    plan: list[str]
    inputs: list[Any]  # argument lists (function) or stdin strings (stdio)
    entry_point: str = ""


def _ints(rng: random.Random, n: int, lo: int, hi: int) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(n)]


def _lists(rng: random.Random, k: int, lo: int = -50, hi: int = 50) -> list[list[Any]]:
    out: list[list[Any]] = [[[]]]
    out += [[_ints(rng, rng.randint(1, 9), lo, hi)] for _ in range(k - 1)]
    return out


def _pick(rng: random.Random, *options: str) -> str:
    """One phrasing of a statement; paraphrases keep items of one template textually distinct."""
    return rng.choice(options)


def _arg(rng: random.Random) -> str:
    return rng.choice(["xs", "nums", "values", "arr", "data", "items"])


def _p_add_k(rng: random.Random) -> Problem:
    k = rng.choice([v for v in range(-15, 21) if v])
    name = rng.choice(["shift_all", "add_offset", "bump", "offset_list", "plus_k", "shifted"])
    a = _arg(rng)
    return Problem(
        "function",
        _pick(rng,
              f"Write a function `{name}({a})` that takes a list of integers `{a}` and returns a new list with {k} added to every element.",
              f"Implement `{name}({a})`: given the integer list `{a}`, return a new list where {k} is added to each number.",
              f"`{name}({a})` must return a fresh list: every integer of `{a}` plus {k}, in the same order."),
        f"def {name}({a}):\n    return [x + {k} for x in {a}]\n",
        [f"Build a new list, adding {k} to each element; an empty list gives an empty list."],
        _lists(rng, 5), name)


def _p_count_div(rng: random.Random) -> Problem:
    k = rng.randint(2, 12)
    name = rng.choice(["count_multiples", "num_divisible", "multiples_of_k", "count_div", "how_many_divisible"])
    a = _arg(rng)
    return Problem(
        "function",
        _pick(rng,
              f"Write a function `{name}({a})` that returns how many integers in the list `{a}` are divisible by {k} (zero and negative multiples count).",
              f"Implement `{name}({a})`: count the elements of `{a}` that are multiples of {k}, counting 0 and negative multiples too.",
              f"`{name}({a})` takes a list of integers and returns the number of them divisible by {k} (0 and negatives included)."),
        f"def {name}({a}):\n    return sum(1 for x in {a} if x % {k} == 0)\n",
        [f"Python's % gives x % {k} == 0 exactly for multiples of {k}, negatives included.",
         "Count those elements."],
        _lists(rng, 5), name)


def _p_prefix(rng: random.Random) -> Problem:
    name = rng.choice(["running_total", "prefix_sums", "cumulative", "scan_sum", "partial_sums"])
    start = rng.randint(-10, 25)
    a = _arg(rng)
    return Problem(
        "function",
        _pick(rng,
              f"Write a function `{name}({a})` returning the list of running totals of `{a}`, starting from an initial total of {start} (output i is {start} plus the sum of the first i+1 elements).",
              f"Implement `{name}({a})`: start a total at {start}, add the elements of `{a}` one by one, and return the list of totals after each addition.",
              f"`{name}({a})` returns running sums of the integer list `{a}`, where the running sum begins at {start} before the first element."),
        f"def {name}({a}):\n    out, t = [], {start}\n    for x in {a}:\n        t += x\n        out.append(t)\n    return out\n",
        [f"Keep a running total that starts at {start}.", "Add each element and record the total after it."],
        _lists(rng, 5), name)


def _p_vowels(rng: random.Random) -> Problem:
    letters = "".join(sorted(rng.sample("aeioustrnly", rng.randint(2, 5))))
    name = rng.choice(["count_letters", "letter_count", "tally", "count_chars", "char_hits"])
    a = rng.choice(["s", "text", "word", "line"])
    shown = ", ".join(letters)
    inputs = [[""]] + [[" ".join(rng.sample(WORDS, rng.randint(1, 4))).title() if rng.random() < 0.5
                        else " ".join(rng.sample(WORDS, rng.randint(1, 4)))] for _ in range(4)]
    return Problem(
        "function",
        _pick(rng,
              f"Write a function `{name}({a})` that returns how many characters of the string `{a}` are one of the letters {shown}, ignoring case.",
              f"Implement `{name}({a})`: count the characters of `{a}` that are among {shown} (upper or lower case both count).",
              f"`{name}({a})` returns the number of positions in `{a}` holding {shown} in any case."),
        f"def {name}({a}):\n    return sum(1 for c in {a}.lower() if c in {letters!r})\n",
        ["Lower-case the string so case does not matter.", f"Count characters that are in {letters!r}."],
        inputs, name)


def _p_second_largest(rng: random.Random) -> Problem:
    name = rng.choice(["second_largest", "runner_up", "second_max", "next_biggest"])
    default = rng.choice([-1, 0, None, -100, 999])
    a = _arg(rng)
    inputs = [[[5]], [[3, 3]]] + [[_ints(rng, rng.randint(2, 8), -20, 20)] for _ in range(3)]
    return Problem(
        "function",
        _pick(rng,
              f"Write a function `{name}({a})` that returns the second largest distinct value in `{a}`, or {default!r} if there are fewer than two distinct values.",
              f"Implement `{name}({a})`: among the distinct integers of `{a}`, return the second biggest; return {default!r} when `{a}` has under two distinct values.",
              f"`{name}({a})` gives the runner-up distinct value of the list `{a}` ({default!r} if fewer than two distinct values exist)."),
        f"def {name}({a}):\n    vals = sorted(set({a}))\n    return vals[-2] if len(vals) >= 2 else {default!r}\n",
        ["Remove duplicates with a set and sort.", f"Return the second from the end, or {default!r} if fewer than two remain."],
        inputs, name)


def _p_fizz(rng: random.Random) -> Problem:
    a, b = rng.sample([2, 3, 4, 5, 6, 7, 11], 2)
    wa, wb = rng.sample(["Fizz", "Buzz", "Zap", "Pow", "Bing", "Zoom", "Bop", "Whiz"], 2)
    name = rng.choice(["fizzbuzz", "say_numbers", "word_game", "chant", "count_off"])
    return Problem(
        "function",
        _pick(rng,
              f"Write a function `{name}(n)` that returns a list of strings for 1..n: \"{wa}{wb}\" for multiples of both {a} and {b}, \"{wa}\" for multiples of {a}, \"{wb}\" for multiples of {b}, otherwise the number itself as a string.",
              f"Implement `{name}(n)`: for i from 1 to n, emit \"{wa}\" if {a} divides i, \"{wb}\" if {b} divides i, \"{wa}{wb}\" if both do, else str(i); return the list."),
        f"def {name}(n):\n    out = []\n    for i in range(1, n + 1):\n        s = ({wa!r} if i % {a} == 0 else '') + ({wb!r} if i % {b} == 0 else '')\n        out.append(s or str(i))\n    return out\n",
        [f"For each i, append {wa!r} if {a} divides i and {wb!r} if {b} divides i.", "Fall back to str(i) when neither applies."],
        [[0], [1]] + [[rng.randint(5, 30)] for _ in range(3)], name)


def _p_digit_sum(rng: random.Random) -> Problem:
    base = rng.choice([2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 16])
    name = rng.choice(["digit_sum", "sum_of_digits", "base_digit_sum", "digits_total"])
    return Problem(
        "function",
        _pick(rng,
              f"Write a function `{name}(n)` that returns the sum of the digits of the non-negative integer `n` written in base {base}.",
              f"Implement `{name}(n)`: write n >= 0 in base {base} and return the sum of its base-{base} digits.",
              f"`{name}(n)` adds up the base-{base} digits of a non-negative integer n and returns the total."),
        f"def {name}(n):\n    s = 0\n    while n:\n        s += n % {base}\n        n //= {base}\n    return s\n",
        [f"Repeatedly take n % {base} (the last base-{base} digit) and divide n by {base}."],
        [[0]] + [[rng.randint(1, 10**rng.randint(1, 6))] for _ in range(4)], name)


def _p_collatz(rng: random.Random) -> Problem:
    m = rng.choice([3, 3, 3, 5, 7])
    c = rng.choice([1, 1, 3])
    name = rng.choice(["collatz_steps", "steps_to_one", "hailstone_len", "orbit_length"])
    cap = rng.randint(30, 200)
    return Problem(
        "function",
        _pick(rng,
              f"Write a function `{name}(n)` for a positive integer n: repeatedly replace n by n // 2 if n is even or {m} * n + {c} if odd, and return the number of replacements until n == 1, but stop counting at {cap} (return {cap} if 1 is not reached within {cap} steps).",
              f"Implement `{name}(n)`: while n != 1 and fewer than {cap} steps were made, set n to n // 2 when even, else to {m} * n + {c}; return the number of steps made."),
        f"def {name}(n):\n    steps = 0\n    while n != 1 and steps < {cap}:\n        n = n // 2 if n % 2 == 0 else {m} * n + {c}\n        steps += 1\n    return steps\n",
        ["Loop while n != 1, applying the rule and counting steps.", f"Stop early at {cap} steps."],
        [[1]] + [[rng.randint(2, 60)] for _ in range(4)], name)


def _p_stdio_sum_over(rng: random.Random) -> Problem:
    k = rng.randint(-20, 30)
    inputs = []
    for _ in range(4):
        xs = _ints(rng, rng.randint(1, 8), -30, 40)
        inputs.append(f"{len(xs)}\n{' '.join(map(str, xs))}\n")
    return Problem(
        "stdio",
        _pick(rng,
              f"Read an integer n, then a line of n integers from standard input. Print the sum of those integers that are strictly greater than {k} (print 0 if there are none).",
              f"Input: n on the first line, then n integers on the second. Output the total of the integers above {k} (0 if none exceed {k}).",
              f"Program: read n and then n space-separated integers; print the sum of every integer > {k}, or 0 when no integer is > {k}."),
        f"n = int(input())\nxs = list(map(int, input().split()))[:n]\nprint(sum(x for x in xs if x > {k}))\n",
        ["Read n and the numbers.", f"Sum the ones greater than {k} and print it."],
        inputs)


def _p_stdio_words(rng: random.Random) -> Problem:
    rev = rng.random() < 0.5
    inputs = [" ".join(rng.sample(WORDS, rng.randint(1, 7))) + "\n" for _ in range(4)]
    order = "longest first" if rev else "shortest first"
    key = "(-len(w), w)" if rev else "(len(w), w)"
    return Problem(
        "stdio",
        _pick(rng,
              f"Read one line of space-separated lowercase words. Print the words on one line separated by single spaces, sorted by length ({order}), breaking ties alphabetically.",
              f"Input: a line of lowercase words. Output them on one line, single-spaced, ordered {order} by length and alphabetically among equal lengths."),
        f"words = input().split()\nprint(' '.join(sorted(words, key=lambda w: {key})))\n",
        [f"Split the line and sort with key {key}.", "Join with single spaces."],
        inputs)


def _p_stdio_powmod(rng: random.Random) -> Problem:
    m = rng.choice([7, 11, 13, 17, 97, 101, 997, 1000, 10007, 65537, 10**9 + 7, 998244353])
    inputs = [f"{rng.randint(0, 10**4)} {rng.randint(0, 10**6)}\n" for _ in range(4)]
    return Problem(
        "stdio",
        _pick(rng,
              f"Read two non-negative integers a and b on one line. Print a to the power b, modulo {m}.",
              f"Input: a b (non-negative integers). Output (a ** b) mod {m}.",
              f"Given a and b on one input line, print the remainder of a^b divided by {m}."),
        f"a, b = map(int, input().split())\nprint(pow(a, b, {m}))\n",
        [f"Use fast modular exponentiation: pow(a, b, {m}) (never compute a**b in full)."],
        inputs)


TEMPLATES: dict[str, Callable[[random.Random], Problem]] = {
    "add_k": _p_add_k, "count_div": _p_count_div, "prefix": _p_prefix, "letters": _p_vowels,
    "second_largest": _p_second_largest, "fizz": _p_fizz, "digit_sum": _p_digit_sum,
    "collatz": _p_collatz, "stdio_sum_over": _p_stdio_sum_over, "stdio_words": _p_stdio_words,
    "stdio_powmod": _p_stdio_powmod,
}


def _run_reference(p: Problem) -> dict[str, Any]:
    """Compute the expected outputs by running the trusted reference in-process."""
    if p.kind == "function":
        ns: dict[str, Any] = {}
        exec(compile(p.code, f"<reference {p.entry_point}>", "exec"), ns)  # noqa: S102 - our own code
        fn = ns[p.entry_point]
        cases = [{"args": list(args), "expected": fn(*args)} for args in p.inputs]
        return {"type": "function", "entry_point": p.entry_point, "cases": cases}
    cases = []
    for stdin in p.inputs:
        lines = iter(stdin.splitlines())
        buf = io.StringIO()
        with redirect_stdout(buf):
            exec(compile(p.code, "<reference stdio>", "exec"), {"input": lambda *_, _lines=lines: next(_lines)})  # noqa: S102
        cases.append({"stdin": stdin, "expected_stdout": buf.getvalue()})
    return {"type": "stdio", "cases": cases}


def _names(params: dict[str, Any]) -> list[str]:
    """The templates an item may use under ``params``."""
    names = params["templates"] or sorted(TEMPLATES)
    form = params["form"]
    if form != "any":
        names = [n for n in names if n.startswith("stdio") == (form == "stdio")]
        if not names:
            raise ValueError(f"no code templates of form {form!r} among {params['templates']}")
    return names


@register_task("code")
class CodeProblems(TaskSource):
    """Short Python problems with unit tests (function form) or stdin/stdout tests."""

    cache_items = True

    description = "Python programming problems with tests (function or stdin/stdout form); graded by running them."
    grader = "code"
    defaults = {"templates": None, "form": "any"}

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        p = super().validate_params(params)
        if p["form"] not in ("any", "function", "stdio"):
            raise ValueError(f"form must be 'any', 'function' or 'stdio', got {p['form']!r}")
        p["templates"] = name_list(p["templates"], TEMPLATES, "templates", "code templates")
        _names(p)  # templates that all have the other form fail here, not at the first item
        return p

    def generate(self, i: int, rng: random.Random) -> Item:
        tname = rng.choice(_names(self.params))
        p = TEMPLATES[tname](rng)
        tests = _run_reference(p)
        shown = tests["cases"][1]
        if p.kind == "function":
            example = f"Example: `{p.entry_point}({', '.join(map(repr, shown['args']))})` returns `{shown['expected']!r}`."
        else:
            example = f"Example: input {shown['stdin']!r} gives output {shown['expected_stdout']!r}."
        # Example first and a short instruction last: the fixed text between variable parts stays short.
        q = f"{example} {p.statement} Answer with a ```python block."
        answer_block = f"\n```python\n{p.code}```\n"
        return {
            "question": q,
            "answer": tests,
            "metadata": {
                "template": tname,
                # Cases the retry env may quote with their expected values (the prompt's example
                # and one more); the rest stay hidden, so feedback cannot be memorised case by case.
                "public_tests": [0, 1],
                "reference": p.code,
                "difficulty": len(p.plan),
                "solution": format_solution(p.plan, answer_block),
            },
        }
