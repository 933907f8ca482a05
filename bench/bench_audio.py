"""The audio path's codecs: what each AAC encoder setting and each Opus decoder costs, and what
the AAC settings do to the sound.

Signals (48 kHz, ``SECONDS`` long, made here with numpy): voice-like (a gliding pitch with
syllable-rate loudness and breath noise, as ``cloudrec publish --voice`` sends), four such
voices summed (what a mix of a talking room encodes), music-like (a chord with harmonics and a
little noise), steady tones (a 440 Hz sine; a 300 Hz tone with 3 Hz amplitude modulation) and
digital silence. For each AAC setting, in the channel count and bit rate
cloudrec uses (mono 64 kbps: a source recording of a microphone; stereo 128 kbps: a mix):

- CPU milliseconds per second of audio (the encode calls alone);
- the bit rate it produced;
- the SNR of the decoded AAC against the input (FFmpeg's AAC decoder, the encoder's 1024
  samples of priming skipped): how much the setting costs in fidelity.

Then dual-mono stereo (both channels the same voice, as WebRTC "stereo" from a mono microphone
is): encoded as stereo 128 kbps against mono 64 kbps and what cloudrec does with it, mono 96 kbps
(``cloudrec.media.audio``'s dual-mono choice), cost and SNR side by side; and which AAC
encoders this PyAV has (``av.codecs_available``: FFmpeg's native ``aac`` only in the wheel, no
``libfdk_aac``).

Then the two Opus decoders PyAV offers on the same Opus packets (libopus 64 kbps), mono and
stereo output. The rows that cloudrec uses are marked ``*``.

    .venv/bin/python bench/bench_audio.py
"""

from __future__ import annotations

import os
import resource
from fractions import Fraction

import av
import numpy as np

RATE = 48_000
SECONDS = float(os.environ.get("BENCH_AUDIO_SECONDS", "10"))
FRAME = 1024
TB = Fraction(1, RATE)

# (label, options); cloudrec's own is the first (see cloudrec.media.audio and .mixout)
AAC_SETTINGS: list[tuple[str, dict[str, str]]] = [
    ("fast *", {"aac_coder": "fast"}),
    ("twoloop (FFmpeg's default)", {"aac_coder": "twoloop"}),
    ("fast, no TNS", {"aac_coder": "fast", "aac_tns": "0"}),
    ("fast, no PNS", {"aac_coder": "fast", "aac_pns": "0"}),
    ("fast, no intensity stereo", {"aac_coder": "fast", "aac_is": "0"}),
    ("fast, no TNS/PNS/IS", {"aac_coder": "fast", "aac_tns": "0", "aac_pns": "0", "aac_is": "0"}),
]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def voice(f0: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(RATE * SECONDS)) / RATE
    pitch = 1 + 0.3 * np.sin(2 * np.pi * 0.5 * t)
    level = 0.55 + 0.45 * np.sin(2 * np.pi * 3 * t)
    return 0.25 * (np.sin(2 * np.pi * f0 * t * pitch) * level + 0.04 * rng.standard_normal(t.size))


def signals() -> dict[str, np.ndarray]:
    t = np.arange(int(RATE * SECONDS)) / RATE
    rng = np.random.default_rng(7)
    chord = sum(np.sin(2 * np.pi * f * h * t) / h for f in (261.6, 329.6, 392.0)
                for h in (1, 2, 3, 4))
    music = 0.12 * chord * (0.7 + 0.3 * np.sin(2 * np.pi * 0.25 * t)) + 0.02 * rng.standard_normal(
        t.size)
    return {
        "voice": voice(220, 1),
        "4 voices": np.clip(sum(voice(f, i) for i, f in enumerate((220, 330, 440, 550))), -1, 1),
        "music": music,
        "tone 440": 0.25 * np.sin(2 * np.pi * 440 * t),
        "tone 300 AM": 0.25 * np.sin(2 * np.pi * 300 * t)
        * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)),
        "silence": np.zeros(t.size),
    }


def _frames(signal: np.ndarray, channels: int) -> list[av.AudioFrame]:
    layout = "stereo" if channels == 2 else "mono"
    data = np.tile(signal.astype(np.float32), (channels, 1))
    out = []
    for start in range(0, data.shape[1] - FRAME + 1, FRAME):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, start:start + FRAME]),
                                           format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = RATE, start, TB
        out.append(frame)
    return out


def encode_aac(signal: np.ndarray, channels: int, bit_rate: int, options: dict[str, str]
               ) -> tuple[float, float, float]:
    """(ms of CPU per second of audio, kbps, SNR in dB) of one AAC setting."""
    enc = av.CodecContext.create("aac", "w")
    enc.sample_rate, enc.layout, enc.format = RATE, "stereo" if channels == 2 else "mono", "fltp"
    enc.bit_rate, enc.time_base, enc.options = bit_rate, TB, dict(options)
    enc.open()
    frames = _frames(signal, channels)
    c0 = _cpu()
    packets = [p for f in frames for p in enc.encode(f)] + list(enc.encode(None))
    cpu = _cpu() - c0
    seconds = len(frames) * FRAME / RATE
    dec = av.CodecContext.create("aac", "r")
    dec.extradata = enc.extradata
    decoded = np.concatenate([f.to_ndarray()[0] for p in packets for f in dec.decode(p)])
    out = decoded[FRAME:FRAME + len(frames) * FRAME]  # the encoder's priming skipped
    ref = signal[: out.size]
    noise = float(np.sum((out - ref) ** 2))
    power = float(np.sum(ref ** 2))
    snr = 10 * np.log10(power / noise) if noise > 0 and power > 0 else float("nan")
    kbps = sum(p.size for p in packets) * 8 / seconds / 1000
    return cpu / seconds * 1000, kbps, snr


def opus_packets(signal: np.ndarray, channels: int) -> list[bytes]:
    layout = "stereo" if channels == 2 else "mono"
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = RATE, layout, "s16"
    enc.bit_rate, enc.time_base = 64_000, TB
    enc.open()
    pcm = (np.tile(signal, (channels, 1)).T.reshape(1, -1) * 32767).astype(np.int16)
    out = []
    for start in range(0, signal.size - 960 + 1, 960):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm[:, start * channels:(start + 960) * channels]),
            format="s16", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = RATE, start, TB
        out += [bytes(p) for p in enc.encode(frame)]
    return out


def decode_opus(packets: list[bytes], decoder: str, layout: str) -> float:
    """ms of CPU per second of audio to decode ``packets`` (20 ms each)."""
    dec = av.CodecContext.create(decoder, "r")
    dec.sample_rate, dec.layout = RATE, layout
    c0 = _cpu()
    for data in packets:
        dec.decode(av.Packet(data))
    return (_cpu() - c0) / (len(packets) * 0.02) * 1000


def run() -> list[str]:
    lines = [(f"audio codecs, {SECONDS:.0f} s of each signal (ms CPU per second of audio, "
              "kbps, SNR of the decoded AAC; * = what cloudrec uses)")]
    sigs = signals()
    for channels, bit_rate, use in ((1, 64_000, "source recording of a microphone"),
                                    (2, 128_000, "mix")):
        lines.append(f"  AAC-LC {'stereo' if channels == 2 else 'mono'} {bit_rate // 1000} kbps "
                     f"({use}):")
        for label, options in AAC_SETTINGS:
            cells = []
            for name, signal in sigs.items():
                ms, kbps, snr = encode_aac(signal, channels, bit_rate, options)
                quality = "" if np.isnan(snr) else f", {snr:4.1f} dB"
                cells.append(f"{name} {ms:4.1f} ms {kbps:5.1f} kbps{quality}")
            lines.append(f"    {label:28s} " + " | ".join(cells))
    encoders = sorted(n for n in av.codecs_available if "aac" in n or "fdk" in n)
    usable = []
    for name in encoders:
        try:
            av.Codec(name, "w")
            usable.append(name)
        except Exception:  # noqa: BLE001 - a decoder only
            pass
    lines.append(f"  AAC encoders in this PyAV: {', '.join(usable) or 'none'} "
                 f"(AAC codecs: {', '.join(encoders)})")
    lines.append("  dual-mono stereo (both channels the same): as stereo 128 kbps, mono 64, "
                 "mono 96 *:")
    for name in ("voice", "music", "tone 440"):
        cells = []
        for label, channels, rate in (("stereo", 2, 128_000), ("mono 64", 1, 64_000),
                                      ("mono 96 *", 1, 96_000)):
            ms, kbps, snr = encode_aac(sigs[name], channels, rate, {"aac_coder": "fast"})
            cells.append(f"{label} {ms:4.1f} ms {kbps:5.1f} kbps {snr:4.1f} dB")
        lines.append(f"    {name:12s} " + " | ".join(cells))
    for channels in (1, 2):
        packets = opus_packets(sigs["voice"], channels)
        cells = [f"{decoder}{' *' if decoder == 'opus' else ''} to {layout} "
                 f"{decode_opus(packets, decoder, layout):.2f} ms"
                 for decoder in ("opus", "libopus") for layout in ("mono", "stereo")]
        lines.append(f"  Opus decode, {'stereo' if channels == 2 else 'mono'} voice 64 kbps: "
                     + " | ".join(cells))
    return lines


if __name__ == "__main__":
    print("\n".join(run()), flush=True)
