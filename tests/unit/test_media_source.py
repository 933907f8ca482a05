"""SourceHlsRecorder end to end: synthetic publishers in, HLS out, checked by an independent decode.

Inputs are generated with PyAV (libx264 baseline, libopus, libvpx) and wrapped in EncodedFrames
with RTP-like timestamps and plausible arrival times from a fake clock; nothing sleeps.
"""

from __future__ import annotations

import functools
import math
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from cloudrec.media.codecs import h264
from cloudrec.media.hls import SegmentInfo
from cloudrec.media.source import SourceHlsRecorder
from cloudrec.mediatypes import EncodedFrame

FPS = 15
W, H = 320, 240
T0 = 5000.0  # arrival clock at the publisher's first frame


# -- synthetic publishers -------------------------------------------------------------------


def _picture(i: int) -> av.VideoFrame:
    img = np.full((H, W, 3), 40, np.uint8)
    x = (i * 7) % (W - 32)
    img[60:120, x : x + 32] = (255, 200, 0)
    img[:, :, 2] = (i * 3) % 256
    return av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")


def _x264(gop: int) -> av.VideoCodecContext:
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = W, H, "yuv420p"
    enc.time_base, enc.framerate = Fraction(1, FPS), Fraction(FPS)
    enc.gop_size = gop
    enc.options = {"profile": "baseline", "preset": "ultrafast", "tune": "zerolatency",
                   "forced-idr": "1", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
    return enc


@functools.cache
def h264_aus(seconds: float, gop: int = 2 * FPS) -> tuple[bytes, ...]:
    """Annex B access units of a 320x240@15 baseline stream, IDR every ``gop`` frames."""
    enc = _x264(gop)
    out: list[bytes] = []
    for i in range(round(seconds * FPS)):
        frame = _picture(i)
        frame.pts = i
        out += [bytes(p) for p in enc.encode(frame)]
    out += [bytes(p) for p in enc.encode(None)]
    return tuple(out)


@functools.cache
def vp8_frames(seconds: float) -> tuple[bytes, ...]:
    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt = W, H, "yuv420p"
    enc.time_base, enc.framerate, enc.bit_rate = Fraction(1, FPS), Fraction(FPS), 500_000
    enc.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    out: list[bytes] = []
    for i in range(round(seconds * FPS)):
        frame = _picture(i)
        frame.pts = i
        out += [bytes(p) for p in enc.encode(frame)]
    out += [bytes(p) for p in enc.encode(None)]
    return tuple(out)


@functools.cache
def opus_packets(seconds: float) -> tuple[bytes, ...]:
    """20 ms Opus packets (960 samples at 48 kHz) of a 440 Hz tone."""
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = 48000, "stereo", "s16"
    enc.time_base, enc.bit_rate = Fraction(1, 48000), 64000
    n = round(seconds * 48000)
    tone = (np.sin(2 * np.pi * 440 * np.arange(n) / 48000) * 8000).astype(np.int16)
    out: list[bytes] = []
    for i in range(0, n, 960):
        chunk = np.repeat(tone[i : i + 960], 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48000, i
        out += [bytes(p) for p in enc.encode(frame)]
    return tuple(out[: n // 960])


def publish(
    seconds: float = 8.0,
    *,
    audio: bool = True,
    video: bool = True,
    codec: str = "h264",
    gop: int = 2 * FPS,
    pause_at: float | None = None,
    pause_s: float = 3.0,
    epoch_at: float | None = None,
    video_off: tuple[float, float] | None = None,
    lose_audio: range = range(0),
) -> list[EncodedFrame]:
    """Frames of one publisher in arrival order. Media time t is sent at T0 + t (+ delays)."""
    frames: list[EncodedFrame] = []

    def add(kind: str, codec: str, data: bytes, t: float, rate: int, key: bool, delay: float):
        shift = pause_s if pause_at is not None and t >= pause_at else 0.0
        epoch, origin = 1, 0.0
        if epoch_at is not None and t >= epoch_at:
            epoch, origin = 2, epoch_at
        ts = round((t - origin + shift) * rate)
        arrival = T0 + t + shift + delay + (0.1 if epoch == 2 else 0.0)
        frames.append(EncodedFrame(kind, codec, data, ts, rate, arrival, key, epoch))

    if video:
        units = h264_aus(seconds, gop) if codec == "h264" else vp8_frames(seconds)
        for i, data in enumerate(units):
            t = i / FPS
            if video_off and video_off[0] <= t < video_off[1]:
                continue
            key = h264.is_keyframe(data) if codec == "h264" else not data[0] & 1
            add("video", codec, data, t, 90000, key, 0.030 + 0.004 * (i % 3))
    if audio:
        for j, data in enumerate(opus_packets(seconds)):
            if j not in lose_audio:
                add("audio", "opus", data, j * 0.02, 48000, False, 0.025 + 0.003 * (j % 4))
    frames.sort(key=lambda f: f.arrival)
    return frames


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def record(tmp_path: Path, frames: list[EncodedFrame], *, name: str = "10034_room_rec_u1",
           close: bool = True, **kwargs) -> SourceHlsRecorder:
    clock = FakeClock()
    kwargs.setdefault("audio", any(f.kind == "audio" for f in frames))
    kwargs.setdefault("video", any(f.kind == "video" for f in frames))
    rec = SourceHlsRecorder(tmp_path, name, clock=clock, **kwargs)
    for frame in frames:
        clock.now = frame.arrival
        rec.push(frame)
    if close:
        rec.close()
    return rec


# -- independent checks ---------------------------------------------------------------------


def probe(path: Path) -> dict:
    """Decode a playlist or a segment: frame counts, sizes, first/last PTS per kind."""
    info: dict = {"video": 0, "audio_samples": 0, "size": None, "vpts": [], "apts": [],
                  "first_key": None, "codec": None, "has_audio": False, "has_video": False}
    with av.open(str(path)) as c:
        info["has_audio"] = bool(c.streams.audio)
        info["has_video"] = bool(c.streams.video)
        for packet in c.demux():
            if packet.size == 0:
                continue
            kind = packet.stream.type
            if kind == "video":
                if info["first_key"] is None:
                    info["first_key"] = packet.is_keyframe
                info["codec"] = packet.stream.codec_context.name
                info["vpts"].append(packet.pts * packet.time_base)
                for f in packet.decode():
                    info["video"] += 1
                    info["size"] = (f.width, f.height)
            elif kind == "audio":
                info["apts"].append(packet.pts * packet.time_base)
                for f in packet.decode():
                    info["audio_samples"] += f.samples
    return info


def video_duration(info: dict) -> float:
    return float(max(info["vpts"]) - min(info["vpts"])) + 1 / FPS


def playlist_lines(rec: SourceHlsRecorder) -> list[str]:
    return rec.playlist_path.read_text().splitlines()


def assert_monotonic(segments: list[SegmentInfo]) -> None:
    last_v = last_a = -math.inf
    for seg in segments:
        info = probe(seg.path)
        assert info["first_key"] in (None, True), f"{seg.name} does not start on a keyframe"
        for key, last in (("vpts", last_v), ("apts", last_a)):
            pts = info[key]
            rising = all(b > a for a, b in zip(pts, pts[1:], strict=False))
            assert rising, f"{seg.name} {key} not rising"
            assert not pts or pts[0] > last
        last_v = max(info["vpts"], default=last_v)
        last_a = max(info["apts"], default=last_a)


# -- tests ----------------------------------------------------------------------------------


def test_audio_video_remux(tmp_path: Path) -> None:
    announced: list[tuple[SegmentInfo, str]] = []
    rec = SourceHlsRecorder(
        tmp_path, "10034_room_rec_u1", audio=True, video=True, clock=FakeClock(),
        on_segment=lambda s: announced.append((s, s.path.parent.joinpath(
            "10034_room_rec_u1.m3u8").read_text())),
    )
    for frame in publish(8.0):
        rec.push(frame)
        assert "#EXT-X-ENDLIST" not in rec.playlist_path.read_text()
    assert [s.duration for s in rec.segments] == [6.0]
    last = rec.close()
    assert last is not None and last.name == "10034_room_rec_u1_00001.ts"
    lines = playlist_lines(rec)
    assert lines[:5] == ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-PLAYLIST-TYPE:EVENT",
                         "#EXT-X-TARGETDURATION:6", "#EXT-X-MEDIA-SEQUENCE:0"]
    assert lines[-1] == "#EXT-X-ENDLIST" and "#EXTINF:6.000," in lines
    assert "#EXT-X-DISCONTINUITY" not in lines
    # announced only once the playlist lists the segment (and the file is complete)
    assert [s.name for s, _ in announced] == [s.name for s in rec.segments]
    for seg, text in announced:
        assert seg.name in text and seg.path.stat().st_size == seg.size
    assert not list(tmp_path.glob("*.part"))

    info = probe(rec.playlist_path)
    assert info["size"] == (W, H) and info["has_audio"] and info["video"] == 8 * FPS
    assert abs(video_duration(info) - 8.0) < 0.1
    assert abs(info["audio_samples"] / 48000 - 8.0) < 0.1
    assert abs(rec.duration - 8.0) < 0.1
    # audio and video of the publisher start together (both anchored on arrival)
    assert 0 <= float(min(info["apts"]) - min(info["vpts"])) < 0.06  # none before the IDR
    assert_monotonic(rec.segments)

    # remux proof: SPS bytes as sent, and no video encoder was ever opened
    sps_in, _ = h264.parameter_sets(h264_aus(8.0)[0])
    with av.open(str(rec.segments[0].path)) as c:
        first = next(p for p in c.demux(video=0) if p.size)
        sps_out, _ = h264.parameter_sets(bytes(first))
    assert sps_in is not None and sps_out == sps_in
    assert rec.stats.encoders == ["aac"] and not rec.stats.video_transcoded
    assert rec.stats.frames_written > 0 and rec.stats.frames_in == len(publish(8.0))

    if shutil.which("ffprobe"):
        out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name",
                              "-of", "csv=p=0", str(rec.playlist_path)],
                             capture_output=True, text=True, check=True).stdout
        assert "h264" in out and "aac" in out


def test_video_only_and_audio_only(tmp_path: Path) -> None:
    vrec = record(tmp_path / "v", publish(8.0, audio=False), audio=False, video=True)
    info = probe(vrec.playlist_path)
    assert info["has_video"] and not info["has_audio"] and info["size"] == (W, H)
    assert abs(video_duration(info) - 8.0) < 0.1
    assert vrec.stats.encoders == []

    arec = record(tmp_path / "a", publish(8.0, video=False), audio=True, video=False)
    info = probe(arec.playlist_path)
    assert info["has_audio"] and not info["has_video"]
    assert abs(info["audio_samples"] / 48000 - 8.0) < 0.1
    assert abs(arec.duration - 8.0) < 0.1
    durations = [s.duration for s in arec.segments]
    assert len(durations) == 2 and 5.9 < durations[0] <= 6.0
    assert "#EXT-X-TARGETDURATION:6" in playlist_lines(arec)
    assert_monotonic(arec.segments)


def test_pause_gives_discontinuity(tmp_path: Path) -> None:
    asked: list[float] = []
    clock = FakeClock()
    rec = SourceHlsRecorder(tmp_path, "p", audio=True, video=True, clock=clock,
                            request_keyframe=lambda: asked.append(clock.now))
    for frame in publish(8.0, pause_at=3.0, pause_s=3.0):
        clock.now = frame.arrival
        rec.push(frame)
    rec.close()
    segs = rec.segments
    # cut at the last frame before the pause; after it, wait for the next IDR (asked for)
    assert [round(s.duration, 1) for s in segs] == [3.0, 4.0]
    assert [s.discontinuity for s in segs] == [False, True]
    assert asked and asked[0] >= T0 + 6.0  # asked once video came back without an IDR
    target = int(next(x for x in playlist_lines(rec) if "TARGETDURATION" in x).split(":")[1])
    assert all(s.duration <= target + 1 for s in segs)
    assert playlist_lines(rec).count("#EXT-X-DISCONTINUITY") == 1
    assert_monotonic(segs)


def test_new_epoch_reanchors(tmp_path: Path) -> None:
    rec = record(tmp_path, publish(8.0, epoch_at=4.0))
    segs = rec.segments
    assert [s.discontinuity for s in segs] == [False, True]
    assert abs(segs[0].duration - 4.0) < 0.05 and abs(segs[1].duration - 4.0) < 0.1
    assert_monotonic(segs)
    info = probe(rec.playlist_path)
    assert info["video"] == 8 * FPS
    assert abs(info["audio_samples"] / 48000 - 8.0) < 0.15


def test_audio_loss_filled_and_camera_off(tmp_path: Path) -> None:
    # 5 lost Opus packets (100 ms): filled with silence, audio keeps time
    rec = record(tmp_path / "loss", publish(8.0, lose_audio=range(100, 105)))
    info = probe(rec.playlist_path)
    assert abs(info["audio_samples"] / 48000 - 8.0) < 0.1
    assert [s.discontinuity for s in rec.segments] == [False, False]

    # video stops for 3 s while audio goes on: audio leads meanwhile, nothing stretches
    rec = record(tmp_path / "off", publish(8.0, video_off=(2.0, 4.0)))
    segs = rec.segments
    assert [s.discontinuity for s in segs] == [False, True, True]
    assert abs(segs[0].duration - 2.0) < 0.05 and max(s.duration for s in segs) < 6.5
    info = probe(rec.playlist_path)
    assert abs(info["audio_samples"] / 48000 - 8.0) < 0.1  # no audio lost
    assert info["video"] == 6 * FPS
    assert_monotonic(segs)


def test_keyframe_requests_drive_cuts(tmp_path: Path) -> None:
    """A live encoder with no periodic IDR that answers requests: cuts land near 6 s."""
    enc = _x264(gop=1000)
    want_idr = [False]
    clock = FakeClock()
    rec = SourceHlsRecorder(tmp_path, "k", audio=False, video=True, clock=clock,
                            request_keyframe=lambda: want_idr.__setitem__(0, True))
    for i in range(14 * FPS):
        picture = _picture(i)
        picture.pts = i
        if want_idr[0]:
            picture.pict_type = av.video.frame.PictureType.I
            want_idr[0] = False
        for p in enc.encode(picture):
            clock.now = T0 + i / FPS + 0.03
            rec.push(EncodedFrame("video", "h264", bytes(p), i * 6000, 90000, clock.now,
                                  p.is_keyframe, 1))
    rec.close()
    durations = [s.duration for s in rec.segments]
    assert len(durations) == 3 and all(5.6 <= d <= 6.2 for d in durations[:2])
    assert rec.stats.keyframe_requests == 2
    assert_monotonic(rec.segments)


def test_keyframe_request_retried_when_ignored(tmp_path: Path) -> None:
    asked: list[float] = []
    clock = FakeClock()
    rec = SourceHlsRecorder(tmp_path, "r", audio=False, video=True, clock=clock,
                            request_keyframe=lambda: asked.append(clock.now))
    for frame in publish(8.0, audio=False, gop=1000):
        clock.now = frame.arrival
        rec.push(frame)
    rec.close()
    # asked at ~5.7 s, then again every ~1 s while no IDR came; one long segment
    assert [round(a - asked[0]) for a in asked] == [0, 1, 2]
    assert len(rec.segments) == 1 and abs(rec.segments[0].duration - 8.0) < 0.1


def test_resume_after_restart(tmp_path: Path) -> None:
    first = record(tmp_path, publish(5.0), segment_seconds=2.0, close=False)
    assert [s.index for s in first.segments] == [0, 1]  # the third one was open at the "crash"
    old_end = max(probe(first.segments[-1].path)["vpts"])
    # the playlist left by the crash is valid: no ENDLIST, every listed segment complete
    # (FFmpeg's hls demuxer would poll a live playlist for more, so decode the segments)
    assert "#EXT-X-ENDLIST" not in playlist_lines(first)
    assert sum(probe(s.path)["video"] for s in first.segments) == 4 * FPS
    del first

    rec = record(tmp_path, publish(4.0), segment_seconds=2.0, resume=True)
    segs = rec.segments
    assert [s.index for s in segs] == [0, 1, 2, 3]
    assert [s.discontinuity for s in segs] == [False, False, True, False]
    lines = playlist_lines(rec)
    assert lines.count("#EXT-X-DISCONTINUITY") == 1 and lines[-1] == "#EXT-X-ENDLIST"
    assert [x for x in lines if x.endswith(".ts")] == [f"10034_room_rec_u1_{i:05d}.ts"
                                                       for i in range(4)]
    assert not list(tmp_path.glob("*.part"))
    assert min(probe(segs[2].path)["vpts"]) > old_end  # timestamps keep rising
    info = probe(rec.playlist_path)
    assert info["video"] == 4 * FPS + 4 * FPS  # 2 old segments + the new recording


def test_vp8_is_transcoded_to_h264(tmp_path: Path) -> None:
    rec = record(tmp_path, publish(4.0, codec="vp8"), segment_seconds=2.0)
    assert rec.stats.video_transcoded and "libx264" in rec.stats.encoders
    durations = [s.duration for s in rec.segments]
    assert len(durations) == 2 and all(1.95 <= d <= 2.1 for d in durations)
    info = probe(rec.playlist_path)
    assert info["codec"] == "h264" and info["size"] == (W, H) and info["video"] == 4 * FPS
    assert abs(video_duration(info) - 4.0) < 0.1
    assert_monotonic(rec.segments)


def test_resume_elsewhere_numbers_on_from_what_the_task_store_knows(tmp_path: Path) -> None:
    """A node that resumes a recording without its playlist (the dead node's own disk) never
    reuses a name: it numbers on from the reserved sequence, after a discontinuity."""
    from cloudrec.media.segmenter import reserve_sequence

    reserve_sequence(tmp_path, "10034_room_rec_u1", 3)
    rec = record(tmp_path, publish(4.0), segment_seconds=2.0, resume=True)
    assert [s.index for s in rec.segments] == [3, 4]
    assert [s.discontinuity for s in rec.segments] == [True, False]
    lines = playlist_lines(rec)
    assert lines.count("#EXT-X-DISCONTINUITY") == 1
    assert [x for x in lines if x.endswith(".ts")] == ["10034_room_rec_u1_00003.ts",
                                                       "10034_room_rec_u1_00004.ts"]
    assert all(s.date is not None for s in rec.segments)  # the room timeline
    again = record(tmp_path, publish(2.0), segment_seconds=2.0, resume=True)
    assert [s.index for s in again.segments] == [3, 4, 5]  # read back by their names


def test_audio_behind_the_last_pictures(tmp_path: Path) -> None:
    """What a stop waits for: the open segment's audio short of its last picture, while the
    publisher's audio flows (not when it stopped, not while paused, not without video)."""
    frames = publish(3.0)
    key = next(f for f in frames if f.kind == "video" and f.keyframe and f.timestamp >= 2 * 90000)
    before = [f for f in frames if f.arrival <= key.arrival and (
        f.kind == "video" or f.timestamp < 2 * 48000)]
    rec = record(tmp_path / "av", before, close=False, segment_seconds=2.0)
    assert rec.audio_behind  # the key frame opened a segment; its audio has not come
    for f in frames:
        if f.kind == "audio" and 2 * 48000 <= f.timestamp < 2.1 * 48000:
            rec.push(f)
    assert not rec.audio_behind
    rec.pause(key.arrival + 0.2)
    assert not rec.audio_behind

    mute = [f for f in publish(3.0) if f.kind == "video" or f.timestamp < 48000 // 2]
    muted = record(tmp_path / "mute", [f for f in mute if f.arrival <= key.arrival], close=False,
                   segment_seconds=2.0)
    assert not muted.audio_behind  # no audio for 1.5 s: it stopped, nothing to wait for
    video = record(tmp_path / "v", [f for f in before if f.kind == "video"], close=False,
                   audio=False, segment_seconds=2.0)
    assert not video.audio_behind
