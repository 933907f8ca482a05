"""packet_frame on video whose container keeps the headers apart (MP4: H.265's hvcC record with
length-prefixed packets, MPEG-4 Part 2's VOL in the extradata): its frames carry them in front of
key frames, so the normalizer's decoder reads every picture and H.264 comes out. An MPEG-TS
whose H.264 turns into H.265 on the same PID (FFmpeg's demuxer still says H.264) raises, and so
does one whose AAC turns into MP3 (FFmpeg still says AAC).

Inputs are made with PyAV's encoders and muxers in memory; the H.264 out is decoded again."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest

from cloudrec.ingest.base import Timeline
from cloudrec.ingest.demux import packet_frame
from cloudrec.media.normalize import PublicationNormalizer
from cloudrec.mediatypes import EncodedFrame

W, H, FPS, FRAMES = 160, 120, 15, 30


def mp4_of(encoder: str, fmt: str = "mp4") -> bytes:
    """An MP4 (or ``fmt``) holding ``FRAMES`` pictures encoded by ``encoder``, a key frame every
    second."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(encoder, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.gop_size = FPS
        stream.codec_context.time_base = Fraction(1, FPS)
        if encoder == "libx265":
            stream.codec_context.options = {"preset": "ultrafast",
                                            "x265-params": f"keyint={FPS}:log-level=error"}
        for i in range(FRAMES):
            img = np.full((H, W, 3), 40, np.uint8)
            img[40:80, i * 4:i * 4 + 32] = (255, 200, 0)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


@pytest.mark.parametrize(("encoder", "codec"), [("libx265", "h265"), ("mpeg4", "mpeg4")])
def test_headers_kept_apart_by_the_container_reach_the_decoder(encoder: str, codec: str) -> None:
    timeline, params, frames = Timeline(90000), dict[int, tuple[bytes, int]](), []
    with av.open(io.BytesIO(mp4_of(encoder)), format="mp4") as container:
        assert container.streams.video[0].codec_context.extradata  # kept apart
        for packet in container.demux(video=0):
            frame = packet_frame(packet, timeline, params, 1)
            if frame is not None:
                frames.append(frame)
    assert {f.codec for f in frames} == {codec} and len(frames) == FRAMES
    keys = [f for f in frames if f.keyframe]
    assert len(keys) == FRAMES // FPS
    if codec == "h265":  # Annex B, a VPS first on key frames
        assert all(f.data.startswith(b"\x00\x00\x00\x01\x40\x01") for f in keys)
        assert all(f.data.startswith(b"\x00\x00\x00\x01") for f in frames)
    norm = PublicationNormalizer()
    out = [o for f in frames for o in norm.push(f)] + norm.flush()
    assert {o.codec for o in out} == {"h264"}
    decoder = av.CodecContext.create("h264", "r")
    pictures = [p for o in out for p in decoder.decode(av.Packet(o.data))] + decoder.decode(None)
    assert len(pictures) == FRAMES
    assert {(p.width, p.height) for p in pictures} == {(W, H)}


def frames_before_the_switch(stream: bytes, kind: str, named: str) -> list[EncodedFrame]:
    """packet_frame over the first ``kind`` stream of the MPEG-TS ``stream``, which FFmpeg keeps
    calling ``named`` throughout, until it raises that the codec changed; the frames before."""
    timeline, params, frames = Timeline(90000), dict[int, tuple[bytes, int]](), []
    with av.open(io.BytesIO(stream), format="mpegts") as container:
        with pytest.raises(ValueError, match="changed its codec midway"):
            for packet in container.demux(**{kind: 0}):
                assert packet.stream.codec_context.name == named  # as FFmpeg still says
                frame = packet_frame(packet, timeline, params, 1)
                if frame is not None:
                    frames.append(frame)
    return frames


def test_h264_turning_into_h265_on_the_same_pid_raises() -> None:
    stream = mp4_of("libx264", "mpegts") + mp4_of("libx265", "mpegts")
    frames = frames_before_the_switch(stream, "video", "h264")
    assert FRAMES - 1 <= len(frames) <= FRAMES + 1  # the H.264 part


def audio_ts(encoder: str) -> bytes:
    """An audio-only MPEG-TS: 50 frames of a 440 Hz tone, mono 48 kHz, by ``encoder``."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out:
        stream = out.add_stream(encoder, rate=48000)
        stream.codec_context.layout = "mono"
        for i in range(50):
            t = (np.arange(1152) + i * 1152) / 48000
            frame = av.AudioFrame.from_ndarray(
                (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :], format="fltp",
                layout="mono")
            frame.sample_rate, frame.pts = 48000, i * 1152
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def test_aac_turning_into_mp3_on_the_same_pid_raises() -> None:
    frames = frames_before_the_switch(audio_ts("aac") + audio_ts("libmp3lame"), "audio", "aac")
    assert len(frames) >= 50 * 1152 // 1024 - 1  # the AAC part, every frame an ADTS one
    assert all(f.codec == "aac" and f.data[:2] in (b"\xff\xf1", b"\xff\xf9") for f in frames)
