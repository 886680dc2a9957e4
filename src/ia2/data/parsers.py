"""Answer extractors for generative tasks: the gold answer and the model's generation go through the same one."""

from __future__ import annotations

import re
from decimal import Decimal

from ia2.errors import IA2Error
from ia2.registry import PARSERS

# A number right after the last "####": optional "$" and sign (ASCII or unicode minus), thousands commas only in
# groups of three, and no digit glued on after it (so "1,23" or "1.2.3" do not parse).
_GSM8K = re.compile(r"####[ \t]*(\$?[-−]?\$?)[ \t]*((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?![,.]?\d)")


def _canonical(number: str, negative: bool) -> str:
    """A decimal without commas: integral ones as integers ("72.00" -> "72"), others trimmed ("0.50" -> "0.5")."""
    value = Decimal(number.replace(",", ""))
    value = -value if negative else value
    return str(int(value)) if value == value.to_integral_value() else format(value.normalize(), "f")


def gsm8k(text: str) -> str | None:
    """The signed number right after the last "####", canonicalised; None without one (strict: no fallbacks)."""
    match = _GSM8K.match(text, max(text.rfind("####"), 0))
    return _canonical(match.group(2), "-" in match.group(1) or "−" in match.group(1)) if match else None


_REF_NUMBER = r"[0-9,]+(?:\.[0-9]+)?"
_REF_UNITS = (
    r"miles?|meters?|hours?|minutes?|bolts?|glasses?|vacuum cleaners?|sheep|eggs?|cups?|downloads?|years?|weeks?"
    r"|dollars?|GB|GB/minute"
)
# The reference's priority list, minus its two patterns that can never win: "answer\s+" (equal to "Answer\s+" when
# case is ignored) and "The best answer is:" (whenever it matches, the earlier "answer is" does too).
_REF_PATTERNS = (
    r"\\boxed\{([^}]+)\}",
    r"####\s*([^\n]+)",
    r"Answer:\s*([^\n]+)",
    r"The answer is\s*([^\n]+)",
    r"answer is\s*([^\n]+)",
    r"Answer\s+([^\n]+)",
    rf"\$\s*({_REF_NUMBER})",
    rf"({_REF_NUMBER})\s*(?:{_REF_UNITS})",
)
_REF_CLEANUP = (r"^\$", r"^\s*:\s*", r"^\s*\\boxed\{", r"\}\s*$", r"[.,]\s*$")


def _ref_float(number: str) -> float | None:
    """The reference's number reading: commas dropped, then float; None when nothing numeric is left."""
    try:
        return float(number.replace(",", ""))
    except ValueError:
        return None


def _ref_format(value: float) -> str:
    """The reference's number printing: integral floats as integers, others as Python prints a float."""
    return str(int(value)) if value.is_integer() else str(value)


def _ref_clean(answer: str) -> str:
    """The reference's cleanup of a pattern match: strip wrappers, then the first unsigned number if any."""
    answer = answer.strip()
    for pattern in _REF_CLEANUP:
        answer = re.sub(pattern, "", answer)
    number = re.search(_REF_NUMBER, answer)
    value = _ref_float(number.group()) if number else None
    return answer if value is None else _ref_format(value)


def gsm8k_reference(text: str) -> str:
    """The public IA2 reference code's lenient GSM8K parser, re-implemented only to reproduce the paper's setting.

    The first of its patterns that matches wins, with its last match; failing all, the last standalone number
    outside 1900-2100 and (0, 1); failing that, the whole text. Known defect kept on purpose: it drops the minus
    sign ("#### -5" -> "5"). The reference's last resort (numbers glued to letters, line by line) is omitted.
    """
    text = text.replace("<|eot_id|>", "").strip()
    for pattern in _REF_PATTERNS:
        found = re.findall(pattern, text, re.IGNORECASE)
        if found:
            return _ref_clean(found[-1])
    for number in reversed(re.findall(rf"\b({_REF_NUMBER})\b", text)):
        value = _ref_float(number)
        if value is not None and not (1900 <= value <= 2100 and value.is_integer()) and not 0 < value < 1:
            return _ref_format(value)
    return text


_BRACE_DEPTH = {"{": 1, "}": -1}


def _last_boxed(text: str) -> str | None:
    """The raw content of the last \\boxed{...} or \\fbox{...}, braces balanced; None when absent or unclosed."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    opening = text.index("{", start)
    depth = 0
    for i in range(opening, len(text)):
        depth += _BRACE_DEPTH.get(text[i], 0)
        if depth == 0:
            return text[opening + 1 : i]
    return None


_MATH_DELETE = ("\\!", "\\left", "\\right", "^{\\circ}", "^\\circ", "\\$", "$", "\\%", "%")


def _normalise_math(answer: str) -> str:
    """The MATH benchmark's (Hendrycks et al.) answer normalisation; "1.0" and "1" stay different, as there."""
    answer = re.sub(r"\\text\{\s[^{}]*\}\s*$", "", answer.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac"))
    for token in _MATH_DELETE:
        answer = answer.replace(token, "")
    answer = re.sub(r"\s+", "", re.sub(r"(^|[\s{])\.(?=\d)", r"\g<1>0.", answer.strip()))
    sides = answer.split("=")
    answer = sides[1] if len(sides) == 2 and len(sides[0]) <= 2 else answer
    answer = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", answer)
    answer = re.sub(r"\\frac(\w)(\w)", r"\\frac{\1}{\2}", answer)
    answer = re.sub(r"\\frac(\w)(?=\{)", r"\\frac{\1}", answer)
    if answer == "0.5":
        return "\\frac{1}{2}"
    return re.sub(r"^(-?\d+)/(-?\d+)$", r"\\frac{\1}{\2}", answer)


def boxed(text: str) -> str | None:
    """The last \\boxed{} (or \\fbox{}) answer, MATH-normalised; None when there is none or it is empty."""
    content = _last_boxed(text)
    if content is None:
        return None
    return _normalise_math(content) or None


def sciq(text: str) -> str | None:
    """The rest of the line after the last "####", lowercased, trimmed, without a leading article; None if empty."""
    if "####" not in text:
        return None
    answer = " ".join(text.rsplit("####", 1)[1].split("\n", 1)[0].lower().split()).rstrip(".,;:!?").strip()
    return re.sub(r"^(?:a|an|the)\s+", "", answer) or None


# A number at the very start of the answer: optional "$" and sign, thousands commas only in groups of three, and no
# digit, letter, slash, comma-digit or point-digit glued on after it ("9 apples" -> 9; "about 9", "9,5", "1.2.3",
# "7th" and "1/2" do not parse).
_LEADING_NUMBER = re.compile(r"(\$?[-−]?\$?)((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?![,.]?\d|[/\w])")


def number(text: str) -> str | None:
    """The number the answer starts with, canonicalised ("9 apples" -> "9", "1,200.50 dollars" -> "1200.5"); None
    when it does not start with one (strict: a number later in the text does not count)."""
    match = _LEADING_NUMBER.match(text.strip())
    return _canonical(match.group(2), "-" in match.group(1) or "−" in match.group(1)) if match else None


def text(answer: str) -> str | None:
    """The first line of the answer, lowercased with whitespace collapsed: exact match for short free-text answers."""
    line = " ".join(answer.strip().split("\n", 1)[0].lower().split())
    return line or None


PARSERS.register("text", text)
PARSERS.register("gsm8k", gsm8k)
PARSERS.register("gsm8k-reference", gsm8k_reference)
PARSERS.register("boxed", boxed)
PARSERS.register("sciq", sciq)
PARSERS.register("number", number)


def extract(parser: str, text: str) -> str | None:
    """The answer `parser` extracts from `text`; an unknown parser name is a user error."""
    if parser not in PARSERS:
        raise IA2Error(f"unknown answer parser {parser!r}; known: {', '.join(PARSERS)}")
    return PARSERS[parser](text)


def is_correct(parser: str, generation: str, gold: str) -> bool:
    """Whether the generation's answer equals the gold's; an unparsable gold is bad data and raises, never "wrong"."""
    expected = extract(parser, gold)
    if not expected:
        raise IA2Error(f"the gold answer has no parsable answer for parser {parser!r}: {gold[:80]!r}")
    return extract(parser, generation) == expected
