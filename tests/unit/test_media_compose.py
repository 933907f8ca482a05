"""The compositor, watermarks and SEI: pixel checks on composed frames (RGB only in the test).

Inputs are solid-colour yuv420p frames; a colour is checked at a point with a tolerance that
covers the YUV round trip. The SEI test encodes composed frames with libx264, inserts the
message and decodes the result with PyAV.
"""

from __future__ import annotations

import io
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from cloudrec.media.codecs import h264
from cloudrec.media.mix.compose import Compositor
from cloudrec.media.mix.layout import Placement, Rect, template_rects
from cloudrec.media.mix.overlay import (
    FONT_PATH,
    StaticOverlay,
    TimestampOverlay,
    build_overlays,
    render_text,
    text_patch,
)
from cloudrec.media.mix.sei import (
    SeiInserter,
    escape_rbsp,
    find_sei_payloads,
    sei_nal,
    unescape_rbsp,
)
from cloudrec.models.mixconfig import MixOutput, TextWatermark, TimestampWatermark, Watermark

RED, GREEN, BLUE, YELLOW, MAGENTA = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
)
WHITE, BLACK = (255, 255, 255), (0, 0, 0)
COLOURS = [RED, GREEN, BLUE, YELLOW, MAGENTA]
TOL = 10


def solid(rgb: tuple[int, int, int], w: int = 320, h: int = 180) -> av.VideoFrame:
    img = np.empty((h, w, 3), np.uint8)
    img[...] = rgb
    return av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")


def quadrants(w: int = 320, h: int = 240) -> av.VideoFrame:
    """Red top-left, green top-right, blue bottom-left, yellow bottom-right."""
    img = np.empty((h, w, 3), np.uint8)
    img[: h // 2, : w // 2], img[: h // 2, w // 2 :] = RED, GREEN
    img[h // 2 :, : w // 2], img[h // 2 :, w // 2 :] = BLUE, YELLOW
    return av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")


def rgb(frame: av.VideoFrame) -> np.ndarray:
    assert frame.format.name == "yuv420p"
    return frame.to_ndarray(format="rgb24").astype(int)


def near(pixel: np.ndarray, colour: tuple[int, int, int], tol: int = TOL) -> bool:
    return bool(np.abs(pixel - np.array(colour)).max() <= tol)


def place(rect: Rect, uid: str = "u", **kw: Any) -> Placement:
    return Placement(uid, "room", rect, **kw)


@pytest.mark.parametrize("templateid,n", [(1, 3), (2, 3), (3, 4), (3, 5), (4, 4), (5, 5)])
def test_templates_put_each_input_in_its_rect(templateid: int, n: int) -> None:
    rects = template_rects(templateid, n, 640, 360)
    placements = [place(r, f"u{i}", z=i, crop_mode=1) for i, r in enumerate(rects)]
    frames = [solid(COLOURS[i]) for i in range(n)]
    out = rgb(Compositor(640, 360, "FFFFFF").compose(list(zip(placements, frames))))
    for rect, colour in zip(rects, COLOURS):
        x, y = rect.center
        assert near(out[y, x], colour), (rect, out[y, x], colour)
        assert near(out[rect.y + 1, rect.x + 1], colour)  # fill mode reaches the corners
        assert near(out[rect.bottom - 2, rect.right - 2], colour)


def test_z_order_and_stable_ties() -> None:
    comp = Compositor(320, 180)
    full = Rect(0, 0, 320, 180)
    out = rgb(
        comp.compose([(place(full, "a", z=2), solid(RED)), (place(full, "b", z=1), solid(BLUE))])
    )
    assert near(out[90, 160], RED)
    same = [(place(full, "a", z=1), solid(RED)), (place(full, "b", z=1), solid(BLUE))]
    assert near(rgb(comp.compose(same))[90, 160], BLUE)  # equal z: later in the list on top
    overlap = [
        (place(Rect(0, 0, 200, 180), "a", z=0), solid(RED)),
        (place(Rect(100, 0, 220, 180), "b", z=1), solid(GREEN)),
    ]
    out = rgb(comp.compose(overlap))
    assert near(out[90, 50], RED) and near(out[90, 150], GREEN) and near(out[90, 300], GREEN)


def test_alpha_blends_with_what_is_under() -> None:
    full = Rect(0, 0, 320, 180)
    inputs = [(place(full, "a"), solid(BLUE)), (place(full, "b", z=1, alpha=0.5), solid(RED))]
    out = rgb(Compositor(320, 180).compose(inputs))
    assert near(out[90, 160], (128, 0, 128), 12)
    invisible = [(place(full, "a"), solid(BLUE)), (place(full, "b", z=1, alpha=0.0), solid(RED))]
    assert near(rgb(Compositor(320, 180).compose(invisible))[90, 160], BLUE)


def test_crop_fit_letterboxes_and_fill_centre_crops() -> None:
    comp = Compositor(400, 200, "FFFFFF")
    wide = solid(GREEN, 320, 180)  # 16:9 into a square rect
    fit = rgb(comp.compose([(place(Rect(0, 0, 200, 200), crop_mode=0), wide)]))
    assert near(fit[100, 100], GREEN)
    assert near(fit[4, 100], BLACK) and near(fit[195, 100], BLACK)  # bars inside the rect
    assert near(fit[100, 300], WHITE)  # the canvas outside the rect is untouched
    bar = 200 - 200 * 180 // 320  # 88 rows of bars in all
    assert near(fit[bar // 2 - 4, 100], BLACK) and near(fit[bar // 2 + 4, 100], GREEN)
    fill = rgb(comp.compose([(place(Rect(0, 0, 200, 200), crop_mode=1), wide)]))
    assert near(fill[1, 1], GREEN) and near(fill[198, 198], GREEN) and near(fill[100, 100], GREEN)
    # centre-crop: the middle of a quadrant picture stays in the middle
    tall = rgb(comp.compose([(place(Rect(0, 0, 100, 200), crop_mode=1), quadrants())]))
    assert near(tall[50, 25], RED) and near(tall[50, 75], GREEN)
    assert near(tall[150, 25], BLUE) and near(tall[150, 75], YELLOW)


def test_cut_shows_the_chosen_region() -> None:
    comp = Compositor(320, 180)
    cut = Rect(160, 0, 160, 120)  # the green top-right quadrant of a 320x240 picture
    out = rgb(comp.compose([(place(Rect(0, 0, 320, 180), crop_mode=1, cut=cut), quadrants())]))
    for y, x in [(2, 2), (90, 160), (177, 317)]:
        assert near(out[y, x], GREEN), (y, x, out[y, x])
    off_frame = Rect(200, 200, 500, 500)  # clamped to the source: the yellow corner
    out = rgb(comp.compose([(place(Rect(0, 0, 320, 180), cut=off_frame), quadrants())]))
    assert near(out[90, 160], YELLOW)


def test_background_colour_and_picture() -> None:
    out = rgb(Compositor(64, 48, "3366CC").compose([]))
    assert np.abs(out - np.array((0x33, 0x66, 0xCC))).max() <= 4
    picture = np.zeros((100, 200, 3), np.uint8)
    picture[:, :100], picture[:, 100:] = RED, BLUE
    out = rgb(Compositor(128, 96, background_image=picture, background_scale=1).compose([]))
    assert near(out[48, 10], RED) and near(out[48, 118], BLUE)
    # scale 0 (zoom and centre-crop): a 2:1 picture on a 4:3 canvas keeps its middle
    out = rgb(Compositor(128, 96, background_image=picture, background_scale=0).compose([]))
    assert near(out[48, 10], RED) and near(out[48, 118], BLUE)


def test_patch_modes() -> None:
    rect = Rect(0, 0, 160, 180)
    p = place(rect, crop_mode=1)
    inputs = [(p, None)]
    bg = "FFFFFF"
    assert near(rgb(Compositor(320, 180, bg, patch_mode=0).compose(inputs))[90, 80], WHITE)
    assert near(rgb(Compositor(320, 180, bg, patch_mode=1).compose(inputs))[90, 80], BLACK)
    last = Compositor(320, 180, bg, patch_mode=2)
    assert near(rgb(last.compose(inputs))[90, 80], BLACK)  # no frame seen yet
    last.compose([(p, solid(GREEN))])
    assert near(rgb(last.compose(inputs))[90, 80], GREEN)
    last.compose([])  # the input left the layout: its last frame is forgotten
    assert near(rgb(last.compose(inputs))[90, 80], BLACK)
    picture = np.zeros((90, 160, 3), np.uint8)
    picture[...] = MAGENTA
    pic = Compositor(320, 180, bg, patch_mode=3, patch_image=picture)
    out = rgb(pic.compose(inputs))
    assert near(out[90, 80], MAGENTA) and near(out[90, 240], WHITE)
    assert near(rgb(pic.compose([(p, solid(BLUE))]))[90, 80], BLUE)


def _text(**kw: Any) -> TextWatermark:
    return TextWatermark.model_validate({"x": 20, "y": 10, "size": 24, **kw})


def test_text_watermark_changes_pixels_where_placed() -> None:
    full = Rect(0, 0, 320, 180)
    inputs = [(place(full), solid(BLUE))]
    plain = rgb(Compositor(320, 180).compose(inputs))
    wm = _text(content="cloudrec", color="FFFF00", backgroundColor="000000")
    out = rgb(
        Compositor(320, 180, overlays=[StaticOverlay(text_patch(wm, wm.content))]).compose(inputs)
    )
    changed = np.argwhere(np.abs(out - plain).max(axis=2) > 30)
    assert len(changed) > 500
    ys, xs = changed[:, 0], changed[:, 1]
    assert ys.min() >= 10 and xs.min() >= 20 and ys.max() < 10 + 60 and xs.max() < 20 + 160
    assert (np.abs(out[ys, xs] - np.array(YELLOW)).max(axis=1) < 40).sum() > 100  # glyphs
    half = _text(content="cloudrec", backgroundColor="FF0000", alpha=0.5)
    out = rgb(
        Compositor(320, 180, overlays=[StaticOverlay(text_patch(half, half.content))]).compose(
            inputs
        )
    )
    assert near(out[12, 22], (128, 0, 128), 14)  # the box blends half and half with blue


@pytest.mark.skipif(not Path(FONT_PATH).exists(), reason="fonts-noto-cjk is not installed")
def test_chinese_text_renders_glyphs() -> None:
    a = render_text("中文水印", 32, "FFFFFF", "000000")
    b = render_text("录制服务", 32, "FFFFFF", "000000")
    assert a.shape[1] > 4 * 28  # four full-width glyphs
    lit_a, lit_b = a[..., 0] > 128, b[..., 0] > 128
    assert lit_a.sum() > 300 and lit_b.sum() > 300
    assert lit_a.shape != lit_b.shape or (lit_a != lit_b).sum() > 100  # not the same boxes


def test_timestamp_watermark_redrawn_when_the_text_changes() -> None:
    wm = TimestampWatermark.model_validate(
        {"x": 0, "y": 0, "size": 20, "format": "%Y-%m-%d %H:%M:%S"}
    )
    overlay = TimestampOverlay(wm)
    t0 = float(int(time.time()))
    first = overlay.patch(t0 + 0.1)
    assert overlay.patch(t0 + 0.9) is first and overlay.renders == 1
    second = overlay.patch(t0 + 1.2)
    assert overlay.renders == 2 and second is not None and first is not None
    assert overlay.text_at(t0) == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0))
    comp = Compositor(320, 180, overlays=[overlay])
    a, b = rgb(comp.compose([], now=t0)), rgb(comp.compose([], now=t0 + 1))
    assert (np.abs(a - b).max(axis=2) > 30).sum() > 10


def planes_of(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray().copy()


def test_only_what_changed_is_drawn_again() -> None:
    """The canvas is kept: the same frames draw nothing; a new frame of a tile that no
    watermark covers copies that tile alone; a new frame under the watermark, or a new second
    of the clock, draws everything. Each result is what a fresh compositor draws."""
    wm = TimestampWatermark.model_validate({"x": 0, "y": 0, "size": 20, "format": "%H:%M:%S"})
    comp = Compositor(320, 180, overlays=[TimestampOverlay(wm)])
    left, right = place(Rect(0, 0, 160, 180), "a"), place(Rect(160, 0, 160, 180), "b")
    t0 = float(int(time.time()))

    def check(inputs: list[tuple[Placement, av.VideoFrame]], now: float) -> av.VideoFrame:
        canvas = comp.compose(inputs, now=now)
        fresh = Compositor(320, 180, overlays=[TimestampOverlay(wm)]).compose(inputs, now=now)
        assert np.array_equal(planes_of(canvas), planes_of(fresh))
        return canvas

    red, blue, green = solid(RED, 160, 180), solid(BLUE, 160, 180), solid(GREEN, 160, 180)
    first = check([(left, red), (right, blue)], t0 + 0.1)
    assert (comp.reused, comp.tiles_only) == (0, 0)
    assert check([(left, red), (right, blue)], t0 + 0.5) is first
    assert (comp.reused, comp.tiles_only) == (1, 0)
    check([(left, red), (right, green)], t0 + 0.6)  # the right tile has no watermark
    assert (comp.reused, comp.tiles_only) == (1, 1)
    check([(left, blue), (right, green)], t0 + 0.7)  # the left one has: all of it
    assert comp.tiles_only == 1
    check([(left, blue), (right, red)], t0 + 1.1)  # a new second of the clock: all of it
    assert comp.tiles_only == 1
    check([(left, blue), (right, green)], t0 + 1.2)
    assert comp.tiles_only == 2
    # a moved input, overlapping inputs, alpha, an input gone: all of it, and right
    check([(place(Rect(0, 0, 160, 180), "b"), green), (place(Rect(160, 0, 160, 180), "a"), red)],
          t0 + 1.3)
    check([(place(Rect(0, 0, 200, 180), "b"), blue), (place(Rect(120, 0, 200, 180), "a"), red)],
          t0 + 1.4)
    check([(place(Rect(0, 0, 200, 180), "b"), green), (place(Rect(120, 0, 200, 180), "a"), red)],
          t0 + 1.5)
    check([(place(Rect(0, 0, 160, 180), "b", alpha=0.5), blue), (right, red)], t0 + 1.6)
    check([(place(Rect(0, 0, 160, 180), "b", alpha=0.5), green), (right, red)], t0 + 1.7)
    assert comp.tiles_only == 2
    check([(right, red)], t0 + 1.8)


def test_kept_canvas_matches_a_fresh_one_through_random_changes() -> None:
    """Random frames, layouts and clock steps on a kept canvas, each compared with what a new
    compositor draws from the same inputs."""
    rng = np.random.default_rng(11)
    wm = TimestampWatermark.model_validate({"x": 200, "y": 140, "size": 16, "format": "%H:%M:%S"})
    comp = Compositor(320, 240, overlays=[TimestampOverlay(wm)], patch_mode=1)
    pictures = [solid(c, 160, 120) for c in COLOURS]
    layouts = [template_rects(3, 4, 320, 240), template_rects(4, 4, 320, 240),
               template_rects(1, 4, 320, 240)]
    layout, shown, now = layouts[0], [pictures[i] for i in range(4)], 1_700_000_000.0
    kinds = {"reused": 0, "tiles": 0}
    for _ in range(60):
        roll = rng.random()
        if roll < 0.1:
            layout = layouts[int(rng.integers(len(layouts)))]
        elif roll < 0.2:
            now += 1.0
        for i in range(4):
            if rng.random() < 0.4:
                shown[i] = pictures[int(rng.integers(len(pictures)))] if rng.random() < 0.9 \
                    else None  # type: ignore[call-overload]
        inputs = [(place(rect, f"u{i}", z=i), shown[i]) for i, rect in enumerate(layout)]
        reused, tiles = comp.reused, comp.tiles_only
        canvas = comp.compose(inputs, now=now)
        fresh = Compositor(320, 240, overlays=[TimestampOverlay(wm)], patch_mode=1)
        assert np.array_equal(planes_of(canvas), planes_of(fresh.compose(inputs, now=now)))
        kinds["reused"] += comp.reused - reused
        kinds["tiles"] += comp.tiles_only - tiles
    assert kinds["reused"] > 3 and kinds["tiles"] > 10, kinds


def _png(colour: tuple[int, int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_image_watermark_and_from_output() -> None:
    url_wm, url_bg, url_patch = "http://x/wm.png", "http://x/bg.png", "http://x/patch.png"
    output = MixOutput.model_validate(
        {
            "streamtype": 1,
            "videowidth": 320,
            "videoheight": 180,
            "videobitrate": 500,
            "patch": 3,
            "patchUrl": url_patch,
            "background": {"color": "FFFFFF", "image": {"url": url_bg, "scale": 1}},
            "watermark": {
                "imageList": [
                    {"x": 200, "y": 100, "width": 60, "height": 40, "url": url_wm, "scale": 1},
                    {
                        "x": 10,
                        "y": 100,
                        "width": 60,
                        "height": 40,
                        "url": url_wm,
                        "scale": 0,
                        "alpha": 0.5,
                    },
                    {
                        "x": 100,
                        "y": 10,
                        "width": 60,
                        "height": 40,
                        "url": "http://x/none.png",
                        "scale": 0,
                    },
                ],
            },
        }
    )
    pictures = {
        url_wm: _png((0, 255, 0, 255)),
        url_bg: _png((0, 0, 255, 255)),
        url_patch: _png((255, 0, 255, 255)),
    }
    comp = Compositor.from_output(output, pictures)
    p = place(Rect(120, 0, 80, 60))
    out = rgb(comp.compose([(p, None)]))
    assert near(out[120, 230], GREEN)  # image watermark
    assert near(out[120, 40], (0, 128, 128), 14)  # half green over the blue background
    assert near(out[30, 160], MAGENTA) and near(out[150, 150], BLUE)  # patch, background
    again = Compositor.from_output(output.model_copy(update={"patch": 2}), {}, previous=comp)
    again.compose([(p, solid(RED))])
    assert near(rgb(again.compose([(p, None)]))[30, 160], RED)
    assert near(rgb(again.compose([]))[90, 10], WHITE)  # no background picture: its colour


def test_build_overlays_order() -> None:
    wm = Watermark.model_validate(
        {
            "timestamp": {"x": 0, "y": 0, "size": 10, "format": "%H:%M:%S"},
            "textList": [{"x": 0, "y": 20, "size": 10, "content": "a"}],
        }
    )
    overlays = build_overlays(wm, {})
    assert [type(o).__name__ for o in overlays] == ["StaticOverlay", "TimestampOverlay"]


def test_compose_time_720p_four_inputs() -> None:
    """Measures (prints, no assertion) ms per 1280x720 canvas with four 640x360 inputs."""
    sets = [[solid(c, 640, 360) for c in COLOURS[:4]] for _ in range(2)]
    for templateid in (3, 4):
        rects = template_rects(templateid, 4, 1280, 720)
        placements = [place(r, f"u{i}", z=i, crop_mode=1) for i, r in enumerate(rects)]
        comp = Compositor(1280, 720)
        comp.compose(list(zip(placements, sets[1])))
        n = 60
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(n):  # alternate frame sets: every input is scaled again each time
            comp.compose(list(zip(placements, sets[i % 2])))
        wall = (time.perf_counter() - start) / n * 1000
        cpu_ms = (time.process_time() - cpu) / n * 1000
        print(
            f"\ncompose 1280x720, 4x640x360, template {templateid}: "
            f"{wall:.2f} ms/frame wall, {cpu_ms:.2f} ms CPU"
        )


# -- SEI -------------------------------------------------------------------------------------


def test_rbsp_escaping_round_trip() -> None:
    for raw in [
        b"",
        b"\x00\x00\x00",
        b"\x00\x00\x01\x00\x00\x02\x00\x00\x03",
        bytes(range(8)),
        b"\x00" * 10,
        bytes(np.random.default_rng(1).integers(0, 4, 500).tolist()),
    ]:
        escaped = escape_rbsp(raw)
        assert unescape_rbsp(escaped) == raw
        for i in range(len(escaped) - 2):
            assert not (escaped[i] == 0 and escaped[i + 1] == 0 and escaped[i + 2] <= 2)


def test_sei_nal_layout() -> None:
    data = b"x" * 300
    nal = sei_nal(data)
    assert nal[0] == 6 and nal[1] == 5 and nal[2:4] == bytes((255, 316 - 255))
    assert nal.endswith(b"\x80") and find_sei_payloads(h264.join_annexb([nal])) == [data]


def test_sei_round_trip_through_libx264_and_decoder() -> None:
    payload = b"cloudrec \x00\x00\x01\x00\x00\x00 " + "中文".encode() + bytes(range(256))
    inserter = SeiInserter(payload)
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = 160, 96, "yuv420p"
    enc.time_base, enc.framerate, enc.gop_size = Fraction(1, 15), Fraction(15), 4
    enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    enc.open()
    comp = Compositor(160, 96, "202020")
    units = []
    for i in range(8):
        frame = comp.compose([(place(Rect(i * 8, 0, 64, 64)), solid(COLOURS[i % 5], 64, 64))])
        frame.pts = i
        units += [inserter(bytes(p)) for p in enc.encode(frame)]
    units += [inserter(bytes(p)) for p in enc.encode(None)]
    assert len(units) == 8
    dec = av.CodecContext.create("h264", "r")
    decoded = 0
    for au in units:
        assert find_sei_payloads(au) == [payload]
        nals = h264.split_annexb(au)
        first_slice = next(i for i, n in enumerate(nals) if h264.nal_type(n) in (1, 5))
        assert nals[first_slice - 1] == inserter.nal  # ours: right before the first slice
        decoded += len(dec.decode(av.Packet(au)))
    decoded += len(dec.decode(None))
    assert decoded == 8
    assert find_sei_payloads(units[0], None)[-1][16:] == payload  # x264's own SEI comes first
