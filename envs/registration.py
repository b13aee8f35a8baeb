"""Env ids: the built-in ones, plugin ones, and one per plugin task source.

``register_envs()`` puts every id into Gymnasium's registry, so ``gymnasium.make(id)`` works.
Plugins extend the list in two ways:

* entry-point group ``thinkgym.envs``: each entry is an :class:`EnvInfo` (or a zero-argument
  hook marked ``__thinkgym_register__ = True`` that calls ``ENVS.add`` itself);
* any task source added through the ``thinkgym.tasks`` group gets a single-turn env
  ``thinkgym/<CamelName>-v0`` automatically (unless the plugin registers that id itself).

Two providers of one id are an error, never a silent override.

An env's registered kwargs may fix its task's ``seed``, ``size`` and ``task_params``;
:func:`task_source_for_env` builds the source behind an id with them, so whatever samples or
checks an env's items sees the items the env serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from thinkgym._registry import Registry, RegistryError

NAMESPACE = "thinkgym"


@dataclass(frozen=True)
class EnvInfo:
    """One registered env id: what Gymnasium builds and how ``thinkgym envs`` describes it."""

    id: str
    entry_point: str  # "module:Class"
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def task(self) -> str | None:
        t = self.kwargs.get("task")
        return t if isinstance(t, str) else None


ENVS: Registry[EnvInfo] = Registry("env", "thinkgym.envs")

_SINGLE = "thinkgym.envs.core:SingleTurnEnv"
_MULTI = "thinkgym.envs.core:MultiTurnEnv"
_TOOL = "thinkgym.envs.core:ToolEnv"

BUILTIN_ENVS = [
    EnvInfo("thinkgym/Arithmetic-v0", _SINGLE, {"task": "arithmetic"}, "Multi-operand integer arithmetic, one answer (math grader)."),
    EnvInfo("thinkgym/Countdown-v0", _SINGLE, {"task": "countdown"}, "Reach the target from the given numbers with + - * / (countdown grader)."),
    EnvInfo("thinkgym/WordProblems-v0", _SINGLE, {"task": "word_problems"}, "GSM8K-style word problems (math grader)."),
    EnvInfo("thinkgym/LatexMath-v0", _SINGLE, {"task": "latex_math"}, "Fractions, radicals, intervals and sets in LaTeX (math grader)."),
    EnvInfo("thinkgym/Code-v0", _SINGLE, {"task": "code"}, "Python problems graded by running tests in a sandbox (code grader)."),
    EnvInfo("thinkgym/Format-v0", _SINGLE, {"task": "format"}, "Rewards only the <think>/<answer> structure (format grader)."),
    EnvInfo("thinkgym/CodeRetry-v0", _MULTI, {"task": "code", "max_turns": 3},
            "Multi-turn code: failing test output comes back as feedback, up to 3 attempts."),
    EnvInfo("thinkgym/CountdownRetry-v0", _MULTI, {"task": "countdown", "max_turns": 3},
            "Multi-turn countdown: 'incorrect, try again' with the reason, up to 3 attempts."),
    EnvInfo("thinkgym/CalculatorTool-v0", _TOOL,
            {"task": "arithmetic", "task_params": {"n_operands": [3, 5], "max_value": 1000}, "max_turns": 4},
            "Harder arithmetic with a calculator tool: <tool>EXPR</tool> -> <result>VALUE</result>."),
]


def env_id_for_task(task: str) -> str:
    """``word_problems`` -> ``thinkgym/WordProblems-v0``."""
    camel = "".join(p[:1].upper() + p[1:] for p in task.replace("-", "_").split("_") if p)
    return f"{NAMESPACE}/{camel}-v0"


def _collect() -> list[EnvInfo]:
    from thinkgym.tasks import TASKS

    for info in BUILTIN_ENVS:
        ENVS.add(info.id, info, origin="thinkgym")
    ENVS.load_plugins()
    for n in ENVS.names():
        info = ENVS.get(n)
        if not isinstance(info, EnvInfo) or info.id != n:
            raise RegistryError(f"env entry {n!r} ({ENVS.origin(n)}) must be an EnvInfo with id {n!r}, got {info!r}")
    for name in TASKS.names():
        origin = TASKS.origin(name)
        if not origin.startswith("plugin "):
            continue
        env_id = env_id_for_task(name)
        if env_id in ENVS:
            if ENVS.get(env_id).task == name:
                continue  # the plugin registered this id itself
            raise RegistryError(
                f"env {env_id!r} for plugin task {name!r} ({origin}) clashes with {ENVS.origin(env_id)}"
            )
        cls = TASKS.get(name)
        ENVS.add(env_id, EnvInfo(env_id, _SINGLE, {"task": name}, cls.description or f"Plugin task {name}."), origin=origin)
    return [ENVS.get(n) for n in ENVS.names()]


def register_envs() -> None:
    """Register every thinkgym env id with Gymnasium (idempotent)."""
    import gymnasium

    for info in _collect():
        spec = gymnasium.registry.get(info.id)
        if spec is not None:
            if spec.entry_point == info.entry_point and spec.kwargs == info.kwargs:
                continue
            raise RegistryError(f"gymnasium env {info.id!r} is already registered by {spec.entry_point}")
        gymnasium.register(id=info.id, entry_point=info.entry_point, kwargs=dict(info.kwargs))


#: The env constructor kwargs that decide which items an env serves (the rest, such as
#: ``max_turns`` or ``system_prompt``, shape the episode but not the items).
TASK_KWARGS = ("task", "seed", "size", "task_params")


def _int_kwarg(env_id: str, name: str, value: Any, where: str, *, positive: bool = False) -> int:
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"env {env_id!r}: {name} ({where}) must be an int, got {type(value).__name__} {value!r:.80}")
    value = value.__index__()
    if positive and value < 1:
        raise ValueError(f"env {env_id!r}: {name} ({where}) must be >= 1, got {value}")
    return value


def task_source_for_env(
    env_id: str,
    *,
    seed: int | None = None,
    size: int | None = None,
    params: Mapping[str, Any] | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """The task source behind a registered env id: the items ``gymnasium.make(env_id, **env_kwargs)``
    serves, unless an override says otherwise.

    The one rule for every caller that looks at an env's items without building the env
    (``thinkgym sample-tasks`` and ``thinkgym contamination`` on an env id, the eval's
    contamination gate on an env-id ``train_task``):

    1. the env's registered kwargs ``task``, ``seed``, ``size`` and ``task_params``;
    2. ``env_kwargs`` over them as Gymnasium applies constructor kwargs: a key given replaces the
       registered one (``task_params`` as a whole, as in ``gymnasium.make``);
    3. the caller's explicit overrides: ``seed`` and ``size`` (None: keep), and ``params``,
       knobs merged key by key over the task params.

    A seed or size set nowhere is the env's own default: seed 0, the task's default size.
    """
    from thinkgym.tasks import make_task

    if env_id not in ENVS:
        raise RegistryError(f"unknown env {env_id!r}; known: {', '.join(ENVS.names())}")
    if env_kwargs is not None and not isinstance(env_kwargs, Mapping):
        raise TypeError(f"env_kwargs must be a dict or None, got {type(env_kwargs).__name__} {env_kwargs!r:.80}")
    if params is not None and not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict or None, got {type(params).__name__} {params!r:.80}")
    info = ENVS.get(env_id)
    kw = {**info.kwargs, **(env_kwargs or {})}
    where = {k: ("env_kwargs" if k in (env_kwargs or {}) else "registered") for k in TASK_KWARGS}
    task = kw.get("task")
    if not isinstance(task, str):
        raise ValueError(f"env {env_id!r} is not backed by a registered task name")
    task_params = kw.get("task_params")
    if task_params is None:
        task_params = {}
    if not isinstance(task_params, Mapping):
        raise TypeError(f"env {env_id!r}: task_params ({where['task_params']}) must be a dict, "
                        f"got {type(task_params).__name__} {task_params!r:.80}")
    taken = sorted({"seed", "size"} & set(params or {}))
    if taken:
        raise ValueError(f"env {env_id!r}: {', '.join(taken)} cannot be a task param; pass it as seed / size")
    if seed is None:
        seed = _int_kwarg(env_id, "seed", kw["seed"], where["seed"]) if "seed" in kw else 0
    else:
        seed = _int_kwarg(env_id, "seed", seed, "override")
    if size is None:
        size = _int_kwarg(env_id, "size", kw["size"], where["size"], positive=True) if kw.get("size") is not None else None
    else:
        size = _int_kwarg(env_id, "size", size, "override", positive=True)
    return make_task(task, seed=seed, size=size, **{**task_params, **(params or {})})


def list_envs() -> dict[str, str]:
    """Env ids with their one-line descriptions (built-in, plugin, and plugin tasks)."""
    return {info.id: info.description for info in _collect()}
