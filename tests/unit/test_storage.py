"""Local storage and the spool: ordered uploads, retries through an outage, resume from disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cloudrec.errors import StorageError
from cloudrec.storage import SpoolUploader
from cloudrec.storage.local import LocalStore


class FlakyStore(LocalStore):
    """A real local store that fails its first ``failures`` puts (an outage)."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root)
        self.failures = failures
        self.order: list[str] = []

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StorageError("store unreachable")
        await super().put_file(key, path, content_type)
        self.order.append(key)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


async def test_uploads_in_order_through_an_outage(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    store = FlakyStore(tmp_path / "bucket", failures=3)
    errors: list[str | None] = []
    up = SpoolUploader(store, "a/b/", spool, on_error=errors.append, backoff_s=0.01)
    playlist = spool / "x.m3u8"
    for i in range(3):
        seg = write(spool / f"x_{i:05d}.ts", bytes([i]) * 100)
        write(playlist, f"#EXTM3U\n{i}\n".encode())
        up.submit_segment(seg)
        up.submit_playlist(playlist)
    assert await up.drain(timeout=5)
    assert store.order == ["a/b/x_00000.ts", "a/b/x.m3u8", "a/b/x_00001.ts", "a/b/x.m3u8",
                           "a/b/x_00002.ts", "a/b/x.m3u8"]
    assert (tmp_path / "bucket/a/b/x_00002.ts").read_bytes() == bytes([2]) * 100
    assert (tmp_path / "bucket/a/b/x.m3u8").read_bytes() == b"#EXTM3U\n2\n"
    assert not list(spool.glob("*.ts")), "stored segments leave the spool"
    assert errors[0] is not None and errors[-1] is None and up.last_error is None


async def test_playlist_snapshot_is_taken_at_submit(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    store = FlakyStore(tmp_path / "bucket", failures=1)
    up = SpoolUploader(store, "", spool, backoff_s=0.05)
    playlist = write(spool / "p.m3u8", b"one")
    up.submit_segment(write(spool / "p_00000.ts", b"seg"))
    up.submit_playlist(playlist)
    write(playlist, b"two, listing a segment not yet stored")
    await asyncio.sleep(0.2)
    assert await up.drain(timeout=5)
    assert (tmp_path / "bucket/p.m3u8").read_bytes() == b"one"


async def test_pending_files_resume_after_restart(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    write(spool / "r_00000.ts", b"0")
    write(spool / "r_00001.ts", b"1")
    write(spool / "r.m3u8", b"playlist")
    store = FlakyStore(tmp_path / "bucket", failures=0)
    up = SpoolUploader(store, "p/", spool)
    assert up.submit_pending(spool / "r.m3u8") == 2
    assert await up.drain(timeout=5)
    assert store.order == ["p/r_00000.ts", "p/r_00001.ts", "p/r.m3u8"]


async def test_local_store_refuses_escaping_keys(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "bucket")
    src = write(tmp_path / "f", b"x")
    try:
        await store.put_file("../../etc/x", src, "text/plain")
    except StorageError as exc:
        assert "escapes" in exc.message
    else:
        raise AssertionError("a key escaping the bucket was written")
