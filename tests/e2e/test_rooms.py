"""Room plane: the aiortc tap, RoomHub presence and media, publish tokens, WHIP over HTTP."""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
import types

import aiortc
import av
import httpx
import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

from cloudrec.errors import AuthError, InvalidParameter
from cloudrec.media.codecs import keyframe_detector
from cloudrec.mediatypes import EncodedFrame
from cloudrec.rooms import PublisherEvent, RoomHub, SubscriptionClosed
from cloudrec.tokens import make_token, verify_token
from cloudrec.webrtc import _aiortc_tap as tap
from cloudrec.webrtc.ingest import WebRtcIngest
from cloudrec.webrtc.synthetic import Pacer, TestPatternTrack
from cloudrec.webrtc.whip_client import Publisher, publish

# -- helpers ---------------------------------------------------------------------------------


def nal_units(data: bytes) -> list[bytes]:
    """Split an Annex B access unit into NAL units (without start codes)."""
    out, i = [], data.find(b"\x00\x00\x01")
    while i >= 0:
        j = data.find(b"\x00\x00\x01", i + 3)
        end = len(data) if j < 0 else (j - 1 if data[j - 1] == 0 else j)
        out.append(data[i + 3 : end])
        i = j
    return out


def nal_types(data: bytes) -> list[int]:
    return [n[0] & 0x1F for n in nal_units(data)]


async def frames_of(sub, kind: str, count: int, timeout: float = 5.0) -> list[EncodedFrame]:
    """The next ``count`` frames of ``kind`` (events and other kinds skipped)."""
    out: list[EncodedFrame] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        item = await asyncio.wait_for(sub.get(), max(0.01, deadline - time.monotonic()))
        if isinstance(item, tuple) and item[1].kind == kind:
            out.append(item[1])
    return out


async def next_event(sub, timeout: float = 5.0) -> PublisherEvent:
    deadline = time.monotonic() + timeout
    while True:
        item = await asyncio.wait_for(sub.get(), max(0.01, deadline - time.monotonic()))
        if isinstance(item, PublisherEvent):
            return item


def frame(kind: str = "video", key: bool = False, ts: int = 0) -> EncodedFrame:
    return EncodedFrame(kind, "h264" if kind == "video" else "opus", b"x", ts,
                        90000 if kind == "video" else 48000, 0.0, key, 1)


# -- the aiortc tap --------------------------------------------------------------------------


def test_aiortc_internals_the_tap_relies_on() -> None:
    """Fails loudly when aiortc moves what _aiortc_tap reaches into (pinned: 1.16.0)."""
    assert aiortc.__version__ == tap.AIORTC_VERSION == "1.16.0"
    tap.check_internals()
    receiver = RTCRtpReceiver("video", types.SimpleNamespace(state="new"))
    assert isinstance(receiver._RTCRtpReceiver__decoder_queue, queue.Queue)
    assert receiver._RTCRtpReceiver__started is False
    handle = inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    assert "self.__timestamp_mapper.map(" in handle
    assert "self.__decoder_queue.put((codec, encoded_frame))" in handle
    receive = inspect.getsource(RTCRtpReceiver.receive)
    assert "self.__decoder_queue," in receive and "decoder_worker" in receive
    stop = inspect.getsource(RTCRtpReceiver._RTCRtpReceiver__stop_decoder)
    assert "self.__decoder_queue.put(None)" in stop
    connect = inspect.getsource(RTCPeerConnection._RTCPeerConnection__connect)
    assert 'dtlsTransport.state == "connected"' in connect and "receiver.receive(" in connect
    assert set(inspect.signature(RTCRtpReceiver._send_rtcp_pli).parameters) == {
        "self", "media_ssrc"}
    jitter_frame = JitterFrame(data=b"\x00", timestamp=0)
    assert (jitter_frame.data, jitter_frame.timestamp) == (b"\x00", 0)


def test_tap_forwards_frames_and_ends_on_none() -> None:
    receiver = RTCRtpReceiver("audio", types.SimpleNamespace(state="new"))
    got = []
    tap.install_tap(receiver, lambda codec, f: got.append((codec, f)))
    assert tap.is_tapped(receiver)
    q = receiver._RTCRtpReceiver__decoder_queue
    q.put(("opus", "frame"))
    assert got == [("opus", "frame")]
    q.put(None)
    assert q.get(timeout=1) is None
    # a failing callback must not raise into aiortc's receive loop
    tap.install_tap(receiver, lambda codec, f: 1 / 0)
    receiver._RTCRtpReceiver__decoder_queue.put(("opus", "frame"))


def test_tap_refuses_a_started_receiver() -> None:
    receiver = RTCRtpReceiver("audio", types.SimpleNamespace(state="new"))
    receiver._RTCRtpReceiver__started = True
    with pytest.raises(tap.TapError):
        tap.install_tap(receiver, lambda codec, f: None)


def test_keyframe_detection() -> None:
    h264 = keyframe_detector("h264")
    sps_pps_idr = (b"\x00\x00\x00\x01\x67\x42" + b"\x00\x00\x00\x01\x68\xce"
                   + b"\x00\x00\x01\x65\x88")
    assert h264(sps_pps_idr)
    assert not h264(b"\x00\x00\x00\x01\x41\x9a\x00")
    assert not h264(b"\x00\x00\x00\x01\x06\x05" + b"\x00\x00\x00\x01\x41\x9a")
    assert not h264(b"") and not h264(b"\x00\x00\x01")
    vp8 = keyframe_detector("vp8")
    assert vp8(b"\x10\x02\x00\x9d\x01\x2a") and not vp8(b"\x31\x02\x00") and not vp8(b"")
    assert keyframe_detector("opus")(b"\xfc")


# -- subscriptions ---------------------------------------------------------------------------


async def test_subscription_drops_oldest_video_and_resyncs_on_keyframe() -> None:
    hub = RoomHub(queue_size=6)
    sub = hub.subscribe(1, "r")
    sub.push_frame("a", frame("video", key=True, ts=0))
    sub.push_frame("a", frame("audio"))
    for ts in (1, 2, 3, 4):
        sub.push_frame("a", frame("video", ts=ts))
    # full: the keyframe and its P frames go, and so does the new P frame
    sub.push_frame("a", frame("video", ts=5))
    assert sub.dropped_video == 6 and sub.dropped_audio == 0
    assert [i[1].kind for i in sub._items] == ["audio"]
    sub.push_frame("a", frame("video", ts=6))  # still waiting for a keyframe
    sub.push_frame("a", frame("video", key=True, ts=7))
    sub.push_frame("a", frame("video", ts=8))
    assert sub.dropped_video == 7
    assert [(i[1].kind, i[1].timestamp) for i in sub._items] == [
        ("audio", 0), ("video", 7), ("video", 8)]
    for _ in range(10):  # video goes first; audio only once no video is queued
        sub.push_frame("a", frame("audio"))
    assert sub.qsize() == 6 and sub.dropped_video == 9 and sub.dropped_audio == 5
    sub.push_event(PublisherEvent("unpublished", "a", None))
    assert sub.qsize() == 7  # events are never dropped
    assert sub.get_nowait()[1].kind == "audio"
    sub.close()
    with pytest.raises(SubscriptionClosed):
        await sub.get()
    await hub.close()


async def test_hub_close_ends_waiting_subscribers() -> None:
    hub = RoomHub()
    sub = hub.subscribe(1, "r", "u")
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    await hub.close()
    with pytest.raises(SubscriptionClosed):
        await waiter
    assert not hub.is_publishing(1, "r") and hub.publishers(1, "r") == []


async def test_offer_validation() -> None:
    hub = RoomHub()
    webrtc = WebRtcIngest(hub)
    for bad in ("", "hello", "v=0\r\nm=audio x\r\n",
                "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"):
        with pytest.raises(InvalidParameter) as err:
            await webrtc.publish(1, "r", "u", bad)
        assert err.value.field == "sdp"
    await webrtc.close()
    await hub.close()


# -- tokens ----------------------------------------------------------------------------------


def test_tokens() -> None:
    token = make_token(7, "room", "alice", "s3cret")
    verify_token(token, 7, "room", "alice", "s3cret")
    for args in ((8, "room", "alice", "s3cret"), (7, "other", "alice", "s3cret"),
                 (7, "room", "bob", "s3cret"), (7, "room", "alice", "wrong")):
        with pytest.raises(AuthError):
            verify_token(token, *args)
    with pytest.raises(AuthError, match="expired"):
        verify_token(make_token(7, "room", "alice", "s3cret", ttl_s=-10), 7, "room", "alice",
                     "s3cret")
    with pytest.raises(AuthError) as err:
        verify_token("", 7, "room", "alice", "s3cret")
    assert err.value.code == 1000


# -- WHIP over HTTP --------------------------------------------------------------------------


async def test_whip_http_errors_cors_and_page(whip_server) -> None:
    s = whip_server
    url = s.url("r1", "alice")
    offer = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    sdp = {"Content-Type": "application/sdp"}

    def bearer(token: str) -> dict[str, str]:
        return {**sdp, "Authorization": f"Bearer {token}"}

    async with httpx.AsyncClient() as http:
        r = await http.post(url, content=offer, headers=sdp)
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "*"
        for token in (s.token("r1", "alice", ttl_s=-5),  # expired
                      make_token(s.appid, "r1", "alice", "forged"),  # forged
                      s.token("other", "alice"), s.token("r1", "bob"), "garbage"):
            assert (await http.post(url, content=offer, headers=bearer(token))).status_code == 401
        good = bearer(s.token("r1", "alice"))
        r = await http.post(f"{s.base_url}/whip/999/r1/alice", content=offer, headers=good)
        assert r.status_code == 404
        r = await http.post(f"{s.base_url}/whip/abc/r1/alice", content=offer, headers=good)
        assert r.status_code == 404
        r = await http.post(url, content=offer,
                            headers={**good, "Content-Type": "application/json"})
        assert r.status_code == 400
        for bad in ("hello", "v=0\r\nm=audio x\r\n", offer, "v=0\r\n\xff"):
            r = await http.post(url, content=bad.encode("latin-1"), headers=good)
            assert r.status_code == 400, (bad, r.text)
        r = await http.options(url, headers={"Origin": "https://elsewhere.example",
                                             "Access-Control-Request-Method": "POST"})
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == "*"
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "Authorization" in r.headers["access-control-allow-headers"]
        assert "Content-Type" in r.headers["access-control-allow-headers"]
        assert "Location" in r.headers["access-control-expose-headers"]
        session = f"{s.base_url}/whip/session/nope"
        r = await http.options(session)
        assert r.status_code == 204 and "DELETE" in r.headers["access-control-allow-methods"]
        r = await http.delete(session)
        assert r.status_code == 404 and r.headers["access-control-allow-origin"] == "*"
        assert (await http.patch(session, content="a=candidate")).status_code == 405
        r = await http.get(f"{s.base_url}/publish")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "RTCPeerConnection" in r.text and "getUserMedia" in r.text


async def test_offers_without_a_usable_codec_or_ice_get_400(whip_server) -> None:
    s = whip_server
    pc = RTCPeerConnection()
    transceiver = pc.addTransceiver("audio", direction="sendonly")
    transceiver.setCodecPreferences([c for c in RTCRtpReceiver.getCapabilities("audio").codecs
                                     if c.mimeType == "audio/PCMU"])
    await pc.setLocalDescription(await pc.createOffer())
    pcmu_only = pc.localDescription.sdp
    await pc.close()
    no_ice = ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
              "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\na=sendonly\r\n")
    headers = {"Content-Type": "application/sdp",
               "Authorization": f"Bearer {s.token('r0', 'u')}"}
    async with httpx.AsyncClient() as http:
        for offer in (pcmu_only, no_ice):
            r = await http.post(s.url("r0", "u"), content=offer, headers=headers)
            assert r.status_code == 400 and "sdp" in r.text, r.text
    assert not s.hub.is_publishing(s.appid, "r0") and not s.webrtc.sessions()


async def test_h264_and_opus_reach_a_subscriber_undecoded(whip_server) -> None:
    s = whip_server
    hub = s.hub
    sub = hub.subscribe(s.appid, "r1", "alice")  # before alice publishes
    stop = asyncio.Event()
    task = asyncio.create_task(publish(s.url("r1", "alice"), s.token("r1", "alice"), stop=stop))
    try:
        event = await next_event(sub)
        assert event.kind == "published" and event.uid == "alice"
        info = event.info
        assert info.kinds == {"audio", "video"} and info.video_codec == "h264"
        assert info.audio_codec == "opus"
        assert hub.is_publishing(s.appid, "r1") and hub.publishers(s.appid, "r1") == [info]

        video = await frames_of(sub, "video", 12)
        first = video[0]
        assert first.keyframe and first.codec == "h264" and first.clock_rate == 90000
        assert first.timestamp == 0 and first.epoch == info.epoch
        assert {7, 8, 5} <= set(nal_types(first.data))
        assert all(f.timestamp > g.timestamp for g, f in zip(video, video[1:]))
        decoder = av.CodecContext.create("h264", "r")
        decoded = [p for f in video for p in decoder.decode(av.Packet(f.data))]
        assert len(decoded) >= 10 and {(p.width, p.height) for p in decoded} == {(320, 240)}

        audio = await frames_of(sub, "audio", 10)
        assert {(f.codec, f.clock_rate, f.keyframe) for f in audio} == {("opus", 48000, True)}
        steps = {f.timestamp - g.timestamp for g, f in zip(audio, audio[1:])}
        assert steps == {960}

        # a keyframe request brings an IDR within about a second
        await frames_of(sub, "video", 1)
        asked = time.monotonic()
        sub.request_keyframe("alice")
        while not (await frames_of(sub, "video", 1))[0].keyframe:
            assert time.monotonic() - asked < 1.5
    finally:
        stop.set()
        await task
    event = await next_event(sub)
    assert event.kind == "unpublished" and event.info.epoch == info.epoch
    assert not hub.is_publishing(s.appid, "r1")
    sub.close()


async def test_vp8_publish(whip_server) -> None:
    s = whip_server
    sub = s.hub.subscribe(s.appid, "r2")
    stop = asyncio.Event()
    task = asyncio.create_task(publish(s.url("r2", "v"), s.token("r2", "v"), audio=False,
                                       video_codec="vp8", stop=stop))
    try:
        event = await next_event(sub)
        assert event.info.kinds == {"video"} and event.info.video_codec == "vp8"
        assert event.info.audio_codec is None
        video = await frames_of(sub, "video", 6)
        assert video[0].keyframe and {f.codec for f in video} == {"vp8"}
        decoder = av.CodecContext.create("vp8", "r")
        decoded = [p for f in video for p in decoder.decode(av.Packet(f.data))]
        assert {(p.width, p.height) for p in decoded} == {(320, 240)}
    finally:
        stop.set()
        await task


async def test_second_publish_replaces_first_and_delete_unpublishes(whip_server) -> None:
    s = whip_server
    hub = s.hub
    sub = hub.subscribe(s.appid, "r3")
    url = s.url("r3", "bob")
    early = hub.subscribe(s.appid, "r3", "zoe")  # zoe never publishes: sees nothing
    first = Publisher(url, s.token("r3", "bob"), video=False)
    second = Publisher(url, s.token("r3", "bob"), video=False)
    other = Publisher(s.url("r3", "carol"), s.token("r3", "carol"), video=False)
    try:
        await first.start()
        one = await next_event(sub)
        await other.start()
        assert (await next_event(sub)).uid == "carol"
        await frames_of(sub, "audio", 1)
        await second.start()
        gone, two = await next_event(sub), await next_event(sub)
        assert (gone.kind, gone.uid, gone.info.epoch) == ("unpublished", "bob", one.info.epoch)
        assert (two.kind, two.uid) == ("published", "bob")
        assert two.info.epoch > one.info.epoch and two.info.joined_at == one.info.joined_at
        # bob keeps his place in join order
        assert [p.uid for p in hub.publishers(s.appid, "r3")] == ["bob", "carol"]
        assert hub.publishers(s.appid, "r3")[0].epoch == two.info.epoch
        epochs = set()
        while two.info.epoch not in epochs:
            epochs |= {f.epoch for f in await frames_of(sub, "audio", 1)}
        async with httpx.AsyncClient() as http:  # the replaced session is gone
            assert (await http.delete(first.session_url)).status_code == 404
        await second.stop()  # DELETE
        event = await next_event(sub)
        assert (event.kind, event.uid) == ("unpublished", "bob")
        assert [p.uid for p in hub.publishers(s.appid, "r3")] == ["carol"]
        await other.stop()
        assert (await next_event(sub)).uid == "carol"
        assert not hub.is_publishing(s.appid, "r3")
        assert early.qsize() == 0
    finally:
        for p in (first, second, other):
            await p.stop()


async def test_publisher_that_vanishes_or_never_connects_is_removed(whip_server) -> None:
    s = whip_server
    sub = s.hub.subscribe(s.appid, "r5")
    vanishing = Publisher(s.url("r5", "gone"), s.token("r5", "gone"), video=False)
    await vanishing.start()
    assert (await next_event(sub)).kind == "published"
    await frames_of(sub, "audio", 1)
    await vanishing.pc.close()  # no DELETE: the server sees the DTLS connection close
    event = await next_event(sub)
    assert (event.kind, event.uid) == ("unpublished", "gone")
    await vanishing.stop()

    hub = RoomHub()
    webrtc = WebRtcIngest(hub, connect_timeout_s=0.3)
    sub = hub.subscribe(1, "r")
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    await webrtc.publish(1, "r", "ghost", pc.localDescription.sdp)  # answer never applied
    assert (await next_event(sub)).kind == "published"
    assert (await next_event(sub, timeout=3)).kind == "unpublished"
    assert not hub.is_publishing(1, "r")
    await pc.close()
    await webrtc.close()
    await hub.close()


async def test_plain_aiortc_client_and_no_decoding(whip_server) -> None:
    """A sendrecv offer from plain aiortc (VP8 listed first) gets H.264; nothing is decoded."""
    s = whip_server
    sub = s.hub.subscribe(s.appid, "r4", "pat")
    pc = RTCPeerConnection()
    pc.addTrack(TestPatternTrack(320, 240, 15, Pacer()))
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient() as http:
        r = await http.post(s.url("r4", "pat"), content=pc.localDescription.sdp,
                            headers={"Content-Type": "application/sdp",
                                     "Authorization": f"Bearer {s.token('r4', 'pat')}"})
        assert r.status_code == 201 and r.headers["content-type"] == "application/sdp"
        assert r.headers["etag"] and r.headers["location"].startswith("/whip/session/")
        assert "a=candidate" in r.text and "a=recvonly" in r.text
        await pc.setRemoteDescription(RTCSessionDescription(r.text, "answer"))
        session_id = r.headers["location"].rsplit("/", 1)[1]
        receiver = s.webrtc.session(session_id).receivers["video"]
        assert tap.is_tapped(receiver)
        decoders_before = threading.active_count()
        try:
            video = await frames_of(sub, "video", 5)
            assert video[0].codec == "h264" and video[0].keyframe
            # the remote track stays empty: the decoder thread never got a frame
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(receiver.track.recv(), 0.3)
        finally:
            assert (await http.delete(s.base_url + r.headers["location"])).status_code == 200
            await pc.close()
    # stopping the receiver ends its idle decoder thread and the track, cleanly
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(receiver.track.recv(), 2)
    assert threading.active_count() <= decoders_before
