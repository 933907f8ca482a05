"""Request models: the seed's examples, every rule answering 2101 with the field, normalisation."""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudrec.errors import InvalidParameter
from cloudrec.models import (
    ApplyRecordRequest,
    MixConfig,
    StartRecordRequest,
    StopRecordRequest,
    UpdateMixRecordRequest,
    parse_request,
)

APPID = 10034

# The seed's example request bodies, copied verbatim from shared/seed/recordoss-api.txt.
SEED_START = """
{
"resid": "1d3fe093f9b9dbfa2d34e22cb34a12496ed6b057896358131208a0d981eb-ba11073100006be2",
"appid": 10034,
"roomid": "abcabc",
"recordtype": 0,
"streamtype": 1,
"mixconfig":{
"input":[
{
"uid":"10266666",
"roomid":"abcabc",
"streamtype":0,
"zOrder":0,
"layoutX":0,
"layoutY":0,
"layoutH":600,
"layoutW":400,
"crop":0
},
{
"uid":"10277777",
"roomid":"efdefd",
"streamtype":0,
"zOrder":1,
"layoutX":400,
"layoutY":0,
"layoutH":600,
"layoutW":400,
"crop":0
}
],
"output":{
"streamtype":0,
"videoheight":600,
"videowidth":800,
"videobitrate":600,
"videofps":24,
"videogop":72,
"videoencode":100,
"audiobitrate":128,
"audiosample":48000,
"audiochannel":2,
"audioformat":2
}
},
"storagecfg": {
"vender": 0,
"endpoint": "xxxx-test-endpoint",
"bucket": "xxxx-test-bucket",
"accesskey": "xxxx-test-accesskey",
"secretkey": "xxxx-test-secretkey",
"fileprefix": ["test1","test2"]
}
}
"""

SEED_STOP = """
{
"resid": "1d3fe093f9b9dbfa2d34e22cb34a12496ed6b057896358131208a0d981eb-ba11073100006be2",
"appid": 10034,
"roomid": "abcabc",
"recordid": "ba1107310000565164da34f816f842da94d"
}
"""

SEED_UPDATE = """
{
"resid": "1d3fe093f9b9dbfa2d34e22cb34a12496ed6b057896358131208a0d981eb-ba11073100006be2",
"appid": 10034,
"roomid": "abcabc",
"recordid": "ba1107310000565164da34f816f842da94d",
"mixconfig":{
"input":[
{
"uid":"10266666",
"roomid":"abcabc",
"streamtype":0,
"zOrder":0,
"layoutX":0,
"layoutY":0,
"layoutH":600,
"layoutW":400,
"crop":0
},
{
"uid":"10277777",
"roomid":"efdefd",
"streamtype":0,
"zOrder":1,
"layoutX":400,
"layoutY":0,
"layoutH":600,
"layoutW":400,
"crop":0
}
],
"output":{
"streamtype":0,
"videoheight":720,
"videowidth":1080,
"videobitrate":1000,
"videofps":24,
"videogop":72,
"videoencode":100,
"audiobitrate":128,
"audiosample":48000,
"audiochannel":2,
"audioformat":2
}
}
}
"""

START = json.loads(SEED_START)
STOP = json.loads(SEED_STOP)
UPDATE = json.loads(SEED_UPDATE)
SOURCE = {
    "resid": START["resid"],
    "appid": APPID,
    "roomid": "abcabc",
    "recordtype": 0,
    "streamtype": 2,
    "uid": "10266666",
    "storagecfg": START["storagecfg"],
}
DELETE = object()


def _split(path: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]


def edit(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of body with each dotted path ("mixconfig.input[1].uid") set, or deleted
    when the value is DELETE (pass paths with ``**{"a.b": v}``)."""
    out = copy.deepcopy(body)
    for path, value in changes.items():
        *parents, last = _split(path)
        node: Any = out
        for p in parents:
            node = node[p]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return out


def at(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    return edit(body, **{path: value})


def output(**kw: Any) -> dict[str, Any]:
    out = {"streamtype": 0, "videowidth": 800, "videoheight": 600, "videobitrate": 600}
    out.update(kw)
    return out


def start_with_output(**kw: Any) -> dict[str, Any]:
    return at(START, "mixconfig.output", output(**kw))


def invalid(model: type, body: Any, path_appid: int | None = APPID) -> InvalidParameter:
    with pytest.raises(InvalidParameter) as info:
        parse_request(model, body, path_appid)
    assert info.value.code == 2101
    return info.value


# --- the seed's examples -----------------------------------------------------------------


def test_seed_startrecord_example_passes() -> None:
    req = parse_request(StartRecordRequest, SEED_START, APPID)
    assert req.is_mixed and req.appid == APPID and req.roomid == "abcabc"
    assert [i.uid for i in req.mixconfig.inputs] == ["10266666", "10277777"]
    assert req.mixconfig.inputs[1].roomid == "efdefd"
    out = req.mixconfig.output
    assert (out.videowidth, out.videoheight, out.videofps, out.videogop) == (800, 600, 24, 72)
    assert out.has_video and out.has_audio
    assert req.storagecfg.prefix == "test1/test2/"


def test_seed_stoprecord_example_passes() -> None:
    req = parse_request(StopRecordRequest, SEED_STOP.encode(), APPID)
    assert req.recordid == "ba1107310000565164da34f816f842da94d"


def test_seed_updatemixrecord_example_passes() -> None:
    req = parse_request(UpdateMixRecordRequest, SEED_UPDATE, APPID)
    assert (req.mixconfig.output.videowidth, req.mixconfig.output.videoheight) == (1080, 720)


@pytest.mark.parametrize(
    ("model", "body"),
    [(StartRecordRequest, START), (StopRecordRequest, STOP), (UpdateMixRecordRequest, UPDATE)],
)
def test_dump_round_trips(model: type, body: dict[str, Any]) -> None:
    req = parse_request(model, body, APPID)
    again = parse_request(model, json.dumps(req.model_dump(by_alias=True, exclude_none=True)))
    assert again == req


def _rich_start() -> dict[str, Any]:
    """A mixed startrecord with every optional part: pictures, watermarks, SEI, outputs."""
    wm = {"timestamp": {"x": 0, "y": 0, "format": "%H:%M:%S", "size": 20},
          "textList": [{"x": 10, "y": 10, "content": "录制中", "size": 100, "alpha": 0}],
          "imageList": [{"x": 0, "y": 0, "width": 80, "height": 60,
                         "url": "https://e.com/a.png", "scale": 1, "alpha": 0.5}]}
    body = start_with_output(patch=3, patchUrl="http://e.com/p.png", watermark=wm,
                             base64seidata=base64.b64encode(b"sei").decode(),
                             background={"color": "FFFFFF"})
    return body | {"callbackurl": "", "outputs": {"mp4": True, "snapshotinterval": 5,
                                                  "pushurl": ["rtmp://e.com/live/k"]}}


@pytest.mark.parametrize(
    ("op", "model", "body"),
    [("start", StartRecordRequest, START), ("start", StartRecordRequest, SOURCE),
     ("start", StartRecordRequest, _rich_start()), ("stop", StopRecordRequest, STOP),
     ("pause", StopRecordRequest, STOP), ("update", UpdateMixRecordRequest, UPDATE)],
)
def test_a_request_reaches_a_worker_process_as_the_same_model(op: str, model: type,
                                                              body: dict[str, Any]) -> None:
    """The front parses a body once; over HTTP the model travels as JSON and is rebuilt."""
    from cloudrec.workers.wire import decode_args, encode_args

    req = parse_request(model, body, APPID)
    sent = json.loads(json.dumps(encode_args({"appid": APPID, "req": req})))
    got = decode_args(op, sent)["req"]
    assert type(got) is model and got == req
    assert got.model_dump(mode="json") == req.model_dump(mode="json")  # as the task stores it


def test_applyrecord_accepts_empty_bodies_and_checks_appid() -> None:
    for body in (b"", "", "  ", None, "{}", {}, {"appid": APPID}, {"appid": APPID, "roomid": "r"}):
        assert isinstance(parse_request(ApplyRecordRequest, body, APPID), ApplyRecordRequest)
    assert invalid(ApplyRecordRequest, {"appid": "10034"}).field == "appid"
    assert invalid(ApplyRecordRequest, {"appid": 1}).field == "appid"


# --- accepted variants ---------------------------------------------------------------------


def test_source_recording_passes() -> None:
    req = parse_request(StartRecordRequest, SOURCE, APPID)
    assert not req.is_mixed and req.uid == "10266666" and req.mixconfig is None


def test_intput_alias_and_unknown_fields() -> None:
    mix = edit(START["mixconfig"], intput=START["mixconfig"]["input"], input=DELETE)
    req = parse_request(StartRecordRequest, at(START, "mixconfig", mix), APPID)
    assert len(req.mixconfig.inputs) == 2
    assert "input" in req.mixconfig.model_dump(by_alias=True)
    for body, field in [
        (START | {"extra": 1}, "extra"),
        (START | {"Appid": "x"}, "Appid"),
        (at(START, "mixconfig.output", START["mixconfig"]["output"] | {"videoFps": 15}),
         "mixconfig.output.videoFps"),
    ]:
        with pytest.raises(InvalidParameter) as err:
            parse_request(StartRecordRequest, body, APPID)
        assert err.value.field == field and "case-sensitive" in err.value.message


def test_template_and_audio_only_mixing_need_no_inputs() -> None:
    tpl = parse_request(StartRecordRequest, edit(START, **{"mixconfig.input": DELETE,
                                                           "mixconfig.templateid": 3}), APPID)
    assert tpl.mixconfig.templateid == 3 and tpl.mixconfig.inputs == []
    audio = at(START, "mixconfig", {"output": {"streamtype": 2}})
    out = parse_request(StartRecordRequest, audio, APPID).mixconfig.output
    assert out.has_audio and not out.has_video and out.videowidth is None


def test_audio_input_needs_no_layout() -> None:
    inp = {"uid": "u", "roomid": "abcabc", "streamtype": 2}
    req = parse_request(StartRecordRequest, at(START, "mixconfig.input", [inp]), APPID)
    assert req.mixconfig.inputs[0].layoutX is None and not req.mixconfig.inputs[0].has_video


def test_optional_extras_pass() -> None:
    sei = base64.b64encode(b"x" * 2048).decode()
    wm = {
        "timestamp": {"x": 0, "y": 0, "format": "%Y-%m-%d %H:%M:%S", "size": 20},
        "textList": [{"x": 10, "y": 10, "content": "录制中", "size": 100, "color": "abcdef",
                      "backgroundColor": "000000", "alpha": 0}],
        "imageList": [{"x": 0, "y": 0, "width": 800, "height": 600,
                       "url": "https://e.com/a.png", "scale": 1, "alpha": 0.5}],
    }
    body = start_with_output(
        patch=3, patchUrl="http://e.com/p.png", base64seidata=sei, watermark=wm,
        background={"color": "FFFFFF", "image": {"url": "https://e.com/bg.jpg", "scale": 0}},
    ) | {"callbackurl": "https://hooks.example.com/rec"}
    req = parse_request(StartRecordRequest, body, APPID)
    out = req.mixconfig.output
    assert out.seidata == b"x" * 2048
    assert out.watermark.timestamp.font == "NotoSansCJK"
    assert out.watermark.timestamp.color == "FFFFFF"
    assert out.watermark.textList[0].alpha == 0.0
    assert req.callbackurl == "https://hooks.example.com/rec"


def test_nulls_mean_absent_and_empty_callback_is_none() -> None:
    body = start_with_output(videofps=None, videogop=None, patchUrl=None) | {"callbackurl": ""}
    req = parse_request(StartRecordRequest, body, APPID)
    assert (req.mixconfig.output.videofps, req.mixconfig.output.videogop) == (15, 30)
    assert req.callbackurl is None


def test_storage_variants() -> None:
    cfg = START["storagecfg"] | {"vender": 101, "fileprefix": ["a" * 127]}
    req = parse_request(StartRecordRequest, at(START, "storagecfg", cfg), APPID)
    assert req.storagecfg.prefix == "a" * 127 + "/"
    req = parse_request(StartRecordRequest, edit(START, **{"storagecfg.fileprefix": DELETE}))
    assert req.storagecfg.prefix == ""
    assert "xxxx-test-secretkey" not in repr(req)


def test_roomid_charset_allows_safe_punctuation() -> None:
    req = parse_request(StartRecordRequest, at(SOURCE, "uid", "user.name-1_x@host"), APPID)
    assert req.uid == "user.name-1_x@host"


# --- normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [(800, 800), (801, 800), (802, 804), (803, 804), (16, 16), (17, 16), (18, 20), (1919, 1920),
     (1080, 1080)],
)
def test_video_size_rounds_to_nearest_multiple_of_4_half_up(given: int, expected: int) -> None:
    body = start_with_output(videowidth=given, videoheight=given)
    out = parse_request(StartRecordRequest, body, APPID).mixconfig.output
    assert (out.videowidth, out.videoheight) == (expected, expected)


@pytest.mark.parametrize(
    ("fps", "gop", "want_fps", "want_gop"),
    [
        (None, None, 15, 30),  # defaults
        (75, None, 60, 60),  # fps capped at 60; gop 30 rounded up to a multiple of 60
        (15, 31, 15, 45),
        (24, 72, 24, 72),
        (24, None, 24, 48),
        (7, 999, 7, 994),  # 1001 would leave (0, 1000): keep the largest multiple below
        (60, 990, 60, 960),
        (1, 999, 1, 999),
    ],
)
def test_fps_and_gop(fps: int | None, gop: int | None, want_fps: int, want_gop: int) -> None:
    kw = {k: v for k, v in (("videofps", fps), ("videogop", gop)) if v is not None}
    out = parse_request(StartRecordRequest, start_with_output(**kw), APPID).mixconfig.output
    assert (out.videofps, out.videogop) == (want_fps, want_gop)
    assert (out.videoencode, out.audiobitrate, out.audiochannel) == (100, 128, 2)
    assert (out.audiosample, out.audioformat, out.patch) == (48000, 2, 0)


# --- every rule answers 2101 naming the field ----------------------------------------------

LONG_URL = "https://e.com/" + "a" * 250
WM_TS = {"x": 0, "y": 0, "format": "%H:%M:%S", "size": 20}
WM_TEXT = {"x": 0, "y": 0, "content": "hi", "size": 20}
WM_IMG = {"x": 0, "y": 0, "width": 100, "height": 100, "url": "http://e.com/i.png", "scale": 0}
WM_START = start_with_output(watermark={"timestamp": WM_TS, "textList": [WM_TEXT],
                                        "imageList": [WM_IMG]}, background={"color": "000000"})

S, SRC, WM = START, SOURCE, WM_START
IN1 = "mixconfig.input[1]"
OUT = "mixconfig.output"
TS, TXT, IMG = f"{OUT}.watermark.timestamp", f"{OUT}.watermark.textList[0]", \
    f"{OUT}.watermark.imageList[0]"

# (base body, path to change, new value or DELETE, field named in the error)
RULES: list[tuple[dict[str, Any], str, Any, str]] = [
    # identifiers and appid
    (S, "resid", "", "resid"),
    (S, "resid", 123, "resid"),
    (S, "resid", "r" * 129, "resid"),
    (S, "resid", "a\nb", "resid"),
    (S, "resid", DELETE, "resid"),
    (S, "appid", "10034", "appid"),
    (S, "appid", 10034.0, "appid"),
    (S, "appid", True, "appid"),
    (S, "appid", 10035, "appid"),
    (S, "appid", DELETE, "appid"),
    (S, "roomid", "a b", "roomid"),
    (S, "roomid", "a/b", "roomid"),
    (S, "roomid", "r" * 129, "roomid"),
    (S, "roomid", None, "roomid"),
    (S, "recordtype", 3, "recordtype"),
    (S, "recordtype", "0", "recordtype"),
    (S, "recordtype", DELETE, "recordtype"),
    (S, "streamtype", 0, "streamtype"),
    (S, "streamtype", 3, "streamtype"),
    (S, "streamtype", DELETE, "streamtype"),
    # per streamtype
    (S, "mixconfig", DELETE, "mixconfig"),
    (S, "mixconfig", "x", "mixconfig"),
    (SRC, "mixconfig", START["mixconfig"], "mixconfig"),
    (SRC, "uid", DELETE, "uid"),
    (SRC, "uid", "", "uid"),
    (SRC, "uid", "a:b", "uid"),
    (S, "storagecfg", DELETE, "storagecfg"),
    (S, "storagecfg", [], "storagecfg"),
    (S, "callbackurl", "ftp://e.com/cb", "callbackurl"),
    (S, "callbackurl", "not a url", "callbackurl"),
    (S, "callbackurl", LONG_URL, "callbackurl"),
    # mixconfig
    (S, "mixconfig.templateid", 0, "mixconfig.templateid"),
    (S, "mixconfig.templateid", 6, "mixconfig.templateid"),
    (S, "mixconfig.templateid", 1, "mixconfig.templateid"),  # together with the input list
    (S, "mixconfig.input", DELETE, "mixconfig.input"),
    (S, "mixconfig.input", [], "mixconfig.input"),
    (S, "mixconfig.input", "x", "mixconfig.input"),
    (S, "mixconfig.output", DELETE, "mixconfig.output"),
    (S, IN1, 5, IN1),
    (S, f"{IN1}.uid", DELETE, f"{IN1}.uid"),
    (S, f"{IN1}.uid", "", f"{IN1}.uid"),
    (S, f"{IN1}.roomid", DELETE, f"{IN1}.roomid"),
    (S, f"{IN1}.streamtype", 3, f"{IN1}.streamtype"),
    (S, f"{IN1}.zOrder", 17, f"{IN1}.zOrder"),
    (S, f"{IN1}.zOrder", -1, f"{IN1}.zOrder"),
    (S, f"{IN1}.layoutX", -1, f"{IN1}.layoutX"),
    (S, f"{IN1}.layoutX", 1921, f"{IN1}.layoutX"),
    (S, f"{IN1}.layoutY", 1921, f"{IN1}.layoutY"),
    (S, f"{IN1}.layoutW", 0, f"{IN1}.layoutW"),
    (S, f"{IN1}.layoutW", 1921, f"{IN1}.layoutW"),
    (S, f"{IN1}.layoutH", 0, f"{IN1}.layoutH"),
    (S, f"{IN1}.layoutW", DELETE, f"{IN1}.layoutW"),
    (S, f"{IN1}.layoutX", DELETE, f"{IN1}.layoutX"),
    (S, f"{IN1}.crop", 2, f"{IN1}.crop"),
    (S, f"{IN1}.cropX", -1, f"{IN1}.cropX"),
    (S, f"{IN1}.cropY", 1921, f"{IN1}.cropY"),
    (S, f"{IN1}.cropW", 0, f"{IN1}.cropW"),
    (S, f"{IN1}.cropH", 1921, f"{IN1}.cropH"),
    (S, f"{IN1}.alpha", 1.5, f"{IN1}.alpha"),
    (S, f"{IN1}.alpha", -0.1, f"{IN1}.alpha"),
    (S, f"{IN1}.alpha", "1", f"{IN1}.alpha"),
    (S, f"{IN1}.alpha", True, f"{IN1}.alpha"),
    # output
    (S, f"{OUT}.streamtype", 3, f"{OUT}.streamtype"),
    (S, f"{OUT}.streamtype", DELETE, f"{OUT}.streamtype"),
    (S, f"{OUT}.videowidth", 15, f"{OUT}.videowidth"),
    (S, f"{OUT}.videowidth", 1921, f"{OUT}.videowidth"),
    (S, f"{OUT}.videowidth", "800", f"{OUT}.videowidth"),
    (S, f"{OUT}.videowidth", 800.0, f"{OUT}.videowidth"),
    (S, f"{OUT}.videowidth", DELETE, f"{OUT}.videowidth"),
    (S, f"{OUT}.videoheight", 12, f"{OUT}.videoheight"),
    (S, f"{OUT}.videoheight", DELETE, f"{OUT}.videoheight"),
    (S, f"{OUT}.videobitrate", 0, f"{OUT}.videobitrate"),
    (S, f"{OUT}.videobitrate", 10001, f"{OUT}.videobitrate"),
    (S, f"{OUT}.videobitrate", DELETE, f"{OUT}.videobitrate"),
    (S, f"{OUT}.videofps", 0, f"{OUT}.videofps"),
    (S, f"{OUT}.videofps", -5, f"{OUT}.videofps"),
    (S, f"{OUT}.videofps", 1.5, f"{OUT}.videofps"),
    (S, f"{OUT}.videogop", 0, f"{OUT}.videogop"),
    (S, f"{OUT}.videogop", 1000, f"{OUT}.videogop"),
    (S, f"{OUT}.videoencode", 101, f"{OUT}.videoencode"),
    (S, f"{OUT}.audiobitrate", 64, f"{OUT}.audiobitrate"),
    (S, f"{OUT}.audiochannel", 1, f"{OUT}.audiochannel"),
    (S, f"{OUT}.audiosample", 44100, f"{OUT}.audiosample"),
    (S, f"{OUT}.audioformat", 1, f"{OUT}.audioformat"),
    (S, f"{OUT}.patch", 4, f"{OUT}.patch"),
    (S, f"{OUT}.patch", 3, f"{OUT}.patchUrl"),  # patch 3 needs a patchUrl
    (S, f"{OUT}.patchUrl", "e.com/p.png", f"{OUT}.patchUrl"),
    (S, f"{OUT}.patchUrl", LONG_URL, f"{OUT}.patchUrl"),
    (S, f"{OUT}.base64seidata", "!!!!", f"{OUT}.base64seidata"),
    (S, f"{OUT}.base64seidata", "", f"{OUT}.base64seidata"),
    (S, f"{OUT}.base64seidata", "eA", f"{OUT}.base64seidata"),  # unpadded
    (S, f"{OUT}.base64seidata", "eB==", f"{OUT}.base64seidata"),  # non-canonical
    (S, f"{OUT}.base64seidata", base64.b64encode(b"x" * 2049).decode(), f"{OUT}.base64seidata"),
    (S, f"{OUT}.watermark", 1, f"{OUT}.watermark"),
    # watermarks and background
    (WM, f"{TS}.x", 1920, f"{TS}.x"),
    (WM, f"{TS}.x", 800, f"{TS}.x"),  # not less than the output width
    (WM, f"{TS}.y", 600, f"{TS}.y"),
    (WM, f"{TS}.y", -1, f"{TS}.y"),
    (WM, f"{TS}.x", DELETE, f"{TS}.x"),
    (WM, f"{TS}.format", "%Y", f"{TS}.format"),
    (WM, f"{TS}.format", DELETE, f"{TS}.format"),
    (WM, f"{TS}.font", "Arial", f"{TS}.font"),
    (WM, f"{TS}.size", 0, f"{TS}.size"),
    (WM, f"{TS}.size", 101, f"{TS}.size"),
    (WM, f"{TS}.size", DELETE, f"{TS}.size"),
    (WM, f"{TS}.color", "aBcDeF", f"{TS}.color"),
    (WM, f"{TS}.color", "FFF", f"{TS}.color"),
    (WM, f"{TS}.color", "GGGGGG", f"{TS}.color"),
    (WM, f"{TS}.backgroundColor", "#000000", f"{TS}.backgroundColor"),
    (WM, f"{TS}.alpha", 2, f"{TS}.alpha"),
    (WM, f"{TXT}.content", "", f"{TXT}.content"),
    (WM, f"{TXT}.content", DELETE, f"{TXT}.content"),
    (WM, f"{TXT}.x", 800, f"{TXT}.x"),
    (WM, f"{TXT}.size", 0, f"{TXT}.size"),
    (WM, f"{TXT}.color", "ffFFff", f"{TXT}.color"),
    (WM, f"{IMG}.width", 1920, f"{IMG}.width"),
    (WM, f"{IMG}.width", 801, f"{IMG}.width"),  # wider than the output
    (WM, f"{IMG}.height", 601, f"{IMG}.height"),
    (WM, f"{IMG}.height", 0, f"{IMG}.height"),
    (WM, f"{IMG}.y", 600, f"{IMG}.y"),
    (WM, f"{IMG}.url", "ftp://e.com/i.png", f"{IMG}.url"),
    (WM, f"{IMG}.url", LONG_URL, f"{IMG}.url"),
    (WM, f"{IMG}.scale", 2, f"{IMG}.scale"),
    (WM, f"{IMG}.scale", DELETE, f"{IMG}.scale"),
    (WM, f"{IMG}.alpha", -1, f"{IMG}.alpha"),
    (WM, f"{OUT}.background.color", "red", f"{OUT}.background.color"),
    (WM, f"{OUT}.background.image", {"url": "http://e.com/b.png"},
     f"{OUT}.background.image.scale"),
    (WM, f"{OUT}.background.image", {"url": LONG_URL, "scale": 0},
     f"{OUT}.background.image.url"),
    # storage
    (S, "storagecfg.vender", 3, "storagecfg.vender"),
    (S, "storagecfg.vender", DELETE, "storagecfg.vender"),
    (S, "storagecfg.endpoint", "", "storagecfg.endpoint"),
    (S, "storagecfg.endpoint", "e" * 257, "storagecfg.endpoint"),
    (S, "storagecfg.bucket", "Bad_Bucket", "storagecfg.bucket"),
    (S, "storagecfg.bucket", "ab", "storagecfg.bucket"),
    (S, "storagecfg.bucket", "a..b", "storagecfg.bucket"),
    (S, "storagecfg.bucket", "-abc", "storagecfg.bucket"),
    (S, "storagecfg.bucket", "b" * 64, "storagecfg.bucket"),
    (S, "storagecfg.accesskey", "", "storagecfg.accesskey"),
    (S, "storagecfg.secretkey", DELETE, "storagecfg.secretkey"),
    (S, "storagecfg.fileprefix", "test1", "storagecfg.fileprefix"),
    (S, "storagecfg.fileprefix", ["a/b"], "storagecfg.fileprefix[0]"),
    (S, "storagecfg.fileprefix", [""], "storagecfg.fileprefix[0]"),
    (S, "storagecfg.fileprefix", ["ok", "a-b"], "storagecfg.fileprefix[1]"),
    (S, "storagecfg.fileprefix", ["ok", 1], "storagecfg.fileprefix[1]"),
    (S, "storagecfg.fileprefix", ["a" * 128], "storagecfg.fileprefix"),
    (S, "storagecfg.fileprefix", ["a" * 64, "b" * 63], "storagecfg.fileprefix"),
]


@pytest.mark.parametrize(
    ("base", "path", "value", "field"),
    RULES,
    ids=[f"{path}={'DELETE' if v is DELETE else repr(v)[:20]}" for _, path, v, _ in RULES],
)
def test_startrecord_rule(base: dict[str, Any], path: str, value: Any, field: str) -> None:
    assert parse_request(StartRecordRequest, base, APPID)  # the base itself is valid
    err = invalid(StartRecordRequest, at(base, path, value))
    assert err.field == field
    assert err.message.startswith(f"invalid parameter {field}: ")


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [
        (StopRecordRequest, edit(STOP, recordid=DELETE), "recordid"),
        (StopRecordRequest, edit(STOP, recordid=""), "recordid"),
        (StopRecordRequest, edit(STOP, appid=1), "appid"),
        (StopRecordRequest, edit(STOP, resid=[]), "resid"),
        (UpdateMixRecordRequest, edit(UPDATE, mixconfig=DELETE), "mixconfig"),
        (UpdateMixRecordRequest, edit(UPDATE, roomid="room#1"), "roomid"),
        (UpdateMixRecordRequest, at(UPDATE, "mixconfig.input[0].layoutH", 0),
         "mixconfig.input[0].layoutH"),
    ],
)
def test_other_endpoint_rules(model: type, body: dict[str, Any], field: str) -> None:
    assert invalid(model, body).field == field


@pytest.mark.parametrize("body", ["{", "[]", "1", '"x"', b"\xff\xfe{", "{\"a\": NaN}", [1], 3])
def test_bad_bodies_name_body(body: Any) -> None:
    assert invalid(StartRecordRequest, body).field == "body"


def test_first_offending_field_wins_and_messages_read_well() -> None:
    body = edit(START, resid="", **{"mixconfig.output.videofps": 0})
    assert invalid(StartRecordRequest, body).field == "resid"
    err = invalid(StartRecordRequest, at(START, "mixconfig.output.videofps", 0))
    assert str(err) == "invalid parameter mixconfig.output.videofps: must be an integer > 0"
    err = invalid(StartRecordRequest, at(START, "mixconfig.input[0].zOrder", 17))
    assert err.message.endswith("must be an integer in [0, 16]")


def test_wrong_case_counts_as_missing() -> None:
    err = invalid(StartRecordRequest, edit(START, roomid=DELETE) | {"RoomID": "abcabc"})
    assert err.field == "roomid"
    assert "case-sensitive" in err.message


def test_body_appid_checked_only_against_a_given_path_appid() -> None:
    assert parse_request(StopRecordRequest, edit(STOP, appid=1)).appid == 1


def test_mixconfig_model_alone() -> None:
    cfg = MixConfig.model_validate(START["mixconfig"])
    assert len(cfg.inputs) == 2 and cfg.inputs[0].has_video


# --- robustness ----------------------------------------------------------------------------


def _paths(node: Any, prefix: str = "") -> list[str]:
    out: list[str] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else []
    for key, child in items:
        path = f"{prefix}[{key}]" if isinstance(key, int) else (f"{prefix}.{key}" if prefix
                                                                  else key)
        out.append(path)
        out += _paths(child, path)
    return out


FUZZ_BASES = [(StartRecordRequest, WM_START), (StartRecordRequest, SOURCE),
              (StopRecordRequest, STOP), (UpdateMixRecordRequest, UPDATE)]
FUZZ_TARGETS = [(m, b, p) for m, b in FUZZ_BASES for p in _paths(b)]
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
    | st.sampled_from(["", "0", "1", "FFFFFF", "http://", "%H:%M:%S", "a" * 300, "\ud800"]),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                               max_size=4),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=st.sampled_from(FUZZ_TARGETS), junk=JUNK | st.just(DELETE), as_bytes=st.booleans())
def test_junk_in_any_field_is_a_model_or_2101(
    target: tuple[type, dict[str, Any], str], junk: Any, as_bytes: bool
) -> None:
    model, base, path = target
    body: Any = at(base, path, junk)
    if as_bytes:
        body = json.dumps(body).encode("utf-8", "surrogatepass")
    try:
        assert isinstance(parse_request(model, body, APPID), model)
    except InvalidParameter as exc:
        assert exc.field and exc.code == 2101


@settings(max_examples=100, deadline=None)
@given(width=st.integers(16, 1920))
def test_any_valid_width_becomes_the_nearest_multiple_of_4(width: int) -> None:
    out = parse_request(StartRecordRequest, start_with_output(videowidth=width)).mixconfig.output
    assert out.videowidth is not None and out.videowidth % 4 == 0
    assert abs(out.videowidth - width) <= 2 and 16 <= out.videowidth <= 1920
