"""PromQL building blocks: label names, escaped label matchers and durations.

Every label value that reaches a query goes through :func:`quote_string` (PromQL string
escaping) and, for regex matchers, :func:`quote_regex` first (RE2 metacharacter escaping).
A hostile value (quotes, backslashes, newlines, ``.*``, ``|``, ``$window``) therefore matches
itself literally and can never change the shape of the query.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
# Go's regexp.QuoteMeta set: Prometheus regexes are RE2, anchored on both ends.
_REGEX_META = set(r"\.+*?()|[]{}^$")
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


@dataclass(frozen=True)
class Prefix:
    """Match label values that start with ``value`` (rendered ``=~"<escaped value>.*"``).

    Example: ``pod=Prefix("resnet50-")`` selects the pods of a Deployment.
    """

    value: str


LabelValue = str | Prefix | Iterable[str]


def check_label_name(name: str) -> str:
    """Return ``name`` if it is a valid Prometheus label name, else raise ValueError."""
    if not isinstance(name, str) or not _LABEL_NAME.match(name):
        raise ValueError(f"invalid Prometheus label name: {name!r}")
    return name


def _check_text(value: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"label value must be a str, got {type(value).__name__}: {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: Prometheus needs valid UTF-8
        raise ValueError(f"label value is not valid UTF-8: {value!r}") from exc
    return value


def quote_string(value: str) -> str:
    """Return ``value`` as a double-quoted PromQL string literal.

    Backslash and double quote are backslash-escaped; newline, CR and tab use their short
    escapes; other control characters use ``\\u00XX``. The result is also a valid JSON string.
    """
    out = []
    for ch in _check_text(value):
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def quote_regex(value: str) -> str:
    """Escape RE2 metacharacters (like Go's ``regexp.QuoteMeta``) so ``value`` matches literally."""
    return "".join("\\" + ch if ch in _REGEX_META else ch for ch in _check_text(value))


def matcher(name: str, value: LabelValue) -> str:
    """Render one label matcher.

    - ``str``: exact match ``name="value"``;
    - :class:`Prefix`: ``name=~"<escaped prefix>.*"``;
    - a list/tuple/set of str: ``name=~"a|b"`` with every alternative escaped (an empty
      collection is a ValueError).
    """
    check_label_name(name)
    if isinstance(value, str):
        return f"{name}={quote_string(value)}"
    if isinstance(value, Prefix):
        return f"{name}=~{quote_string(quote_regex(value.value) + '.*')}"
    if isinstance(value, (bytes, bytearray)) or not hasattr(value, "__iter__"):
        raise TypeError(f"label {name!r}: value must be str, Prefix or a collection of str, got {value!r}")
    alternatives = sorted({quote_regex(v) for v in value})
    if not alternatives:
        raise ValueError(f"label {name!r}: empty collection of values (it would match nothing)")
    return f"{name}=~{quote_string('|'.join(alternatives))}"


def parse_duration(text: str | float | int) -> float:
    """Prometheus duration (``"1m30s"``, ``"500ms"``) or a number of seconds -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not math.isfinite(text) or text <= 0:
            raise ValueError(f"duration must be a positive number of seconds, got {text!r}")
        return float(text)
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text or total <= 0:
        raise ValueError(f"invalid Prometheus duration: {text!r} (examples: '30s', '1m', '500ms')")
    return total


def format_duration(seconds: float | str) -> str:
    """Seconds (or a duration string, validated) -> a Prometheus duration string (``"4s"``, ``"1500ms"``)."""
    if isinstance(seconds, str):
        if seconds.startswith("$__"):  # a Grafana variable such as $__rate_interval
            if not re.fullmatch(r"\$__\w+", seconds):
                raise ValueError(f"invalid Grafana interval variable: {seconds!r}")
            return seconds
        parse_duration(seconds)
        return seconds
    ms = round(parse_duration(seconds) * 1000)
    if ms <= 0:
        raise ValueError(f"duration too small: {seconds!r} s")
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"
