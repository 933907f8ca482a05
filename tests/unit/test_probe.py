"""``cloudrec probe``: what it reports of a file made here with PyAV."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from cloudrec.probe import probe


def make_clip(path: Path, seconds: int = 2) -> None:
    with av.open(str(path), "w", format="mpegts") as out:
        video = out.add_stream("libx264", rate=15)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "mono"
        for i in range(15 * seconds):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), i * 8 % 256, np.uint8),
                                               format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 15)
            for packet in video.encode(frame):
                out.mux(packet)
        for i in range(48000 * seconds // 1024):
            samples = np.zeros((1, 1024), np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 48000, i * 1024
            for packet in audio.encode(frame):
                out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                out.mux(packet)


def test_probe_counts_what_the_file_holds(tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"
    make_clip(clip)
    report = probe(str(clip))
    kinds = {s.kind: s for s in report.streams}
    assert kinds["video"].codec == "h264" and kinds["video"].detail == "160x120"
    assert kinds["video"].packets == kinds["video"].frames == 30
    assert kinds["audio"].codec == "aac" and kinds["audio"].detail.startswith("48000 Hz, 1 ch")
    assert kinds["audio"].frames >= 90
    assert report.duration_s is not None and 1.8 < report.duration_s < 2.3


def test_probe_command_prints_streams_and_fails_on_a_missing_file(tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"
    make_clip(clip, seconds=1)
    cmd = [sys.executable, "-m", "cloudrec.cli", "probe"]
    ok = subprocess.run([*cmd, str(clip)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "video h264 160x120 (15 packets, 15 frames decoded)" in ok.stdout
    missing = subprocess.run([*cmd, str(tmp_path / "none.m3u8")], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 1 and missing.stderr.startswith("cannot read ")
