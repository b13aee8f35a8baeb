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


class _Dist:
    name = "thinkgym-fake-plugin"


class _EntryPoint:
    """Stands in for an installed entry point: ``load`` runs ``loader``."""

    def __init__(self, name, value, group, loader):
        self.name, self.value, self.group, self.dist, self._loader = name, value, group, _Dist(), loader

    def load(self):
        return self._loader()


def _fake_entry_points(monkeypatch, group, *eps):
    """Make ``group`` list ``eps``; every other group is looked up as usual."""
    import thinkgym._registry as reg

    real, wanted = reg.metadata.entry_points, group

    def entry_points(group=None, **kw):
        return list(eps) if group == wanted else real(group=group, **kw)

    monkeypatch.setattr(reg.metadata, "entry_points", entry_points)


def test_plugin_that_fails_to_import_errors_on_every_lookup(monkeypatch):
    calls = []

    def broken():
        calls.append(1)
        raise ModuleNotFoundError("No module named 'numpyy'\n(second line)")

    group = "thinkgym.test-broken"
    _fake_entry_points(monkeypatch, group, _EntryPoint("thing", "fake_mod:thing", group, broken))
    r: Registry[int] = Registry("thing", group)
    r.add("a", 1)
    for lookup in (lambda: r.get("a"), lambda: r.get("a"), r.names, lambda: "a" in r):
        with pytest.raises(RegistryError) as e:
            lookup()
        msg = str(e.value)
        assert msg.startswith("plugin thinkgym-fake-plugin (thinkgym.test-broken: thing = fake_mod:thing) failed to load")
        assert "ModuleNotFoundError: No module named 'numpyy' (second line)" in msg and "\n" not in msg
    assert len(calls) == 1  # imported once; the failure is remembered


def test_plugin_claiming_a_builtin_grader_errors_on_every_lookup(monkeypatch):
    from thinkgym.verifiers.base import GRADERS, grade

    impostor = lambda completion, gold, **meta: Grade(1.0)  # noqa: E731
    _fake_entry_points(monkeypatch, "thinkgym.graders", _EntryPoint("math", "evil:grade", "thinkgym.graders", lambda: impostor))
    monkeypatch.setattr(GRADERS, "_plugins_loaded", False)
    monkeypatch.setattr(GRADERS, "_plugin_error", None)
    for _ in range(2):
        with pytest.raises(RegistryError, match="grader 'math' is registered twice: .* by plugin thinkgym-fake-plugin"):
            grade("math", "<answer>42</answer>", "42")


def test_plugin_register_hook_failure_names_the_plugin(monkeypatch):
    def hook():
        raise RuntimeError("hook broke")

    hook.__thinkgym_register__ = True
    group = "thinkgym.test-hook"
    _fake_entry_points(monkeypatch, group, _EntryPoint("h", "fake_mod:hook", group, lambda: hook))
    r: Registry[int] = Registry("thing", group)
    with pytest.raises(RegistryError, match=r"plugin thinkgym-fake-plugin .* failed to register: RuntimeError: hook broke"):
        r.names()


def test_grader_score_must_be_a_number_not_bool_or_text():
    import numpy as np

    for bad in (True, False, "1.0", float("nan")):
        g = GraderSpec("bad", "1", lambda c, gold, b=bad, **m: Grade(score=b))("x", "1")
        assert g.score is None and g.is_error and "grader error" in g.reason, (bad, g)
    assert "bool" in GraderSpec("b", "1", lambda c, gold, **m: Grade(True))("x", "1").reason
    g = GraderSpec("np", "1", lambda c, gold, **m: Grade(score=np.float64(0.5)))("x", "1")
    assert g.score == 0.5


def test_grader_calling_sys_exit_is_an_infra_error():
    import sys

    g = GraderSpec("quitter", "1", lambda c, gold, **m: sys.exit(3))("x", "1")
    assert g.score is None and "SystemExit" in g.reason

    def interrupted(c, gold, **m):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        GraderSpec("ctrl-c", "1", interrupted)("x", "1")


def test_non_callable_grader_entry_is_a_lookup_error(monkeypatch):
    from thinkgym.verifiers.base import GRADERS, get_grader

    monkeypatch.setitem(GRADERS._items, "not_a_fn", "oops")
    monkeypatch.setitem(GRADERS._origin, "not_a_fn", "plugin thinkgym-fake-plugin (fake:NOT_A_FN)")
    for _ in range(2):
        with pytest.raises(RegistryError, match=r"grader 'not_a_fn' \(plugin thinkgym-fake-plugin .*\) is not callable: got str"):
            get_grader("not_a_fn")
