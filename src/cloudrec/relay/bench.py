"""Measure the relay's CPU per relayed stream: ``python -m cloudrec.relay.bench``.

Both ends run in this process over loopback TCP. Each stream is one uid publishing 640×480@15
H.264 at about 1 Mbit/s (7 KB frames, a 40 KB keyframe every 2 s) and Opus every 20 ms (80 B),
fed into hub A at real rate as relayed publications (:meth:`RoomHub.attach` with
``origin="relay"``, frames through :meth:`Publication.forward`; the server forwards them with
``forward_relayed``; no encoder runs, so only the relay is measured). The same feed is run
twice: consumed on hub A (the baseline), and consumed on hub B through a relay link. The
difference in process CPU time, per stream and second, is the relay's cost: server pump,
socket writes and reads, parsing, and hub B's hand-off, both ends together.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from cloudrec.mediatypes import EncodedFrame
from cloudrec.relay.links import RelayLinks, RelayUpstream
from cloudrec.relay.server import RelayServer
from cloudrec.rooms.hub import RoomHub
from cloudrec.rooms.subscription import Subscription, SubscriptionClosed

SECRET = "bench"
FPS, AUDIO_MS = 15, 20
P_BYTES, KEY_BYTES, OPUS_BYTES = 7_000, 40_000, 80


async def _consume(sub: Subscription, counts: list[int]) -> None:
    try:
        while True:
            item = await sub.get()
            if type(item) is tuple:
                counts[0] += 1
    except SubscriptionClosed:
        pass


async def _feed(hub: RoomHub, streams: int, seconds: float) -> int:
    handles = [hub.attach(1, f"room{i}", "u", kinds=frozenset({"audio", "video"}),
                          codecs={"video": "h264", "audio": "opus"},
                          upstream=RelayUpstream(lambda: None), origin="relay",
                          joined_at=time.time())
               for i in range(streams)]
    p_frame, key_frame, opus = bytes(P_BYTES), bytes(KEY_BYTES), bytes(OPUS_BYTES)
    start = time.monotonic()
    tick, sent = 0, 0
    while (now := time.monotonic()) - start < seconds:
        audio_ts = tick * 960
        video_index, due = divmod(tick * AUDIO_MS * FPS, 1000)
        for h in handles:
            h.forward(EncodedFrame("audio", "opus", opus, audio_ts, 48000, now, True, h.epoch))
            sent += 1
            if due < AUDIO_MS * FPS:  # a video frame falls in this 20 ms tick
                key = video_index % (2 * FPS) == 0
                h.forward(EncodedFrame("video", "h264", key_frame if key else p_frame,
                                       video_index * 6000, 90000, now, key, h.epoch))
                sent += 1
        tick += 1
        await asyncio.sleep(max(0.0, start + tick * AUDIO_MS / 1000 - time.monotonic()))
    return sent


async def _run(streams: int, seconds: float, relay: bool) -> dict[str, float]:
    hub_a, hub_b = RoomHub(), RoomHub()
    server = await RelayServer(hub_a, SECRET, forward_relayed=True).start()
    links = RelayLinks(hub_b, SECRET)
    counts = [0]
    consumers = []
    for i in range(streams):
        if relay:
            await links.ensure(1, f"room{i}", server.address)
        sub = (hub_b if relay else hub_a).subscribe(1, f"room{i}", relay=False)
        consumers.append(asyncio.create_task(_consume(sub, counts)))
    await asyncio.sleep(0.2)
    cpu, wall = time.process_time(), time.monotonic()
    sent = await _feed(hub_a, streams, seconds)
    await asyncio.sleep(0.2)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    stats = server.stats
    await links.close()
    await server.close()
    await hub_b.close()
    await hub_a.close()
    await asyncio.gather(*consumers)
    return {"cpu_s": cpu, "wall_s": wall, "sent": sent, "received": counts[0],
            "wire_bytes": stats.bytes, "dropped": stats.dropped_video + stats.dropped_audio}


async def main(streams: int, seconds: float) -> None:
    base = await _run(streams, seconds, relay=False)
    relayed = await _run(streams, seconds, relay=True)
    per_stream = (relayed["cpu_s"] - base["cpu_s"]) / streams / relayed["wall_s"]
    frames = relayed["sent"]
    print(f"{streams} streams × {seconds:.0f} s, {frames / streams / relayed['wall_s']:.0f} "
          f"frames/s per stream")
    print(f"baseline (consumed on hub A): {base['cpu_s']:.3f} CPU-s, "
          f"{base['received']}/{base['sent']} frames")
    print(f"relayed  (consumed on hub B): {relayed['cpu_s']:.3f} CPU-s, "
          f"{relayed['received']}/{relayed['sent']} frames, dropped {relayed['dropped']}, "
          f"{relayed['wire_bytes'] / relayed['wall_s'] / streams * 8 / 1e6:.2f} Mbit/s "
          f"per stream on the wire")
    print(f"relay cost: {per_stream:.4f} CPU-s/s per stream "
          f"({(relayed['cpu_s'] - base['cpu_s']) / frames * 1e6:.1f} µs per frame, both ends)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(main(args.streams, args.seconds))
