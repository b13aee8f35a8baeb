import random

import pytest

from thinkgym._registry import Registry, RegistryError
from thinkgym.tasks.base import TaskSource
from thinkgym.verifiers.base import Grade, GraderSpec


def test_registry_rejects_clash_and_unknown():
    r: Registry[int] = Registry("thing", "thinkgym.test-nonexistent-group")
    r.add("a", 1)
    with pytest.raises(RegistryError, match="registered twice"):
        r.add("a", 2, origin="other")
    with pytest.raises(RegistryError, match="unknown thing 'b'; known: a"):
        r.get("b")


def test_grader_exception_is_infra_error_not_zero():
    def boom(completion, gold, **meta):
        raise RuntimeError("disk on fire")

    g = GraderSpec("boom", "3", boom)("x", "1")
    assert g.score is None and g.is_error
    assert "disk on fire" in g.reason and g.grader == "boom@3"


def test_grader_score_out_of_range_is_error():
    g = GraderSpec("bad", "1", lambda c, gold, **m: Grade(score=2.0))("x", "1")
    assert g.score is None and "outside [0, 1]" in g.reason


class _Coin(TaskSource):
    name = "coin"

    def generate(self, i: int, rng: random.Random):
        return {"question": "flip", "answer": str(rng.randint(0, 10**9)), "metadata": {}}


def test_task_source_index_addressable_and_bounded():
    s = _Coin(seed=3, size=5)
    assert s[2] == _Coin(seed=3, size=5)[2]
    assert s[-1] == s[4]
    assert s[2]["answer"] != _Coin(seed=4, size=5)[2]["answer"]
    with pytest.raises(IndexError):
        s[5]
    with pytest.raises(TypeError):
        _Coin(seed=1, level=3)
