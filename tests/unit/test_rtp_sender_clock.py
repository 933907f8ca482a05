"""Sender reports (NTP ↔ RTP) read by the receiver, and the capture times they give frames."""

from __future__ import annotations

import struct

import pytest

from cloudrec.media.mix.inputs import SenderSync, TrackClock
from cloudrec.mediatypes import EncodedFrame
from cloudrec.relay import wire
from cloudrec.rtp import rtcp
from cloudrec.rtp.jitter import TimestampUnwrap
from cloudrec.rtp.receiver import CodecInfo, LeanReceiver

UNIX = 1_767_000_000.25  # a wall-clock time, seconds since the epoch
SSRC, PT = 0x1234ABCD, 111


def sender_report(ssrc: int, wall: float, rtp_ts: int) -> bytes:
    ntp = wall + rtcp.NTP_TO_UNIX
    msw = int(ntp)
    lsw = round((ntp - msw) * 2**32)
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, msw, lsw, rtp_ts & 0xFFFFFFFF, 10,
                       1000)


def rtp(seq: int, ts: int, payload: bytes = b"\xfc\x00\x01") -> bytes:
    return struct.pack("!BBHII", 0x80, PT, seq & 0xFFFF, ts & 0xFFFFFFFF, SSRC) + payload


def test_sender_report_gives_ntp_as_unix_time_and_rtp_time() -> None:
    packet = sender_report(SSRC, UNIX, 0xFFFFFF00) + rtcp.pli(1, 2)
    (report,) = rtcp.sender_times(packet)
    assert report.ssrc == SSRC and report.rtp_timestamp == 0xFFFFFF00
    assert report.wallclock == pytest.approx(UNIX, abs=1e-6)
    assert list(rtcp.sender_reports(packet)) == [(SSRC, report.lsr)]


def test_unwrap_peek_goes_the_near_way_round_32_bits() -> None:
    unwrap = TimestampUnwrap()
    assert unwrap.peek(5) is None
    assert unwrap(0xFFFFFC40) == 0  # 960 before the wrap
    assert unwrap.peek(0x00000000) == 960  # after the wrap, not 4 billion back
    assert unwrap.peek(0xFFFFF880) == -960  # a report a little before the first frame
    assert unwrap(0x000003C0) == 1920
    assert unwrap.peek(0xFFFFFC40) == 0


class Rx:
    def __init__(self) -> None:
        self.frames: list[tuple[str, int, float | None]] = []
        self.clock: dict[str, float | None] = {}
        self.rx = LeanReceiver([CodecInfo("audio", "opus", PT, 48000)], self.on_frame,
                               rtcp_ssrc=1, on_sender_clock=self.on_clock)
        self.port = self.rx.plain_port()

    def on_frame(self, kind: str, name: str, rate: int, data: bytes, ts: int) -> None:
        wall0 = self.clock.get(kind)
        self.frames.append((kind, ts, None if wall0 is None else wall0 + ts / rate))

    def on_clock(self, kind: str, wall0: float | None) -> None:
        self.clock[kind] = wall0

    def take(self, data: bytes) -> None:
        self.port(data, 0.0, lambda *_: None, None)


def test_a_report_before_any_media_times_the_frames_after_it_across_the_wrap() -> None:
    rx = Rx()
    first = 0xFFFFFFFF - 960 * 3 + 1  # the RTP clock wraps after the third packet
    rx.take(sender_report(SSRC, UNIX, first + 960 * 5))  # the report names a later instant
    assert rx.clock == {}  # no stream yet: nothing to time
    for i in range(8):
        rx.take(rtp(100 + i, first + 960 * i))
    assert [ts for _, ts, _ in rx.frames] == [960 * i for i in range(8)]
    assert rx.frames[0][2] is None  # the first frame starts the stream, then the clock is known
    for i, (_, _, wall) in enumerate(rx.frames[1:], start=1):
        assert wall == pytest.approx(UNIX + (i - 5) * 0.020, abs=1e-6)


def test_a_later_report_moves_the_clock_and_a_new_stream_clears_it() -> None:
    rx = Rx()
    rx.take(rtp(1, 1000))
    rx.take(sender_report(SSRC, UNIX, 1000 + 48000))  # 1 s after the first frame
    assert rx.clock["audio"] == pytest.approx(UNIX - 1.0, abs=1e-6)
    rx.take(sender_report(SSRC, UNIX + 1.0005, 1000 + 96000))  # the sender's clock ran fast
    assert rx.clock["audio"] == pytest.approx(UNIX - 1.0 + 0.0005, abs=1e-6)
    # a report made while the sender ran 80 ms late (its NTP time taken when it sent): the
    # least delayed report stands, allowed to rise 1 ms per second
    rx.take(sender_report(SSRC, UNIX + 2.081, 1000 + 144000))
    assert rx.clock["audio"] == pytest.approx(UNIX - 1.0 + 0.0015, abs=1e-4)
    rx.take(struct.pack("!BBHII", 0x80, PT, 50, 7, SSRC + 1) + b"\xfc")  # another SSRC
    assert rx.clock["audio"] is None and rx.frames[-1] == ("audio", 0, None)


def test_the_relay_carries_the_capture_time() -> None:
    plain = wire.frame_message(3, True, False, 90000, 1500, b"data")
    timed = wire.frame_message(3, True, False, 90000, 1500, b"data", UNIX)
    length, kind, slot, flags, ts, age = wire.FRAME_HEAD.unpack_from(plain)
    assert (length, flags & wire.FLAG_WALL, plain[wire.FRAME_HEAD.size:]) == (20, 0, b"data")
    length, kind, slot, flags, ts, age = wire.FRAME_HEAD.unpack_from(timed)
    assert (length, slot, ts, age) == (28, 3, 90000, 1500) and flags & wire.FLAG_WALL
    (wall,) = wire.WALL.unpack_from(timed, wire.FRAME_HEAD.size)
    assert wall == UNIX and timed[wire.FRAME_HEAD.size + 8:] == b"data"


def frame(kind: str, media_s: float, arrival: float, wall: float | None) -> EncodedFrame:
    rate = 48000 if kind == "audio" else 90000
    return EncodedFrame(kind, "opus" if kind == "audio" else "h264", b"", round(media_s * rate),
                        rate, arrival, True, 1, wall)


def test_a_mix_input_puts_both_tracks_on_the_sender_clock() -> None:
    """Audio sent 300 ms after its capture: on arrival it lands 300 ms late; on the sender's
    clock both tracks meet, at the later track's delay."""
    sync, vclock, aclock = SenderSync(), TrackClock(), TrackClock()
    placed: dict[str, list[float]] = {"audio": [], "video": []}
    for i in range(50):
        t = i * 0.02
        for kind, clock, delay in (("video", vclock, 0.01), ("audio", aclock, 0.31)):
            f = frame(kind, t + (5 if kind == "audio" else 7), 100 + t + delay, UNIX + t)
            placed[kind].append(sync.wall(f, clock))
    for i in range(1, 50):  # from the first frame on which both tracks have a capture time
        assert placed["audio"][i] == pytest.approx(100.31 + i * 0.02, abs=1e-6)
        assert placed["video"][i] == pytest.approx(100.31 + i * 0.02, abs=1e-6)

    arrival = SenderSync()  # no wallclock: each track on its own arrival
    v = arrival.wall(frame("video", 7, 100.01, None), TrackClock())
    a = arrival.wall(frame("audio", 5, 100.31, None), TrackClock())
    assert a - v == pytest.approx(0.3)


def test_a_mix_input_s_queued_pictures_move_with_its_sender_clock() -> None:
    """Audio sent 300 ms after its capture holds each picture back 300 ms; when its frames come
    280 ms later still for a moment (a busy node), the sound placed from then on is 280 ms
    later, and so are the pictures already waiting to show: the flash and its beep stay
    together (they were 281 ms apart in a mix once, on a loaded CI box)."""
    from cloudrec.media.mix.inputs import LATENCY_S, MixedStats, MixInputs
    from cloudrec.media.mix.mixer import AudioMixer
    from tests.unit.test_media_source import FPS, h264_aus, opus_packets

    key = ("room", "flash")
    inputs = MixInputs(AudioMixer(), MixedStats())
    inputs.set_keys([key], [key])
    inputs.origin = 100.0
    video, audio = h264_aus(2.0), opus_packets(2.0)

    def frame_of(kind: str, i: int, late: float = 0.0) -> EncodedFrame:
        t = i / FPS if kind == "video" else i * 0.02
        data = video[i] if kind == "video" else audio[i]
        rate = 90000 if kind == "video" else 48000
        arrival = 100 + t + (0.01 if kind == "video" else 0.31) + late
        return EncodedFrame(kind, "h264" if kind == "video" else "opus", data,
                            round(t * rate), rate, arrival, i == 0, 1, UNIX + t)

    # 1 s of pictures and the sound up to 0.7 s (300 ms behind them), in arrival order
    frames = [frame_of("video", i) for i in range(15)] + [frame_of("audio", j) for j in range(35)]
    for f in sorted(frames, key=lambda f: f.arrival):
        inputs.push(key, f)
    last = 100 + 14 / FPS + 0.31 + LATENCY_S  # when the last picture shows, the delay unchanged
    inputs.show(last - 0.02)
    before = inputs.current(key, None)
    assert before is not None
    inputs.push(key, frame_of("audio", 35, late=0.28))  # the sound comes 280 ms later
    inputs.show(last + 0.01)
    assert inputs.current(key, None) is before  # the last picture waits for its sound
    inputs.show(last + 0.28 + 0.01)
    assert inputs.current(key, None) is not before
