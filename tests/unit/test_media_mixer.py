"""AudioMixer: inputs of any rate and layout summed on one sample clock, soft-clipped."""

from __future__ import annotations

import av
import numpy as np

from cloudrec.media.mix.mixer import FRAME_SIZE, SAMPLE_RATE, AudioMixer, soft_clip


def tone(
    freq: float,
    rate: int,
    seconds: float,
    amp: float,
    layout: str = "stereo",
    fmt: str = "fltp",
    samples: int = 960,
) -> list[av.AudioFrame]:
    """A sine in frames of ``samples`` samples, in the given rate, layout and format."""
    total = int(rate * seconds)
    t = np.arange(total) / rate
    wave = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    channels = 1 if layout == "mono" else 2
    frames = []
    for start in range(0, total, samples):
        chunk = np.tile(wave[start : start + samples], (channels, 1))
        if fmt == "s16":  # packed: one row of interleaved samples
            data = (chunk.T.reshape(1, -1) * 32767).astype(np.int16)
        else:
            data = chunk
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
        frame.sample_rate = rate
        frames.append(frame)
    return frames


def output(frames: list[av.AudioFrame]) -> np.ndarray:
    return np.concatenate([f.to_ndarray() for f in frames], axis=1)


def test_two_tones_mix_and_keep_both_frequencies() -> None:
    mixer = AudioMixer()
    for f in tone(440, 44_100, 1.0, 0.4, layout="mono", fmt="s16", samples=1024):
        mixer.push("a", f)
    for f in tone(1000, 48_000, 1.0, 0.4):
        mixer.push("b", f)
    frames = mixer.mix_until(SAMPLE_RATE // 2)
    assert len(frames) == SAMPLE_RATE // 2 // FRAME_SIZE
    for i, f in enumerate(frames):
        assert (f.samples, f.sample_rate, f.format.name, f.layout.name) == (
            FRAME_SIZE,
            SAMPLE_RATE,
            "fltp",
            "stereo",
        )
        assert f.pts == i * FRAME_SIZE and f.time_base.denominator == SAMPLE_RATE
    left = output(frames)[0, 2048 : 2048 + 16384]  # skip the resampler's start-up
    spectrum = np.abs(np.fft.rfft(left * np.hanning(len(left))))
    freqs = np.fft.rfftfreq(len(left), 1 / SAMPLE_RATE)
    peaks = {round(freqs[i]) for i in np.argsort(spectrum)[-6:]}
    assert any(abs(p - 440) < 10 for p in peaks) and any(abs(p - 1000) < 10 for p in peaks)

    def level(hz: float) -> float:
        return float(spectrum[np.argmin(np.abs(freqs - hz))])

    assert level(440) > 20 * level(700) and level(1000) > 20 * level(700)


def test_loud_inputs_never_exceed_full_scale() -> None:
    mixer = AudioMixer()
    for key in ("a", "b", "c"):
        for f in tone(300, 48_000, 0.3, 0.99):
            mixer.push(key, f)
    out = output(mixer.mix_until(14_000))
    assert np.abs(out).max() <= 0.98  # the ceiling, below full scale
    assert np.abs(out).max() > 0.95  # loud, not attenuated to nothing
    # a soft clip keeps the shape: no wrap-around sign flips against the clean sum
    clean = 3 * 0.99 * np.sin(2 * np.pi * 300 * np.arange(out.shape[1]) / SAMPLE_RATE)
    big = np.abs(clean) > 0.5
    assert (np.sign(out[0][big]) == np.sign(clean[big])).all()
    s16 = (out * 32767).astype(np.int16)  # converting for an s16 encoder cannot wrap either
    assert (np.sign(s16[0][big]) == np.sign(clean[big])).all()


def test_soft_clip_curve() -> None:
    x = np.linspace(-4, 4, 8001, dtype=np.float32)
    y = soft_clip(x)
    quiet = np.abs(x) <= 0.8
    assert np.array_equal(y[quiet], x[quiet])  # transparent below the knee
    assert np.abs(y).max() <= 0.98 and (np.diff(y) >= 0).all()  # bounded, monotonic
    assert np.abs(np.diff(y)).max() <= np.abs(np.diff(x)).max() + 1e-6  # no jumps


def test_missing_and_short_inputs_are_silence() -> None:
    mixer = AudioMixer()
    mixer.add_input("idle")
    frame = mixer.mix()
    assert frame.pts == 0 and not output([frame]).any()
    mixer.push("a", tone(1000, 48_000, 0.01, 0.5)[0])  # 480 samples
    out = output([mixer.mix()])
    assert mixer.clock == 2 * FRAME_SIZE
    assert np.abs(out[:, 100:400]).max() > 0.3 and not out[:, 600:].any()


def test_push_silence_keeps_inputs_aligned() -> None:
    mixer = AudioMixer()
    mixer.push_silence("a", 1500)
    ones = av.AudioFrame.from_ndarray(
        np.full((2, 600), 0.25, np.float32), format="fltp", layout="stereo"
    )
    ones.sample_rate = SAMPLE_RATE
    mixer.push("a", ones)
    out = output(mixer.mix_until(2048))
    assert not out[:, :1500].any()
    assert np.allclose(out[:, 1600:2000], 0.25, atol=0.01)


def test_input_running_ahead_is_bounded() -> None:
    mixer = AudioMixer(max_buffer=4800)
    for f in tone(500, 48_000, 1.0, 0.2):
        mixer.push("fast", f)
    assert mixer.buffered("fast") > 40_000
    mixer.mix()
    assert mixer.buffered("fast") <= 4800


def test_inputs_change_and_rate_changes() -> None:
    mixer = AudioMixer()
    mixer.set_inputs(["a", "b"])
    for f in tone(440, 16_000, 0.1, 0.3, layout="mono"):
        mixer.push("a", f)
    for f in tone(440, 48_000, 0.1, 0.3, layout="mono"):  # a new rate on the same input
        mixer.push("a", f)
    assert mixer.buffered("a") > 8000
    mixer.set_inputs(["b", "c"])
    assert sorted(mixer.inputs) == ["b", "c"] and mixer.buffered("a") == 0
    mixer.remove_input("b")
    assert mixer.inputs == ["c"]


def test_decoded_float_frames_are_taken_as_they_are() -> None:
    """48 kHz fltp (what the Opus decoder gives) skips the resampler: the mix is the input's
    samples exactly; a mono input is heard in both channels."""
    stereo = tone(700, 48_000, 0.2, 0.5)
    mono = tone(300, 48_000, 0.2, 0.25, layout="mono")
    mixer = AudioMixer()
    for f in stereo:
        mixer.push("s", f)
    out = output(mixer.mix_until(8192))
    assert np.array_equal(out, output(stereo)[:, :8192])
    mixer = AudioMixer()
    for f in mono:
        mixer.push("m", f)
    out = output(mixer.mix_until(8192))
    expected = output(mono)[0, :8192]
    assert np.array_equal(out[0], expected) and np.array_equal(out[1], expected)


def quiet(samples: int, peak: float, frames: int) -> list[av.AudioFrame]:
    """Noise of the given peak, 48 kHz mono fltp, as a muted microphone's Opus decodes."""
    rng = np.random.default_rng(3)
    out = []
    for _ in range(frames):
        data = rng.uniform(-peak, peak, (1, samples)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(data, format="fltp", layout="mono")
        frame.sample_rate = 48_000
        out.append(frame)
    return out


def test_silent_inputs_are_not_summed_and_change_nothing() -> None:
    voice = tone(440, 48_000, 0.5, 0.4)
    alone = AudioMixer()
    for f in voice:
        alone.push("speaker", f)
    expected = output(alone.mix_until(20_480))

    mixer = AudioMixer()
    for f in voice:
        mixer.push("speaker", f)
    # two muted inputs: exact zeros, and the 1-LSB noise a muted microphone decodes to
    for f in quiet(960, 0.0, 25):
        mixer.push("zeros", f)
    for f in quiet(960, 1 / 32768, 25):
        mixer.push("muted", f)
    assert mixer.buffered("zeros") == mixer.buffered("muted") == 24_000
    out = output(mixer.mix_until(20_480))
    assert np.array_equal(out, expected)
    assert mixer.silent_frames == 50 and mixer.summed == 0

    # a quiet but audible input (-60 dBFS) is mixed
    mixer = AudioMixer()
    for f in voice:
        mixer.push("speaker", f)
    for f in quiet(960, 0.001, 25):
        mixer.push("whisper", f)
    out = output(mixer.mix_until(20_480))
    assert mixer.silent_frames == 0 and mixer.summed == 20
    assert 0 < np.abs(out - expected).max() <= 0.001


def test_nothing_audible_gives_zeros_on_the_clock() -> None:
    mixer = AudioMixer()
    for f in quiet(960, 1 / 32768, 10):
        mixer.push("muted", f)
    mixer.push_silence("lost", 5000)
    frames = mixer.mix_until(9000)
    assert [f.pts for f in frames] == [i * FRAME_SIZE for i in range(8)]
    assert not output(frames).any() and mixer.buffered("muted") == 9600 - 8192
