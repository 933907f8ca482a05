"""startrecord's optional ``outputs`` object: what a recording makes beyond its HLS.

- ``mp4`` (bool): an MP4 of the whole recording, ``{prefix}/{base}.mp4``, when it stops;
- ``snapshotinterval`` (int, 5..3600 s): a JPEG of the video every that many seconds,
  ``{prefix}/{base}_{unixms}.jpg``;
- ``audiocodec`` (``"aac"``, the default, or ``"opus"``): a source recording's audio in AAC
  (MPEG-TS segments) or kept as the publisher's Opus (fMP4 segments, ``#EXT-X-MAP``, ``.m4s``);
- ``pushurl`` (at most 2 ``rtmp://`` / ``srt://`` URLs of at most 256 bytes): the mix pushed
  live (mixed recordings only).

The checks that depend on the rest of the request (no ``pushurl`` for a source recording, no
``snapshotinterval`` without video) are :class:`~cloudrec.models.requests.StartRecordRequest`'s.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import PlainValidator, field_validator

from ._fields import MAX_URL_BYTES, Model, int_rule, problem, split_url

SNAPSHOT_MIN_S, SNAPSHOT_MAX_S = 5, 3600
MAX_PUSH_URLS = 2
PUSH_SCHEMES = ("rtmp", "srt")


def _check_bool(value: Any) -> bool:
    if value is None:  # an explicit null is the default, as with the seed's integers
        return False
    if type(value) is not bool:
        raise problem("must be true or false")
    return value


def _check_push_url(value: Any) -> str:
    desc = f"must be an rtmp:// or srt:// URL of at most {MAX_URL_BYTES} bytes"
    parts = split_url(value, desc, MAX_URL_BYTES, port=desc)
    if parts.scheme.lower() not in PUSH_SCHEMES or not parts.hostname:
        raise problem(desc)
    return value


AUDIO_CODECS = ("aac", "opus")


def _check_audiocodec(value: Any) -> str:
    if value is None:
        return "aac"
    if type(value) is not str or value not in AUDIO_CODECS:
        raise problem('must be "aac" or "opus"')
    return value


StrictBool = Annotated[bool, PlainValidator(_check_bool, json_schema_input_type=bool)]
SnapshotInterval = Annotated[int, int_rule(SNAPSHOT_MIN_S, SNAPSHOT_MAX_S)]
PushUrl = Annotated[str, PlainValidator(_check_push_url, json_schema_input_type=str)]
AudioCodec = Annotated[str, PlainValidator(_check_audiocodec, json_schema_input_type=str)]


class Outputs(Model):
    """Every field is optional; an empty object asks for nothing beyond the HLS."""

    mp4: StrictBool = False
    snapshotinterval: SnapshotInterval | None = None
    pushurl: list[PushUrl] | None = None
    audiocodec: AudioCodec = "aac"

    @field_validator("pushurl")
    @classmethod
    def _push_count(cls, value: list[str] | None) -> list[str] | None:
        if not value:  # [] asks for no push, like leaving it out
            return None
        if len(value) > MAX_PUSH_URLS:
            raise problem(f"must hold at most {MAX_PUSH_URLS} URLs")
        if len(set(value)) != len(value):
            raise problem("must not name the same URL twice")
        return value
