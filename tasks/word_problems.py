"""GSM8K-style word problems from templates, each with a multi-step worked solution.

Templates put a name, an object or a number every few words, so that two items from different
seeds rarely share a 13-gram (the contamination gate would otherwise flag the template text).
"""

from __future__ import annotations

import random
from typing import Any, Callable

from thinkgym.tasks.base import Item, TaskSource, format_solution, name_list, register_task, show

NAMES = (
    "Aisha Ben Carla Diego Elena Farid Grace Hiro Ines Jamal Kira Liam Mei Nadia Omar Priya Quinn "
    "Rosa Sami Tara Umar Vera Wes Xena Yusuf Zoe Anton Bea Cyrus Dalia Emil Fern Gus Hana Ivo Juno "
    "Kofi Lena Marco Nia Otto Pia Raj Sofia Theo Una Vik Wanda Yara Zane Amara Boris Chloe Dev Ella "
    "Felix Gina Hugo Iris Jonas Keiko Leo Maya Nils Olga Pablo Rhea Soren Tomas Ursula Vince Willa "
    "Xavi Yoko Zeke Alba Bruno Celia Dario Esme Fatima Gael Hedda Idris Jade Kai Luz Milo Noor Oscar "
    "Paz Rami Selma Tariq Uma Valo Wren Yuki Zora Arjun Bianca Caleb Dina Ezra Freya Goran Hollis"
).split()
_SHE = set(
    "Aisha Carla Elena Grace Ines Kira Mei Nadia Priya Rosa Tara Vera Xena Zoe Bea Dalia Fern Hana "
    "Juno Lena Nia Pia Sofia Una Wanda Yara Amara Chloe Ella Quinn Gina Iris Keiko Maya Olga Rhea "
    "Ursula Willa Yoko Alba Celia Esme Fatima Hedda Jade Luz Noor Paz Selma Uma Wren Yuki Zora "
    "Bianca Dina Freya".split()
)
PRONOUN = {n: ("she" if n in _SHE else "he") for n in NAMES}
THINGS = (
    "apples pears stickers marbles pencils cookies stamps shells coins cards beads buttons lemons "
    "muffins crayons tickets candles plums badges erasers pebbles ribbons acorns cupcakes bottles "
    "balloons feathers magnets postcards seashells walnuts oranges bricks keychains dice comics "
    "sketches tokens figs kiwis peaches puzzles spoons rocks"
).split()
CONTAINERS = "boxes bags crates jars baskets packs trays tins cartons buckets pouches sacks bins".split()
PLACES = ("the market", "the fair", "the bakery", "the library", "the school", "the park", "the shop",
          "the club", "the mall", "the harbor", "the station", "the museum", "the zoo", "the cafe")
ITEMS_PRICED = (
    "notebook sandwich kite scarf mug lamp plant puzzle wallet hat towel candle poster umbrella "
    "backpack blanket clock game vase pillow jacket teapot basket ruler album"
).split()
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
RELATIVES = (
    "friend sister brother cousin neighbor teacher classmate uncle aunt grandmother grandfather "
    "coach nephew niece roommate"
).split()


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _pick(rng: random.Random, options: str) -> str:
    """One of the ``|``-separated phrasings; paraphrases keep template text from repeating."""
    return rng.choice(options.split("|"))


Gen = Callable[[random.Random, int], tuple[str, list[str], int]]


def _two_names(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(NAMES, 2)
    return a, b


def _buy_give(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    n, thing, cont, rel = rng.choice(NAMES), rng.choice(THINGS), rng.choice(CONTAINERS), rng.choice(RELATIVES)
    boxes, per = rng.randint(2, 9 + 3 * s), rng.randint(3, 12 + 4 * s)
    total = boxes * per
    give = rng.randint(2, total - 1)
    p = PRONOUN[n]
    q = (f"{n} {_pick(rng, 'buys|orders|brings home|picks up|wins')} {boxes} {cont} of {thing}. "
         f"{_pick(rng, f'Each of the {cont} holds|There are, in each of the {cont},|Every one of the {cont} has|Each of the {cont} contains')} {per} {thing}. "
         f"{p.capitalize()} {_pick(rng, 'gives|hands|passes|donates|sends')} {give} {thing} to {_a(rel)}. "
         + _pick(rng, f"How many {thing} does {n} have left?|How many {thing} remain with {n}?|"
                      f"How many of the {thing} does {n} still have?|Now how many {thing} does {n} keep?"))
    steps = [f"{n} gets {boxes} {cont} with {per} {thing} each: {boxes} * {per} = {total} {thing}.",
             f"After giving away {give}: {total} - {give} = {total - give}."]
    return q, steps, total - give


def _shopping(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    n, a, b = rng.choice(NAMES), *rng.sample(ITEMS_PRICED, 2)
    pa, pb = rng.randint(2, 25 + 10 * s), rng.randint(2, 25 + 10 * s)
    ka, kb = rng.randint(2, 6 + s), rng.randint(2, 6 + s)
    cost = ka * pa + kb * pb
    paid = (cost // 10 + rng.randint(1, 5)) * 10
    place = rng.choice(PLACES)
    q = (f"At {place}, {_a(a)} costs ${pa} and {_a(b)} costs ${pb}. {n} "
         f"{_pick(rng, 'buys|gets|picks|chooses')} {ka} {a}s and {kb} {b}s and "
         f"{_pick(rng, 'pays with|hands over|gives the cashier')} ${paid}. "
         + _pick(rng, f"Change for {n}?|How much does {n} get back?|{n}'s change in dollars?"))
    steps = [f"{ka} {a}s cost {ka} * {pa} = {ka * pa} dollars.",
             f"{kb} {b}s cost {kb} * {pb} = {kb * pb} dollars.",
             f"Total: {ka * pa} + {kb * pb} = {cost} dollars.",
             f"Change: {paid} - {cost} = {paid - cost} dollars."]
    return q, steps, paid - cost


def _weekly(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    n, thing = rng.choice(NAMES), rng.choice(THINGS)
    d1, d2 = sorted(rng.sample(range(7), 2))
    x, y = rng.randint(3, 20 + 5 * s), rng.randint(2, 15 + 3 * s)
    weeks = rng.randint(2, 8 + s)
    p = PRONOUN[n]
    q = (f"{n} {_pick(rng, 'collects|gathers|finds|makes|saves')} {x} {thing} every {DAYS[d1]} and {y} "
         f"every {DAYS[d2]}, for {weeks} weeks. "
         + _pick(rng, f"How many {thing} in total?|How many {thing} does {p} get?|Total {thing} for {n}?"))
    per = x + y
    steps = [f"Each week {n} gets {x} + {y} = {per} {thing}.",
             f"Over {weeks} weeks: {per} * {weeks} = {per * weeks} {thing}."]
    return q, steps, per * weeks


def _share(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    n, thing, rel = rng.choice(NAMES), rng.choice(THINGS), rng.choice(RELATIVES)
    k = rng.randint(2, 8 + s)
    each = rng.randint(3, 15 + 4 * s)
    extra = rng.randint(1, 25 + 5 * s)
    total = k * each + extra
    p = PRONOUN[n]
    self_ = "herself" if p == "she" else "himself"
    q = (f"{n} has {total} {thing}. {p.capitalize()} {_pick(rng, 'keeps|saves|holds back|sets aside')} {extra} "
         f"for {self_} and {_pick(rng, 'shares|splits|divides')} the rest {_pick(rng, 'equally|evenly|fairly')} "
         f"among {k} {rel}s. "
         + _pick(rng, f"How many does each {rel} get?|{thing.capitalize()} per {rel}?|Each {rel}'s share?"))
    steps = [f"{n} shares {total} - {extra} = {total - extra} {thing}.",
             f"Split among {k}: {total - extra} / {k} = {each}."]
    return q, steps, each


def _speed(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    n = rng.choice(NAMES)
    v = rng.randint(3, 20 + 10 * s)
    dv = rng.randint(1, 9)
    h1, h2 = rng.randint(1, 6 + s), rng.randint(1, 5 + s)
    vehicle = rng.choice(["bike", "scooter", "horse", "motorbike", "camel", "pony", "tandem", "kayak", "sled"])
    p = PRONOUN[n]
    q = (f"{n} rides {_a(vehicle)} {h1} hours at {v} mph, "
         f"{_pick(rng, 'rests|stops|takes a break|pauses')}, then {h2} hours at {v + dv} mph. "
         + _pick(rng, f"How many miles does {p} ride?|How far does {n} go, in miles?|"
                      f"Miles covered by {n}?"))
    a, b = v * h1, (v + dv) * h2
    steps = [f"First leg: {v} * {h1} = {a} miles.",
             f"Second leg: {v + dv} * {h2} = {b} miles.",
             f"Total: {a} + {b} = {a + b} miles."]
    return q, steps, a + b


def _ages(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    a, b = _two_names(rng)
    age_b = rng.randint(4, 30 + 5 * s)
    diff = rng.randint(2, 25)
    years = rng.randint(2, 15)
    q = (f"{a} is {diff} years older than {b}. {b} {_pick(rng, 'is|turned|is now')} {age_b} "
         f"{_pick(rng, 'years old|this year')}. "
         + _pick(rng, f"In {years} years, what will their ages add up to?|"
                      f"Sum of their ages in {years} years?|"
                      f"In {years} years, {a} plus {b} is how many years?"))
    age_a = age_b + diff
    steps = [f"{a} is {age_b} + {diff} = {age_a} years old now.",
             f"In {years} years: {a} is {age_a} + {years} = {age_a + years}, {b} is {age_b} + {years} = {age_b + years}.",
             f"Sum: {age_a + years} + {age_b + years} = {age_a + age_b + 2 * years}."]
    return q, steps, age_a + age_b + 2 * years


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def _percent(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    n, item = rng.choice(NAMES), rng.choice(ITEMS_PRICED)
    pct = rng.choice([5, 10, 15, 20, 25, 30, 40, 50, 60, 75])
    price = rng.randint(2, 30 + 10 * s) * (100 // _gcd(pct, 100))
    off = price * pct // 100
    k = rng.randint(2, 9)
    q = (f"{_a(item).capitalize()} {_pick(rng, 'costs|sells for|is')} ${price}; "
         f"{_pick(rng, 'at|this week at|during a sale at')} {rng.choice(PLACES)} it is {pct}% off. "
         + _pick(rng, f"{n} buys {k}: how many dollars?|What does {n} pay for {k}?|"
                      f"{k} on sale cost {n} how much?"))
    steps = [f"The discount is {pct}% of {price} = {price} * {pct} / 100 = {off} dollars.",
             f"Sale price: {price} - {off} = {price - off} dollars.",
             f"{k} of them: {k} * {price - off} = {k * (price - off)} dollars."]
    return q, steps, k * (price - off)


def _pages(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    n = rng.choice(NAMES)
    per_day = rng.randint(5, 30 + 10 * s)
    days = rng.randint(2, 12)
    left = rng.randint(3, 90 + 20 * s)
    total = per_day * days + left
    book = rng.choice(["novel", "comic", "textbook", "diary", "cookbook", "atlas", "biography", "manual",
                       "mystery", "anthology", "guidebook", "memoir"])
    q = (f"{_a(book).capitalize()} has {total} pages. {n} {_pick(rng, 'reads|gets through|finishes')} {per_day} "
         f"pages {_pick(rng, 'a day|each day|every day|daily')} for {days} days. "
         + _pick(rng, f"Pages still unread?|How many pages are left for {n}?|"
                      f"How many of the {total} remain?"))
    steps = [f"{n} reads {per_day} * {days} = {per_day * days} pages.",
             f"Unread: {total} - {per_day * days} = {left} pages."]
    return q, steps, left


def _garden(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    n = rng.choice(NAMES)
    rows, per = rng.randint(2, 12 + 3 * s), rng.randint(3, 15 + 3 * s)
    plant = rng.choice(["tomato", "rose", "tulip", "pepper", "carrot", "bean", "sunflower", "cabbage", "melon",
                        "pumpkin", "daisy", "lettuce", "onion", "squash"])
    dead = rng.randint(1, rows * per // 2)
    yield_ = rng.randint(2, 9 + s)
    unit = rng.choice(["flowers", "fruits", "pods", "heads", "blooms"])
    q = (f"{n} plants {rows} rows of {plant} seeds, {per} {_pick(rng, 'in each row|per row|to a row')}. "
         f"{dead} {_pick(rng, 'never sprout|fail|do not grow')}; {_pick(rng, 'each other|every other|each remaining')} "
         f"{plant} gives {yield_} {unit}. "
         + _pick(rng, f"How many {unit} for {n}?|Total {unit}?|How many {unit} in all?"))
    grown = rows * per - dead
    steps = [f"Seeds planted: {rows} * {per} = {rows * per}.",
             f"Plants that grow: {rows * per} - {dead} = {grown}.",
             f"Harvest: {grown} * {yield_} = {grown * yield_}."]
    return q, steps, grown * yield_


def _savings(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    n, item = rng.choice(NAMES), rng.choice(ITEMS_PRICED)
    have = rng.randint(5, 60 + 10 * s)
    weekly = rng.randint(3, 25 + 5 * s)
    weeks = rng.randint(2, 14)
    price = have + weekly * weeks
    q = (f"{n} {_pick(rng, 'wants|is saving for|hopes to buy')} {_a(item)} that costs ${price} and "
         f"{_pick(rng, 'has saved|already has|has put away')} ${have}. "
         + _pick(rng, f"Saving ${weekly} each week, how many weeks until {n} can buy it?|"
                      f"If {n} adds ${weekly} a week, after how many weeks is there enough?|"
                      f"At ${weekly} per week, how many more weeks must {n} save?"))
    steps = [f"{n} still needs {price} - {have} = {price - have} dollars.",
             f"At {weekly} dollars a week: {price - have} / {weekly} = {weeks} weeks."]
    return q, steps, weeks


def _trade(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    a, b = _two_names(rng)
    thing = rng.choice(THINGS)
    x = rng.randint(10, 60 + 20 * s)
    mult = rng.randint(2, 5)
    gift = rng.randint(1, x - 1)
    q = (f"{a} has {x} {thing}. {b} has {mult} times as many {thing} as {a}. {b} "
         f"{_pick(rng, 'then gives|later hands|passes')} {gift} {thing} to {a}. "
         + _pick(rng, f"How many {thing} does {b} have now?|How many {thing} are left with {b}?|"
                      f"Now what is {b}'s count of {thing}?"))
    steps = [f"{b} starts with {mult} * {x} = {mult * x} {thing}.",
             f"After giving {gift}: {mult * x} - {gift} = {mult * x - gift}."]
    return q, steps, mult * x - gift


def _tickets(rng: random.Random, s: int) -> tuple[str, list[str], int]:
    place = rng.choice(["a concert", "a play", "a museum", "a zoo", "a circus", "a game", "a film",
                        "an aquarium", "a fair", "a planetarium", "a ballet", "a rodeo"])
    adults, kids = rng.randint(1, 7 + s), rng.randint(1, 9 + s)
    pa, pk = rng.randint(8, 40 + 10 * s), rng.randint(3, 20)
    snack = rng.randint(2, 12)
    n = rng.choice(NAMES)
    people = adults + kids
    q = (f"At {place}, {_pick(rng, 'tickets are|a ticket is|entry is')} ${pa} per adult and ${pk} per kid; "
         f"snacks are ${snack} each. {n} {_pick(rng, 'brings|takes')} {adults} adults and {kids} kids, "
         f"{_pick(rng, 'one snack each|a snack per person|each with a snack')}. "
         + _pick(rng, f"What does {n} spend?|Total for {n}?|How many dollars for the {people}?"))
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

    cache_items = True

    description = "GSM8K-style multi-step word problems from templates; integer answer, worked solution."
    grader = "math"
    defaults = {"templates": None, "difficulty": [0, 2]}

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        p = super().validate_params(params)
        p["templates"] = name_list(p["templates"], TEMPLATES, "templates", "word-problem templates")
        d = p["difficulty"]
        d = [d, d] if isinstance(d, int) else list(d) if isinstance(d, (list, tuple)) else None
        if d is None or len(d) != 2 or not all(isinstance(x, int) and 0 <= x <= 5 for x in d) or d[0] > d[1]:
            raise ValueError(f"difficulty must be an int in 0..5 or [lo, hi], got {show(p['difficulty'])}")
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
