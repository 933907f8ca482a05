"""Many nodes, one cluster: three ``cloudrec serve`` processes sharing a real PostgreSQL and a
real Redis (started by tests/services.py), recording into a real S3 (moto's server)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from cloudrec.tokens import make_token
from cloudrec.webrtc.whip_client import Publisher, PublishError
from tests.helpers import (
    APPID,
    LOCAL_STORAGE,
    SECRET,
    free_port,
    query_until,
    source_body,
    wait_for,
)
from tests.media_check import playlist_lines, probe_playlist
from tests.nodes import Node, worker_of
from tests.services import _redis_bin, start_redis

pytestmark = pytest.mark.slow

BUCKET = "cluster"
PREFIX = "c/"


class S3:
    def __init__(self) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.server = ThreadedMotoServer(ip_address="127.0.0.1",
                                         port=int(self.url.rsplit(":", 1)[1]), verbose=False)
        self.server.start()
        self.client = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                                   aws_access_key_id="ak", aws_secret_access_key="sk")
        self.client.create_bucket(Bucket=BUCKET)

    def storagecfg(self) -> dict[str, Any]:
        return {"vender": 100, "endpoint": self.url, "bucket": BUCKET, "accesskey": "ak",
                "secretkey": "sk", "fileprefix": [PREFIX.strip("/")]}

    def get(self, key: str) -> bytes | None:
        try:
            return bytes(self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        except self.client.exceptions.NoSuchKey:
            return None

    def download(self, base: str, dest: Path) -> Path:
        """The recording's playlist and segments into ``dest``; answers the playlist."""
        listing = self.client.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX + base)
        for obj in listing.get("Contents", []):
            path = dest / obj["Key"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.get(obj["Key"]) or b"")
        return dest / (PREFIX + base + ".m3u8")


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    store = S3()
    yield store
    store.server.stop()


@pytest.fixture
async def cluster(tmp_path: Path, postgres_url: str, redis_url: str,
                  request: pytest.FixtureRequest) -> AsyncIterator[list[Node]]:
    extra = dict(getattr(request, "param", {}))
    if extra.get("storage_root") == "ROOT":  # one shared root, each node through its own link
        (tmp_path / "shared").mkdir(exist_ok=True)
        for name in ("A", "B", "C"):
            (tmp_path / f"root-{name}").symlink_to(tmp_path / "shared")
    nodes = [Node(tmp_path / name, node_id=name, workers=1, database_url=postgres_url,
                  redis_url=redis_url, cluster_secret="cluster-test-secret",
                  allow_private_storage=True,
                  **{**extra, **({"storage_root": str(tmp_path / f"root-{name}")}
                                 if "storage_root" in extra else {})})
             for name in ("A", "B", "C")]
    for node in nodes:
        node.start()
    try:
        for node in nodes:
            await node.ready()
        yield nodes
    finally:
        for node in nodes:
            node.kill()


async def holder(nodes: list[Node], room: str) -> Node:
    """The node whose worker holds ``room`` (from each node's /healthz)."""
    for _ in range(50):
        for node in nodes:
            if node.proc and node.proc.poll() is None and worker_of(await node.health(), room):
                return node
        await asyncio.sleep(0.1)
    raise AssertionError(f"no node holds room {room}")


async def start_on(node: Node, resid: str, room: str, uid: str, storagecfg: dict[str, Any]) -> str:
    for _ in range(50):
        data = await node.call("startrecord", source_body(resid, room, uid, storagecfg=storagecfg))
        if data["code"] != 4005:
            break
        await asyncio.sleep(0.1)
    assert data["code"] == 0, data
    return str(data["recordid"])


def base_of(room: str, recordid: str, uid: str) -> str:
    return f"{APPID}_{room}_{recordid}_{uid}"


async def test_any_node_answers_any_call(cluster: list[Node], s3: S3, tmp_path: Path) -> None:
    a, b, c = cluster
    pub = await b.publisher("c1", "alice")
    resid = (await a.call("applyrecord", {}))["resid"]
    recordid = await start_on(c, resid, "c1", "alice", s3.storagecfg())
    for node in cluster:
        query = await node.call(f"queryrecord/c1/{recordid}")
        assert query["code"] == 0 and query["data"]["status"] in (1, 2), (node.settings, query)
    assert (await a.call("startrecord", source_body(resid, "c1", "alice",
                                                    storagecfg=s3.storagecfg())))["code"] == 4011
    await query_until(a.call, "c1", recordid, lambda q: q["data"]["duration"] >= 3.5,
                      what="3.5 s recorded")
    stopped = await b.call("stoprecord", {"resid": resid, "appid": APPID, "roomid": "c1",
                                          "recordid": recordid})
    assert stopped["code"] == 0, stopped
    await pub.stop()
    for node in cluster:
        assert (await node.call(f"queryrecord/c1/{recordid}"))["code"] == 4013
    playlist = s3.download(base_of("c1", recordid, "alice"), tmp_path / "dl")
    assert playlist_lines(playlist)[-1] == "#EXT-X-ENDLIST"
    probe = probe_playlist(playlist)
    assert probe.width == 320 and probe.audio_codec == "aac"
    assert 3.0 < probe.duration < 6.5


async def test_a_killed_node_s_task_resumes_on_another(cluster: list[Node], s3: S3,
                                                       tmp_path: Path) -> None:
    a, b, c = cluster
    pub = await a.publisher("k1", "bob")
    resid = (await b.call("applyrecord", {}))["resid"]
    recordid = await start_on(b, resid, "k1", "bob", s3.storagecfg())
    key = PREFIX + base_of("k1", recordid, "bob") + ".m3u8"

    async def two_stored() -> str | None:
        text = (await asyncio.to_thread(s3.get, key) or b"").decode()
        return text if len([n for n in text.splitlines() if n.endswith(".ts")]) >= 2 else None

    await wait_for(two_stored, interval=0.2, what="two segments stored")
    victim = await holder(cluster, "k1")
    before_text = (s3.get(key) or b"").decode()
    before = [line for line in before_text.splitlines() if line.endswith(".ts")]
    assert len(before) >= 2
    victim.kill()
    killed = time.monotonic()
    await pub.stop()
    live = [n for n in cluster if n is not victim]

    # The publisher comes back through another node; until the dead node's lease runs out the
    # room still points at it and publishing fails: the death is noticed within seconds.
    pub = None
    while pub is None:
        assert time.monotonic() - killed < 20, "the dead node's room was not freed in time"
        try:
            pub = await live[0].publisher("k1", "bob")
        except PublishError:
            await asyncio.sleep(0.5)
    noticed = time.monotonic() - killed
    assert noticed < 12
    new_holder = await holder(live, "k1")
    assert new_holder is not victim
    await query_until(live[1].call, "k1", recordid,
                      lambda q: q["code"] == 0 and q["data"].get("segments", 0) > len(before)
                      and q["data"]["duration"] > len(before) + 2.5,
                      what="2.5 s more than before the kill recorded")
    stopped = await live[1].call("stoprecord", {"resid": resid, "appid": APPID, "roomid": "k1",
                                                "recordid": recordid})
    assert stopped["code"] == 0, stopped
    await pub.stop()
    playlist = s3.download(base_of("k1", recordid, "bob"), tmp_path / "dl")
    lines = playlist_lines(playlist)
    after = [line for line in lines if line.endswith(".ts")]
    assert after[: len(before)] == before, "every segment stored before the kill stays listed"
    assert len(after) > len(before) and "#EXT-X-DISCONTINUITY" in lines
    assert lines[-1] == "#EXT-X-ENDLIST"
    probe = probe_playlist(playlist)
    assert probe.duration > len(before) + 2.0


@pytest.mark.parametrize("cluster", [{"max_recordings": 1}], indirect=True)
async def test_a_full_cluster_refuses_at_once(cluster: list[Node], s3: S3) -> None:
    pubs: list[Publisher] = []
    for i, node in enumerate(cluster):
        room = f"full{i}"
        pubs.append(await node.publisher(room, "u"))
        resid = (await node.call("applyrecord", {}))["resid"]
        await start_on(node, resid, room, "u", s3.storagecfg())
        for _ in range(50):  # the recording shows in its worker's next heartbeat
            if (await holder(cluster, room)) and worker_of(
                    await (await holder(cluster, room)).health(), room)["recordings"] == 1:
                break
            await asyncio.sleep(0.1)
    holders = {(await holder(cluster, f"full{i}")).settings["node_id"] for i in range(3)}
    assert holders == {"A", "B", "C"}, "each new room went to a node with room for it"

    pubs.append(await cluster[0].publisher("full0", "second"))  # an existing room takes him
    resid = (await cluster[1].call("applyrecord", {}))["resid"]
    t0 = time.monotonic()
    data = await cluster[1].call("startrecord", source_body(resid, "full0", "second",
                                                           storagecfg=s3.storagecfg()))
    assert time.monotonic() - t0 < 10.0  # at once: not queued until a timeout (30 s)
    assert data["code"] == 4001 and data["_status"] == 503, data
    assert "no capacity" in data["message"]

    with pytest.raises(PublishError) as refused:  # a new room finds no node
        await cluster[2].publisher("full9", "u")
    assert refused.value.status == 503
    for pub in pubs:
        await pub.stop()


async def test_a_mix_across_nodes_shows_both_rooms(cluster: list[Node], s3: S3,
                                                   tmp_path: Path) -> None:
    from tests.e2e.test_mixed import BLUE, OUT, RED, at, near, publish, video_frames

    a, b, c = cluster
    pubs = [await publish(a, "mA", "red", RED)]
    first = await holder(cluster, "mA")
    pubs.append(await publish(b, "mB", "blue", BLUE, tone_hz=1000))
    second = await holder(cluster, "mB")
    assert first is not second, "a new room goes to the node with the most spare capacity"
    layout = {"input": [
        {"uid": "red", "roomid": "mA", "streamtype": 0, "layoutX": 0, "layoutY": 0,
         "layoutW": 160, "layoutH": 240, "crop": 1},
        {"uid": "blue", "roomid": "mB", "streamtype": 0, "layoutX": 160, "layoutY": 0,
         "layoutW": 160, "layoutH": 240, "crop": 1}],
        "output": dict(OUT)}
    resid = (await c.call("applyrecord", {}))["resid"]
    body = {"resid": resid, "appid": APPID, "roomid": "mA", "recordtype": 0, "streamtype": 1,
            "mixconfig": layout, "storagecfg": s3.storagecfg()}
    data = await c.call("startrecord", body)
    assert data["code"] == 0, data
    recordid = data["recordid"]
    try:
        mixing = await query_until(c.call, "mA", recordid,
                                   lambda q: len(q["data"].get("inputs") or []) == 2,
                                   what="both inputs in the mix")
        await query_until(c.call, "mA", recordid,
                          lambda q: q["data"]["segments"] >= mixing["data"]["segments"] + 2,
                          what="two segments with both inputs")
        stopped = await a.call("stoprecord", {"resid": resid, "appid": APPID, "roomid": "mA",
                                              "recordid": recordid})
        assert stopped["code"] == 0, stopped
    finally:
        for pub in pubs:
            await pub.stop()
    playlist = s3.download(f"{APPID}_mA_{recordid}", tmp_path / "dl")
    frames = video_frames(playlist)
    assert frames, "the mix has video"
    last = frames[-1][1]
    assert near(at(last, (80, 120)), RED), at(last, (80, 120))
    assert near(at(last, (240, 120)), BLUE), at(last, (240, 120))


@pytest.mark.parametrize("cluster", [{"storage_root": "ROOT"}], indirect=True)
@pytest.mark.parametrize("kind", ["source", "mix"])
async def test_a_killed_node_never_reuses_a_name_and_its_segments_are_listed(
        cluster: list[Node], tmp_path: Path, kind: str) -> None:
    """Local storage under one shared ``storage_root`` (each node reaches it through its own
    link). The recording node cannot store (its link is broken) and is SIGKILLed: the task goes
    on elsewhere past every number the task store knows, after a discontinuity; the dead node
    comes back, stores what its spool kept, and the owner lists those segments in place (a
    mix's owner through its mix process, which writes the mix's playlist)."""
    shared = tmp_path / "shared"
    storagecfg = {**LOCAL_STORAGE, "bucket": "bkt", "fileprefix": ["p"]}
    pub = await cluster[0].publisher("n1", "eve")
    victim = await holder(cluster, "n1")
    resid = (await victim.call("applyrecord", {}))["resid"]
    if kind == "source":
        recordid = await start_on(victim, resid, "n1", "eve", storagecfg)
        base = base_of("n1", recordid, "eve")
    else:
        from tests.e2e.test_mixed import OUT
        data = await victim.call("startrecord", {
            "resid": resid, "appid": APPID, "roomid": "n1", "recordtype": 0, "streamtype": 1,
            "storagecfg": storagecfg, "mixconfig": {"output": dict(OUT), "input": [
                {"uid": "eve", "roomid": "n1", "streamtype": 0, "layoutX": 0, "layoutY": 0,
                 "layoutW": 320, "layoutH": 240, "crop": 0}]}})
        assert data["code"] == 0, data
        recordid = str(data["recordid"])
        base = f"{APPID}_n1_{recordid}"
    link = Path(victim.settings["storage_root"])
    link.unlink()
    link.write_text("not a directory: the victim's store fails")
    await query_until(victim.call, "n1", recordid,
                      lambda q: q["code"] == 0 and q["data"].get("segments", 0) >= 3,
                      what="three segments closed on the victim")
    victim.kill()
    await pub.stop()
    live = [n for n in cluster if n is not victim]
    killed = time.monotonic()
    pub = None
    while pub is None:
        assert time.monotonic() - killed < 20, "the dead node's room was not freed in time"
        try:
            pub = await live[0].publisher("n1", "eve")
        except PublishError:
            await asyncio.sleep(0.5)
    playlist = shared / "bkt" / "p" / (base + ".m3u8")

    def names() -> list[str]:
        try:
            return [x for x in playlist.read_text().splitlines() if x.endswith(".ts")]
        except OSError:
            return []

    await wait_for(lambda: len(names()) >= 2, interval=0.2, what="the new owner's segments")
    first_new = names()[0]
    # the dead node comes back, its link mended
    link.unlink()
    link.symlink_to(shared)
    back = Node(victim.data_dir, victim.port, **{k: v for k, v in victim.settings.items()
                                                if k not in ("data_dir", "port")})
    back.start()
    cluster[cluster.index(victim)] = back
    await back.ready()
    await wait_for(lambda: names()[0] < first_new, timeout=40, interval=0.2,
                   what="the returning node's segments listed")
    stopped = await live[1].call("stoprecord", {"resid": resid, "appid": APPID, "roomid": "n1",
                                                "recordid": recordid})
    assert stopped["code"] == 0, stopped
    await pub.stop()
    await wait_for(lambda: playlist.read_text().rstrip().endswith("#EXT-X-ENDLIST"),
                   interval=0.2, what="the playlist ended")
    lines = playlist.read_text().splitlines()
    listed = [x for x in lines if x.endswith(".ts")]
    numbers = [int(x.rsplit("_", 1)[1][:-3]) for x in listed]
    print("listed:", numbers, "discontinuities:", lines.count("#EXT-X-DISCONTINUITY"))
    assert len(set(listed)) == len(listed) and numbers == sorted(numbers), listed
    old = [n for n in numbers if n < int(first_new.rsplit("_", 1)[1][:-3])]
    assert len(old) >= 3, listed  # what the dead node closed, listed in place
    assert "#EXT-X-DISCONTINUITY" in lines
    for name in listed:
        assert (playlist.parent / name).stat().st_size > 0, name
    probe = probe_playlist(playlist)
    assert probe.video_frames > 0 and probe.audio_frames > 0


async def test_whip_while_redis_is_down_is_503_and_works_again(tmp_path: Path,
                                                               postgres_url: str) -> None:
    """The cluster directory out of reach is the node's trouble, not the publisher's: a WHIP
    offer gets 503 with Retry-After (it got 400 "cannot answer the offer" in a soak), and
    publishing works again once Redis is back."""
    redis_url, stop_redis = start_redis(tmp_path)
    node = Node(tmp_path / "A", node_id="A", workers=1, database_url=postgres_url,
                redis_url=redis_url, cluster_secret="cluster-test-secret").start()
    try:
        await node.ready()
        port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        stop_redis()
        url = f"{node.base}/whip/{APPID}/down/alice"
        headers = {"Authorization": f"Bearer {make_token(APPID, 'down', 'alice', SECRET)}",
                   "Content-Type": "application/sdp"}
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.post(url, content="v=0\r\n", headers=headers)
        assert answer.status_code == 503 and answer.headers.get("retry-after"), answer.text
        assert "out of reach" in answer.text

        back = subprocess.Popen([_redis_bin(), "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                                stdout=subprocess.DEVNULL)
        try:
            async def publishes() -> Publisher | None:
                try:
                    return await node.publisher("down", "alice")
                except PublishError:
                    return None

            pub = await wait_for(publishes, timeout=30, interval=0.5,
                                 what="a publish once Redis is back")
            await pub.stop()
        finally:
            back.terminate()
            back.wait(10)
    finally:
        node.kill()
