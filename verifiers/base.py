"""The ``Grade`` type and the grader registry.

A grader is a pure function ``(completion: str, gold, **meta) -> Grade``. ``score=None`` means an
infrastructure error (the grader crashed or ran out of its budget on a well-formed input): it
is logged and counted by callers, never silently turned into 0. An unparseable or wrong answer
is a plain 0.0.
"""

from __future__ import annotations

import logging
import numbers
import threading
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
    kwargs: dict[str, Callable[[Any], str | None]] | None = None
    """The keyword arguments the grader reads, each with a check of its value (an error text or
    None); None: not declared, anything is passed (see :func:`check_kwargs`)."""

    @property
    def parts(self) -> tuple[str, ...]:
        """The graders a rubric combines (each gets the completion, gold and meta); () otherwise."""
        return tuple(getattr(self.fn, "weights", None) or ())

    @property
    def fingerprint(self) -> str:
        """``name@version``; a rubric adds its parts' fingerprints (``math+format@1(math@3+format@2)``):
        its scores change whenever a part's do, which its own version does not say."""
        if not self.parts:
            return f"{self.name}@{self.version}"
        # One level: a part's own name@version (rubrics of rubrics could otherwise loop).
        fps = [f"{n}@{GRADERS.get(n).version}" if n in GRADERS else n for n in self.parts]
        return f"{self.name}@{self.version}({'+'.join(fps)})"

    def __call__(self, completion: str, gold: Any, **meta: Any) -> Grade:
        """Run the grader; an exception becomes a logged ``score=None`` grade.

        A completion that is not text is the caller's bug, not a wrong answer: it is an error
        grade too, never a 0.0 reward that would train on it silently."""
        t0 = time.perf_counter()
        depth = getattr(_CALLS, "depth", 0)
        _CALLS.depth = depth + 1
        try:
            if not isinstance(completion, str):
                raise TypeError(f"completion is {type(completion).__name__}, not str")
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
            # A pool worker's caller logs a failed item itself, with the item's label; logged here
            # too, the same message reached stderr twice.
            if depth or not _CALLER_LOGS:
                log.error("grader %s failed: %s", self.fingerprint, why)
            g = Grade.error(f"grader error: {why}")
        finally:
            _CALLS.depth = depth
        g.elapsed_s = time.perf_counter() - t0
        g.grader = g.grader or self.fingerprint
        return g


GRADERS: Registry[GraderSpec] = Registry("grader", "thinkgym.graders")
# Nesting of GraderSpec calls in this thread (a rubric calls its parts).
_CALLS = threading.local()
#: Set in grader pool workers, whose caller logs a failed top-level grade.
_CALLER_LOGS = False


def seconds_arg(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 86400:
        return "expected a number of seconds in (0, 86400]"
    return None


def fraction_arg(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        return "expected a number in [0, 1)"
    return None


def bool_arg(v: Any) -> str | None:
    return None if isinstance(v, bool) else "expected true or false"


def text_arg(v: Any) -> str | None:
    return None if v is None or isinstance(v, str) else "expected a string"


class Quoted(str):
    """A check's message that already names the offending value (a field inside an object):
    :func:`check_kwargs` shows it as is instead of appending the whole argument."""


def _type_problem(x: Any, tp: Any) -> str | None:
    """What is wrong with ``x`` as a value of type ``tp`` (an annotation), or None.

    Strict as a grader reads its config: an ``int`` field refuses 1.5 and 2.0 (``range(2.0)``
    fails mid-grade), a ``float`` field takes an int, and no number field takes a bool."""
    import dataclasses
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        problems = [_type_problem(x, a) for a in args]
        if any(p is None for p in problems):
            return None
        return " or ".join(dict.fromkeys(p for p in problems if p)).replace(" or must be ", " or ")
    if tp is type(None):
        return None if x is None else "must be null"
    if origin is typing.Literal:
        return None if any(x == a and type(x) is type(a) for a in args) else f"must be one of {list(args)}"
    if tp is bool:
        return None if isinstance(x, bool) else "must be true or false"
    if tp is int:
        return None if isinstance(x, numbers.Integral) and not isinstance(x, bool) else "must be an integer"
    if tp is float:
        return None if isinstance(x, numbers.Real) and not isinstance(x, bool) else "must be a number"
    if tp is str:
        return None if isinstance(x, str) else "must be a string"
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(x, (list, tuple)):
            return "must be a list"
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(x) != len(args):
                return f"must be a list of {len(args)} items"
            inner = list(args)
        else:
            inner = [args[0] if args else Any] * len(x)
        for i, (v, a) in enumerate(zip(x, inner)):
            why = _type_problem(v, a)
            if why:
                return f"item {i} {why}"
        return None
    if origin is dict or tp is dict:
        return None if isinstance(x, dict) else "must be an object"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(x, tp):
            return None
        if not isinstance(x, dict):
            return f"must be an object with fields of {tp.__name__}"
        return _fields_problem(x, tp)
    return None  # a type this check does not know: the grader's own validation decides


def _fields_problem(v: dict, cls: type) -> str | None:
    """The first problem of ``v`` as the fields of dataclass ``cls``, naming the field and its
    value; None when every key is a field and every value has the field's type."""
    import dataclasses
    import typing

    fields_ = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(map(str, (k for k in v if k not in fields_)))
    if bad:
        return f"unknown field(s) {bad} of {cls.__name__}; known: {sorted(fields_)}"
    hints = typing.get_type_hints(cls)
    for k, x in v.items():
        tp = hints.get(k, Any)
        why = _type_problem(x, tp)
        if why and isinstance(x, dict) and isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return f"field {k!r} of {cls.__name__}: {why}"  # names the nested field and its value
        if why:
            return f"field {k!r} of {cls.__name__} {why}, got {type(x).__name__} {x!r:.60}"
    return None


def _build(v: dict, cls: type) -> Any:
    """``cls(**v)`` with nested config objects built too (their own checks run)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    kw = {k: _build(x, hints[k]) if isinstance(x, dict) and isinstance(hints.get(k), type)
          and dataclasses.is_dataclass(hints[k]) else x for k, x in v.items()}
    return cls(**kw)


def config_arg(cls: type) -> Callable[[Any], str | None]:
    """Check for an object whose keys are fields of config dataclass ``cls`` (or an instance of
    it), each value of its field's annotated type; the config's own checks (``__post_init__``)
    run too, so a bad value is refused before any grading."""

    def check(v: Any) -> str | None:
        if v is None or isinstance(v, cls):  # None: the grader's default
            return None
        if not isinstance(v, dict):
            return f"expected an object with fields of {cls.__name__}"
        why = _fields_problem(v, cls)
        if why is None:
            try:
                _build(v, cls)
            except (ValueError, TypeError) as e:
                why = str(e) if cls.__name__ in str(e) else f"{cls.__name__}: {e}"
        return None if why is None else Quoted(why)

    return check


def accepted_kwargs(name: str) -> dict[str, Callable[[Any], str | None]] | None:
    """The keyword arguments grader ``name`` reads, each with its check; None when not declared
    (``register_grader(kwargs=...)``), or a rubric with such a part: anything is passed."""
    spec = get_grader(name)
    if spec.parts:  # a rubric passes its meta to every part
        out: dict[str, Callable[[Any], str | None]] = {"component_meta": lambda v: None if isinstance(v, dict) else "expected an object"}
        for n in spec.parts:
            known = accepted_kwargs(n)
            if known is None:
                return None
            out.update(known)
        return out
    return spec.kwargs


def check_kwargs(name: str, kwargs: dict[str, Any]) -> tuple[str, str] | None:
    """``(key, problem)`` for the first keyword argument grader ``name`` does not read or whose
    value is of the wrong kind; None when all are fine or the grader's arguments are not known."""
    known = accepted_kwargs(name)
    if known is None:
        return None
    for k, v in kwargs.items():
        if k not in known:
            return k, f"grader {name!r} takes no argument {k!r} (it takes: {', '.join(sorted(known)) or 'none'})"
        why = known[k](v)
        if why:
            return k, why if isinstance(why, Quoted) else f"{why}, got {type(v).__name__} {v!r:.60}"
    return None


def register_grader(
    name: str, version: str = "1", description: str = "",
    kwargs: dict[str, Callable[[Any], str | None]] | None = None,
) -> Callable[[GraderFn], GraderFn]:
    """Decorator: register ``fn`` as grader ``name``. Returns ``fn`` unchanged.

    ``kwargs`` declares the keyword arguments it reads, each with a check of its value
    (:func:`seconds_arg`, :func:`bool_arg`, :func:`config_arg`, ... or your own): ``grade()`` and
    ``thinkgym grade`` then refuse a typo or a value of the wrong kind. Undeclared, anything passes."""

    def deco(fn: GraderFn) -> GraderFn:
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        GRADERS.add(name, GraderSpec(name, version, fn, doc, kwargs), origin=getattr(fn, "__module__", "?"))
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
    """Grade one completion with the registered grader ``name``.

    A keyword argument a built-in grader does not read (a typo such as ``timout_s``) or a value of
    the wrong kind is the caller's bug: the result is a logged error grade (``score=None``)."""
    spec = get_grader(name)
    bad = check_kwargs(name, meta)
    if bad is not None:
        why = f"grader error: bad argument {bad[0]!r}: {bad[1]}"
        log.error("grader %s not run: %s", spec.fingerprint, why)
        return Grade.error(why, grader=spec.fingerprint)
    return spec(completion, gold, **meta)


def list_graders() -> dict[str, str]:
    return {n: get_grader(n).description for n in GRADERS.names()}
