"""Request bodies of the ingress API (``POST /app/{appid}/v1/ingress``) and of auto-record
rules (``POST /app/{appid}/v1/autorecord``), with the rules every source URL must follow.

A source URL names its kind by its scheme (:data:`SCHEMES`); ``janus+http(s)://`` mirrors
every publisher of a Janus VideoRoom and takes no ``uid``, every other kind needs one. The
address check (a private or loopback host refused unless ``allow_private_urls``) needs DNS and
runs in the API layer and again at connect time (:mod:`cloudrec.ingress.guard`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, PlainValidator, ValidationInfo, field_validator

from ._fields import AppId, HttpUrl, Model, RoomId, Uid, int_rule, problem, split_url
from .mixconfig import MixConfig
from .requests import _empty_is_none, _mixconfig_for_mixed, _same_appid
from .storage import StorageConfig

MAX_SOURCE_URL_BYTES = 2048
#: scheme -> kind (the label operators see in the console and ``/metrics``)
SCHEMES = {"rtsp": "rtsp", "rtsps": "rtsp", "rtmp": "rtmp", "rtmps": "rtmp", "srt": "srt",
           "http": "http", "https": "http", "whep": "whep", "wheps": "whep",
           "janus+http": "janus", "janus+https": "janus"}
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443, "srt": 8890,
                 "http": 80, "https": 443, "whep": 80, "wheps": 443, "janus+http": 8088,
                 "janus+https": 8089}
_DESC = ("must be a URL of at most 2048 bytes with a host and one of the schemes "
         + ", ".join(f"{s}://" for s in SCHEMES))


def source_kind(url: str) -> str:
    """The kind of source a checked URL names (``rtsp``, ``http``, ``janus``...)."""
    return SCHEMES[urlsplit(url).scheme.lower()]


def source_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or DEFAULT_PORTS[parts.scheme.lower()]


def _check_source_url(value: Any) -> str:
    parts = split_url(value, _DESC, MAX_SOURCE_URL_BYTES,
                      port="has a port that is not a number in 0..65535")
    host = parts.hostname
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise problem(f"has an unknown scheme {parts.scheme + '://' if scheme else '(none)'}; "
                      + _DESC.removeprefix("must be a URL of at most 2048 bytes with a host and "))
    if not host:
        raise problem("has an empty host")
    if SCHEMES[scheme] == "janus":
        room = parse_qs(parts.query).get("room", [""])[0]
        if not room.isascii() or not room.isdigit():
            raise problem("must name the Janus VideoRoom as ?room=N (a number)")
    return value


SourceUrl = Annotated[str, PlainValidator(_check_source_url, json_schema_input_type=str)]


class IngressRequest(Model):
    """``{"roomid", "uid", "url"}``: pull ``url`` into the room as ``uid`` (no uid for a Janus
    room: its publishers come under their own names)."""

    roomid: RoomId
    url: SourceUrl
    uid: Uid | None = Field(None, validate_default=True)

    @field_validator("uid")
    @classmethod
    def _uid_unless_janus(cls, value: str | None, info: ValidationInfo) -> str | None:
        url = info.data.get("url")
        if url is None:
            return value
        janus = source_kind(url) == "janus"
        if value is None and not janus:
            raise problem("is required (the publisher's uid in the room)")
        if value is not None and janus:
            raise problem("is not allowed for a Janus room: its publishers keep their names")
        return value

    @property
    def kind(self) -> str:
        return source_kind(self.url)


_PATTERN = re.compile(r"[A-Za-z0-9_\-.@*]{1,128}")


def _check_pattern(value: Any) -> str:
    if type(value) is not str or not _PATTERN.fullmatch(value):
        raise problem("must be 1-128 of letters, digits, _ - . @ and * (any characters)")
    return value


RoomPattern = Annotated[str, PlainValidator(_check_pattern, json_schema_input_type=str)]


class AutoRecordRequest(Model):
    """An auto-record rule: every publisher of a room matching ``roomid`` (``*`` matches any
    characters) is recorded as a source recording (``streamtype`` 2), or the room as a mix of
    ``mixconfig``'s template (``streamtype`` 1) while anyone publishes."""

    appid: AppId | None = None
    roomid: RoomPattern
    streamtype: Annotated[int, int_rule(choices=(1, 2))]
    recordtype: Annotated[int, int_rule(choices=(0, 1, 2))]
    mixconfig: MixConfig | None = Field(None, validate_default=True)
    storagecfg: StorageConfig
    callbackurl: HttpUrl | None = None

    _appid_matches = field_validator("appid")(_same_appid)

    _mixconfig_for_mixed = field_validator("mixconfig", mode="wrap")(_mixconfig_for_mixed)

    _empty_callback_is_none = field_validator("callbackurl", mode="before")(_empty_is_none)


def room_matches(pattern: str, roomid: str) -> bool:
    """Whether ``roomid`` matches a rule's pattern (``*``: any characters, none included)."""
    regex = "".join(".*" if part == "*" else re.escape(part)
                    for part in re.split(r"(\*)", pattern))
    return re.fullmatch(regex, roomid) is not None
