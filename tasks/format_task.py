"""A format-only task: trivial word puzzles where the reward is the completion's structure.

The gold answer is still filled in (the puzzles have one right answer), so the same items can be
graded for correctness too, but the default grader ("format") only checks the
``<think>...</think>`` + ``<answer>...</answer>`` layout.
"""

from __future__ import annotations

import random
from typing import Any

from thinkgym.tasks.base import Item, TaskSource, format_solution, name_list, register_task

WORDS = (
    "apple banana cherry dragon eagle falcon guitar harbor island jungle kettle lantern meadow "
    "nectar orange pepper quiver rabbit saddle tunnel velvet walnut yellow zephyr anchor bubble "
    "castle dinner engine forest goblin hammer insect jacket kitten ladder magnet needle oyster "
    "parrot rocket salmon ticket violin window basket candle donkey fabric garden helmet"
).split()


def _reverse(rng: random.Random, w: str) -> tuple[str, list[str], str]:
    return (f"Write the word '{w}' backwards.",
            [f"The letters of {w} are {' '.join(w)}.", f"Reversed: {' '.join(reversed(w))}."], w[::-1])


def _upper(rng: random.Random, w: str) -> tuple[str, list[str], str]:
    return (f"Write the word '{w}' in capital letters.", [f"Capitalising each letter of {w} gives {w.upper()}."], w.upper())


def _count(rng: random.Random, w: str) -> tuple[str, list[str], str]:
    c = rng.choice(sorted(set(w)))
    n = w.count(c)
    return (f"How many times does the letter '{c}' appear in '{w}'?",
            [f"Spell it: {' '.join(w)}.", f"'{c}' appears {n} time{'s' if n != 1 else ''}."], str(n))


def _repeat(rng: random.Random, w: str) -> tuple[str, list[str], str]:
    k = rng.randint(2, 4)
    return (f"Repeat the word '{w}' {k} times, separated by single spaces.",
            [f"Write {w} {k} times with spaces between."], " ".join([w] * k))


def _first_last(rng: random.Random, w: str) -> tuple[str, list[str], str]:
    return (f"What are the first and last letters of '{w}'? Answer with the two letters together, e.g. 'ab'.",
            [f"{w} starts with {w[0]} and ends with {w[-1]}."], w[0] + w[-1])


def _sort_letters(rng: random.Random, w: str) -> tuple[str, list[str], str]:
    s = "".join(sorted(w))
    return (f"Sort the letters of '{w}' alphabetically.", [f"The letters {' '.join(w)} in order: {' '.join(s)}."], s)


PUZZLES = {"reverse": _reverse, "upper": _upper, "count": _count, "repeat": _repeat,
           "first_last": _first_last, "sort": _sort_letters}


@register_task("format")
class FormatTask(TaskSource):
    """Word puzzles whose reward is the think/answer format (structure-only grading)."""

    cache_items = True

    description = "Format-only task: trivial word puzzles; reward checks the <think>/<answer> structure."
    grader = "format"
    defaults: dict[str, Any] = {"puzzles": None}

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        p = super().validate_params(params)
        p["puzzles"] = name_list(p["puzzles"], PUZZLES, "puzzles", "format puzzles")
        return p

    def generate(self, i: int, rng: random.Random) -> Item:
        kind = rng.choice(self.params["puzzles"] or sorted(PUZZLES))
        # Half real words, half random letter strings: keeps items distinct across seeds.
        if rng.random() < 0.5:
            word = rng.choice(WORDS)
        else:
            word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9)))
        q, steps, ans = PUZZLES[kind](rng, word)
        return {"question": q, "answer": ans,
                "metadata": {"puzzle": kind, "difficulty": 0, "solution": format_solution(steps, ans)}}
