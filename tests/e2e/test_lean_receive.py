"""The lean receive path (cloudrec.rtp.receiver): what it sends and what it recovers.

A real publisher (aiortc, over loopback) whose DTLS transport drops 5 % of its outgoing RTP,
retransmissions included (the sender keeps its history, so a NACK can still be answered):
the hub's NACKs must bring the video back, frame for frame, into the subscription and into a
recording. A publisher whose media moves to another source address mid-stream (a candidate
pair the server has not nominated yet, a NAT rebinding) must stay on the lean path, frame for
frame. Unit tests cover the RTCP wire format and the frame assembler on their own.
"""

from __future__ import annotations

import asyncio
import random
import struct
from pathlib import Path

import av
import pytest
from aioice import ice as aioice_ice

from cloudrec.rtp import rtcp
from cloudrec.rtp.h264 import piece as h264_piece
from cloudrec.rtp.h264 import starts_frame as h264_starts_frame
from cloudrec.rtp.jitter import VideoStream
from cloudrec.rtp.receiver import CodecInfo, LeanReceiver
from cloudrec.tokens import make_token
from cloudrec.webrtc.whip_client import Publisher
from tests.e2e.test_recording import playlist_of, start, stop
from tests.helpers import APPID, SECRET, make_settings, running_server
from tests.media_check import playlist_lines

LOSS = 0.05


def make_lossy(pub: Publisher, loss: float, seed: int = 7) -> dict[str, int]:
    """Drop ``loss`` of the publisher's outgoing RTP (not RTCP) in its DTLS transport."""
    rng = random.Random(seed)
    counts = {"sent": 0, "dropped": 0, "video_dropped": 0}
    video_pts = {c.payloadType for t in pub.pc.getTransceivers() if t.kind == "video"
                 for c in t._codecs}
    transports = {sender.transport for sender in pub.pc.getSenders()}
    for dtls in transports:
        send = dtls._send_rtp

        async def lossy(data: bytes, send=send) -> None:  # type: ignore[no-untyped-def]
            if not rtcp.is_rtcp(data):
                counts["sent"] += 1
                if rng.random() < loss:
                    counts["dropped"] += 1
                    counts["video_dropped"] += (data[1] & 0x7F) in video_pts
                    return
            await send(data)

        dtls._send_rtp = lossy
    return counts


async def test_nack_recovers_video_under_five_percent_loss(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, write_rate_per_s=100, query_rate_per_s=100,
                             segment_seconds=2.0)
    async with running_server(settings) as server:
        hub, webrtc = server.app.state.hub, server.app.state.webrtc
        assert webrtc.receive_path == "lean"
        sub = hub.subscribe(APPID, "lossy", "alice")
        pub = Publisher(server.whip_url("lossy", "alice"),
                        make_token(APPID, "lossy", "alice", SECRET), width=320, height=240)
        await pub.start()
        counts = make_lossy(pub, LOSS)
        await pub.wait_connected()
        frames = []

        async def collect() -> None:
            async for item in sub:
                if isinstance(item, tuple) and item[1].kind == "video":
                    frames.append(item[1])

        collector = asyncio.create_task(collect())
        try:
            resid, recordid, _ = await start(server, "lossy", "alice", 0)
            await asyncio.sleep(8.0)
            sent = pub.stats.video_frames
            await asyncio.sleep(1.5)  # what was in flight (and its retransmissions) arrives
            received = len(frames)
            sent_later = pub.stats.video_frames
            await stop(server, "lossy", resid, recordid)
            lean = webrtc.sessions()[0].lean.stats()
        finally:
            collector.cancel()
            sub.close()
            await pub.stop()
    print(f"sent {sent}..{sent_later} frames, received {received}, packets {counts}, {lean}")
    assert counts["video_dropped"] > 5 and lean["recovered"] >= 5  # (drops include resends)
    assert sent * 0.99 <= received <= sent_later
    steps = {b.timestamp - a.timestamp for a, b in zip(frames, frames[1:])}
    assert steps == {6000}  # 15 fps at 90 kHz: no frame missing
    # the recording: every frame between its first and last, decoded
    pts = []
    with av.open(str(playlist_of(server, "lossy", recordid, "alice"))) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            pts.append(frame.pts)
    expected = round((pts[-1] - pts[0]) * stream.time_base * 15) + 1
    print(f"recorded {len(pts)} frames of {expected}")
    assert len(pts) >= 0.99 * expected and len(pts) > 80
    # PLI still reaches the publisher: segments are cut at their target length (2 s here)
    lengths = [float(line[8:].split(",")[0]) for line in playlist_lines(
        playlist_of(server, "lossy", recordid, "alice")) if line.startswith("#EXTINF:")]
    print("segments", lengths)
    assert len(lengths) >= 3 and all(abs(x - 2.0) <= 0.5 for x in lengths[:-1])


async def move_source(pub: Publisher) -> None:
    """From now on the publisher's packets leave from a new UDP port, to the same server address:
    what the server sees when the publisher sends on a pair it has not nominated (yet), or after
    a NAT rebinding. The old socket stays open and still answers the server's consent checks."""
    loop = asyncio.get_running_loop()
    for dtls in {sender.transport for sender in pub.pc.getSenders()}:
        connection = dtls.transport.iceGatherer._connection
        pair = connection._nominated[1]
        _, protocol = await loop.create_datagram_endpoint(
            lambda c=connection: aioice_ice.StunProtocol(c),
            local_addr=(pair.local_candidate.host, 0))
        protocol.local_candidate = pair.local_candidate
        connection._protocols.append(protocol)  # closed with the connection
        connection._nominated[1] = aioice_ice.CandidatePair(protocol, pair.remote_candidate)


async def test_media_from_a_new_source_address_stays_on_the_lean_path(tmp_path: Path) -> None:
    """Every frame sent reaches the subscription and the recording once, on one clock, across
    the move: none goes to aiortc's receiver, whose own timestamp origin (the first frame it
    sees) would step the clock back by everything received so far."""
    settings = make_settings(tmp_path, write_rate_per_s=100, query_rate_per_s=100)
    async with running_server(settings) as server:
        hub, webrtc = server.app.state.hub, server.app.state.webrtc
        assert webrtc.receive_path == "lean"
        sub = hub.subscribe(APPID, "moved", "alice")
        pub = Publisher(server.whip_url("moved", "alice"),
                        make_token(APPID, "moved", "alice", SECRET), width=160, height=120)
        await pub.start()
        await pub.wait_connected()
        frames = []

        async def collect() -> None:
            async for item in sub:
                if isinstance(item, tuple) and item[1].kind == "video":
                    frames.append(item[1])

        collector = asyncio.create_task(collect())
        try:
            resid, recordid, _ = await start(server, "moved", "alice", 0)
            await asyncio.sleep(2.5)
            before = len(frames)
            await move_source(pub)
            await asyncio.sleep(4.0)
            sent = pub.stats.video_frames
            await asyncio.sleep(1.0)
            received = len(frames)
            sent_later = pub.stats.video_frames
            await stop(server, "moved", resid, recordid)
            lean = webrtc.sessions()[0].lean.stats()
        finally:
            collector.cancel()
            sub.close()
            await pub.stop()
    print(f"sent {sent}..{sent_later} frames, received {received} ({before} before the move), "
          f"lean {lean}")
    assert before > 20 and received - before > 50
    assert sent * 0.99 <= received <= sent_later
    assert lean["frames"] >= received  # all of them through the lean path
    steps = {b.timestamp - a.timestamp for a, b in zip(frames, frames[1:])}
    assert steps == {6000}  # 15 fps at 90 kHz, one clock: no frame missing or repeated
    pts = []
    with av.open(str(playlist_of(server, "moved", recordid, "alice"))) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            pts.append(frame.pts)
    expected = round((pts[-1] - pts[0]) * stream.time_base * 15) + 1
    print(f"recorded {len(pts)} frames of {expected}")
    assert len(pts) >= 0.99 * expected and len(pts) > 80


async def test_a_publisher_that_takes_only_fir_gets_fir(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A publisher whose offer lists ``ccm fir`` but not ``nack pli`` (some SIP gateways and
    older stacks): the answer takes ``ccm fir``, and every keyframe request is a FIR naming its
    SSRC, with a sequence number counting up; its keyframes cut the segments on time."""
    from aiortc import codecs as aiortc_codecs
    from aiortc.rtcrtpparameters import RTCRtcpFeedback
    from aiortc.rtp import RtcpPsfbPacket

    for codec in aiortc_codecs.CODECS["video"]:  # what this process offers (the publisher)
        feedback = [fb for fb in codec.rtcpFeedback if fb.parameter != "pli"]
        monkeypatch.setattr(codec, "rtcpFeedback",
                            feedback + [RTCRtcpFeedback(type="ccm", parameter="fir")])
    settings = make_settings(tmp_path, write_rate_per_s=100, query_rate_per_s=100,
                             segment_seconds=2.0)
    async with running_server(settings) as server:
        pub = Publisher(server.whip_url("fir", "alice"),
                        make_token(APPID, "fir", "alice", SECRET), width=160, height=120)
        await pub.start()
        answer = pub.pc.remoteDescription.sdp
        requests: list[tuple[int, bytes]] = []
        sender = next(t.sender for t in pub.pc.getTransceivers() if t.kind == "video")
        handle = sender._handle_rtcp_packet

        async def spy(packet):  # type: ignore[no-untyped-def]
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (1, 4):
                requests.append((packet.fmt, packet.fci))
            await handle(packet)

        sender._handle_rtcp_packet = spy
        await pub.wait_connected()
        try:
            resid, recordid, _ = await start(server, "fir", "alice", 1)
            await asyncio.sleep(7.0)
            await stop(server, "fir", resid, recordid)
        finally:
            await pub.stop()
    assert "ccm fir" in answer and "nack pli" not in answer
    print("keyframe requests", requests)
    assert requests and {fmt for fmt, _ in requests} == {4}  # FIR only, never a PLI
    entries = [struct.unpack("!IB3x", fci) for _, fci in requests]
    assert {ssrc for ssrc, _ in entries} == {sender._ssrc}
    seqs = [seq for _, seq in entries]
    assert seqs == [n & 0xFF for n in range(seqs[0], seqs[0] + len(seqs))]
    lengths = [float(line[8:].split(",")[0]) for line in playlist_lines(
        playlist_of(server, "fir", recordid, "alice")) if line.startswith("#EXTINF:")]
    print("segments", lengths)
    assert len(lengths) >= 3 and all(abs(x - 2.0) <= 0.5 for x in lengths[:-1])


# -- the pieces on their own -------------------------------------------------------------------


def test_rtcp_packets_parse_as_rtcp() -> None:
    from aiortc.rtp import RtcpPacket, unpack_remb_fci

    rr, pli, nack, remb = RtcpPacket.parse(
        rtcp.receiver_report(1, [(2, 12, 30, 70000, 5, 0x1234, 99)])
        + rtcp.pli(1, 2) + rtcp.nack(1, 2, [65535, 0, 3, 40]) + rtcp.remb(1, 1_500_000, [2]))
    assert rr.ssrc == 1 and rr.reports[0].ssrc == 2 and rr.reports[0].fraction_lost == 12
    assert rr.reports[0].packets_lost == 30 and rr.reports[0].highest_sequence == 70000
    assert rr.reports[0].lsr == 0x1234 and rr.reports[0].dlsr == 99
    assert (pli.fmt, pli.media_ssrc) == (1, 2)
    (fir,) = RtcpPacket.parse(rtcp.fir(1, 2, 300))
    assert (fir.fmt, fir.ssrc, fir.media_ssrc) == (4, 1, 2)
    assert fir.fci == struct.pack("!IB3x", 2, 300 & 0xFF)
    assert nack.media_ssrc == 2 and sorted(nack.lost) == [0, 3, 40, 65535]
    bitrate, ssrcs = unpack_remb_fci(remb.fci)
    assert ssrcs == [2] and abs(bitrate - 1_500_000) / 1_500_000 < 0.001
    sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, 9, 0x11223344, 0x55667788, 0, 0, 0)
    assert list(rtcp.sender_reports(sr + rtcp.pli(1, 2))) == [(9, 0x33445566)]


def test_srtp_before_the_handshake_is_done_here_is_held_for_the_keys() -> None:
    """The peer may finish the DTLS handshake first and send at once: what comes before this
    side has its SRTP keys is taken, in order, once it has them (not left to aiortc)."""
    from pylibsrtp import Policy, Session

    key = bytes(range(30))
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    keys: list[tuple[object, object]] = [(None, None)]
    frames: list[tuple[bytes, int]] = []
    receiver = LeanReceiver([CodecInfo("audio", "opus", 111, 48000)],
                            lambda kind, name, rate, data, ts: frames.append((data, ts)),
                            rtcp_ssrc=1)
    port = receiver.port(lambda: keys[0])
    packets = [tx.protect(struct.pack("!BBHII", 0x80, 111, 100 + i, 960 * i, 42) + bytes([i]))
               for i in range(6)]
    for i, packet in enumerate(packets):
        if i == 3:  # the handshake completes here
            keys[0] = (Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND)), tx)
        assert port(packet, float(i), lambda data, addr: None, ("192.0.2.1", 5000))
        assert len(frames) == (0 if i < 3 else i + 1)
    assert frames == [(bytes([i]), 960 * i) for i in range(6)]
    forged = bytearray(tx.protect(struct.pack("!BBHII", 0x80, 111, 106, 960 * 6, 42) + b"x"))
    forged[-1] ^= 1
    assert port(bytes(forged), 7.0, lambda data, addr: None, ("203.0.113.9", 1))
    assert len(frames) == 6 and port.addr == ("192.0.2.1", 5000)  # RTCP still goes back there


def _packets(frames: int, per_frame: int) -> list[tuple[int, int, int, bytes]]:
    """(seq, ts, marker, payload): FU-A fragments of one IDR slice per frame."""
    out = []
    seq = 65530  # wraps
    for f in range(frames):
        for i in range(per_frame):
            start, end = i == 0, i == per_frame - 1
            header = (0x80 if start else 0) | (0x40 if end else 0) | 5
            body = bytes([0x80 | f]) if start else bytes([f, i])
            out.append((seq & 0xFFFF, (f * 6000) & 0xFFFFFFFF, int(end), bytes([0x7C, header])
                        + body))
            seq += 1
    return out


def test_frames_come_out_whole_and_in_order_despite_reordering_and_loss() -> None:
    delivered: list[tuple[bytes, int]] = []
    nacks: list[list[int]] = []
    plis: list[int] = []
    stream = VideoStream(5, 90000, h264_piece, lambda d: True,
                         lambda data, ts: delivered.append((data, ts)),
                         lambda ssrc, lost: nacks.append(lost), plis.append, h264_starts_frame)
    packets = _packets(6, 4)
    lost = packets.pop(9)  # frame 2, third fragment
    packets[3], packets[4] = packets[4], packets[3]  # reordered
    now = 0.0
    for seq, ts, marker, payload in packets:
        now += 0.01
        stream.packet(seq, ts, marker, payload, now)
    assert [ts for _, ts in delivered] == [0, 6000]  # frame 2 waits for its hole
    assert (lost[0] & 0xFFFF) in {s & 0xFFFF for lost_ in nacks for s in lost_}
    stream.retransmission(lost[0], lost[1], lost[2], lost[3], now + 0.01)
    assert [ts for _, ts in delivered] == [0, 6000, 12000, 18000, 24000, 30000]
    assert stream.recovered == 2 and not plis  # the reordered packet and the resent one
    assert all(data.startswith(b"\x00\x00\x00\x01\x65") for data, _ in delivered)


def test_a_frame_that_never_comes_is_given_up_and_a_keyframe_asked() -> None:
    delivered: list[int] = []
    plis: list[int] = []
    stream = VideoStream(5, 90000, h264_piece, lambda d: b"\x65" in d[4:5],
                         lambda data, ts: delivered.append(ts), lambda ssrc, lost: None,
                         plis.append, h264_starts_frame)
    packets = _packets(40, 2)
    del packets[5]  # frame 2's last packet
    now = 0.0
    for seq, ts, marker, payload in packets:
        now += 0.05  # 20 frames a second: the hole is older than a second by the end
        stream.packet(seq, ts, marker, payload, now)
    assert delivered[:2] == [0, 6000] and 12000 not in delivered
    assert plis == [5] and stream.lost == 1
    assert delivered[-1] == 39 * 6000  # resumed (every frame here is a keyframe)


@pytest.mark.parametrize("payload,starts", [
    (bytes([0x67, 0x42]), True),  # SPS
    (bytes([0x18, 0, 2]), True),  # STAP-A
    (bytes([0x65, 0x88]), True),  # IDR slice, first_mb 0
    (bytes([0x41, 0x3A]), False),  # a later slice
    (bytes([0x7C, 0x85, 0x88]), True),  # FU-A start of an IDR slice, first_mb 0
    (bytes([0x7C, 0x05, 0x88]), False),  # FU-A continuation
])
def test_h264_frame_start(payload: bytes, starts: bool) -> None:
    assert h264_starts_frame(payload) is starts
