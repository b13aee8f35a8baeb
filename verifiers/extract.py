"""Answer extraction, kept separate from judging.

Policy (the defaults of :class:`ExtractConfig`):

* Only the final section counts: the text after the last ``</think>`` (any case). A ``<think>``
  that opens and never closes leaves no final section, so there is no answer.
* Answers come from channels: ``\\boxed{...}`` (nested braces handled, ``\\fbox`` too) and
  ``<answer>...</answer>``. No channel means no answer.
* Every candidate found is returned; deciding whether several candidates are "the same value"
  needs the judge (a math grader compares values), so extraction only flags them.
* An empty answer is no answer.

Extraction is linear in the text length and never calls sympy, so it is safe on any input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Words that join alternatives inside one answer ("41 or 42", "A and C").
_ALTERNATIVES_RE = re.compile(
    r"(?:\\text\{\s*(?:or|and)\s*\}|\\(?:lor|vee)(?![a-zA-Z])|\bor\b|\band/or\b)", re.IGNORECASE
)


@dataclass(frozen=True)
class ExtractConfig:
    """How the answer is found in a completion."""

    #: Grade only the text after the last ``</think>``; an unclosed ``<think>`` means no answer.
    final_section_only: bool = True
    #: Answer channels, tried in this order; all candidates of all channels are collected.
    channels: tuple[str, ...] = ("boxed", "answer_tag")
    #: LaTeX box commands treated as the ``boxed`` channel.
    box_commands: tuple[str, ...] = ("boxed", "fbox")
    #: Use only the last box / last answer tag instead of all of them (lenient; off by default
    #: because a box per candidate is the cheapest way to hedge).
    last_only: bool = False
    #: Answers longer than this are rejected (no real math answer is this long).
    max_answer_chars: int = 2000
    #: An answer joining alternatives with "or" / "\\lor" counts as several candidates
    #: (``a \\pm b`` is not a hedge: the math grader reads it as the two values it denotes).
    split_alternatives: bool = True


DEFAULT_EXTRACT = ExtractConfig()


@dataclass
class Extraction:
    """The answers found in a completion, or why there are none."""

    answers: list[str] = field(default_factory=list)
    reason: str = ""
    #: The answer text hedges between alternatives ("41 or 42").
    hedged: bool = False

    @property
    def ok(self) -> bool:
        return bool(self.answers)

    @property
    def answer(self) -> str | None:
        """The single answer when exactly one distinct candidate string was found."""
        distinct = {a for a in self.answers}
        return self.answers[-1] if len(distinct) == 1 else None

    def joined(self) -> str | None:
        if not self.answers:
            return None
        return self.answers[0] if len(self.answers) == 1 else " ; ".join(self.answers)


# Case-insensitive like the answer tags and the format grader: with an exact-case search,
# "<think>a</THINK> \boxed{5}" read as thinking that never closed while the format grader passed
# it, and "<THINK>\boxed{4}</THINK>" had the box inside its think block graded.
_THINK_OPEN_RE = re.compile(re.escape(THINK_OPEN), re.IGNORECASE)
_THINK_CLOSE_RE = re.compile(re.escape(THINK_CLOSE), re.IGNORECASE)


def assistant_turn(completion: str, think_in_prompt: bool) -> str:
    """The text to grade: with a template that opens ``<think>`` in the prompt (R1-style, Qwen3
    thinking) the assistant turn is ``<think>`` + the completion. Graded without it, a
    well-formed reply fails the format grader, and one that never closes its thinking has its
    thinking graded as the answer."""
    if think_in_prompt and not completion.lstrip().lower().startswith(THINK_OPEN):
        return THINK_OPEN + completion
    return completion


def final_section(text: str, cfg: ExtractConfig = DEFAULT_EXTRACT) -> str | None:
    """The graded part of ``text``: after the last ``</think>``; ``None`` if thinking never ends."""
    if not cfg.final_section_only:
        return text
    close = None
    for close in _THINK_CLOSE_RE.finditer(text):
        pass
    start = close.end() if close is not None else 0
    # A think block reopened after the last close never ends either: "</think><think>\boxed{41}"
    # had the box in its unfinished thinking graded as the answer.
    if _THINK_OPEN_RE.search(text, start):
        return None
    return text[start:]


def find_boxed(text: str, commands: tuple[str, ...] = ("boxed", "fbox")) -> list[str]:
    """Contents of every ``\\boxed{...}`` (balanced braces) in order; unclosed boxes are skipped."""
    return [text[i:j] for i, j in boxed_spans(text, commands)]


# What may follow a brace-less box's token: the end, a space, closing punctuation (not the
# decimal point of "3.5"), a closing tag or the next command.
_BARE_END = r"(?=$|\s|[,;:!?)\]$<\\]|\.(?!\d))"


def boxed_spans(text: str, commands: tuple[str, ...] = ("boxed", "fbox")) -> list[tuple[int, int]]:
    """``(start, end)`` of every box's contents: ``text[end]`` is a braced box's closing brace.

    A box without braces takes one token, as in TeX: ``\\boxed 5`` is ``5``. Only a bare digit
    run or a single letter counts (``\\boxed 3.5`` would box just the ``3`` in TeX, so it is
    skipped rather than misread); ``end`` is then just past the token.
    """
    out: list[tuple[int, int]] = []
    names = "|".join(re.escape(c) for c in commands)
    pat = re.compile(r"\\(?:%s)(?:\s*\{|\s*(\d+)%s|\s+([A-Za-z])%s)" % (names, _BARE_END, _BARE_END))
    pos = 0
    n = len(text)
    while True:
        m = pat.search(text, pos)
        if m is None:
            break
        bare = m.lastindex
        if bare:
            out.append((m.start(bare), m.end(bare)))
            pos = m.end()
            continue
        i = m.end()
        depth = 1
        j = i
        while j < n:
            c = text[j]
            if c == "\\" and j + 1 < n:
                j += 2  # skip escaped chars such as \{ and \}
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        if depth != 0:
            break  # unclosed: nothing after it can be a complete box either
        out.append((i, j))
        pos = j + 1
    return out


def find_answer_tags(text: str) -> list[str]:
    """Contents of every ``<answer>...</answer>`` pair (see :func:`find_tag_contents`)."""
    return find_tag_contents(text, "answer")


def find_tag_contents(text: str, tag: str) -> list[str]:
    """Contents of every ``<tag>...</tag>`` pair (case-insensitive), in one linear pass."""
    return [text[i:j] for i, j in tag_spans(text, tag)]


def tag_spans(text: str, tag: str) -> list[tuple[int, int]]:
    """``(start, end)`` of the contents of every ``<tag>...</tag>`` pair (case-insensitive).

    A regex ``<tag>(.*?)</tag>`` rescans the rest of the text from every unclosed ``<tag>``,
    which is quadratic: 20k unclosed tags took half a minute.
    """
    # Match case-insensitively on ``text`` itself: indices found in ``text.lower()`` do not
    # index ``text`` once a character lowercases to several ("İ" becomes two code points).
    open_ = re.compile(re.escape(f"<{tag}>"), re.IGNORECASE)
    close = re.compile(re.escape(f"</{tag}>"), re.IGNORECASE)
    out: list[tuple[int, int]] = []
    pos = 0
    while True:
        i = open_.search(text, pos)
        if i is None:
            break
        j = close.search(text, i.end())
        if j is None:
            break  # no close anywhere after: no later open can close either
        out.append((i.end(), j.start()))
        pos = j.end()
    return out


def _clean(s: str) -> str:
    s = s.strip()
    # Display-math wrappers around an answer carry no meaning.
    for a, b in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(a) + len(b) and s.startswith(a) and s.endswith(b):
            s = s[len(a) : len(s) - len(b)].strip()
    return s


_INEQUALITY_RE = re.compile(r"<|>|\\(?:le|ge|leq|geq|lt|gt|leqslant|geqslant)(?![a-zA-Z])|≤|≥")


def split_alternatives(answer: str) -> list[str] | None:
    """``["41", "42"]`` for ``"41 or 42"``; ``None`` when the answer does not hedge.

    Inequalities joined by "or" (``x < 1 \\text{ or } x > 3``) describe one set, not a hedge.
    """
    if not _ALTERNATIVES_RE.search(answer):
        return None
    parts = [p.strip(" ,;") for p in _ALTERNATIVES_RE.split(answer)]
    parts = [p for p in parts if p]
    if len(parts) > 1 and all(_INEQUALITY_RE.search(p) for p in parts):
        return None
    return parts or None


def extract(text: str, cfg: ExtractConfig = DEFAULT_EXTRACT) -> Extraction:
    """All answer candidates in the final section of ``text``."""
    if not isinstance(text, str):
        return Extraction(reason=f"completion is {type(text).__name__}, not str")
    section = final_section(text, cfg)
    if section is None:
        return Extraction(reason="thinking never closed: no final answer")
    found: list[str] = []
    box_spans = set(boxed_spans(section, cfg.box_commands)) if "boxed" in cfg.channels else set()
    for ch in cfg.channels:
        if ch == "boxed":
            boxes = [section[i:j] for i, j in sorted(box_spans)]
            found += boxes[-1:] if cfg.last_only else boxes
        elif ch == "answer_tag":
            tags: list[str] = []
            for ti, tj in tag_spans(section, "answer"):
                t = section[ti:tj]
                inner = boxed_spans(t, cfg.box_commands)
                if not inner:
                    tags.append(t)
                # "<answer>so \\boxed{3}</answer>": the box is the answer, collected by the box
                # channel. A box that channel never reached counts here: after an unclosed
                # "\\boxed{" before the tag, "<answer>\\boxed{5}</answer>" had no answer at all
                # while the format grader passed it.
                tags += [t[i:j] for i, j in inner if (ti + i, ti + j) not in box_spans]
            found += tags[-1:] if cfg.last_only else tags
        else:
            raise ValueError(f"unknown answer channel {ch!r}; known: boxed, answer_tag")
    if not found:
        return Extraction(reason="no answer channel (\\boxed{} or <answer>) in the final section")
    answers = [_clean(a) for a in found]
    if any(len(a) > cfg.max_answer_chars for a in answers):
        return Extraction(reason=f"answer longer than {cfg.max_answer_chars} characters")
    answers = [a for a in answers if a]
    if not answers:
        return Extraction(reason="empty answer")
    hedged = False
    if cfg.split_alternatives:
        split: list[str] = []
        for a in answers:
            alts = split_alternatives(a)
            hedged = hedged or bool(alts and len(alts) > 1)
            split += alts if alts else [a]
        answers = split
    return Extraction(answers=answers, hedged=hedged)
