"""Grader ``format``: rewards the ``<think>…</think>`` + answer structure and nothing else.

A completion passes when it has exactly one non-empty think block at the start, then exactly one
answer (one ``\\boxed{}`` or one ``<answer>…</answer>``) and nothing substantive after it.
Duplicated or interleaved tags, an empty think block, an answer that typesets as nothing
(``\\boxed{{}}``, ``\\boxed{\\ }``, filler characters) or text after the answer fail. Each check is
reported in ``Grade.components`` so a rubric can log them.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from thinkgym.verifiers.base import Grade, config_arg, register_grader
from thinkgym.verifiers.extract import boxed_spans

# Version 2: invisible characters before <think> (a BOM) no longer count as text before it.
VERSION = "2"


@dataclass(frozen=True)
class FormatConfig:
    """Knobs of the ``format`` grader."""

    #: The chat template already opened ``<think>`` in the prompt, so the completion starts
    #: inside the think block and must contain ``</think>`` but no ``<think>``.
    think_in_prompt: bool = False
    #: Characters of reasoning the think block needs (after stripping whitespace).
    min_think_chars: int = 1
    #: Allow text after the answer (after ``</answer>`` or the last box); punctuation,
    #: ``$`` and ``\\]`` are always allowed.
    allow_text_after_answer: bool = False
    #: Allow text before ``<think>``.
    allow_text_before_think: bool = False
    #: Allow several boxes/answer tags (graded by the answer grader, which rejects differing ones).
    allow_multiple_answers: bool = False
    #: Score = fraction of checks passed instead of all-or-nothing.
    partial: bool = False


DEFAULT_FORMAT = FormatConfig()
_TAG_RE = re.compile(r"</?(?:think|answer)>", re.IGNORECASE)
_TRIVIAL_TAIL = re.compile(r"^[\s.,;:!$)\]\\]*$")


_INVISIBLE = re.compile(r"[\s\u200b-\u200f\u2060-\u2064\ufeff\u00ad]+")
# Letters and symbols that render as nothing: Hangul fillers, braille blank, grapheme joiner,
# variation selectors. Their categories (Lo, So, Mn) do not give them away.
_BLANK_CHARS = re.compile("[\x00-\x1f\x7f\u115f\u1160\u3164\uffa0\u2800\u034f\ufe00-\ufe0f\U000e0100-\U000e01ef]")
_BLANK_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})
# LaTeX that typesets as space or nothing, and wrappers that are nothing without an argument.
_LATEX_SPACE = re.compile(
    r"\\\\|\\[ ,;:!>]|~"
    r"|\\(?:q?quad|(?:en|thin|med|thick|negthin|negmed|negthick)?space)(?![a-zA-Z])"
    r"|\\(?:[hv]space\*?|mspace|[hv]?phantom)\s*\{[^{}]*\}"
    r"|\\(?:[hv]skip|m?kern|mskip)\s*-?[\d.]+\s*[a-z]{2}|\\(?:left|right)\."
    r"|\\(?:h?fill?|relax|strut|null|empty)(?![a-zA-Z])"
)
# A box is a wrapper too: "\boxed{\boxed{}}" and "<answer>\boxed{}</answer>" typeset an empty box.
_LATEX_WRAPPER = re.compile(
    r"\\(?:text[a-z]*|math[a-z]*|mbox|hbox|operatorname|displaystyle|textstyle"
    r"|boxed|fbox|framebox|boldsymbol|bm|underline|overline|smash)(?![a-zA-Z])"
)
_GROUPING = re.compile(r"(?<!\\)[{}$]")  # braces and math delimiters; \{ and \$ are content


def _visible(s: str) -> str:
    """``s`` without whitespace, invisible format characters (zero-width spaces, BOM) and blank
    characters such as the Hangul filler."""
    s = _BLANK_CHARS.sub("", _INVISIBLE.sub("", s))
    if s.isascii():
        return s
    return "".join(ch for ch in s if unicodedata.category(ch) not in _BLANK_CATEGORIES)


def _blank_answer(s: str) -> bool:
    """True when the answer typesets as nothing: ``{}``, ``\\ ``, ``\\text{ }``, fillers."""
    s = _LATEX_WRAPPER.sub("", _LATEX_SPACE.sub("", s))
    return not _visible(_GROUPING.sub("", s))


def _after_answer_ok(tail: str) -> bool:
    return bool(_TRIVIAL_TAIL.match(tail.replace("\\]", "").replace("\\)", "")))


def check_format(completion: str, cfg: FormatConfig = DEFAULT_FORMAT) -> Grade:
    """Check the structure of ``completion``; see :class:`FormatConfig`."""
    checks: dict[str, float] = {}
    why: list[str] = []

    def check(name: str, ok: bool, msg: str) -> None:
        checks[name] = 1.0 if ok else 0.0
        if not ok and msg:
            why.append(msg)

    text = completion if isinstance(completion, str) else ""
    tags = [(m.group(0).lower(), m.start(), m.end()) for m in _TAG_RE.finditer(text)]
    opens = [t for t in tags if t[0] == "<think>"]
    closes = [t for t in tags if t[0] == "</think>"]
    if cfg.think_in_prompt:
        check("think_tags", not opens and len(closes) == 1, "expected exactly one </think> and no <think>")
        start = 0
    else:
        check("think_tags", len(opens) == 1 and len(closes) == 1 and opens[0][1] < closes[0][1],
              "expected exactly one <think> followed by one </think>")
        start = opens[0][2] if opens else 0
        before = text[: opens[0][1]] if opens else ""
        # Invisible text (a BOM, zero-width spaces) is no text, as in the think block and the answer.
        check("think_first", bool(opens) and (cfg.allow_text_before_think or not _visible(before)),
              "text before <think>")
    end = closes[-1][1] if closes else len(text)
    think = text[start:end] if closes else ""
    check("think_nonempty", len(_visible(think)) >= cfg.min_think_chars, "empty think block")
    final = text[closes[-1][2] :] if closes else ""
    a_open = [t for t in tags if t[0] == "<answer>" and t[1] >= (closes[-1][2] if closes else 0)]
    a_close = [t for t in tags if t[0] == "</answer>" and t[1] >= (closes[-1][2] if closes else 0)]
    stray = [t for t in tags if t[0] in ("<answer>", "</answer>") and closes and t[1] < closes[-1][1]]
    # Checks that would pass vacuously (no think block, no answer) fail, so partial credit
    # counts only structure that is there.
    check("no_interleaving", bool(closes) and not stray, "answer tags inside the think block")
    f0 = closes[-1][2] if closes else 0
    spans = [(f0 + i, f0 + j) for i, j in boxed_spans(final)]
    pairs = list(zip(a_open, a_close))
    # A box outside the answer tags, or a second box inside one, is another answer: extraction
    # collects them all, so "\boxed{42}<answer>41</answer>" would otherwise pass as one answer.
    starts = [o[2] for o, _ in pairs]
    inside = [0] * len(pairs)
    outside = []
    for i, j in spans:
        k = bisect.bisect_right(starts, i) - 1  # the last tag opened before the box (linear overall)
        if k >= 0 and j <= pairs[k][1][1]:
            inside[k] += 1
        else:
            outside.append((i, j))
    # A tag holding boxes has its boxes as answers (as extraction reads it): each box must show
    # something, or "<answer>\\boxed{} 5</answer>" passed with an empty extracted answer.
    contents = [text[o[2] : c[1]] for (o, c), k in zip(pairs, inside) if not k] + [text[i:j] for i, j in spans]
    n_answers = sum(max(1, k) for k in inside) + len(outside) + max(0, len(a_open) - len(pairs))
    tags_ok = len(a_open) == len(a_close) and all(o[1] < c[1] for o, c in zip(a_open, a_close))
    check("answer", n_answers >= 1 and tags_ok and not any(_blank_answer(c) for c in contents),
          "no well-formed answer (\\boxed{} or <answer>) after </think>" if n_answers == 0 or not tags_ok
          else "empty answer")
    check("single_answer", n_answers >= 1 and (cfg.allow_multiple_answers or n_answers <= 1),
          "more than one answer" if n_answers > 1 else "")
    ends = [c[2] for c in a_close] + [j + 1 for _, j in spans]  # a box ends past its closing brace
    tail = text[max(ends) :] if ends else None
    check("nothing_after_answer", tail is not None and (cfg.allow_text_after_answer or _after_answer_ok(tail)),
          "text after the answer" if tail is not None else "")
    if cfg.partial:
        score = sum(checks.values()) / len(checks)
    else:
        score = 1.0 if all(v == 1.0 for v in checks.values()) else 0.0
    return Grade(score, reason="; ".join(why) or "well-formed", components=dict(checks))


@register_grader("format", version=VERSION, kwargs={"format_config": config_arg(FormatConfig)})
def grade_format(completion: str, gold: Any = None, **meta: Any) -> Grade:
    """<think>…</think> then exactly one answer and nothing after it (gold is ignored)."""
    cfg = meta.get("format_config") or DEFAULT_FORMAT
    if isinstance(cfg, dict):  # from YAML / JSON
        cfg = FormatConfig(**cfg)
    return check_format(completion, cfg)
