"""AacEncoder: silence is written as the encoder's own silent packet instead of being encoded,
and the stream is the one FFmpeg's encoder gives, timestamps and sound alike.

The reference is FFmpeg's ``aac`` encoder with the same settings, fed the same frames; both
streams are decoded by FFmpeg's AAC decoder and compared sample by sample.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from cloudrec.media.audio import AAC_FRAME, AacEncoder, OpusToAac, open_aac, silent_packet

RATE = 48_000


def programme(channels: int) -> np.ndarray:
    """2 s of a tone, 3 s of silence (its second half the 1-LSB noise a muted microphone
    decodes to), a sharp onset into 2 s of a chord, 1 s of silence: (channels, n) float32."""
    rng = np.random.default_rng(5)
    t = np.arange(2 * RATE) / RATE
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    chord = 0.2 * (np.sin(2 * np.pi * 523 * t) + np.sin(2 * np.pi * 659 * t))
    quiet = np.concatenate([np.zeros(RATE * 3 // 2),
                            rng.uniform(-1 / 32768, 1 / 32768, RATE * 3 // 2)])
    mono = np.concatenate([tone, quiet, chord, np.zeros(RATE)]).astype(np.float32)
    return np.tile(mono, (channels, 1))


def frames(signal: np.ndarray) -> list[av.AudioFrame]:
    layout = "stereo" if signal.shape[0] == 2 else "mono"
    out = []
    for start in range(0, signal.shape[1] - AAC_FRAME + 1, AAC_FRAME):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(signal[:, start:start + AAC_FRAME]), format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = RATE, start, Fraction(1, RATE)
        out.append(frame)
    return out


def decode(packets: list[bytes], extradata: bytes | None) -> np.ndarray:
    dec = av.CodecContext.create("aac", "r")
    dec.extradata = extradata
    return np.concatenate([f.to_ndarray()[0] for data in packets
                           for f in dec.decode(av.Packet(data))])


@pytest.mark.parametrize("channels,bit_rate", [(1, 64_000), (2, 128_000)])
def test_silence_is_not_encoded_and_the_stream_is_the_encoders(channels: int,
                                                                bit_rate: int) -> None:
    signal = programme(channels)
    ref = open_aac(channels, bit_rate)
    ref_packets = [(bytes(p), p.pts, p.duration) for f in frames(signal) for p in ref.encode(f)]
    ref_packets += [(bytes(p), p.pts, p.duration) for p in ref.encode(None)]
    enc = AacEncoder(channels, bit_rate)
    packets = [p for f in frames(signal) for p in enc.encode(f)] + enc.encode(None)

    # the same packets at the same times: one per frame, the encoder's priming first
    assert [(pts, d) for _, pts, d in packets] == [(pts, d) for _, pts, d in ref_packets]
    assert [pts for _, pts, _ in packets] == list(range(-AAC_FRAME, signal.shape[1], AAC_FRAME))
    # most of the 4 s of silence was not encoded (a few frames settle, and the onset's
    # lookahead); the end of the programme is silent, so the flush is stored packets too
    silent_frames = 4 * RATE // AAC_FRAME
    assert enc.skipped >= silent_frames - 12, (enc.skipped, silent_frames)
    assert sum(data == silent_packet(channels, bit_rate) for data, _, _ in packets) > enc.skipped

    out = decode([d for d, _, _ in packets], enc.context.extradata)
    expected = decode([d for d, _, _ in ref_packets], ref.extradata)
    assert out.shape == expected.shape
    original = signal[0, : out.size - AAC_FRAME]
    tone, chord = slice(RATE // 2, 2 * RATE - 4096), slice(5 * RATE + 4096, 7 * RATE - 4096)
    for part in (tone, chord):  # sound decodes as the encoder's own
        ours, theirs = out[AAC_FRAME:][part], expected[AAC_FRAME:][part]
        noise = np.sum((ours - theirs) ** 2)
        assert noise == 0 or 10 * np.log10(np.sum(theirs ** 2) / noise) > 40
        snr = 10 * np.log10(np.sum(original[part] ** 2) / np.sum((ours - original[part]) ** 2))
        assert snr > 15, snr
    # silence decodes as silence, and the onset after it is whole
    assert np.abs(out[AAC_FRAME:][2 * RATE + 4096: 5 * RATE - 2048]).max() < 1 / 32768
    onset = slice(5 * RATE, 5 * RATE + 2048)
    assert np.abs(out[AAC_FRAME:][onset] - expected[AAC_FRAME:][onset]).max() < 0.01


def test_a_muted_source_costs_no_aac_encodes() -> None:
    """Opus → AAC of a muted microphone: after the first frames, every AAC frame is stored."""
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = RATE, "mono", "s16"
    enc.bit_rate, enc.time_base = 32_000, Fraction(1, RATE)
    enc.open()
    opus = []
    for i in range(250):  # 5 s of zeros, as a muted track sends
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate, frame.pts = RATE, i * 960
        opus += [bytes(p) for p in enc.encode(frame)]
    chain = OpusToAac(channels=1)
    for data in opus:
        chain.decode(data)
    packets = chain.flush()
    assert len(packets) >= 5 * RATE // AAC_FRAME
    assert chain.skipped >= len(packets) - 8
