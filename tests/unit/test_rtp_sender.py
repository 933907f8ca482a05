"""The lean send path's pieces without a network: payloads once per frame, one viewer's
headers, NACK answered in RTX or as it was, PLI/FIR, sender reports."""

from __future__ import annotations

import struct

import pytest

from cloudrec.rtp import rtcp
from cloudrec.rtp.h264 import piece
from cloudrec.rtp.packetize import MAX_PAYLOAD, packetize, packetize_h264, packetize_vp8
from cloudrec.rtp.sender import LeanSender, SendStream


class _Clear:
    """An SRTP session that protects nothing (the sender's logic, not libsrtp, is tested)."""

    def protect(self, data: bytes) -> bytes:
        return data

    protect_rtcp = unprotect_rtcp = protect


def _access_unit(slice_size: int) -> bytes:
    sps, pps = b"\x67" + b"\x42" * 12, b"\x68" + b"\xce" * 4
    idr = b"\x65" + bytes((i * 7 + 1) % 255 + 1 for i in range(slice_size))
    return b"\x00\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps + b"\x00\x00\x01" + idr


@pytest.mark.parametrize("size", [100, 1190, 1300, 5000])
def test_h264_payloads_depacketize_to_the_access_unit(size: int) -> None:
    au = _access_unit(size)
    payloads = packetize_h264(au)
    assert all(len(p) <= MAX_PAYLOAD for p in payloads)
    assert payloads[0][0] & 0x1F == 24  # SPS and PPS aggregated (STAP-A)
    rebuilt = b"".join(piece(p) for p in payloads)
    assert rebuilt.split(b"\x00\x00\x00\x01")[1:] == [au[4:17], au[21:26], au[29:]]
    if size > MAX_PAYLOAD:
        fus = [p for p in payloads if p[0] & 0x1F == 28]
        assert fus[0][1] & 0x80 and fus[-1][1] & 0x40 and len(fus) >= 2


def test_vp8_and_opus_payloads() -> None:
    frame = bytes(range(256)) * 10
    payloads = packetize_vp8(frame)
    assert [p[0] for p in payloads] == [0x10] + [0] * (len(payloads) - 1)
    assert b"".join(p[1:] for p in payloads) == frame
    assert packetize("opus", b"\x01\x02") == [b"\x01\x02"]


def _sender(rtx: bool = True) -> tuple[LeanSender, list[bytes], list[int]]:
    sent: list[bytes] = []
    asked: list[int] = []
    sender = LeanSender("cname", lambda: asked.append(1))
    sender.port(lambda: (_Clear(), _Clear()))
    sender.set_route(lambda: (lambda data, addr: sent.append(data), ("127.0.0.1", 9)))
    sender.add_stream(SendStream("video", 1111, 102, 90000, 2222 if rtx else None,
                                 103 if rtx else None))
    sender.add_stream(SendStream("audio", 3333, 111, 48000))
    return sender, sent, asked


def _header(packet: bytes) -> tuple[int, int, int, int]:
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", packet)
    return b1, seq, ts, ssrc


def test_a_frame_goes_out_with_the_viewers_headers() -> None:
    sender, sent, _ = _sender()
    payloads = packetize_h264(_access_unit(3000))
    assert sender.send_frame("video", payloads, 3000, 1.0)
    assert [p[12:] for p in sent] == payloads
    heads = [_header(p) for p in sent]
    assert [h[0] for h in heads] == [102] * (len(payloads) - 1) + [0x80 | 102]  # marker last
    seqs = [h[1] for h in heads]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]
    assert {h[2] for h in heads} == {(3000 + sender.streams["video"].origin) & 0xFFFFFFFF}
    assert {h[3] for h in heads} == {1111}
    sent.clear()
    assert sender.send_frame("audio", [b"opus"], 960, 1.0)
    assert _header(sent[0])[0] == 111 and sent[0][12:] == b"opus"


@pytest.mark.parametrize("rtx", [True, False])
def test_a_nack_is_answered_from_the_cache(rtx: bool) -> None:
    sender, sent, _ = _sender(rtx)
    payloads = packetize_h264(_access_unit(5000))
    sender.send_frame("video", payloads, 0, 1.0)
    original = list(sent)
    sent.clear()
    first = _header(original[0])[1]
    lost = [first + 1, first + 3]
    sender._on_datagram(rtcp.nack(9, 1111, lost), 0.0, lambda d, a: sent.append(d), ("h", 1))
    assert len(sent) == 2
    for packet, seq in zip(sent, lost):
        b1, _, ts, ssrc = _header(packet)
        if rtx:
            assert (b1 & 0x7F, ssrc) == (103, 2222)
            assert packet[12:14] == struct.pack("!H", seq)
            assert packet[14:] == original[seq - first][12:]
        else:
            assert packet == original[seq - first]
    assert sender.streams["video"].retransmitted == 2


def test_pli_and_fir_ask_for_a_keyframe_and_reports_go_out() -> None:
    sender, sent, asked = _sender()
    sender._on_datagram(rtcp.pli(9, 1111), 0.0, lambda d, a: None, ("h", 1))
    sender._on_datagram(rtcp.fir(9, 1111, 1), 0.0, lambda d, a: None, ("h", 1))
    assert asked == [1, 1]
    sender.send_frame("video", [b"\x65x"], 90000, 10.0)
    stream = sender.streams["video"]
    report = sender.sender_report(stream, 1_700_000_000.5, 10.5)
    assert report[1] == 200 and len(report) % 4 == 0
    _, _, _, ssrc, msw, lsw, rtp_ts, packets, octets = struct.unpack_from("!BBHIIIIII", report)
    assert ssrc == 1111 and msw == 1_700_000_000 + 2_208_988_800 and lsw == 1 << 31
    assert rtp_ts == (90000 + stream.origin + 45000) & 0xFFFFFFFF  # half a second later
    assert (packets, octets) == (1, 2)
    assert report[28 + 1] == 202 and b"cname" in report[28:]
