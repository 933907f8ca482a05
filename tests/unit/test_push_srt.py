"""``srt://`` push URLs: accepted where libsrt loads (the worker's push schemes say ``srt``),
refused with 2101 where it does not or when the URL has no host; the SRT writer's messages."""

from __future__ import annotations

import ctypes
import socket
import threading
import time
from typing import Any

import pytest

from cloudrec.errors import InvalidParameter
from cloudrec.ingest import libsrt
from cloudrec.media.push import srt as push_srt
from cloudrec.media.push.fanout import push_protocols
from cloudrec.media.push.srt import PAYLOAD, SrtWriter
from cloudrec.models import StartRecordRequest, parse_request
from cloudrec.models.rules import check_push_urls, push_url_problem
from tests.helpers import SEED_START_MIXED

SRT_URL = "srt://127.0.0.1:9000?streamid=live/key&latency=120"
needs_libsrt = pytest.mark.skipif(not libsrt.available(), reason="libsrt is not installed")


def _start(pushurl: list[str], protocols: frozenset[str]) -> StartRecordRequest:
    """What the front and the worker do with a startrecord: parse it, then check its push URLs
    against the schemes the workers can push to."""
    req = parse_request(StartRecordRequest, {**SEED_START_MIXED, "outputs": {"pushurl": pushurl}})
    check_push_urls(req.outputs, protocols)
    return req


@needs_libsrt
def test_srt_pushurl_is_accepted_where_libsrt_loads() -> None:
    assert push_protocols() == frozenset({"rtmp", "srt"})
    req = _start(["rtmp://live.example.com/app/key", SRT_URL], push_protocols())
    assert req.outputs is not None and req.outputs.pushurl == ["rtmp://live.example.com/app/key",
                                                               SRT_URL]
    assert push_url_problem(SRT_URL, push_protocols()) is None


def test_srt_pushurl_answers_2101_without_libsrt() -> None:
    with pytest.raises(InvalidParameter) as caught:
        _start([SRT_URL], frozenset({"rtmp"}))
    assert caught.value.code == 2101 and caught.value.field == "outputs.pushurl[0]"
    assert "libsrt" in caught.value.message


@pytest.mark.parametrize("url", ["srt://", "srt://:9000", "srt://?streamid=x"])
def test_srt_pushurl_without_a_host_still_answers_2101(url: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        _start(["rtmp://live.example.com/app/key", url], frozenset({"rtmp", "srt"}))
    assert caught.value.code == 2101 and caught.value.field == "outputs.pushurl[1]"
    assert push_url_problem(url, frozenset({"rtmp", "srt"})) is not None


class _Listener:
    """An SRT listener on loopback that accepts one caller and keeps its messages."""

    def __init__(self) -> None:
        so = libsrt.lib()
        self.sock = libsrt.check(so.srt_create_socket(), "srt_create_socket")
        libsrt.set_int(self.sock, libsrt.TRANSTYPE, 0)
        addr = libsrt.sockaddr("127.0.0.1", 0)
        libsrt.check(so.srt_bind(self.sock, addr, len(addr)), "srt_bind")
        libsrt.check(so.srt_listen(self.sock, 1), "srt_listen")
        self.port = libsrt.local_port(self.sock)
        self.streamid = ""
        self.messages: list[bytes] = []
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        so = libsrt.lib()
        addr, size = ctypes.create_string_buffer(128), ctypes.c_int(128)
        conn = so.srt_accept(self.sock, addr, ctypes.byref(size))
        if conn == libsrt.INVALID:
            return
        self.streamid = libsrt.get_string(conn, libsrt.STREAMID)
        libsrt.set_int(conn, libsrt.RCVTIMEO, 5000)
        buf = ctypes.create_string_buffer(1500)
        try:
            while not self.done.is_set():
                n = so.srt_recvmsg(conn, buf, len(buf))
                if n <= 0:
                    break
                self.messages.append(buf.raw[:n])
        finally:
            so.srt_close(conn)

    def wait(self, count: int, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.messages)

    def close(self) -> None:
        self.done.set()
        libsrt.lib().srt_close(self.sock)
        self._thread.join(6)


@needs_libsrt
def test_writer_sends_whole_ts_messages_and_its_tail_on_close() -> None:
    listener = _Listener()
    try:
        writer = SrtWriter(f"srt://127.0.0.1:{listener.port}?streamid=live/key&latency=80")
        packets: list[Any] = [bytes([0x47, i]) + bytes(186) for i in range(15)]
        assert writer.write(b"".join(packets[:10])) == 188 * 10  # one message, 3 packets wait
        assert writer.write(b"".join(packets[10:15])) == 188 * 5  # a second one, 1 waits
        got = listener.wait(2)
        assert [len(m) for m in got] == [PAYLOAD, PAYLOAD] and writer.sent == 2 * PAYLOAD
        assert b"".join(got) == b"".join(packets[:14])
        assert listener.streamid == "live/key"
        writer.close()  # live SRT: the far end may drop what is in flight when the caller goes
        assert writer.sent == 15 * 188
        with pytest.raises(ValueError):
            writer.write(packets[0])
    finally:
        listener.close()


def test_writer_sends_its_tail_on_close(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[bytes] = []
    closed: list[int] = []

    class Lib:
        def srt_close(self, sock: int) -> int:
            closed.append(sock)
            return 0

    monkeypatch.setattr(libsrt, "connect_url", lambda url, **_: 7)
    monkeypatch.setattr(libsrt, "send_all", lambda sock, data: sent.append(bytes(data)))
    monkeypatch.setattr(libsrt, "lib", Lib)
    writer = SrtWriter("srt://127.0.0.1:9000")
    writer.write(bytes(188 * 8))
    assert [len(m) for m in sent] == [PAYLOAD]
    writer.close()
    writer.close()
    assert [len(m) for m in sent] == [PAYLOAD, 188] and closed == [7]


@needs_libsrt
def test_writer_connect_fails_without_a_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(push_srt, "CONNECT_TIMEOUT_MS", 500)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    started = time.monotonic()
    with pytest.raises(libsrt.SrtError):
        SrtWriter(f"srt://127.0.0.1:{port}")
    assert time.monotonic() - started < 3.0
