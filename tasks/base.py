"""The task-source protocol: seeded, index-addressable problem generators.

Item ``i`` of a source is plain data derived from ``(name, params, seed, i)`` only::

    {"question": str, "answer": str | JSON, "metadata": {...}}

``metadata`` may hold ``solution`` (a worked, step-by-step trace usable for cold-start SFT, in
the completion format ``<think>...</think>\n<answer>...</answer>``), ``difficulty``, ``grader``
(the default grader name) and ``grader_kwargs`` (keyword arguments the env passes to the grader
along with the completion and ``answer``).
"""

from __future__ import annotations

import copy
import random
import re
import sys
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any, ClassVar, Iterator, TypedDict

from thinkgym._registry import Registry, RegistryError


def show(x: Any, limit: int = 80) -> str:
    """``repr(x)`` for an error message: cut to about ``limit`` characters, and never failing
    (Python refuses to print an int of more than 4,300 digits)."""
    try:
        r = repr(x)
    except ValueError:
        return f"a value too long to print ({type(x).__name__})"
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _is_int(x: Any) -> bool:
    """An int or an integer-like value (numpy integers), but not a bool."""
    return not isinstance(x, bool) and hasattr(type(x), "__index__")


def _plain(x: Any) -> Any:
    """``x`` with numpy integers and bools (from arrays, sweeps, samplers) as the Python int or
    bool they stand for, inside lists and tuples too: the knobs' checks test for ``int`` and
    ``bool``, and item keys print the params, so ``np.int64(25)`` must be ``25`` exactly."""
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_plain(v) for v in x)
    if _is_int(x) and type(x) is not int:
        return x.__index__()
    np = sys.modules.get("numpy")  # only numpy makes numpy bools: no import for everyone else
    if np is not None and isinstance(x, np.bool_):
        return bool(x)
    return x


def _int_default(d: Any) -> bool:
    """Whether a knob's default is an int or a list/tuple of ints (bools excluded)."""
    if isinstance(d, (list, tuple)):
        return bool(d) and all(_int_default(v) for v in d)
    return isinstance(d, int) and not isinstance(d, bool)


def _has_bool(x: Any) -> bool:
    return isinstance(x, bool) or isinstance(x, (list, tuple)) and any(map(_has_bool, x))


class Item(TypedDict):
    question: str
    answer: Any
    metadata: dict[str, Any]


_ITEMS: OrderedDict[tuple, Item] = OrderedDict()  # least recently used first
_ITEMS_MAX = 16384
_ITEMS_LOCK = threading.Lock()


class TaskSource(ABC):
    """A sequence of problems. Subclasses implement :meth:`generate`.

    ``size`` bounds ``len()`` (procedural sources are effectively unbounded; the default size
    is large). ``params`` are source-specific difficulty knobs and are part of the identity of
    an item: the same (params, seed, i) always gives the same item, in any process.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    grader: ClassVar[str] = "math"
    default_size: ClassVar[int] = 1_000_000
    #: Knobs and their defaults; a subclass that sets this gets checking and defaults for free.
    defaults: ClassVar[dict[str, Any]] = {}
    #: Items depend on (class, params, seed, index) only, so every instance in the process may
    #: share them (a learner builds an env per episode: G copies of each prompt's source).
    cache_items: ClassVar[bool] = False

    def __init__(self, seed: int = 0, size: int | None = None, **params: Any) -> None:
        if not _is_int(seed):
            raise TypeError(f"seed must be an int, got {show(seed)}")
        # Kept as a plain int, so a numpy seed prints, compares and serialises like the same int.
        self.seed = seed.__index__()
        try:
            str(self.seed)
        except ValueError:  # items are keyed by the seed's digits, which Python refuses past 4,300
            raise ValueError("seed is too large (over 4,300 digits) to key items; use a smaller seed") from None
        if size is not None and not _is_int(size):
            raise TypeError(f"size must be an int or None, got {show(size)}")  # int(2.5) would drop items silently
        self.size = self.default_size if size is None else size.__index__()
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {show(size)}")
        if self.size > sys.maxsize:
            # len() cannot return more, so every index lookup would raise OverflowError.
            raise ValueError(f"size must be <= {sys.maxsize}, got {show(size)}")
        self.params = self.validate_params(params)

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check and fill in defaults for the source's knobs; unknown knobs are an error.

        numpy integers and bools count as the Python int or bool they stand for (as seeds and
        indices do); a bool where the default is an int (or a list of ints) is refused."""
        if not self.defaults:
            if params:
                raise TypeError(f"{type(self).__name__} takes no parameters, got {sorted(params)}")
            return {}
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: unknown parameter(s) {unknown}; known: {sorted(self.defaults)}"
            )
        params = {k: _plain(v) for k, v in params.items()}
        for k, v in params.items():
            # True is an int to Python: a count or a range knob would read it as 1.
            if _int_default(self.defaults[k]) and _has_bool(v):
                raise ValueError(f"{k} must be an int or a list of ints, not true/false, got {show(v)}")
        return {**self.defaults, **params}

    def item_key(self, i: int) -> str:
        """What item ``i`` depends on: source name, params, seed, index."""
        return f"{self.name}|{sorted(self.params.items())!r}|{self.seed}|{i}"

    def rng(self, i: int) -> random.Random:
        # A string seed is hashed with SHA-512 by `random`, so it is stable across processes
        # and independent of PYTHONHASHSEED.
        return random.Random(self.item_key(i))

    @abstractmethod
    def generate(self, i: int, rng: random.Random) -> Item:
        """Build item ``i`` using only ``rng`` (already seeded from (seed, i))."""

    def __getitem__(self, i: int) -> Item:
        if not _is_int(i):
            raise TypeError(f"index must be an int, got {show(i)}")
        given = i = i.__index__()  # numpy integers from samplers and shuffled index arrays
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"{self.name}: index {show(given)} out of range (size {len(self)})")
        key = (type(self), self.item_key(i)) if self.cache_items else None
        if key is not None:
            with _ITEMS_LOCK:
                item = _ITEMS.get(key)
                if item is not None:
                    _ITEMS.move_to_end(key)
                    return copy.deepcopy(item)  # callers may edit their item
        item = self.generate(i, self.rng(i))
        self._check_item(item, i)
        item["metadata"].setdefault("grader", self.grader)
        item["metadata"].setdefault("source", self.name)
        item["metadata"].setdefault("index", i)
        if key is not None:
            with _ITEMS_LOCK:
                _ITEMS[key] = copy.deepcopy(item)
                if len(_ITEMS) > _ITEMS_MAX:
                    _ITEMS.popitem(last=False)
        return item

    def _check_item(self, item: Any, i: int) -> None:
        """``generate()``'s result must be an :class:`Item`; a plugin's slip is named here, not met
        later as a bare ``KeyError: 'metadata'`` in whatever reads the item."""
        where = f"task source {self.name or type(self).__name__!r} ({type(self).__module__}.{type(self).__qualname__})"
        shape = "{'question': str, 'answer': ..., 'metadata': dict}"
        if not isinstance(item, dict):
            raise TypeError(f"{where}: generate({i}) returned {show(item)}, not an item {shape}")
        missing = [k for k in ("question", "answer", "metadata") if k not in item]
        if missing:
            raise TypeError(f"{where}: item {i} lacks {', '.join(repr(k) for k in missing)} "
                            f"(has {sorted(map(str, item))}); an item is {shape}")
        if not isinstance(item["question"], str):
            raise TypeError(f"{where}: item {i}: question must be a str, got {show(item['question'])}")
        if not isinstance(item["metadata"], dict):
            raise TypeError(f"{where}: item {i}: metadata must be a dict, got {show(item['metadata'])}")

    def graders(self) -> frozenset[str]:
        """The grader names this source's items choose (``metadata["grader"]``), as far as the
        source can tell without generating them: an env checks its ``grader_kwargs`` against each
        when it is built. A source whose items pick other graders overrides this."""
        return frozenset({self.grader})

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[Item]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        p = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}(seed={self.seed}, size={self.size}{', ' if p else ''}{p})"


def name_list(value: Any, known: Any, param: str, what: str) -> list[str] | None:
    """A knob choosing among named options: None (all of them), "a,b" or a list of names.

    Returned sorted, duplicates kept (they weight the choice). ``what`` names the options in the
    error for an unknown name, e.g. "word-problem templates".
    """
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{param} must be a list of names or a comma-separated string, got {show(value)}")
    bad = sorted(set(names) - set(known))
    if bad:
        raise ValueError(f"unknown {what} {bad}; known: {sorted(known)}")
    if not names:
        raise ValueError(f"{param} must name at least one of {sorted(known)}, got {show(value)}")
    return sorted(names)


def check_bool(params: dict[str, Any], name: str) -> None:
    """A yes/no knob must be a bool: the string "false" from a config would otherwise mean yes."""
    if not isinstance(params[name], bool):
        raise ValueError(f"{name} must be true or false, got {show(params[name])}")


def format_solution(steps: list[str] | str, answer: Any) -> str:
    """A worked solution in the completion format the graders and SFT expect."""
    body = steps if isinstance(steps, str) else "\n".join(steps)
    return f"<think>\n{body}\n</think>\n<answer>{answer}</answer>"


class _TaskRegistry(Registry[type[TaskSource]]):
    """The task registry: an entry must be a :class:`TaskSource` subclass, checked when it is
    added, so a plugin's wrong entry point is one line naming it, not an ``AttributeError`` in
    whatever first reads ``.description`` or ``.grader`` (``thinkgym tasks``, ``import thinkgym.envs``)."""

    def add(self, name: str, obj: Any, origin: str = "thinkgym") -> Any:
        if not (isinstance(obj, type) and issubclass(obj, TaskSource)):
            m = re.fullmatch(r"plugin (.+) \((.+)\)", origin)
            where = (f"plugin {m.group(1)} ({self.group}: {name} = {m.group(2)})" if m
                     else f"task source {name!r} (registered by {origin})")
            raise RegistryError(f"{where} is not a task source: expected a subclass of "
                                f"thinkgym.tasks.TaskSource, got {show(obj)}")
        return super().add(name, obj, origin)


TASKS: Registry[type[TaskSource]] = _TaskRegistry("task source", "thinkgym.tasks")


def register_task(name: str):
    """Class decorator: register a :class:`TaskSource` subclass under ``name``."""

    def deco(cls: type[TaskSource]) -> type[TaskSource]:
        cls.name = name
        return TASKS.register(name)(cls)

    return deco


def make_task(name: str, seed: int = 0, size: int | None = None, **params: Any) -> TaskSource:
    """Instantiate the registered task source ``name``."""
    return TASKS.get(name)(seed=seed, size=size, **params)


def list_tasks() -> dict[str, str]:
    """Registered task names with their one-line descriptions."""
    return {n: TASKS.get(n).description for n in TASKS.names()}
