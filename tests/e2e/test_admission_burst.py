"""A burst of starts on a single-worker node is admitted on committed cost: a CPU hog beside
the node does not refuse what the worker can hold, and max_recordings still caps it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tests.e2e.test_console import publish
from tests.helpers import make_settings, running_server, source_body, startrecord

BURST = 16
HOG = "while True: pass"


async def test_a_burst_beside_a_cpu_hog_is_accepted_up_to_the_cap(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_cpu=0.85, max_recordings=BURST,
                             write_rate_per_s=1000, query_rate_per_s=1000)
    hog = subprocess.Popen([sys.executable, "-c", HOG])
    try:
        async with running_server(settings) as server:
            pub = await publish(server, "burst-room", "alice")
            try:
                await asyncio.sleep(2.5)  # a heartbeat or two with the publisher counted
                resids = [await server.apply() for _ in range(BURST + 1)]
                answers = await asyncio.gather(*(
                    startrecord(server.call, source_body(r, "burst-room", "alice"))
                    for r in resids[:BURST]))
                codes = [a["code"] for a in answers]
                assert codes == [0] * BURST, answers
                await asyncio.sleep(1.5)  # the worker's status counts them now
                over = await startrecord(server.call,
                                         source_body(resids[BURST], "burst-room", "alice"))
                assert over["code"] == 4001 and "at most" in over["message"], over
            finally:
                await pub.stop()
    finally:
        hog.kill()
        hog.wait()
