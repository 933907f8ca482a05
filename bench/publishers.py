"""Run N clip publishers (pre-encoded H.264 + Opus, no encoding) until terminated.

usage: publishers.py BASE_URL APPID SECRET ROOM CLIP UID...
Prints "ready" once every publisher is connected.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from cloudrec.publisher import Publisher
from cloudrec.rooms import make_token


async def main(base: str, appid: int, secret: str, room: str, clip: str, uids: list[str]) -> None:
    pubs = [Publisher(f"{base}/whip/{appid}/{room}/{uid}", make_token(appid, room, uid, secret),
                      clip=clip) for uid in uids]
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
