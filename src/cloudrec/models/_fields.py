"""Field rules shared by the request models.

Each rule is a pydantic ``PlainValidator``: it checks the JSON type itself (ints are JSON ints,
never strings, floats or booleans) and the seed's range in one go, and on failure raises a
``PydanticCustomError`` whose message says what the value must be. A rule used inside a model
validator can name a sub-field through ``ctx["sub"]`` (see :func:`problem`), which
``parse_request`` appends to the error's location.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Annotated, Any
from urllib.parse import SplitResult, urlsplit

from pydantic import BaseModel, ConfigDict, PlainValidator
from pydantic_core import PydanticCustomError

ERROR_TYPE = "cloudrec"
MAX_ID_CHARS = 128
MAX_URL_BYTES = 256


class Model(BaseModel):
    """Base of every request model: strict JSON types, immutable, and unknown fields refused
    (2101 naming the field): field names are case-sensitive, so a misspelt or wrongly cased
    optional field would otherwise be dropped without a word."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def problem(message: str, sub: str | None = None) -> PydanticCustomError:
    """A validation failure; ``sub`` names a field below the location being validated."""
    return PydanticCustomError(ERROR_TYPE, message, {"sub": sub} if sub else None)


def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if hi is None:
        return f"> {lo}" if lo_open else f">= {lo}"
    return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def int_rule(
    lo: int | None = None,
    hi: int | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    choices: Sequence[int] | None = None,
    default: int | None = None,
    then: Callable[[int], int] | None = None,
) -> PlainValidator:
    """A JSON integer within ``[lo, hi]`` (open ends as asked) or one of ``choices``.

    ``default`` is what an explicit JSON ``null`` becomes; ``then`` normalises a valid value.
    """
    if choices is not None:
        if len(choices) == 1:
            desc = f"must be the integer {choices[0]}"
        else:
            desc = "must be one of the integers " + ", ".join(str(c) for c in choices)
    else:
        desc = f"must be an integer {_interval(lo, hi, lo_open, hi_open)}"

    def check(value: Any) -> int:
        if value is None and default is not None:
            return default
        if type(value) is not int:
            raise problem(desc)
        ok = (
            value in choices
            if choices is not None
            else (lo is None or (value > lo if lo_open else value >= lo))
            and (hi is None or (value < hi if hi_open else value <= hi))
        )
        if not ok:
            raise problem(desc)
        return then(value) if then is not None else value

    return PlainValidator(check, json_schema_input_type=int)


def float_rule(lo: float, hi: float, *, default: float | None = None) -> PlainValidator:
    """A finite JSON number (an int is fine too) within ``[lo, hi]``; returned as ``float``."""
    desc = f"must be a number {_interval(lo, hi, False, False)}"

    def check(value: Any) -> float:
        if value is None and default is not None:
            return default
        if type(value) not in (int, float) or not math.isfinite(value) or not lo <= value <= hi:
            raise problem(desc)
        return float(value)

    return PlainValidator(check, json_schema_input_type=float)


def _has_control(text: str) -> bool:
    # Cc: control characters; Cs: lone surrogates (JSON "\ud800"), which cannot be encoded.
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text)


def text_rule(
    *,
    max_chars: int | None = None,
    max_bytes: int | None = None,
    pattern: re.Pattern[str] | None = None,
    pattern_desc: str = "",
) -> PlainValidator:
    """A non-empty JSON string without control characters, of bounded length and charset."""

    def check(value: Any) -> str:
        if type(value) is not str or not value:
            raise problem("must be a non-empty string")
        if _has_control(value):
            raise problem("must not contain control characters")
        if max_chars is not None and len(value) > max_chars:
            raise problem(f"must be at most {max_chars} characters")
        if max_bytes is not None and len(value.encode("utf-8")) > max_bytes:
            raise problem(f"must be at most {max_bytes} bytes (UTF-8)")
        if pattern is not None and not pattern.fullmatch(value):
            raise problem(pattern_desc)
        return value

    return PlainValidator(check, json_schema_input_type=str)


def split_url(value: Any, desc: str, max_bytes: int, *, port: str | None = None
              ) -> SplitResult:
    """``value`` split as a URL; ``problem(desc)`` when it is no string, empty, has control
    characters or spaces, is over ``max_bytes`` (UTF-8) or cannot be split. With ``port``
    (the problem to report) the port must be a number in 0..65535, and a URL that cannot be
    split reports ``port`` too."""
    if type(value) is not str or not value or _has_control(value) or " " in value:
        raise problem(desc)
    if len(value.encode("utf-8")) > max_bytes:
        raise problem(desc)
    try:
        parts = urlsplit(value)
        parts.hostname  # noqa: B018 - raises ValueError on a bad address
        if port is not None:
            parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise problem(port or desc) from None
    return parts


def url_rule() -> PlainValidator:
    """An http(s) URL with a host, at most 256 bytes (UTF-8)."""
    desc = f"must be an http(s) URL of at most {MAX_URL_BYTES} bytes"

    def check(value: Any) -> str:
        parts = split_url(value, desc, MAX_URL_BYTES)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise problem(desc)
        return value

    return PlainValidator(check, json_schema_input_type=str)


_COLOR = re.compile(r"[0-9A-F]{6}|[0-9a-f]{6}")


def color_rule(default: str) -> PlainValidator:
    """An RGB colour: 6 hex digits, letters all upper or all lower case ("00ff00", "00FF00")."""

    def check(value: Any) -> str:
        if value is None:
            return default
        if type(value) is not str or not _COLOR.fullmatch(value):
            raise problem(
                "must be 6 hex digits (000000-FFFFFF), letters all upper or all lower case"
            )
        return value

    return PlainValidator(check, json_schema_input_type=str)


def choice_rule(choices: Sequence[str], default: str | None = None) -> PlainValidator:
    """One of a fixed set of strings, matched exactly."""
    desc = "must be one of " + ", ".join(f'"{c}"' for c in choices)

    def check(value: Any) -> str:
        if value is None and default is not None:
            return default
        if type(value) is not str or value not in choices:
            raise problem(desc)
        return value

    return PlainValidator(check, json_schema_input_type=str)


def _check_base64(value: Any) -> str:
    """Strict, canonical base64 (standard alphabet, padded) of 1..2048 bytes."""
    desc = "must be valid base64 of 1 to 2048 bytes"
    if type(value) is not str or not value.isascii():
        raise problem(desc)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise problem(desc) from None
    # Reject non-canonical encodings (stray bits in the last character) as well.
    if not 1 <= len(raw) <= 2048 or base64.b64encode(raw).decode("ascii") != value:
        raise problem(desc)
    return value


# roomid and uid end up in file names ({appid}_{roomid}_{recordid}_{uid}.m3u8), so they are kept
# to a charset that is safe in every store and file system.
_SAFE_ID = re.compile(r"[A-Za-z0-9_\-.@]+")
_SAFE_ID_DESC = "may contain only letters, digits and _ - . @"

RoomId = Annotated[
    str, text_rule(max_chars=MAX_ID_CHARS, pattern=_SAFE_ID, pattern_desc=_SAFE_ID_DESC)
]
Uid = RoomId
Ident = Annotated[str, text_rule(max_chars=MAX_ID_CHARS)]  # resid, recordid
AppId = Annotated[int, int_rule(0, 2**63 - 1)]
HttpUrl = Annotated[str, url_rule()]
Alpha = Annotated[float, float_rule(0.0, 1.0, default=1.0)]
Base64Sei = Annotated[str, PlainValidator(_check_base64, json_schema_input_type=str)]
