"""The ``mixconfig.webpage`` object: its validation, and the mix that records a page."""

from __future__ import annotations

import pytest

from cloudrec.errors import InvalidParameter
from cloudrec.models import StartRecordRequest
from cloudrec.models.requests import parse_request
from cloudrec.recorder.webpage import browser
from cloudrec.recorder.webpage.browser import origin_of
from cloudrec.recorder.webpage.recording import PAGE_UID, inner_mixconfig, page_room

OUT = {"streamtype": 0, "videowidth": 1280, "videoheight": 720, "videobitrate": 1500}


def start(webpage: object, **mix: object) -> dict[str, object]:
    return {"resid": "r", "appid": 10034, "roomid": "room", "recordtype": 0, "streamtype": 1,
            "mixconfig": {"webpage": webpage, "output": OUT, **mix},
            "storagecfg": {"vender": 101, "endpoint": "local", "bucket": "rec-bucket",
                           "accesskey": "a", "secretkey": "s"}}


def test_a_webpage_needs_no_input_list() -> None:
    req = parse_request(StartRecordRequest, start({"url": "https://example.com/board",
                                                   "waitforsignal": True, "timeout_s": 60}))
    assert req.mixconfig is not None and req.mixconfig.webpage is not None
    assert req.mixconfig.webpage.waitforsignal and req.mixconfig.webpage.timeout_s == 60


@pytest.mark.parametrize("url", ["file:///etc/passwd", "javascript:alert(1)", "chrome://crash",
                                 "data:text/html,x", "example.com", "", 5])
def test_a_url_that_is_not_http_is_2101_naming_the_field(url: object) -> None:
    with pytest.raises(InvalidParameter) as err:
        parse_request(StartRecordRequest, start({"url": url}))
    assert err.value.field == "mixconfig.webpage.url"


@pytest.mark.parametrize("mix", [{"templateid": 1},
                                 {"input": [{"uid": "u", "roomid": "room", "streamtype": 2}]}])
def test_a_webpage_is_alone(mix: dict[str, object]) -> None:
    with pytest.raises(InvalidParameter) as err:
        parse_request(StartRecordRequest, start({"url": "https://example.com"}, **mix))
    assert err.value.field == "mixconfig.webpage"


def test_timeout_and_origins_are_checked() -> None:
    with pytest.raises(InvalidParameter) as err:
        parse_request(StartRecordRequest, start({"url": "https://a.example", "timeout_s": 0}))
    assert err.value.field == "mixconfig.webpage.timeout_s"
    with pytest.raises(InvalidParameter) as err:
        parse_request(StartRecordRequest, start({"url": "https://a.example",
                                                 "allow_origins": ["ftp://b.example"]}))
    assert err.value.field == "mixconfig.webpage.allow_origins[0]"


def test_the_mix_of_a_page_is_one_full_canvas_input() -> None:
    req = parse_request(StartRecordRequest, start({"url": "https://example.com"}))
    assert req.mixconfig is not None
    inner = inner_mixconfig("rec/1", req.mixconfig)
    (only,) = inner.inputs
    assert (only.uid, only.roomid) == (PAGE_UID, page_room("rec/1")) == (PAGE_UID, "webpage-rec_1")
    assert (only.layoutX, only.layoutY, only.layoutW, only.layoutH) == (0, 0, 1280, 720)
    assert inner.output == req.mixconfig.output and inner.webpage is None


def test_origins() -> None:
    assert origin_of("HTTPS://Board.Example.com:443/x?y") == "https://board.example.com"
    assert origin_of("http://127.0.0.1:8080/a") == "http://127.0.0.1:8080"


@pytest.mark.parametrize("binary", ["/usr/lib/chromium/chromium-headless-shell", "chromium"])
def test_one_page_one_renderer(binary: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The headless shell is headless by itself; either browser runs one renderer, no site
    isolation and no zygote, at the output's size."""
    monkeypatch.setattr(browser, "CHROMIUM", binary)
    args = browser.chromium_args("/tmp/profile", 1280, 720)
    assert args[0] == binary and ("--headless=new" in args) == (binary == "chromium")
    assert {"--renderer-process-limit=1", "--no-zygote", "--disable-site-isolation-trials",
            "--user-data-dir=/tmp/profile", "--window-size=1280,720"} <= set(args)
    assert "site-per-process" in next(a for a in args if a.startswith("--disable-features="))
    assert "--single-process" not in args


def test_one_process_on_request() -> None:
    """``webpage_single_process``: the renderer and the audio service in the browser process."""
    args = browser.chromium_args("/tmp/profile", 1280, 720, single_process=True)
    assert "--single-process" in args and "--renderer-process-limit=1" in args
