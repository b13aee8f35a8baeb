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
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any, ClassVar, Iterator, TypedDict

from thinkgym._registry import Registry


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
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        if size is not None and (isinstance(size, bool) or not hasattr(size, "__index__")):
            raise TypeError(f"size must be an int or None, got {size!r}")  # int(2.5) would drop items silently
        self.size = self.default_size if size is None else size.__index__()
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.params = self.validate_params(params)

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check and fill in defaults for the source's knobs; unknown knobs are an error."""
        if not self.defaults:
            if params:
                raise TypeError(f"{type(self).__name__} takes no parameters, got {sorted(params)}")
            return {}
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: unknown parameter(s) {unknown}; known: {sorted(self.defaults)}"
            )
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
        if not isinstance(i, int) or isinstance(i, bool):
            raise TypeError(f"index must be an int, got {i!r}")
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"{self.name}: index {i} out of range (size {len(self)})")
        key = (type(self), self.item_key(i)) if self.cache_items else None
        if key is not None:
            with _ITEMS_LOCK:
                item = _ITEMS.get(key)
                if item is not None:
                    _ITEMS.move_to_end(key)
                    return copy.deepcopy(item)  # callers may edit their item
        item = self.generate(i, self.rng(i))
        item["metadata"].setdefault("grader", self.grader)
        item["metadata"].setdefault("source", self.name)
        item["metadata"].setdefault("index", i)
        if key is not None:
            with _ITEMS_LOCK:
                _ITEMS[key] = copy.deepcopy(item)
                if len(_ITEMS) > _ITEMS_MAX:
                    _ITEMS.popitem(last=False)
        return item

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[Item]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        p = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}(seed={self.seed}, size={self.size}{', ' if p else ''}{p})"


def format_solution(steps: list[str] | str, answer: Any) -> str:
    """A worked solution in the completion format the graders and SFT expect."""
    body = steps if isinstance(steps, str) else "\n".join(steps)
    return f"<think>\n{body}\n</think>\n<answer>{answer}</answer>"


TASKS: Registry[type[TaskSource]] = Registry("task source", "thinkgym.tasks")


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
