"""Run N clip publishers (pre-encoded H.264 + Opus, no encoding) until terminated.

usage: publishers.py BASE_URL APPID SECRET ROOM CLIP UID...
A UID of the form ROOM/UID publishes into that room instead of ROOM.
Prints "ready" once every publisher is connected. A WHIP 503 (the node has no spare capacity
yet: new rooms hold a reservation for a few seconds) is retried for up to RETRY_S.
On SIGUSR1, and on SIGTERM before it stops, prints one line ``stats {"UID": video frames sent}``
(the frames handed to the sender so far), so a benchmark can count the frames it expects.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

from cloudrec.tokens import make_token
from cloudrec.webrtc.whip_client import Publisher, PublishError

RETRY_S = 30.0


async def connect(base: str, appid: int, secret: str, room: str, uid: str, clip: str) -> Publisher:
    deadline = time.monotonic() + RETRY_S
    while True:
        pub = Publisher(f"{base}/whip/{appid}/{room}/{uid}", make_token(appid, room, uid, secret),
                        clip=clip)
        try:
            await pub.start()
            return pub
        except PublishError as exc:
            if exc.status != 503 or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def main(base: str, appid: int, secret: str, room: str, clip: str, uids: list[str]) -> None:
    pairs = [tuple(u.split("/", 1)) if "/" in u else (room, u) for u in uids]
    pubs = [await connect(base, appid, secret, r, uid, clip) for r, uid in pairs]
    for pub in pubs:
        await pub.wait_connected()
    print("ready", flush=True)

    def report() -> None:
        sent = {name: pub.stats.video_frames for name, pub in zip(uids, pubs)}
        print("stats " + json.dumps(sent), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, report)
    await stop.wait()
    report()
    for pub in pubs:
        await pub.stop()


if __name__ == "__main__":
    base, appid, secret, room, clip, *uids = sys.argv[1:]
    asyncio.run(main(base, int(appid), secret, room, clip, uids))
