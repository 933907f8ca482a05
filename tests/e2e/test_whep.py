"""WHEP playback end to end: aiortc WHEP viewers of real WHIP publishers (aiortc, over
loopback) through an in-process node; the bad-input answers; the play token."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path

import httpx
import pytest
from aiortc import RTCPeerConnection

from cloudrec.rtp import rtcp
from cloudrec.tokens import make_token
from cloudrec.webrtc.viewer import ViewerSession
from cloudrec.webrtc.whep_client import PlayError, Viewer
from cloudrec.webrtc.whip_client import Publisher
from tests.e2e.test_recording import publish
from tests.helpers import APPID, SECRET, Server, make_settings, running_server, wait_for

SDP = {"Content-Type": "application/sdp"}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(make_settings(tmp_path, max_viewers=12)) as s:
        yield s


def whep_url(server: Server, room: str, uid: str, appid: int = APPID) -> str:
    return f"{server.base}/whep/{appid}/{room}/{uid}"


def play_token(room: str, uid: str = "viewer") -> str:
    return make_token(APPID, room, uid, SECRET, play=True)


async def watch(server: Server, room: str, uid: str, **kw: object) -> Viewer:
    viewer = Viewer(whep_url(server, room, uid), play_token(room), **kw)  # type: ignore[arg-type]
    await viewer.start()
    return viewer


async def test_a_viewer_receives_the_publishers_pictures(server: Server) -> None:
    pub = await publish(server, "r1", "alice", width=320, height=240)
    viewer = await watch(server, "r1", "alice")
    try:
        await viewer.wait_pictures(30, timeout=10)
        await wait_for(lambda: viewer.audio_frames > 20, timeout=5, what="audio")
    finally:
        await viewer.stop()
        await pub.stop()
    first = viewer.pictures[0][0] - viewer.posted_at
    print(f"first picture {first:.2f} s after the POST; {len(viewer.pictures)} pictures, "
          f"{viewer.audio_frames} audio frames")
    assert {(w, h) for _, _, w, h in viewer.pictures} == {(320, 240)}
    assert first < 3.0
    pts = [p for _, p, _, _ in viewer.pictures]
    assert pts == sorted(pts)
    await wait_for(lambda: not server.app.state.viewers.sessions(), timeout=5, what="ended")


async def test_ten_viewers_at_once(server: Server) -> None:
    pub = await publish(server, "r10", "alice", width=320, height=240)
    viewers = [Viewer(whep_url(server, "r10", "alice"), play_token("r10", f"v{i}"))
               for i in range(10)]
    try:
        await asyncio.gather(*(v.start() for v in viewers))
        await asyncio.gather(*(v.wait_pictures(20, timeout=15) for v in viewers))
    finally:
        await asyncio.gather(*(v.stop() for v in viewers))
        await pub.stop()
    for v in viewers:
        assert {(w, h) for _, _, w, h in v.pictures} == {(320, 240)}
    firsts = sorted(v.pictures[0][0] - v.posted_at for v in viewers)
    print("first pictures after", [round(f, 2) for f in firsts])


async def test_a_late_joiner_sees_a_picture_within_3_s(server: Server) -> None:
    pub = await publish(server, "late", "alice", width=320, height=240)
    early = await watch(server, "late", "alice")
    try:
        await early.wait_pictures(10)
        await asyncio.sleep(2.0)  # well into the publisher's group of pictures
        late = await watch(server, "late", "alice")
        try:
            await late.wait_pictures(1, timeout=3.0)
            print(f"late joiner's first picture after {late.pictures[0][0] - late.posted_at:.2f} s")
        finally:
            await late.stop()
    finally:
        await early.stop()
        await pub.stop()


def make_lossy(session: ViewerSession, loss: float, seed: int = 11) -> dict[str, int]:
    """Drop ``loss`` of what the viewer's session sends as RTP (retransmissions included, not
    RTCP), on the send path it uses."""
    rng = random.Random(seed)
    counts = {"sent": 0, "dropped": 0}
    lean = session.lean
    if lean is not None:
        transmit = lean.transmit

        def lossy_transmit(packet: bytes) -> None:
            counts["sent"] += 1
            if rng.random() < loss:
                counts["dropped"] += 1
                return
            transmit(packet)

        lean.transmit = lossy_transmit  # type: ignore[method-assign]
        return counts
    pc = session.pc
    for dtls in {sender.transport for sender in pc.getSenders()}:
        send = dtls._send_rtp

        async def lossy(data: bytes, send=send) -> None:  # type: ignore[no-untyped-def]
            if not rtcp.is_rtcp(data):
                counts["sent"] += 1
                if rng.random() < loss:
                    counts["dropped"] += 1
                    return
            await send(data)

        dtls._send_rtp = lossy
    return counts


async def test_loss_on_the_viewers_path_is_recovered_by_nack(server: Server) -> None:
    pub = await publish(server, "lossy", "alice", width=320, height=240)
    viewer = Viewer(whep_url(server, "lossy", "alice"), play_token("lossy"), audio=False)
    await viewer.start()
    try:
        session = server.app.state.viewers.sessions()[0]
        counts = make_lossy(session, 0.05)
        await viewer.wait_pictures(1)
        sent0, got0 = session.frames, len(viewer.pictures)
        await asyncio.sleep(14.0)  # 320x240 at 15 fps: some 230 packets, about 11 lost at 5 %
        await pub.stop()  # no frame is sent after this: every later picture is one of these
        sent = session.frames - sent0

        def decoded() -> int:
            return len(viewer.pictures) - got0

        # what was in flight, and its retransmissions (the viewer's jitter buffer gives a frame
        # out when the next arrives: the last one or two may stay held)
        try:
            await wait_for(lambda: decoded() >= 0.97 * sent, timeout=5.0, interval=0.1)
        except AssertionError:
            pass  # the assertion below says how many came
        got = decoded()
    finally:
        await viewer.stop()
        await pub.stop()  # (again: it may not have been stopped yet)
    lean = session.lean
    if lean is not None:
        counts["retransmitted"] = sum(s.retransmitted for s in lean.streams.values())
        counts["unanswered"] = sum(s.unanswered for s in lean.streams.values())
        assert counts["retransmitted"] >= counts["dropped"] // 2  # answered on the lean path
    print(f"sent {sent} frames, decoded {got}, packets {counts}")
    assert counts["dropped"] >= 8
    assert got >= 0.97 * sent


async def test_a_viewer_goes_on_across_the_publishers_reconnect(server: Server) -> None:
    pub = await publish(server, "again", "alice", width=320, height=240)
    viewer = await watch(server, "again", "alice")
    try:
        await viewer.wait_pictures(15)
        await pub.stop()
        await asyncio.sleep(1.0)
        before = len(viewer.pictures)
        pub = await publish(server, "again", "alice", width=320, height=240)
        await viewer.wait_pictures(before + 15, timeout=10)
    finally:
        await viewer.stop()
        await pub.stop()
    pts = [p for _, p, _, _ in viewer.pictures]
    steps = [b - a for a, b in zip(pts, pts[1:])]
    assert min(steps) > 0  # one rising clock
    # (the viewer's jitter buffer gives out a frame when the next one begins: the old
    # publisher's last picture comes with the new one's first)
    gap = max(steps) / 90000
    assert sorted(steps)[-2] == 6000  # 15 fps on both sides of the reconnect
    print(f"timestamp gap across the reconnect {gap:.2f} s")
    assert 0.5 < gap < 5.0


async def test_a_viewer_whose_publisher_does_not_return_is_ended(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path, idle_timeout_s=1.0)) as server:
        pub = await publish(server, "gone", "alice")
        viewer = await watch(server, "gone", "alice")
        await viewer.wait_pictures(5)
        await pub.stop()
        await wait_for(lambda: viewer.pc.connectionState == "closed"
                       or not server.app.state.viewers.sessions(), timeout=5, what="ended")
        await viewer.stop()


async def test_bad_input(server: Server) -> None:
    pub = await publish(server, "bad", "alice")
    http = server.client
    offer_pc = RTCPeerConnection()
    offer_pc.addTransceiver("video", direction="recvonly")
    await offer_pc.setLocalDescription(await offer_pc.createOffer())
    offer = offer_pc.localDescription.sdp
    url = whep_url(server, "bad", "alice")

    async def post(token: str | None, body: str = offer, to: str = url) -> httpx.Response:
        headers = dict(SDP)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await http.post(to, content=body, headers=headers)

    try:
        assert (await post(None)).status_code == 401
        assert (await post("not-a-jwt")).status_code == 401
        assert (await post(make_token(APPID, "other", "v", SECRET))).status_code in (401, 403)
        assert (await post(make_token(APPID, "bad", "v", "wrong-secret"))).status_code == 401
        token = play_token("bad")
        assert (await post(token, to=whep_url(server, "bad", "nobody"))).status_code == 404
        assert (await post(play_token("empty"), to=whep_url(server, "empty", "x"))).status_code \
            == 404
        assert (await post(token, body="garbage")).status_code == 400
        r = await http.post(url, content=offer, headers={"Authorization": f"Bearer {token}",
                                                         "Content-Type": "text/plain"})
        assert r.status_code == 400
        r = await http.options(url)
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
        # a publish token of the room plays too; DELETE ends the session, once
        r = await post(make_token(APPID, "bad", "bob", SECRET))
        assert r.status_code == 201 and r.headers["access-control-allow-origin"] == "*"
        session = f"{server.base}{r.headers['location']}"
        assert (await http.delete(session)).status_code == 200
        assert (await http.delete(session)).status_code == 404
        assert (await http.delete(f"{server.base}/whep/session/nothing")).status_code == 404
    finally:
        await offer_pc.close()
        await pub.stop()


async def test_viewers_beyond_max_viewers_get_503(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path, max_viewers=2)) as server:
        pub = await publish(server, "full", "alice")
        viewers = [await watch(server, "full", "alice") for _ in range(2)]
        try:
            with pytest.raises(PlayError) as refused:
                await watch(server, "full", "alice")
            assert refused.value.status == 503
            r = await server.client.post(whep_url(server, "full", "alice"), content="v=0\r\n",
                                         headers={**SDP, "Authorization":
                                                  f"Bearer {play_token('full')}"})
            assert r.status_code == 503 and r.headers["retry-after"]
        finally:
            for v in viewers:
                await v.stop()
            await pub.stop()


async def test_a_viewer_that_never_connects_is_dropped(server: Server) -> None:
    viewers = server.app.state.viewers
    viewers.connect_timeout_s = 1.0
    hub = server.app.state.hub
    pub = await publish(server, "ice", "alice")
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    r = await server.client.post(whep_url(server, "ice", "alice"), content=pc.localDescription.sdp,
                                 headers={**SDP, "Authorization": f"Bearer {play_token('ice')}"})
    await pc.close()  # never takes the answer: no ICE
    try:
        assert r.status_code == 201
        subs = lambda: len(hub._rooms[(APPID, "ice")].subscriptions)  # noqa: E731
        assert len(viewers.sessions()) == 1
        await wait_for(lambda: not viewers.sessions(), timeout=5, what="dropped")
        await wait_for(lambda: subs() == 0, timeout=2, what="subscription closed")
        await wait_for(lambda: not viewers._tasks, timeout=5, what="peer connection closed")
    finally:
        await pub.stop()


async def test_a_play_token_never_publishes(server: Server) -> None:
    pub = Publisher(server.whip_url("p", "alice"), make_token(APPID, "p", "alice", SECRET,
                                                               play=True))
    with pytest.raises(Exception) as refused:
        await pub.start()
    assert getattr(refused.value, "status", None) == 403
    assert not server.app.state.hub.is_publishing(APPID, "p")


class _Upstream:
    state = "connected"

    def __init__(self) -> None:
        self.keyframes = 0

    def request_keyframe(self) -> None:
        self.keyframes += 1

    def close(self) -> None:
        pass


async def _feed_h264_aac(pub: object, upstream: _Upstream, seconds: float) -> None:
    """An RTMP-like publisher: H.264 (Annex B) at 15 fps and AAC (ADTS) at 44.1 kHz mono."""
    import av
    import numpy as np

    from cloudrec.media.audio import adts_header

    video = av.CodecContext.create("libx264", "w")
    video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
    video.time_base = Fraction(1, 15)
    video.options = {"tune": "zerolatency", "preset": "ultrafast", "g": "30"}
    audio = av.CodecContext.create("aac", "w")
    audio.sample_rate, audio.layout, audio.format = 48000, "mono", "fltp"
    audio.open()
    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(1024) / 48000)).astype(np.float32)
    write = pub.write  # type: ignore[attr-defined]
    start, n, samples = time.monotonic(), 0, 0
    while time.monotonic() - start < seconds:
        frame = av.VideoFrame.from_ndarray(np.full((240, 320, 3), n % 255, np.uint8), "rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = n
        if upstream.keyframes:
            upstream.keyframes = 0
            frame.pict_type = av.video.frame.PictureType.I
        for packet in video.encode(frame):
            write("video", "h264", 90000, bytes(packet), int(packet.pts) * 6000)
        while samples < (n + 1) * 3200:
            chunk = av.AudioFrame.from_ndarray(tone.reshape(1, -1), format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 48000, samples
            samples += 1024
            for packet in audio.encode(chunk):
                write("audio", "aac", 48000, adts_header(packet.size, 1) + bytes(packet),
                      int(packet.pts))
        n += 1
        await asyncio.sleep(max(0.0, start + n / 15 - time.monotonic()))


async def test_aac_is_transcoded_once_for_all_viewers(server: Server) -> None:
    hub = server.app.state.hub
    upstream = _Upstream()
    pub = hub.attach(APPID, "rtmp", "cam", kinds=frozenset({"audio", "video"}),
                     codecs={"video": "h264", "audio": "aac"}, upstream=upstream, origin="rtmp")
    feeding = asyncio.create_task(_feed_h264_aac(pub, upstream, 20.0))
    await server.app.state.front.heartbeat()  # the directory learns the room's owner
    viewers = [await watch(server, "rtmp", "cam") for _ in range(2)]
    try:
        for v in viewers:
            await v.wait_pictures(10)
            await wait_for(lambda v=v: v.audio_frames > 25, timeout=5, what="Opus audio")
        assert len(server.app.state.viewers.aac) == 1
    finally:
        for v in viewers:
            await v.stop()
        feeding.cancel()
        hub.detach(pub, "test over")
    assert {(w, h) for v in viewers for _, _, w, h in v.pictures} == {(320, 240)}
    await wait_for(lambda: len(server.app.state.viewers.aac) == 0, timeout=5, what="released")
