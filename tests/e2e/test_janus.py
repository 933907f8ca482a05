"""A Janus VideoRoom mirrored into a cloudrec room: Debian's ``janus`` in a network namespace
the test creates (joined to this host by a veth pair, the only path the test's traffic takes
besides loopback), aiortc publishers in its room (H.264, then a late joiner with VP8 and no
display name), a ``janus+http://`` ingress that forwards each of them by RTP into the room (to
this host's end of the pair); both are recorded and the files decoded; the late joiner appears
under its Janus id, a leaver leaves, and deleting the ingress empties the room. The same over
Janus's HTTPS transport (``janus+https://``, a self-signed certificate the node is told to
trust).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.e2e.janus_source import (
    ROOM,
    SECRET,
    JanusPublisher,
    janus_available,
    janus_server,
)
from tests.e2e.netns import Netns, NetnsUnavailable, private_netns
from tests.e2e.test_ingress import check_recording, ingress, playlist_of, record, stop, wait_state
from tests.helpers import APPID, Server, make_settings, running_server, seconds_in, wait_for

pytestmark = pytest.mark.skipif(not janus_available(), reason="Debian's janus is not installed")


@pytest.fixture
def ns() -> Iterator[Netns]:
    with ExitStack() as stack:
        try:
            netns = stack.enter_context(private_netns())
        except NetnsUnavailable as e:
            pytest.skip(f"Janus runs in a network namespace of the test's own, and here {e}")
        yield netns


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Server]:
    settings = make_settings(tmp_path / "data", allow_private_urls=True, segment_seconds=2.0)
    async with running_server(settings) as server:
        yield server


def uids(server: Server, room: str) -> set[str]:
    return {p.uid for p in server.app.state.hub.publishers(APPID, room)}


async def test_janus_room_is_mirrored_and_recorded(node: Server, ns: Netns,
                                                   tmp_path: Path) -> None:
    room = "janusroom"
    async with janus_server(tmp_path / "janus", ns) as janus:
        alice = JanusPublisher(janus, ns, "alice", "h264")
        await alice.start()
        late = JanusPublisher(janus, ns, None, "vp8")
        try:  # Janus forwards to this host's end of the veth pair
            url = f"janus+{janus}?room={ROOM}&secret={SECRET}&host={ns.host_ip}"
            created = await ingress(node, "POST", body={"roomid": room, "url": url})
            assert created["code"] == 0, created
            ingressid = created["ingressid"]
            await wait_state(node, ingressid, {"active"})
            await wait_for(lambda: uids(node, room) == {"alice"}, timeout=15, what="alice")
            rec_alice = await record(node, room, "alice")

            await late.start()  # joins late, with no display name: its Janus id is its uid
            late_uid = str(late.id)
            await wait_for(lambda: uids(node, room) == {"alice", late_uid}, timeout=15,
                           what="the late joiner")
            rec_late = await record(node, room, late_uid)
            alice_list = playlist_of(node, room, rec_alice, "alice")
            late_list = playlist_of(node, room, rec_late, late_uid)
            await wait_for(lambda: seconds_in(alice_list) >= 6 and seconds_in(late_list) >= 4,
                           timeout=60, what="both recorded")

            data = (await ingress(node, "GET", f"/{ingressid}"))["data"]
            assert SECRET not in data["url"] and data["uid"] in (None, ""), data
            described = {p["uid"]: p for p in data["publishers"]}
            assert described["alice"]["source_codecs"] == {"video": "h264", "audio": "opus"}
            assert described[late_uid]["source_codecs"] == {"video": "vp8", "audio": "opus"}

            await stop(node, room, rec_late)
            await late.stop()  # the leaver leaves the cloudrec room too
            await wait_for(lambda: uids(node, room) == {"alice"}, timeout=10,
                           what="the leaver gone")
            await stop(node, room, rec_alice)
        except BaseException:
            await late.stop()
            await alice.stop()
            raise
    try:  # Janus is gone: its publishers leave, the ingress retries
        await wait_for(lambda: not uids(node, room), timeout=10, what="an empty room")
        retrying = await wait_state(node, ingressid, {"retrying"})
        assert retrying["error"], retrying
        assert (await ingress(node, "DELETE", f"/{ingressid}"))["code"] == 0
    finally:
        await late.stop()
        await alice.stop()
    check_recording(alice_list, 5.0)
    check_recording(late_list, 3.0)  # VP8 comes out as H.264


async def test_janus_over_https_is_mirrored(node: Server, ns: Netns, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``janus+https://``: Janus's HTTPS transport with a certificate the node trusts (through
    ``SSL_CERT_FILE``, as an operator's own CA would be; without it the connection is refused
    as self-signed); its publisher is mirrored and recorded."""
    room = "janustls"
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "janus" / "janus-cert.pem"))
    async with janus_server(tmp_path / "janus", ns, https=True) as janus:
        assert janus.startswith("https://")
        alice = JanusPublisher(janus, ns, "alice", "h264")
        await alice.start()
        try:
            url = f"janus+{janus}?room={ROOM}&secret={SECRET}&host={ns.host_ip}"
            created = await ingress(node, "POST", body={"roomid": room, "url": url})
            assert created["code"] == 0, created
            await wait_state(node, created["ingressid"], {"active"})
            await wait_for(lambda: uids(node, room) == {"alice"}, timeout=15, what="alice")
            recordid = await record(node, room, "alice")
            playlist = playlist_of(node, room, recordid, "alice")
            await wait_for(lambda: seconds_in(playlist) >= 3, timeout=40, what="3 s recorded")
            await stop(node, room, recordid)
            assert (await ingress(node, "DELETE", f"/{created['ingressid']}"))["code"] == 0
        finally:
            await alice.stop()
    check_recording(playlist, 2.5)
