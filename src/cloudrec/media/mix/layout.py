"""Where each input of a mixed recording goes on the canvas: geometry only, no pixels.

Layout templates (``templateid``, one room; the room's video publishers fill the slots in join
order, slot 0 first). ``W``×``H`` is the canvas, ``n`` the number of publishers; every division
is an integer one, and every rect is then made even (below), so neighbouring slots share edges.

1. Horizontal: ``n`` equal columns side by side, each the full canvas height. Column ``i``
   spans x from ``i*W//n`` to ``(i+1)*W//n``.
2. Vertical: ``n`` equal rows stacked top to bottom, each the full canvas width. Row ``i``
   spans y from ``i*H//n`` to ``(i+1)*H//n``.
3. Tiled: a grid of ``cols = ceil(sqrt(n))`` columns and ``rows = ceil(n / cols)`` rows,
   filled left to right, top to bottom. Row ``r`` spans y from ``r*H//rows`` to
   ``(r+1)*H//rows``; in a full row column ``c`` spans x from ``c*W//cols`` to
   ``(c+1)*W//cols``; a last row that is not full holds cells ``W//cols`` wide, centred as a
   group (2 → 2×1, 3 → 2×2 with the third centred below, 5 → 3×2).
4. Corner (picture-in-picture): slot 0 covers the whole canvas; the others are small windows
   of ``W//4`` × ``H//4`` with a margin ``m = max(2, min(W, H)//40)`` from the edges and between
   each other, stacked from the bottom-right corner upwards (slot 1 bottom-most); when a column
   is full the next one starts to its left, again from the bottom.
5. Five users, horizontal: at most 5 slots. On a landscape or square canvas (``W >= H``) slot 0
   is a large window on the left, ``W - W//4`` wide and the full height, and slots 1–4 are a
   column of ``W//4`` × ``H//4`` windows on the right, top to bottom. On a portrait canvas slot 0
   is on top, the full width and ``H - H//4`` high, and slots 1–4 a row of ``W//4`` × ``H//4``
   windows below it, left to right. Publishers past the fifth are not shown.

Template slots use ``crop`` 1 (fill, centre-crop) and alpha 1; the z order is the slot index,
so picture-in-picture windows lie above the full-canvas slot.

Every rect is clamped to the canvas and made even for yuv420p (chroma is subsampled 2×2):
both edges are rounded down to even coordinates, so a rect never grows past the canvas and
adjoining rects stay adjoining. A rect that becomes empty is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from cloudrec.models.mixconfig import MixConfig

TEMPLATE_IDS = (1, 2, 3, 4, 5)
FIVE_USERS = 5


@dataclass(frozen=True, slots=True)
class Rect:
    x: int
    y: int
    w: int
    h: int

    @property
    def right(self) -> int:
        return self.x + self.w

    @property
    def bottom(self) -> int:
        return self.y + self.h

    @property
    def center(self) -> tuple[int, int]:
        return self.x + self.w // 2, self.y + self.h // 2

    @property
    def empty(self) -> bool:
        return self.w <= 0 or self.h <= 0

    def clamp(self, width: int, height: int) -> Rect:
        """The part of this rect inside a ``width``×``height`` area (possibly empty)."""
        x0, y0 = min(max(self.x, 0), width), min(max(self.y, 0), height)
        x1, y1 = min(max(self.right, 0), width), min(max(self.bottom, 0), height)
        return Rect(x0, y0, x1 - x0, y1 - y0)

    def even(self) -> Rect:
        """Both edges rounded down to even coordinates (may become empty)."""
        x0, y0 = self.x - self.x % 2, self.y - self.y % 2
        x1, y1 = self.right - self.right % 2, self.bottom - self.bottom % 2
        return Rect(x0, y0, max(x1 - x0, 0), max(y1 - y0, 0))

    def fit(self, width: int, height: int) -> Rect:
        """Clamped to the canvas, then even-aligned."""
        return self.clamp(width, height).even()


def _span(i: int, n: int, total: int) -> tuple[int, int]:
    """Start and length of part ``i`` of ``total`` cut into ``n`` integer parts."""
    start, end = i * total // n, (i + 1) * total // n
    return start, end - start


def _horizontal(n: int, width: int, height: int) -> list[Rect]:
    return [Rect(x, 0, w, height) for x, w in (_span(i, n, width) for i in range(n))]


def _vertical(n: int, width: int, height: int) -> list[Rect]:
    return [Rect(0, y, width, h) for y, h in (_span(i, n, height) for i in range(n))]


def _tiled(n: int, width: int, height: int) -> list[Rect]:
    cols = math.isqrt(n - 1) + 1  # ceil(sqrt(n)) for n >= 1
    rows = -(-n // cols)
    cw = width // cols
    rects = []
    for i in range(n):
        row, col = divmod(i, cols)
        y, h = _span(row, rows, height)
        in_row = min(cols, n - row * cols)
        if in_row == cols:
            x, w = _span(col, cols, width)
        else:  # a short last row: cells of the grid's width, centred
            x, w = (width - in_row * cw) // 2 + col * cw, cw
        rects.append(Rect(x, y, w, h))
    return rects


def _corner(n: int, width: int, height: int) -> list[Rect]:
    rects = [Rect(0, 0, width, height)]
    sw, sh = width // 4, height // 4
    margin = max(2, min(width, height) // 40)
    per_column = max(1, (height - margin) // (sh + margin))
    for k in range(n - 1):
        column, index = divmod(k, per_column)
        x = width - (column + 1) * (sw + margin)
        y = height - (index + 1) * (sh + margin)
        rects.append(Rect(x, y, sw, sh))
    return rects


def _five_users(n: int, width: int, height: int) -> list[Rect]:
    n = min(n, FIVE_USERS)
    sw, sh = width // 4, height // 4
    if width >= height:
        rects = [Rect(0, 0, width - sw, height)]
        rects += [Rect(width - sw, i * sh, sw, sh) for i in range(4)]
    else:
        rects = [Rect(0, 0, width, height - sh)]
        rects += [Rect(i * sw, height - sh, sw, sh) for i in range(4)]
    return rects[:n]


_TEMPLATES = {1: _horizontal, 2: _vertical, 3: _tiled, 4: _corner, 5: _five_users}


def template_rects(templateid: int, n_inputs: int, width: int, height: int) -> list[Rect]:
    """The rects of the first ``n_inputs`` slots of a template on a ``width``×``height`` canvas.

    Returns ``min(n_inputs, capacity)`` rects (capacity 5 for template 5, unbounded otherwise),
    clamped and even-aligned; see the module docstring for each geometry.
    """
    if templateid not in _TEMPLATES:
        raise ValueError(f"unknown layout template {templateid}")
    if n_inputs <= 0 or width <= 0 or height <= 0:
        return []
    return [r.fit(width, height) for r in _TEMPLATES[templateid](n_inputs, width, height)]


@dataclass(frozen=True, slots=True)
class Placement:
    """One video input drawn on the canvas.

    ``rect`` is on the canvas (clamped, even); ``cut`` is a sub-rectangle of the *source* frame
    taken before scaling (clamped to the frame when drawn), or None for the whole frame;
    ``crop_mode`` 0 fits the source inside ``rect`` with black bars, 1 fills it and centre-crops.
    """

    uid: str
    roomid: str
    rect: Rect
    z: int = 0
    crop_mode: int = 0
    cut: Rect | None = None
    alpha: float = 1.0

    @property
    def key(self) -> tuple[str, str]:
        return self.roomid, self.uid


def placements_from_config(
    mixconfig: MixConfig, roomid: str, publishers_in_join_order: Sequence[str]
) -> list[Placement]:
    """The video placements of a mix.

    A custom ``input`` list places each video input (streamtype 0 or 1) at its
    ``layoutX/Y/W/H`` with its ``zOrder``, ``crop``, ``alpha`` and, when ``cropW`` and ``cropH``
    are given, the cut-out ``cropX/Y/W/H`` (X and Y default to 0). Otherwise the template is
    filled with the uids of ``publishers_in_join_order`` (the video publishers of ``roomid``).
    Rects are clamped to the canvas and even-aligned; inputs left with an empty rect are
    dropped. An output without video has no placements.
    """
    out = mixconfig.output
    width, height = out.videowidth, out.videoheight
    if not out.has_video or width is None or height is None:
        return []
    placements: list[Placement] = []
    if mixconfig.inputs:
        for item in mixconfig.inputs:
            if not item.has_video:
                continue
            assert item.layoutX is not None and item.layoutY is not None
            assert item.layoutW is not None and item.layoutH is not None
            rect = Rect(item.layoutX, item.layoutY, item.layoutW, item.layoutH).fit(width, height)
            if rect.empty:
                continue
            cut = None
            if item.cropW is not None and item.cropH is not None:
                cut = Rect(item.cropX or 0, item.cropY or 0, item.cropW, item.cropH)
            placements.append(
                Placement(item.uid, item.roomid, rect, item.zOrder, item.crop, cut, item.alpha)
            )
        return placements
    if mixconfig.templateid is None:
        return []
    rects = template_rects(mixconfig.templateid, len(publishers_in_join_order), width, height)
    for slot, (uid, rect) in enumerate(zip(publishers_in_join_order, rects)):
        if not rect.empty:
            placements.append(Placement(uid, roomid, rect, z=slot, crop_mode=1))
    return placements
