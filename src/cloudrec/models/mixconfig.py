"""The mixed-stream configuration (``mixconfig``) of startrecord and updatemixrecord.

Ranges and defaults are the seed's tables; normalisation happens here, so a validated model
carries the values the mixer uses: ``videowidth``/``videoheight`` rounded to the nearest multiple
of 4 (half up: 802 -> 804), ``videofps`` capped at 60, ``videogop`` rounded up to a multiple of
``videofps``.
"""

from __future__ import annotations

import base64
from typing import Annotated

from pydantic import AliasChoices, Field, ValidationInfo, field_validator, model_validator

from ._fields import (
    Alpha,
    Base64Sei,
    HttpUrl,
    Model,
    RoomId,
    Uid,
    choice_rule,
    color_rule,
    int_rule,
    problem,
    text_rule,
)

CANVAS_MAX = 1920
MAX_FPS = 60
GOP_LIMIT = 1000  # videogop is in (0, 1000)

TIMESTAMP_FORMATS = (
    "%Y/%m/%d",
    "%Y-%m-%d",
    "%H:%M:%S",
    "%Y/%m/%d %H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
)
FONTS = ("NotoSansCJK",)

Coord = Annotated[int, int_rule(0, CANVAS_MAX)]  # [0, 1920]
Extent = Annotated[int, int_rule(0, CANVAS_MAX, lo_open=True)]  # (0, 1920]
WmCoord = Annotated[int, int_rule(0, CANVAS_MAX, hi_open=True)]  # [0, 1920)
WmExtent = Annotated[int, int_rule(0, CANVAS_MAX, lo_open=True, hi_open=True)]  # (0, 1920)
StreamType = Annotated[int, int_rule(choices=(0, 1, 2))]
Scale = Annotated[int, int_rule(choices=(0, 1))]
FontSize = Annotated[int, int_rule(0, 100, lo_open=True)]
Font = Annotated[str, choice_rule(FONTS, default=FONTS[0])]


def _round4(value: int) -> int:
    """Nearest multiple of 4, halves rounded up (802 -> 804); stays within [16, 1920]."""
    return (value + 2) // 4 * 4


VideoSize = Annotated[int, int_rule(16, CANVAS_MAX, then=_round4)]


def _cap_fps(value: int) -> int:
    """Frame rates above 60 become 60 (seed)."""
    return min(value, MAX_FPS)


class MixInput(Model):
    """One input of a custom layout: a uid's stream in some room, placed on the canvas."""

    uid: Uid
    roomid: RoomId
    streamtype: StreamType  # 0 audio+video, 1 video, 2 audio
    zOrder: Annotated[int, int_rule(0, 16, default=0)] = 0
    layoutX: Coord | None = Field(None, validate_default=True)
    layoutY: Coord | None = Field(None, validate_default=True)
    layoutH: Extent | None = Field(None, validate_default=True)
    layoutW: Extent | None = Field(None, validate_default=True)
    crop: Annotated[int, int_rule(choices=(0, 1), default=0)] = 0
    cropX: Coord | None = None
    cropY: Coord | None = None
    cropH: Extent | None = None
    cropW: Extent | None = None
    alpha: Alpha = 1.0

    @field_validator("layoutX", "layoutY", "layoutH", "layoutW")
    @classmethod
    def _layout_for_video(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None and info.data.get("streamtype") in (0, 1):
            raise problem("is required for a video input (streamtype 0 or 1)")
        return value

    @property
    def has_video(self) -> bool:
        return self.streamtype in (0, 1)

    @property
    def has_audio(self) -> bool:
        return self.streamtype in (0, 2)


class _TextStyle(Model):
    x: WmCoord
    y: WmCoord
    font: Font = FONTS[0]
    size: FontSize
    color: Annotated[str, color_rule("FFFFFF")] = "FFFFFF"
    backgroundColor: Annotated[str, color_rule("000000")] = "000000"
    alpha: Alpha = 1.0


class TimestampWatermark(_TextStyle):
    """The server's local time, drawn with one of the seed's strftime formats."""

    format: Annotated[str, choice_rule(TIMESTAMP_FORMATS)]


class TextWatermark(_TextStyle):
    content: Annotated[str, text_rule()]


class ImageWatermark(Model):
    x: WmCoord
    y: WmCoord
    width: WmExtent
    height: WmExtent
    url: HttpUrl
    scale: Scale  # 0 zoom and crop keeping proportions, 1 stretch
    alpha: Alpha = 1.0


class Watermark(Model):
    timestamp: TimestampWatermark | None = None
    textList: list[TextWatermark] | None = None
    imageList: list[ImageWatermark] | None = None

    def placed(self) -> list[tuple[str, TimestampWatermark | TextWatermark | ImageWatermark]]:
        """Every watermark with its path below ``watermark`` ("textList[0]", ...)."""
        items: list[tuple[str, TimestampWatermark | TextWatermark | ImageWatermark]] = []
        if self.timestamp is not None:
            items.append(("timestamp", self.timestamp))
        items += [(f"textList[{i}]", t) for i, t in enumerate(self.textList or [])]
        items += [(f"imageList[{i}]", m) for i, m in enumerate(self.imageList or [])]
        return items


class BackgroundImage(Model):
    url: HttpUrl
    scale: Scale


class Background(Model):
    """Background colour, or an image that covers it when both are given."""

    color: Annotated[str, color_rule("000000")] = "000000"
    image: BackgroundImage | None = None


def _video_required(value: int | None, info: ValidationInfo) -> int | None:
    if value is None and info.data.get("streamtype") in (0, 1):
        raise problem("is required for a video output (streamtype 0 or 1)")
    return value


class MixOutput(Model):
    streamtype: StreamType  # 0 audio+video, 1 video, 2 audio
    videoheight: VideoSize | None = Field(None, validate_default=True)
    videowidth: VideoSize | None = Field(None, validate_default=True)
    videobitrate: Annotated[int, int_rule(0, 10000, lo_open=True)] | None = Field(
        None, validate_default=True
    )  # kbps
    videofps: Annotated[int, int_rule(0, lo_open=True, default=15, then=_cap_fps)] = 15
    videogop: Annotated[
        int, int_rule(0, GOP_LIMIT, lo_open=True, hi_open=True, default=30)
    ] = Field(30, validate_default=True)
    videoencode: Annotated[int, int_rule(choices=(100,), default=100)] = 100  # H.264
    audiobitrate: Annotated[int, int_rule(choices=(128,), default=128)] = 128
    audiochannel: Annotated[int, int_rule(choices=(2,), default=2)] = 2
    audiosample: Annotated[int, int_rule(choices=(48000,), default=48000)] = 48000
    audioformat: Annotated[int, int_rule(choices=(2,), default=2)] = 2  # AAC
    patch: Annotated[int, int_rule(choices=(0, 1, 2, 3), default=0)] = 0
    patchUrl: HttpUrl | None = Field(None, validate_default=True)
    watermark: Watermark | None = None
    background: Background | None = None
    base64seidata: Base64Sei | None = None

    _require_video = field_validator("videoheight", "videowidth", "videobitrate")(_video_required)

    @field_validator("videogop")
    @classmethod
    def _gop_multiple_of_fps(cls, gop: int, info: ValidationInfo) -> int:
        """Round up to a whole multiple of fps; past the (0, 1000) range, keep the largest
        multiple below 1000 (fps 60, gop 990 -> 960)."""
        fps = info.data.get("videofps")
        if not fps:
            return gop
        rounded = -(-gop // fps) * fps
        return rounded if rounded < GOP_LIMIT else (GOP_LIMIT - 1) // fps * fps

    @field_validator("patchUrl")
    @classmethod
    def _patch_url_for_patch3(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("patch") == 3:
            raise problem("is required when patch is 3")
        return value

    @field_validator("watermark")
    @classmethod
    def _watermarks_fit(cls, wm: Watermark | None, info: ValidationInfo) -> Watermark | None:
        if wm is None:
            return wm
        width, height = info.data.get("videowidth"), info.data.get("videoheight")
        for sub, item in wm.placed():
            if width is not None and item.x >= width:
                raise problem(f"must be less than the output width ({width})", f"{sub}.x")
            if height is not None and item.y >= height:
                raise problem(f"must be less than the output height ({height})", f"{sub}.y")
            if isinstance(item, ImageWatermark):
                if width is not None and item.width > width:
                    raise problem(f"must not exceed the output width ({width})", f"{sub}.width")
                if height is not None and item.height > height:
                    raise problem(
                        f"must not exceed the output height ({height})", f"{sub}.height"
                    )
        return wm

    @property
    def has_video(self) -> bool:
        return self.streamtype in (0, 1)

    @property
    def has_audio(self) -> bool:
        return self.streamtype in (0, 2)

    @property
    def seidata(self) -> bytes | None:
        """``base64seidata`` decoded: the SEI user data for every video frame, or None."""
        return base64.b64decode(self.base64seidata) if self.base64seidata is not None else None


class WebPage(Model):
    """A web page recorded in place of streams: its ``url`` (http or https), whether it
    starts and stops the recording itself (``waitforsignal``: ``cloudrecStart()`` /
    ``cloudrecStop()``), how long it may record at most (``timeout_s``), and the origins a
    navigation may go to (``allow_origins``, ``scheme://host[:port]``; any when unset)."""

    url: HttpUrl
    waitforsignal: bool = False
    timeout_s: Annotated[int, int_rule(0, 86400, lo_open=True)] | None = None
    allow_origins: list[HttpUrl] | None = None


class MixConfig(Model):
    """A layout template (``templateid``, one room), a custom ``input`` list, or a web page
    (``webpage``), and the output.

    The seed's table spells the list ``intput`` and its examples ``input``: both are accepted;
    it is serialised as ``input``.
    """

    input_list: list[MixInput] | None = Field(
        None, validation_alias=AliasChoices("input", "intput"), serialization_alias="input"
    )
    templateid: Annotated[int, int_rule(1, 5)] | None = None
    webpage: WebPage | None = None
    output: MixOutput

    @field_validator("templateid")
    @classmethod
    def _template_or_inputs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("input_list"):
            raise problem("cannot be combined with an input list: give one or the other")
        return value

    @field_validator("webpage")
    @classmethod
    def _webpage_alone(cls, value: WebPage | None, info: ValidationInfo) -> WebPage | None:
        if value is not None and (info.data.get("input_list") or info.data.get("templateid")):
            raise problem("cannot be combined with input or templateid: a web page is the "
                          "whole picture")
        return value

    @model_validator(mode="after")
    def _inputs_needed(self) -> MixConfig:
        if self.webpage is not None:
            return self
        # Audio-only mixing without an input list mixes every audio stream of the room (seed).
        if self.templateid is None and not self.input_list and self.output.streamtype != 2:
            raise problem(
                "is required (non-empty) when no templateid is given and the output has video",
                "input",
            )
        return self

    @property
    def inputs(self) -> list[MixInput]:
        return list(self.input_list or [])
