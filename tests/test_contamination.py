"""The n-gram contamination gate."""

from __future__ import annotations

import time

import pytest

from thinkgym.tasks import make_task
from thinkgym.tasks.contamination import (
    ContaminationError,
    check_contamination,
    contamination_report,
    ngrams,
    normalize,
)

LONG = ("Natalia sold clips to forty eight of her friends in April and then she sold half as many "
        "clips in May how many clips did Natalia sell altogether in April and May")


def test_normalize_and_ngrams():
    assert normalize("  Hello,\tWORLD!\n3+4=7  ") == "hello world 3 4 7"
    assert normalize("Ｆｕｌｌ−width ½") == "full width 1 2"
    g = ngrams("a b c d", n=2)
    assert g == {"a b", "b c", "c d"}
    assert len(ngrams(LONG, 13)) == len(LONG.split()) - 12
    # Shorter than n: the whole normalized text, operators kept, is the single gram; empty text has none.
    assert ngrams("What is 2 + 3?", 13) == {"what is 2 + 3"}
    assert ngrams(" ?! ", 13) == set()
    with pytest.raises(ValueError):
        ngrams("x", 0)


def test_report_lists_overlaps_with_indices():
    train = ["unrelated text about cats", LONG, "What is 2 + 3?"]
    evals = [
        "A completely different question about prime numbers and their gaps that shares nothing",
        "Preamble words here. " + LONG.upper() + " Extra tail.",  # embedded, different case
        "what is 2+3",  # short, same after normalization
        "What is 2 + 4?",  # short, different
    ]
    r = contamination_report(train, evals, n=13)
    assert r.n == 13 and r.eval_items == 4 and r.train_items == 3
    assert [(e, t) for e, t, _ in r.contaminated] == [(1, 1), (2, 2)]
    assert r.contaminated[1][2] == "what is 2 + 3"
    assert len(r.contaminated[0][2].split()) == 13 and r.contaminated[0][2] in normalize(LONG)
    assert r.rate == 0.5
    assert "2 of 4 eval items (50.00%)" in r.summary()
    assert r.to_dict()["contaminated"][0][:2] == [1, 1]


def test_items_and_sources_accepted():
    src = make_task("word_problems", seed=0, size=50)
    r = contamination_report(src, [src[3], src[10]["question"]])
    assert [c[:2] for c in r.contaminated] == [(0, 3), (1, 10)]
    with pytest.raises(TypeError, match="not a single str"):
        contamination_report("abc", ["abc"])
    with pytest.raises(TypeError, match="expected a str or an item"):
        contamination_report([1], ["abc"])
    with pytest.raises(ValueError, match="build it with size=N"):
        contamination_report(make_task("arithmetic"), ["abc"])  # a million items by default


def test_check_contamination_threshold_error_and_warn(caplog):
    train = [LONG]
    evals = [LONG, "something else entirely", "and another one", "fourth"]
    with pytest.raises(ContaminationError) as ei:
        check_contamination(train, evals)
    msg = str(ei.value)
    assert "1 of 4 eval items (25.00%)" in msg and "eval #0 ~ train #0" in msg
    assert ei.value.report.rate == 0.25
    assert check_contamination(train, evals, threshold=0.25).rate == 0.25  # at threshold: allowed
    with caplog.at_level("WARNING"):
        r = check_contamination(train, evals, on_fail="warn")
    assert r.rate == 0.25 and "contamination above threshold" in caplog.text
    with pytest.raises(ValueError):
        check_contamination(train, evals, on_fail="ignore")


def test_same_source_is_fully_contaminated_other_seed_is_low():
    tr = make_task("arithmetic", seed=0, size=2000)
    ev = make_task("arithmetic", seed=0, size=200)
    assert contamination_report(tr, ev).rate == 1.0
    r = contamination_report(tr, make_task("arithmetic", seed=1, size=200))
    assert r.rate < 0.05


def test_fast_enough_for_10k_by_1k():
    train = [f"{LONG} variant number {i} with words w{i % 97} and z{i % 89}" for i in range(10_000)]
    evals = [f"fresh eval question {i} about topic t{i} that nobody has seen before today" for i in range(1_000)]
    t0 = time.perf_counter()
    r = contamination_report(train, evals)
    assert time.perf_counter() - t0 < 10.0
    assert r.rate == 0.0 and r.train_items == 10_000
