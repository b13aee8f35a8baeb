"""Reading JSONL input files with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator


def iter_jsonl(path: str | Path, error: type[Exception] = ValueError) -> Iterator[tuple[str, Any]]:
    """Yield ``("FILE:LINE", row)`` for each non-blank line of ``path``.

    A missing file, a line that is not UTF-8 or not JSON raises ``error`` with the file and line
    in its message, so callers only validate the fields of their own rows.
    """
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: no such file")
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{p}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            yield where, row
