"""Where recordings are stored: object stores behind one small interface, and the durable spool."""

from cloudrec.storage.base import ObjectStore, object_key, open_store
from cloudrec.storage.spool import Spool, SpoolUploader


async def close_clients() -> None:
    """Close the S3 clients this process opened (at shutdown); a no-op without any."""
    import sys

    s3 = sys.modules.get("cloudrec.storage.s3")
    if s3 is not None:
        await s3.close_clients()


__all__ = ["ObjectStore", "Spool", "SpoolUploader", "close_clients", "object_key", "open_store"]
