"""Decoding a client's websocket frame without letting it crash the socket.

`json.loads` alone is not safe on input from the network: nesting 20,000 deep
raises RecursionError, an integer of 5,000 digits raises ValueError (CPython's
4,300-digit limit), and a lone surrogate ("\\ud800") decodes fine and only fails
later, at the database, as UnicodeEncodeError. Every such frame must get a
typed error instead, so this module bounds nesting and number size before and
while parsing, and checks that every string is encodable Unicode without NUL
(PostgreSQL refuses NUL in text).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: Protocol v1's deepest frame is two levels; 32 leaves room for extensions.
MAX_DEPTH = 32
#: 18 digits always fit a signed 64-bit column (message ids, offsets).
MAX_INT_DIGITS = 18
MAX_FLOAT_CHARS = 32

# A JSON string, escapes included: removed before counting brackets, so that
# brackets inside text do not count as nesting. Linear: no nested quantifiers.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


class FrameError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _check_depth(text: str) -> None:
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise FrameError("too_deep", f"Frames may nest at most {MAX_DEPTH} levels.")
        else:
            depth -= 1


def _int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise FrameError("number_too_large", f"Integers have at most {MAX_INT_DIGITS} digits.")
    return int(digits)


def _float(text: str) -> float:
    value = float(text) if len(text) <= MAX_FLOAT_CHARS else math.inf
    if not math.isfinite(value):
        raise FrameError("number_too_large", "Numbers must be finite and short.")
    return value


def _constant(name: str) -> Any:
    raise FrameError("bad_json", f"{name} is not JSON.")


def decode(text: str) -> Any:
    """The JSON value of a text frame, or FrameError with a protocol error code."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a str built in-process can hold lone surrogates
        raise FrameError("bad_text", "Frames must be valid Unicode.") from None
    _check_depth(text)
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except (json.JSONDecodeError, RecursionError):
        raise FrameError("bad_json", "The frame is not valid JSON.") from None
    # Lone surrogates and NUL can only arrive as \u escapes: skip the walk without one.
    if "\\u" in text:
        _check_strings(value)
    return value


def _check_strings(value: Any) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise FrameError("bad_text", "Text must not contain NUL characters.")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise FrameError(
                    "bad_text", "Text must be valid Unicode (no lone surrogates)."
                ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key)
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)
