"""Built-in task sources: determinism, schema, correct answers and worked solutions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from fractions import Fraction

import pytest

from thinkgym.tasks import TASKS, TaskSource, format_solution, list_tasks, make_task
from thinkgym.tasks.arithmetic import evaluation_trace

PROCEDURAL = {
    "arithmetic": "math",
    "countdown": "countdown",
    "word_problems": "math",
    "latex_math": "math",
    "code": "code",
    "format": "format",
}
SOLUTION_RE = re.compile(r"\A<think>\n(.+)\n</think>\n<answer>(.+)</answer>\Z", re.DOTALL)


def test_builtin_sources_registered_with_graders():
    names = set(TASKS.names())
    assert set(PROCEDURAL) | {"jsonl", "hf_dataset"} <= names
    descs = list_tasks()
    for name, grader in PROCEDURAL.items():
        src = make_task(name, seed=0)
        assert isinstance(src, TaskSource) and src.grader == grader
        assert descs[name] and len(descs[name]) > 20


@pytest.mark.parametrize("name", sorted(PROCEDURAL))
def test_items_are_plain_deterministic_data_with_solutions(name):
    a, b, other = make_task(name, seed=7), make_task(name, seed=7), make_task(name, seed=8)
    items = [a[i] for i in range(40)]
    assert items == [b[i] for i in range(40)]
    # Same index, different seed: a different problem (almost always; allow one collision).
    assert sum(a[i]["question"] == other[i]["question"] for i in range(40)) <= 1
    # Items at different indices of one seed are mostly distinct.
    assert len({it["question"] for it in items}) >= 35
    for i, it in enumerate(items):
        assert set(it) == {"question", "answer", "metadata"}
        json.dumps(it)  # plain data
        assert isinstance(it["question"], str) and it["question"].strip()
        md = it["metadata"]
        assert md["grader"] == PROCEDURAL[name] and md["source"] == name and md["index"] == i
        assert isinstance(md["difficulty"], int)
        m = SOLUTION_RE.match(md["solution"])
        assert m, md["solution"]
        assert m.group(1).strip()
        if PROCEDURAL[name] in ("math", "format"):
            assert m.group(2) == it["answer"]


def test_item_mutation_does_not_leak():
    s = make_task("arithmetic", seed=1)
    it = s[3]
    it["metadata"]["solution"] = "tampered"
    assert s[3]["metadata"]["solution"] != "tampered"


_STEP_RE = re.compile(r"(?<![-+*/] )(?<![\d(])(\(?-?\d+\)?) ([-+*/]) (\(?-?\d+\)?) = (-?\d+(?:/\d+)?)")


def _check_steps(text: str) -> int:
    """Every 'a op b = c' line in a trace must be arithmetically right; returns how many."""
    n = 0
    for a, op, b, c in _STEP_RE.findall(text):
        x, y = Fraction(a.strip("()")), Fraction(b.strip("()"))
        want = {"+": x + y, "-": x - y, "*": x * y, "/": x / y if y else None}[op]
        assert want == Fraction(c), f"wrong step {a} {op} {b} = {c} in\n{text}"
        n += 1
    return n


@pytest.mark.parametrize("params", [{}, {"ops": "+-*/", "n_operands": 5}, {"n_operands": [2, 3], "max_value": 9, "parens": False}])
def test_arithmetic_answers_match_sympy(params):
    import sympy

    s = make_task("arithmetic", seed=3, **params)
    for i in range(60):
        it = s[i]
        expr = it["metadata"]["expression"]
        assert it["question"].endswith(f"{expr}.") or it["question"].endswith(f"{expr}?")
        assert sympy.sympify(expr, rational=True) == sympy.Integer(int(it["answer"]))
        assert set(re.findall(r"[-+*/]", expr.replace("(-", "("))) <= set(params.get("ops", "+-*"))
        assert _check_steps(it["metadata"]["solution"]) == expr.count(" ") // 2


def test_evaluation_trace_follows_brackets():
    s = make_task("arithmetic", seed=0, n_operands=4)
    it = next(s[i] for i in range(100) if "(" in s[i]["metadata"]["expression"])
    lines = it["metadata"]["solution"].split("\n")
    assert any("so the expression becomes" in ln for ln in lines)


def test_countdown_items_are_solvable_and_reference_verifies():
    from thinkgym.verifiers import grade
    from thinkgym.verifiers.countdown import evaluate

    for params in ({}, {"exactly_once": True, "n_numbers": 4}):
        s = make_task("countdown", seed=5, **params)
        for i in range(80):
            it = s[i]
            gold = it["answer"]
            assert set(gold) == {"numbers", "target"} and isinstance(gold["target"], int)
            lo, hi = s.params["target"]
            assert lo <= gold["target"] <= hi
            value, used = evaluate(it["metadata"]["reference"])
            assert value == gold["target"]
            assert not (Counter(used) - Counter(gold["numbers"]))
            kw = it["metadata"].get("grader_kwargs", {})
            assert kw == ({"exactly_once": True} if params else {})
            if params:
                assert sorted(used) == sorted(gold["numbers"]) and "exactly once" in it["question"]
            g = grade("countdown", it["metadata"]["solution"], gold, **kw)
            assert g.score == 1.0, (it, g)
            _check_steps(it["metadata"]["solution"])


def test_word_problem_traces_are_arithmetically_right():
    s = make_task("word_problems", seed=11, difficulty=[0, 3])
    templates = set()
    for i in range(200):
        it = s[i]
        templates.add(it["metadata"]["template"])
        assert int(it["answer"]) >= 0
        assert _check_steps(it["metadata"]["solution"]) >= 1
        # The final computed value is the answer.
        assert re.findall(r"= (-?\d+)", it["metadata"]["solution"])[-1] == it["answer"]
    assert len(templates) >= 10
    only = make_task("word_problems", seed=0, templates="ages,speed")
    assert {only[i]["metadata"]["template"] for i in range(30)} == {"ages", "speed"}


def test_latex_math_answers_are_mathematically_right():
    import sympy
    from latex2sympy2_extended import latex2sympy

    x = sympy.Symbol("x")
    s = make_task("latex_math", seed=2)
    kinds = set()
    for i in range(90):
        it = s[i]
        kind, q, ans = it["metadata"]["kind"], it["question"], it["answer"]
        kinds.add(kind)
        body = re.findall(r"\$(.+?)\$", q)[-1]
        if kind in ("fraction", "radical"):
            assert sympy.simplify(latex2sympy(body) - latex2sympy(ans)) == 0, (q, ans)
        elif kind in ("quadratic", "irrational_roots"):
            lhs = latex2sympy(body.split("=")[0])
            roots = set(sympy.solve(lhs, x))
            got = {latex2sympy(p) for p in ans[2:-2].split(", ")} if kind == "quadratic" else None
            if got is not None:
                assert roots == got, (q, ans)
            else:
                assert len(roots) == 2 and "\\sqrt{" in ans
                for r in roots:
                    assert sympy.simplify(lhs.subs(x, r)) == 0
        else:
            # Interval answers: the inequality, evaluated exactly at many points (endpoints,
            # just inside/outside them, and integers), agrees with membership in the interval.
            rel = body.replace("\\le", "<=").replace("\\ge", ">=")
            rel = re.sub(r"\|(.+?)\|", r"abs(\1)", rel)
            rel = re.sub(r"(\d)x", r"\1*x", rel)
            parts = _parse_interval(ans)
            ends = [e for lo, hi, *_ in parts for e in (lo, hi) if e is not None]
            eps = Fraction(1, 1000)
            points = [Fraction(k) for k in range(-120, 121)] + [e + d for e in ends for d in (-eps, 0, eps)]
            for pt in points:
                want = eval(rel, {"abs": abs, "x": pt})  # noqa: S307 - our own generated text
                got = any((lo is None or (pt > lo or (lc and pt == lo))) and (hi is None or (pt < hi or (hc and pt == hi)))
                          for lo, hi, lc, hc in parts)
                assert want == got, (q, ans, pt)
    assert kinds == {"fraction", "radical", "linear_inequality", "abs_inequality", "quadratic", "irrational_roots"}


def _parse_interval(tex: str):
    """``(-\\infty, 3] \\cup (5, \\infty)`` -> [(None, 3, False, True), (5, None, False, False)]."""
    out = []
    for part in tex.split(" \\cup "):
        lo, hi = part[1:-1].split(", ")
        conv = lambda t: None if t in ("\\infty", "-\\infty") else _frac(t)  # noqa: E731
        out.append((conv(lo), conv(hi), part[0] == "[", part[-1] == "]"))
    return out


def _frac(t: str) -> Fraction:
    m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", t)
    if m:
        return Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)
    return Fraction(int(t))


def _run_programs(jobs: list[tuple[str, dict]]) -> list[bool]:
    """Run trusted reference code against tests dicts in one subprocess (no sandbox needed)."""
    harness = (
        "import json, sys, io, contextlib\n"
        "res = []\n"
        "for code, tests in json.loads(sys.stdin.read()):\n"
        "    ok = True\n"
        "    try:\n"
        "        if tests['type'] == 'function':\n"
        "            ns = {}\n            exec(code, ns)\n"
        "            for c in tests['cases']:\n"
        "                ok &= json.loads(json.dumps(ns[tests['entry_point']](*c['args']))) == c['expected']\n"
        "        else:\n"
        "            for c in tests['cases']:\n"
        "                lines = iter(c['stdin'].splitlines()); buf = io.StringIO()\n"
        "                with contextlib.redirect_stdout(buf):\n"
        "                    exec(code, {'input': lambda *a: next(lines)})\n"
        "                ok &= buf.getvalue() == c['expected_stdout']\n"
        "    except Exception:\n"
        "        ok = False\n"
        "    res.append(ok)\n"
        "print(json.dumps(res))\n"
    )
    r = subprocess.run([sys.executable, "-c", harness], input=json.dumps(jobs),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_code_items_schema_and_reference_passes():
    s = make_task("code", seed=4)
    forms = set()
    good, bad = [], []
    for i in range(40):
        it = s[i]
        t = it["answer"]
        forms.add(t["type"])
        if t["type"] == "function":
            assert set(t) == {"type", "entry_point", "cases"} and t["entry_point"] in it["question"]
            assert all(set(c) == {"args", "expected"} and isinstance(c["args"], list) for c in t["cases"])
        else:
            assert set(t) == {"type", "cases"}
            assert all(set(c) == {"stdin", "expected_stdout"} for c in t["cases"])
        assert len(t["cases"]) >= 4
        code = re.search(r"```python\n(.+?)```", it["metadata"]["solution"], re.DOTALL).group(1)
        assert code == it["metadata"]["reference"]
        good.append((code, t))
        # A wrong program must fail the same tests (the tests can fail).
        bad.append((code.replace("return ", "return None and ", 1).replace("print(", "print(1, ", 1), t))
    assert _run_programs(good) == [True] * len(good)
    assert _run_programs(bad) == [False] * len(bad)
    assert forms == {"function", "stdio"}
    assert all(make_task("code", form="stdio")[i]["answer"]["type"] == "stdio" for i in range(10))


def test_format_task_answers():
    s = make_task("format", seed=0)
    for i in range(50):
        it = s[i]
        q, a, kind = it["question"], it["answer"], it["metadata"]["puzzle"]
        w = re.search(r"'([a-z]+)'", q.split("letter")[-1] if kind == "count" else q).group(1)
        if kind == "reverse":
            assert a == w[::-1]
        elif kind == "upper":
            assert a == w.upper()
        elif kind == "sort":
            assert a == "".join(sorted(w))
        elif kind == "first_last":
            assert a == w[0] + w[-1]


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("arithmetic", {"n_operand": 3}, "unknown parameter"),
        ("arithmetic", {"n_operands": 1}, "n_operands must be >= 2"),
        ("arithmetic", {"ops": "+%"}, "ops must be"),
        ("countdown", {"target": [50, 10]}, "target must be an int or"),
        ("word_problems", {"templates": "nope"}, "unknown word-problem templates"),
        ("latex_math", {"kinds": ["radical", "calculus"]}, "unknown latex_math kinds"),
        ("code", {"form": "notebook"}, "form must be"),
        ("format", {"puzzles": "dance"}, "unknown format puzzles"),
    ],
)
def test_bad_params_are_clear_errors(name, params, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make_task(name, **params)[0]


@pytest.mark.parametrize("size", [2.5, 3.0, "3", True])
def test_size_must_be_an_int(size):
    """A float size used to be truncated (2.5 gave 2 items) and a string parsed."""
    with pytest.raises(TypeError, match="size must be an int"):
        make_task("arithmetic", size=size)


def test_size_accepts_int_like_values():
    import numpy as np

    assert len(make_task("arithmetic", size=np.int64(3))) == 3
    assert len(make_task("arithmetic", size=0)) == 0


def test_params_are_part_of_item_identity():
    a = make_task("arithmetic", seed=0)
    b = make_task("arithmetic", seed=0, max_value=1000)
    c = make_task("arithmetic", seed=0, max_value=100)  # the default, spelled out
    assert a[0] == c[0] and a[0] != b[0]


def test_format_solution_shape():
    assert format_solution(["a", "b"], 3) == "<think>\na\nb\n</think>\n<answer>3</answer>"


def test_trace_does_not_mutate_tree():
    from thinkgym.tasks.arithmetic import Node, _num

    t = Node(op="+", left=_num(2), right=Node(op="*", left=_num(3), right=_num(4)))
    lines, v = evaluation_trace(t)
    assert v == 14 and t.render() == "2 + 3 * 4" and len(lines) == 2


def test_same_items_across_processes_and_hash_seeds():
    code = (
        "import json; from thinkgym.tasks import make_task\n"
        "out = {n: [make_task(n, seed=3, **({'max_value': 50} if n == 'arithmetic' else {}))[i] for i in (0, 17, 999_999)]"
        " for n in %r}\n"
        "print(json.dumps(out, sort_keys=True))\n" % sorted(PROCEDURAL)
    )
    outs = []
    for hashseed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    assert outs[0] == outs[1]
    here = {n: [make_task(n, seed=3, **({"max_value": 50} if n == "arithmetic" else {}))[i] for i in (0, 17, 999_999)]
            for n in sorted(PROCEDURAL)}
    assert json.loads(outs[0]) == json.loads(json.dumps(here))


@pytest.mark.parametrize("name", ["arithmetic", "countdown", "word_problems", "latex_math", "format"])
def test_worked_solutions_get_full_reward(name):
    """Cold-start traces must be right by the task's own grader and well-formed by the format grader."""
    from thinkgym.verifiers import grade

    s = make_task(name, seed=21)
    for i in range(25):
        it = s[i]
        sol, md = it["metadata"]["solution"], it["metadata"]
        g = grade(md["grader"], sol, it["answer"], **md.get("grader_kwargs", {}))
        assert g.score == 1.0, (it, g)
        f = grade("format", sol, None)
        assert f.score == 1.0, (sol, f)


@pytest.mark.sandbox
def test_code_solutions_pass_the_code_grader():
    from thinkgym.verifiers import grade

    s = make_task("code", seed=21)
    for i in range(12):
        it = s[i]
        g = grade("code", it["metadata"]["solution"], it["answer"])
        assert g.score == 1.0, (it["question"], g.reason)
        assert grade("format", it["metadata"]["solution"], None).score == 1.0


def test_item_cache_returns_equal_independent_copies():
    """Procedural sources share built items process-wide (a learner makes an env per episode);
    a cached item equals a freshly generated one and editing it changes nothing else."""
    from thinkgym.tasks import base

    src = make_task("countdown", seed=11, n_numbers=[3, 3], max_number=12)
    assert type(src).cache_items
    first = src[5]
    key = (type(src), src.item_key(5))
    assert key in base._ITEMS
    fresh = src.generate(5, src.rng(5))
    assert first["question"] == fresh["question"] and first["answer"] == fresh["answer"]
    first["metadata"]["reference"] = "edited"
    first["answer"]["target"] = -1
    again = make_task("countdown", seed=11, n_numbers=[3, 3], max_number=12)[5]  # another instance
    assert again == {**src[5]} and again["answer"]["target"] == fresh["answer"]["target"]
    assert again["metadata"]["reference"] == fresh["metadata"]["reference"]
    again["answer"]["target"] = -2  # a cache hit's copy is the caller's too
    assert src[5]["answer"]["target"] == fresh["answer"]["target"]
    # seed and params are part of the key
    assert make_task("countdown", seed=12, n_numbers=[3, 3], max_number=12)[5]["question"] != again["question"]
    assert make_task("countdown", seed=11, n_numbers=[4, 4], max_number=12)[5]["question"] != again["question"]


def test_row_loaders_do_not_cache(tmp_path):
    """A JSONL source reads its file: rewriting the file gives the new rows, not cached ones."""
    p = tmp_path / "rows.jsonl"
    p.write_text(json.dumps({"question": "q1", "answer": "1"}) + "\n")
    assert make_task("jsonl", path=str(p))[0]["question"] == "q1"
    p.write_text(json.dumps({"question": "q2", "answer": "2"}) + "\n")
    assert make_task("jsonl", path=str(p))[0]["question"] == "q2"


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("arithmetic", {"n_operands": 3000}, "n_operands must be <= 50"),
        ("arithmetic", {"n_operands": [2, 3000], "parens": False}, "n_operands must be <= 50"),
        ("arithmetic", {"max_value": 10**12 + 1}, "max_value must be <= 1000000000000"),
        ("countdown", {"n_numbers": [3, 11]}, "n_numbers must be <= 10"),
        ("countdown", {"max_number": 10**6 + 1}, "max_number must be <= 1000000"),
    ],
)
def test_knob_upper_bounds_are_clear_errors(name, params, match):
    """Too many operands overflow the recursion of tree building and tracing; numbers too large
    cannot be printed. Both are refused when the source is built, naming the knob."""
    with pytest.raises(ValueError, match=match):
        make_task(name, **params)


def test_arithmetic_at_the_upper_bounds_builds_items():
    from thinkgym.tasks.arithmetic import MAX_OPERANDS, MAX_VALUE

    for ops in ("+-*/", "*", "/"):
        src = make_task("arithmetic", seed=1, n_operands=MAX_OPERANDS, max_value=MAX_VALUE, ops=ops, parens=False)
        it = src[0]
        assert len(it["metadata"]["solution"].splitlines()) > MAX_OPERANDS
        assert Fraction(it["answer"]).denominator == 1


def test_division_with_a_huge_max_value_does_not_scan_every_divisor():
    """Picking a divisor must not take time linear in max_value; items stay exact and seeded."""
    code = (
        "import json; from thinkgym.tasks import make_task\n"
        "s = make_task('arithmetic', seed=2, ops='/', n_operands=[2, 6], max_value=10**11)\n"
        "print(json.dumps([s[i] for i in range(20)]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    items = json.loads(r.stdout)
    assert items == json.loads(json.dumps([make_task("arithmetic", seed=2, ops="/", n_operands=[2, 6],
                                                     max_value=10**11)[i] for i in range(20)]))
    assert any("/" in it["metadata"]["expression"] for it in items)
    for it in items:
        assert Fraction(it["answer"]).denominator == 1  # every division in the tree is exact


def test_divisors_match_a_full_scan():
    """Trial division finds the same divisors as scanning 2..max_value (so the same item) whenever
    the value is at most _DIVISOR_SCAN squared, and only true divisors beyond that."""
    import random

    from thinkgym.tasks.arithmetic import _DIVISOR_SCAN as S
    from thinkgym.tasks.arithmetic import _divisors

    def scan(v, hi):
        return [d for d in range(2, hi + 1) if v % d == 0]

    r = random.Random(0)
    for hi in (2, 3, 100, 1000, S, S + 1, 30_000):
        for v in [0, 1, -1, S * S, -S * S, 7919 * 7907, 2**26, *(r.randint(-S * S, S * S) for _ in range(20))]:
            assert list(_divisors(v, hi)) == scan(v, hi), (v, hi)
    big = 2**40 * 3**20
    assert all(big % d == 0 and 2 <= d <= 10**11 for d in _divisors(big, 10**11))


@pytest.mark.parametrize(
    "name, params, digest",
    [
        ("arithmetic", {}, "1f3c178799aa3206"),
        ("arithmetic", {"ops": "+-*/", "n_operands": [2, 6]}, "df5d44dc7e557076"),
        ("countdown", {}, "a83befaac3e40819"),
        ("countdown", {"n_numbers": [3, 3], "max_number": 12, "target": [1, 99], "exactly_once": True},
         "303e015dd3c3f842"),
    ],
)
def test_items_of_common_knobs_are_pinned(name, params, digest):
    """Recorded results and other code depend on these exact items: a change to generation must
    leave them as they are."""
    import hashlib

    src = make_task(name, seed=0, **params)
    h = hashlib.sha256()
    for i in range(300):
        h.update(json.dumps(src[i], sort_keys=True).encode())
    assert h.hexdigest()[:16] == digest


def test_countdown_unreachable_target_fails_at_construction():
    with pytest.raises(ValueError, match=r"target \[100, 200\] is out of reach: with n_numbers \[2, 2\] and "
                                         r"max_number 2 no expression exceeds 4"):
        make_task("countdown", n_numbers=[2, 2], max_number=2, target=[100, 200])
    assert make_task("countdown", n_numbers=[2, 2], max_number=2, target=[4, 4])[0]["answer"]["target"] == 4


def test_countdown_search_failure_names_the_knobs():
    """A reachable but very rare target is found at generation time; the error says which knobs."""
    src = make_task("countdown", n_numbers=[6, 6], max_number=5, target=[15000, 15625])
    with pytest.raises(ValueError, match=r"no instance with a target in \[15000, 15625\].*n_numbers \[6, 6\] "
                                         r"and max_number 5; widen target"):
        src[0]
