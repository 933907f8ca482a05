"""A source recording of H.264 + AAC (what RTMP and SRT publishers send) is a pure remux.

SourceHlsRecorder is driven directly with EncodedFrames as ingest gives them (Annex B access
units, one ADTS frame per audio frame, timestamps in 90 kHz and in the AAC's sample rate); the
segments are read back by ffprobe and PyAV: h264 + aac, the right duration, the AAC packets
byte for byte the ones sent, and no encoder opened.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import av
import numpy as np
import pytest

from cloudrec.media.codecs import aac, h264
from cloudrec.media.source import SourceHlsRecorder
from cloudrec.mediatypes import EncodedFrame

W, H, FPS, SECONDS = 320, 240, 15, 8
T0 = 1000.0


def h264_stream() -> list[bytes]:
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = W, H, "yuv420p"
    enc.time_base, enc.framerate = Fraction(1, FPS), Fraction(FPS)
    enc.options = {"profile": "baseline", "preset": "ultrafast", "tune": "zerolatency",
                   "x264-params": f"keyint={2 * FPS}:min-keyint={2 * FPS}:scenecut=0"}
    out: list[bytes] = []
    for i in range(SECONDS * FPS):
        frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), i * 3 % 256, np.uint8),
                                           format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += [bytes(p) for p in enc.encode(frame)]
    return out + [bytes(p) for p in enc.encode(None)]


def aac_stream(rate: int, object_type: int = aac.AAC_LC) -> list[bytes]:
    """ADTS frames of a 440 Hz stereo tone, AAC-LC from FFmpeg (the header may say otherwise)."""
    enc = av.CodecContext.create("aac", "w")
    enc.sample_rate, enc.layout, enc.format = rate, "stereo", "fltp"
    enc.time_base, enc.bit_rate = Fraction(1, rate), 128_000
    enc.open()
    n = rate * SECONDS
    tone = (np.sin(2 * np.pi * 440 * np.arange(n) / rate) * 0.3).astype(np.float32)
    out = []
    for i in range(0, n - 1023, 1024):
        frame = av.AudioFrame.from_ndarray(np.stack([tone[i:i + 1024]] * 2), format="fltp",
                                           layout="stereo")
        frame.sample_rate, frame.pts = rate, i
        out += [bytes(p) for p in enc.encode(frame)]
    return [aac.adts_header(len(p), rate, 2, object_type) + p for p in out]


def publish(rate: int, object_type: int = aac.AAC_LC) -> tuple[list[EncodedFrame], list[bytes]]:
    frames = []
    for i, data in enumerate(h264_stream()[:SECONDS * FPS]):
        frames.append(EncodedFrame("video", "h264", data, i * 90000 // FPS, 90000,
                                   T0 + i / FPS + 0.03, h264.is_keyframe(data), 1))
    audio = aac_stream(rate, object_type)
    for j, data in enumerate(audio):
        frames.append(EncodedFrame("audio", "aac", data, j * 1024, rate,
                                   T0 + j * 1024 / rate + 0.02, True, 1))
    frames.sort(key=lambda f: f.arrival)
    return frames, audio


def record(tmp_path: Path, frames: list[EncodedFrame]) -> SourceHlsRecorder:
    clock = [T0]
    rec = SourceHlsRecorder(tmp_path, "10034_room_rec_u1", audio=True, video=True,
                            clock=lambda: clock[0])
    for frame in frames:
        clock[0] = frame.arrival
        rec.push(frame)
    rec.close()
    return rec


def ffprobe_streams(path: Path) -> list[dict]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                          "stream=codec_name,sample_rate,profile", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["streams"]


@pytest.mark.skipif(not shutil.which("ffprobe"), reason="needs ffprobe")
@pytest.mark.parametrize("rate", [44100, 48000])
def test_aac_lc_is_remuxed_as_sent(tmp_path: Path, rate: int) -> None:
    frames, sent = publish(rate)
    rec = record(tmp_path, frames)
    assert rec.stats.encoders == [] and not rec.stats.video_transcoded
    assert [s.duration for s in rec.segments][:1] == [6.0] and len(rec.segments) == 2
    for seg in rec.segments:
        streams = {s["codec_name"]: s for s in ffprobe_streams(seg.path)}
        assert set(streams) == {"h264", "aac"}
        assert int(streams["aac"]["sample_rate"]) == rate and streams["aac"]["profile"] == "LC"
    written, samples, apts = [], 0, []
    with av.open(str(rec.playlist_path)) as c:
        for packet in c.demux(audio=0):
            if packet.size:
                written.append(bytes(packet))
                apts.append(packet.pts)
                samples += sum(f.samples for f in packet.decode())
    # the ADTS frames as they were sent (none re-encoded), in order, timed by their samples;
    # only the one sent before the first IDR is left out
    first = sent.index(written[0])
    assert first <= 1 and written == sent[first:first + len(written)]
    assert len(written) >= len(sent) - 2
    assert all(b > a for a, b in pairwise(apts))
    assert abs(samples / rate - SECONDS) < 0.1
    assert abs(rec.duration - SECONDS) < 0.15


@pytest.mark.skipif(not shutil.which("ffprobe"), reason="needs ffprobe")
def test_aac_main_is_encoded_to_lc_48k(tmp_path: Path) -> None:
    frames, _ = publish(44100, object_type=1)  # headers that say AAC Main
    rec = record(tmp_path, frames)
    assert rec.stats.encoders == ["aac"]
    streams = {s["codec_name"]: s for s in ffprobe_streams(rec.segments[0].path)}
    assert set(streams) == {"h264", "aac"} and int(streams["aac"]["sample_rate"]) == 48000
    with av.open(str(rec.playlist_path)) as c:
        samples = sum(f.samples for f in c.decode(audio=0))
    assert abs(samples / 48000 - SECONDS) < 0.15
