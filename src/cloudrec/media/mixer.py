"""The audio of a mixed recording: every input's decoded audio summed on one sample clock.

Each input has its own ``AudioResampler`` (any rate, layout or sample format in → 48 kHz
stereo float) and a FIFO of samples. The mixer's clock is an integer count of output samples;
every :meth:`AudioMixer.mix` takes 1024 samples from each FIFO, pads an input that is short
(or absent) with silence, sums them and soft-clips the sum, giving a ``fltp`` frame ready for
the AAC encoder with ``pts`` = the clock (time base 1/48000). Nothing accumulates float time.

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
    mag = np.abs(x)
    over = mag > knee
    if not over.any():
        return x
    out = x.copy()
    span = ceiling - knee
    out[over] = np.sign(x[over]) * (knee + span * np.tanh((mag[over] - knee) / span))
    return out


class _Fifo:
    """Stereo float32 samples in arrival order."""

    __slots__ = ("_chunks", "_offset", "size")

    def __init__(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self._offset = 0  # samples already read from the first chunk
        self.size = 0

    def push(self, samples: np.ndarray) -> None:
        if samples.shape[1]:
            self._chunks.append(samples)
            self.size += samples.shape[1]

    def drop(self, n: int) -> None:
        while n > 0 and self._chunks:
            first = self._chunks[0]
            left = first.shape[1] - self._offset
            if n < left:
                self._offset += n
                self.size -= n
                return
            self._chunks.popleft()
            self._offset = 0
            self.size -= left
            n -= left

    def add_into(self, acc: np.ndarray) -> int:
        """Add up to ``acc.shape[1]`` samples into ``acc`` (consumed); returns how many."""
        want, done = acc.shape[1], 0
        while done < want and self._chunks:
            first = self._chunks[0]
            take = min(want - done, first.shape[1] - self._offset)
            acc[:, done : done + take] += first[:, self._offset : self._offset + take]
            done += take
            self._offset += take
            if self._offset == first.shape[1]:
                self._chunks.popleft()
                self._offset = 0
        self.size -= done
        return done


class _Input:
    __slots__ = ("fifo", "resampler")

    def __init__(self) -> None:
        self.fifo = _Fifo()
        self.resampler = _new_resampler()


def _new_resampler() -> av.AudioResampler:
    return av.AudioResampler(format="fltp", layout="stereo", rate=SAMPLE_RATE)


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
        self._inputs: dict[Hashable, _Input] = {}

    @property
    def inputs(self) -> list[Hashable]:
        return list(self._inputs)

    def add_input(self, key: Hashable) -> None:
        """Start mixing ``key`` (silent until it gets audio); pushing to a new key adds it too."""
        self._input(key)

    def _input(self, key: Hashable) -> _Input:
        # not setdefault(key, _Input()): that would build a resampler on every call
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

        The frame's ``pts`` is cleared: the samples follow the input's previous ones, and gaps
        are the caller's to fill with :meth:`push_silence`.
        """
        state = self._input(key)
        frame.pts = None
        try:
            out = state.resampler.resample(frame)
        except ValueError:  # the input changed its rate, layout or format: start over
            state.resampler = _new_resampler()
            out = state.resampler.resample(frame)
        for resampled in out:
            samples = resampled.to_ndarray().astype(np.float32, copy=False)
            state.fifo.push(samples)

    def push_silence(self, key: Hashable, samples: int) -> None:
        """Queue ``samples`` (48 kHz) of silence for ``key``: audio it lost on the way."""
        state = self._input(key)
        if samples > 0:
            state.fifo.push(np.zeros((CHANNELS, samples), np.float32))

    def mix(self) -> av.AudioFrame:
        """The next ``frame_size`` samples of the mix, ``pts`` = the clock before it."""
        n = self.frame_size
        acc = np.zeros((CHANNELS, n), np.float32)
        for state in self._inputs.values():
            if state.fifo.size > self.max_buffer + n:
                state.fifo.drop(state.fifo.size - self.max_buffer - n)
            state.fifo.add_into(acc)
        frame = av.AudioFrame.from_ndarray(
            soft_clip(acc, self.knee), format="fltp", layout="stereo"
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
