"""Source recording at 16 publishers, beside stock aiortc's receive-only cost in the same run.

Two servers in turn, one worker process each (so one PID holds all the work), each receiving
the same 16 clip publishers (pre-encoded 640×480@15 ~1 Mbps H.264 + mono Opus, in another
process at a lower priority so that they yield the CPU): one on aiortc's own receiver
(``CLOUDREC_RECEIVE_PATH=aiortc``, the tap keeping frames from its decoder), one on the lean
path (:mod:`cloudrec.rtp.receiver`). Each is measured receiving only; the lean one then records
all 16 (remux, Opus→AAC, HLS, local storage). The two paths alternate ``ROUNDS`` times, so a
noisy neighbour on the shared box hits both alike, and the medians are printed.

Goals (issue 13): receive ≤ 0.5× stock aiortc's; source recording ≤ 0.015 cores per recording.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from common import (  # noqa: E402
    APPID,
    HEADERS,
    ServerProcess,
    headline,
    measure_cores,
    start_publishers,
    start_server,
    wait_ready,
)

PUBLISHERS = int(os.environ.get("BENCH_RECEIVE_PUBLISHERS", "16"))
MEASURE_S = float(os.environ.get("BENCH_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_RECEIVE_ROUNDS", "2"))
STORAGE = {"vender": 101, "endpoint": "local", "bucket": "bench", "accesskey": "-",
           "secretkey": "-"}


def _record_all(server: ServerProcess, room: str, uids: list[str]) -> list[tuple[str, str]]:
    tasks = []
    with httpx.Client(headers=HEADERS, timeout=30) as client:
        for uid in uids:
            resid = client.post(server.api("applyrecord"), json={}).json()["resid"]
            r = client.post(server.api("startrecord"), json={
                "resid": resid, "appid": APPID, "roomid": room, "recordtype": 0,
                "streamtype": 2, "uid": uid, "storagecfg": STORAGE}).json()
            if r["code"] != 0:
                raise RuntimeError(f"startrecord: {r}")
            tasks.append((resid, r["recordid"]))
    return tasks


def _case(tmp: Path, clip: Path, path: str, record: bool) -> tuple[float, float | None]:
    """(receive-only cores per stream, recording cores per recording or None)."""
    os.environ["CLOUDREC_RECEIVE_PATH"] = path
    try:
        server = start_server(tmp / f"data-{path}-{time.monotonic_ns()}", quiet=True,
                              write_rate_per_s=1_000_000, query_rate_per_s=1_000_000,
                              idle_timeout_s=60, workers=1)
    finally:
        os.environ.pop("CLOUDREC_RECEIVE_PATH", None)
    room = f"rx{path}"
    uids = [f"u{i}" for i in range(PUBLISHERS)]
    pubs = start_publishers(server, room, uids, clip, nice=10)
    try:
        wait_ready(pubs)
        time.sleep(2)
        receive = measure_cores(server.proc.pid, MEASURE_S) / PUBLISHERS
        recording = None
        if record:
            _record_all(server, room, uids)
            time.sleep(3)
            recording = measure_cores(server.proc.pid, MEASURE_S) / PUBLISHERS
    finally:
        pubs.terminate()
        pubs.wait(10)
        server.stop()
    return receive, recording


def run(clip: Path) -> list[str]:
    stock, lean, recording = [], [], []
    with tempfile.TemporaryDirectory(prefix="cloudrec-bench-rx-") as tmp:
        for _ in range(ROUNDS):
            stock.append(_case(Path(tmp), clip, "aiortc", False)[0])
            receive, rec = _case(Path(tmp), clip, "lean", True)
            lean.append(receive)
            recording.append(rec or 0.0)
    st, ln, rc = (statistics.median(x) for x in (stock, lean, recording))
    headline(f"source recording at {PUBLISHERS} publishers: {rc:.4f} cores/recording (goal <= "
             f"0.015), receive {ln:.4f} cores/stream = {ln / st:.2f}x stock aiortc's receive-only "
             f"{st:.4f} in the same run (goal <= 0.5x)")
    return [
        f"receive x{PUBLISHERS}: lean {ln:.4f} cores/stream vs stock aiortc receive-only "
        f"{st:.4f}: {ln / st:.2f}x (goal <= 0.5x)   [rounds: lean "
        f"{', '.join(f'{x:.4f}' for x in lean)}; aiortc {', '.join(f'{x:.4f}' for x in stock)}]",
        f"source x{PUBLISHERS}: {rc:.4f} cores/recording (goal <= 0.015; peer ~0.056), "
        f"{rc / st:.2f}x stock aiortc's receive alone   [rounds: "
        f"{', '.join(f'{x:.4f}' for x in recording)}]",
    ]


if __name__ == "__main__":
    from cloudrec.webrtc.synthetic import make_clip

    with tempfile.TemporaryDirectory(prefix="cloudrec-bench-clip-") as tmp_clip:
        clip_path = Path(make_clip(str(Path(tmp_clip) / "clip.mkv"), seconds=6, width=640,
                                   height=480, fps=15, bitrate=1_000_000, voice=True,
                                   audio_channels=1))
        print("\n".join(run(clip_path)), flush=True)
