"""A publisher or a viewer that leaves is released: nothing of its peer connection stays in the
worker's memory.

Each WHIP publication and each WHEP viewer is one aiortc peer connection with its ICE, DTLS and
RTP objects (~0.5 MB with the lean receive path's buffers). A 2-hour soak saw a worker grow
240 MB/h while publishers came and went: every one that left stayed alive, kept by the lean
path's per-connection media handler (held in a module map whose key it referred to). Here three
publishers and two viewers come and go on one in-process node; after a garbage collection none of
their sessions or peer connections is left.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection

from cloudrec.webrtc.session import WebRtcSession
from cloudrec.webrtc.viewer import ViewerSession
from tests.e2e.test_recording import publish
from tests.e2e.test_whep import watch
from tests.helpers import APPID, Server, make_settings, running_server, wait_for


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(make_settings(tmp_path)) as s:
        yield s


def alive(kind: type) -> list[object]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, kind)]


async def test_publishers_and_viewers_that_leave_are_released(server: Server) -> None:
    hub = server.app.state.hub
    for i in range(3):
        pub = await publish(server, "gone", f"p{i}", width=160, height=120)
        viewer = await watch(server, "gone", f"p{i}") if i < 2 else None
        if viewer is not None:
            await viewer.wait_pictures(3)
            await viewer.stop()
        await pub.stop()
        await wait_for(lambda: not hub.publishers(APPID, "gone"),
                       timeout=10, what="the publisher gone")
        del pub, viewer
    await asyncio.sleep(0.5)  # the peer connections' last tasks end
    sessions = alive(WebRtcSession)
    viewers = alive(ViewerSession)
    connections = alive(RTCPeerConnection)
    assert sessions == [], f"{len(sessions)} publisher sessions kept after leaving"
    assert viewers == [], f"{len(viewers)} viewer sessions kept after leaving"
    assert connections == [], f"{len(connections)} peer connections kept"
