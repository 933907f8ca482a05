"""Where recordings are stored: object stores behind one small interface, and the durable spool."""

from cloudrec.storage.base import ObjectStore, open_store, object_key
from cloudrec.storage.spool import Spool, SpoolUploader

__all__ = ["ObjectStore", "Spool", "SpoolUploader", "object_key", "open_store"]
