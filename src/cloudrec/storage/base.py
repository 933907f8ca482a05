"""The object-store interface and the factory that picks one from a request's ``storagecfg``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from cloudrec.errors import RecordingError

VENDER_LOCAL = 101
S3_VENDERS = {0: "Alibaba OSS", 1: "Tencent COS", 2: "Qiniu Kodo", 100: "S3-compatible"}

CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".jpg": "image/jpeg",
}


class ObjectStore(Protocol):
    """Stores whole files under keys. ``put_file`` returns only once the store has the bytes."""

    description: str

    async def put_file(self, key: str, path: Path, content_type: str) -> None: ...

    async def get_bytes(self, key: str) -> bytes | None:
        """A stored object's bytes, or None when there is none (a resumed task's playlist)."""
        ...

    async def probe(self, *, allow_private: bool = False) -> None:
        """Raise StorageError when the store cannot take files (bad credentials, no bucket);
        InvalidParameter (2101) for an endpoint on a private address unless ``allow_private``
        (the ``allow_private_storage`` setting; see :mod:`cloudrec.storage.policy`)."""
        ...


def content_type_for(name: str) -> str:
    return CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")


def object_key(prefix: str, name: str) -> str:
    """``prefix`` is ``"a/b/"`` or ``""`` (from ``fileprefix``)."""
    return f"{prefix}{name}"


def open_store(storagecfg: dict[str, Any], local_root: Path) -> ObjectStore:
    """Build the store a task writes to: 101 a directory (bucket) under ``local_root`` (the
    setting ``storage_root``, by default ``data_dir/storage``), 0/1/2/100 an S3 bucket.

    Raises StorageError (4004) for an endpoint that cannot be a store's address; reaching the
    store is ``probe()``'s job.
    """
    vender = storagecfg["vender"]
    if vender == VENDER_LOCAL:
        from cloudrec.storage.local import LocalStore

        return LocalStore(local_root / storagecfg["bucket"])
    if vender in S3_VENDERS:
        from cloudrec.storage.s3 import S3Store

        prefix = "".join(f"{item}/" for item in storagecfg.get("fileprefix") or [])
        return S3Store(vender, storagecfg["endpoint"], storagecfg["bucket"],
                       storagecfg["accesskey"], storagecfg["secretkey"], prefix=prefix)
    raise RecordingError(f"storagecfg.vender {vender} is not served by this server", 4004)
