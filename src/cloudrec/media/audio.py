"""Audio → AAC-LC 48 kHz: the encoder, and the chain that decodes any codec into it.

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

:class:`AudioToAac` is the codec chain (a PyAV decoder: Opus, AAC, MP3, MP2, G.711, ... →
``AudioResampler`` to fltp 48 kHz → 1024-sample frames → :class:`AacEncoder`); it counts
samples and never looks at a clock. :class:`OpusToAac` is that chain for Opus. How a
publisher's stream is put on a recording's timeline is :mod:`cloudrec.media.audiotrack`.

Dual mono: stereo whose two channels carry the same sound (what most WebRTC "stereo" from a
mono microphone is, and what FFmpeg's WHIP muxer sends of a mono source) is encoded as mono
AAC at 96 kbps: the SNR of the stereo 128 kbps encode (within 0.5 dB on voice and music) at
the mono encoder's cost, 60-65 % of the stereo one on speech and music and half on a steady
tone (``bench/bench_audio.py``). A stereo chain holds its first ``DUAL_MONO_FRAMES`` frames
with sound (1 s of audio at most) before it opens its encoder: when their channels differ by
no more than silence does (Opus' decoder gives the two channels of a dual-mono packet within
1e-9 of each other), the AAC is mono; otherwise stereo. The choice holds for the chain's life
(the ADTS configuration of a stream never changes): a dual-mono start that later carries real
stereo is recorded as its mid channel, ``(L + R) / 2``. The ingest's normalisation keeps its
layout (``dual_mono=False``).
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from cloudrec.media.codecs import UnsupportedCodec, aac

SAMPLE_RATE = 48_000
AAC_FRAME = 1024  # samples per AAC-LC frame
AAC_TICKS = AAC_FRAME * 90_000 // SAMPLE_RATE  # 1920: one AAC frame in 90 kHz ticks
AAC_BIT_RATE = 128_000
_SAMPLE_TB = Fraction(1, SAMPLE_RATE)


def adts_header(payload_size: int, channels: int = 2) -> bytes:
    """ADTS header for one raw AAC-LC frame, 48 kHz, ``channels`` channels, no CRC."""
    return aac.adts_header(payload_size, SAMPLE_RATE, channels)


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


DUAL_MONO_FRAMES = 5  # stereo frames with sound looked at before the encoder is chosen
DUAL_MONO_RATE = 0.75  # of the stereo rate: mono AAC at 96 kbps has stereo 128 kbps' SNR
DUAL_MONO_HOLD = 47  # frames held at most (1 s): then the evidence so far decides


def is_dual_mono(samples: np.ndarray) -> bool:
    """Whether a ``(2, n)`` block's channels differ by no more than silence."""
    return samples.shape[0] == 2 and is_silent(samples[0] - samples[1])


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


# codec names (as publishers and ingest give them) → PyAV decoders
DECODERS = {"opus": "opus", "aac": "aac", "mp3": "mp3", "mp2": "mp2", "pcma": "pcm_alaw",
            "pcmu": "pcm_mulaw", "pcm_le": "pcm_s16le", "pcm": "pcm_s16le", "adpcm": "adpcm_swf",
            "nellymoser": "nellymoser", "speex": "libspeex"}
# decoders that read neither rate nor channels from the packets: they must be told
_HEADERLESS = ("opus", "pcm_alaw", "pcm_mulaw", "pcm_s16le", "adpcm_swf", "nellymoser",
               "libspeex")


def audio_decoder(codec: str, sample_rate: int, channels: int) -> av.AudioCodecContext:
    """PyAV's decoder of ``codec`` (a name from :data:`DECODERS`, or FFmpeg's own), told the
    rate and channel count where its packets do not say them; :class:`UnsupportedCodec` when
    there is none."""
    name = DECODERS.get(codec, codec)
    try:
        dec = av.CodecContext.create(name, "r")
    except (av.FFmpegError, ValueError):
        raise UnsupportedCodec(codec) from None
    if not isinstance(dec, av.AudioCodecContext):
        raise UnsupportedCodec(codec)
    if name in _HEADERLESS:
        dec.sample_rate = sample_rate
        dec.layout = "stereo" if channels == 2 else "mono"
    return dec


class AudioToAac:
    """Decode any audio PyAV decodes, re-frame to 1024 samples at 48 kHz, encode AAC-LC.

    The decoded audio goes through an ``AudioResampler`` to fltp 48 kHz (made again when the
    decoded format, layout or rate changes) and an ``AudioFifo`` that cuts 1024-sample frames.
    ``fed`` counts the 48 kHz samples that went in (decoded audio plus silence); an output
    packet's PTS is the index of its first sample on that count (the encoder's priming packet
    is -1024). ``sample_rate``/``channels`` describe the input where its packets do not
    (Opus, G.711, PCM); the AAC has ``channels`` channels (1 or 2).
    """

    encoder_name = "aac"
    rate = SAMPLE_RATE  # the unit of ``fed`` and of packet PTS

    def __init__(self, codec: str = "opus", channels: int = 2, bit_rate: int | None = None, *,
                 sample_rate: int = SAMPLE_RATE, in_channels: int | None = None,
                 dual_mono: bool = True) -> None:
        self.codec = codec
        self.channels = channels
        self.layout = "stereo" if channels == 2 else "mono"
        self._in = (sample_rate, in_channels or channels)
        self._decoder = audio_decoder(codec, *self._in)
        self._resampler: av.AudioResampler | None = None
        self._shape: tuple[str, str, int] | None = None
        self._fifo = av.AudioFifo()
        self._bit_rate = bit_rate
        self._encoder: AacEncoder | None = None
        self._held: list[av.AudioFrame] | None = None  # stereo frames before the choice
        self._sound = 0  # held frames with sound
        if channels == 2 and dual_mono:
            self._held = []
        else:
            self._open_encoder(channels)
        self.fed = 0
        self._framed = 0  # samples handed to the encoder
        self._out: list[tuple[bytes, int]] = []

    def reset_decoder(self) -> None:
        """Forget the decoder's state (a new publication starts a new stream)."""
        self._decoder = audio_decoder(self.codec, *self._in)

    def decode(self, data: bytes) -> int:
        """Decode one packet into the chain; returns the 48 kHz samples it held (0 if corrupt)."""
        try:
            frames = self._decoder.decode(av.Packet(data))
        except av.FFmpegError:
            return 0
        samples = 0
        for frame in frames:
            samples += frame.samples * SAMPLE_RATE // (frame.sample_rate or SAMPLE_RATE)
            self._resample(frame)
        return samples

    def silence(self, samples: int) -> None:
        while samples > 0:
            chunk = min(samples, SAMPLE_RATE)
            self._write(_silence(chunk, self.layout))
            samples -= chunk

    def align(self) -> int:
        """Pad with silence to a whole AAC frame; returns ``fed``, now a multiple of 1024."""
        rest = self.fed % AAC_FRAME
        if rest:
            self.silence(AAC_FRAME - rest)
        return self.fed

    def _resample(self, frame: av.AudioFrame) -> None:
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        if shape != self._shape:
            if self._resampler is not None:  # what the old one holds, then a new one
                for out in self._resampler.resample(None):
                    self._write(out)
            self._resampler = av.AudioResampler(format="fltp", layout=self.layout,
                                                rate=SAMPLE_RATE)
            self._shape = shape
        frame.pts = None
        assert self._resampler is not None
        for out in self._resampler.resample(frame):
            self._write(out)

    def _write(self, frame: av.AudioFrame) -> None:
        """48 kHz fltp audio into the FIFO; whole 1024-sample frames on to the encoder."""
        self.fed += frame.samples
        frame.pts = None
        self._fifo.write(frame)
        while self._fifo.samples >= AAC_FRAME:
            framed = self._fifo.read(AAC_FRAME)
            assert framed is not None
            framed.pts = self._framed
            framed.time_base = _SAMPLE_TB
            self._framed += framed.samples
            self._encode(framed)

    @property
    def skipped(self) -> int:
        """AAC frames of silence written without encoding."""
        return self._encoder.skipped if self._encoder is not None else 0

    @property
    def encoded_channels(self) -> int | None:
        """The AAC's channel count (None while a stereo chain has not chosen yet)."""
        return None if self._encoder is None else self._encoder.channels

    def _open_encoder(self, channels: int) -> None:
        rate = self._bit_rate or AAC_BIT_RATE * channels // 2
        if channels < self.channels:  # dual mono: the stereo encode's SNR at mono's cost
            rate = int((self._bit_rate or AAC_BIT_RATE) * DUAL_MONO_RATE)
        self._encoder = AacEncoder(channels, rate)

    def _choose(self, frame: av.AudioFrame | None) -> bool:
        """Hold stereo frames until the encoder is chosen (the held ones are then encoded);
        True when ``frame`` is to be encoded now."""
        held = self._held
        assert held is not None
        if frame is not None:
            samples = planar_samples(frame)
            if not is_silent(samples):
                if not is_dual_mono(samples):
                    self._release(2)
                    return True
                self._sound += 1
            if self._sound < DUAL_MONO_FRAMES and len(held) < DUAL_MONO_HOLD:
                held.append(frame)
                return False
        self._release(1 if self._sound else 2)  # nothing but silence: no evidence, stereo
        return True

    def _release(self, channels: int) -> None:
        held, self._held = self._held or [], None
        self._open_encoder(channels)
        for frame in held:
            self._encode(frame)

    def _encode(self, frame: av.AudioFrame | None) -> None:
        if self._held is not None and not self._choose(frame):
            return
        assert self._encoder is not None
        channels = self._encoder.channels
        if frame is not None and channels == 1 and self.channels == 2:
            samples = planar_samples(frame)
            mono = av.AudioFrame.from_ndarray(
                np.ascontiguousarray((samples[0] + samples[1]) * np.float32(0.5))[None, :],
                format="fltp", layout="mono")
            mono.sample_rate, mono.pts, mono.time_base = SAMPLE_RATE, frame.pts, _SAMPLE_TB
            frame = mono
        for payload, pts, _ in self._encoder.encode(frame):
            self._out.append((adts_header(len(payload), channels) + payload, pts))

    def packets(self) -> list[tuple[bytes, int]]:
        """ADTS-framed AAC packets ready so far, with their sample PTS."""
        out, self._out = self._out, []
        return out

    def flush(self) -> list[tuple[bytes, int]]:
        """Pad the last frame, drain the encoder; returns the remaining packets."""
        if self._resampler is not None:
            for out in self._resampler.resample(None):
                self._write(out)
            self._resampler, self._shape = None, None
        self.align()
        self._encode(None)
        return self.packets()


class OpusToAac(AudioToAac):
    """Opus packets (48 kHz) → AAC-LC 48 kHz: :class:`AudioToAac` with the ``opus`` decoder."""

    def __init__(self, channels: int = 2, bit_rate: int | None = None, *,
                 dual_mono: bool = True) -> None:
        super().__init__("opus", channels, bit_rate, dual_mono=dual_mono)
