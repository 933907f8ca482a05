"""Segment upload throughput to an S3-compatible store: cloudrec's path (S3Store behind the
durable SpoolUploader: MD5 + Content-MD5, ETag check, ordered, spool bookkeeping) against a plain
aiobotocore ``put_object`` loop of the same files, both to a local moto server running in its own
process (so its CPU does not compete with the measured one).

    .venv/bin/python bench/bench_storage.py
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from aiobotocore.session import get_session

from cloudrec.storage import SpoolUploader
from cloudrec.storage.s3 import S3Store, close_clients

FILES = int(os.environ.get("BENCH_STORAGE_FILES", "40"))
FILE_BYTES = 1_000_000
ROUNDS = 3
BUCKET = "bench"
AK, SK = "bench-ak", "bench-sk"  # moto without IAM checks accepts any key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/moto-api/", timeout=1)
            return proc, url
        except httpx.HTTPError as exc:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto server did not start") from exc
            time.sleep(0.1)


async def _through_spool(url: str, sources: list[Path], spool: Path) -> float:
    """Seconds to store every file through S3Store + SpoolUploader (files copied in untimed)."""
    shutil.rmtree(spool, ignore_errors=True)
    spool.mkdir()
    paths = []
    for src in sources:
        paths.append(spool / src.name)
        shutil.copyfile(src, paths[-1])
    store = S3Store(100, url, BUCKET, AK, SK, prefix="spool/")
    uploader = SpoolUploader(store, "spool/", spool)
    t0 = time.perf_counter()
    for path in paths:
        uploader.submit_segment(path)
    assert await uploader.drain(timeout=300)
    elapsed = time.perf_counter() - t0
    await uploader.close()
    return elapsed


async def _plain_loop(client: Any, sources: list[Path]) -> float:
    t0 = time.perf_counter()
    for src in sources:
        await client.put_object(Bucket=BUCKET, Key=f"plain/{src.name}", Body=src.read_bytes(),
                                ContentType="video/mp2t")
    return time.perf_counter() - t0


async def _measure(url: str, tmp: Path) -> tuple[float, float]:
    sources = []
    for i in range(FILES):
        sources.append(tmp / f"seg_{i:05d}.ts")
        sources[-1].write_bytes(os.urandom(FILE_BYTES))
    session = get_session()
    async with session.create_client("s3", endpoint_url=url, region_name="us-east-1",
                                     aws_access_key_id=AK, aws_secret_access_key=SK) as client:
        await client.create_bucket(Bucket=BUCKET)
        await _plain_loop(client, sources[:2])  # warm both paths (clients, connections)
        await _through_spool(url, sources[:2], tmp / "spool")
        spool_s, plain_s = [], []
        for _ in range(ROUNDS):  # interleaved, best of ROUNDS
            spool_s.append(await _through_spool(url, sources, tmp / "spool"))
            plain_s.append(await _plain_loop(client, sources))
    await close_clients()
    megabytes = FILES * FILE_BYTES / 1e6
    return megabytes / min(spool_s), megabytes / min(plain_s)


def run() -> list[str]:
    proc, url = _start_moto()
    try:
        with tempfile.TemporaryDirectory(prefix="cloudrec-bench-s3-") as tmp:
            ours, plain = asyncio.run(_measure(url, Path(tmp)))
    finally:
        proc.terminate()
        proc.wait(10)
    return [
        f"storage S3 uploads ({FILES} x {FILE_BYTES / 1e6:g} MB segments to a local moto, best of "
        f"{ROUNDS}): S3Store+SpoolUploader {ours:.1f} MB/s   plain aiobotocore put_object loop "
        f"{plain:.1f} MB/s   ratio {ours / plain:.2f}",
    ]


if __name__ == "__main__":
    for line in run():
        print(line, flush=True)
