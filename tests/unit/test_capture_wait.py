"""``rooms.capture_wait.CaptureTimeWait``: a new publication's first frames wait for capture
times and get them filled in from the first sender report's mapping."""

from __future__ import annotations

import pytest

from cloudrec.mediatypes import EncodedFrame
from cloudrec.rooms.capture_wait import CaptureTimeWait
from cloudrec.rooms.subscription import PublisherInfo

WALL0 = 1_700_000_000.0  # the publisher's capture time of timestamp 0, both tracks


def info(epoch: int, sender_clock: bool = True) -> PublisherInfo:
    return PublisherInfo("u", frozenset({"audio", "video"}), "h264", "opus", 0.0, epoch,
                         sender_clock=sender_clock)


def frame(kind: str, n: int, arrival: float, timed: bool, epoch: int = 1) -> EncodedFrame:
    rate = 90000 if kind == "video" else 48000
    step = rate // 30 if kind == "video" else rate // 50
    ts = n * step
    return EncodedFrame(kind, "h264" if kind == "video" else "opus", b"x", ts, rate,  # type: ignore[arg-type]
                        arrival, n == 0, epoch, WALL0 + ts / rate if timed else None)


def test_frames_wait_for_both_tracks_and_get_their_capture_times() -> None:
    wait: CaptureTimeWait[str] = CaptureTimeWait()
    assert wait.published("u", info(1)) == []
    out, pushed = [], []
    # video's first report after 10 frames, audio's after 30 packets
    for n in range(40):
        for f in (frame("video", n, 100 + n / 30, timed=n >= 10),
                  frame("audio", n, 100.3 + n / 50, timed=n >= 30)):
            pushed.append(f)
            out += wait.push("u", f)
        if n < 30:
            assert out == [], "held until both tracks carry capture times"
    assert len(out) == 2 * 31 + 18  # the 62 held, then each frame as it comes
    assert all(f.wallclock is not None for f in out)
    for f in out:  # filled in from the first timed frame's mapping: exact
        assert f.wallclock == pytest.approx(WALL0 + f.timestamp / f.clock_rate, abs=1e-9)
    assert [(f.kind, f.timestamp) for f in out] == [(f.kind, f.timestamp) for f in pushed], \
        "in the order they came"


def test_timed_from_the_first_frame_is_never_held() -> None:
    wait: CaptureTimeWait[str] = CaptureTimeWait()
    wait.published("u", info(1))
    first = frame("video", 0, 100.0, timed=True)
    assert wait.push("u", first) == [first]


@pytest.mark.parametrize("sender_clock", [False, True])
def test_without_reports_frames_go_on_after_the_hold(sender_clock: bool) -> None:
    wait: CaptureTimeWait[str] = CaptureTimeWait(hold_s=3.0)
    wait.published("u", info(1, sender_clock))
    out = []
    for n in range(100):  # 3.3 s of video, no report
        got = wait.push("u", frame("video", n, 100 + n / 30, timed=False))
        if sender_clock and n < 90:
            assert got == []
        out += got
    assert len(out) == 100 and all(f.wallclock is None for f in out)
    assert [f.timestamp for f in out] == sorted(f.timestamp for f in out)


def test_a_new_publication_or_a_pause_gives_back_what_was_held() -> None:
    wait: CaptureTimeWait[tuple[str, str]] = CaptureTimeWait()
    key = ("room", "u")
    wait.published(key, info(1))
    for n in range(5):
        assert wait.push(key, frame("video", n, 100 + n / 30, timed=False)) == []
    back = wait.published(key, info(2))  # the uid published again before any report
    assert [f.epoch for f in back] == [1] * 5 and all(f.wallclock is None for f in back)
    assert wait.push(key, frame("audio", 0, 101.0, timed=False, epoch=2)) == []
    assert [(k, f.epoch) for k, f in wait.release_all()] == [(key, 2)]
    later = frame("audio", 1, 101.02, timed=False, epoch=2)
    assert wait.push(key, later) == [later], "released: no second wait for the publication"
