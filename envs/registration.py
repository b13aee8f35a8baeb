"""Env ids: the built-in ones, plugin ones, and one per plugin task source.

``register_envs()`` puts every id into Gymnasium's registry, so ``gymnasium.make(id)`` works.
Plugins extend the list in two ways:

* entry-point group ``thinkgym.envs``: each entry is an :class:`EnvInfo` (or a zero-argument
  hook marked ``__thinkgym_register__ = True`` that calls ``ENVS.add`` itself);
* any task source added through the ``thinkgym.tasks`` group gets a single-turn env
  ``thinkgym/<CamelName>-v0`` automatically (unless the plugin registers that id itself).

Two providers of one id are an error, never a silent override.
"""

from __future__ import annotations

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


def task_source_for_env(env_id: str, *, seed: int = 0, size: int | None = None) -> Any:
    """The task source behind a registered env id, built with the env's task knobs.

    Train and eval entry points use it to run the contamination gate on the envs they use.
    """
    from thinkgym.tasks import make_task

    if env_id not in ENVS:
        raise RegistryError(f"unknown env {env_id!r}; known: {', '.join(ENVS.names())}")
    info = ENVS.get(env_id)
    if info.task is None:
        raise ValueError(f"env {env_id!r} is not backed by a registered task name")
    return make_task(info.task, seed=seed, size=size, **info.kwargs.get("task_params", {}))


def list_envs() -> dict[str, str]:
    """Env ids with their one-line descriptions (built-in, plugin, and plugin tasks)."""
    return {info.id: info.description for info in _collect()}
