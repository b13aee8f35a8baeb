"""Grader ``math``: exact mathematical equivalence of the extracted answer and the gold answer.

Order of checks, cheapest first:

1. string identity after normalisation (spacing, ``\\dfrac``, Unicode minus, units, ``x =``);
2. exact rational fast path for integers, decimals, fractions, scientific notation, thousands
   separators, repeating decimals and percentages (no sympy, microseconds);
3. structure at the string level: ordered tuples/intervals element by element, ``\\{...\\}`` sets
   and multi-part answers as unordered collections;
4. sympy (``latex2sympy2_extended`` parses the LaTeX) for everything else. The sympy step runs in
   a worker process of :mod:`thinkgym.verifiers.pool` under a hard time budget, so no input can
   hang the caller; a step that runs out of budget gives ``score=None``. An answer nested deeper
   than :data:`MAX_NESTING` never gets there: it is unreadable, a plain 0. So is one that needs
   a number past :data:`MAX_DIGITS` digits (``9^{9^{9^9}}``) or a sum past :data:`MAX_TERMS`
   terms when the answer key needs neither: found on the unevaluated parse, before sympy
   computes anything, so such an answer cannot buy ``score=None`` (no penalty) for itself.

Decimals are exact: ``0.33`` is 33/100, never 1/3, and ``6.28`` is not ``2\\pi``. Only a gold
given as a Python float is known to a few units in the last place (:data:`FLOAT_GOLD_ULPS`):
``0.3`` equals gold ``0.1 + 0.2``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import math
import numbers
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from thinkgym.verifiers.base import Grade, config_arg, register_grader, seconds_arg
from thinkgym.verifiers.extract import DEFAULT_EXTRACT, ExtractConfig, extract

# Version 3: a NaN gold is a data error (an answer "nan" scored 1.0); an infinite gold is
# \infty (it was "inf", which no answer equalled); numpy number golds are read as numbers.
VERSION = "3"


@dataclass(frozen=True)
class MathConfig:
    """Knobs of the ``math`` grader."""

    #: Where the answer is found in the completion.
    extract: ExtractConfig = field(default_factory=lambda: DEFAULT_EXTRACT)
    #: Hard budget in seconds for all sympy steps of one item together (a pool worker that runs
    #: past it is killed, see ``pool``).
    timeout_s: float = 5.0
    #: ``50\\%`` equals both 50 and 0.5 (an explicit percent sign is unambiguous); bare 0.5 never
    #: equals gold 50.
    percent_either_scale: bool = True
    #: Accept ``x = 3`` (a single variable assigned) for gold ``3``.
    allow_assignment: bool = True
    #: Run the sympy step in a pool worker under ``timeout_s``. ``False`` runs it inline with no
    #: budget: only for trusted inputs and single-core benchmarks.
    isolate: bool = True


DEFAULT_MATH = MathConfig()

# --------------------------------------------------------------------------- normalisation

_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u2012": "-", "\u00d7": "\\times ", "\u22c5": "\\cdot ",
    "\u00b7": "\\cdot ", "\u03c0": "\\pi ", "\u221e": "\\infty ", "\u221a": "\\sqrt", "\u00a0": " ",
    "\u2009": " ", "\u202f": " ", "\u00b0": "^\\circ", "\u00bd": "\\frac{1}{2}", "\u00bc": "\\frac{1}{4}",
    "\u00be": "\\frac{3}{4}", "\u2205": "\\emptyset ", "\\varnothing": "\\emptyset", "\u00b1": "\\pm ",
    "\u2213": "\\mp ",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
_DROP_RE = re.compile(
    r"\\(?:left|right|displaystyle|textstyle|big|Big|bigg|Bigg)(?![a-zA-Z])|\\[!;:]|\\q?quad\b|\\mathrm\{\s*\}"
)
_THOUSANDS_THIN = re.compile(r"(?<=\d)(?:\\,|\{,\}|\\ |~)(?=\d{3}(?!\d))")
_TEXT_CMD = r"\\(?:text|textrm|textbf|textit|mathrm|mathbf|mbox|operatorname)"
_TRAILING_UNIT = re.compile(r"(?<=[\d}).])(?:\s*" + _TEXT_CMD + r"\{[^{}]*\}(?:\^\{?\d\}?)?)+\s*$")
# Digits in a text group glued to a number are part of it: "1\text{2}" reads 12, "5\mathrm{.5}" 5.5.
_GLUED_DIGITS = re.compile(r"(?<=[\d.])" + _TEXT_CMD + r"\{([.,]?\d+(?:[.,]\d+)*)\}")
# What a unit written as text can contain: words, "/", powers and abbreviation dots ("cm",
# " square meters", "m/s^2", "sq. ft"). No digits or punctuation that can change the value.
_UNIT_WORD = r"[A-Za-z]+\.?(?:\^\{?-?\d\}?)?"
_UNIT_TEXT = re.compile(r"\s*(?:" + _UNIT_WORD + r"(?:(?:\s*/\s*|\s+)" + _UNIT_WORD + r")*)?\s*")
_WHOLE_TEXT = re.compile(r"^" + _TEXT_CMD + r"\{([^{}]*)\}$")
_PERCENT_WORD = re.compile(
    r"(?<=\d)\s*(?:" + _TEXT_CMD + r"\{\s*(?:percent|\\?%)\s*\}|percent)\s*$", re.IGNORECASE
)
_CONTROL_SPACE = re.compile(r"(?<!\\)\\ ")
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\degree\b")
# "x = 3", "x_1 = 3", "f(x) = 2x", "x \\in [1, 2]": a single named thing on the left.
# "(x, y) = (5, 3)": a tuple of names on the left.
_NAME = r"[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?"
_ASSIGN = re.compile(
    r"^\s*(?:" + _NAME + r"(?:\([A-Za-z, ]*\))?|\(\s*" + _NAME + r"(?:\s*,\s*" + _NAME + r")+\s*\))"
    r"\s*(?:=|\\in(?![a-zA-Z]))\s*(?!=)(.+)$",
    re.DOTALL,
)
# An ellipsis: the parser drops it, so "6, \ldots" and "6\ldots" read 6.
_ELLIPSIS = re.compile(r"\\(?:[lcv]?dots|dots[bcimo])(?![a-zA-Z])|\.\.\.|\u2026")
# "5 dollars", "12 apples": a number followed by plain words (LaTeX-free units).
_TRAILING_WORDS = re.compile(r"^([+-]?[\d.,]*\d(?:\\?%)?)\s+[A-Za-z]{2,}\.?(?:\s+[A-Za-z]{2,}\.?)*\s*$")
_FUNCTION_WORDS = {"sin", "cos", "tan", "log", "ln", "exp", "pi", "sqrt", "mod", "or", "and"}
# Words after a number that change its value or negate it: "5 million", "5 squared", "5 is wrong"
# are not "5" with a unit.
_VALUE_WORDS = _FUNCTION_WORDS | {
    "hundred", "thousand", "million", "billion", "trillion", "dozen", "dozens", "hundreds", "thousands", "millions",
    "billions", "half", "halves", "third", "thirds", "quarter", "quarters", "tenth", "tenths", "hundredth",
    "hundredths", "thousandth", "thousandths", "squared", "cubed", "times", "plus", "minus", "over", "divided",
    "multiplied", "power", "powers", "root", "roots", "factorial", "percent", "percentage", "is", "are", "was",
    "not", "no", "never", "wrong", "incorrect", "false", "but", "than", "more", "less", "fewer", "except",
    "approximately", "about", "roughly", "around", "least", "most", "maybe", "perhaps", "probably", "or",
    "millionth", "millionths", "billionth", "billionths", "fifths", "sixths", "sevenths", "eighths", "ninths",
    "double", "doubled", "triple", "tripled", "twice", "thrice", "halved", "negative", "inverse", "reciprocal",
    "tens", "hundreds", "thousands", "dozen", "dozens", "score", "minus", "plus",
    "increase", "increased", "decrease", "decreased", "loss", "deficit", "below", "greater", "smaller", "larger",
    "lower", "higher",
}
# Words that join or qualify values inside one text group: "5 \text{ to 7}", "5 \text{ (approx. 6)}".
_CONNECTIVES = {"to", "and", "or", "nor", "approx", "vs", "versus", "through", "till", "until", "from", "between"}
# Scale and fraction words the lists above cannot enumerate: "5 quadrillion", "1 fourth", "3 twelfths"
# were read as 5, 1 and 3 with a unit.
_VALUE_WORD_RE = re.compile(
    r"[a-z]*illion(?:th)?s?|lakhs?|crores?|myriads?|gross|grand|bn|mn|bil|mil|"
    r"(?:fourth|fifth|sixth|seventh|eighth|ninth|eleventh|twelfth|[a-z]*teenth|[a-z]*ieth)s?"
)


def _value_words(words: set[str]) -> bool:
    """Whether any of ``words`` (lower case) changes, joins or negates the value of a number."""
    return bool(words & (_VALUE_WORDS | _CONNECTIVES)) or any(_VALUE_WORD_RE.fullmatch(w) for w in words)


_WORD = re.compile(r"[A-Za-z]{2,}(?: [A-Za-z]+)*")
_DOLLAR = re.compile(r"^\\\$\s*|\\\$$")


def _words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


def _unit_text(text: str) -> bool:
    """Whether the content of a ``\\text{...}`` after a number reads as a unit, safe to drop."""
    return bool(_UNIT_TEXT.fullmatch(text)) and not _value_words(_words(text))


def _unit_words(text: str) -> bool:
    """Whether plain words after a number read as its unit or counted noun ("5 dollars",
    "12 apples"): none of them changes, joins or negates the value ("5 million", "5 to 7")."""
    words = {w.rstrip(".") for w in _words(text)}
    return bool(words) and not _value_words(words)


_TEXT_ARG = re.compile(_TEXT_CMD + r"\{([^{}]*)\}")


def _value_text(s: str) -> bool:
    """``\\text{...}`` that changes the value: a value word, a connective or a digit (sympy
    drops text, so "5 \\text{ and 6}" would read 5). A bare "or"/"and" joins inequalities."""
    for t in _TEXT_ARG.findall(s):
        if t.strip().lower() in ("or", "and"):
            continue
        if _value_words(_words(t)) or re.search(r"(?<![\^{])\d", t):
            return True
    return False


# Spellings the parser misreads, rewritten to the form it reads (TeX meaning unchanged):
# "\lbrace 1, 2\rbrace" is the set {1, 2}; "\sqrt[3]2" takes one token as its radicand, as
# "\sqrt2" does; "\mathbb R" is "\mathbb{R}".
_SPELLINGS = [
    (re.compile(r"\\lbrace(?![a-zA-Z])\s*"), r"\\{"),
    (re.compile(r"\s*\\rbrace(?![a-zA-Z])"), r"\\}"),
    (re.compile(r"(\\sqrt\s*\[[^\[\]{}]*\])\s*([0-9]|[A-Za-z](?![A-Za-z]))"), r"\1{\2}"),
    (re.compile(r"\\mathbb\s*([A-Z])(?![A-Za-z])"), r"\\mathbb{\1}"),
    # "\lg" is the common logarithm (the parser read it as l*g)
    (re.compile(r"\\lg(?![a-zA-Z])\s*"), r"\\log_{10} "),
    # Dot notation for a repeating decimal: "0.\dot3" is 0.333..., "0.\dot{1}4\dot{2}" is
    # 0.142142... (one dot repeats its digit; two mark the first and last digits of the block).
    (
        re.compile(r"(?<![\d.])(\d*\.\d*)\\dot\s*\{?\s*(\d)\s*\}?(?:(\d*)\\dot\s*\{?\s*(\d)\s*\}?)?"),
        lambda m: f"{m.group(1)}\\overline{{{m.group(2)}{m.group(3) or ''}{m.group(4) or ''}}}",
    ),
]
# Upright e and i are Euler's number and the imaginary unit, never a unit of measure: the
# trailing-unit rule dropped them, so "3+2\mathrm{i}" read 5 and "2\mathrm{e}" read 2, and the
# parser reads "\mathrm{e}" as a plain symbol (so "\frac{1}{\mathrm{e}}" was not 1/e).
_UPRIGHT_CONST = re.compile(r"\\(?:text|textrm|mathrm|operatorname|rm)\s*\{\s*([ei])\s*\}")
# Colour and invisible boxes: "\color{red}5" shows 5; "\phantom{5}" shows nothing.
_COLOR = re.compile(r"\\color\s*\{[^{}]*\}|\\textcolor\s*\{[^{}]*\}(?=\s*\{)")
_PHANTOM = re.compile(r"\\[hv]?phantom\s*\{[^{}]*\}")


def normalize(s: str) -> str:
    """Meaning-preserving cleanup of a LaTeX answer string."""
    s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], s)
    for rx, rep in _SPELLINGS:
        s = rx.sub(rep, s)
    if not _WHOLE_TEXT.match(s.strip()):  # "\text{i}" alone may be option (i): read below as text
        s = _UPRIGHT_CONST.sub(r"{\1}", s)
    s = _PHANTOM.sub("", _COLOR.sub("", s))
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\dbinom", "\\binom")
    s = _THOUSANDS_THIN.sub("", s)
    s = _DROP_RE.sub("", s)
    s = _CONTROL_SPACE.sub(" ", s.replace("\\,", " "))  # a control space, not a row break
    s = _DEGREE.sub("", s)
    s = _DOLLAR.sub("", s.strip())
    s = s.strip().rstrip(".").strip()
    s = _PERCENT_WORD.sub(r"\\%", s)  # "50 percent" is "50%"
    s = _GLUED_DIGITS.sub(lambda m: m.group(1), s)
    m = _TRAILING_UNIT.search(s)  # units may stack: "5 \text{m} \text{s}"
    if m and all(_unit_text(t) for t in _TEXT_ARG.findall(m.group(0))):
        s = s[: m.start()].strip()
    m = _WHOLE_TEXT.match(s)
    if m:
        s = m.group(1).strip()
    return re.sub(r"\s+", " ", s)


# --------------------------------------------------------------------------- fast path

_DEC = r"(?:\d+(?:\.\d*)?|\.\d+)"
_MAX_EXP = 400  # larger powers of ten go to sympy, under the budget
_NUM_RES = [
    ("sep", re.compile(r"(\d{1,3}(?:(?:,| )\d{3})+(?:\.\d+)?)")),
    ("dec", re.compile(rf"({_DEC})")),
    ("sci_e", re.compile(rf"({_DEC})[eE]([+-]?\d+)")),
    ("sci_t", re.compile(rf"({_DEC})\s*(?:\\times|\\cdot|\*)\s*10\s*\^\s*(?:\{{\s*([+-]?\d+)\s*\}}|([+-]?\d))")),
    ("pow10", re.compile(r"10\s*\^\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))")),
    ("frac", re.compile(rf"\\frac\s*\{{\s*(-?{_DEC})\s*\}}\s*\{{\s*(-?{_DEC})\s*\}}")),
    ("frac_short", re.compile(r"\\frac\s*(\d)\s*(\d)")),
    ("slash", re.compile(rf"({_DEC})\s*/\s*({_DEC})")),
    # "0.\overline{3}", and "0.\bar{3}" as the same bar is often typed
    ("repeat", re.compile(r"(\d*)\.(\d*)\\(?:overline|bar)\s*\{\s*(\d+)\s*\}")),
]


def _pow10(e: str) -> Fraction | None:
    k = int(e)
    return Fraction(10) ** k if abs(k) <= _MAX_EXP else None


def parse_number(s: str) -> tuple[Fraction, bool] | None:
    """Exact value of a plain numeric literal and whether it carried a percent sign."""
    s = s.strip()
    if len(s) > 300:
        return None
    pct = False
    if s.endswith("\\%") or s.endswith("%"):
        pct, s = True, s[: -2 if s.endswith("\\%") else -1].rstrip()
    sign = 1
    if s[:1] in "+-" and s:
        sign, s = (-1 if s[0] == "-" else 1), s[1:].lstrip()
    if not s:
        return None
    for kind, rx in _NUM_RES:
        m = rx.fullmatch(s)
        if m is None:
            continue
        g = m.groups()
        try:
            if kind == "sep":
                v = Fraction(g[0].replace(",", "").replace(" ", ""))
            elif kind == "dec":
                v = Fraction(g[0])
            elif kind in ("sci_e", "sci_t"):
                p = _pow10(g[1] if g[1] is not None else g[2])
                if p is None:
                    return None
                v = Fraction(g[0]) * p
            elif kind == "pow10":
                v = _pow10(g[0] if g[0] is not None else g[1])
                if v is None:
                    return None
            elif kind in ("frac", "frac_short", "slash"):
                den = Fraction(g[1])
                if den == 0:
                    return None
                v = Fraction(g[0]) / den
            elif kind == "repeat":
                whole, fixed, rep = g
                base = Fraction(f"{whole or '0'}.{fixed}" if fixed else (whole or "0"))
                v = base + Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(fixed))
            else:  # pragma: no cover
                continue
        except (ValueError, ZeroDivisionError):
            return None
        return sign * v, pct
    return None


def _numbers_equal(p: tuple[Fraction, bool], g: tuple[Fraction, bool], cfg: MathConfig) -> bool:
    (vp, pp), (vg, pg) = p, g
    if vp == vg:
        return True
    # Both written as percentages: one scale, so 0.5% is not 50% (reading either side as a
    # fraction made 0.5% equal 50% and 5000% equal 50%).
    if cfg.percent_either_scale and pp != pg:
        ps = {vp, vp / 100} if pp else {vp}
        gs = {vg, vg / 100} if pg else {vg}
        return bool(ps & gs)
    return False


# --------------------------------------------------------------------------- structure

_OPEN = {"(": ")", "[": "]", "{": "}"}


def _wrapped(s: str) -> tuple[str, str, str] | None:
    """``(open, inner, close)`` when one bracket pair encloses all of ``s``."""
    opener = closer = ""
    if s.startswith("\\{") and s.endswith("\\}"):
        opener, closer, inner = "\\{", "\\}", s[2:-2]
    elif len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        opener, closer, inner = s[0], s[-1], s[1:-1]
    else:
        return None
    depth = 0
    for c in inner:  # the outer pair must not close early, as in "(1,2)\cup(3,4)"
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                return None
    return (opener, inner, closer) if depth == 0 else None


def split_top(s: str) -> list[str]:
    """Split on commas/semicolons outside brackets (``\\{``, ``(``, ``[``, ``{``)."""
    parts, depth, cur = [], 0, []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in "{}":
            depth += 1 if s[i + 1] == "{" else -1
            cur.append(s[i : i + 2])
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c in ",;" and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur).strip())
    return [p for p in parts if p]


def _is_thousands(s: str) -> bool:
    return bool(re.fullmatch(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s.strip()))


def _letter(s: str) -> str | None:
    m = re.fullmatch(r"\(?\s*([A-Za-z])\s*\)?[.:]?", s.strip())
    return m.group(1).upper() if m else None


# --------------------------------------------------------------------------- sympy (worker side)


_FAST_NUMBERS = False


def _install_fast_numbers() -> None:
    """Build number literals without ``sympy.Number(str)``.

    latex2sympy2_extended turns every numeric token into ``sympy.Number(text)``, which goes through
    ``sympify``'s expression parser and costs ~10 ms per literal, most of the parse time of a
    short answer. Plain integers and decimals are built directly (decimals as exact rationals,
    which is what the comparison wants anyway); anything else keeps the library's path.
    """
    global _FAST_NUMBERS
    if _FAST_NUMBERS:
        return
    _FAST_NUMBERS = True
    try:
        import sympy
        from latex2sympy2_extended import latex2sympy2 as l2s
    except ImportError:  # pragma: no cover
        return
    int_re, dec_re = re.compile(r"\d{1,4000}"), re.compile(r"\d{0,2000}\.\d{1,2000}|\d{1,2000}\.")

    def fast(text: str) -> Any:
        t = text.replace(",", "")
        if int_re.fullmatch(t):
            return sympy.Integer(int(t))
        if dec_re.fullmatch(t):
            return sympy.Rational(t.rstrip(".") if t.endswith(".") else t)
        return None

    cls = getattr(l2s, "_Latex2Sympy", None)
    orig_method = getattr(cls, "parse_number", None)
    orig_func = getattr(l2s, "convert_number", None)
    if orig_method is not None:

        def parse_number(self: Any, text: str) -> Any:
            v = fast(text)
            return v if v is not None else orig_method(self, text)

        cls.parse_number = parse_number
    if orig_func is not None:

        def convert_number(number: str) -> Any:
            if "," in number and number.startswith("0"):
                return orig_func(number)  # the library reads "0,5" as a decimal comma
            v = fast(number.replace(" ", ""))
            return v if v is not None else orig_func(number)

        l2s.convert_number = convert_number
    _install_strict_mixed_numbers(cls)
    _install_tex_fraction_fixes()


def _install_tex_fraction_fixes() -> None:
    """Make the parser's repair of brace-less fractions (``\\frac12``) read TeX's way.

    Its pattern for ``\\frac{1}2`` let the numerator run across braces and took the next digit
    as a denominator: ``\\frac{1}{2}1000`` became ``\\frac{1}{2}{1}000`` = 0, so it passed for
    gold 0 (and ``\\frac{1}{2} 30`` too). ``\\frac1234`` was 1/234; TeX reads ``\\frac{1}{2}34``.
    """
    try:
        from latex2sympy2_extended import math_normalization as mn
    except ImportError:  # pragma: no cover
        return
    pats = getattr(mn, "malformed_operators_patterns", None)
    if not isinstance(pats, list):  # pragma: no cover - another parser version
        return
    fixes = {
        r"\\frac\s?{(.*?)}\s?(\d)": r"\\frac\s?{([^{}]*)}\s?(\d)",  # the numerator is one group
        r"\\frac\s?(\d)\s?(\d+)": r"\\frac\s?(\d)\s?(\d)",  # a bare argument is one digit
    }
    pats[:] = [(re.compile(fixes.get(p.pattern, p.pattern)), r) for p, r in pats]


_MIXED_INT = re.compile(r"\d+")
_MIXED_FRAC = re.compile(r"\\[dt]?frac\{\d+\}\{\d+\}")


def _install_strict_mixed_numbers(cls: Any) -> None:
    """Read ``2\\frac{1}{2}`` as a mixed number and every other juxtaposition as a product.

    The parser reads *any* implicit product of an integer and a positive rational as a mixed
    number: ``2(3)`` was 5, ``(12)(3)`` 15, ``2 3`` 5, so ``2(3)`` passed for gold 5 and failed
    for gold 6. Only a plain digit run directly followed by a ``\\frac`` of digit runs is a
    mixed number here; everything else multiplies. The mixed number may be followed by more
    factors: ``2\\frac{1}{2}\\pi`` is 5pi/2 (read as 2 * 1/2 * pi it passed for gold pi).
    """
    if cls is None or not hasattr(cls, "convert_postfix_list"):  # pragma: no cover - another parser version
        return
    import sympy

    def convert_postfix_list(self: Any, arr: Any, i: int = 0) -> Any:
        if i >= len(arr):
            raise Exception("Index out of bounds")
        res = self.convert_postfix(arr[i])
        if isinstance(res, (sympy.Expr, sympy.MatrixBase)):
            if i == len(arr) - 1:
                return res
            if (
                getattr(res, "is_Integer", False)
                and _MIXED_INT.fullmatch(arr[i].getText())
                and _MIXED_FRAC.fullmatch(arr[i + 1].getText())
            ):
                fr = self.convert_postfix(arr[i + 1])
                if getattr(fr, "is_Rational", False) and fr.p > 0:
                    mixed = sympy.Rational(res * fr.q + fr.p, fr.q)
                    if i + 2 == len(arr):
                        return mixed
                    rest = self.convert_postfix_list(arr, i + 2)
                    if getattr(rest, "is_Matrix", False):
                        return self.mat_mul_flat(mixed, rest)
                    return self.mul_flat(mixed, rest)
            rh = self.convert_postfix_list(arr, i + 1)
            if getattr(res, "is_Matrix", False) or getattr(rh, "is_Matrix", False):
                return self.mat_mul_flat(res, rh)
            return self.mul_flat(res, rh)
        if isinstance(res, list) and len(res) == 1:  # d/dx: the rest of the product is differentiated
            if i == len(arr) - 1:
                raise Exception("Expected expression for derivative")
            return sympy.Derivative(self.convert_postfix_list(arr, i + 1), res[0])
        return res

    cls.convert_postfix_list = convert_postfix_list


# What joins inequalities into one set: "or" is a union, "and" an intersection. (Both were read
# as a union: "x > -3 \text{ and } x < 3" was all of R, and "x < 1 \text{ and } x > 3", which
# is empty, passed for gold (-oo, 1) U (3, oo).)
_JOINS = re.compile(
    r"\\text\{\s*(or|and)\s*\}|\\(lor|vee|land|wedge)(?![a-zA-Z])|\b(and/or|or)\b", re.IGNORECASE
)
_AND = {"and", "land", "wedge"}


@functools.lru_cache(maxsize=4096)
def _parse_sympy(s: str, letter_unit: bool = False) -> Any:
    seps = list(_JOINS.finditer(s))
    if not seps:
        return _parse_one(s, letter_unit)
    import sympy

    words = [(m.group(1) or m.group(2) or m.group(3)).lower() for m in seps]
    # \land and \wedge are not hedges (extraction keeps them): between anything but
    # inequalities they keep their old reading by the parser.
    logic_only = all(w in ("land", "wedge") for w in words)
    bounds = [0] + [x for m in seps for x in m.span()] + [len(s)]
    parts = [s[bounds[k] : bounds[k + 1]].strip(" ,;") for k in range(0, len(bounds), 2)]
    try:
        sets = [_as_set(_parse_one(x)) for x in parts if x]
        if not all(isinstance(x, sympy.Set) for x in sets):
            raise ValueError("alternatives that are not all inequalities")
    except Exception:
        if logic_only:
            return _parse_one(s)
        raise
    kinds = {w in _AND for w in words}
    if len(kinds) > 1:
        raise ValueError("'and' and 'or' together: the grouping is ambiguous")
    return sympy.Intersection(*sets) if kinds == {True} else sympy.Union(*sets)


# A repeating decimal inside a larger answer ("(-\infty, 2.\overline{5}]").
_REPEATING = re.compile(r"(?<![\d.])\d*\.\d*\\(?:overline|bar)\s*\{\s*\d+\s*\}")


def _repeating_as_fraction(m: re.Match) -> str:
    """``2.\\overline{5}`` -> ``(\\frac{23}{9})``: the parser cannot read ``\\overline`` digits."""
    n = parse_number(m.group(0))
    return f"({_literal(n)})" if n is not None else m.group(0)


_NUMBER_UNIT = re.compile(r"\s*[+-]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)\s*([A-Za-z][A-Za-z .]*)")


# A run of signs is one sign: "- - x" is x. The parser nests one level per sign, so 1990 minus
# signs before x used the whole budget (score=None).
_SIGN_RUN = re.compile(r"[+-](?:\s*[+-])+")


def _number_with_unit(s: str, letter_unit: bool = False) -> bool:
    """``5cm``, ``7 kg``: a plain number and then only words that do not change its value.

    A bare single letter (``letter_unit`` false) is not a unit: ``5m`` is 5 metres or 5 times
    the variable m, and ``2t``, ``3h``, ``4c`` are the same kind of product. The parser's unit
    list drops m, s, g, t, h, c, d, l and o, so gold ``5m`` equalled ``5``. A gold's letter is
    a variable; an answer's is a unit only against a gold without variables (``5 m`` for 5).
    Written as text (``5 \\text{ m}``) a letter is a unit anywhere."""
    m = _NUMBER_UNIT.fullmatch(s)
    if not m or (not letter_unit and re.fullmatch(r"[A-Za-z]\.?\s*", m.group(1))):
        return False
    return not _value_words({w.lower() for w in re.findall(r"[A-Za-z]+", m.group(1))})


def _parse_one(s: str, letter_unit: bool = False) -> Any:
    import sympy
    from latex2sympy2_extended import NormalizationConfig, latex2sympy
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig

    # The parser's unit removal drops a trailing unit-like word or letter from any expression:
    # "x + 7t" was x + 7, "3t + 2t" was 3t + 2, "2\pi r h" was 2\pi r and "5 less" was 5. Units
    # are removed only from a number that is followed by nothing else ("5cm", "7 m").
    units = _number_with_unit(s, letter_unit)
    norm = NormalizationConfig(basic_latex=True, units=units, malformed_operators=True, nits=True, boxed="none", equations=False)
    conv = ConversionConfig(interpret_as_mixed_fractions=True, lowercase_symbols=False)
    _install_fast_numbers()
    s = _REPEATING.sub(_repeating_as_fraction, s)
    s = _SIGN_RUN.sub(lambda m: "-" if m.group(0).count("-") % 2 else "+", s)
    expr = _exact(latex2sympy(_collapse_parens(_func_brace_args(s)), normalization_config=norm, conversion_config=conv))
    expr = _real_odd_roots(_imaginary_unit(expr))
    # The parser leaves products unevaluated, and sympy drops a 0 * oo term from a sum as a
    # zero coefficient: "5 + 0 \cdot \infty" would equal 5. An undefined value equals nothing.
    if isinstance(expr, sympy.Basic) and expr.has(sympy.oo, sympy.zoo, sympy.nan):
        try:
            undefined = expr.doit().has(sympy.nan)
        except Exception:  # noqa: BLE001 - sympy raises many types on odd input
            undefined = False
        if undefined:
            raise ValueError(f"undefined value: {s!r}")
    return expr


def _imaginary_unit(expr: Any) -> Any:
    """A free ``i`` is the imaginary unit, as in competition mathematics.

    The parser reads it as a plain symbol, so ``i^2`` was not -1, ``\\sqrt{-4}`` was not ``2i``
    and ``\\frac{1}{1+i}`` was not ``\\frac{1-i}{2}``. A summation index (``\\sum_{i=1}^{n} i``) is
    bound, not free, and stays an index. ``j`` stays a variable.
    """
    import sympy

    try:
        free = expr.free_symbols if isinstance(expr, (sympy.Basic, sympy.MatrixBase)) else ()
        i = [x for x in free if isinstance(x, sympy.Symbol) and x.name == "i"]
        if not i:
            return expr
        if isinstance(expr, sympy.MatrixBase):
            return expr.applyfunc(lambda e: e.xreplace({i[0]: sympy.I}))
        return expr.xreplace({i[0]: sympy.I})
    except Exception:  # noqa: BLE001 - "i > 2", an interval ending at i: no complex reading
        return expr


def _real_odd_roots(expr: Any) -> Any:
    """An odd root of a negative number is the real root, as in school mathematics.

    sympy takes the principal complex root: ``\\sqrt[3]{-8}`` was ``1 + \\sqrt{3} i``, not -2, and
    ``\\sqrt[3]{2+\\sqrt{5}} + \\sqrt[3]{2-\\sqrt{5}}`` was not 1.
    """
    import sympy

    def odd_root_of_negative(e: Any) -> bool:
        x = e.exp
        return bool(x.is_Rational and not x.is_Integer and x.q % 2 == 1 and e.base.is_number and e.base.is_negative)

    def real(e: Any) -> Any:
        return (-1) ** e.exp.p * sympy.Pow(-e.base, e.exp)

    try:
        if isinstance(expr, sympy.MatrixBase):
            return expr.applyfunc(lambda e: e.replace(lambda x: x.is_Pow and odd_root_of_negative(x), real))
        if isinstance(expr, sympy.Basic) and expr.has(sympy.Pow):
            return expr.replace(lambda x: isinstance(x, sympy.Pow) and odd_root_of_negative(x), real)
    except Exception:  # noqa: BLE001 - sympy raises many types on odd input
        pass
    return expr


# A named function, its sub/superscripts ("\log_{2}", "\sin^2") and the "{" of a braced argument.
_FUNC_BRACE = re.compile(
    r"\\(?:arc)?(?:sin|cos|tan|csc|sec|cot)h?(?![a-zA-Z])|\\(?:arsinh|arcosh|artanh|log|ln|exp)(?![a-zA-Z])"
)
_SCRIPTS_THEN_BRACE = re.compile(r"(?:\s*[_^]\s*(?:\{[^{}]*\}|[^\s{}\\]))*\s*\{")


def _func_brace_args(s: str) -> str:
    """``\\sin{x} \\cdot y`` -> ``\\sin(x) \\cdot y``: in TeX the braces delimit the argument.

    The parser reads a braced argument as the start of a product and took the rest of it into
    the function: ``\\sin{\\left(12\\right)} \\cdot 3`` (how sympy itself prints ``3\\sin 12``)
    was ``sin(36)`` and ``\\ln{(6)} \\cdot 2`` was ``ln 12``.
    """
    if "{" not in s:
        return s
    out, pos = [], 0
    for m in _FUNC_BRACE.finditer(s):
        if m.start() < pos:
            continue  # inside an argument already rewritten
        b = _SCRIPTS_THEN_BRACE.match(s, m.end())
        if b is None:
            continue
        depth, j = 0, b.end() - 1
        while j < len(s):
            if s[j] == "\\":
                j += 2  # \{ and \} are set braces, not grouping
                continue
            depth += {"{": 1, "}": -1}.get(s[j], 0)
            if depth == 0:
                break
            j += 1
        if j >= len(s):
            break  # unbalanced: leave the rest for the parser to reject
        out += [s[pos : b.end() - 1], "(", _func_brace_args(s[b.end() : j]), ")"]
        pos = j + 1
    return "".join(out) + s[pos:]


def _collapse_parens(s: str) -> str:
    """``((x))`` -> ``(x)``, ``{{x}}`` -> ``{x}``: a redundant pair changes nothing, and the
    parser's time grows steeply with bare nesting (40 levels of parentheses around a number ran
    past a 5 s budget; 20 levels of bare braces took minutes)."""
    if "((" not in s and "{{" not in s:
        return s
    stacks: dict[str, list[int]] = {"(": [], "{": []}
    match: dict[int, int] = {}
    for i, c in enumerate(s):
        if i and s[i - 1] == "\\":  # \{ \} are set braces, not grouping
            continue
        if c in stacks:
            stacks[c].append(i)
        elif c in ")}" and stacks["(" if c == ")" else "{"]:
            match[stacks["(" if c == ")" else "{"].pop()] = i
    drop = {i for i, j in match.items() if match.get(i + 1) == j - 1 and s[i] == s[i + 1]}
    drop |= {match[i] for i in drop}
    return "".join(c for i, c in enumerate(s) if i not in drop)


def _exact(expr: Any) -> Any:
    """Replace floats by the exact decimal rationals they were written as."""
    import sympy

    if isinstance(expr, sympy.Basic) and expr.atoms(sympy.Float):
        return expr.xreplace({f: sympy.Rational(str(f)) for f in expr.atoms(sympy.Float)})
    if isinstance(expr, sympy.MatrixBase):
        return expr.applyfunc(_exact)
    return expr


def _clearly_nonzero(v: Any) -> bool:
    """A 30-digit evaluation far from zero proves a constant non-zero (evalf tracks precision)."""
    import sympy

    try:
        x = sympy.N(v, 30)
    except Exception:  # noqa: BLE001
        return False
    return bool(x.is_number and x.is_finite and x.is_real is not None and abs(complex(x)) > 1e-20)


def _fold_rationals(e: Any) -> Any:
    """Evaluate the sums, products and powers of rational numbers the parser left unevaluated.

    ``evalf`` costs twice as much for each level of unevaluated nesting: a wrong answer such as
    ``12/7/712/.../712`` (16 divisions) or a 16-level continued fraction took seconds, 20 levels
    over a minute, and came back as an infrastructure error (score=None) instead of 0. Powers
    too large to compute cheaply stay unevaluated.
    """
    import sympy

    if not isinstance(e, (sympy.Add, sympy.Mul, sympy.Pow)):
        return e
    args = [_fold_rationals(x) for x in e.args]
    if all(x.is_Rational for x in args):
        if not isinstance(e, sympy.Pow):
            return e.func(*args)
        b, x = args
        if x.q <= 64 and abs(x.p) * max(b.p.bit_length(), b.q.bit_length()) <= 10**5:
            return e.func(b, x)
    return e.func(*args, evaluate=False) if args != list(e.args) else e


def _expr_equal(a: Any, b: Any) -> bool:
    import random

    import sympy

    if a == b:
        return True
    infinite = (sympy.oo, sympy.S.NegativeInfinity, sympy.zoo)
    if any(isinstance(x, sympy.Basic) and x.has(*infinite) for x in (a, b)):
        # simplify() mishandles unevaluated infinities: "(55.12)^\infty - \infty \cdot (-2)" (that
        # is oo) minus 55.12^{-2} simplified to 0, so it passed. An infinite value equals only
        # the same infinite value.
        try:
            a, b = a.doit(), b.doit()
        except Exception:  # noqa: BLE001 - sympy raises many types on odd input
            return False
        if any(isinstance(x, sympy.Basic) and x.has(*infinite) for x in (a, b)):
            return a == b
    unevaluated = (sympy.Sum, sympy.Product, sympy.Integral, sympy.Limit, sympy.Derivative)
    if any(isinstance(x, sympy.Basic) and x.has(*unevaluated) for x in (a, b)):
        # Evaluate first: "\\sum_{k=1}^{n} k" against n(n+1)/2 went to the random-point check with a
        # fractional upper limit and to simplify(), over 30 s, and came back score=None.
        try:
            a, b = a.doit(), b.doit()
        except Exception:  # noqa: BLE001 - sympy raises many types on odd input
            pass
    try:
        d = _fold_rationals(a - b)
    except Exception:  # noqa: BLE001 - sympy raises many types on odd input
        return False
    if d == 0:
        return True
    if getattr(d, "is_Rational", False):
        return False  # exact non-zero difference, however tiny (2^-99 vs 2^-98)
    syms = getattr(d, "free_symbols", None)
    # Cheap refutation before simplify: a clearly non-zero value (at random points if symbolic)
    # proves the expressions differ; only agreement needs the expensive proof.
    if not syms:
        if _clearly_nonzero(d):
            return False
    else:
        rng = random.Random(0)
        for _ in range(2):
            pt = {x: sympy.Rational(rng.randint(11, 97), rng.randint(3, 13)) for x in syms}
            try:
                if _clearly_nonzero(d.xreplace(pt)):
                    return False
            except Exception:  # noqa: BLE001
                break
        try:
            if sympy.expand(d) == 0:
                return True
        except Exception:  # noqa: BLE001
            return False
    try:
        d = sympy.simplify(d)
    except Exception:  # noqa: BLE001
        return False
    if d == 0:
        return True
    if getattr(d, "free_symbols", None):
        # Agreed at the random points; simplify() alone does not prove multiple-angle identities
        # ("\\tan 3x" against its triple-angle formula was wrong).
        from sympy.functions.elementary.trigonometric import TrigonometricFunction

        if d.has(TrigonometricFunction):
            try:
                return sympy.simplify(sympy.expand_trig(d)) == 0
            except Exception:  # noqa: BLE001
                return False
        return False
    return bool(getattr(d, "is_number", False)) and d.equals(0) is True


def _as_set(x: Any) -> Any:
    """``x > 2`` -> ``(2, oo)``: an inequality in one variable is the set it describes."""
    import sympy

    is_ineq = isinstance(x, sympy.core.relational.Relational) and not isinstance(x, (sympy.Equality, sympy.Unequality))
    if is_ineq:
        # "x >= 3" / "3 < x": build the interval directly; as_set() would run the inequality solver.
        lhs, rhs, op = x.lhs, x.rhs, x.rel_op
        if lhs.is_number and isinstance(rhs, sympy.Symbol):
            lhs, rhs, op = rhs, lhs, {"<": ">", "<=": ">=", ">": "<", ">=": "<="}[op]
        if isinstance(lhs, sympy.Symbol) and rhs.is_number and rhs.is_real:
            return {
                "<": sympy.Interval.open(-sympy.oo, rhs), "<=": sympy.Interval(-sympy.oo, rhs),
                ">": sympy.Interval.open(rhs, sympy.oo), ">=": sympy.Interval(rhs, sympy.oo),
            }[op]
    if isinstance(x, sympy.Unequality):
        # "x \\neq 3" is R minus a point, as "(-oo, 3) U (3, oo)" (it equalled only itself).
        lhs, rhs = (x.lhs, x.rhs) if isinstance(x.lhs, sympy.Symbol) else (x.rhs, x.lhs)
        if isinstance(lhs, sympy.Symbol) and rhs.is_number and rhs.is_real:
            return sympy.Union(sympy.Interval.open(-sympy.oo, rhs), sympy.Interval.open(rhs, sympy.oo))
        return x
    if (is_ineq or isinstance(x, (sympy.And, sympy.Or))) and len(x.free_symbols) == 1:
        try:
            return x.as_set()
        except Exception:  # noqa: BLE001 - not solvable: leave it alone
            return x
    return x


def _sym_equal(a: Any, b: Any) -> bool:
    import sympy
    from sympy.sets.sets import FiniteSet

    if isinstance(a, sympy.MatrixBase) or isinstance(b, sympy.MatrixBase):
        if not (isinstance(a, sympy.MatrixBase) and isinstance(b, sympy.MatrixBase)) or a.shape != b.shape:
            return False
        return all(_sym_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, sympy.Tuple) or isinstance(b, sympy.Tuple):
        if not (isinstance(a, sympy.Tuple) and isinstance(b, sympy.Tuple)) or len(a) != len(b):
            return False
        return all(_sym_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, FiniteSet) and isinstance(b, FiniteSet):
        return _match_unordered(list(a), list(b), _sym_equal)
    if isinstance(a, FiniteSet) and len(a) == 1 and not isinstance(b, sympy.Set):
        return _sym_equal(next(iter(a)), b)
    if isinstance(b, FiniteSet) and len(b) == 1 and not isinstance(a, sympy.Set):
        return _sym_equal(a, next(iter(b)))
    a, b = _as_set(a), _as_set(b)
    if isinstance(a, sympy.Set) or isinstance(b, sympy.Set):
        if not (isinstance(a, sympy.Set) and isinstance(b, sympy.Set)):
            return False
        return a == b or a.symmetric_difference(b).is_empty is True
    if isinstance(a, sympy.Equality) and isinstance(b, sympy.Equality):
        if a.lhs == b.lhs and _expr_equal(a.rhs, b.rhs):
            return True
        da, db = a.lhs - a.rhs, b.lhs - b.rhs
        if _expr_equal(da, db) or _expr_equal(da, -db):
            return True
        # The same equation times a non-zero constant: "4x - 2y + 2 = 0" is "y = 2x + 1", and
        # "2x = 10" is "x = 5".
        if not (da.free_symbols and db.free_symbols) or da.free_symbols != db.free_symbols:
            return False
        r = sympy.cancel(sympy.together(da / db))
        return bool(r.is_number and not r.free_symbols and r != 0 and r.is_finite)
    if isinstance(a, sympy.Equality) and isinstance(a.lhs, sympy.Symbol):
        return _sym_equal(a.rhs, b)
    if isinstance(a, sympy.Basic) and isinstance(b, sympy.Basic) and not isinstance(a, sympy.core.relational.Relational) and not isinstance(b, sympy.core.relational.Relational):
        return _expr_equal(a, b)
    return a == b


class GoldError(ValueError):
    """The gold answer cannot be parsed: a data error, never a wrong answer."""


# Prose that sympy cannot parse ("St. Louis"): a text gold, compared as text.
_PROSE = re.compile(r"[A-Za-z]{2,}\.?(?:[ '-]+[A-Za-z]+\.?)*")


#: An answer that needs a number of more than this many digits (exactly, or as the size of
#: an exponent) is unreadable, a plain wrong answer, when the answer key needs no such number:
#: ``9^{9^{9^9}}``, ``x^{10^{10}}`` (evaluated at a rational point) or ``\\binom{10^{10}}{5 \\cdot
#: 10^9}`` each ran past the budget and came back as ``score=None``, an infrastructure error
#: with no penalty, which a policy could learn to emit. No real answer comes close (``2023!``
#: has 5,800 digits); an answer that equals a small key only by cancelling such numbers
#: (``2^{2^{40}} - 2^{2^{40}} + 42``) is unreadable too, as an answer nested too deep is.
MAX_DIGITS = 10**5
#: A sum or product over more terms than this is unreadable in the same way (sympy adds or
#: multiplies them one by one), except a sum of a polynomial in its index (closed form).
MAX_TERMS = 10**4
_TOO_MANY_TERMS = 1e300  # what _digits_needed says for such a sum or product

_NOTES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("math_equiv_notes", default=None)


def _note(why: str) -> None:
    """Record why an answer was read as wrong without a comparison (shown in the grade)."""
    notes = _NOTES.get()
    if notes is not None and why not in notes:
        notes.append(why)


def _sign_log(e: Any) -> tuple[int, float] | None:
    """``(sign, log10|e|)`` of a closed numeric expression, estimated without evaluating it
    (``inf`` past the float range); ``None`` when unknown: a symbol, a sum that may cancel, a
    function it does not know. ``sign`` is 0 when only the size is known."""
    import sympy

    if e.is_Rational:
        return None if e == 0 else ((1 if e > 0 else -1), math.log10(abs(e.p)) - math.log10(e.q))
    if isinstance(e, sympy.NumberSymbol):
        return 1, math.log10(float(e))
    if isinstance(e, sympy.Mul):
        parts = [_sign_log(a) for a in e.args]
        if any(x is None for x in parts):
            return None
        total = sum(x[1] for x in parts)  # type: ignore[index]
        return (math.prod(x[0] for x in parts), total) if not math.isnan(total) else None  # type: ignore[index]
    if isinstance(e, (sympy.Pow, sympy.exp)):
        b, x = (e.args[0], e.args[1]) if isinstance(e, sympy.Pow) else (sympy.E, e.args[0])
        lb, xv = _sign_log(b), _float_value(x)
        if lb is None or xv is None or lb[1] == 0:
            return None
        r = lb[1] * xv
        return None if math.isnan(r) else ((1 if lb[0] == 1 else 0), r)
    if isinstance(e, sympy.Add):
        parts = [_sign_log(a) for a in e.args]
        if any(x is None or x[0] == 0 for x in parts):
            return None
        parts.sort(key=lambda x: x[1])  # type: ignore[index, union-attr]
        top, second = parts[-1][1], parts[-2][1]  # type: ignore[index]
        # The largest term decides sign and size when the others together cannot reach it.
        if top == math.inf or top - second > math.log10(len(parts)) + 1:
            return parts[-1]  # type: ignore[return-value]
        return None
    if isinstance(e, (sympy.factorial, sympy.binomial)):
        vals = [_float_value(a) for a in e.args]
        if any(v is None or v < 0 for v in vals):
            return None
        if any(v == math.inf for v in vals):
            return 1, math.inf
        if isinstance(e, sympy.factorial):
            return 1, math.lgamma(vals[0] + 1) / math.log(10)  # type: ignore[operator]
        n, k = vals
        if k > n:  # type: ignore[operator]
            return None
        return 1, (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(10)  # type: ignore[operator]
    return None


def _float_value(e: Any) -> float | None:
    """The value of a closed numeric expression as a float (``±inf`` past the float range)."""
    if getattr(e, "is_Rational", False):
        return float(e) if abs(e.p) < 10**300 and e.q < 10**300 else None
    sl = _sign_log(e)
    if sl is None or sl[0] == 0:
        return None
    return sl[0] * (math.inf if sl[1] > 300 else 10 ** sl[1])


def _digits_needed(expr: Any) -> float:
    """A lower estimate of the digits of the largest number that evaluating ``expr`` (exactly,
    or at rational points for its symbols) needs, or ``inf`` for a sum or product past
    :data:`MAX_TERMS`. Walks the unevaluated tree; computes nothing large."""
    import sympy

    if not isinstance(expr, sympy.Basic):
        return 0.0
    worst = 0.0
    for node in sympy.preorder_traversal(expr):
        d = 0.0
        if isinstance(node, (sympy.Pow, sympy.exp, sympy.factorial, sympy.binomial)):
            if not node.free_symbols:
                sl = _sign_log(node)
                d = abs(sl[1]) if sl is not None else 0.0
                base = node.args[0] if isinstance(node, sympy.Pow) else sympy.E
                if isinstance(node, (sympy.Pow, sympy.exp)) and isinstance(base, sympy.NumberSymbol) and d:
                    # pi^x, e^x are never written out: evaluating needs the digits of x only
                    # ("\ln(e^{10^{10}})" is 10^10; "e^{e^{e^{10}}}" is still too large).
                    d = math.log10(d) if d != math.inf else d
            elif isinstance(node, sympy.Pow) and not node.exp.free_symbols:
                # A symbol's power at a rational point p/q (p, q >= 11 or so): a digit per unit.
                v = _float_value(node.exp)
                d = abs(v) if v is not None else 0.0
        elif isinstance(node, (sympy.Sum, sympy.Product)):
            for lim in node.limits:
                if len(lim) != 3:
                    continue
                k, lo, hi = lim
                a, b = _float_value(lo), _float_value(hi)
                if a is None or b is None or b - a + 1 <= MAX_TERMS:
                    continue
                if isinstance(node, sympy.Sum) and node.function.is_polynomial(k):
                    continue
                d = _TOO_MANY_TERMS
        worst = max(worst, d)
        if worst > MAX_DIGITS:
            break
    return worst


_BINOM_LITERAL = re.compile(r"\\binom\s*\{\s*(\d{1,300})\s*\}\s*\{\s*(\d{1,300})\s*\}|(\d{1,300})\s*\\choose\s*(\d{1,300})")


def _binomial_digits(s: str) -> float:
    """Digits of the largest ``\\binom`` of two integer literals in ``s``: the parser computes
    it while reading (``\\binom{10^{10}}{...}`` with literal digits used the whole budget)."""
    worst = 0.0
    for m in _BINOM_LITERAL.finditer(s):
        n, k = (int(x) for x in (m.group(1, 2) if m.group(1) else m.group(3, 4)))
        if k <= n:
            nf, kf = float(min(n, 10**300)), float(min(k, 10**300))
            worst = max(worst, (math.lgamma(nf + 1) - math.lgamma(kf + 1) - math.lgamma(nf - kf + 1)) / math.log(10))
    return worst


def _too_costly(pred_digits: float, gold: Any) -> bool:
    """The answer needs a number past :data:`MAX_DIGITS` and the answer key does not."""
    if pred_digits <= MAX_DIGITS or _digits_needed(gold) > MAX_DIGITS:
        return False
    how = (
        f"a sum or product of more than {MAX_TERMS:g} terms" if pred_digits == _TOO_MANY_TERMS
        else "a number too large to write down" if pred_digits == math.inf
        else f"a number of about {pred_digits:.3g} digits"
    )
    _note(f"unreadable: evaluating the answer needs {how} (limit {MAX_DIGITS:g} digits)")
    return True


# "\frac{1}{3} \approx 0.33": the exact value is the answer (the parser, as Math-Verify, reads
# the left side), but an approximation that contradicts it ("3 \approx 4") is no answer.
_APPROX = re.compile(r"\\approx(?![a-zA-Z])")
_PLAIN_DECIMAL = re.compile(r"[+-]?(\d+)(?:\.(\d+))?")


def _approx_contradicts(pred: str) -> bool:
    """``a \\approx r`` with a constant ``a`` and a plain decimal ``r`` that is not ``a``
    rounded or truncated to the digits ``r`` shows."""
    import sympy

    parts = _APPROX.split(pred)
    if len(parts) != 2:
        return False
    lhs, rhs = (x.strip() for x in parts)
    m = _PLAIN_DECIMAL.fullmatch(rhs)
    if m is None or not lhs or re.fullmatch(_NAME, lhs):
        return False  # "x \approx 3.14": the value is on the right
    decimals = len(m.group(2) or "")
    # The place of the last significant digit: 0.33 -> 0.01, 4 -> 1, 4000 -> 1000.
    trailing = 0 if decimals else len(m.group(1)) - len(m.group(1).rstrip("0"))
    unit = sympy.Rational(1, 10**decimals) if decimals else sympy.Integer(10) ** min(trailing, len(m.group(1)) - 1)
    try:
        a = _parse_sympy(lhs)
        if not (isinstance(a, sympy.Expr) and a.is_number) or _digits_needed(a) > MAX_DIGITS:
            return False
        diff = sympy.N(a - sympy.Rational(rhs), 30)
        return bool(diff.is_real and abs(diff) >= unit)
    except Exception:  # noqa: BLE001 - an odd left side: leave it to the parser
        return False


def sympy_equal(pred: str, gold: str, near: float | None = None) -> bool:
    """Exact equality of two LaTeX strings via sympy. Unbounded time: call it in a worker.

    ``near``: the gold is this float (see :func:`answers_equal`); a constant answer within a
    few ulps of it is equal too.

    Raises :class:`GoldError` when the gold cannot be parsed: every answer would silently be
    wrong, which hides a data bug.
    """
    try:
        b = _parse_sympy(gold)
    except Exception as e:  # noqa: BLE001 - sympy raises many types on odd input
        if _PROSE.fullmatch(gold.strip()):
            return pred.strip().lower() == gold.strip().lower()
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise GoldError(f"sympy cannot parse {gold!r}: {why}") from e
    if _too_costly(_binomial_digits(pred), b):
        return False
    if _APPROX.search(pred) and _approx_contradicts(pred):
        _note("unreadable: the approximation after \\approx contradicts the value before it")
        return False
    try:
        a = _parse_sympy(pred, letter_unit=not getattr(b, "free_symbols", True))
    except Exception:  # noqa: BLE001 - an unparseable answer is simply not equal
        return False
    if _too_costly(_digits_needed(a), b):
        return False
    try:
        return _sym_equal(a, b) or (near is not None and _near_value(a, near))
    except Exception:  # noqa: BLE001 - sympy raises many types on odd input
        # If the gold compares with itself, the answer's structure is what sympy could not
        # compare ("6 \\mod 7" vs 5): a wrong answer, not an infrastructure error. A gold that
        # cannot be compared at all re-raises (the grade becomes score=None).
        _sym_equal(b, b)
        return False


def warmup() -> None:
    """Import and exercise the parser once (worker start-up)."""
    sympy_equal("\\frac{1}{2}+x", "x+0.5")


# --------------------------------------------------------------------------- equality


MAX_PARTS = 64


def _match_unordered(preds: list[Any], golds: list[Any], eq: Any) -> bool:
    """The predictions and the golds are the same set of values (repeated predictions are fine).

    Each prediction must equal some gold and each gold must be equalled by some prediction;
    equality is transitive, so this is set equality. ``n*m`` comparisons, no backtracking.
    Raises ``_Undecided`` when only comparisons that ran out of budget could decide it.
    """
    uniq = list(dict.fromkeys(preds)) if all(isinstance(p, str) for p in preds) else list(preds)
    if not uniq or not golds or len(uniq) > MAX_PARTS or len(golds) > MAX_PARTS:
        return False
    m = [[eq(p, g) for g in golds] for p in uniq]
    rows = [any(x is True for x in r) or (None if any(x is None for x in r) else False) for r in m]
    cols = [any(r[j] is True for r in m) or (None if any(r[j] is None for r in m) else False) for j in range(len(golds))]
    if False in rows or False in cols:
        return False
    if None in rows or None in cols:
        raise _Undecided
    return True


class _Undecided(Exception):
    """A comparison ran out of budget: the result is unknown, not false."""


def answers_equal(pred: str, gold: str, cfg: MathConfig = DEFAULT_MATH, near: float | None = None) -> bool | None:
    """``True``/``False``, or ``None`` when the sympy step failed or ran out of budget.

    ``near`` is set when the gold was given as a float (``gold`` is then its ``repr``): a
    binary double carries its value only to about 16 digits, so a numeric answer within
    :data:`FLOAT_GOLD_ULPS` units in the last place of it is equal too (``0.3`` for gold
    ``0.1 + 0.2``, ``1/3`` for ``1/3`` computed in floating point). A gold written as a string
    stays exact.
    """
    p, g = normalize(pred), normalize(gold)
    if not p:
        return False
    if p == g:
        return True
    if cfg.allow_assignment:
        mp, mg = _ASSIGN.match(p), _ASSIGN.match(g)
        if mp and not mg and "=" not in g:
            p = mp.group(1).strip()
        elif mg and not mp and "=" not in p:
            g = mg.group(1).strip()  # gold "f(x) = 2x", answer "2x"
        if p == g:
            return True
    m = _TRAILING_WORDS.match(p)
    if m and _unit_words(p[m.end(1):]):
        p = m.group(1)
    if _value_text(p) and not _value_text(g):
        return False  # "5 \\text{ million}": sympy would drop the text and read 5
    if _ELLIPSIS.search(p) and not _ELLIPSIS.search(g):
        return False  # "6, \\ldots" is a sequence, "6\\ldots" a truncated value: neither is 6
    if _primes(p) != _primes(g):
        return False  # the parser drops primes: "y' = 2x" read "y = 2x", "x'" read x
    bp, bg = _base_literal(p), _base_literal(g)
    if bp is not None or bg is not None:
        # "1011_2": digits in a base. Compare values; an invalid literal ("12_2") is wrong.
        vp = bp if bp is not None else (int(_canon_int(p)) if re.fullmatch(r"[+-]?\d{1,300}", p) else None)
        vg = bg if bg is not None else (int(_canon_int(g)) if re.fullmatch(r"[+-]?\d{1,300}", g) else None)
        return vp is not None and vp == vg
    if _WORD.fullmatch(g):
        # A word answer ("Yes", "even"): compare as text. As sympy it would be a product of
        # one-letter symbols, and "no" would equal "on".
        return p.lower() == g.lower()
    lg = _letter(g)
    if lg is not None and not re.fullmatch(r"[a-z]", g):  # multiple choice gold "B" / "(B)"
        return _letter(p) == lg
    if re.fullmatch(r"[+-]?\d+", p) and re.fullmatch(r"[+-]?\d+", g):
        # Integers of any length compare digit by digit, no int() (which caps at 4300 digits).
        return _canon_int(p) == _canon_int(g)
    np_, ng = parse_number(p), parse_number(g)
    if np_ is not None and ng is not None:
        return _numbers_equal(np_, ng, cfg) or _near_float(np_, near, cfg)
    if ng is not None and re.fullmatch(r"[A-Za-z ]+", p):
        return False  # a word is never a number
    if "\\cup" in p and "\\cup" in g:
        # Same intervals in any order is the same union; otherwise let sympy decide (a union can
        # be written with different pieces, e.g. (0,1]\cup(1,2) = (0,2)).
        up, ug = _split_cup(p), _split_cup(g)
        if up and ug and len(up) == len(ug):
            try:
                if _match_unordered(up, ug, lambda x, y: answers_equal(x, y, cfg)):
                    return True
            except _Undecided:
                pass
    wp, wg = _wrapped(p), _wrapped(g)
    if wp and wg and "," in wp[1] + wg[1] and not (_is_thousands(wp[1]) or _is_thousands(wg[1])):
        pp, gp = split_top(wp[1]), split_top(wg[1])
        if wg[0] == "\\{" or wp[0] == "\\{":
            if wg[0] != wp[0]:
                return False
            try:
                return _match_unordered(pp, gp, lambda x, y: answers_equal(x, y, cfg))
            except _Undecided:
                return None
        if (wp[0], wp[2]) != (wg[0], wg[2]) or len(pp) != len(gp):
            return False  # open vs closed ends, or a different number of coordinates
        results = [answers_equal(x, y, cfg) for x, y in zip(pp, gp)]
        if any(r is False for r in results):
            return False
        return None if any(r is None for r in results) else True
    # A literal the fast path read goes to sympy as its exact value: the LaTeX parser reads "1e6"
    # as 6e (so "6e" passed for gold 1e6, and "e - 7" for gold 1e-07) and cannot parse
    # "0.\overline{3}" at all (a good gold became score=None for any non-numeric answer).
    if np_ is not None:
        p = _literal(np_)
    if ng is not None:
        g = _literal(ng)
    if _nesting(p) > MAX_NESTING:
        return False  # unreadable: see MAX_NESTING
    return _sympy_checked(p, g, cfg, near)


#: Brackets nested deeper than this (after redundant pairs are dropped) make an answer
#: unreadable, a plain wrong answer: no real answer comes close (a 20-level continued fraction
#: nests 21 deep), and the parser's time grows steeply with depth, so "2(2(2(...)))" 650 deep or
#: "[[[...1...]]]" 900 deep each used the whole budget (score=None, a worker killed and restarted).
MAX_NESTING = 100


def _nesting(s: str) -> int:
    if s.count("(") + s.count("[") + s.count("{") <= MAX_NESTING:
        return 0  # cheap: cannot be deeper
    depth = deepest = 0
    for c in _collapse_parens(s):
        if c in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in ")]}":
            depth = max(depth - 1, 0)
    return deepest


def _primes(s: str) -> int:
    """Primes outside text: ``f'(x)`` has one."""
    return _TEXT_ARG.sub("", s).count("'") if "'" in s else 0


#: How far (in units in the last place) a numeric answer may be from a gold given as a float:
#: the decimal the gold was meant to be and a few rounding errors of the arithmetic that made it.
FLOAT_GOLD_ULPS = 4


def _float_tolerance(near: float) -> Fraction:
    return Fraction(math.ulp(near)) * FLOAT_GOLD_ULPS


def _near_float(n: tuple[Fraction, bool], near: float | None, cfg: MathConfig) -> bool:
    if near is None:
        return False
    v, pct = n
    vals = {v, v / 100} if pct and cfg.percent_either_scale else {v}
    g, tol = Fraction(near), _float_tolerance(near)
    return any(abs(x - g) <= tol for x in vals)


def _near_value(a: Any, near: float) -> bool:
    """A constant sympy value within :data:`FLOAT_GOLD_ULPS` ulps of the float ``near``."""
    import sympy

    if not isinstance(a, sympy.Expr) or a.free_symbols or not a.is_number:
        return False
    g = Fraction(near)
    try:
        d = complex(sympy.N(a - sympy.Rational(g.numerator, g.denominator), 30))
    except Exception:  # noqa: BLE001 - not a finite number
        return False
    return math.isfinite(d.real) and math.isfinite(d.imag) and abs(d) <= float(_float_tolerance(near))


_BASE_LITERAL = re.compile(r"((?=[0-9A-Z]*\d)[0-9A-Z]{1,300})_\{?\s*\(?\s*(\d{1,2})\s*\)?\s*\}?")


def _base_literal(s: str) -> float | None:
    """Value of ``1011_2`` / ``A3_{16}`` (digits in a base 2-36); NaN (equal to nothing) for
    digits the base lacks."""
    m = _BASE_LITERAL.fullmatch(s.strip())
    if m is None or not 2 <= int(m.group(2)) <= 36:
        return None
    try:
        return int(m.group(1), int(m.group(2)))
    except ValueError:
        return float("nan")


def _split_cup(s: str) -> list[str] | None:
    parts = [x.strip() for x in s.split("\\cup")]
    return parts if all(_wrapped(x) for x in parts) else None


def _literal(n: tuple[Fraction, bool]) -> str:
    """LaTeX for the exact value of a number read by :func:`parse_number`: ``-\\frac{3}{4}``.

    A percentage becomes its fraction (``50\\%`` -> ``\\frac{1}{2}``), as the parser reads ``%``;
    the parser cannot read a ``\\frac`` followed by ``\\%``."""
    v, pct = n
    v = v / 100 if pct else v
    sign, v = ("-" if v < 0 else ""), abs(v)
    return sign + (str(v.numerator) if v.denominator == 1 else f"\\frac{{{v.numerator}}}{{{v.denominator}}}")


def _canon_int(s: str) -> str:
    neg = s.startswith("-")
    d = s.lstrip("+-").lstrip("0") or "0"
    return ("-" if neg and d != "0" else "") + d


class _NeedsSympy(Exception):
    """The fast paths cannot decide: the grade moves to a pool worker."""


def _sympy_checked(p: str, g: str, cfg: MathConfig, near: float | None = None) -> bool | None:
    from thinkgym.verifiers import pool

    if pool.in_worker() or not cfg.isolate:
        return sympy_equal(p, g, near)  # a pool worker is itself under the item's budget
    raise _NeedsSympy


# --------------------------------------------------------------------------- grader


def _gold_parts(gold: Any) -> list[str]:
    if isinstance(gold, (list, tuple)):
        return [_gold_str(x) for x in gold]
    g = normalize(_gold_str(gold))
    w = _wrapped(g)
    if w and w[0] == "\\{":
        return split_top(w[1]) or [g]
    if _wrapped(g) is None and "," in g and not _is_thousands(g) and "\\pm" not in g:
        parts = split_top(g)
        if len(parts) > 1:
            return parts
    return [g]


def _float_golds(gold: Any) -> dict[str, float]:
    """The golds given as finite floats, by the string :func:`_gold_parts` makes of each."""
    items = gold if isinstance(gold, (list, tuple)) else [gold]
    out: dict[str, float] = {}
    for x in items:
        v = _gold_value(x)
        if isinstance(v, float) and math.isfinite(v):
            out[_gold_str(x)] = out[normalize(_gold_str(x))] = v
    return out


def _gold_value(x: Any) -> int | float | Fraction | str:
    """A gold scalar as a plain Python value: numpy and other registered number types (a dataset
    read through pandas holds ``np.int64`` and ``np.float64``) become the int, Fraction or float
    they stand for. A bool is refused: ``True`` is no answer to a math problem."""
    if isinstance(x, bool) or type(x).__name__ == "bool_":  # numpy's bool is no Integral, but still a flag
        raise TypeError("gold must be a number, a string or a list, not bool")
    if isinstance(x, str):
        return str(x)
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Rational):
        return Fraction(x.numerator, x.denominator)
    if isinstance(x, float):
        return float(x)  # np.float64 is a float whose repr is "np.float64(0.5)"
    if isinstance(x, numbers.Real):
        # np.float32(0.1) is 0.100000001490116...: its shortest text is the decimal it was meant to be.
        try:
            return float(str(x))
        except ValueError:
            return float(x)
    raise TypeError(f"gold must be a number, a string or a list, not {type(x).__name__}")


def _gold_str(x: Any) -> str:
    v = _gold_value(x)
    if isinstance(v, float):
        if math.isnan(v):
            # NaN equals nothing, and its text "nan" read as a product of symbols equal to an
            # answer "nan": a data error, never a score.
            raise GoldError("the gold is NaN, not a number")
        if math.isinf(v):
            return "\\infty" if v > 0 else "-\\infty"  # sympy's oo: an answer \infty equals float("inf")
        return repr(v)
    if isinstance(v, Fraction):
        return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"
    return str(v)


def _expand_pm(s: str) -> list[str]:
    """``a \\pm b`` -> ``[a+b, a-b]`` (one top-level ``\\pm`` or ``\\mp``); anything else unchanged."""
    n = normalize(s)
    if n.count("\\mp") == 1 and "\\pm" not in n:
        n = n.replace("\\mp", "\\pm")  # alone, a \mp b is the same two values as a \pm b
    if n.count("\\pm") != 1 or _wrapped(n):
        return [s]
    a, b = (x.strip() for x in n.split("\\pm"))
    if not b:
        return [s]
    return [f"{a}+({b})", f"{a}-({b})"] if a else [b, f"-({b})"]


def _pred_parts(answers: list[str]) -> list[str]:
    out: list[str] = []
    for a in answers:
        n = normalize(a)
        m = _ASSIGN.match(n)
        if m and (_wrapped(m.group(1).strip()) or ("",))[0] == "\\{":
            n = m.group(1).strip()  # "x \\in \\{1, 2\\}": the set is the answer
        w = _wrapped(n)
        if w and w[0] == "\\{":
            out += split_top(w[1])
        elif w is None and not _is_thousands(n):
            out += split_top(n) or [n]
        else:
            out.append(n)
    return [x for part in out for x in _expand_pm(part)]


def grade_math_with(completion: str, gold: Any, cfg: MathConfig = DEFAULT_MATH) -> Grade:
    """Grade ``completion`` against ``gold`` (str, int, float, or a list for multi-part answers).

    The fast paths run here; if any comparison needs sympy, the whole grade is redone in a pool
    worker, so all its sympy steps (several candidates, several parts) share one hard budget.
    """
    try:
        return _grade(completion, gold, cfg)
    except _NeedsSympy:
        pass
    from thinkgym.verifiers import pool

    res = pool.default_pool().call(
        "thinkgym.verifiers.math_equiv:_grade", completion, gold, cfg, timeout=cfg.timeout_s
    )
    if res.ok:
        return res.value
    ex = extract(completion, cfg.extract)
    what = "exceeded its time budget" if res.timed_out else "failed"
    return Grade.error(f"sympy step {what}: {res.error}", extracted=ex.joined())


def _grade(completion: str, gold: Any, cfg: MathConfig) -> Grade:
    ex = extract(completion, cfg.extract)
    if not ex.ok:
        return Grade(0.0, reason=ex.reason)
    extracted = ex.joined()
    try:
        golds = [x for g in _gold_parts(gold) for x in _expand_pm(g)]
    except GoldError as e:
        return Grade.error(f"bad gold answer {gold!r:.80}: {e}", extracted=extracted)  # a data bug
    if not all(normalize(g) for g in golds):
        return Grade.error(f"empty gold answer {gold!r}", extracted=extracted)  # a data bug, not a wrong answer
    floats = _float_golds(gold)
    notes: list[str] = []
    token = _NOTES.set(notes)
    try:
        if len(golds) > 1:
            ok = _match_unordered(
                _pred_parts(ex.answers), golds, lambda x, y: answers_equal(x, y, cfg, floats.get(y))
            )
            why = "matches every part of the answer" if ok else "parts differ from the multi-part answer"
        else:
            distinct = list(dict.fromkeys(normalize(a) for a in ex.answers))
            ok, why, undecided = True, "equal", False
            for a in distinct:  # every candidate must equal the answer; the first that differs ends it
                r = answers_equal(a, golds[0], cfg, floats.get(golds[0]))
                if r is False:
                    ok = False
                    why = "several different answers" if len(distinct) > 1 else "not equal to the answer"
                    break
                undecided = undecided or r is None
            if ok and undecided:
                raise _Undecided
    except _Undecided:
        return Grade.error("sympy step exceeded its time budget", extracted=extracted)
    except GoldError as e:  # a data bug, like an empty gold
        return Grade.error(f"unparseable gold answer {gold!r}; {e}", extracted=extracted)
    finally:
        _NOTES.reset(token)
    if not ok and notes:  # why an answer was read as wrong without a comparison
        return Grade(0.0, extracted=extracted, reason=f"{why} ({notes[0]})", details={"unreadable": notes[0]})
    return Grade(1.0 if ok else 0.0, extracted=extracted, reason=why)


@register_grader("math", version=VERSION, kwargs={"timeout_s": seconds_arg, "math_config": config_arg(MathConfig)})
def grade_math(completion: str, gold: Any, **meta: Any) -> Grade:
    """Exact math equivalence of the boxed/<answer> answer after </think> (sympy, budgeted)."""
    cfg = meta.get("math_config") or DEFAULT_MATH
    if isinstance(cfg, dict):  # from YAML / JSON: {"timeout_s": 3, "extract": {"last_only": true}}
        ex = cfg.get("extract")
        cfg = MathConfig(**{**cfg, **({"extract": ExtractConfig(**ex)} if isinstance(ex, dict) else {})})
    if "timeout_s" in meta:
        cfg = dataclasses.replace(cfg, timeout_s=float(meta["timeout_s"]))
    return grade_math_with(completion, gold, cfg)
