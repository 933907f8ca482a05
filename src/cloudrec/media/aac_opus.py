"""AAC (ADTS frames) → Opus 48 kHz stereo, 20 ms packets, timed by sample counts.

What a WebRTC viewer of an RTMP or SRT publisher needs: browsers take no AAC over RTP. One
:class:`AacToOpus` serves every viewer of a publication (the viewers share it; see
:mod:`cloudrec.webrtc.viewer`). PyAV's ``aac`` decoder reads the ADTS header of each frame
(any rate, mono or stereo), ``AudioResampler`` makes 960-sample frames of s16 stereo at
48 kHz, and ``libopus`` encodes them. The first packet's timestamp is the first AAC frame's,
moved to 48 kHz; later ones follow by sample counts, so a clock in the source never drifts
the output.
"""

from __future__ import annotations

from fractions import Fraction

import av

__all__ = ["OPUS_FRAME", "OPUS_RATE", "AacToOpus"]

OPUS_RATE = 48_000
OPUS_FRAME = 960  # 20 ms at 48 kHz
OPUS_BIT_RATE = 64_000


class AacToOpus:
    """One AAC stream in, Opus packets out: :meth:`push` one ADTS frame, get ``(packet,
    timestamp)`` pairs, the timestamp in 48 kHz units on the source's timeline."""

    def __init__(self, bit_rate: int = OPUS_BIT_RATE) -> None:
        self._bit_rate = bit_rate
        self._decoder = av.CodecContext.create("aac", "r")
        self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=OPUS_RATE,
                                            frame_size=OPUS_FRAME)
        self._encoder = self._open_encoder()
        self._base: int | None = None  # the first frame's timestamp, in 48 kHz units
        self._fed = 0  # samples given to the encoder
        self._out = 0  # samples of the packets handed out
        self.errors = 0  # AAC frames that did not decode

    def _open_encoder(self) -> av.AudioCodecContext:
        encoder = av.CodecContext.create("libopus", "w")
        encoder.sample_rate = OPUS_RATE
        encoder.layout = "stereo"
        encoder.format = "s16"
        encoder.bit_rate = self._bit_rate
        encoder.time_base = Fraction(1, OPUS_RATE)
        encoder.options = {"application": "lowdelay", "frame_duration": "20"}
        encoder.open()
        return encoder

    def push(self, data: bytes, timestamp: int, clock_rate: int) -> list[tuple[bytes, int]]:
        """One ADTS frame whose timestamp is ``timestamp`` in ``clock_rate`` units; the Opus
        packets that are complete. A frame that does not decode is counted and skipped."""
        if self._base is None:
            self._base = timestamp * OPUS_RATE // max(1, clock_rate)
        try:
            frames = self._decoder.decode(av.Packet(data))
        except av.FFmpegError:
            self.errors += 1
            return []
        out: list[tuple[bytes, int]] = []
        for frame in frames:
            frame.pts = None
            for chunk in self._resampler.resample(frame):
                chunk.pts = self._fed
                self._fed += chunk.samples
                for packet in self._encoder.encode(chunk):
                    out.append((bytes(packet), self._base + self._out))
                    self._out += OPUS_FRAME
        return out
