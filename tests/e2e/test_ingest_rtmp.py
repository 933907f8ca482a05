"""RTMP push ingest: FFmpeg publishes to a real RtmpServer on loopback; the wire layer in detail."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
import struct
from pathlib import Path

import pytest

from cloudrec.ingest import IngestRefused, amf0, parse_rtmp_name
from cloudrec.ingest.chunks import MAX_MESSAGE, ChunkReader, RtmpProtocolError
from cloudrec.ingest.rtmp import RtmpServer
from cloudrec.media.codecs.aac import parse_adts, parse_asc
from tests.e2e.ingest_push import GOOD, Recorder, check_frames, push

APPID = 10034


@pytest.fixture
async def rtmp() -> tuple[RtmpServer, Recorder]:
    handler = Recorder()
    server = RtmpServer(handler, "127.0.0.1", 0)
    await server.start()
    yield server, handler
    await server.close()


def url(server: RtmpServer, uid: str, token: str | None = GOOD, scheme: str = "rtmp") -> str:
    query = f"?token={token}" if token is not None else ""
    return f"{scheme}://127.0.0.1:{server.port}/live/{APPID}/room1/{uid}{query}"


async def test_publish_delivers_h264_and_aac(rtmp: tuple[RtmpServer, Recorder]) -> None:
    server, handler = rtmp
    rc, err = await push(url(server, "u1"), "flv")
    assert rc == 0, err
    await handler.wait_ended("u1")
    assert handler.authorized == [(APPID, "room1", "u1")]
    assert handler.events == [("started", "u1", ""), ("ended", "u1", "unpublished")]
    check_frames(handler.frames["u1"], min_video=43, min_audio=130)
    assert not server.sessions or all(s.conn is None for s in server.sessions)


@pytest.mark.parametrize("token", ["wrong", None])
async def test_bad_token_is_refused_at_once(rtmp: tuple[RtmpServer, Recorder], token: str | None,
                                            caplog: pytest.LogCaptureFixture) -> None:
    server, handler = rtmp
    with caplog.at_level(logging.WARNING, "cloudrec.ingest"):
        started = asyncio.get_running_loop().time()
        rc, err = await push(url(server, "u1", token), "flv", "-t", "20")
        elapsed = asyncio.get_running_loop().time() - started
    assert rc != 0 and "refused" in err
    assert elapsed < 15  # not the 20 s of media (sent in real time): refused before any was
    assert handler.events == [] and handler.frames == {}
    assert any(r.levelno == logging.WARNING and f"app={APPID} room=room1 uid=u1" in r.getMessage()
               for r in caplog.records)


async def test_two_publishers_at_once(rtmp: tuple[RtmpServer, Recorder]) -> None:
    server, handler = rtmp
    results = await asyncio.gather(push(url(server, "a"), "flv"), push(url(server, "b"), "flv"))
    assert [rc for rc, _ in results] == [0, 0], results
    await handler.wait_ended("a")
    await handler.wait_ended("b")
    for uid in ("a", "b"):
        check_frames(handler.frames[uid], min_video=43, min_audio=130)
    epochs = {uid: handler.frames[uid][0].epoch for uid in ("a", "b")}
    assert epochs["a"] != epochs["b"]


async def _send(port: int, data: bytes) -> bytes:
    """Writes ``data`` and reads until the server closes (or 3 s pass)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), 3)
    except ConnectionError:
        return b""
    finally:
        writer.close()


def _handshake() -> bytes:
    return b"\x03" + bytes(1536) + bytes(1536)


async def test_garbage_leaves_the_server_serving(rtmp: tuple[RtmpServer, Recorder]) -> None:
    server, handler = rtmp
    await _send(server.port, os.urandom(1 << 20))  # not even a handshake
    await _send(server.port, _handshake() + os.urandom(1 << 20))  # garbage chunks
    # a declared 16 MiB message, then an endless body: closed once the header is read
    header = bytes((0x04,)) + b"\x00\x00\x00" + (0xFFFFFF).to_bytes(3, "big") + b"\x09" + bytes(4)
    answer = await _send(server.port, _handshake() + header + os.urandom(1 << 16))
    assert len(answer) == 1 + 2 * 1536  # the handshake, nothing more
    for _ in range(50):
        if not server.sessions:
            break
        await asyncio.sleep(0.05)
    assert not server.sessions
    rc, err = await push(url(server, "after"), "flv")
    assert rc == 0, err
    await handler.wait_ended("after")
    check_frames(handler.frames["after"], min_video=43, min_audio=130)


async def test_rtmps(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    handler = Recorder()
    server = RtmpServer(handler, "127.0.0.1", 0, ssl_context=context)
    await server.start()
    try:
        rc, err = await push(url(server, "tls", scheme="rtmps"), "flv")
        assert rc == 0, err
        await handler.wait_ended("tls")
        check_frames(handler.frames["tls"], min_video=43, min_audio=130)
    finally:
        await server.close()


async def test_other_codecs_are_reported_by_name(rtmp: tuple[RtmpServer, Recorder]) -> None:
    server, handler = rtmp
    rc, err = await push(url(server, "mp3"), "flv", "-t", "1", "-c:a", "libmp3lame", "-ar",
                         "44100")
    assert rc == 0, err
    await handler.wait_ended("mp3")
    frames = handler.frames["mp3"]
    assert {(f.kind, f.codec, f.clock_rate) for f in frames} == {("video", "h264", 90000),
                                                                 ("audio", "mp3", 44100)}


async def test_stalled_connections_are_dropped() -> None:
    server = RtmpServer(Recorder(), "127.0.0.1", 0, handshake_timeout=0.5, publish_timeout=1.0)
    await server.start()
    try:
        silent = await asyncio.open_connection("127.0.0.1", server.port)
        shaken = await asyncio.open_connection("127.0.0.1", server.port)
        shaken[1].write(b"\x03" + bytes(1536))
        assert len(await shaken[0].readexactly(1 + 2 * 1536)) == 3073
        shaken[1].write(bytes(1536))
        for reader, _ in (silent, shaken):
            assert await asyncio.wait_for(reader.read(-1), 5) == b""
        assert not server.sessions
    finally:
        await server.close()


async def test_the_handler_can_drop_a_publisher() -> None:
    class Dropper(Recorder):
        closed = False
        late = 0  # data calls after the close

        def data(self, conn, chunk) -> None:  # type: ignore[no-untyped-def]
            if self.closed:
                self.late += 1
                return
            super().data(conn, chunk)

        def frame(self, conn, frame) -> None:  # type: ignore[no-untyped-def]
            if self.closed:
                return  # the rest of the chunk that carried the tenth frame
            super().frame(conn, frame)
            if len(self.frames[conn.uid]) == 10:
                self.closed = True
                conn.close("enough")

    handler = Dropper()
    server = RtmpServer(handler, "127.0.0.1", 0)
    await server.start()
    try:
        rc, _ = await push(url(server, "u1"), "flv")
        assert rc != 0
        assert handler.events == [("started", "u1", ""), ("ended", "u1", "enough")]
        assert len(handler.frames["u1"]) == 10 and handler.late == 0
    finally:
        await server.close()


# the wire layer, byte by byte

def test_stream_names() -> None:
    ffmpeg = parse_rtmp_name("live/10034", "room1/u1?token=T")
    obs = parse_rtmp_name("live", "10034/room1/u1?token=T")
    assert ffmpeg == obs and (obs.appid, obs.roomid, obs.uid, obs.token) == (10034, "room1",
                                                                              "u1", "T")
    assert parse_rtmp_name("live/10034", "room1/u1").token == ""
    for app, name in [("other", "10034/r/u?token=T"), ("live", "x/r/u?token=T"),
                      ("live", "10034/r?token=T"), ("live", "10034/r/u/extra")]:
        with pytest.raises(IngestRefused):
            parse_rtmp_name(app, name)


def test_amf0_round_trip_and_hostile_input() -> None:
    values = ["connect", 1.0, {"app": "live", "n": 2.5, "ok": True, "x": None, "o": {"a": "b"}}]
    assert amf0.decode_all(amf0.encode(*values)) == values
    assert amf0.decode_all(amf0.encode("é" * 40000)) == ["é" * 40000]  # a long string
    deep = b"\x03\x00\x01a" * (amf0.MAX_DEPTH + 2)
    for bad in [b"\x02\x00\x10ab", b"\x00\x01", b"\x0a\xff\xff\xff\xff\x05", deep, b"\x11",
                b"\x03\x00\x01a\x00"]:
        with pytest.raises(amf0.Amf0Error):
            amf0.decode_all(bad)


async def _messages(data: bytes, chunk_size: int = 128) -> list[tuple[int, int, int, bytes]]:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    reader, out = ChunkReader(stream), []
    reader.chunk_size = chunk_size
    with pytest.raises(asyncio.IncompleteReadError):
        while True:
            m = await reader.read_message()
            out.append((m.type, m.stream_id, m.timestamp, m.payload))
    return out


async def test_chunks_join_with_every_header_type() -> None:
    body = bytes(range(200))
    data = (b"\x06" + (1000).to_bytes(3, "big") + (200).to_bytes(3, "big") + b"\x09"
            + struct.pack("<I", 1) + body[:128]      # fmt 0, csid 6
            + b"\xc6" + body[128:]                    # fmt 3 continuation
            + b"\x86" + (40).to_bytes(3, "big") + body[:128] + b"\xc6" + body[128:]  # fmt 2
            + b"\xc6" + body[:128] + b"\xc6" + body[128:]  # fmt 3: a new message, same delta
            + b"\x46" + (0xFFFFFF).to_bytes(3, "big") + (3).to_bytes(3, "big") + b"\x08"
            + (70000).to_bytes(4, "big") + b"abc")  # fmt 1 with an extended delta
    assert await _messages(data) == [(9, 1, 1000, body), (9, 1, 1040, body),
                                     (9, 1, 1080, body), (8, 1, 71080, b"abc")]


async def test_chunk_reader_limits() -> None:
    too_big = b"\x04" + bytes(3) + (MAX_MESSAGE + 1).to_bytes(3, "big") + b"\x09" + bytes(4)
    with pytest.raises(RtmpProtocolError):
        await _messages(too_big)
    many = b"".join(bytes((0, n)) + bytes(3) + (100).to_bytes(3, "big") + b"\x09" + bytes(4)
                    + bytes(100)[:10] for n in range(100))  # 100 chunk streams left open
    with pytest.raises(RtmpProtocolError):
        await _messages(many, chunk_size=10)
    with pytest.raises(RtmpProtocolError):
        await _messages(b"\xc9")  # a chunk stream that starts without a header


def test_adts_from_audio_specific_config() -> None:
    lc = parse_asc(bytes((0x11, 0x90)))  # AAC-LC, 48 kHz, stereo
    assert (lc.object_type, lc.sample_rate, lc.channels) == (2, 48000, 2)
    frame = lc.adts(b"\x21" * 100)
    assert len(frame) == 107 and parse_adts(frame) == lc
    he = parse_asc(bytes((0x2B, 0x11, 0x88, 0x00)))  # HE-AAC: SBR over a 24 kHz AAC-LC core
    assert (he.object_type, he.sample_rate) == (2, 24000)
    with pytest.raises(ValueError):
        lc.adts(bytes(9000))
