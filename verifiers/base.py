"""The ``Grade`` type and the grader registry.

A grader is a pure function ``(completion: str, gold, **meta) -> Grade``. ``score=None`` means an
infrastructure error (the grader crashed or ran out of its budget on a well-formed input): it
is logged and counted by callers, never silently turned into 0. An unparseable or wrong answer
is a plain 0.0.
"""

from __future__ import annotations

import logging
import numbers
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol

from thinkgym._registry import Registry, RegistryError

log = logging.getLogger("thinkgym.verifiers")


@dataclass
class Grade:
    score: float | None
    extracted: str | None = None
    reason: str = ""
    components: dict[str, float | None] = field(default_factory=dict)
    elapsed_s: float = 0.0
    grader: str = ""  # "name@version" fingerprint
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def is_error(self) -> bool:
        return self.score is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def error(cls, reason: str, **kw: Any) -> "Grade":
        return cls(score=None, reason=reason, **kw)


def _describe(e: BaseException) -> str:
    """``"Type: message"``, even for an exception whose ``__str__`` raises (that one escaped the
    handler meant to contain it)."""
    try:
        msg = str(e)
    except Exception:  # noqa: BLE001
        msg = "<message unavailable>"
    return f"{type(e).__name__}: {msg}"


class GraderFn(Protocol):
    def __call__(self, completion: str, gold: Any, **meta: Any) -> Grade: ...


@dataclass(frozen=True)
class GraderSpec:
    name: str
    version: str
    fn: GraderFn
    description: str = ""

    @property
    def fingerprint(self) -> str:
        return f"{self.name}@{self.version}"

    def __call__(self, completion: str, gold: Any, **meta: Any) -> Grade:
        """Run the grader; an exception becomes a logged ``score=None`` grade."""
        t0 = time.perf_counter()
        try:
            g = self.fn(completion, gold, **meta)
            if not isinstance(g, Grade):
                raise TypeError(f"grader returned {type(g).__name__}, expected Grade")
            if g.score is not None:
                # bool is an int subclass: Grade(True) would pass as 1 while serialising as true.
                if isinstance(g.score, bool) or not isinstance(g.score, numbers.Real):
                    raise TypeError(f"grader returned score {g.score!r} ({type(g.score).__name__}), expected a number or None")
                if not 0.0 <= g.score <= 1.0:
                    raise ValueError(f"grader returned score {g.score} outside [0, 1]")
                # A Fraction or numpy scalar passes the checks but is written to JSON as "1/2".
                g.score = float(g.score)
        # A crashing grader must not crash training; a grader calling sys.exit() must not end
        # the process either (KeyboardInterrupt still stops it).
        except (Exception, SystemExit) as e:  # noqa: BLE001
            why = _describe(e)
            log.error("grader %s failed: %s", self.fingerprint, why)
            g = Grade.error(f"grader error: {why}")
        g.elapsed_s = time.perf_counter() - t0
        g.grader = g.grader or self.fingerprint
        return g


GRADERS: Registry[GraderSpec] = Registry("grader", "thinkgym.graders")


def register_grader(name: str, version: str = "1", description: str = "") -> Callable[[GraderFn], GraderFn]:
    """Decorator: register ``fn`` as grader ``name``. Returns ``fn`` unchanged."""

    def deco(fn: GraderFn) -> GraderFn:
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        GRADERS.add(name, GraderSpec(name, version, fn, doc), origin=getattr(fn, "__module__", "?"))
        return fn

    return deco


def get_grader(name: str) -> GraderSpec:
    spec = GRADERS.get(name)
    if not isinstance(spec, GraderSpec):
        if not callable(spec):
            raise RegistryError(
                f"grader {name!r} ({GRADERS.origin(name)}) is not callable: got {type(spec).__name__}"
            )
        # An entry point may export a bare function; wrap it once.
        spec = GraderSpec(name, getattr(spec, "__version__", "1"), spec)
        GRADERS._items[name] = spec
    return spec


def grade(name: str, completion: str, gold: Any, **meta: Any) -> Grade:
    """Grade one completion with the registered grader ``name``."""
    return get_grader(name)(completion, gold, **meta)


def list_graders() -> dict[str, str]:
    return {n: get_grader(n).description for n in GRADERS.names()}
