"""One publisher's audio on a recording's 90 kHz timeline, as ADTS AAC packets.

The track takes Opus or AAC :class:`~cloudrec.mediatypes.EncodedFrame` objects and gives
:class:`AudioPacket` objects ready for MPEG-TS:

- **Opus** is decoded and encoded to AAC-LC 48 kHz (:class:`~cloudrec.media.audio.OpusToAac`).
- **AAC-LC, mono or stereo, at any sample rate** (one ADTS frame per EncodedFrame, as RTMP and
  SRT ingest give it) is written as it came: no decode, no encode (:class:`AdtsPassthrough`).
  AAC-LC at 44.1 kHz (what OBS and most hardware encoders send) is kept at 44.1 kHz rather
  than resampled to 48 kHz: a remux costs next to nothing where a decode, resample and encode
  is the largest part of a recording's CPU, it loses nothing to a second lossy encode, and
  every HLS, MPEG-TS and MP4 player plays AAC-LC at any of the ADTS rates. So "AAC becomes
  AAC-LC" holds for all AAC; 48 kHz is the rate of what the service encodes itself.
- **Other AAC** (Main, SSR, LTP object types, or more than two channels) is decoded and encoded
  to AAC-LC 48 kHz like Opus (:class:`~cloudrec.media.audio.AudioToAac`).

Timeline: the track's first packet is anchored to its arrival time (or to the time the caller
gives, e.g. its capture time on the publisher's clock), later packets follow the sample count
(the frames' timestamps tell where a frame belongs, the sample count times it). Where the
caller says where a packet belongs (``at``: the video's place for the same capture time), a
track further than ``RESYNC_TICKS`` from it moves: later by a new anchor, earlier by skipping
packets until it is there.
Short losses are filled with silence when the track encodes, and skipped (the next packet's
PTS jumps by the lost time) when it remuxes; a pause or a new epoch re-anchors on arrival,
never before the end of what was written. All PTS are integers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cloudrec.media.audio import AAC_FRAME, SAMPLE_RATE, AudioToAac, OpusToAac
from cloudrec.media.codecs import aac, opus
from cloudrec.mediatypes import EncodedFrame

RESYNC_TICKS = 1800  # 20 ms: audio further than this from where it belongs is moved


@dataclass(slots=True, unsafe_hash=True)  # not frozen: built per packet (see EncodedFrame)
class AudioPacket:
    data: bytes  # ADTS + raw AAC frame (an Opus packet when the track keeps Opus)
    pts: int  # 90 kHz ticks on the recording's timeline
    gap: bool  # first packet after a pause or a new epoch (a timeline break)
    end: int  # 90 kHz tick where its last sample ends


class AudioCodec(Protocol):
    """What the track needs of a codec chain: samples counted in ``rate`` units."""

    @property
    def encoder_name(self) -> str | None: ...
    @property
    def rate(self) -> int: ...
    @property
    def fed(self) -> int: ...

    def decode(self, data: bytes) -> int: ...
    def silence(self, samples: int) -> None: ...
    def align(self) -> int: ...
    def reset_decoder(self) -> None: ...
    def packets(self) -> list[tuple[bytes, int]]: ...
    def flush(self) -> list[tuple[bytes, int]]: ...


class _Passthrough:
    """Packets kept as they are; ``fed`` counts samples at ``rate``.

    Lost time is not filled: :meth:`silence` only moves the count on, so the next packet's PTS
    leaves a gap of that length (players go on over it; neither MPEG-TS nor fMP4 needs
    continuous audio)."""

    encoder_name = None
    rate: int

    def __init__(self) -> None:
        self.fed = 0
        self._out: list[tuple[bytes, int]] = []

    def samples(self, data: bytes) -> int:
        """Samples in one packet; 0 when it is not one of this stream's."""
        raise NotImplementedError

    def decode(self, data: bytes) -> int:
        samples = self.samples(data)
        if samples:
            self._out.append((data, self.fed))
            self.fed += samples
        return samples

    def silence(self, samples: int) -> None:
        self.fed += samples

    def align(self) -> int:
        return self.fed

    def reset_decoder(self) -> None:
        pass

    def packets(self) -> list[tuple[bytes, int]]:
        out, self._out = self._out, []
        return out

    def flush(self) -> list[tuple[bytes, int]]:
        return self.packets()


class AdtsPassthrough(_Passthrough):
    """AAC in ADTS frames, kept as they are, at the stream's own rate."""

    def __init__(self, config: aac.AacConfig) -> None:
        super().__init__()
        self.config = config
        self.rate = config.sample_rate
        # the ADTS header bits that carry this configuration (byte 2 less its private bit, the
        # top two bits of byte 3): a header with exactly these parses to ``config``
        ot, index, ch = config.object_type, config.rate_index, config.channels
        fits = 1 <= ot <= 4 and 0 <= index < len(aac.RATES) and 0 <= ch <= 7
        self._byte2 = ((ot - 1) << 6) | (index << 2) | (ch >> 2) if fits else -1
        self._bits3 = ch & 3

    def samples(self, data: bytes) -> int:
        if (len(data) >= aac.ADTS_SIZE and data[2] == self._byte2 and data[3] >> 6 == self._bits3
                and data[0] == 0xFF and data[1] & 0xF6 == 0xF0):  # this stream's header
            return aac.adts_samples(data)
        if aac.parse_adts(data) != self.config:
            return 0  # not ADTS, or another configuration: not this stream
        return aac.adts_samples(data)


class OpusPassthrough(_Passthrough):
    """Opus packets kept as they are (an fMP4 recording), counted in 48 kHz samples."""

    rate = SAMPLE_RATE

    def samples(self, data: bytes) -> int:
        return opus.packet_samples(data)


def passes_through(config: aac.AacConfig | None) -> bool:
    """Whether AAC with this ADTS configuration is remuxed as it is: AAC-LC, 1 or 2 channels."""
    return config is not None and config.is_lc and config.channels in (1, 2)


def codec_for(frame: EncodedFrame, keep_opus: bool = False) -> AudioCodec:
    """The chain for a track whose first frame is ``frame`` (Opus or AAC); Opus is kept as
    it is when ``keep_opus``."""
    if keep_opus and frame.codec == "opus":
        return OpusPassthrough()
    if frame.codec == "aac":
        config = aac.parse_adts(frame.data)
        if passes_through(config):
            assert config is not None
            return AdtsPassthrough(config)
        channels = 1 if config is not None and config.channels == 1 else 2
        rate = config.sample_rate if config is not None else frame.clock_rate or SAMPLE_RATE
        return AudioToAac("aac", channels, sample_rate=rate)
    # the Opus TOC byte's stereo flag: what the publisher actually sends
    stereo = not frame.data or bool(frame.data[0] & 0x04)
    return OpusToAac(channels=2 if stereo else 1)


def _same_stream(codec: AudioCodec, frame: EncodedFrame) -> bool:
    """Whether ``codec`` can go on with ``frame`` (same codec, same ADTS configuration)."""
    if isinstance(codec, AdtsPassthrough):
        return frame.codec == "aac" and aac.parse_adts(frame.data) == codec.config
    if isinstance(codec, (OpusToAac, OpusPassthrough)):
        return frame.codec == "opus"
    return frame.codec == "aac" and not passes_through(aac.parse_adts(frame.data))


@dataclass(slots=True)
class _Anchor:
    sample: int  # first sample (on the codec's ``fed``) that follows this anchor
    ticks: int  # its 90 kHz timestamp
    gap: bool  # the anchor starts after a timeline break
    rate: int  # the unit of ``sample``

    def to_ticks(self, sample: int) -> int:
        return self.ticks + (sample - self.sample) * 90_000 // self.rate


class AudioTrack:
    """One publisher's Opus or AAC stream on the recording timeline, as AAC packets.

    ``to_ticks(arrival)`` converts a wall-clock arrival to 90 kHz ticks; it is called once per
    anchor (the first packet, after a pause, on a new epoch), never per packet, with the
    frame's ``when`` (its capture time on the server's clock) where given, else its arrival.
    """

    def __init__(self, pause_s: float = 1.0, *, keep_opus: bool = False) -> None:
        self._pause_s = pause_s
        self._keep_opus = keep_opus  # Opus packets given out as they are (fMP4 recordings)
        self._codec: AudioCodec | None = None
        self._anchors: deque[_Anchor] = deque()
        self._epoch: int | None = None
        self._next_rtp = 0  # RTP timestamp the next packet should carry
        self._last_arrival = 0.0
        self._flag_gap = False  # the next packet out starts after a break
        self._rebase = False  # re-anchor the next packet on arrival (after a pauserecord)
        self._end = 0  # end of the last packet given out
        self.dropped = 0

    def rebase(self) -> None:
        """Anchor the next packet on its arrival, as after a pause of the publisher: used
        when the recording itself was paused (the recording clock moved on meanwhile)."""
        self._rebase = True

    @property
    def encoder_name(self) -> str | None:
        return None if self._codec is None else self._codec.encoder_name

    def push(self, frame: EncodedFrame, to_ticks: Callable[[float], int], *,
             when: float | None = None, at: int | None = None) -> list[AudioPacket]:
        """``when``: the frame's time for an anchor (default: its arrival); ``at``: the tick
        where the frame belongs, when the caller knows (see the module docstring)."""
        out: list[AudioPacket] = []
        ticks = at if at is not None else to_ticks(frame.arrival if when is None else when)
        if self._codec is None:
            self._codec = codec_for(frame, self._keep_opus)
        elif frame.epoch != self._epoch and not _same_stream(self._codec, frame):
            out = self.flush()  # another codec or configuration: a new chain from here
            self._codec, self._epoch = codec_for(frame, self._keep_opus), None
            self._anchors.clear()
            self._anchor(ticks, gap=True)
            self._flag_gap = True
        codec = self._codec
        rate = frame.clock_rate or codec.rate
        if self._epoch is None:
            if not self._anchors:
                self._anchor(ticks, gap=False)
        elif frame.epoch != self._epoch:
            codec.reset_decoder()
            self._anchor(ticks, gap=True)
        else:
            missing = (frame.timestamp - self._next_rtp) * codec.rate // rate
            if missing <= -AAC_FRAME // 2:  # duplicate or reordered after its slot: too late
                self.dropped += 1
                return out
            late = frame.arrival - self._last_arrival
            if missing > self._pause_s * codec.rate or late > self._pause_s or self._rebase:
                self._anchor(ticks, gap=True)
            else:
                if missing > codec.rate // 400:  # a lost packet (> 2.5 ms): keep time
                    codec.silence(missing)
                if at is not None and self._resync(frame, at, rate):
                    return out
        samples = codec.decode(frame.data)
        if samples == 0:
            self.dropped += 1  # its time is filled with silence when the next packet comes
        else:
            self._next_rtp = frame.timestamp + samples * rate // codec.rate
        if self._epoch != frame.epoch and samples == 0:
            self._next_rtp = frame.timestamp
        self._epoch = frame.epoch
        self._last_arrival = frame.arrival
        return out + self._collect(codec.packets())

    def flush(self) -> list[AudioPacket]:
        if self._codec is None:
            return []
        return self._collect(self._codec.flush())

    def _resync(self, frame: EncodedFrame, at: int, rate: int) -> bool:
        """Move the track to ``at`` when it is further than ``RESYNC_TICKS``: a new anchor when
        it is early, ``frame`` skipped (True) when it is late, so the next ones catch up."""
        codec = self._codec
        assert codec is not None
        here = self._anchors[-1].to_ticks(codec.fed)
        if at - here > RESYNC_TICKS:
            self._anchor(at, gap=False)
        elif here - at > RESYNC_TICKS:
            samples = (opus.packet_samples(frame.data) if frame.codec == "opus"
                       else aac.adts_samples(frame.data))
            self._next_rtp = frame.timestamp + samples * rate // codec.rate
            self._last_arrival = frame.arrival
            self.dropped += 1
            return True
        return False

    def _anchor(self, ticks: int, *, gap: bool) -> None:
        assert self._codec is not None
        self._rebase = False
        sample = self._codec.align()
        if self._anchors:  # never before the end of what the previous anchor timed
            ticks = max(ticks, self._anchors[-1].to_ticks(sample))
        elif gap:  # a new chain: never before what the previous one wrote
            ticks = max(ticks, self._end)
        self._anchors.append(_Anchor(sample, ticks, gap, self._codec.rate))

    def _collect(self, packets: list[tuple[bytes, int]]) -> list[AudioPacket]:
        codec = self._codec
        assert codec is not None
        anchors, opus_packets = self._anchors, isinstance(codec, OpusPassthrough)
        out: list[AudioPacket] = []
        for data, sample in packets:
            while len(anchors) > 1 and anchors[1].sample <= sample:
                anchors.popleft()
                self._flag_gap = anchors[0].gap
            anchor = anchors[0]  # its to_ticks, inline: this runs per packet
            ticks, first, rate = anchor.ticks, anchor.sample, anchor.rate
            count = opus.packet_samples(data) if opus_packets else aac.adts_samples(data)
            end = ticks + (sample + count - first) * 90_000 // rate
            out.append(AudioPacket(data, ticks + (sample - first) * 90_000 // rate,
                                   self._flag_gap, end))
            if end > self._end:
                self._end = end
            self._flag_gap = False
        return out
