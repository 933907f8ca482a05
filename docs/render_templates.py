"""Render docs/templates.png: each layout template (1-5) composed by cloudrec's compositor.

    .venv/bin/python docs/render_templates.py
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from cloudrec.media.mix.compose import Compositor
from cloudrec.media.mix.layout import Placement, template_rects
from cloudrec.media.mix.overlay import load_font

W, H = 384, 216  # each canvas (16:9)
COLOURS = [(214, 69, 65), (67, 160, 71), (30, 136, 229), (251, 192, 45), (142, 36, 170),
           (0, 172, 193)]
TEMPLATES = [(1, "1 horizontal", 3), (2, "2 vertical", 3), (3, "3 tiled", 5),
             (4, "4 corner", 4), (5, "5 five users", 5)]


def publisher_frame(slot: int) -> av.VideoFrame:
    """A publisher's picture: its colour and its join order, large."""
    img = Image.new("RGB", (320, 180), COLOURS[slot])
    draw = ImageDraw.Draw(img)
    draw.text((160, 90), f"uid {slot + 1}", fill=(255, 255, 255), font=load_font(36),
              anchor="mm")
    return av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24").reformat(format="yuv420p")


def panel(templateid: int, title: str, n: int) -> Image.Image:
    rects = template_rects(templateid, n, W, H)
    placements = [Placement(f"u{i}", "room", r, z=i, crop_mode=1) for i, r in enumerate(rects)]
    frames = [publisher_frame(i) for i in range(n)]
    canvas = Compositor(W, H, "202020").compose(list(zip(placements, frames)))
    out = Image.new("RGB", (W, H + 28), (255, 255, 255))
    out.paste(Image.fromarray(canvas.to_ndarray(format="rgb24")), (0, 28))
    ImageDraw.Draw(out).text((4, 4), f"templateid {title}, {n} publishers", fill=(0, 0, 0),
                             font=load_font(16))
    return out


def main() -> None:
    panels = [panel(*t) for t in TEMPLATES]
    pad = 12
    cols = 3
    rows = -(-len(panels) // cols)
    pw, ph = panels[0].size
    sheet = Image.new("RGB", (cols * pw + (cols + 1) * pad, rows * ph + (rows + 1) * pad),
                      (255, 255, 255))
    for i, p in enumerate(panels):
        r, c = divmod(i, cols)
        sheet.paste(p, (pad + c * (pw + pad), pad + r * (ph + pad)))
    path = Path(__file__).with_name("templates.png")
    sheet.quantize(64).save(path, optimize=True)
    print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
