"""A small name -> object registry shared by task sources, graders and envs.

Entry points let third-party packages add entries without importing them here; they are
loaded lazily the first time a registry is listed or looked up. Two providers of one name
are an error, never a silent override.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Plugin distributions to skip, comma-separated (``1`` or ``all``: every plugin): a way to run
#: while an installed plugin is broken, short of uninstalling it.
DISABLE_PLUGINS = "THINKGYM_DISABLE_PLUGINS"


def _skipped(dist: str) -> bool:
    names = {x.strip().lower() for x in os.environ.get(DISABLE_PLUGINS, "").split(",") if x.strip()}
    return bool(names & {"1", "all", dist.lower()})


class RegistryError(KeyError):
    """Unknown name or a name registered twice."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


def _one_line(e: BaseException) -> str:
    # The CLI reports a registry error as a single line.
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _initializing(module: str) -> bool:
    """Whether ``module`` (or its top-level package) is being imported right now."""
    for name in (module, module.split(".", 1)[0]):
        spec = getattr(sys.modules.get(name), "__spec__", None)
        if getattr(spec, "_initializing", False):
            return True
    return False


class Registry(Generic[T]):
    """Maps names to objects; ``group`` is the entry-point group scanned for plugins."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._items: dict[str, T] = {}
        self._origin: dict[str, str] = {}
        self._plugins_loaded = False
        self._plugin_error: RegistryError | None = None

    def add(self, name: str, obj: T, origin: str = "thinkgym") -> T:
        if not name or not isinstance(name, str):
            raise RegistryError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items and self._items[name] is not obj:
            raise RegistryError(
                f"{self.kind} {name!r} is registered twice: by {self._origin[name]} and by {origin}"
            )
        self._items[name] = obj
        self._origin[name] = origin
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(obj: T) -> T:
            origin = getattr(obj, "__module__", "thinkgym")
            return self.add(name, obj, origin=origin)

        return deco

    def load_plugins(self) -> None:
        """Import every entry point of ``group``; each may register on import or return an object.

        Plugins load once. If one fails (it raises on import, or claims a name already taken),
        the error is kept and raised again on every later listing or lookup: a registry missing
        a plugin, or holding a built-in where a plugin meant to override it, is never used
        silently.
        """
        if self._plugin_error is not None:
            raise RegistryError(str(self._plugin_error)) from self._plugin_error
        if self._plugins_loaded:
            return
        eps = list(metadata.entry_points(group=self.group))
        if any(_initializing(ep.value.split(":", 1)[0].strip()) for ep in eps):
            # Reached from inside a plugin's own import (it imported thinkgym.envs, which registers
            # the envs at once): its objects do not exist yet. Load at the next listing or lookup.
            return
        self._plugins_loaded = True
        for ep in eps:
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            if _skipped(dist):
                log.info("%s: plugin %s skipped (%s)", self.group, dist, DISABLE_PLUGINS)
                continue
            try:
                self._load_entry_point(ep)
            except RegistryError as e:
                self._plugin_error = RegistryError(f"{e} (to run without it: {DISABLE_PLUGINS}={dist})")
                raise self._plugin_error from e

    def _load_entry_point(self, ep: metadata.EntryPoint) -> None:
        dist = ep.dist.name if ep.dist is not None else "unknown distribution"
        where = f"plugin {dist} ({self.group}: {ep.name} = {ep.value})"
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - any import failure of third-party code
            raise RegistryError(f"{where} failed to load: {_one_line(e)}") from e
        if ep.name in self._items and self._items[ep.name] is obj:
            return
        if callable(obj) and getattr(obj, "__thinkgym_register__", False):
            try:
                obj()  # a hook that registers several entries itself
            except RegistryError:
                raise
            except Exception as e:  # noqa: BLE001
                raise RegistryError(f"{where} failed to register: {_one_line(e)}") from e
            return
        self.add(ep.name, obj, origin=f"plugin {dist} ({ep.value})")

    def get(self, name: str) -> T:
        # Always load plugins first, so a plugin that claims a built-in name is an error
        # on every lookup, not only when the registry happens to be listed.
        self.load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise RegistryError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def origin(self, name: str) -> str:
        self.get(name)
        return self._origin[name]

    def names(self) -> list[str]:
        self.load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
