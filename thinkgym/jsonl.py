"""Reading and writing JSONL files; read errors name the file and line."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any, BinaryIO, Iterator

# A lone surrogate (from a "\ud800" escape) is valid JSON but cannot be encoded as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Deepest nesting of arrays and objects a row may have. json itself reads about 1,000 levels,
#: but a row of 500 then crashed pickle (sending it to a grader worker) and json.dumps with a
#: RecursionError; real data is never nested anywhere near this deep.
MAX_DEPTH = 100


def iter_jsonl(path: str | Path | BinaryIO, error: type[Exception] = ValueError) -> Iterator[tuple[str, Any]]:
    """Yield ``("FILE:LINE", row)`` for each non-blank line of ``path``.

    A missing file, a line that is not UTF-8 or not JSON (or JSON that Python refuses: an integer
    too long to convert, a number beyond a float's range such as ``1e999``, nesting deeper than
    :data:`MAX_DEPTH`) raises ``error`` with the file, line and field in its message, so callers
    only validate the fields of their own rows. Strings may hold lone surrogates (a ``\\ud800``
    escape is valid JSON); :func:`dumps_line` writes them back unchanged. ``path`` may also be an
    open binary stream (standard input), named ``<stdin>``.
    """
    if hasattr(path, "read"):
        yield from _iter_lines(path, "<stdin>", error)  # type: ignore[arg-type]
        return
    p = Path(path)  # type: ignore[arg-type]
    if not p.is_file():
        raise error(f"{p}: no such file")
    with p.open("rb") as f:
        yield from _iter_lines(f, str(p), error)


def _iter_lines(f: BinaryIO, name: str, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    for lineno, raw in enumerate(f, 1):
        where = f"{name}:{lineno}"
        try:
            # A byte-order mark (editors on Windows write one) starts the file, not the row.
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None
        if not line.strip():
            continue
        yield where, _loads(line, where, error)


class _NotJSON(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of two equal keys silently: {"answer": "5", ..., "answer": "6"}.
    out = dict(pairs)
    if len(out) < len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _NotJSON(f"key {dup!r} appears twice in one object")
    return out


def _no_constant(token: str) -> Any:
    # Python's json reads NaN / Infinity, which JSON does not have: a NaN gold would equal a NaN answer.
    raise _NotJSON(token)


class _Overflow:
    """Stands for a number literal too large for a float (``1e999``) until its place is named:
    json would read it as inf, which no JSON writer can write back."""

    __slots__ = ("literal",)

    def __init__(self, literal: str) -> None:
        self.literal = literal


def _overflow_at(obj: Any) -> tuple[str, str] | None:
    """``(place, literal)`` of the first number too large for a float in ``obj``, in file order."""
    stack: list[tuple[Any, str]] = [(obj, "")]
    while stack:  # iterative, as _too_deep
        o, where = stack.pop()
        if isinstance(o, _Overflow):
            return where, o.literal
        if isinstance(o, dict):
            items = [(f"{where}.{k}" if where else str(k), v) for k, v in o.items()]
        elif isinstance(o, list):
            items = [(f"{where}[{i}]", v) for i, v in enumerate(o)]
        else:
            continue
        stack.extend((v, w) for w, v in reversed(items))
    return None


def _too_deep(obj: Any) -> bool:
    stack = [(obj, 1)]
    while stack:  # iterative: the point is not to recurse on hostile input
        o, d = stack.pop()
        if isinstance(o, dict):
            o = o.values()
        elif not isinstance(o, list):
            continue
        if d > MAX_DEPTH:
            return True
        stack.extend((x, d + 1) for x in o if isinstance(x, (list, dict)))
    return False


def _loads(line: str, where: str, error: type[Exception]) -> Any:
    overflows: list[str] = []

    def parse_float(literal: str) -> Any:
        x = float(literal)
        if math.isfinite(x):
            return x
        overflows.append(literal)
        return _Overflow(literal)

    try:
        obj = json.loads(line, parse_constant=_no_constant, parse_float=parse_float, object_pairs_hook=_unique_keys)
        # Counting brackets (strings included) is a cheap bound: most lines skip the walk.
        if line.count("[") + line.count("{") > MAX_DEPTH and _too_deep(obj):
            raise RecursionError
    except _NotJSON as e:
        why = str(e) if " " in str(e) else f"{e} is not a JSON value; write it as a string"
        raise error(f"{where}: invalid JSON ({why})") from None
    except json.JSONDecodeError as e:
        raise error(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply (more than {MAX_DEPTH} levels)") from None
    except ValueError:
        # Python refuses to convert integer literals past this many digits (a DoS guard).
        limit = sys.get_int_max_str_digits()
        raise error(f"{where}: an integer with more than {limit} digits; write it as a string") from None
    if overflows:
        place, literal = _overflow_at(obj) or ("", overflows[0])
        field = f"field {place!r}: " if place else ""
        raise error(f"{where}: {field}number {literal} is out of range (beyond about 1.8e308); "
                    "write it as a string")
    return obj


def dumps_line(obj: Any) -> str:
    """One JSONL line (with the newline), UTF-8 safe, that :func:`iter_jsonl` reads back as ``obj``.

    Non-ASCII text stays readable; only lone surrogates are written as ``\\uXXXX`` escapes, which
    is exactly how they were read, so no row is lost to an encoding error. NaN and infinities,
    which JSON has no spelling for, raise ``ValueError`` rather than write a line no reader takes.
    """
    # allow_nan=False: NaN and Infinity are not JSON, and iter_jsonl would refuse the line.
    s = json.dumps(obj, ensure_ascii=False, default=str, allow_nan=False)
    # json.dumps puts raw characters only inside string literals, where an escape means the same.
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", s) + "\n"
