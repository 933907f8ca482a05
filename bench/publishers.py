"""Run N clip publishers (pre-encoded H.264 + Opus, no encoding) until terminated.

usage: publishers.py BASE_URL APPID SECRET ROOM CLIP UID...
A UID of the form ROOM/UID publishes into that room instead of ROOM.
Prints "ready" once every publisher is connected.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from cloudrec.publisher import Publisher
from cloudrec.rooms import make_token


async def main(base: str, appid: int, secret: str, room: str, clip: str, uids: list[str]) -> None:
    pairs = [tuple(u.split("/", 1)) if "/" in u else (room, u) for u in uids]
    pubs = [Publisher(f"{base}/whip/{appid}/{r}/{uid}", make_token(appid, r, uid, secret), clip=clip)
            for r, uid in pairs]
    for pub in pubs:
        await pub.start()
    for pub in pubs:
        await pub.wait_connected()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for pub in pubs:
        await pub.stop()


if __name__ == "__main__":
    base, appid, secret, room, clip, *uids = sys.argv[1:]
    asyncio.run(main(base, int(appid), secret, room, clip, uids))
