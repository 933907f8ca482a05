"""Layout geometry: templates 1–5, clamping and even alignment, placements from a mixconfig."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from cloudrec.media.mix.layout import Placement, Rect, placements_from_config, template_rects
from cloudrec.models.mixconfig import MixConfig

W, H = 1280, 720


def _overlap(a: Rect, b: Rect) -> bool:
    return a.x < b.right and b.x < a.right and a.y < b.bottom and b.y < a.bottom


def _check(rects: list[Rect], width: int = W, height: int = H) -> None:
    for r in rects:
        assert not r.empty
        assert r.x % 2 == r.y % 2 == r.w % 2 == r.h % 2 == 0, r
        assert 0 <= r.x and r.right <= width and 0 <= r.y and r.bottom <= height, r


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 9])
def test_horizontal_and_vertical_partition_the_canvas(n: int) -> None:
    cols = template_rects(1, n, W, H)
    rows = template_rects(2, n, W, H)
    _check(cols)
    _check(rows)
    assert [r.x for r in cols] == sorted(r.x for r in cols)
    assert sum(r.w for r in cols) == W and all(r.h == H for r in cols)
    assert sum(r.h for r in rows) == H and all(r.w == W for r in rows)
    for a, b in itertools.pairwise(cols):
        assert a.right == b.x
    for a, b in itertools.pairwise(rows):
        assert a.bottom == b.y


@pytest.mark.parametrize("n", range(1, 11))
def test_tiled_grid_never_overlaps(n: int) -> None:
    rects = template_rects(3, n, W, H)
    _check(rects)
    assert len(rects) == n
    for a, b in itertools.combinations(rects, 2):
        assert not _overlap(a, b)


def test_tiled_shapes() -> None:
    assert template_rects(3, 4, W, H) == [
        Rect(0, 0, 640, 360),
        Rect(640, 0, 640, 360),
        Rect(0, 360, 640, 360),
        Rect(640, 360, 640, 360),
    ]
    three = template_rects(3, 3, W, H)
    assert three[2] == Rect(320, 360, 640, 360)  # the short last row is centred
    five = template_rects(3, 5, W, H)  # 3 columns, 2 rows
    assert {r.y for r in five} == {0, 360} and five[3].x == (W - 2 * (W // 3)) // 2 // 2 * 2


def test_corner_picture_in_picture() -> None:
    rects = template_rects(4, 4, W, H)
    _check(rects)
    assert rects[0] == Rect(0, 0, W, H)
    small = rects[1:]
    assert all((r.w, r.h) == (W // 4, H // 4) for r in small)
    assert small[0].right > W - 40 and small[0].bottom > H - 40  # bottom-right corner
    assert [r.y for r in small] == sorted((r.y for r in small), reverse=True)  # upwards
    assert len({r.x for r in small}) == 1  # one column
    for a, b in itertools.combinations(small, 2):
        assert not _overlap(a, b)
    many = template_rects(4, 8, W, H)[1:]
    _check(many)
    assert len({r.x for r in many}) == 3  # wrapped into columns to the left
    for a, b in itertools.combinations(many, 2):
        assert not _overlap(a, b)


def test_five_users() -> None:
    rects = template_rects(5, 7, W, H)
    _check(rects)
    assert len(rects) == 5
    assert rects[0] == Rect(0, 0, W - W // 4, H)
    assert [r.y for r in rects[1:]] == [0, 180, 360, 540]
    assert all(r.x == W - W // 4 and (r.w, r.h) == (320, 180) for r in rects[1:])
    portrait = template_rects(5, 5, 720, 1280)
    _check(portrait, 720, 1280)
    assert portrait[0] == Rect(0, 0, 720, 960)
    assert [r.x for r in portrait[1:]] == [0, 180, 360, 540]
    assert len(template_rects(5, 2, W, H)) == 2


def test_template_edge_cases() -> None:
    assert template_rects(3, 0, W, H) == []
    with pytest.raises(ValueError):
        template_rects(6, 2, W, H)
    _check(template_rects(1, 3, 100, 60), 100, 60)  # odd slot widths are made even


def test_rect_fit_clamps_and_aligns() -> None:
    assert Rect(-10, 5, 100, 3000).fit(W, H) == Rect(0, 4, 90, 716)
    assert Rect(1279, 719, 10, 10).fit(W, H) == Rect(1278, 718, 2, 2)
    assert Rect(1280, 0, 10, 10).fit(W, H).empty
    assert Rect(3, 3, 5, 5).fit(W, H) == Rect(2, 2, 6, 6)


def _mix(**fields: Any) -> MixConfig:
    output = {"streamtype": 0, "videowidth": 800, "videoheight": 600, "videobitrate": 600}
    output.update(fields.pop("output", {}))
    return MixConfig.model_validate({"output": output, **fields})


def test_custom_input_placements() -> None:
    inputs = [
        {
            "uid": "a",
            "roomid": "r1",
            "streamtype": 0,
            "zOrder": 2,
            "layoutX": 1,
            "layoutY": 3,
            "layoutW": 401,
            "layoutH": 1900,
            "crop": 1,
            "alpha": 0.5,
            "cropW": 100,
            "cropH": 50,
            "cropX": 7,
        },
        {"uid": "b", "roomid": "r2", "streamtype": 2},  # audio only: not placed
        {
            "uid": "c",
            "roomid": "r2",
            "streamtype": 1,
            "layoutX": 400,
            "layoutY": 0,
            "layoutW": 400,
            "layoutH": 600,
            "cropX": 5,
        },  # a cut needs cropW and cropH
        {
            "uid": "d",
            "roomid": "r2",
            "streamtype": 1,
            "layoutX": 800,
            "layoutY": 0,
            "layoutW": 400,
            "layoutH": 600,
        },  # nothing left on the canvas
    ]
    placed = placements_from_config(_mix(input=inputs), "r1", ["x", "y"])
    assert placed == [
        Placement("a", "r1", Rect(0, 2, 402, 598), 2, 1, Rect(7, 0, 100, 50), 0.5),
        Placement("c", "r2", Rect(400, 0, 400, 600), 0, 0, None, 1.0),
    ]


def test_template_placements_in_join_order() -> None:
    placed = placements_from_config(_mix(templateid=4), "room", ["first", "second", "third"])
    assert [p.uid for p in placed] == ["first", "second", "third"]
    assert [p.z for p in placed] == [0, 1, 2]
    assert placed[0].rect == Rect(0, 0, 800, 600) and all(p.crop_mode == 1 for p in placed)
    assert all(p.roomid == "room" for p in placed)
    assert placements_from_config(_mix(templateid=1), "room", []) == []
    audio = _mix(templateid=1, output={"streamtype": 2})
    assert placements_from_config(audio, "room", ["a"]) == []
