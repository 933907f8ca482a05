"""Dual-mono stereo (both channels the same sound) is encoded as mono AAC, and sounds the same."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from cloudrec.media.audio import OpusToAac
from cloudrec.media.codecs import aac

RATE = 48_000
TB = Fraction(1, RATE)


def voice(seconds: float, f0: float = 220.0, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(RATE * seconds)) / RATE
    pitch = 1 + 0.3 * np.sin(2 * np.pi * 0.5 * t)
    level = 0.55 + 0.45 * np.sin(2 * np.pi * 3 * t)
    return 0.25 * (np.sin(2 * np.pi * f0 * t * pitch) * level + 0.04 * rng.standard_normal(t.size))


def opus_stereo(left: np.ndarray, right: np.ndarray) -> list[bytes]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = RATE, "stereo", "s16"
    enc.bit_rate, enc.time_base = 128_000, TB
    enc.open()
    pcm = (np.stack([left, right]).T.reshape(1, -1) * 32767).astype(np.int16)
    out: list[bytes] = []
    for start in range(0, left.size - 960 + 1, 960):
        chunk = np.ascontiguousarray(pcm[:, start * 2:(start + 960) * 2])
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = RATE, start, TB
        out += [bytes(p) for p in enc.encode(frame)]
    return out


def encode(packets: list[bytes], dual_mono: bool = True) -> tuple[OpusToAac, list[bytes]]:
    chain = OpusToAac(2, dual_mono=dual_mono)
    out: list[bytes] = []
    for data in packets:
        chain.decode(data)
        out += [d for d, _ in chain.packets()]
    out += [d for d, _ in chain.flush()]
    return chain, out


def decode(adts: list[bytes]) -> np.ndarray:
    """The AAC decoded, as (channels, n), the encoder's 1024 priming samples skipped."""
    dec = av.CodecContext.create("aac", "r")
    frames = [f.to_ndarray() for data in adts for f in dec.decode(av.Packet(data))]
    return np.concatenate(frames, axis=1)[:, 1024:]


def snr(out: np.ndarray, ref: np.ndarray) -> float:
    n = min(out.size, ref.size) - 4800  # the last frames are padding
    out, ref = out[:n], ref[:n]
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((out - ref) ** 2)))


def test_dual_mono_is_encoded_as_mono_and_sounds_the_same() -> None:
    signal = voice(4.0)
    packets = opus_stereo(signal, signal)
    mono_chain, mono = encode(packets)
    stereo_chain, stereo = encode(packets, dual_mono=False)
    assert mono_chain.encoded_channels == 1 and stereo_chain.encoded_channels == 2
    assert {aac.parse_adts(p).channels for p in mono} == {1}
    assert sum(map(len, mono)) < sum(map(len, stereo))
    assert {aac.parse_adts(p).channels for p in stereo} == {2}
    # both decodes lag the source by the codecs' delays: found once, on the stereo one
    ref = signal
    mono_out, stereo_out = decode(mono), decode(stereo)
    best_lag = max(range(0, 800, 8), key=lambda k: float(np.dot(stereo_out[0, k:k + 48000],
                                                                 ref[:48000])))
    s_mono = snr(mono_out[0, best_lag:], ref)
    s_stereo = min(snr(stereo_out[c, best_lag:], ref) for c in (0, 1))
    assert s_mono >= s_stereo - 1.0 and s_stereo > 10.0, (s_mono, s_stereo)
    assert abs(mono_out.shape[1] - stereo_out.shape[1]) <= 1024


def test_real_stereo_stays_stereo() -> None:
    packets = opus_stereo(voice(2.0, 220, 1), voice(2.0, 330, 2))
    chain, out = encode(packets)
    assert chain.encoded_channels == 2 and {aac.parse_adts(p).channels for p in out} == {2}


def test_silence_then_dual_mono() -> None:
    signal = np.concatenate([np.zeros(RATE // 2), voice(1.5)])
    chain, out = encode(opus_stereo(signal, signal))
    assert chain.encoded_channels == 1 and len(out) >= 2 * RATE // 1024 - 2
