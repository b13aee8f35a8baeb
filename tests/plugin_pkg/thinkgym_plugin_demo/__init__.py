"""A tiny thinkgym plugin: a Caesar-shift task source, an exact-text grader and a retry env.

Installed, it is discovered through entry points only; nothing in thinkgym imports it.
"""

from __future__ import annotations

import random
import string
from typing import Any

from thinkgym.envs.registration import EnvInfo
from thinkgym.tasks.base import Item, TaskSource, format_solution
from thinkgym.verifiers.base import Grade, bool_arg, register_grader
from thinkgym.verifiers.extract import extract

__version__ = "0.1.0"


class LetterShift(TaskSource):
    """Shift every letter of a word forward in the alphabet."""

    name = "letter_shift"
    description = "Plugin demo: shift each letter of a word k places forward (exact_text grader)."
    grader = "exact_text"
    defaults = {"max_shift": 3}

    def generate(self, i: int, rng: random.Random) -> Item:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))
        k = rng.randint(1, self.params["max_shift"])
        out = "".join(chr((ord(c) - 97 + k) % 26 + 97) for c in word)
        steps = [f"{c} -> {o}" for c, o in zip(word, out)]
        return {
            "question": f"Shift each letter of '{word}' forward by {k} places in the alphabet.",
            "answer": out,
            "metadata": {"solution": format_solution(steps, out), "difficulty": k},
        }


def grade_exact_text(completion: str, gold: Any, **meta: Any) -> Grade:
    """The answer text equals the gold exactly (after stripping; ``ignore_case``: in any case)."""
    ex = extract(completion)
    if not ex.ok or ex.answer is None:
        return Grade(0.0, reason=ex.reason or "several answers")
    got, want = ex.answer.strip(), str(gold).strip()
    if meta.get("ignore_case", False):
        got, want = got.casefold(), want.casefold()
    ok = got == want
    return Grade(1.0 if ok else 0.0, extracted=ex.answer, reason="equal" if ok else "different")


def register_graders() -> None:
    """Entry point of ``thinkgym.graders``: registers the grader with the keyword arguments it
    reads, so ``grade()`` and ``thinkgym grade`` refuse a typo (``ignore_cas=true``) or a value
    of the wrong kind (``ignore_case="yes"``). An entry point naming the bare function works
    too, but then any keyword argument passes unchecked."""
    register_grader("exact_text", version="1", kwargs={"ignore_case": bool_arg})(grade_exact_text)


# The registry calls an entry point so marked instead of registering the object itself.
register_graders.__thinkgym_register__ = True  # type: ignore[attr-defined]


RETRY_ENV = EnvInfo(
    "demo/LetterShiftRetry-v0",
    "thinkgym.envs.core:MultiTurnEnv",
    {"task": "letter_shift", "max_turns": 2},
    "Plugin demo: letter shift with one retry.",
)
