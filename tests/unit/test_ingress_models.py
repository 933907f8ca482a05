"""The ingress and auto-record request bodies: every refusal names its field (2101)."""

from __future__ import annotations

from typing import Any

import pytest

from cloudrec.errors import InvalidParameter
from cloudrec.models import parse_request
from cloudrec.models.ingress import AutoRecordRequest, IngressRequest, room_matches, source_kind

STORAGE = {"vender": 101, "endpoint": "local", "bucket": "rec-bucket", "accesskey": "a",
           "secretkey": "s"}


@pytest.mark.parametrize(("url", "kind"), [
    ("rtsp://cam.example.com/live", "rtsp"), ("rtsps://cam.example.com:322/x", "rtsp"),
    ("rtmp://example.com/live/key", "rtmp"), ("rtmps://example.com/live/key", "rtmp"),
    ("srt://example.com:9000?streamid=x", "srt"), ("https://cdn.example.com/a.m3u8", "http"),
    ("http://example.com/a.mp4", "http"), ("whep://example.com/cam/whep", "whep"),
    ("wheps://example.com/cam/whep", "whep"),
])
def test_every_scheme_is_accepted(url: str, kind: str) -> None:
    req = parse_request(IngressRequest, {"roomid": "r1", "uid": "u1", "url": url}, 1)
    assert req.kind == kind == source_kind(url)


def test_janus_takes_a_room_and_no_uid() -> None:
    url = "janus+http://sfu.example.com:8088/janus?room=1234"
    assert parse_request(IngressRequest, {"roomid": "r1", "url": url}).kind == "janus"
    with pytest.raises(InvalidParameter) as err:
        parse_request(IngressRequest, {"roomid": "r1", "uid": "u", "url": url})
    assert err.value.field == "uid"


@pytest.mark.parametrize(("body", "field"), [
    ({"roomid": "r", "uid": "u", "url": "ftp://example.com/x"}, "url"),
    ({"roomid": "r", "uid": "u", "url": "example.com/x"}, "url"),
    ({"roomid": "r", "uid": "u", "url": "rtsp:///x"}, "url"),
    ({"roomid": "r", "uid": "u", "url": "rtsp://h:99999/x"}, "url"),
    ({"roomid": "r", "uid": "u", "url": 5}, "url"),
    ({"roomid": "r", "uid": "u", "url": "rtsp://h/" + "x" * 3000}, "url"),
    ({"roomid": "r", "url": "janus+https://h/janus"}, "url"),
    ({"roomid": "r r", "uid": "u", "url": "rtsp://h/x"}, "roomid"),
    ({"roomid": "", "uid": "u", "url": "rtsp://h/x"}, "roomid"),
    ({"roomid": "r", "uid": "ü", "url": "rtsp://h/x"}, "uid"),
    ({"roomid": "r", "url": "rtsp://h/x"}, "uid"),
    ({"roomid": "r", "uid": "u", "url": "rtsp://h/x", "extra": 1}, "extra"),
    ("[]", "body"), ("nonsense", "body"),
])
def test_bad_ingress_bodies_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(InvalidParameter) as err:
        parse_request(IngressRequest, body, 1)
    assert err.value.field == field


def test_rules() -> None:
    rule = parse_request(AutoRecordRequest, {"roomid": "class-*", "streamtype": 2,
                                             "recordtype": 0, "storagecfg": STORAGE}, 7)
    assert rule.roomid == "class-*"
    for body, field in [({"roomid": "a b", "streamtype": 2, "recordtype": 0,
                          "storagecfg": STORAGE}, "roomid"),
                        ({"roomid": "*", "streamtype": 1, "recordtype": 0,
                          "storagecfg": STORAGE}, "mixconfig"),
                        ({"roomid": "*", "streamtype": 2, "recordtype": 5,
                          "storagecfg": STORAGE}, "recordtype"),
                        ({"appid": 8, "roomid": "*", "streamtype": 2, "recordtype": 0,
                          "storagecfg": STORAGE}, "appid")]:
        with pytest.raises(InvalidParameter) as err:
            parse_request(AutoRecordRequest, body, 7)
        assert err.value.field == field


@pytest.mark.parametrize(("pattern", "roomid", "matches"), [
    ("*", "anything", True), ("class-*", "class-7", True), ("class-*", "class-", True),
    ("class-*", "xclass-7", False), ("a*b*c", "a-b-c", True), ("a.b", "aXb", False),
    ("room", "room", True), ("room", "room2", False),
])
def test_room_patterns(pattern: str, roomid: str, matches: bool) -> None:
    assert room_matches(pattern, roomid) is matches
