"""WHEP playback: cost per viewer, beside the receive path's cost per publisher, and
glass-to-glass latency.

Cost: one server (``workers = 1``, so one PID holds all the work) receives one clip publisher
(pre-encoded 1280x720@30 ~1.5 Mbps H.264 + mono Opus, in another process at a lower priority).
Its CPU is measured receiving only (the receive path's cost per publisher), then with N WHEP
viewers. Cost per viewer = (CPU with N viewers - CPU receiving only) / N. Goal: at most 0.004
cores per viewer. Measured for each send path (``BENCH_WHEP_PATHS``, default ``lean,aiortc``:
the lean send path, then aiortc's RTCRtpSender), each with a server of its own.

The viewers run in another process and neither decrypt nor decode: each is an aiortc WHEP
client that negotiates, connects and completes DTLS, after which its media datagrams are
counted and dropped on arrival (``_aiortc_transport.swallow_media``). Fifty aiortc receivers
that decrypt, depacketise and jitter-buffer 1.5 Mbps each would need more CPU than this
machine gives the bench, and a viewer process that falls behind makes the server's cost look
lower, not higher. The viewers' received rate is printed beside the cost, to show they kept
up; that the pictures decode is what ``tests/e2e/test_whep.py`` checks.

Latency: a publisher whose picture turns from black to white and back every second (aiortc
encodes it) and one decoding WHEP viewer of it, in this process, on one clock: the time from
the frame that changes colour being made to the viewer decoding a picture of the new colour,
median over the changes. Goal: median at most 200 ms on loopback.
"""

from __future__ import annotations

import asyncio
import fractions
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack

sys.path.insert(0, str(Path(__file__).parent))

from common import (  # noqa: E402
    APPID,
    SECRET,
    ServerProcess,
    headline,
    measure_cores,
    start_publishers,
    start_server,
    wait_ready,
)

from cloudrec.tokens import make_token  # noqa: E402

VIEWERS = int(os.environ.get("BENCH_WHEP_VIEWERS", "50"))
MEASURE_S = float(os.environ.get("BENCH_SECONDS", "10"))
CHANGES = int(os.environ.get("BENCH_WHEP_CHANGES", "10"))
PATHS = [p.strip() for p in os.environ.get("BENCH_WHEP_PATHS", "lean,aiortc").split(",")
         if p.strip()]


# -- the viewers' process ---------------------------------------------------------------------

async def _viewers(base: str, room: str, uid: str, count: int) -> None:
    from cloudrec.webrtc import _aiortc_transport as transport
    from cloudrec.webrtc.whep_client import Viewer

    viewers = []
    counts: list[list[int]] = []
    for i in range(count):
        viewer = Viewer(f"{base}/whep/{APPID}/{room}/{uid}",
                        make_token(APPID, room, f"viewer{i}", SECRET, play=True))
        pc = viewer.pc

        @pc.on("connectionstatechange")
        def _connected(pc: Any = pc) -> None:  # from now on its media is only counted
            if pc.connectionState == "connected":
                counts.append(transport.swallow_media(pc))

        await viewer.start()
        viewers.append(viewer)
    deadline = time.monotonic() + 60
    while len(counts) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count - len(counts)} viewers did not connect")
        await asyncio.sleep(0.1)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.sleep(2.0)  # the server's measurement starts after 2 s
    p0, b0, t0 = sum(c[0] for c in counts), sum(c[1] for c in counts), time.monotonic()
    await stop.wait()
    seconds = time.monotonic() - t0
    packets, octets = sum(c[0] for c in counts) - p0, sum(c[1] for c in counts) - b0
    print(f"each viewer received {packets / count / seconds:.0f} packets/s, "
          f"{octets * 8 / count / seconds / 1e6:.2f} Mbit/s", flush=True)
    for viewer in viewers:
        await viewer.stop()


def _start_viewers(server: ServerProcess, room: str, uid: str, count: int) -> Any:
    import subprocess

    return subprocess.Popen([sys.executable, __file__, "viewers", server.base, room, uid,
                             str(count)], stdout=subprocess.PIPE,
                            preexec_fn=lambda: os.nice(10))


# -- latency ----------------------------------------------------------------------------------

class _Flashes(MediaStreamTrack):
    """640x480@30: black, then white, then black... every second; when each change was made."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.frames = 0
        self.start = time.monotonic()
        self.changes: list[tuple[float, bool]] = []
        self._white = av.VideoFrame.from_ndarray(np.full((480, 640, 3), 235, np.uint8), "rgb24")
        self._black = av.VideoFrame.from_ndarray(np.full((480, 640, 3), 16, np.uint8), "rgb24")

    async def recv(self) -> av.VideoFrame:
        due = self.start + self.frames / 30
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        white = (self.frames // 30) % 2 == 1
        if self.frames % 30 == 0:
            self.changes.append((time.monotonic(), white))
        frame = (self._white if white else self._black).reformat(format="yuv420p")
        frame.pts, frame.time_base = self.frames * 3000, fractions.Fraction(1, 90000)
        self.frames += 1
        return frame


async def _latency(base: str, room: str) -> list[float]:
    import httpx
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from cloudrec.webrtc.whep_client import Viewer
    from cloudrec.webrtc.whip_client import _preferences

    track = _Flashes()
    pc = RTCPeerConnection()
    pc.addTransceiver(track, direction="sendonly").setCodecPreferences(
        _preferences("video", "h264"))
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{base}/whip/{APPID}/{room}/flash", content=pc.localDescription.sdp,
                            headers={"Content-Type": "application/sdp", "Authorization":
                                     f"Bearer {make_token(APPID, room, 'flash', SECRET)}"})
    r.raise_for_status()
    await pc.setRemoteDescription(RTCSessionDescription(r.text, "answer"))
    seen: list[tuple[float, bool]] = []

    def on_picture(frame: Any, now: float) -> None:
        luma = np.frombuffer(frame.planes[0], np.uint8).mean()
        white = bool(luma > 128)
        if not seen or seen[-1][1] != white:
            seen.append((now, white))

    await asyncio.sleep(1.0)
    viewer = Viewer(f"{base}/whep/{APPID}/{room}/flash",
                    make_token(APPID, room, "watcher", SECRET, play=True), audio=False,
                    on_picture=on_picture)
    await viewer.start()
    await asyncio.sleep(CHANGES + 2.5)
    await viewer.stop()
    await pc.close()
    delays = []
    for at, white in track.changes:
        shown = next((t for t, w in seen if w == white and t >= at), None)
        if shown is not None and shown - at < 1.0 and len(seen) > 1 and seen[0][0] < at:
            delays.append(shown - at)
    return delays


# -- the run ----------------------------------------------------------------------------------

def _measure(clip: Path, viewers: int, path: str) -> tuple[float, float, str, list[float]]:
    """(receive-only cores, cores with the viewers, the viewers' line, latency delays) of a
    server on send path ``path``."""
    previous = os.environ.get("CLOUDREC_SEND_PATH")
    os.environ["CLOUDREC_SEND_PATH"] = path  # the server process inherits it
    try:
        with tempfile.TemporaryDirectory(prefix="cloudrec-bench-whep-") as tmp:
            server = start_server(Path(tmp) / "data", quiet=True, workers=1,
                                  max_viewers=viewers + 5, write_rate_per_s=1_000_000,
                                  query_rate_per_s=1_000_000)
            return _measure_server(server, clip, viewers)
    finally:
        if previous is None:
            os.environ.pop("CLOUDREC_SEND_PATH", None)
        else:
            os.environ["CLOUDREC_SEND_PATH"] = previous


def _measure_server(server: ServerProcess, clip: Path,
                    viewers: int) -> tuple[float, float, str, list[float]]:
    try:
        pubs = start_publishers(server, "whep", ["cam"], clip, nice=10)
        try:
            wait_ready(pubs)
            time.sleep(2)
            receive = measure_cores(server.proc.pid, MEASURE_S)
            watchers = _start_viewers(server, "whep", "cam", viewers)
            try:
                assert watchers.stdout is not None
                line = watchers.stdout.readline().decode().strip()
                if line != "ready":
                    raise RuntimeError(f"viewers failed: {line!r}")
                time.sleep(2)
                watched = measure_cores(server.proc.pid, MEASURE_S)
            finally:
                watchers.terminate()
                seen = watchers.communicate(timeout=30)[0].decode().strip()
        finally:
            pubs.terminate()
            pubs.wait(10)
        delays = asyncio.run(_latency(server.base, "flash"))
    finally:
        server.stop()
    return receive, watched, seen.splitlines()[-1] if seen else "?", delays


def run(clip: Path, viewers: int = VIEWERS) -> list[str]:
    lines, costs, medians = [], {}, {}
    for path in PATHS:
        receive, watched, seen, delays = _measure(clip, viewers, path)
        costs[path] = per_viewer = (watched - receive) / viewers
        medians[path] = median = statistics.median(delays) * 1000 if delays else float("nan")
        lines += [
            f"whep x{viewers} {path:>6} send path: {per_viewer:.4f} cores/viewer (goal <= 0.004)"
            f"   receive path {receive:.4f} cores/publisher, {watched:.4f} with the viewers"
            f"   [viewers: {seen}]",
            f"whep {path:>6} send path glass-to-glass: median {median:.0f} ms over "
            f"{len(delays)} colour changes (goal <= 200)   "
            f"[{', '.join(f'{d * 1000:.0f}' for d in delays)}]",
        ]
    side = ", ".join(f"{p} {costs[p]:.4f}" for p in PATHS)
    headline(f"WHEP: cores/viewer at {viewers} viewers of a 720p 1.5 Mbps publisher: {side} "
             f"(goal <= 0.004); glass-to-glass median "
             + ", ".join(f"{p} {medians[p]:.0f} ms" for p in PATHS) + " (goal <= 200)")
    return lines


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "viewers":
        asyncio.run(_viewers(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
        sys.exit(0)
    from cloudrec.webrtc.synthetic import make_clip

    with tempfile.TemporaryDirectory(prefix="cloudrec-bench-clip-") as tmp_clip:
        clip_path = Path(make_clip(str(Path(tmp_clip) / "clip.mkv"), seconds=6, width=1280,
                                   height=720, fps=30, bitrate=1_500_000, voice=True,
                                   audio_channels=1))
        print("\n".join(run(clip_path)), flush=True)
