"""The relay: a room on hub A (a real WHIP publisher) recorded through hub B, encoded all the way.

Hub A is the ``whip_server`` fixture's; hub B is a second RoomHub in the same process, fed only
by :class:`RelayLinks` over TCP from a :class:`RelayServer` beside hub A.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from cloudrec.mediatypes import EncodedFrame
from cloudrec.relay import RelayLinks, RelayRefused, RelayServer, wire
from cloudrec.relay.links import RelayUpstream
from cloudrec.rooms import Publication, PublisherEvent, PublisherInfo, RoomHub
from cloudrec.webrtc.whip_client import Publisher

SECRET = "relay-secret"


def attach_relayed(hub: RoomHub, key: tuple[int, str], info: PublisherInfo,
                   ask_keyframe: Callable[[], None]) -> Publication:
    """What a relay link does on a ``published`` message."""
    return hub.attach(*key, info.uid, kinds=info.kinds,
                      codecs={"video": info.video_codec, "audio": info.audio_codec},
                      upstream=RelayUpstream(ask_keyframe), origin="relay",
                      joined_at=info.joined_at)


@dataclass
class Relay:
    s: object  # the whip_server fixture (hub A)
    server: RelayServer
    hub_b: RoomHub
    links: RelayLinks


@pytest.fixture
async def relay(whip_server) -> AsyncIterator[Relay]:
    server = await RelayServer(whip_server.hub, SECRET).start()
    hub_b = RoomHub()
    links = RelayLinks(hub_b, SECRET, heartbeat_s=0.2, timeout_s=1.0, backoff_s=(0.05, 0.4))
    try:
        yield Relay(whip_server, server, hub_b, links)
    finally:
        await links.close()
        await hub_b.close()
        await server.close()


async def next_event(sub, timeout: float = 5.0) -> PublisherEvent:
    deadline = time.monotonic() + timeout
    while True:
        item = await asyncio.wait_for(sub.get(), max(0.01, deadline - time.monotonic()))
        if isinstance(item, PublisherEvent):
            return item


async def frames_of(sub, kind: str, count: int, timeout: float = 5.0) -> list[EncodedFrame]:
    out: list[EncodedFrame] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        item = await asyncio.wait_for(sub.get(), max(0.01, deadline - time.monotonic()))
        if isinstance(item, tuple) and item[1].kind == kind:
            out.append(item[1])
    return out


async def drain(sub, seconds: float, count: int = -1) -> list[tuple[str, EncodedFrame]]:
    """Every frame the subscription gets for ``seconds`` (or until ``count`` frames)."""
    out = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and len(out) != count:
        try:
            item = await asyncio.wait_for(sub.get(), left)
        except TimeoutError:
            break
        if isinstance(item, tuple):
            out.append(item)
    return out


def same(frame: EncodedFrame) -> tuple:
    """What must survive the relay unchanged (the epoch is the receiving hub's own)."""
    return (frame.kind, frame.codec, frame.data, frame.timestamp, frame.clock_rate,
            frame.keyframe, frame.wallclock)


async def test_a_relayed_room_is_the_same_room(relay) -> None:
    s, server, hub_b, links = relay.s, relay.server, relay.hub_b, relay.links
    appid = s.appid
    ensured: list[asyncio.Future] = []
    hub_b.on_room_subscribed = lambda key: ensured.append(
        asyncio.ensure_future(links.ensure(*key, server.address)))
    hub_b.on_room_unsubscribed = lambda key: links.release(*key)

    sub_a = s.hub.subscribe(appid, "r1")
    sub_b = hub_b.subscribe(appid, "r1")  # no publisher on B: the hook opens the relay
    assert len(ensured) == 1
    link = await ensured[0]
    assert links.addresses == {(appid, "r1"): [server.address]} and link.connected
    # concurrent ensure calls share the cached link
    again = await asyncio.gather(*(links.ensure(appid, "r1", server.address) for _ in range(3)))
    assert all(x is link for x in again) and server.stats.connections == 1

    publisher = Publisher(s.url("r1", "alice"), s.token("r1", "alice"))
    try:
        await publisher.start()
        ev_a, ev_b = await next_event(sub_a), await next_event(sub_b)
        assert (ev_b.kind, ev_b.uid) == ("published", "alice") and ev_b.info.relayed
        for field in ("kinds", "video_codec", "audio_codec", "joined_at", "sender_clock"):
            assert getattr(ev_b.info, field) == getattr(ev_a.info, field)
        assert not ev_a.info.relayed and ev_a.info.sender_clock  # a WebRTC publisher
        assert hub_b.publishers(appid, "r1") == [ev_b.info]
        assert hub_b.is_publishing(appid, "r1")
        assert not hub_b.is_publishing(appid, "r1", relayed=False)
        assert hub_b.publishers(appid, "r1", relayed=False) == []
        assert s.hub.is_publishing(appid, "r1", relayed=False)

        # the same frames, in the same order, bytes, timestamps and keyframe flags intact
        got_a, got_b = await asyncio.gather(drain(sub_a, 2.5), drain(sub_b, 2.5))
        n = min(len(got_a), len(got_b))
        assert n >= 50 and {f.kind for _, f in got_b} == {"audio", "video"}
        assert [same(f) for _, f in got_b[:n]] == [same(f) for _, f in got_a[:n]]
        # capture times from the publisher's sender reports (aiortc's first within 1.5 s)
        assert {f.kind for _, f in got_b[:n] if f.wallclock is not None} == {"audio", "video"}
        assert abs(len(got_a) - len(got_b)) <= 5
        assert {uid for uid, _ in got_b} == {"alice"}
        assert {f.epoch for _, f in got_b} == {ev_b.info.epoch}
        assert got_b[0][1].kind != "video" or got_b[0][1].keyframe
        # one monotonic clock here: arrival on B is A's arrival plus the relay's latency
        lag = [fb.arrival - fa.arrival for (_, fa), (_, fb) in zip(got_a, got_b)]
        assert -0.005 < min(lag) and max(lag) < 0.25, (min(lag), max(lag))
        assert link.stats.frames >= len(got_b) and server.stats.frames >= len(got_b)
        assert server.stats.dropped_video == server.stats.dropped_audio == 0

        # a keyframe request on B reaches the publisher on A
        await frames_of(sub_b, "video", 1)
        asked = time.monotonic()
        sub_b.request_keyframe("alice")
        while not (await frames_of(sub_b, "video", 1))[0].keyframe:
            assert time.monotonic() - asked < 1.5
        assert link.stats.keyframe_requests >= 1 and server.stats.keyframe_requests >= 1
    finally:
        await publisher.stop()

    ev_b = await next_event(sub_b)
    assert (ev_b.kind, ev_b.uid) == ("unpublished", "alice")
    assert not hub_b.is_publishing(appid, "r1")
    # the last subscription on B ends: the hook releases the relay, and A's side ends too
    sub_b.close()
    assert links.links == [] and links.addresses == {}
    for _ in range(100):
        if server.open_connections == 0:
            break
        await asyncio.sleep(0.02)
    assert server.open_connections == 0
    sub_a.close()


async def test_a_wrong_secret_is_refused(relay) -> None:
    s, server = relay.s, relay.server
    impostor = RelayLinks(relay.hub_b, "not-the-secret")
    with pytest.raises(RelayRefused):
        await impostor.ensure(s.appid, "r2", server.address)
    assert server.stats.refused == 1 and server.stats.connections == 0
    assert impostor.links == [] and not relay.hub_b.is_publishing(s.appid, "r2")

    # a client must prove it knows the secret for this very nonce: a replayed AUTH fails too
    reader, writer = await asyncio.open_connection(server.host, server.port)
    kind, body = await wire.read_message(reader)
    assert kind == wire.HELLO and body[0] == wire.VERSION
    request = json.dumps({"appid": s.appid, "roomid": "r2"}).encode()
    stale_nonce = secrets.token_bytes(wire.NONCE_BYTES)
    mac = wire.client_mac(SECRET.encode(), stale_nonce, stale_nonce, request)
    writer.write(wire.message(wire.AUTH, stale_nonce + mac + request))
    kind, body = await wire.read_message(reader)
    assert kind == wire.ERROR and b"authentication" in body
    assert await reader.read() == b""  # closed
    writer.close()
    assert server.stats.refused == 2

    # and nothing listens there any more: ensure raises and caches nothing
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    with pytest.raises(OSError):
        await relay.links.ensure(s.appid, "r2", f"127.0.0.1:{free}")
    assert relay.links.links == []


async def test_the_link_reconnects_after_the_server_restarts(relay) -> None:
    s, server, hub_b, links = relay.s, relay.server, relay.hub_b, relay.links
    sub_b = hub_b.subscribe(s.appid, "r3")
    link = await links.ensure(s.appid, "r3", server.address)
    publisher = Publisher(s.url("r3", "bob"), s.token("r3", "bob"))
    server2 = None
    try:
        await publisher.start()
        first = await next_event(sub_b)
        assert first.kind == "published"
        await frames_of(sub_b, "video", 3)

        await server.close()  # the link drops: bob is unpublished here meanwhile
        gone = await next_event(sub_b)
        assert (gone.kind, gone.uid, gone.info.epoch) == ("unpublished", "bob", first.info.epoch)
        assert not hub_b.is_publishing(s.appid, "r3") and not link.connected
        await asyncio.sleep(0.3)  # a few failed attempts, with backoff

        server2 = await RelayServer(s.hub, SECRET, port=server.port).start()
        back = await next_event(sub_b, timeout=5)
        assert (back.kind, back.uid) == ("published", "bob")
        assert back.info.epoch != first.info.epoch  # a new publication after a gap
        video = await frames_of(sub_b, "video", 5)
        assert video[0].keyframe and {f.epoch for f in video} == {back.info.epoch}
        assert link.connected and link.stats.connections == 2
        assert links.links == [link]
    finally:
        await publisher.stop()
        if server2 is not None:
            await server2.close()
    sub_b.close()


async def test_a_slow_client_drops_video_until_a_keyframe_and_never_blocks_the_hub() -> None:
    """Frames come from a relayed publication on hub A (``forward_relayed``), so they can be
    big and fast; the client authenticates and then does not read for a while."""
    hub_a = RoomHub()
    keyframes_asked = []
    info = PublisherInfo("big", frozenset({"audio", "video"}), "h264", "opus", time.time(), 0)
    pub = attach_relayed(hub_a, (1, "r"), info, lambda: keyframes_asked.append(time.monotonic()))
    local = hub_a.subscribe(1, "r")
    server = await RelayServer(hub_a, SECRET, max_buffer_bytes=64 * 1024, timeout_s=60,
                               forward_relayed=True).start()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    kind, body = await wire.read_message(reader)
    nonce = secrets.token_bytes(wire.NONCE_BYTES)
    request = json.dumps({"appid": 1, "roomid": "r"}).encode()
    mac = wire.client_mac(SECRET.encode(), body[1:], nonce, request)
    writer.write(wire.message(wire.AUTH, nonce + mac + request))
    assert (await wire.read_message(reader))[0] == wire.OK
    try:
        payload = bytes(32 * 1024)
        sent = 0
        consumer = asyncio.create_task(drain(local, 5.0, count=600))
        started = time.monotonic()
        for i in range(300):  # ~10 MB, a keyframe every 30 frames
            pub.forward(EncodedFrame("video", "h264", payload, i * 6000, 90000,
                                     time.monotonic(), i % 30 == 0, pub.epoch))
            pub.forward(EncodedFrame("audio", "opus", b"\xfc" * 80, i * 960,
                                     48000, time.monotonic(), True, pub.epoch))
            sent += 2
            await asyncio.sleep(0)
        assert time.monotonic() - started < 5  # the hub was never held up
        assert len(await consumer) == sent  # a local subscriber lost nothing
        assert server.stats.dropped_video > 0 and keyframes_asked

        # now read everything the client was sent: video resumes only at keyframes
        hub_a.detach(pub, "relay ended")
        slots: dict[int, str] = {}
        video = []
        while True:
            kind, body = await asyncio.wait_for(wire.read_message(reader), 5)
            if kind == wire.STREAM:
                slots[wire.SLOT.unpack_from(body)[0]] = json.loads(body[2:])["kind"]
            elif kind == wire.FRAME:
                slot, flags, ts, _ = wire.FRAME_FIELDS.unpack_from(body)
                if slots[slot] == "video":
                    video.append((ts // 6000, bool(flags & wire.FLAG_KEY)))
            elif kind == wire.UNPUBLISHED:
                break
        indexes = [i for i, _ in video]
        assert indexes == sorted(indexes) and len(indexes) < 300
        for (prev, _), (i, key) in zip(video, video[1:]):
            if i != prev + 1:
                assert key, f"video resumed at frame {i} without a keyframe"
        assert server.stats.dropped_video == 300 - len(video)
    finally:
        writer.close()
        local.close()
        await server.close()
        await hub_a.close()


async def test_hub_relayed_publications_beside_webrtc_ones(whip_server) -> None:
    s = whip_server
    hub, key = s.hub, (s.appid, "r4")
    calls: list[tuple[str, tuple]] = []
    hub.on_room_subscribed = lambda k: calls.append(("subscribed", k))
    hub.on_room_unsubscribed = lambda k: calls.append(("unsubscribed", k))
    asked: list[str] = []
    now = time.time()
    info = PublisherInfo("alice", frozenset({"audio"}), None, "opus", now - 10, 77)
    alice = attach_relayed(hub, key, info, lambda: asked.append("alice"))
    assert alice.epoch != 77 and alice.info.relayed and alice.info.joined_at == now - 10
    early = PublisherInfo("zed", frozenset({"audio"}), None, "opus", now - 20, 78)
    attach_relayed(hub, key, early, lambda: asked.append("zed"))  # joined earlier: goes first
    assert [p.uid for p in hub.publishers(*key)] == ["zed", "alice"]

    server_side = hub.subscribe(*key, relay=False)
    assert calls == []  # a relay server's subscription never asks for a relay
    assert asked == ["zed", "alice"]  # subscribing asks each publisher (upstream) for a keyframe
    sub = hub.subscribe(*key)  # only relayed publications here: the hook fires
    assert calls == [("subscribed", key)] and asked == ["zed", "alice"] * 2

    publisher = Publisher(s.url("r4", "alice"), s.token("r4", "alice"), video=False)
    try:
        await publisher.start()  # a WebRTC publish of alice here replaces the relayed one
        events = [await next_event(sub) for _ in range(4)]
        assert [(e.kind, e.uid) for e in events[2:]] == [("unpublished", "alice"),
                                                         ("published", "alice")]
        assert not alice.active and not events[3].info.relayed
        assert events[3].info.joined_at == alice.info.joined_at  # keeps its place
        assert [p.uid for p in hub.publishers(*key)] == ["zed", "alice"]
        assert [p.uid for p in hub.publishers(*key, relayed=False)] == ["alice"]
        # the local publication wins over a late relay of the same uid
        late = attach_relayed(hub, key, info, lambda: None)
        assert not late.active and hub.publishers(*key)[1] == events[3].info
        late.forward(EncodedFrame("audio", "opus", b"x", 0, 48000, 0.0, True, 1))
        assert all(f.epoch == events[3].info.epoch for f in await frames_of(sub, "audio", 3))
        other = hub.subscribe(*key)  # a WebRTC publication here: no relay needed
        assert calls == [("subscribed", key)]
        other.close()
        sub.close()
        assert calls[-1] == ("unsubscribed", key)
        server_side.close()
        assert len(calls) == 2
    finally:
        await publisher.stop()
