"""The code grader: honest programs get full credit, every known reward hack gets nothing.

Every attack here is bounded on its own (finite forks, capped memory/disk, loopback only,
self-terminating sleepers), so a broken sandbox cannot take the test machine down.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time

import pytest

from thinkgym.verifiers import get_grader, grade
from thinkgym.verifiers.code import extract_code, grade_program, validate_tests, values_equal

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
]

ADD = {"type": "function", "entry_point": "add", "cases": [{"args": [i, 2 * i], "expected": 3 * i} for i in range(5)]}
SUM_STDIO = {
    "type": "stdio",
    "cases": [{"stdin": "3 4\n", "expected_stdout": "7\n"}, {"stdin": "10 -5\n", "expected_stdout": "5"}],
}
FAST = {"case_s": 2.0, "wall_s": 10.0}


def g(program: str, tests=ADD, **kw):
    kw.setdefault("limits", FAST)
    return grade_program(program, tests, **kw)


# ------------------------------------------------------------------------------------------
# Honest programs


def test_function_correct_and_wrong():
    ok = g("def add(a, b):\n    return a + b\n")
    assert ok.score == 1.0 and ok.components["pass_frac"] == 1.0
    assert [c["status"] for c in ok.details["cases"]] == ["ok"] * 5
    bad = g("def add(a, b):\n    return a - b\n")
    assert bad.score == 0.0
    # case 0 is add(0, 0) == 0, so a - b passes exactly one case
    assert bad.components["pass_frac"] == pytest.approx(0.2)
    assert bad.details["cases"][1]["status"] == "wrong_answer"


def test_partial_credit_is_fraction_passed():
    prog = "def add(a, b):\n    return a + b if a < 3 else 0\n"
    assert g(prog).score == 0.0
    assert g(prog, partial_credit=True).score == pytest.approx(3 / 5)


def test_stdio_whole_output_trailing_whitespace_ignored():
    assert g("a, b = map(int, input().split())\nprint(a + b, '  ')\nprint()\n", SUM_STDIO).score == 1.0
    # a prefix of the right output is not the right output
    two = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "1\n2\n"}]}
    assert g("print(1)", two).score == 0.0
    assert g("print(1); print(2); print(3)", two).score == 0.0


def test_sys_exit_zero_after_printing_passes():
    prog = "import sys\na, b = map(int, input().split())\nprint(a + b)\nsys.exit(0)\n"
    assert g(prog, SUM_STDIO).score == 1.0
    # a crash after printing is a runtime error, like any judge
    crash = "a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(3)\n"
    r = g(crash, SUM_STDIO)
    assert r.score == 0.0 and r.details["cases"][0]["status"] == "runtime_error"


def test_floats_with_tolerance_and_structures():
    t = {"type": "function", "entry_point": "f", "cases": [{"args": [], "expected": [0.3, {"k": [1, "x"]}, None, True]}]}
    assert g("def f():\n    return [0.1 + 0.2, {'k': (1, 'x')}, None, True]\n", t).score == 1.0
    assert g("def f():\n    return [0.31, {'k': [1, 'x']}, None, True]\n", t).score == 0.0
    assert g("def f():\n    return [0.3, {'k': [1, 'x']}, None, 1]\n", t).score == 0.0  # bool is not int
    assert values_equal(2.0, 2) and not values_equal(True, 1) and values_equal(float("nan"), float("nan"))


def test_class_method_entry_point():
    t = {"type": "function", "entry_point": "Solution.twice", "cases": [{"args": [4], "expected": 8}]}
    assert g("class Solution:\n    def twice(self, x):\n        return 2 * x\n", t).score == 1.0


HONEST_HEAVY = {
    "cpu_1s": (
        "import time\ndef add(a, b):\n    t = time.process_time()\n    while time.process_time() - t < 0.25:\n"
        "        pass\n    return a + b\n"
    ),
    "deep_recursion_thread": (
        "import sys, threading\nsys.setrecursionlimit(300000)\nthreading.stack_size(512 * 1024 * 1024)\n"
        "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n"
        "def add(a, b):\n    out = []\n    t = threading.Thread(target=lambda: out.append(depth(100000)))\n"
        "    t.start(); t.join()\n    return a + b + out[0] - 100000\n"
    ),
    "threads_and_scratch": (
        "import threading, os\ndef add(a, b):\n    res = []\n"
        "    ts = [threading.Thread(target=lambda i=i: res.append(i)) for i in range(8)]\n"
        "    [t.start() for t in ts]; [t.join() for t in ts]\n"
        "    with open('scratch.txt', 'w') as f:\n        f.write(str(a + b) * 1000)\n"
        "    with open(os.path.expanduser('~/x'), 'w') as f:\n        f.write('1')\n"
        "    return int(open('scratch.txt').read()[:len(str(a + b))]) if sorted(res) == list(range(8)) else None\n"
    ),
}


@pytest.mark.parametrize("name", sorted(HONEST_HEAVY))
def test_honest_programs_get_full_credit_under_default_limits(name):
    r = grade_program(HONEST_HEAVY[name], ADD)
    assert r.score == 1.0, r.details


def test_megabytes_of_output_pass():
    t = {"type": "stdio", "cases": [{"stdin": "", "expected_stdout": "x" * 999 + "\n" + ("y" * 999 + "\n") * 4000}]}
    prog = "import sys\nsys.stdout.write('x' * 999 + '\\n')\nfor _ in range(4000):\n    print('y' * 999)\n"
    r = grade_program(prog, t)
    assert r.score == 1.0, r.reason


# ------------------------------------------------------------------------------------------
# Completion-level grader


def test_registered_code_grader_extracts_last_python_block_of_final_section():
    completion = (
        "<think>```python\ndef add(a, b):\n    return 0\n```</think>\nFirst try:\n```python\ndef add(a, b):\n"
        "    return 0\n```\nFixed:\n```python\ndef add(a, b):\n    return a + b\n```\n"
    )
    r = grade("code", completion, ADD)
    assert r.score == 1.0 and r.grader == "code@1"
    assert "return a + b" in r.extracted
    # the code inside the thinking section is never graded
    assert grade("code", "<think>```python\ndef add(a,b): return a+b\n```</think>no code", ADD).score == 0.0
    assert grade("code", "<think>unfinished ```python\ndef add(a,b): return a+b\n```", ADD).score == 0.0
    assert grade("code", "```python\ndef add(a, b):\n    return 0\n```", json.dumps(ADD), partial_credit=True).score == pytest.approx(0.2)
    assert get_grader("code").description


def test_extract_code_languages_and_fallback():
    assert extract_code("```py\nx = 1\n```\n```\ny = 2\n```") == "x = 1\n"
    assert extract_code("text\n```\ny = 2\n```\n") == "y = 2\n"
    assert extract_code("```js\nlet x\n```") is None


def test_bad_tests_are_clear_errors():
    with pytest.raises(ValueError, match="entry_point"):
        validate_tests({"type": "function", "cases": [{"args": [], "expected": 1}]})
    with pytest.raises(ValueError, match="case 0: missing field 'expected_stdout'"):
        validate_tests({"type": "stdio", "cases": [{"stdin": ""}]})
    with pytest.raises(ValueError, match="'type'"):
        validate_tests({"type": "assert", "cases": [1]})
    # through the registry, a malformed gold is an infrastructure error, never a silent 0
    r = grade("code", "```python\npass\n```", {"type": "nope"})
    assert r.score is None and "type" in r.reason
