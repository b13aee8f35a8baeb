"""Train/eval contamination gate: n-gram overlap on normalized text.

Text is normalized by NFKC, case-folding, dropping invisible format characters and thousands
separators (``1,000`` is ``1000``), turning every character that is neither a letter, a digit
nor whitespace into a space (so ``3+4`` becomes ``3 4``, not ``34``) and collapsing whitespace.
An eval item is contaminated when one of its n-grams (default 13 tokens, as in the GPT-3 and
Llama decontamination reports) also occurs in some training item. A text with fewer than ``n``
tokens has a single "gram": its whole normalized text with its arithmetic operators kept, so
short procedural questions match only when identical after normalization.

Train n-grams are indexed once in a dict (gram -> first train index), so checking is
O(total tokens) rather than O(train x eval).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable

log = logging.getLogger("thinkgym.tasks.contamination")


class ContaminationError(RuntimeError):
    """The eval set overlaps the training set above the allowed rate."""

    def __init__(self, message: str, report: "ContaminationReport") -> None:
        super().__init__(message)
        self.report = report


def _is_word_char(c: str) -> bool:
    return c.isalnum() or unicodedata.category(c) == "Mn"  # keep combining marks with their letter


# A number written with thousands separators is the same number: "1,000" reads as "1000".
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# Operators kept in texts compared whole (see ngrams), with their common spellings merged.
_OPS = frozenset("+-*/^=<>≤≥≠±")
_OP_ALIASES = str.maketrans({"−": "-", "×": "*", "·": "*", "⋅": "*", "∗": "*", "÷": "/", "⁄": "/", "∕": "/"})


def _prepare(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    if not text.isascii():
        # Zero-width spaces, soft hyphens and the like are invisible: as spaces they would split
        # a word in two, so a copy with them would no longer match its original.
        text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return _THOUSANDS.sub("", text).casefold()


def normalize(text: str, keep_ops: bool = False) -> str:
    """Case-folded; punctuation and symbols become spaces; whitespace collapsed.

    With ``keep_ops`` the arithmetic operators and relations stay, each as its own token: a
    hyphen or slash between two letters ("well-known", "and/or") and runs of ``*`` (Markdown
    bold) are still spaces.
    """
    text = _prepare(text)
    if not keep_ops:
        return " ".join("".join(c if _is_word_char(c) else " " for c in text).split())
    text = text.translate(_OP_ALIASES)
    out = []
    for k, c in enumerate(text):
        if _is_word_char(c):
            out.append(c)
        elif c not in _OPS:
            out.append(" ")
        elif c in "-/" and 0 < k < len(text) - 1 and text[k - 1].isalpha() and text[k + 1].isalpha():
            out.append(" ")
        elif c == "*" and "**" in text[max(k - 1, 0) : k + 2]:
            out.append(" ")
        else:
            out.append(f" {c} ")
    return " ".join("".join(out).split())


def ngrams(text: str, n: int = 13) -> set[str]:
    """The set of word n-grams of ``normalize(text)``, each a space-joined string.

    A text with fewer than ``n`` tokens (but at least one) yields its whole normalized text as
    its single gram; an empty text yields none.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {n!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    toks = normalize(text).split()
    if not toks:
        return set()
    if len(toks) < n:
        # Compared whole, a short text keeps its operators: "What is 2+3?" and "What is 2*3?"
        # are different questions, and procedural tasks have many of them.
        return {normalize(text, keep_ops=True)}
    return {" ".join(toks[i : i + n]) for i in range(len(toks) - n + 1)}


def _text_of(x: Any) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, dict) and "question" in x:
        return str(x["question"])
    raise TypeError(f"contamination: expected a str or an item with a 'question', got {type(x).__name__}")


#: A task source longer than this is refused (procedural sources default to a million items);
#: build it with ``size=N`` or pass an explicit iterable of items.
MAX_SOURCE_ITEMS = 200_000


def _texts(src: Any) -> Iterable[str]:
    from thinkgym.tasks.base import TaskSource

    if isinstance(src, str):
        raise TypeError("contamination: pass a task source or an iterable of items/strings, not a single str")
    if isinstance(src, TaskSource) and len(src) > MAX_SOURCE_ITEMS:
        raise ValueError(
            f"contamination: task source {src!r} has {len(src)} items; build it with size=N "
            f"(N <= {MAX_SOURCE_ITEMS}) or pass an iterable of items"
        )
    for x in src:
        yield _text_of(x)


@dataclass
class ContaminationReport:
    n: int
    eval_items: int
    train_items: int = 0
    #: (eval_index, train_index, shared_ngram) for each contaminated eval item (first match).
    contaminated: list[tuple[int, int, str]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.contaminated) / self.eval_items if self.eval_items else 0.0

    def summary(self, examples: int = 5) -> str:
        head = (
            f"{len(self.contaminated)} of {self.eval_items} eval items ({self.rate:.2%}) share a "
            f"{self.n}-gram with the {self.train_items} training items"
        )
        lines = [head]
        for e, t, g in self.contaminated[:examples]:
            lines.append(f"  eval #{e} ~ train #{t}: {g!r}")
        if examples and len(self.contaminated) > examples:
            lines.append(f"  ... and {len(self.contaminated) - examples} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "eval_items": self.eval_items,
            "train_items": self.train_items,
            "rate": self.rate,
            "contaminated": [list(c) for c in self.contaminated],
        }


def contamination_report(train: Any, eval: Any, n: int = 13) -> ContaminationReport:  # noqa: A002
    """Which eval items share an ``n``-gram with any training item.

    ``train`` and ``eval`` are task sources (iterate a bounded one, e.g. ``make_task(..., size=10_000)``)
    or iterables of items or strings.
    """
    ngrams("", n)  # a bad n fails here, not only once a text has been read
    index: dict[str, int] = {}
    n_train = 0
    for ti, text in enumerate(_texts(train)):
        n_train += 1
        for g in ngrams(text, n):
            index.setdefault(g, ti)
    report = ContaminationReport(n=n, eval_items=0, train_items=n_train)
    for ei, text in enumerate(_texts(eval)):
        report.eval_items += 1
        # Sorted so the reported gram does not depend on set order (PYTHONHASHSEED).
        for g in sorted(ngrams(text, n)):
            ti = index.get(g)
            if ti is not None:
                report.contaminated.append((ei, ti, g))
                break
    return report


def check_contamination(
    train: Any,
    eval: Any,  # noqa: A002
    *,
    n: int = 13,
    threshold: float = 0.0,
    on_fail: str = "error",
) -> ContaminationReport:
    """Report overlap and refuse (``on_fail="error"``) or warn when ``rate > threshold``."""
    if on_fail not in ("error", "warn"):
        raise ValueError(f"on_fail must be 'error' or 'warn', got {on_fail!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    report = contamination_report(train, eval, n=n)
    if report.rate > threshold:
        msg = f"contamination above threshold {threshold:.2%}: {report.summary()}"
        if on_fail == "error":
            raise ContaminationError(msg, report)
        log.warning(msg)
    return report
