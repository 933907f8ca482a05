"""HLS building blocks: playlist text, durable files, TS segments without codec contexts,
H.264 NAL helpers and ADTS framing."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from cloudrec.media.audio import AAC_TICKS, OpusToAac, adts_header
from cloudrec.media.codecs import h264
from cloudrec.media.hls import (
    HlsPlaylist,
    SegmentInfo,
    atomic_write_text,
    parse_playlist,
    segment_name,
)
from cloudrec.media.segmenter import TsSegmentWriter, last_pts

SPS = bytes.fromhex("6742c00cda0507e84000000300400000078a3c50aa80")
PPS = bytes.fromhex("68ce0fc8")
IDR = bytes.fromhex("6588840021ff")
SLICE = bytes.fromhex("419a1c0d")


def _seg(tmp_path: Path, i: int, duration: float, disc: bool = False) -> SegmentInfo:
    name = segment_name("app_room_rec_u1", i)
    return SegmentInfo(i, name, tmp_path / name, duration, disc, 100)


def test_playlist_render_and_parse_round_trip(tmp_path: Path) -> None:
    playlist = HlsPlaylist(tmp_path / "app_room_rec_u1.m3u8", 6.0)
    segs = [_seg(tmp_path, 0, 6.0), _seg(tmp_path, 1, 6.4), _seg(tmp_path, 2, 2.25, True)]
    playlist.write(segs)
    text = playlist.path.read_text()
    assert text.splitlines() == [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        "#EXT-X-PLAYLIST-TYPE:EVENT",
        "#EXT-X-TARGETDURATION:7",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXTINF:6.000,",
        "app_room_rec_u1_00000.ts",
        "#EXTINF:6.400,",
        "app_room_rec_u1_00001.ts",
        "#EXT-X-DISCONTINUITY",
        "#EXTINF:2.250,",
        "app_room_rec_u1_00002.ts",
    ]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file
    parsed = playlist.load()
    assert [(s.index, s.name, s.duration, s.discontinuity) for s in parsed] == [
        (s.index, s.name, s.duration, s.discontinuity) for s in segs
    ]
    playlist.write(segs, ended=True)
    assert playlist.path.read_text().endswith("#EXT-X-ENDLIST\n")
    assert len(parse_playlist(playlist.path.read_text(), tmp_path)) == 3


def test_target_duration_rules(tmp_path: Path) -> None:
    playlist = HlsPlaylist(tmp_path / "x.m3u8", 6.0)
    assert playlist.target_duration([]) == 6
    assert playlist.target_duration([_seg(tmp_path, 0, 6.0)]) == 6
    assert playlist.target_duration([_seg(tmp_path, 0, 6.0004)]) == 6  # as listed: 6.000
    assert playlist.target_duration([_seg(tmp_path, 0, 6.02)]) == 7
    assert HlsPlaylist(tmp_path / "y.m3u8", 2.5).target_duration([]) == 3
    assert segment_name("b", 123456) == "b_123456.ts"


def test_atomic_write_replaces(tmp_path: Path) -> None:
    path = tmp_path / "p.m3u8"
    atomic_write_text(path, "one\n")
    atomic_write_text(path, "two\n")
    assert path.read_text() == "two\n" and [p.name for p in tmp_path.iterdir()] == ["p.m3u8"]


def _encoded_h264(n: int = 10) -> list[tuple[bytes, bool]]:
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = 64, 48, "yuv420p"
    enc.time_base = Fraction(1, 15)
    enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    out = []
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(
            np.full((48, 64, 3), i * 20, np.uint8), format="rgb24"
        ).reformat(format="yuv420p")
        frame.pts = i
        out += [(bytes(p), p.is_keyframe) for p in enc.encode(frame)]
    return out


def test_segment_writer_is_durable_and_opens_no_codec(tmp_path: Path) -> None:
    path = tmp_path / segment_name("s", 0)
    writer = TsSegmentWriter(path, video=True, audio=True)
    assert all(s.codec_context is None for s in writer._container.streams)
    aac = OpusToAac()
    aac.silence(48000)
    packets = aac.flush()
    for i, (data, key) in enumerate(_encoded_h264()):
        writer.write("video", data, 90000 + i * 6000, keyframe=key)
    for data, sample in packets:
        writer.write("audio", data, 90000 + sample * 90000 // 48000)
    assert (tmp_path / (path.name + ".part")).exists() and not path.exists()
    size = writer.close()
    assert path.stat().st_size == size > 0 and not (tmp_path / (path.name + ".part")).exists()
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
        assert sum(1 for _ in c.decode(video=0)) == 10
    with av.open(str(path)) as c:
        samples = sum(f.samples for f in c.decode(audio=0))
        assert c.streams.audio[0].codec_context.sample_rate == 48000
        assert c.streams.audio[0].codec_context.channels == 2
    assert abs(samples - 48000) <= 2048
    assert last_pts(path) == max(90000 + 9 * 6000, 90000 + packets[-1][1] * 90000 // 48000
                                 + AAC_TICKS)

    other = TsSegmentWriter(tmp_path / "t.ts", video=True, audio=False)
    other.write("video", _encoded_h264(1)[0][0], 0, keyframe=True)
    with pytest.raises(ValueError):
        other.write("audio", packets[0][0], 0)
    other.abort()
    assert not list(tmp_path.glob("t.ts*"))


def test_nal_helpers() -> None:
    au = b"\x00\x00\x00\x01" + SPS + b"\x00\x00\x01" + PPS + b"\x00\x00\x00\x01" + IDR
    assert h264.split_annexb(au) == [SPS, PPS, IDR]
    assert h264.nal_types(au) == [7, 8, 5] and h264.is_keyframe(au)
    assert not h264.is_keyframe(h264.join_annexb([SLICE]))
    assert h264.parameter_sets(au) == (SPS, PPS)
    # an IDR sent without SPS/PPS gets the cached ones, after a leading AUD
    bare = h264.join_annexb([b"\x09\xf0", IDR])
    cache = h264.ParameterSetCache()
    cache.update(au)
    assert h264.split_annexb(cache.repair(bare)) == [b"\x09\xf0", SPS, PPS, IDR]
    assert cache.repair(au) is au
    assert h264.split_annexb(b"") == [] and h264.split_annexb(b"\x00\x00\x00") == []


def test_adts_header_fields() -> None:
    header = adts_header(100)
    assert len(header) == 7 and header[:2] == b"\xff\xf1"
    frame_length = ((header[3] & 3) << 11) | (header[4] << 3) | (header[5] >> 5)
    assert frame_length == 107
    assert (header[2] >> 2) & 0xF == 3  # 48 kHz
    assert ((header[2] & 1) << 2) | (header[3] >> 6) == 2  # stereo


def test_program_date_time_is_written_and_read_back(tmp_path: Path) -> None:
    """Every segment whose first frame's wall-clock time is known is listed after
    #EXT-X-PROGRAM-DATE-TIME (UTC, to the ms), and a resumed playlist keeps it."""
    from dataclasses import replace

    playlist = HlsPlaylist(tmp_path / "app_room_rec_u1.m3u8", 6.0)
    segs = [replace(_seg(tmp_path, 0, 6.0), date=1_765_000_000.123),
            replace(_seg(tmp_path, 1, 6.0, True), date=1_765_000_007.5), _seg(tmp_path, 2, 2.0)]
    playlist.write(segs)
    lines = playlist.path.read_text().splitlines()
    assert "#EXT-X-PROGRAM-DATE-TIME:2025-12-06T05:46:40.123Z" in lines
    at = lines.index("#EXT-X-PROGRAM-DATE-TIME:2025-12-06T05:46:47.500Z")
    assert lines[at - 1] == "#EXT-X-DISCONTINUITY" and lines[at + 1].startswith("#EXTINF")
    back = playlist.load()
    assert [s.date for s in back] == [pytest.approx(1_765_000_000.123),
                                      pytest.approx(1_765_000_007.5), None]
