"""The front of a node with ``workers = 2`` never touches media, so it loads none of it: its
process maps no FFmpeg, no encoder and no SRTP library, while its workers do."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.nodes import Node

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/<pid>/maps")

MEDIA_LIBRARIES = ("libavcodec", "libx264", "libvpx", "libsrtp")


def mapped_files(pid: int) -> set[str]:
    """The file names a process has mapped (its shared libraries among them)."""
    names: set[str] = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            names.add(Path(parts[5]).name)
    return names


def media_libraries(pid: int) -> set[str]:
    return {name for name in mapped_files(pid) if name.startswith(MEDIA_LIBRARIES)}


async def test_the_front_maps_no_media_library_and_its_workers_do(tmp_path: Path) -> None:
    # with the RTMP and SRT listeners on: they run in the front and move bytes only
    node = Node(tmp_path, workers=2, rtmp_port=free_port(), srt_port=free_port()).start()
    try:
        await node.ready()
        health = await node.health()
        assert node.proc is not None
        workers = [int(w["pid"]) for w in health["workers"]]
        assert len(workers) == 2 and node.proc.pid not in workers
        for pid in workers:  # the check can fail: a process with media maps them
            assert any(name.startswith("libavcodec") for name in media_libraries(pid)), \
                mapped_files(pid)
        assert media_libraries(node.proc.pid) == set()
        assert any(name.startswith("libsrt") for name in mapped_files(node.proc.pid))
    finally:
        node.stop()
