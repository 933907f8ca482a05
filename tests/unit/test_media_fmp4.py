"""Opus kept as Opus: a source recording as HLS with fMP4 segments, H.264 and Opus untouched."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from cloudrec.media.hls import parse_playlist
from tests.unit.test_media_source import FPS, opus_packets, probe, publish, record

NAME = "10034_room_rec_u1"


def ffprobe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                          "stream=codec_name,channels:format=duration", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_opus_kept_as_opus(tmp_path: Path) -> None:
    rec = record(tmp_path, publish(8.0), audio_codec="opus", segment_seconds=2.0)
    lines = rec.playlist_path.read_text().splitlines()
    assert "#EXT-X-VERSION:7" in lines and lines[-1] == "#EXT-X-ENDLIST"
    assert lines.count(f'#EXT-X-MAP:URI="{NAME}_init.mp4"') == 1
    names = [x for x in lines if not x.startswith("#")]
    assert names == [f"{NAME}_{i:05d}.m4s" for i in range(4)]
    assert (tmp_path / f"{NAME}_init.mp4").exists() and not list(tmp_path.glob("*.part"))
    assert rec.stats.encoders == [] and not rec.stats.video_transcoded  # nothing encoded
    assert [s.init for s in rec.segments] == [f"{NAME}_init.mp4"] * 4
    info = probe(rec.playlist_path)
    assert info["video"] == 8 * FPS and abs(info["audio_samples"] / 48000 - 8.0) < 0.1
    # the Opus packets are those sent, byte for byte
    import av
    with av.open(str(rec.playlist_path)) as c:
        got = [bytes(p) for p in c.demux(audio=0) if p.size]
    sent = list(opus_packets(8.0))
    assert got and all(p in sent for p in got) and len(got) >= len(sent) - 5
    if shutil.which("ffprobe"):
        meta = ffprobe(rec.playlist_path)
        codecs = {s["codec_name"] for s in meta["streams"]}
        assert codecs == {"h264", "opus"}
        assert abs(float(meta["format"]["duration"]) - 8.0) < 0.2


def test_opus_audio_only_and_resume(tmp_path: Path) -> None:
    first = record(tmp_path, publish(5.0, video=False), audio_codec="opus",
                   segment_seconds=2.0, close=False)
    assert len(first.segments) >= 2
    del first
    rec = record(tmp_path, publish(3.0, video=False), audio_codec="opus",
                 segment_seconds=2.0, resume=True)
    segs = parse_playlist(rec.playlist_path.read_text(), tmp_path)
    assert any(s.discontinuity for s in segs) and all(s.init for s in segs)
    info = probe(rec.playlist_path)
    assert not info["has_video"] and info["audio_samples"] > 48000 * 6
    starts = [min(probe_seg(tmp_path, s)) for s in segs]
    assert starts == sorted(starts)  # timestamps keep rising across the resume


def probe_seg(directory: Path, seg) -> list:
    joined = directory / f"joined_{seg.index}.mp4"
    joined.write_bytes((directory / seg.init).read_bytes() + seg.path.read_bytes())
    return probe(joined)["apts"]


def test_unknown_audiocodec_is_refused() -> None:
    from cloudrec.errors import InvalidParameter
    from cloudrec.models import StartRecordRequest, parse_request
    from tests.unit.test_models import APPID, SOURCE, START

    ok = parse_request(StartRecordRequest, SOURCE | {"outputs": {"audiocodec": "opus"}}, APPID)
    assert ok.outputs is not None and ok.outputs.audiocodec == "opus"
    default = parse_request(StartRecordRequest, SOURCE | {"outputs": {"mp4": True}}, APPID)
    assert default.outputs is not None and default.outputs.audiocodec == "aac"
    for body in (SOURCE | {"outputs": {"audiocodec": "mp3"}},
                 SOURCE | {"outputs": {"audiocodec": 1}},
                 START | {"outputs": {"audiocodec": "opus"}}):
        with pytest.raises(InvalidParameter) as info:
            parse_request(StartRecordRequest, body, APPID)
        assert info.value.code == 2101 and "outputs.audiocodec" in str(info.value)


def test_mp4_of_an_opus_recording(tmp_path: Path) -> None:
    import contextlib

    from cloudrec.media.mp4 import Mp4Source, remux_to_mp4

    rec = record(tmp_path, publish(6.0), audio_codec="opus", segment_seconds=2.0)

    @contextlib.contextmanager
    def opener(name: str):
        path = tmp_path / name
        yield path if path.exists() else None

    sources = [Mp4Source(s.name, s.discontinuity, s.init) for s in rec.segments]
    info = remux_to_mp4(sources, tmp_path / "out.mp4", opener)
    assert info.skipped == () and abs(info.duration - 6.0) < 0.2
    assert not list(tmp_path.glob(".join-*"))
    if shutil.which("ffprobe"):
        meta = ffprobe(tmp_path / "out.mp4")
        assert {s["codec_name"] for s in meta["streams"]} == {"h264", "opus"}


def test_opus_pause_and_camera_off(tmp_path: Path) -> None:
    rec = record(tmp_path / "pause", publish(8.0, pause_at=3.0, pause_s=3.0),
                 audio_codec="opus")
    assert [s.discontinuity for s in rec.segments] == [False, True]
    lines = rec.playlist_path.read_text().splitlines()
    assert lines.count("#EXT-X-DISCONTINUITY") == 1 and lines.count(
        f'#EXT-X-MAP:URI="{NAME}_init.mp4"') == 1

    # video stops while audio goes on: the audio-led segment keeps the tracks of the section,
    # its video the last key frame, held until the pictures come back (test_opus_hls plays it)
    rec = record(tmp_path / "off", publish(8.0, video_off=(2.0, 4.0)), audio_codec="opus")
    segs = rec.segments
    assert [s.discontinuity for s in segs] == [False, True, True]
    assert all(s.init is not None for s in segs)
    lines = rec.playlist_path.read_text().splitlines()
    maps = [x for x in lines if x.startswith("#EXT-X-MAP")]
    assert 1 <= len(maps) <= 3  # each change of section is named before its segment
    info = probe(rec.playlist_path)
    assert abs(info["audio_samples"] / 48000 - 8.0) < 0.15
    assert info["video"] == 6 * FPS + 1  # and the stretch's picture: the last key frame again
    # every segment reads back joined to its section, timestamps rising
    starts = [min(probe_seg(tmp_path / "off", s)) for s in segs]
    assert starts == sorted(starts)


def _top_boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        out.append((kind, data[pos + 8:pos + size]))
        pos += size
    return out


def test_every_segment_carries_its_wall_clock_time_in_a_prft_box(tmp_path: Path) -> None:
    """A ``prft`` before each ``moof``: NTP time = the segment's #EXT-X-PROGRAM-DATE-TIME, for
    the decode time of the track that starts first; players read the segments as before."""
    import av

    rec = record(tmp_path, publish(6.0), audio_codec="opus", segment_seconds=2.0)
    segments = parse_playlist(rec.playlist_path.read_text(), tmp_path)
    assert len(segments) == 3
    init = (tmp_path / f"{NAME}_init.mp4").read_bytes()
    for seg in segments:
        data = seg.path.read_bytes()
        kinds = [k for k, _ in _top_boxes(data)]
        assert kinds.index(b"prft") == kinds.index(b"moof") - 1, kinds
        body = dict(_top_boxes(data))[b"prft"]
        version, track, ntp, media_time = body[0], *struct.unpack_from(">IQQ", body, 4)
        assert version == 1 and seg.date is not None
        assert abs(ntp / 2**32 - 2_208_988_800 - seg.date) < 0.001, (ntp, seg.date)
        # media_time is that track's first decode time, as an independent demuxer reads it
        with av.open(io.BytesIO(init + data), "r", format="mp4") as container:
            stream = container.streams[track - 1]
            first = next(p for p in container.demux(stream) if p.dts is not None)
            assert first.dts == media_time
            others = [next(p for p in container.demux(s) if p.dts is not None)
                      for s in container.streams if s is not stream]
        for packet in others:  # the referenced track is the one that starts first
            assert packet.dts * packet.time_base >= first.dts * first.time_base
    assert probe(rec.playlist_path)["video"] == 6 * FPS  # still read whole
