"""A source recording places audio by the publisher's capture times (sender reports) when its
frames carry them: audio that arrives 300 ms after its video still lands with it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cloudrec.mediatypes import EncodedFrame
from tests.unit.test_media_source import probe, publish, record

UNIX = 1_767_000_000.0
LATE_S = 0.3


def late_audio(frames: list[EncodedFrame], reports_from: float | None) -> list[EncodedFrame]:
    """``frames`` with the audio arriving ``LATE_S`` later, and (from ``reports_from`` s of
    media time on) every frame's capture time on the publisher's clock."""
    out = []
    for f in frames:
        t = f.timestamp / f.clock_rate
        wall = UNIX + t if reports_from is not None and t >= reports_from else None
        late = LATE_S if f.kind == "audio" else 0.0
        out.append(dataclasses.replace(f, arrival=f.arrival + late, wallclock=wall))
    return sorted(out, key=lambda f: f.arrival)


def ends(path: Path) -> tuple[float, float, float]:
    """(first audio - first video, last audio - last video, audio seconds) of a recording."""
    info = probe(path)
    first = float(min(info["apts"]) - min(info["vpts"]))
    last = float(max(info["apts"]) + 1024 / 48000 - max(info["vpts"]) - 1 / 15)
    return first, last, info["audio_samples"] / 48000


@pytest.mark.parametrize("reports_from", [None, 0.0, 2.0])
def test_late_audio_lines_up_once_frames_carry_capture_times(
        tmp_path: Path, reports_from: float | None) -> None:
    rec = record(tmp_path, late_audio(publish(6.0), reports_from))
    first, last, seconds = ends(rec.playlist_path)
    if reports_from is None:  # arrival only: the audio is late all along
        assert last == pytest.approx(LATE_S, abs=0.05)
    elif reports_from == 0.0:  # from the first frame: in place from the start
        assert abs(first) < 0.03 and abs(last) < 0.03 and seconds > 5.9
    else:  # anchored on arrival, then moved back by skipping ~300 ms of audio (to within
        # RESYNC_TICKS, 20 ms, measured here to whole AAC frames of 21 ms)
        assert abs(last) < 0.045 and seconds == pytest.approx(6.0 - LATE_S, abs=0.06)
