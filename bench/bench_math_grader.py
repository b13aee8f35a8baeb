"""Benchmark: thinkgym's ``math`` grader vs Math-Verify, same rows, same process, one core.

Rows are (gold, completion, truth): equivalent-form cases (truth = right) and non-equivalent cases
(truth = wrong), generated from a fixed seed. Both graders see the same completion text (a think
block, then a boxed answer) and the same gold. Reported per category and overall:

* accuracy on equivalent-form rows and on non-equivalent rows,
* grades/s on one core (the process is pinned to one CPU before anything starts), for thinkgym
  inline (``isolate=False``: sympy in-process, like Math-Verify) and through a one-worker
  ``GraderPool`` (the production path: hard per-item budget, IPC included),
* the throughput ratio thinkgym / Math-Verify, in wall time and in CPU time (the CPU-time ratio
  is the stable one on a shared machine; the inline graders alternate row by row for the same
  reason). ``--no-cache`` clears thinkgym's parse cache before every row (Math-Verify has none);
  in RL the same gold is graded once per sample of a group, so the cache is the realistic case.

Run: ``python bench/bench_math_grader.py [--rows 1200] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import defaultdict
from fractions import Fraction


def _dec(fr: Fraction) -> str:
    """Exact decimal string of a terminating fraction."""
    s = f"{float(fr):.12f}".rstrip("0").rstrip(".")
    assert Fraction(s) == fr
    return s


def _terminating(rng: random.Random) -> Fraction:
    while True:
        fr = Fraction(rng.randint(1, 99), rng.choice([2, 4, 5, 8, 10, 16, 20, 25, 40, 50, 80, 125]))
        if fr.denominator > 1:
            return fr


def _thousands(n: int, sep: str) -> str:
    return f"{n:,}".replace(",", sep)


def make_rows(n: int, seed: int) -> list[tuple[str, object, str, bool]]:
    """``(category, gold, answer, truth)`` rows; equivalent forms first, then non-equivalent ones."""
    rng = random.Random(seed)
    eq: dict[str, callable] = {
        "int": lambda: (lambda k: (str(k), str(k)))(rng.randint(0, 10**6)),
        "thousands ,": lambda: (lambda k: (str(k), _thousands(k, ",")))(rng.randint(1000, 10**9)),
        "thousands \\,": lambda: (lambda k: (str(k), _thousands(k, "\\,")))(rng.randint(1000, 10**9)),
        "thousands space": lambda: (lambda k: (str(k), _thousands(k, " ")))(rng.randint(1000, 10**9)),
        "frac->decimal": lambda: (lambda f: (f"\\frac{{{f.numerator}}}{{{f.denominator}}}", _dec(f)))(_terminating(rng)),
        "decimal->frac": lambda: (lambda f: (_dec(f), f"\\frac{{{f.numerator}}}{{{f.denominator}}}"))(_terminating(rng)),
        "dfrac": lambda: (lambda a, b: (f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{a}}}{{{b}}}"))(rng.randint(1, 50), rng.randint(51, 99)),
        "repeating decimal": lambda: (lambda d: (f"\\frac{{{d}}}{{9}}", f"0.\\overline{{{d}}}"))(rng.randint(1, 8)),
        "sci e-notation": lambda: (lambda m, e: (_dec(Fraction(m, 10) * Fraction(10) ** -e), f"{m / 10}e-{e}"))(rng.randint(11, 99), rng.randint(2, 6)),
        "sci \\times10^": lambda: (lambda m, e: (str(m * 10 ** (e - 2)), f"{m / 100}\\times10^{{{e}}}"))(rng.randint(101, 999), rng.randint(5, 23)),
        "unicode minus": lambda: (lambda k: (str(-k), f"\u2212{k}"))(rng.randint(1, 999)),
        "units/text": lambda: (lambda k: (str(k), f"{k} \\text{{ {rng.choice(['cm', 'apples', 'dollars', 'meters'])}}}"))(rng.randint(1, 999)),
        "x = value": lambda: (lambda k: (str(k), f"{rng.choice('xyn')} = {k}"))(rng.randint(-99, 99)),
        "radical": lambda: (lambda k: (f"{k}\\sqrt{{2}}", f"\\sqrt{{{2 * k * k}}}"))(rng.randint(2, 9)),
        "rationalised": lambda: (lambda k: (f"\\frac{{\\sqrt{{{k}}}}}{{{k}}}", f"\\frac{{1}}{{\\sqrt{{{k}}}}}"))(rng.choice([2, 3, 5, 6, 7])),
        "pi forms": lambda: (lambda k: (f"\\frac{{{k}\\pi}}{{2}}", f"{k}\\pi/2"))(rng.randint(1, 9)),
        "set reordered": lambda: (lambda xs: ("\\{" + ", ".join(map(str, xs)) + "\\}", "\\{" + ", ".join(map(str, rng.sample(xs, len(xs)))) + "\\}"))(rng.sample(range(-20, 20), 3)),
        "union reordered": lambda: (lambda a, b: (f"(-\\infty, {a}) \\cup ({b}, \\infty)", f"({b}, \\infty) \\cup (-\\infty, {a})"))(rng.randint(-9, 0), rng.randint(1, 9)),
        "bmatrix vs pmatrix": lambda: (lambda m: (f"\\begin{{pmatrix}}{m[0]}&{m[1]}\\\\{m[2]}&{m[3]}\\end{{pmatrix}}", f"\\begin{{bmatrix}}{m[0]}&{m[1]}\\\\{m[2]}&{m[3]}\\end{{bmatrix}}"))([rng.randint(0, 9) for _ in range(4)]),
        "polynomial": lambda: (lambda a: (f"x^2+{2 * a}x+{a * a}", f"(x+{a})^2"))(rng.randint(1, 9)),
        "inequality->interval": lambda: (lambda a: (f"[{a}, \\infty)", f"x \\geq {a}"))(rng.randint(-9, 9)),
        "function value": lambda: (lambda k: (f"f(x) = {k}x", f"{k}x"))(rng.randint(2, 9)),
        "percent sign": lambda: (lambda k: (str(k), f"{k}\\%"))(rng.randint(1, 99)),
    }
    neq: dict[str, callable] = {
        "large int off by one": lambda: (lambda k: (str(k), str(k + rng.choice([-1, 1]))))(rng.randint(10**15, 10**18)),
        "approx 1/3": lambda: (lambda k: (f"\\frac{{{k}}}{{3}}", f"{k / 3:.2f}"))(rng.choice([1, 2, 4, 5, 7])),
        "approx 2pi": lambda: (lambda k: (f"{k}\\pi", f"{k * 3.14159:.2f}"))(rng.randint(1, 9)),
        "approx sqrt": lambda: (lambda k: (f"\\sqrt{{{k}}}", f"{k ** 0.5:.3f}"))(rng.choice([2, 3, 5, 6, 7])),
        "percent scale": lambda: (lambda k: (str(k), _dec(Fraction(k, 100))))(rng.randint(1, 99)),
        "tuple reordered": lambda: (lambda a, b: (f"({a}, {b})", f"({b}, {a})"))(*rng.sample(range(1, 20), 2)),
        "open vs closed end": lambda: (lambda a, b: (f"[{a}, {b})", f"[{a}, {b}]"))(rng.randint(-9, 0), rng.randint(1, 9)),
        "transposed matrix": lambda: (lambda m: (f"\\begin{{pmatrix}}{m[0]}&{m[1]}\\\\{m[2]}&{m[3]}\\end{{pmatrix}}", f"\\begin{{pmatrix}}{m[0]}&{m[2]}\\\\{m[1]}&{m[3]}\\end{{pmatrix}}"))(rng.sample(range(10), 4)),
        "tiny values": lambda: (lambda e: (f"2^{{-{e}}}", f"2^{{-{e - 1}}}"))(rng.randint(60, 120)),
        "wrong fraction": lambda: (lambda a, b: (f"\\frac{{{a}}}{{{b}}}", f"\\frac{{{b}}}{{{a}}}"))(*rng.sample(range(1, 30), 2)),
        "set differs": lambda: (lambda xs: ("\\{" + ", ".join(map(str, xs)) + "\\}", "\\{" + ", ".join(map(str, xs[:-1] + [xs[-1] + 1])) + "\\}"))(rng.sample(range(-20, 20), 3)),
        "sci exponent off": lambda: (lambda m, e: (f"{m}\\times10^{{{e}}}", f"{m}\\times10^{{{e + 1}}}"))(rng.randint(2, 9), rng.randint(3, 20)),
        "range in text": lambda: (lambda k: (str(k), f"{k} \\text{{ to {k + rng.randint(1, 9)}}}"))(rng.randint(1, 99)),
        "digits in text": lambda: (lambda k: (str(k), f"{k}\\text{{{rng.choice(['000', '.5', '-7', ', 6'])}}}"))(rng.randint(1, 99)),
    }
    rows = []
    per_eq = max(1, n // 2 // len(eq))
    per_neq = max(1, n // 2 // len(neq))
    for cat, make in eq.items():
        rows += [(cat, *make(), True) for _ in range(per_eq)]
    for cat, make in neq.items():
        rows += [(cat, *make(), False) for _ in range(per_neq)]
    return rows


def completion(answer: str) -> str:
    return f"<think>Let me work through this carefully and check the result.</think>\nThe final answer is $\\boxed{{{answer}}}$."


def run_interleaved(rows, fns) -> list[tuple[list[bool], float, float]]:
    """Per grader: outputs, wall seconds, CPU seconds. Graders alternate row by row so a shared
    machine's changing load hits all of them alike; CPU seconds ignore time spent descheduled."""
    res = [([], 0.0, 0.0) for _ in fns]
    for _, gold, ans, _ in rows:
        comp = completion(ans)
        for k, fn in enumerate(fns):
            t0, c0 = time.perf_counter(), time.process_time()
            v = fn(gold, comp)
            out, wall, cpu = res[k]
            out.append(v)
            res[k] = (out, wall + time.perf_counter() - t0, cpu + time.process_time() - c0)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-cache", action="store_true", help="clear thinkgym's parse cache before every row")
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the first allowed)")
    args = ap.parse_args()
    allowed = os.sched_getaffinity(0)
    if args.cpu is not None and args.cpu not in allowed:
        ap.error(f"--cpu {args.cpu}: not one this process may run on {sorted(allowed)}")
    if args.rows < 1:
        ap.error(f"--rows must be >= 1, got {args.rows}")
    cpu = args.cpu if args.cpu is not None else min(allowed)
    os.sched_setaffinity(0, {cpu})  # one core for everything, workers included (affinity is inherited)

    try:
        from math_verify import parse, verify
    except ImportError:
        ap.error("the peer, Math-Verify, is not installed: pip install 'thinkgym[bench]' (or bash scripts/install.sh --dev)")

    from thinkgym.verifiers.math_equiv import MathConfig, _parse_sympy, grade_math_with
    from thinkgym.verifiers.pool import GraderPool

    rows = make_rows(args.rows, args.seed)
    inline = MathConfig(isolate=False)

    def tg_inline(gold, comp):
        if args.no_cache:
            _parse_sympy.cache_clear()
        return grade_math_with(comp, gold, inline).score == 1.0

    def mv(gold, comp):
        try:
            return bool(verify(parse(f"${gold}$"), parse(comp)))
        except Exception:  # noqa: BLE001 - count a crash as "not verified"
            return False

    # Warm both (imports, parser tables) outside the timed runs.
    tg_inline("1", completion("1"))
    mv("1", completion("1"))

    (tg_out, tg_t, tg_cpu), (mv_out, mv_t, mv_cpu) = run_interleaved(rows, [tg_inline, mv])
    with GraderPool(workers=1, timeout_s=5.0) as pool:
        pool.grade_many("math", [(completion("1"), "1")])
        t0 = time.perf_counter()
        pool_grades = pool.grade_many("math", [(completion(a), g) for _, g, a, _ in rows])
        pool_t = time.perf_counter() - t0
    pool_out = [g.score == 1.0 for g in pool_grades]

    by_cat = defaultdict(lambda: [0, 0, 0, 0])  # n, thinkgym right, math-verify right, truth
    for (cat, _, _, truth), a, b in zip(rows, tg_out, mv_out):
        c = by_cat[cat]
        c[0] += 1
        c[1] += a == truth
        c[2] += b == truth
        c[3] = truth
    print(f"{'category':<24}{'kind':<10}{'n':>5}{'thinkgym':>10}{'math-verify':>13}")
    for cat, (n, a, b, truth) in by_cat.items():
        print(f"{cat:<24}{'equiv' if truth else 'not-eq':<10}{n:>5}{a / n:>10.2%}{b / n:>13.2%}")

    def acc(out, want):
        sel = [(o, t) for o, (_, _, _, t) in zip(out, rows) if t == want]
        return sum(o == t for o, t in sel) / len(sel)

    n = len(rows)
    print()
    print(f"rows: {n} ({sum(r[3] for r in rows)} equivalent-form, {sum(not r[3] for r in rows)} non-equivalent), one core (cpu {cpu})")
    print(f"accuracy on equivalent forms:  thinkgym {acc(tg_out, True):.2%}   math-verify {acc(mv_out, True):.2%}")
    print(f"accuracy on non-equivalent:    thinkgym {acc(tg_out, False):.2%}   math-verify {acc(mv_out, False):.2%}")
    print(f"overall accuracy:              thinkgym {sum(o == r[3] for o, r in zip(tg_out, rows)) / n:.2%}   "
          f"math-verify {sum(o == r[3] for o, r in zip(mv_out, rows)) / n:.2%}")
    print(f"pool path agrees with inline on {sum(a == b for a, b in zip(pool_out, tg_out))}/{n} rows")
    print(f"throughput thinkgym inline:  {n / tg_t:8.1f} grades/s wall, {n / tg_cpu:8.1f} grades/CPU-s")
    print(f"throughput thinkgym pool:    {n / pool_t:8.1f} grades/s wall (1 worker, 5 s hard budget, IPC included; the worker's parse cache stays on)")
    print(f"throughput math-verify:      {n / mv_t:8.1f} grades/s wall, {n / mv_cpu:8.1f} grades/CPU-s")
    print(f"ratio thinkgym/math-verify: inline {mv_t / tg_t:.2f}x wall, {mv_cpu / tg_cpu:.2f}x CPU; pool {mv_t / pool_t:.2f}x wall")


if __name__ == "__main__":
    main()
