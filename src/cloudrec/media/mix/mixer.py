"""The audio of a mixed recording: every input's decoded audio summed on one sample clock.

Each input has a FIFO of float32 samples (one row for a mono input, two for stereo). Decoded
frames that are already 48 kHz float (FFmpeg's Opus decoder gives ``fltp``) go in as they are;
anything else passes through the input's own ``AudioResampler`` (any rate, layout or sample
format → 48 kHz stereo float), made on first need. The mixer's clock is an integer count of
output samples; every :meth:`AudioMixer.mix` takes 1024 samples from each FIFO, pads an input
that is short (or absent) with silence, sums them and soft-clips the sum, giving a stereo
``fltp`` frame ready for the AAC encoder with ``pts`` = the clock (time base 1/48000). Nothing
accumulates float time. A mono input is heard in both channels.

Work that changes nothing is skipped. A frame whose peak is below ``audio.SILENCE_PEAK`` (2 LSB of
16-bit audio, -84 dBFS: what a muted microphone's Opus decodes to) is queued as a run of
silence, not as samples, and silence is never added. When one input alone has sound in a
frame, its samples are the mix (no sum); when none has, the frame is zeros.

Time is the caller's: it calls :meth:`mix_until` with the sample count the recording has
reached (wall clock or video frame count converted with integer arithmetic), and it tells the
mixer about lost input audio with :meth:`push_silence` (it knows the RTP timestamps). An input
whose FIFO holds more than ``max_buffer`` samples (its producer runs ahead of the mix clock)
loses its oldest samples, which bounds the latency an input can build up.

Soft clipping: below ``knee`` (0.8 of full scale) samples pass unchanged; above, the excess is
compressed with ``tanh`` so the curve stays continuous with a continuous slope (no clicks) and
approaches ``CEILING`` (0.98, -0.18 dBFS), so loud inputs summed never wrap or hard-clip, and
the AAC encoder keeps a little headroom.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from fractions import Fraction

import av
import numpy as np

from cloudrec.media.audio import is_silent, planar_samples

SAMPLE_RATE = 48_000
CHANNELS = 2
FRAME_SIZE = 1024  # one AAC-LC frame
TIME_BASE = Fraction(1, SAMPLE_RATE)
KNEE = 0.8
CEILING = 0.98


def soft_clip(x: np.ndarray, knee: float = KNEE, ceiling: float = CEILING) -> np.ndarray:
    """Identity below ``knee``; above, ``knee + s*tanh((|x|-knee)/s)`` with ``s = ceiling -
    knee`` and the sign of ``x``: continuous with a continuous slope (1 at the knee), and never
    past ``ceiling`` in magnitude."""
    if x.max() <= knee and x.min() >= -knee:  # the usual case: two reductions, no temporaries
        return x
    mag = np.abs(x)
    over = mag > knee
    out = x.copy()
    span = ceiling - knee
    out[over] = np.sign(x[over]) * (knee + span * np.tanh((mag[over] - knee) / span))
    return out


class _Fifo:
    """One input's samples in arrival order: float32 ``(channels, n)`` arrays (1 or 2 rows),
    and runs of silence held as ``None`` with their length."""

    __slots__ = ("_chunks", "_offset", "size")

    def __init__(self) -> None:
        self._chunks: deque[tuple[np.ndarray | None, int]] = deque()
        self._offset = 0  # samples already read from the first chunk
        self.size = 0

    def push(self, samples: np.ndarray | None, n: int) -> None:
        """Queue ``samples`` (``n`` columns), or ``n`` samples of silence when None."""
        if n <= 0:
            return
        chunks = self._chunks
        if samples is None and chunks and chunks[-1][0] is None:
            chunks[-1] = (None, chunks[-1][1] + n)  # one run, however many silent frames
        else:
            chunks.append((samples, n))
        self.size += n

    def drop(self, n: int) -> None:
        while n > 0 and self._chunks:
            left = self._chunks[0][1] - self._offset
            if n < left:
                self._offset += n
                self.size -= n
                return
            self._chunks.popleft()
            self._offset = 0
            self.size -= left
            n -= left

    def take(self, want: int, parts: list[tuple[int, np.ndarray]]) -> None:
        """Consume up to ``want`` samples; append ``(position in the frame, samples)`` for each
        piece that is not silence."""
        done = 0
        chunks = self._chunks
        while done < want and chunks:
            samples, length = chunks[0]
            take = min(want - done, length - self._offset)
            if samples is not None:
                parts.append((done, samples[:, self._offset : self._offset + take]))
            done += take
            self._offset += take
            if self._offset == length:
                chunks.popleft()
                self._offset = 0
        self.size -= done


class _Input:
    __slots__ = ("fifo", "resampler")

    def __init__(self) -> None:
        self.fifo = _Fifo()
        self.resampler: av.AudioResampler | None = None  # made when a frame needs one


def _new_resampler() -> av.AudioResampler:
    return av.AudioResampler(format="fltp", layout="stereo", rate=SAMPLE_RATE)


def _float_samples(frame: av.AudioFrame) -> np.ndarray | None:
    """A 48 kHz planar float frame's samples as ``(channels, n)`` float32 (mono or stereo, as
    FFmpeg's Opus decoder gives them); None when the frame needs the resampler."""
    if (frame.sample_rate != SAMPLE_RATE or frame.format.name != "fltp"
            or len(frame.layout.channels) > CHANNELS):
        return None
    return planar_samples(frame)


class AudioMixer:
    """Mixes any number of inputs (keyed by any hashable, e.g. (roomid, uid)) into 48 kHz
    stereo ``fltp`` frames of ``frame_size`` samples on an integer sample clock."""

    def __init__(
        self,
        *,
        frame_size: int = FRAME_SIZE,
        max_buffer: int = SAMPLE_RATE // 2,
        knee: float = KNEE,
    ) -> None:
        self.frame_size = frame_size
        self.max_buffer = max_buffer
        self.knee = knee
        self.clock = 0  # output samples produced so far: the next frame's pts
        self.silent_frames = 0  # input frames queued as silence (never summed)
        self.summed = 0  # output frames in which two or more inputs had sound
        self._inputs: dict[Hashable, _Input] = {}
        self._zeros = np.zeros((CHANNELS, frame_size), np.float32)

    @property
    def inputs(self) -> list[Hashable]:
        return list(self._inputs)

    def add_input(self, key: Hashable) -> None:
        """Start mixing ``key`` (silent until it gets audio); pushing to a new key adds it too."""
        self._input(key)

    def _input(self, key: Hashable) -> _Input:
        state = self._inputs.get(key)
        if state is None:
            state = self._inputs[key] = _Input()
        return state

    def remove_input(self, key: Hashable) -> None:
        """Stop mixing ``key``; audio it had buffered is dropped."""
        self._inputs.pop(key, None)

    def set_inputs(self, keys: list[Hashable]) -> None:
        """Mix exactly ``keys`` (a layout update): new ones are added, others removed."""
        for key in set(self._inputs) - set(keys):
            del self._inputs[key]
        for key in keys:
            self.add_input(key)

    def buffered(self, key: Hashable) -> int:
        """Samples waiting in ``key``'s FIFO (0 for an unknown input)."""
        state = self._inputs.get(key)
        return 0 if state is None else state.fifo.size

    def push(self, key: Hashable, frame: av.AudioFrame) -> None:
        """Queue a decoded frame of input ``key`` (any rate, layout and format).

        The frame's ``pts`` is ignored: the samples follow the input's previous ones, and gaps
        are the caller's to fill with :meth:`push_silence`.
        """
        state = self._input(key)
        samples = _float_samples(frame) if state.resampler is None else None
        if samples is not None:
            self._queue(state, samples)
            return
        if state.resampler is None:
            state.resampler = _new_resampler()
        frame.pts = None
        try:
            out = state.resampler.resample(frame)
        except ValueError:  # the input changed its rate, layout or format: start over
            state.resampler = _new_resampler()
            out = state.resampler.resample(frame)
        for resampled in out:
            self._queue(state, resampled.to_ndarray().astype(np.float32, copy=False))

    def _queue(self, state: _Input, samples: np.ndarray) -> None:
        n = samples.shape[1]
        if n and is_silent(samples):
            self.silent_frames += 1
            state.fifo.push(None, n)
        else:
            state.fifo.push(samples, n)

    def drop(self, key: Hashable, samples: int) -> None:
        """Drop up to ``samples`` of ``key``'s oldest queued samples (its audio runs late)."""
        state = self._inputs.get(key)
        if state is not None:
            state.fifo.drop(samples)

    def push_silence(self, key: Hashable, samples: int) -> None:
        """Queue ``samples`` (48 kHz) of silence for ``key``: audio it lost on the way."""
        self._input(key).fifo.push(None, samples)

    def mix(self) -> av.AudioFrame:
        """The next ``frame_size`` samples of the mix, ``pts`` = the clock before it."""
        n = self.frame_size
        parts: list[tuple[int, np.ndarray]] = []
        sounding = 0  # inputs with sound in this frame
        for state in self._inputs.values():
            fifo = state.fifo
            if fifo.size > self.max_buffer + n:
                fifo.drop(fifo.size - self.max_buffer - n)
            before = len(parts)
            fifo.take(n, parts)
            sounding += len(parts) > before
        if not parts:
            data = self._zeros
        elif len(parts) == 1 and parts[0][1].shape == (CHANNELS, n):
            data = soft_clip(parts[0][1], self.knee)  # one input with sound: it is the mix
        else:
            if sounding > 1:
                self.summed += 1
            acc = np.zeros((CHANNELS, n), np.float32)
            for at, samples in parts:
                acc[:, at : at + samples.shape[1]] += samples  # a mono row goes to both
            data = soft_clip(acc, self.knee)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(data), format="fltp", layout="stereo"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self.clock
        frame.time_base = TIME_BASE
        self.clock += n
        return frame

    def mix_until(self, sample: int) -> list[av.AudioFrame]:
        """Every whole frame that ends at or before output sample ``sample``."""
        frames = []
        while self.clock + self.frame_size <= sample:
            frames.append(self.mix())
        return frames
