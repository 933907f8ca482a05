"""Lip sync over a long run: does the audio drift against the picture?

Method: one ``cloudrec serve`` (bench/common.py), FFmpeg's WHIP muxer publishing a clip whose
picture flashes white for the first 100 ms of every second with a 1 kHz beep over the same
100 ms (tests/syncclip.py; a 60 s clip looped, ``-c copy``), a source recording of it and a
one-input mix (320x240@30) for ``SYNC_SECONDS`` (default 3600). Both are read back with PyAV:
the audio minus picture offset of every flash (tests/media_check.py), summarised per
``WINDOW_S`` (5 minutes) of the recording: median, min, max.

Pass: every offset within the goals (source 45 ms, mix 70 ms) and the drift (the last
window's median minus the first's) within 30 ms, for both recordings.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from common import APPID, HEADERS, SECRET, ServerProcess, start_server  # noqa: E402

from cloudrec.tokens import make_token  # noqa: E402
from tests.e2e.test_interop import FFMPEG  # noqa: E402
from tests.media_check import lip_sync_pairs  # noqa: E402
from tests.syncclip import ffmpeg_whip_many, make_flash_clip, one_input_mix  # noqa: E402

SECONDS = float(os.environ.get("SYNC_SECONDS", "3600"))
WINDOW_S = 300.0
MAX_REPUBLISH = 5  # times the publisher may drop and come back before the run fails
GOALS = {"source": 0.045, "mix": 0.070}
DRIFT_GOAL_S = 0.030
STORAGE = {"vender": 101, "endpoint": "local", "bucket": "sync", "accesskey": "-",
           "secretkey": "-", "fileprefix": ["drift"]}
ROOM, UID = "drift", "flash"


async def call(client: httpx.AsyncClient, node: ServerProcess, verb: str,
               body: dict[str, Any]) -> dict[str, Any]:
    return dict((await client.post(node.api(verb), json=body)).json())


async def start_recording(client: httpx.AsyncClient, node: ServerProcess,
                          body: dict[str, Any]) -> tuple[str, str]:
    """applyrecord + startrecord, again while the publication is not there yet."""
    data: dict[str, Any] = {}
    for _ in range(300):
        resid = (await call(client, node, "applyrecord", {}))["resid"]
        data = await call(client, node, "startrecord", {**body, "resid": resid})
        if data["code"] == 0:
            return resid, str(data["recordid"])
        await asyncio.sleep(0.2)
    raise RuntimeError(f"startrecord never succeeded: {data}")


async def record(tmp: Path) -> dict[str, Path]:
    assert FFMPEG is not None, "FFmpeg with the WHIP muxer (imageio-ffmpeg) is needed"
    clip = make_flash_clip(FFMPEG, tmp / "flash.mkv", 60)
    node = start_server(tmp / "node", quiet=True, storage_root=str(tmp / "storage"),
                        write_rate_per_s=100, query_rate_per_s=100, idle_timeout_s=120)
    log = tmp / "ffmpeg.log"
    url = f"{node.base}/whip/{APPID}/{ROOM}/{UID}"
    proc = await ffmpeg_whip_many(FFMPEG, clip, [(url, make_token(APPID, ROOM, UID, SECRET))],
                                  log, loop=True)
    republished = 0
    try:
        async with httpx.AsyncClient(headers=HEADERS, timeout=30) as client:
            base = {"appid": APPID, "roomid": ROOM, "recordtype": 0, "storagecfg": STORAGE}
            source = await start_recording(client, node, {**base, "streamtype": 2, "uid": UID})
            mix = await start_recording(client, node, {**base, "streamtype": 1,
                                                       "mixconfig": one_input_mix(ROOM, UID)})
            began = time.monotonic()
            while (left := SECONDS - (time.monotonic() - began)) > 0:
                if proc.returncode is not None:  # a publisher that drops comes back, as a
                    ended = log.read_text(errors="replace")[-600:]  # real one would: told
                    server = (node.data_dir / "server.log").read_text(errors="replace")
                    print(f"{time.monotonic() - began:.0f} s: FFmpeg ended ({proc.returncode})"
                          f":\n{ended}\nserver log, last lines:\n{server[-3000:]}", flush=True)
                    republished += 1
                    if republished > MAX_REPUBLISH:
                        raise RuntimeError("FFmpeg kept ending")
                    proc = await ffmpeg_whip_many(
                        FFMPEG, clip, [(url, make_token(APPID, ROOM, UID, SECRET))], log,
                        loop=True)
                await asyncio.sleep(min(10.0, left))
                if int(time.monotonic() - began) % 60 < 10:
                    print(f"{time.monotonic() - began:.0f} s recorded", flush=True)
            for resid, recordid in (source, mix):
                data = await call(client, node, "stoprecord", {
                    "resid": resid, "appid": APPID, "roomid": ROOM, "recordid": recordid})
                assert data["code"] == 0, data
        await asyncio.sleep(5)  # the last segments reach the store
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        node.stop()
    folder = tmp / "storage" / "sync" / "drift"
    return {"source": folder / f"{APPID}_{ROOM}_{source[1]}_{UID}.m3u8",
            "mix": folder / f"{APPID}_{ROOM}_{mix[1]}.m3u8"}


def windows(pairs: list[tuple[float, float]]) -> list[tuple[float, list[float]]]:
    """The offsets (ms) grouped by WINDOW_S of the recording, from its first flash."""
    if not pairs:
        return []
    t0 = pairs[0][0]
    groups: dict[int, list[float]] = {}
    for t, offset in pairs:
        groups.setdefault(int((t - t0) // WINDOW_S), []).append(offset * 1000)
    return [(k * WINDOW_S, v) for k, v in sorted(groups.items())]


def report(name: str, playlist: Path) -> bool:
    pairs = lip_sync_pairs(playlist)
    groups = windows(pairs)
    print(f"\n{name} ({playlist.name}): {len(pairs)} flashes with a beep")
    if not groups:
        print("  FAIL: no flash measured")
        return False
    print(f"  {'from':>6}  {'n':>4}  {'median':>7}  {'min':>5}  {'max':>5}  (ms, audio - picture)")
    for start, ms in groups:
        print(f"  {start:5.0f}s  {len(ms):4d}  {statistics.median(ms):7.1f}  {min(ms):5.0f}"
              f"  {max(ms):5.0f}")
    worst = max(abs(o) for _, o in pairs)
    drift = statistics.median(groups[-1][1]) - statistics.median(groups[0][1])
    ok = worst <= GOALS[name] and abs(drift) <= DRIFT_GOAL_S * 1000  # drift is in ms
    print(f"  worst |offset| {worst * 1000:.0f} ms (goal {GOALS[name] * 1000:.0f}), drift "
          f"{drift:+.1f} ms over {groups[-1][0]:.0f} s (goal {DRIFT_GOAL_S * 1000:.0f}): "
          f"{'PASS' if ok else 'FAIL'}")
    return ok


def main() -> int:
    print(f"sync drift: {SECONDS:.0f} s of a flash + beep publisher, source and mix")
    with tempfile.TemporaryDirectory(prefix="cloudrec-sync-") as name:
        playlists = asyncio.run(record(Path(name)))
        results = [report(kind, path) for kind, path in playlists.items()]
    print("\nsync drift:", "PASS" if all(results) else "FAIL")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
