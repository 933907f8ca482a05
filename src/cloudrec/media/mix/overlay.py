"""Watermarks and pictures for the mix, rendered once and blended on yuv420p planes.

Text is drawn with Pillow (FFmpeg's ``drawtext`` is not in PyAV's build) in the Simplified
Chinese face of Noto Sans CJK, so Chinese renders; if the font file is missing, Pillow's default
font is used and a warning logged. A watermark becomes a :class:`YuvaPatch` once: Y, U and V
premultiplied by alpha, and the inverse alpha, at full and at chroma resolution. Blending it on
a frame is then three integer multiply-adds over the patch's area, no colour conversion.

    YuvaPatch           a pre-rendered picture with alpha, blended onto Y/U/V planes
    Overlay             anything with ``patch(now) -> YuvaPatch | None``
    StaticOverlay       a patch that never changes (text and image watermarks)
    TimestampOverlay    the server's local time; re-rendered only when the text changes
    build_overlays      the overlays of a ``watermark`` object, images given as fetched bytes
    decode_picture      image bytes → RGB array (background and patch pictures)
    picture_urls        the URLs of the pictures a mixconfig draws (to fetch before mixing)

Colours use BT.601 limited range, as swscale does for yuv420p.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from cloudrec.models.mixconfig import (
    ImageWatermark,
    MixConfig,
    TextWatermark,
    TimestampWatermark,
    Watermark,
)

log = logging.getLogger(__name__)

FONT_PATH = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"
FONT_FACE_SC = 2  # index of "Noto Sans CJK SC" in the collection (JP, KR, SC, TC, HK, ...)

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]


def hex_rgb(color: str) -> tuple[int, int, int]:
    """The RGB bytes of a hex colour: "FF8800" → (255, 136, 0)."""
    value = int(color, 16)
    return value >> 16 & 0xFF, value >> 8 & 0xFF, value & 0xFF


def rgb_to_yuv(rgb: np.ndarray) -> Planes:
    """BT.601 limited-range Y, U, V (float32, full resolution) of an (h, w, 3) RGB array."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    y = 16 + 0.256788 * r + 0.504129 * g + 0.097906 * b
    u = 128 - 0.148223 * r - 0.290993 * g + 0.439216 * b
    v = 128 + 0.439216 * r - 0.367788 * g - 0.071427 * b
    return y, u, v


def yuv_color(color: str) -> tuple[int, int, int]:
    """The (Y, U, V) bytes of a hex RGB colour."""
    y, u, v = rgb_to_yuv(np.array([[hex_rgb(color)]], dtype=np.uint8))
    return round(float(y[0, 0])), round(float(u[0, 0])), round(float(v[0, 0]))


def _pool2(a: np.ndarray) -> np.ndarray:
    """Mean over 2×2 blocks (both dimensions even)."""
    total: np.ndarray = a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]
    return total * 0.25


@dataclass(frozen=True, slots=True)
class YuvaPatch:
    """A picture with alpha at an even canvas position, ready to blend.

    ``ya``/``ua``/``va`` are the planes premultiplied by alpha on a 0..256 scale, ``inv`` and
    ``inv_c`` are ``256 - alpha`` at luma and chroma resolution (all uint16).
    """

    x: int
    y: int
    ya: np.ndarray
    ua: np.ndarray
    va: np.ndarray
    inv: np.ndarray
    inv_c: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        return self.ya.shape[1], self.ya.shape[0]

    @classmethod
    def from_rgba(cls, x: int, y: int, rgba: np.ndarray, alpha: float = 1.0) -> YuvaPatch:
        """From an (h, w, 4) uint8 RGBA array; odd sizes are padded with transparent pixels and
        an odd position is moved one pixel up/left (chroma is shared by 2×2 pixels)."""
        h, w = rgba.shape[:2]
        if h % 2 or w % 2:
            padded = np.zeros((h + h % 2, w + w % 2, 4), dtype=np.uint8)
            padded[:h, :w] = rgba
            rgba = padded
        a = rgba[..., 3].astype(np.float32) * (256.0 * max(0.0, min(alpha, 1.0)) / 255.0)
        yy, uu, vv = rgb_to_yuv(rgba)
        a_c = _pool2(a)
        ua, va = _pool2(uu * a), _pool2(vv * a)

        def u16(plane: np.ndarray) -> np.ndarray:
            clipped: np.ndarray = np.clip(np.rint(plane), 0, 65535)
            return clipped.astype(np.uint16)

        return cls(
            x - x % 2,
            y - y % 2,
            u16(yy * a),
            u16(ua),
            u16(va),
            u16(256.0 - a),
            u16(256.0 - a_c),
        )

    def blend(self, planes: Planes) -> None:
        """Blend onto the Y, U, V planes of a frame in place (clipped to the frame)."""
        yp, up, vp = planes
        height, width = yp.shape
        w = min(self.ya.shape[1], width - self.x)
        h = min(self.ya.shape[0], height - self.y)
        if w <= 0 or h <= 0:
            return
        _blend_premul(yp[self.y : self.y + h, self.x : self.x + w], self.ya[:h, :w], self.inv)
        cx, cy, cw, ch = self.x // 2, self.y // 2, w // 2, h // 2
        _blend_premul(up[cy : cy + ch, cx : cx + cw], self.ua[:ch, :cw], self.inv_c)
        _blend_premul(vp[cy : cy + ch, cx : cx + cw], self.va[:ch, :cw], self.inv_c)


def _blend_premul(dst: np.ndarray, premul: np.ndarray, inv: np.ndarray) -> None:
    h, w = dst.shape
    out = dst.astype(np.uint16)
    out *= inv[:h, :w]
    out += premul
    out += 128
    out >>= 8
    dst[...] = out


class Overlay(Protocol):
    def patch(self, now: float) -> YuvaPatch | None:
        """The patch to draw on a frame composed at wall-clock time ``now`` (epoch seconds)."""
        ...


class StaticOverlay:
    def __init__(self, patch: YuvaPatch | None) -> None:
        self._patch = patch

    def patch(self, now: float) -> YuvaPatch | None:
        return self._patch


@lru_cache(maxsize=32)
def load_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Noto Sans CJK SC at ``size`` pixels (Pillow's default font if the file is absent)."""
    try:
        return ImageFont.truetype(FONT_PATH, size, index=FONT_FACE_SC)
    except OSError:
        log.warning("font %s not found: watermarks use Pillow's default font", FONT_PATH)
        return ImageFont.load_default(size)


def render_text(text: str, size: int, color: str, background: str) -> np.ndarray:
    """``text`` in ``color`` on a ``background`` box with a small margin: (h, w, 4) RGBA."""
    font = load_font(size)
    pad = max(2, size // 8)
    draw = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    _, _, right, bottom = draw.textbbox((pad, pad), text, font=font)
    ascent, descent = font.getmetrics() if isinstance(font, ImageFont.FreeTypeFont) else (0, 0)
    width = max(math.ceil(right), pad + 1) + pad
    height = max(math.ceil(bottom), pad + ascent + descent) + pad
    image = Image.new("RGBA", (width, height), hex_rgb(background) + (255,))
    ImageDraw.Draw(image).text((pad, pad), text, font=font, fill=hex_rgb(color) + (255,))
    return np.asarray(image)


def text_patch(wm: TextWatermark | TimestampWatermark, text: str) -> YuvaPatch:
    rgba = render_text(text, wm.size, wm.color, wm.backgroundColor)
    return YuvaPatch.from_rgba(wm.x, wm.y, rgba, wm.alpha)


class TimestampOverlay:
    """The server's local time in one of the seed's strftime formats."""

    def __init__(self, wm: TimestampWatermark) -> None:
        self._wm = wm
        self._text: str | None = None
        self._patch: YuvaPatch | None = None
        self.renders = 0  # how many times the text was drawn

    def text_at(self, now: float) -> str:
        return time.strftime(self._wm.format, time.localtime(now))

    def patch(self, now: float) -> YuvaPatch | None:
        text = self.text_at(now)
        if text != self._text:
            self._text, self._patch = text, text_patch(self._wm, text)
            self.renders += 1
        return self._patch


def decode_image(data: bytes) -> Image.Image:
    """Image bytes (PNG, JPEG, ...) → a Pillow image with EXIF rotation applied.

    Raises ``ValueError`` when the bytes are not a picture Pillow can read.
    """
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable picture: {exc}") from exc
    return ImageOps.exif_transpose(image) or image


def decode_picture(data: bytes) -> np.ndarray:
    """Image bytes → (h, w, 3) uint8 RGB array (transparency flattened onto black)."""
    image = decode_image(data)
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return np.asarray(flat)
    return np.asarray(image.convert("RGB"))


def fit_picture(image: Image.Image, width: int, height: int, scale: int) -> Image.Image:
    """``scale`` 0: zoom keeping proportions and centre-crop to ``width``×``height``;
    1: stretch to it."""
    if scale == 0:
        return ImageOps.fit(image, (width, height), Image.Resampling.BILINEAR)
    return image.resize((width, height), Image.Resampling.BILINEAR)


def image_patch(wm: ImageWatermark, data: bytes) -> YuvaPatch:
    """An image watermark from the picture's bytes; its own transparency is kept."""
    image = fit_picture(decode_image(data).convert("RGBA"), wm.width, wm.height, wm.scale)
    return YuvaPatch.from_rgba(wm.x, wm.y, np.asarray(image), wm.alpha)


def build_overlays(watermark: Watermark | None, images: Mapping[str, bytes]) -> list[Overlay]:
    """The overlays of ``watermark`` in drawing order: images, then texts, then the timestamp.

    ``images`` maps an image watermark's URL to its fetched bytes; an image that is missing or
    unreadable is left out with a warning (the recording goes on without it).
    """
    if watermark is None:
        return []
    overlays: list[Overlay] = []
    for wm in watermark.imageList or []:
        data = images.get(wm.url)
        if data is None:
            log.warning("image watermark %s was not fetched: left out", wm.url)
            continue
        try:
            overlays.append(StaticOverlay(image_patch(wm, data)))
        except ValueError as exc:
            log.warning("image watermark %s left out: %s", wm.url, exc)
    for text in watermark.textList or []:
        overlays.append(StaticOverlay(text_patch(text, text.content)))
    if watermark.timestamp is not None:
        overlays.append(TimestampOverlay(watermark.timestamp))
    return overlays


def picture_urls(mixconfig: MixConfig) -> list[str]:
    """The URLs of the pictures a mix draws: background image, patch picture, image watermarks."""
    out = mixconfig.output
    urls: list[str] = []
    if out.background is not None and out.background.image is not None:
        urls.append(out.background.image.url)
    if out.patch == 3 and out.patchUrl is not None:
        urls.append(out.patchUrl)
    if out.watermark is not None:
        urls += [wm.url for wm in out.watermark.imageList or []]
    return list(dict.fromkeys(urls))
