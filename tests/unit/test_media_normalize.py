"""PublicationNormalizer: every codec an ingest may carry in, H.264 and Opus/AAC out.

Inputs are elementary streams made with PyAV's encoders (libx265, mpeg4, libvpx-vp9,
libmp3lame, pcm_alaw, aac); the output is decoded again with PyAV and checked: picture size,
frame count, audio duration and the tone's frequency (the FFT peak).
"""

from __future__ import annotations

import functools
from fractions import Fraction
from itertools import pairwise

import av
import numpy as np
import pytest

from cloudrec.media.codecs import UnsupportedCodec, aac, h264
from cloudrec.media.normalize import PublicationNormalizer
from cloudrec.mediatypes import EncodedFrame

W, H, FPS, SECONDS = 320, 240, 15, 2
TONE = 1000.0


def _picture(i: int) -> av.VideoFrame:
    img = np.full((H, W, 3), 40, np.uint8)
    img[60:120, (i * 7) % (W - 32):(i * 7) % (W - 32) + 32] = (255, 200, 0)
    return av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")


@functools.cache
def video_stream(encoder: str) -> tuple[tuple[bytes, int, bool], ...]:
    """(packet, pts in 90 kHz, key) in decode order, a key frame every second."""
    enc = av.CodecContext.create(encoder, "w")
    enc.width, enc.height, enc.pix_fmt = W, H, "yuv420p"
    enc.time_base, enc.framerate, enc.gop_size = Fraction(1, FPS), Fraction(FPS), FPS
    enc.bit_rate = 400_000
    if encoder == "libx265":
        enc.options = {"preset": "ultrafast", "x265-params": f"keyint={FPS}:log-level=error"}
    elif encoder == "libvpx-vp9":
        enc.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    out = []
    frames = [_picture(i) for i in range(SECONDS * FPS)]
    for i, frame in enumerate([*frames, None]):
        if frame is not None:
            frame.pts = i
        for p in enc.encode(frame):
            out.append((bytes(p), int(p.pts) * 90000 // FPS, bool(p.is_keyframe)))
    return tuple(out)


def _tone(rate: int, channels: int, seconds: float) -> np.ndarray:
    n = round(rate * seconds)
    wave = (np.sin(2 * np.pi * TONE * np.arange(n) / rate) * 12000).astype(np.int16)
    return np.repeat(wave, channels).reshape(1, -1)


@functools.cache
def audio_stream(encoder: str, rate: int, channels: int) -> tuple[bytes, ...]:
    """Packets of a 1 kHz tone; AAC gets its ADTS header, as ingest gives it."""
    enc = av.CodecContext.create(encoder, "w")
    layout = "stereo" if channels == 2 else "mono"
    enc.sample_rate, enc.layout, enc.time_base = rate, layout, Fraction(1, rate)
    enc.format = {"aac": "fltp", "libmp3lame": "s16p"}.get(encoder, "s16")
    if encoder != "pcm_alaw":
        enc.bit_rate = 96_000
    enc.open()
    samples = _tone(rate, channels, SECONDS)
    frame_size = enc.frame_size or 160
    out = []
    step = frame_size * channels
    for i in range(0, samples.shape[1] - step + 1, step):
        chunk = av.AudioFrame.from_ndarray(samples[:, i:i + step], format="s16", layout=layout)
        chunk.sample_rate, chunk.pts = rate, i // channels
        chunk = av.AudioResampler(format=enc.format.name, layout=layout, rate=rate).resample(
            chunk)[0]
        chunk.pts = i // channels
        out += [bytes(p) for p in enc.encode(chunk)]
    out += [bytes(p) for p in enc.encode(None)]
    if encoder == "aac":
        out = [aac.adts_header(len(p), rate, channels) + p for p in out]
    return tuple(out)


def normalize(frames: list[EncodedFrame], **kwargs) -> tuple[list[EncodedFrame],
                                                               PublicationNormalizer]:
    norm = PublicationNormalizer(**kwargs)
    out = []
    for frame in frames:
        out += norm.push(frame)
    return out + norm.flush(), norm


def video_frames(codec: str, encoder: str) -> list[EncodedFrame]:
    return [EncodedFrame("video", codec, data, pts, 90000, 100.0 + pts / 90000, key, 7)
            for data, pts, key in video_stream(encoder)]


def audio_frames(codec: str, packets: tuple[bytes, ...], rate: int,
                 samples: int) -> list[EncodedFrame]:
    return [EncodedFrame("audio", codec, data, i * samples, rate, 100.0 + i * samples / rate,
                         True, 7) for i, data in enumerate(packets)]


def decode_video(frames: list[EncodedFrame]) -> list[av.VideoFrame]:
    dec = av.CodecContext.create("h264", "r")
    out = []
    for f in frames:
        out += dec.decode(av.Packet(f.data))
    return out + dec.decode(None)


def decode_audio(frames: list[EncodedFrame]) -> np.ndarray:
    dec = av.CodecContext.create("aac", "r")
    planes = []
    for f in frames:
        for decoded in dec.decode(av.Packet(f.data)):
            assert decoded.sample_rate == 48000
            planes.append(decoded.to_ndarray()[0])
    return np.concatenate(planes)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    window = samples[rate // 4:]  # past the encoder's start
    spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window))))
    return float(np.argmax(spectrum) * rate / len(window))


@pytest.mark.parametrize(("codec", "encoder"), [("h265", "libx265"), ("mpeg4", "mpeg4"),
                                                ("vp9", "libvpx-vp9"), ("vp8", "libvpx")])
def test_video_becomes_h264(codec: str, encoder: str) -> None:
    frames = video_frames(codec, encoder)
    out, norm = normalize(frames)
    assert norm.encoders == ["libx264"] and {f.codec for f in out} == {"h264"}
    pts = [f.timestamp for f in out]
    assert all(isinstance(t, int) for t in pts) and pts == sorted(set(pts))
    assert pts[0] == 0 and pts[-1] == (SECONDS * FPS - 1) * 90000 // FPS
    # an IDR where the source has a key frame, and nowhere else
    source_keys = sorted(t for _, t, key in video_stream(encoder) if key)
    assert [f.timestamp for f in out if f.keyframe] == source_keys
    assert all(h264.is_keyframe(f.data) == f.keyframe for f in out)
    pictures = decode_video(out)
    assert len(pictures) == SECONDS * FPS
    assert {(p.width, p.height) for p in pictures} == {(W, H)}


def test_h264_opus_and_aac_pass_untouched() -> None:
    frames = [EncodedFrame("video", "h264", b"\x00\x00\x00\x01\x65\x88", 0, 90000, 1.0, True, 1),
              EncodedFrame("audio", "opus", b"\xfc\xff\xfe", 0, 48000, 1.0, True, 1),
              EncodedFrame("audio", "aac", aac.adts_header(3, 44100) + b"\x01\x02\x03", 0, 44100,
                           1.0, True, 1)]
    norm = PublicationNormalizer()
    assert [norm.push(f) for f in frames[:2]] == [[frames[0]], [frames[1]]]
    other = PublicationNormalizer()
    assert other.push(frames[2]) == [frames[2]] and other.encoders == []
    assert norm.flush() == [] and norm.encoders == []


@pytest.mark.parametrize(("codec", "encoder", "rate", "channels"), [
    ("mp3", "libmp3lame", 44100, 2), ("pcma", "pcm_alaw", 8000, 1), ("mp2", "mp2", 48000, 2)])
def test_audio_becomes_aac_48k(codec: str, encoder: str, rate: int, channels: int) -> None:
    packets = audio_stream(encoder, rate, channels)
    per_packet = {"libmp3lame": 1152, "mp2": 1152}.get(encoder, 160)
    if encoder == "pcm_alaw":  # what a camera sends: 20 ms of G.711 per packet
        blob = b"".join(packets)
        packets, per_packet = tuple(blob[i:i + 160] for i in range(0, len(blob), 160)), 160
    out, norm = normalize(audio_frames(codec, packets, rate, per_packet))
    assert norm.encoders == ["aac"] and {f.codec for f in out} == {"aac"}
    config = aac.parse_adts(out[0].data)
    assert config is not None and config.sample_rate == 48000 and config.is_lc
    assert config.channels == channels  # mono G.711 stays mono
    ts = [f.timestamp for f in out]
    assert ts[0] >= 0 and all(b - a == 1024 for a, b in pairwise(ts))
    assert all(f.clock_rate == 48000 for f in out)
    samples = decode_audio(out)
    assert abs(len(samples) / 48000 - SECONDS) < 0.1
    assert abs(peak_hz(samples, 48000) - TONE) < 5


def test_lost_audio_keeps_time_and_a_gap_reanchors() -> None:
    packets = audio_stream("libmp3lame", 44100, 2)
    frames = audio_frames("mp3", packets, 44100, 1152)
    frames = frames[:10] + frames[12:]  # two packets lost: 52 ms of silence in their place
    late = [EncodedFrame("audio", "mp3", packets[0], 10 * 44100, 44100, 200.0, True, 7)]
    out, _ = normalize(frames + late)
    ts = [f.timestamp for f in out]
    assert all(b > a for a, b in pairwise(ts))
    steps = {b - a for a, b in pairwise(ts)}
    assert 1024 in steps and max(steps) > 48000 * 7  # the jump to 10 s, not filled
    assert ts[-1] >= 10 * 48000
    assert abs(sum(1024 for t in ts if t < 48000 * 3) / 48000 - SECONDS) < 0.1


def test_unsupported_and_changed_codecs_are_named() -> None:
    with pytest.raises(UnsupportedCodec, match="codec speex not supported"):
        PublicationNormalizer().push(EncodedFrame("audio", "speex", b"\x00", 0, 16000, 1.0,
                                                  True, 1))
    with pytest.raises(UnsupportedCodec, match="codec screen3 not supported"):
        PublicationNormalizer().push(EncodedFrame("video", "screen3", b"\x00", 0, 90000, 1.0,
                                                  True, 1))
    norm = PublicationNormalizer()
    norm.push(EncodedFrame("video", "h264", b"\x00\x00\x01\x65", 0, 90000, 1.0, True, 1))
    with pytest.raises(ValueError, match="video codec changed from h264 to h265"):
        norm.push(EncodedFrame("video", "h265", b"\x00\x00\x01\x26", 3000, 90000, 1.0, True, 1))
