"""GSM8K-style word problems from templates, each with a multi-step worked solution.

Templates put a name, an object or a number every few words, so that two items from different
seeds rarely share a 13-gram (the contamination gate would otherwise flag the template text).
"""

from __future__ import annotations

import random
from typing import Any, Callable

from thinkgym.tasks.base import Item, TaskSource, format_solution, register_task

NAMES = (
    "Aisha Ben Carla Diego Elena Farid Grace Hiro Ines Jamal Kira Liam Mei Nadia Omar Priya Quinn "
    "Rosa Sami Tara Umar Vera Wes Xena Yusuf Zoe Anton Bea Cyrus Dalia Emil Fern Gus Hana Ivo Juno "
    "Kofi Lena Marco Nia Otto Pia Raj Sofia Theo Una Vik Wanda Yara Zane Amara Boris Chloe Dev Ella"
).split()
PRONOUN = {n: ("she" if n in set(
    "Aisha Carla Elena Grace Ines Kira Mei Nadia Priya Rosa Tara Vera Xena Zoe Bea Dalia Fern Hana "
    "Juno Lena Nia Pia Sofia Una Wanda Yara Amara Chloe Ella Quinn".split()) else "he") for n in NAMES}
THINGS = (
    "apples pears stickers marbles pencils cookies stamps shells coins cards beads buttons lemons "
    "muffins crayons tickets candles plums badges erasers pebbles ribbons acorns cupcakes"
).split()
CONTAINERS = "boxes bags crates jars baskets packs trays tins cartons buckets".split()
PLACES = ("the market", "the fair", "the bakery", "the library", "the school", "the park", "the shop", "the club")
ITEMS_PRICED = (
    "notebook sandwich kite scarf mug lamp plant puzzle wallet hat towel candle poster umbrella"
).split()
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
RELATIVES = "friend sister brother cousin neighbor teacher classmate uncle aunt grandmother".split()

def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


Gen = Callable[[random.Random, int], tuple[str, list[str], int]]


def _two_names(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(NAMES, 2)
    return a, b


def _buy_give(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    n, thing, cont, rel = rng.choice(NAMES), rng.choice(THINGS), rng.choice(CONTAINERS), rng.choice(RELATIVES)
    boxes, per = rng.randint(2, 6 + 3 * s), rng.randint(3, 8 + 4 * s)
    total = boxes * per
    give = rng.randint(2, total - 1)
    p = PRONOUN[n]
    q = (f"{n} buys {boxes} {cont} of {thing}. Each of the {cont} holds {per} {thing}. "
         f"{p.capitalize()} gives {give} {thing} to {_a(rel)}. How many {thing} does {n} have left?")
    steps = [f"{n} buys {boxes} {cont} with {per} {thing} each: {boxes} * {per} = {total} {thing}.",
             f"After giving away {give}: {total} - {give} = {total - give}."]
    return q, steps, total - give


def _shopping(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    n, a, b = rng.choice(NAMES), *rng.sample(ITEMS_PRICED, 2)
    pa, pb = rng.randint(2, 15 + 10 * s), rng.randint(2, 15 + 10 * s)
    ka, kb = rng.randint(1, 4 + s), rng.randint(1, 4 + s)
    cost = ka * pa + kb * pb
    paid = (cost // 10 + rng.randint(1, 5)) * 10
    place = rng.choice(PLACES)
    q = (f"At {place}, {_a(a)} costs ${pa} and {_a(b)} costs ${pb}. {n} buys {ka} {a}s and {kb} {b}s "
         f"and pays with ${paid}. How much change, in dollars, does {n} get?")
    steps = [f"{ka} {a}s cost {ka} * {pa} = {ka * pa} dollars.",
             f"{kb} {b}s cost {kb} * {pb} = {kb * pb} dollars.",
             f"Total: {ka * pa} + {kb * pb} = {cost} dollars.",
             f"Change: {paid} - {cost} = {paid - cost} dollars."]
    return q, steps, paid - cost


def _weekly(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    n, thing = rng.choice(NAMES), rng.choice(THINGS)
    d1, d2 = sorted(rng.sample(range(7), 2))
    x, y = rng.randint(3, 12 + 5 * s), rng.randint(2, 9 + 3 * s)
    weeks = rng.randint(2, 5 + s)
    p = PRONOUN[n]
    q = (f"{n} collects {x} {thing} every {DAYS[d1]} and {y} {thing} every {DAYS[d2]}. "
         f"{p.capitalize()} does this for {weeks} weeks. How many {thing} does {n} collect in total?")
    per = x + y
    steps = [f"Each week {n} collects {x} + {y} = {per} {thing}.",
             f"Over {weeks} weeks: {per} * {weeks} = {per * weeks} {thing}."]
    return q, steps, per * weeks


def _share(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    n, thing = rng.choice(NAMES), rng.choice(THINGS)
    k = rng.randint(2, 6 + s)
    each = rng.randint(3, 12 + 4 * s)
    extra = rng.randint(1, 20 + 5 * s)
    total = k * each + extra
    p = PRONOUN[n]
    q = (f"{n} has {total} {thing}. {p.capitalize()} keeps {extra} for {'herself' if p == 'she' else 'himself'} "
         f"and shares the other {thing} equally among {k} {rng.choice(RELATIVES)}s. "
         f"How many {thing} does each one get?")
    steps = [f"{n} shares {total} - {extra} = {total - extra} {thing}.",
             f"Split among {k}: {total - extra} / {k} = {each}."]
    return q, steps, each


def _speed(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    n = rng.choice(NAMES)
    v = rng.randint(3, 12 + 10 * s)
    h1, h2 = rng.randint(1, 4 + s), rng.randint(1, 3 + s)
    vehicle = rng.choice(["bike", "scooter", "horse", "motorbike", "camel", "pony"])
    p = PRONOUN[n]
    q = (f"{n} rides {_a(vehicle)} at {v} miles per hour for {h1} hours, rests, then rides "
         f"{h2} more hours at {v + 2} miles per hour. How many miles does {p} travel?")
    a, b = v * h1, (v + 2) * h2
    steps = [f"First leg: {v} * {h1} = {a} miles.",
             f"Second leg: {v + 2} * {h2} = {b} miles.",
             f"Total: {a} + {b} = {a + b} miles."]
    return q, steps, a + b


def _ages(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    a, b = _two_names(rng)
    age_b = rng.randint(4, 20 + 5 * s)
    diff = rng.randint(2, 15)
    years = rng.randint(2, 12)
    q = (f"{a} is {diff} years older than {b}. {b} is {age_b} years old now. "
         f"In {years} years, what will be the sum of the ages of {a} and {b}?")
    age_a = age_b + diff
    steps = [f"{a} is {age_b} + {diff} = {age_a} years old now.",
             f"In {years} years: {a} is {age_a} + {years} = {age_a + years}, {b} is {age_b} + {years} = {age_b + years}.",
             f"Sum: {age_a + years} + {age_b + years} = {age_a + age_b + 2 * years}."]
    return q, steps, age_a + age_b + 2 * years


def _percent(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    n, item = rng.choice(NAMES), rng.choice(ITEMS_PRICED)
    pct = rng.choice([10, 20, 25, 30, 40, 50, 60, 75])
    price = rng.randint(2, 20 + 10 * s) * (100 // _gcd(pct, 100))
    off = price * pct // 100
    k = rng.randint(2, 5)
    q = (f"{_a(item).capitalize()} normally costs ${price}. During a sale at {rng.choice(PLACES)} it is {pct}% off. "
         f"{n} buys {k} of them at the sale price. How many dollars does {n} spend?")
    steps = [f"The discount is {pct}% of {price} = {price} * {pct} / 100 = {off} dollars.",
             f"Sale price: {price} - {off} = {price - off} dollars.",
             f"{k} of them: {k} * {price - off} = {k * (price - off)} dollars."]
    return q, steps, k * (price - off)


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def _pages(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    n = rng.choice(NAMES)
    per_day = rng.randint(5, 20 + 10 * s)
    days = rng.randint(2, 9)
    left = rng.randint(3, 60 + 20 * s)
    total = per_day * days + left
    book = rng.choice(["novel", "comic", "textbook", "diary", "cookbook", "atlas", "biography"])
    q = (f"{_a(book).capitalize()} has {total} pages. {n} reads {per_day} pages a day for {days} days. "
         f"How many pages of the {book} are still unread?")
    steps = [f"{n} reads {per_day} * {days} = {per_day * days} pages.",
             f"Unread: {total} - {per_day * days} = {left} pages."]
    return q, steps, left


def _garden(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    n = rng.choice(NAMES)
    rows, per = rng.randint(2, 9 + 3 * s), rng.randint(3, 12 + 3 * s)
    plant = rng.choice(["tomato", "rose", "tulip", "pepper", "carrot", "bean", "sunflower", "cabbage"])
    dead = rng.randint(1, rows * per // 2)
    yield_ = rng.randint(2, 6 + s)
    q = (f"{n} plants {rows} rows of {plant} seeds with {per} seeds in each row. {dead} seeds do not "
         f"sprout, and each {plant} plant that grows gives {yield_} flowers or fruits. How many does {n} harvest?")
    grown = rows * per - dead
    steps = [f"Seeds planted: {rows} * {per} = {rows * per}.",
             f"Plants that grow: {rows * per} - {dead} = {grown}.",
             f"Harvest: {grown} * {yield_} = {grown * yield_}."]
    return q, steps, grown * yield_


def _savings(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    n, item = rng.choice(NAMES), rng.choice(ITEMS_PRICED)
    have = rng.randint(5, 40 + 10 * s)
    weekly = rng.randint(3, 15 + 5 * s)
    weeks = rng.randint(2, 10)
    price = have + weekly * weeks
    q = (f"{n} wants {_a(item)} that costs ${price} and has saved ${have}. If {n} saves ${weekly} each "
         f"week, how many weeks until {n} can buy the {item}?")
    steps = [f"{n} still needs {price} - {have} = {price - have} dollars.",
             f"At {weekly} dollars a week: {price - have} / {weekly} = {weeks} weeks."]
    return q, steps, weeks


def _trade(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    a, b = _two_names(rng)
    thing = rng.choice(THINGS)
    x = rng.randint(10, 50 + 20 * s)
    mult = rng.randint(2, 4)
    gift = rng.randint(1, x - 1)
    q = (f"{a} has {x} {thing}. {b} has {mult} times as many {thing} as {a}. {b} then gives "
         f"{gift} {thing} to {a}. How many {thing} does {b} have now?")
    steps = [f"{b} starts with {mult} * {x} = {mult * x} {thing}.",
             f"After giving {gift}: {mult * x} - {gift} = {mult * x - gift}."]
    return q, steps, mult * x - gift


def _tickets(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    place = rng.choice(["a concert", "a play", "a museum", "a zoo", "a circus", "a game", "a film"])
    adults, kids = rng.randint(1, 6 + s), rng.randint(1, 8 + s)
    pa, pk = rng.randint(8, 30 + 10 * s), rng.randint(3, 15)
    snack = rng.randint(2, 9)
    n = rng.choice(NAMES)
    q = (f"{n} takes {adults} adults and {kids} children to {place}. Adult tickets are ${pa}, child "
         f"tickets are ${pk}, and each of the {adults + kids} people gets a ${snack} snack. What is the total cost?")
    people = adults + kids
    steps = [f"Adult tickets: {adults} * {pa} = {adults * pa}.",
             f"Child tickets: {kids} * {pk} = {kids * pk}.",
             f"Snacks: {people} * {snack} = {people * snack}.",
             f"Total: {adults * pa} + {kids * pk} + {people * snack} = {adults * pa + kids * pk + people * snack}."]
    return q, steps, adults * pa + kids * pk + people * snack


TEMPLATES: dict[str, Gen] = {
    "buy_give": _buy_give, "shopping": _shopping, "weekly": _weekly, "share": _share,
    "speed": _speed, "ages": _ages, "percent": _percent, "pages": _pages, "garden": _garden,
    "savings": _savings, "trade": _trade, "tickets": _tickets,
}


@register_task("word_problems")
class WordProblems(TaskSource):
    """Grade-school word problems (GSM8K style) with integer answers."""

    description = "GSM8K-style multi-step word problems from templates; integer answer, worked solution."
    grader = "math"
    defaults = {"templates": None, "difficulty": [0, 2]}

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        p = super().validate_params(params)
        if p["templates"] is not None:
            if isinstance(p["templates"], str):
                p["templates"] = p["templates"].split(",")
            bad = sorted(set(p["templates"]) - set(TEMPLATES))
            if bad or not p["templates"]:
                raise ValueError(f"unknown word-problem templates {bad}; known: {sorted(TEMPLATES)}")
            p["templates"] = sorted(p["templates"])
        d = p["difficulty"]
        d = [d, d] if isinstance(d, int) else list(d)
        if len(d) != 2 or not all(isinstance(x, int) and 0 <= x <= 5 for x in d) or d[0] > d[1]:
            raise ValueError(f"difficulty must be an int in 0..5 or [lo, hi], got {p['difficulty']!r}")
        p["difficulty"] = d
        return p

    def generate(self, i: int, rng: random.Random) -> Item:
        names = self.params["templates"] or sorted(TEMPLATES)
        tname = rng.choice(names)
        s = rng.randint(*self.params["difficulty"])
        q, steps, ans = TEMPLATES[tname](rng, s)
        return {
            "question": q,
            "answer": str(ans),
            "metadata": {"template": tname, "difficulty": s + len(steps) - 2, "solution": format_solution(steps, ans)},
        }
