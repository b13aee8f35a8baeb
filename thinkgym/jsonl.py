"""Reading and writing JSONL files; read errors name the file and line."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Iterator

# A lone surrogate (from a "\ud800" escape) is valid JSON but cannot be encoded as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


def iter_jsonl(path: str | Path, error: type[Exception] = ValueError) -> Iterator[tuple[str, Any]]:
    """Yield ``("FILE:LINE", row)`` for each non-blank line of ``path``.

    A missing file, a line that is not UTF-8 or not JSON (or JSON that Python refuses: an integer
    too long to convert, nesting too deep) raises ``error`` with the file and line in its message,
    so callers only validate the fields of their own rows. Strings may hold lone surrogates (a
    ``\\ud800`` escape is valid JSON); :func:`dumps_line` writes them back unchanged.
    """
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: no such file")
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{p}:{lineno}"
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


def _loads(line: str, where: str, error: type[Exception]) -> Any:
    try:
        return json.loads(line, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except _NotJSON as e:
        why = str(e) if " " in str(e) else f"{e} is not a JSON value; write it as a string"
        raise error(f"{where}: invalid JSON ({why})") from None
    except json.JSONDecodeError as e:
        raise error(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply") from None
    except ValueError:
        # Python refuses to convert integer literals past this many digits (a DoS guard).
        limit = sys.get_int_max_str_digits()
        raise error(f"{where}: an integer with more than {limit} digits; write it as a string") from None


def dumps_line(obj: Any) -> str:
    """One JSONL line (with the newline), UTF-8 safe, that :func:`iter_jsonl` reads back as ``obj``.

    Non-ASCII text stays readable; only lone surrogates are written as ``\\uXXXX`` escapes, which
    is exactly how they were read, so no row is lost to an encoding error.
    """
    s = json.dumps(obj, ensure_ascii=False, default=str)
    # json.dumps puts raw characters only inside string literals, where an escape means the same.
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", s) + "\n"
