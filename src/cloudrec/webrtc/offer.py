"""What a WHIP offer asks for, and the codecs a recvonly answer takes.

Video: H.264 (constrained baseline first), then VP8, with RTX; audio: Opus. An offer must send
audio, video or both, at most one track of each.
"""

from __future__ import annotations

from typing import Any

from aiortc import RTCRtpSender
from aiortc import sdp as aiortc_sdp

from cloudrec.errors import InvalidParameter

__all__ = ["codec_preferences", "offer_kinds"]


def codec_preferences(kind: str) -> list[Any]:
    """H.264 (constrained baseline first), then VP8, for video; Opus for audio; RTX kept."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    if kind == "audio":
        return [c for c in caps if c.mimeType.lower() == "audio/opus"]

    def rank(c: Any) -> int:
        mime = c.mimeType.lower()
        if mime == "video/h264":
            return 0 if str(c.parameters.get("profile-level-id", "")).lower() == "42e01f" else 1
        return {"video/vp8": 2, "video/rtx": 3}.get(mime, 9)

    return sorted((c for c in caps if rank(c) < 9), key=rank)


def offer_kinds(offer_sdp: str) -> tuple[aiortc_sdp.SessionDescription, list[str]]:
    """The parsed offer and the kinds it sends, in m-line order; InvalidParameter when it is
    not a usable offer."""
    try:
        description = aiortc_sdp.SessionDescription.parse(offer_sdp)
    except Exception as exc:
        raise InvalidParameter("sdp", f"malformed SDP offer ({exc or type(exc).__name__})") from exc
    if not offer_sdp.lstrip().startswith("v=0"):
        raise InvalidParameter("sdp", "malformed SDP offer (no v=0 line)")
    kinds: list[str] = []
    for media in description.media:
        if media.kind not in ("audio", "video") or media.direction in ("recvonly", "inactive"):
            continue
        if media.kind in kinds:
            raise InvalidParameter("sdp", f"more than one {media.kind} track offered")
        kinds.append(media.kind)
    if not kinds:
        raise InvalidParameter("sdp", "the offer sends neither audio nor video")
    return description, kinds
