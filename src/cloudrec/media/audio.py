"""Opus packets → AAC-LC 48 kHz, timed by sample counts.

The AAC keeps the channel count the publisher sends: stereo Opus becomes stereo AAC at
128 kbps, mono Opus (what browsers send from a microphone by default) becomes mono AAC at
64 kbps. Encoding a mono source as stereo would double the encoder's cost, the largest part of
a source recording's CPU, for two identical channels.

:class:`AacEncoder` is FFmpeg's ``aac`` (fast coder) that does not encode silence. Once it has
been fed a few silent frames (peak below 2 LSB of 16-bit audio, fed as exact zeros) and its
output has settled on the one packet it gives for digital silence, further silent frames are
not encoded: that packet is written for them, with the timestamps the encoder would have
given. The first frame with sound goes to the encoder again, whose state is what all those
zeros would have left (its buffers hold zeros either way); its first packets are restamped to
follow on. A muted microphone, or a mix of a silent room, costs a comparison per frame instead
of an encode (measured in ``bench/bench_audio.py``).


:class:`OpusToAac` is the codec chain (PyAV's ``opus`` decoder → ``AudioResampler`` to fltp
stereo 48 kHz in 1024-sample frames → FFmpeg's ``aac`` encoder); it counts samples and never
looks at a clock. :class:`AudioTrack` puts one publisher's Opus stream on the recording's 90 kHz
timeline: its first packet is anchored to its arrival time, later packets follow the RTP clock,
short losses are filled with silence and a pause or a new epoch re-anchors on arrival.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from cloudrec.mediatypes import EncodedFrame

SAMPLE_RATE = 48_000
AAC_FRAME = 1024  # samples per AAC-LC frame
AAC_TICKS = AAC_FRAME * 90_000 // SAMPLE_RATE  # 1920: one AAC frame in 90 kHz ticks
AAC_BIT_RATE = 128_000
_SAMPLE_TB = Fraction(1, SAMPLE_RATE)


def adts_header(payload_size: int, channels: int = 2) -> bytes:
    """ADTS header for one raw AAC-LC frame, 48 kHz, ``channels`` channels, no CRC."""
    n = payload_size + 7
    profile, rate_index = 1, 3  # AAC LC, 48000 Hz
    return bytes(
        (
            0xFF,
            0xF1,
            (profile << 6) | (rate_index << 2) | (channels >> 2),
            ((channels & 3) << 6) | (n >> 11),
            (n >> 3) & 0xFF,
            ((n & 7) << 5) | 0x1F,
            0xFC,
        )
    )


SILENCE_PEAK = 2 / 32768  # below this peak audio is silence (2 LSB of 16-bit, -84 dBFS)
_SETTLE_FRAMES = 3  # silent frames fed before the encoder's output can have settled


def open_aac(channels: int, bit_rate: int) -> av.AudioCodecContext:
    """FFmpeg's ``aac``: AAC-LC 48 kHz fltp, ``channels`` 1 or 2, the fast coder."""
    enc = av.CodecContext.create("aac", "w")
    assert isinstance(enc, av.AudioCodecContext)
    enc.sample_rate = SAMPLE_RATE
    enc.layout = "stereo" if channels == 2 else "mono"
    enc.format = "fltp"
    enc.bit_rate = bit_rate
    enc.time_base = _SAMPLE_TB
    # The "fast" coder costs ~7 ms CPU per second of stereo audio against ~19 ms for the
    # default "twoloop" at 128 kbps, with no lower SNR (bench/bench_audio.py). It is what keeps
    # a source recording cheap.
    enc.options = {"aac_coder": "fast"}
    enc.open()
    return enc


_SILENT_PACKETS: dict[tuple[int, int], bytes] = {}


def silent_packet(channels: int, bit_rate: int) -> bytes:
    """The raw AAC frame the encoder settles on for digital silence (made once per setting)."""
    key = (channels, bit_rate)
    if key not in _SILENT_PACKETS:
        enc = open_aac(channels, bit_rate)
        packets = []
        for i in range(8):
            frame = _silence(AAC_FRAME, enc.layout.name)
            frame.pts, frame.time_base = i * AAC_FRAME, _SAMPLE_TB
            packets += [bytes(p) for p in enc.encode(frame)]
        _SILENT_PACKETS[key] = packets[-1]
    return _SILENT_PACKETS[key]


def planar_samples(frame: av.AudioFrame) -> np.ndarray:
    """A ``fltp`` frame's samples as ``(channels, n)`` float32: a view of a mono frame's
    buffer (it keeps the frame alive), a copy of a stereo frame's two planes."""
    n = frame.samples
    planes = frame.planes
    if len(planes) == 1:
        return np.frombuffer(memoryview(planes[0]), np.float32, n).reshape(1, n)
    out = np.empty((len(planes), n), np.float32)
    for i, plane in enumerate(planes):
        out[i] = np.frombuffer(memoryview(plane), np.float32, n)
    return out


def is_silent(samples: np.ndarray) -> bool:
    """Whether every sample's magnitude is below ``SILENCE_PEAK``. Sound is usually told at a
    glance: every 32nd sample's energy, more than those samples could hold at the peak, means
    one of them is above it; only what passes that is read whole."""
    sparse = samples[..., ::32]
    if float(np.vdot(sparse, sparse)) > sparse.size * SILENCE_PEAK * SILENCE_PEAK:
        return False
    return bool(samples.max() < SILENCE_PEAK and samples.min() > -SILENCE_PEAK)


class AacEncoder:
    """AAC-LC 48 kHz that writes a stored packet for silence instead of encoding it (see the
    module docstring). :meth:`encode` takes 1024-sample fltp frames whose ``pts`` (in samples)
    follow on without gaps, and returns ``(raw AAC frame, pts, duration)``, pts rising by the
    duration, as FFmpeg's encoder would (the first packet, its priming, is at -1024)."""

    def __init__(self, channels: int, bit_rate: int) -> None:
        self.channels = channels
        self.context = open_aac(channels, bit_rate)
        self._silent = silent_packet(channels, bit_rate)
        self._zeros = np.zeros((channels, AAC_FRAME), np.float32)
        self._quiet = 0  # silent frames in a row fed to the encoder
        self._last = b""  # the encoder's last packet
        self._gated = False  # silent frames are skipped now
        self._next: int | None = None  # the next packet's pts
        self.skipped = 0  # frames not encoded

    def encode(self, frame: av.AudioFrame | None) -> list[tuple[bytes, int, int]]:
        if frame is None:
            return self._flush()
        pts = frame.pts if frame.pts is not None else 0
        silent = is_silent(planar_samples(frame))
        if silent and self._gated:
            self.skipped += 1
            return self._stored(1)
        self._gated = False
        if silent:
            self._quiet += 1
            frame = av.AudioFrame.from_ndarray(self._zeros, format="fltp",
                                               layout=self.context.layout.name)
            frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, pts, _SAMPLE_TB
        else:
            self._quiet = 0
        out = self._packets(self.context.encode(frame))
        if self._quiet >= _SETTLE_FRAMES and self._last == self._silent:
            self._gated = True
        return out

    def _stored(self, count: int) -> list[tuple[bytes, int, int]]:
        """``count`` silent packets where the encoder's next ones would be."""
        out = []
        for _ in range(count):
            assert self._next is not None
            out.append((self._silent, self._next, AAC_FRAME))
            self._next += AAC_FRAME
        return out

    def _packets(self, packets: list[av.Packet]) -> list[tuple[bytes, int, int]]:
        out = []
        for packet in packets:
            data = bytes(packet)
            pts = packet.pts if packet.pts is not None else self._next
            if pts is None:
                pts = -AAC_FRAME
            elif self._next is not None:  # after skipped frames the encoder's own pts lag
                pts = max(pts, self._next)
            duration = packet.duration or AAC_FRAME
            out.append((data, pts, duration))
            self._next = pts + duration
            self._last = data
        return out

    def _flush(self) -> list[tuple[bytes, int, int]]:
        if self._gated:  # the encoder holds its last two frames (its delay), silent ones
            return self._stored(2)
        return self._packets(self.context.encode(None))


def _silence(samples: int, layout: str = "stereo") -> av.AudioFrame:
    channels = 2 if layout == "stereo" else 1
    frame = av.AudioFrame.from_ndarray(
        np.zeros((channels, samples), dtype=np.float32), format="fltp", layout=layout
    )
    frame.sample_rate = SAMPLE_RATE
    return frame


class OpusToAac:
    """Decode Opus, re-frame to 1024 samples, encode AAC. Packets carry sample-count PTS.

    ``fed`` counts the samples that went in (decoded audio plus silence); an output packet's
    PTS is the index of its first sample on that count (the encoder's priming packet is -1024).
    """

    encoder_name = "aac"

    def __init__(self, channels: int = 2, bit_rate: int | None = None) -> None:
        self.channels = channels
        self.layout = "stereo" if channels == 2 else "mono"
        self._decoder = self._new_decoder()
        self._resampler = av.AudioResampler(
            format="fltp", layout=self.layout, rate=SAMPLE_RATE, frame_size=AAC_FRAME
        )
        self._encoder = AacEncoder(channels, bit_rate or AAC_BIT_RATE * channels // 2)
        self.fed = 0
        self._framed = 0  # samples handed to the encoder
        self._out: list[tuple[bytes, int]] = []

    def _new_decoder(self) -> av.AudioCodecContext:
        dec = av.CodecContext.create("opus", "r")
        dec.sample_rate = SAMPLE_RATE
        dec.layout = self.layout
        return dec

    def reset_decoder(self) -> None:
        """Forget the Opus decoder's state (a new publication starts a new Opus stream)."""
        self._decoder = self._new_decoder()

    def decode(self, data: bytes) -> int:
        """Decode one Opus packet into the chain; returns the samples it held (0 if corrupt)."""
        try:
            frames = self._decoder.decode(av.Packet(data))
        except av.FFmpegError:
            return 0
        samples = 0
        for frame in frames:
            samples += frame.samples
            self._feed(frame)
        return samples

    def silence(self, samples: int) -> None:
        while samples > 0:
            chunk = min(samples, SAMPLE_RATE)
            self._feed(_silence(chunk, self.layout))
            samples -= chunk

    def align(self) -> int:
        """Pad with silence to a whole AAC frame; returns ``fed``, now a multiple of 1024."""
        rest = self.fed % AAC_FRAME
        if rest:
            self.silence(AAC_FRAME - rest)
        return self.fed

    def _feed(self, frame: av.AudioFrame) -> None:
        self.fed += frame.samples
        frame.pts = None
        for framed in self._resampler.resample(frame):
            framed.pts = self._framed
            framed.time_base = _SAMPLE_TB
            self._framed += framed.samples
            self._encode(framed)

    @property
    def skipped(self) -> int:
        """AAC frames of silence written without encoding."""
        return self._encoder.skipped

    def _encode(self, frame: av.AudioFrame | None) -> None:
        for payload, pts, _ in self._encoder.encode(frame):
            self._out.append((adts_header(len(payload), self.channels) + payload, pts))

    def packets(self) -> list[tuple[bytes, int]]:
        """ADTS-framed AAC packets ready so far, with their sample PTS."""
        out, self._out = self._out, []
        return out

    def flush(self) -> list[tuple[bytes, int]]:
        """Pad the last frame, drain the encoder; returns the remaining packets."""
        self.align()
        self._encode(None)
        return self.packets()


@dataclass(frozen=True, slots=True)
class AudioPacket:
    data: bytes  # ADTS + raw AAC frame
    pts: int  # 90 kHz ticks on the recording's timeline
    gap: bool  # first packet after a pause or a new epoch (a timeline break)

    @property
    def end(self) -> int:
        return self.pts + AAC_TICKS


@dataclass(slots=True)
class _Anchor:
    sample: int  # first sample (on OpusToAac.fed) that follows this anchor
    ticks: int  # its 90 kHz timestamp
    gap: bool  # the anchor starts after a timeline break

    def to_ticks(self, sample: int) -> int:
        return self.ticks + (sample - self.sample) * 90_000 // SAMPLE_RATE


class AudioTrack:
    """One publisher's Opus stream on the recording timeline, as AAC packets.

    ``to_ticks(arrival)`` converts a wall-clock arrival to 90 kHz ticks; it is called once per
    anchor (the first packet, after a pause, on a new epoch), never per packet.
    """

    def __init__(self, pause_s: float = 1.0) -> None:
        self._pause_s = pause_s
        self._codec: OpusToAac | None = None
        self._anchors: deque[_Anchor] = deque()
        self._epoch: int | None = None
        self._next_rtp = 0  # RTP timestamp the next packet should carry
        self._last_arrival = 0.0
        self._flag_gap = False  # the next packet out starts after a break
        self._rebase = False  # re-anchor the next packet on arrival (after a pauserecord)
        self.dropped = 0

    def rebase(self) -> None:
        """Anchor the next packet on its arrival, as after a pause of the publisher: used
        when the recording itself was paused (the recording clock moved on meanwhile)."""
        self._rebase = True

    @property
    def encoder_name(self) -> str | None:
        return None if self._codec is None else self._codec.encoder_name

    def push(self, frame: EncodedFrame, to_ticks: Callable[[float], int]) -> list[AudioPacket]:
        if self._codec is None:
            # the Opus TOC byte's stereo flag: what the publisher actually sends
            stereo = not frame.data or bool(frame.data[0] & 0x04)
            self._codec = OpusToAac(channels=2 if stereo else 1)
        codec = self._codec
        rate = frame.clock_rate or SAMPLE_RATE
        if self._epoch is None:
            self._anchor(frame.arrival, to_ticks, gap=False)
        elif frame.epoch != self._epoch:
            codec.reset_decoder()
            self._anchor(frame.arrival, to_ticks, gap=True)
        else:
            missing = (frame.timestamp - self._next_rtp) * SAMPLE_RATE // rate
            if missing <= -AAC_FRAME // 2:  # duplicate or reordered after its slot: too late
                self.dropped += 1
                return []
            late = frame.arrival - self._last_arrival
            if missing > self._pause_s * SAMPLE_RATE or late > self._pause_s or self._rebase:
                self._anchor(frame.arrival, to_ticks, gap=True)
            elif missing > SAMPLE_RATE // 400:  # a lost packet (> 2.5 ms): keep time with silence
                codec.silence(missing)
        samples = codec.decode(frame.data)
        if samples == 0:
            self.dropped += 1  # its time is filled with silence when the next packet comes
        else:
            self._next_rtp = frame.timestamp + samples * rate // SAMPLE_RATE
        if self._epoch != frame.epoch and samples == 0:
            self._next_rtp = frame.timestamp
        self._epoch = frame.epoch
        self._last_arrival = frame.arrival
        return self._collect(codec.packets())

    def flush(self) -> list[AudioPacket]:
        if self._codec is None:
            return []
        return self._collect(self._codec.flush())

    def _anchor(self, arrival: float, to_ticks: Callable[[float], int], *, gap: bool) -> None:
        assert self._codec is not None
        self._rebase = False
        sample = self._codec.align()
        ticks = to_ticks(arrival)
        if self._anchors:  # never before the end of what the previous anchor timed
            ticks = max(ticks, self._anchors[-1].to_ticks(sample))
        self._anchors.append(_Anchor(sample, ticks, gap))

    def _collect(self, packets: list[tuple[bytes, int]]) -> list[AudioPacket]:
        out: list[AudioPacket] = []
        for data, sample in packets:
            while len(self._anchors) > 1 and self._anchors[1].sample <= sample:
                self._anchors.popleft()
                self._flag_gap = self._anchors[0].gap
            pts = self._anchors[0].to_ticks(sample)
            out.append(AudioPacket(data, pts, self._flag_gap))
            self._flag_gap = False
        return out
