"""Second round of attacks on the code sandbox and grader: what a candidate can do to the grader
itself: crash it into an infrastructure error, or make it hold hundreds of MB.

Every program here is bounded on its own (finite output, no sleeps past the limits).
"""

from __future__ import annotations

import shutil
import tracemalloc

import pytest

from thinkgym.verifiers import grade
from thinkgym.verifiers.code import grade_program, values_equal

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
]

FAST = {"case_s": 2.0, "wall_s": 10.0}


def test_an_int_beyond_float_range_for_a_float_answer_is_a_plain_zero():
    # math.isclose(10**400, 1.5) raises OverflowError: the grade became score=None (the sample
    # dropped instead of penalised), and grade_program raised into the caller.
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [0], "expected": 1.5}]}
    r = grade_program("def f(x):\n    return 10**400\n", t, limits=FAST)
    assert r.score == 0.0 and r.details["cases"][0]["status"] == "wrong_answer", r.details
    r = grade("code", "```python\ndef f(x):\n    return -10**400\n```", t, limits=FAST)
    assert r.score == 0.0, r.reason
    assert not values_equal(10**400, 1e300) and not values_equal(10**400, float("nan"))
    assert values_equal(10**20, 1e20)  # an exact int for a float answer still counts


def peak_mb(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_a_reply_of_a_million_tiny_containers_is_not_parsed():
    # 3 MB of "{}, " parse into 70+ MB of dicts; at the 16 MB reply cap, 400 MB per concurrent
    # grade. A value equal to [1, 2] cannot hold them, so the reply is judged unparsed.
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [0], "expected": [1, 2]}]}
    res = []
    mb = peak_mb(lambda: res.append(grade_program("def f(x):\n    return [{}] * (1 << 20)\n", t, limits=FAST)))
    r = res[0]
    assert r.score == 0.0 and r.details["cases"][0]["status"] == "wrong_answer", r.details
    assert mb < 50, f"the grader held {mb:.0f} MB"
    # Big honest values and exceptions with any text are still parsed and judged.
    big = {"type": "function", "entry_point": "f",
           "cases": [{"args": [100_000], "expected": [[i, str(i), {"k": [i]}] for i in range(100_000)]}]}
    assert grade_program("def f(n):\n    return [(i, str(i), {'k': [i]}) for i in range(n)]\n", big,
                         limits=FAST).score == 1.0
    r = grade_program("def f(x):\n    raise ValueError('[{,' * 60)\n", t, limits=FAST)
    assert r.details["cases"][0]["status"] == "exception", r.details


def test_stdout_of_a_million_short_lines_is_not_split():
    t = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "ab\nab\n"}]}
    res = []
    mb = peak_mb(lambda: res.append(grade_program("import sys\nsys.stdout.write('ab\\n' * (1 << 20))\n", t,
                                                  limits=FAST)))
    assert res[0].score == 0.0 and res[0].details["cases"][0]["status"] == "wrong_answer", res[0].details
    assert mb < 50, f"the grader held {mb:.0f} MB"
    # Trailing whitespace on lines and blank lines at the end are still ignored.
    assert grade_program("print('ab  \\r\\nab\\t')\nprint('\\n \\n' * 1000)\n", t, limits=FAST).score == 1.0
