"""Independent readers of recordings: PyAV over the playlist, and ffprobe when installed."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import av


@dataclass
class Probe:
    duration: float
    width: int | None
    height: int | None
    video_frames: int
    audio_frames: int
    audio_rate: int | None
    video_codec: str | None
    audio_codec: str | None


def probe_playlist(playlist: Path) -> Probe:
    """Decode every frame of an HLS recording with PyAV and measure what is in it."""
    first: float | None = None
    last = 0.0
    width = height = rate = None
    vframes = aframes = 0
    vcodec = acodec = None
    with av.open(str(playlist)) as container:
        for frame in container.decode(*container.streams.video, *container.streams.audio):
            t = float(frame.pts * frame.time_base)
            if isinstance(frame, av.VideoFrame):
                vframes += 1
                width, height = frame.width, frame.height
                end = t + 1 / 15
            else:
                aframes += 1
                rate = frame.sample_rate
                end = t + frame.samples / frame.sample_rate
            first = t if first is None else min(first, t)
            last = max(last, end)
        if container.streams.video:
            vcodec = container.streams.video[0].codec_context.name
        if container.streams.audio:
            acodec = container.streams.audio[0].codec_context.name
    return Probe(last - (first or 0.0), width, height, vframes, aframes, rate, vcodec, acodec)


def ffprobe_streams(playlist: Path) -> list[dict[str, object]] | None:
    if shutil.which("ffprobe") is None:
        return None
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(playlist)],
        check=True, capture_output=True, text=True,
    ).stdout
    return list(json.loads(out)["streams"])


def playlist_lines(playlist: Path) -> list[str]:
    return playlist.read_text().splitlines()
