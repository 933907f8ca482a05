"""vender 101: a local directory, ``{data_dir}/storage/{bucket}/{key}``.

Files are put under a temporary name, fsynced and renamed, so a reader never sees half a file.
When the spool is on the same file system (the default: both live in ``data_dir``), a file is
hard-linked instead of copied: storing it takes no room, so a full disk does not keep the spool
from emptying into the store. Otherwise (another file system, links not allowed) it is copied,
and a copy that fails (a full disk) leaves no partial file behind to hold on to space.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
from contextlib import suppress
from pathlib import Path

from cloudrec.errors import StorageError

_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP,
            errno.EOPNOTSUPP, errno.ENOSYS}


def _link(src: Path, dest: Path) -> bool:
    """Hard-link ``src`` as ``dest``; False where links cannot be made (copy instead)."""
    try:
        os.link(src, dest)
    except OSError as exc:
        if exc.errno in _NO_LINK:
            return False
        raise
    return True


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"local directory {root}"

    def path_for(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StorageError(f"object key {key!r} escapes the bucket directory")
        return path

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        await asyncio.to_thread(self._copy, key, path)

    def _copy(self, key: str, src: Path) -> None:
        dest = self.path_for(key)
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)
            if _link(src, tmp):
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            else:
                with open(src, "rb") as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
                    fout.flush()
                    os.fsync(fout.fileno())
            os.replace(tmp, dest)
        except OSError as exc:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {dest}: {exc.strerror or exc}") from exc

    async def get_bytes(self, key: str) -> bytes | None:
        """A stored object's bytes (small ones: a playlist), or None when there is none."""
        path = self.path_for(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc

    async def probe(self, *, allow_private: bool = False) -> None:
        """The directory can be created and written (no endpoint is contacted)."""
        def check() -> None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create {self.root}: {exc.strerror or exc}") from exc
            if not os.access(self.root, os.W_OK):
                raise StorageError(f"{self.root} is not writable")

        await asyncio.to_thread(check)
