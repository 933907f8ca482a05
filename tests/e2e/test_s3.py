"""S3-compatible storage (vender 0/1/2/100) end to end against moto's standalone server: real
HTTP on loopback with signature checking on, real WebRTC publications, outages of the store and
restarts of cloudrec. The stored recordings are downloaded and decoded with PyAV.

moto listens on 127.0.0.1, which the storage endpoint policy refuses by default: these servers
set ``allow_private_storage``, as an operator with a MinIO on the LAN does."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from cloudrec.errors import InvalidParameter, StorageError
from cloudrec.storage import SpoolUploader
from cloudrec.storage.s3 import S3Store, close_clients, resolve_endpoint
from cloudrec.tokens import make_token
from cloudrec.webrtc.whip_client import Publisher
from tests.e2e.test_fetch import rebinding_dns  # noqa: F401  (a fixture)
from tests.helpers import (
    APPID,
    SECRET,
    Server,
    free_port,
    make_settings,
    query_until,
    running_server,
    startrecord,
)
from tests.media_check import probe_playlist

BUCKETS = {0: "rec-oss", 1: "rec-cos", 2: "rec-kodo", 100: "rec-s3"}
PREFIX = "test1/test2/"


@dataclass
class Moto:
    """moto's S3 (and IAM, for real access keys) on a loopback port; stop() is an outage."""

    port: int
    accesskey: str = ""
    secretkey: str = ""
    server: ThreadedMotoServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.stop()
        # stop() only ends serve_forever(); close the listening socket too, so that connecting
        # is refused as with a store that is down (werkzeug closes every connection per request)
        self.server._server.server_close()  # type: ignore[union-attr]
        self.server = None

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=self.accesskey,
                            aws_secret_access_key=self.secretkey)

    def storagecfg(self, vender: int, **overrides: Any) -> dict[str, Any]:
        return {"vender": vender, "endpoint": self.url, "bucket": BUCKETS.get(vender, "rec-s3"),
                "accesskey": self.accesskey, "secretkey": self.secretkey,
                "fileprefix": ["test1", "test2"], **overrides}


_running: Moto | None = None  # moto's backends are global to the process: one server per run


@pytest.fixture(scope="session")
def moto() -> Iterator[Moto]:
    """The fixture may be imported by other test modules (each import is a fixture of its
    own); they all share the one server, whose users and buckets exist only once."""
    global _running
    if _running is not None:
        yield _running
        return
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    store = Moto(free_port())
    store.start()
    admin = {"endpoint_url": store.url, "region_name": "us-east-1",
             "aws_access_key_id": "admin", "aws_secret_access_key": "admin"}
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="recorder")
    iam.put_user_policy(UserName="recorder", PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="recorder")["AccessKey"]
    store.accesskey, store.secretkey = key["AccessKeyId"], key["SecretAccessKey"]
    s3 = store.client()
    for bucket in [*BUCKETS.values(), "rec-outage", "rec-restart", "rec-unit"]:
        s3.create_bucket(Bucket=bucket)
    # from here on every request must carry a valid signature of a known access key
    httpx.post(f"{store.url}/moto-api/reset-auth", content=b"0").raise_for_status()
    _running = store
    try:
        yield store
    finally:
        _running = None
        if store.server is not None:
            httpx.post(f"{store.url}/moto-api/reset-auth", content=b"inf")  # auth off again
            store.stop()


# -- helpers ------------------------------------------------------------------------------------


async def publish(server: Server, room: str, uid: str) -> Publisher:
    pub = Publisher(server.whip_url(room, uid), make_token(APPID, room, uid, SECRET))
    await pub.start()
    await pub.wait_connected()
    return pub


def body(resid: str, room: str, uid: str, storagecfg: dict[str, Any]) -> dict[str, Any]:
    return {"resid": resid, "appid": APPID, "roomid": room, "recordtype": 0, "streamtype": 2,
            "uid": uid, "storagecfg": storagecfg}


async def start(server: Server, room: str, uid: str, storagecfg: dict[str, Any]) -> tuple[str, str]:
    resid = await server.apply()
    data = await startrecord(server.call, body(resid, room, uid, storagecfg))
    assert data["code"] == 0, data
    return resid, data["recordid"]


async def stop(server: Server, room: str, resid: str, recordid: str) -> dict[str, Any]:
    return await server.call("stoprecord", {"resid": resid, "appid": APPID, "roomid": room,
                                            "recordid": recordid})


def download(moto: Moto, bucket: str, dest: Path) -> dict[str, str]:
    """Every object of the bucket into ``dest``; answers key → content type."""
    s3 = moto.client()
    types = {}
    for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        got = s3.get_object(Bucket=bucket, Key=obj["Key"])
        path = dest / obj["Key"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(got["Body"].read())
        types[obj["Key"]] = got["ContentType"]
    return types


def check_recording(moto: Moto, bucket: str, recordid: str, room: str, uid: str,
                    dest: Path) -> tuple[list[str], float]:
    """The stored recording is complete: every segment the playlist lists, in order, with the
    right names and content types, the playlist ended. Answers (segments, decoded duration)."""
    types = download(moto, bucket, dest)
    base = f"{PREFIX}{APPID}_{room}_{recordid}_{uid}"
    ours = {k: v for k, v in types.items() if k.startswith(base)}
    assert not [k for k in types if ".cloudrec-probe" in k], "the probe object is deleted"
    assert ours[f"{base}.m3u8"] == "application/vnd.apple.mpegurl"
    stored_ts = sorted(k for k in ours if k.endswith(".ts"))
    assert stored_ts and all(re.fullmatch(re.escape(base) + r"_\d{5}\.ts", k) for k in stored_ts)
    assert all(ours[k] == "video/mp2t" for k in stored_ts)
    playlist = dest / f"{base}.m3u8"
    lines = playlist.read_text().splitlines()
    assert lines[0] == "#EXTM3U" and lines[-1] == "#EXT-X-ENDLIST", lines
    listed = [line for line in lines if line.endswith(".ts")]
    assert listed == sorted(listed), "segments listed in order"
    assert [PREFIX + name for name in listed] == stored_ts, "every listed segment is stored"
    return listed, probe_playlist(playlist).duration


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def playlist_ended(moto: Moto, bucket: str, key: str) -> bool:
    try:
        data = moto.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception:
        return False
    return data.rstrip().endswith(b"#EXT-X-ENDLIST")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(make_settings(
            tmp_path / "data", idle_timeout_s=30.0, segment_seconds=1.0, write_rate_per_s=1000,
            query_rate_per_s=1000, stop_timeout_s=20.0, allow_private_storage=True)) as s:
        yield s


# -- end to end ---------------------------------------------------------------------------------


async def test_every_vender_records_into_its_bucket(moto: Moto, server: Server,
                                                    tmp_path: Path) -> None:
    """OSS, COS, Kodo and any-S3 each record the same live publication into their bucket."""
    pub = await publish(server, "s3room", "alice")
    try:
        tasks, t0 = {}, {}
        for vender in BUCKETS:
            tasks[vender] = await start(server, "s3room", "alice", moto.storagecfg(vender))
            t0[vender] = time.monotonic()
        for _resid, recordid in tasks.values():
            await query_until(server.call, "s3room", recordid,
                              lambda a: a["data"]["segments"] >= 2, what="two segments stored")
        stops = await asyncio.gather(*(stop(server, "s3room", resid, recordid)
                                       for resid, recordid in tasks.values()))
        t1 = time.monotonic()
    finally:
        await pub.stop()
    assert [s["code"] for s in stops] == [0] * len(BUCKETS), stops
    for vender, (_, recordid) in tasks.items():
        segments, duration = await asyncio.to_thread(
            check_recording, moto, BUCKETS[vender], recordid, "s3room", "alice",
            tmp_path / f"v{vender}")
        assert len(segments) >= 2, (vender, segments)
        assert abs(duration - (t1 - t0[vender])) <= 1.0, (vender, duration, t1 - t0[vender])


async def test_bad_storage_answers_a_clear_error_at_startrecord(
        moto: Moto, server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_secret = "Wr0ngSecretThatMustNeverBeLogged0000000000"
    unreachable = f"http://127.0.0.1:{free_port()}"
    cases = [
        (moto.storagecfg(0, secretkey=wrong_secret),
         ["credentials rejected", "SignatureDoesNotMatch"]),
        (moto.storagecfg(1, accesskey="AKIANOSUCHKEY0000000"),
         ["credentials rejected", "InvalidAccessKeyId"]),
        (moto.storagecfg(2, bucket="no-such-bucket"),
         ["bucket 'no-such-bucket' does not exist"]),
        (moto.storagecfg(100, endpoint=unreachable),
         ["cannot reach storage endpoint", unreachable]),
        (moto.storagecfg(0, endpoint="http://bad host"), ["storagecfg.endpoint"]),
    ]
    pub = await publish(server, "badroom", "bob")
    try:
        for storagecfg, expected in cases:
            resid = await server.apply()
            data = await startrecord(server.call, body(resid, "badroom", "bob", storagecfg))
            assert (data["code"], data["_status"]) == (4004, 400), data
            assert data["message"].startswith("storagecfg"), data
            assert all(text in data["message"] for text in expected), data
            assert storagecfg["secretkey"] not in data["message"]
    finally:
        await pub.stop()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert wrong_secret not in logged and moto.secretkey not in logged


async def test_store_outage_delays_segments_never_loses_them(moto: Moto, server: Server,
                                                             tmp_path: Path) -> None:
    """The store goes away for longer than two segments mid-recording and comes back on the
    same port (moto's state lives in this process): the stored recording is whole."""
    cfg = moto.storagecfg(100, bucket="rec-outage")
    pub = await publish(server, "outroom", "carol")
    try:
        resid, recordid = await start(server, "outroom", "carol", cfg)
        t0 = time.monotonic()
        await query_until(server.call, "outroom", recordid,
                          lambda a: a["data"]["segments"] >= 1, what="a segment stored")
        moto.stop()
        during = (await query_until(
            server.call, "outroom", recordid,
            lambda a: a["data"]["pendingfiles"] >= 2
            and "cannot reach" in (a["data"]["storageerror"] or ""),
            what="two files pending on an unreachable store"))["data"]
        moto.start()
        assert moto.client().head_bucket(Bucket="rec-outage"), "the bucket survived the restart"
        await query_until(server.call, "outroom", recordid,
                          lambda a: a["data"]["segments"] >= 5, what="five segments stored")
        stopped = await stop(server, "outroom", resid, recordid)
        t1 = time.monotonic()
    finally:
        if moto.server is None:
            moto.start()
        await pub.stop()
    assert stopped["code"] == 0, stopped
    assert during["pendingfiles"] >= 2 and "cannot reach" in (during["storageerror"] or ""), during
    segments, duration = await asyncio.to_thread(
        check_recording, moto, "rec-outage", recordid, "outroom", "carol", tmp_path / "dl")
    assert len(segments) >= 5
    assert abs(duration - (t1 - t0)) <= 1.0, (duration, t1 - t0)
    after = await server.call(f"queryrecord/outroom/{recordid}")
    assert after["data"]["pendingfiles"] == 0 and after["data"]["storageerror"] is None
    assert not (server.settings.data_dir / "spool" / recordid).exists()


async def test_pending_uploads_survive_a_restart_of_cloudrec(moto: Moto, tmp_path: Path) -> None:
    """cloudrec stops while the store is down; a new cloudrec on the same data_dir stores the
    files the first one could not, once the store is back."""
    settings = make_settings(tmp_path / "data", idle_timeout_s=30.0, segment_seconds=1.0,
                             write_rate_per_s=1000, query_rate_per_s=1000, stop_timeout_s=1.0,
                             allow_private_storage=True)
    cfg = moto.storagecfg(100, bucket="rec-restart")
    base = f"{PREFIX}{APPID}_rsroom_{{}}_dave.m3u8"
    try:
        async with running_server(settings) as first:
            pub = await publish(first, "rsroom", "dave")
            try:
                resid, recordid = await start(first, "rsroom", "dave", cfg)
                t0 = time.monotonic()
                await query_until(first.call, "rsroom", recordid,
                                  lambda a: a["data"]["segments"] >= 1, what="a segment stored")
                moto.stop()
                # one segment stored and at least two more closed while the store is down
                # (pending: those segments, and the playlist that lists them)
                await query_until(first.call, "rsroom", recordid,
                                  lambda a: a["data"]["pendingfiles"] >= 3,
                                  what="three files pending")
                t1 = time.monotonic()  # stoprecord then waits stop_timeout_s for the store
                stopped = await stop(first, "rsroom", resid, recordid)
            finally:
                await pub.stop()
            assert stopped["code"] == 0, stopped
            final = (await first.call(f"queryrecord/rsroom/{recordid}"))["data"]
            assert final["pendingfiles"] >= 2, final
        spool = settings.data_dir / "spool" / recordid
        assert list(spool.glob("*.ts")), "unstored segments stay in the spool"
        moto.start()
        async with running_server(replace(settings, port=free_port())):
            key = base.format(recordid)
            await wait_for(lambda: playlist_ended(moto, "rec-restart", key), 30, key)
            await wait_for(lambda: not spool.exists(), 10, "the spool to be emptied")
    finally:
        if moto.server is None:
            moto.start()
    segments, duration = await asyncio.to_thread(
        check_recording, moto, "rec-restart", recordid, "rsroom", "dave", tmp_path / "dl")
    assert len(segments) >= 3
    assert abs(duration - (t1 - t0)) <= 1.0, (duration, t1 - t0)


# -- the storage endpoint policy -----------------------------------------------------------------


async def test_private_storage_endpoints_are_refused_by_default(moto: Moto, tmp_path: Path) -> None:
    """The probe once told an open internal port (moto here) from a closed one. Without
    allow_private_storage, both, and every other private address, answer the same 2101
    before any connection."""
    settings = make_settings(tmp_path / "data", write_rate_per_s=1000, query_rate_per_s=1000)
    closed = f"http://127.0.0.1:{free_port()}"
    endpoints = [moto.url, closed, f"http://localhost:{moto.port}", "http://10.0.0.5:9000",
                 "http://169.254.169.254", "http://[::1]:9000", "http://[::ffff:127.0.0.1]:80",
                 "http://0.0.0.0:9000", "192.168.1.20:9000"]
    answers = []
    async with running_server(settings) as server:
        pub = await publish(server, "privroom", "eve")
        try:
            for endpoint in endpoints:
                cfg = moto.storagecfg(100, endpoint=endpoint)
                answers.append(await startrecord(server.call, body(
                    await server.apply(), "privroom", "eve", cfg)))
        finally:
            await pub.stop()
    for endpoint, data in zip(endpoints, answers):
        assert (data["code"], data["_status"]) == (2101, 400), (endpoint, data)
        assert "storagecfg.endpoint" in data["message"], data
        assert "allow_private_storage" in data["message"], data
    assert answers[0]["message"] == answers[1]["message"], "open and closed ports look alike"


async def test_the_probe_connects_only_where_the_policy_looked(
        moto: Moto, rebinding_dns: list[str]) -> None:  # noqa: F811
    """``rebind.test`` is public when checked and loopback (moto) when connected to: the
    probe's resolver holds to the policy, so moto is never reached."""
    from cloudrec.storage.policy import GuardedResolver

    store = S3Store(100, f"http://rebind.test:{moto.port}", "rec-unit", moto.accesskey,
                    moto.secretkey)
    try:
        with pytest.raises(InvalidParameter, match="storagecfg.endpoint"):
            await store.probe()
    finally:
        await close_clients()
    assert rebinding_dns.count("rebind.test") >= 2, "checked, then resolved to connect"
    with pytest.raises(OSError, match="private or local"):
        await GuardedResolver().resolve("localhost", 80)


# -- the store on its own -----------------------------------------------------------------------


async def test_large_files_go_up_in_verified_parts(moto: Moto, tmp_path: Path) -> None:
    big = tmp_path / "big.ts"
    big.write_bytes(bytes(range(256)) * (9 * 4096 + 7))  # a little over 9 MiB: two parts
    store = S3Store(100, moto.url, "rec-unit", moto.accesskey, moto.secretkey)
    try:
        await store.put_file("big/big.ts", big, "video/mp2t")
    finally:
        await close_clients()
    got = await asyncio.to_thread(moto.client().get_object, Bucket="rec-unit", Key="big/big.ts")
    assert got["ContentType"] == "video/mp2t" and got["ETag"].strip('"').endswith("-2")
    assert hashlib.md5(got["Body"].read()).digest() == hashlib.md5(big.read_bytes()).digest()


async def test_spool_through_s3_store_in_order(moto: Moto, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    store = S3Store(100, moto.url, "rec-unit", moto.accesskey, moto.secretkey, prefix="o/")
    up = SpoolUploader(store, "o/", spool)
    for i in range(5):
        seg = spool / f"x_{i:05d}.ts"
        seg.write_bytes(bytes([i]) * 1000)
        (spool / "x.m3u8").write_text(f"#EXTM3U\n{i}\n")
        up.submit_segment(seg)
        up.submit_playlist(spool / "x.m3u8")
    try:
        assert await up.drain(timeout=20)
    finally:
        await up.close()
        await close_clients()
    s3 = moto.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="rec-unit", Prefix="o/")["Contents"]]
    assert sorted(keys) == ["o/x.m3u8", *[f"o/x_{i:05d}.ts" for i in range(5)]]
    assert s3.get_object(Bucket="rec-unit", Key="o/x.m3u8")["Body"].read() == b"#EXTM3U\n4\n"


def test_a_mismatching_etag_is_an_error() -> None:
    store = S3Store(100, "http://127.0.0.1:9", "b-1", "ak", "sk")
    md5 = hashlib.md5(b"data").hexdigest()
    store._verify({"ETag": f'"{md5}"'}, md5, "k")
    store._verify({"ETag": '"FtJ9qiOPyr8oJ4XUdWRCY8q9kwVz"'}, md5, "k")  # a vendor's own hash
    store._verify({"ETag": '"' + "0" * 32 + '"', "ServerSideEncryption": "aws:kms"}, md5, "k")
    with pytest.raises(StorageError, match="does not match"):
        store._verify({"ETag": '"' + "0" * 32 + '"'}, md5, "k")


V, P = "virtual", "path"


@pytest.mark.parametrize("vender, endpoint, url, region, style", [
    (0, "oss-cn-hangzhou.aliyuncs.com", "https://oss-cn-hangzhou.aliyuncs.com",
     "cn-hangzhou", V),
    (0, "s3.oss-cn-beijing.aliyuncs.com", "https://s3.oss-cn-beijing.aliyuncs.com",
     "cn-beijing", V),
    (0, "rec.oss-cn-hangzhou-internal.aliyuncs.com",
     "https://oss-cn-hangzhou-internal.aliyuncs.com", "cn-hangzhou", V),
    (1, "cos.ap-guangzhou.myqcloud.com", "https://cos.ap-guangzhou.myqcloud.com",
     "ap-guangzhou", V),
    (1, "https://cos.ap-shanghai.myqcloud.com/", "https://cos.ap-shanghai.myqcloud.com",
     "ap-shanghai", V),
    (2, "s3-cn-east-1.qiniucs.com", "https://s3-cn-east-1.qiniucs.com", "cn-east-1", V),
    (2, "s3.cn-south-1.qiniucs.com", "https://s3.cn-south-1.qiniucs.com", "cn-south-1", V),
    (100, "s3.eu-west-1.amazonaws.com", "https://s3.eu-west-1.amazonaws.com", "eu-west-1", V),
    (100, "acct1.r2.cloudflarestorage.com", "https://acct1.r2.cloudflarestorage.com", "auto", P),
    (100, "minio.example.net:9000", "https://minio.example.net:9000", "us-east-1", P),
    (100, "rec.example.net", "https://rec.example.net", "us-east-1", P),  # not a bucket prefix
    (100, "http://127.0.0.1:9000", "http://127.0.0.1:9000", "us-east-1", P),
    (0, "http://10.0.0.5:9000", "http://10.0.0.5:9000", "us-east-1", P),
])
def test_endpoints_resolve_per_vender(vender: int, endpoint: str, url: str, region: str,
                                      style: str) -> None:
    resolved = resolve_endpoint(vender, endpoint, "rec")
    assert (resolved.url, resolved.region, resolved.addressing_style) == (url, region, style)


def test_no_credentials_in_the_store_repr() -> None:
    store = S3Store(1, "cos.ap-guangzhou.myqcloud.com", "rec-1250000000", "AKIDexample",
                    "topsecret")
    assert "topsecret" not in repr(store) and "topsecret" not in store.description
