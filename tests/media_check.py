"""Independent readers of recordings: PyAV over the playlist, and ffprobe when installed."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
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


# -- lip sync: a picture that flashes white and a beep that starts at the same instant ---------


def flash_onsets(path: Path) -> list[float]:
    """Times (s, container clock) where the picture's mean luma jumps from dark to bright."""
    onsets: list[float] = []
    with av.open(str(path)) as container:
        was_bright = True  # an onset needs a dark frame before it
        for frame in container.decode(video=0):
            luma = float(frame.to_ndarray(format="gray").mean())
            bright = luma > 128
            if bright and not was_bright and frame.pts is not None:
                onsets.append(float(frame.pts * frame.time_base))
            was_bright = bright
    return onsets


def beep_onsets(path: Path, window_s: float = 0.002) -> list[float]:
    """Times (s, container clock) where the audio's RMS over ``window_s`` jumps out of silence."""
    import numpy as np

    onsets: list[float] = []
    with av.open(str(path)) as container:
        loud = True
        for frame in container.decode(audio=0):
            if frame.pts is None:
                continue
            t0 = float(frame.pts * frame.time_base)
            samples = frame.to_ndarray().astype(np.float64)
            if frame.format.is_packed:
                samples = samples.reshape(-1, frame.layout.nb_channels).T
            mono = samples.mean(axis=0)
            if frame.format.name.startswith("s16"):
                mono /= 32768.0
            step = max(1, int(frame.sample_rate * window_s))
            n = len(mono) // step
            windows = mono[: n * step].reshape(n, step)
            for i, rms in enumerate(np.sqrt(np.mean(windows**2, axis=1)).tolist()):
                now_loud = rms > 0.05
                if now_loud and not loud:
                    onsets.append(t0 + i * step / frame.sample_rate)
                loud = now_loud if now_loud or rms < 0.01 else loud
    return onsets


def lip_sync_pairs(path: Path) -> list[tuple[float, float]]:
    """(flash time, audio minus picture) in seconds for every flash that has a beep within half
    a second of it: positive is audio late. ``path`` is a playlist or a media file."""
    import bisect

    beeps = sorted(beep_onsets(path))
    pairs: list[tuple[float, float]] = []
    for flash in flash_onsets(path):
        lo, hi = bisect.bisect_left(beeps, flash - 0.5), bisect.bisect_right(beeps, flash + 0.5)
        near = [b - flash for b in beeps[lo:hi] if abs(b - flash) < 0.5]
        if near:
            pairs.append((flash, min(near, key=abs)))
    return pairs


def lip_sync_offsets(path: Path) -> list[float]:
    """Audio minus picture (s) for every flash that has a beep within half a second of it:
    positive is audio late. ``path`` is a playlist or a media file."""
    return [offset for _, offset in lip_sync_pairs(path)]


def playlist_runs(playlist: Path) -> list[Path]:
    """The stretches of a recording between its ``#EXT-X-DISCONTINUITY`` tags, each as a
    finished playlist of its own beside ``playlist`` (``{stem}.run{i}.m3u8``), so a reader
    measures each run on its own clock."""
    header: list[str] = []
    runs: list[list[str]] = [[]]
    for line in playlist_lines(playlist):
        if line == "#EXT-X-DISCONTINUITY":
            if runs[-1]:
                runs.append([])
        elif line == "#EXT-X-ENDLIST":
            continue
        elif line.startswith(("#EXTINF", "#EXT-X-PROGRAM-DATE-TIME")) or not line.startswith("#"):
            runs[-1].append(line)
        elif not any(runs):  # the tags before the first segment
            header.append(line.replace("PLAYLIST-TYPE:EVENT", "PLAYLIST-TYPE:VOD"))
    paths = []
    for i, run in enumerate(r for r in runs if r):
        path = playlist.with_name(f"{playlist.stem}.run{i}.m3u8")
        path.write_text("\n".join([*header, *run, "#EXT-X-ENDLIST"]) + "\n")
        paths.append(path)
    return paths


def playlist_dates(playlist: Path) -> list[float | None]:
    """Each listed segment's ``#EXT-X-PROGRAM-DATE-TIME`` (s since the epoch), in order."""
    from cloudrec.media.hls import parse_playlist

    return [s.date for s in parse_playlist(playlist.read_text(), playlist.parent)]


def flash_wall_times(playlist: Path) -> list[float]:
    """The wall-clock time of every flash of a recording: its first segment's
    ``#EXT-X-PROGRAM-DATE-TIME`` plus the flash's PTS past that segment's first packet (for a
    recording of one run, without a discontinuity)."""
    wall = _wall_clock_of(playlist)
    return [wall(t) for t in flash_onsets(playlist)]


def lip_sync_on_the_wall(playlist: Path) -> list[tuple[float, float]]:
    """(wall-clock time of the flash, audio minus picture) of a recording of one run, as
    :func:`lip_sync_pairs` and :func:`flash_wall_times` give them."""
    wall = _wall_clock_of(playlist)
    return [(wall(t), offset) for t, offset in lip_sync_pairs(playlist)]


def _wall_clock_of(playlist: Path) -> Callable[[float], float]:
    """PTS (s) → wall-clock time, from the first segment's ``#EXT-X-PROGRAM-DATE-TIME``."""
    from cloudrec.media.hls import parse_playlist

    first = parse_playlist(playlist.read_text(), playlist.parent)[0]
    assert first.date is not None, "no #EXT-X-PROGRAM-DATE-TIME"
    date = first.date
    with av.open(str(first.path)) as container:
        start = min(float(p.pts * p.time_base) for p in container.demux() if p.pts is not None)
    return lambda pts: date + pts - start
