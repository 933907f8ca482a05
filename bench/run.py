"""`make bench`: cloudrec's speed, printed as figures and as ratios against a reference
measured in the same run.

Source recording: K publishers send a pre-encoded 640x480@15 ~1 Mbps H.264 + mono Opus clip
(a voice-like signal, mono as browsers send a microphone; in a separate process, so their CPU
is not counted). We measure the server process's CPU while it
merely receives the K streams (the floor), then while it records all K (WebRTC receive + remux
+ Opus→AAC + HLS + local storage). Goal: ≤ 0.03 cores per recording, and ≤ 10 % above the floor.
Mixed recording (bench_mixed.py, last): decode + compose + encode of pre-encoded inputs, against
a bare libx264 encode, the codec floor (the decodes and encodes alone) and the ffmpeg CLI in the
same run. Goals: ≤ 0.12 cores for 4 → 640x480, and ≤ 1.3× the bare libx264 encode.
Capacity (bench_capacity.py): the most source recordings one node holds with ≥ 99 % of the sent
frames recorded, workers=1 and workers=2, and their ratio (goal ≥ 1.8× on 2 cores).
Receive (bench_receive.py): source recording at 16 publishers on the lean receive path, beside
stock aiortc's receive-only cost on the same streams in the same run (goals ≤ 0.5× and ≤ 0.015
cores per recording).
Third-party publisher (bench_thirdparty.py): 16 FFmpeg WHIP publishers (stereo Opus), cores per
recording with AAC and with Opus kept (goals <= 0.015 and <= 0.008), and a burst of 32 starts
on one worker against the capacity it shows one start at a time.
Audio codecs (bench_audio.py): each AAC encoder setting's CPU, bit rate and SNR on voice-like,
music-like, steady-tone and silent signals, mono 64 kbps and stereo 128 kbps, dual-mono stereo
as stereo and as mono, the AAC encoders PyAV has, and the two Opus decoders.
Push ingest (bench_ingest.py): 16 RTMP and 16 SRT publishers of H.264 + AAC at ~1 Mbps,
recorded, in cores per stream beside ``ffmpeg -c copy -f hls`` doing the same remux, both running
and sampled in the same windows (goals <= 0.01 cores per stream and <= 2x a bare PyAV remux in
the same windows, the median of 3 windows; 1.3x FFmpeg is below that floor); 16 RTSP cameras
(H.264 + G.711) pulled and recorded, in cores per camera.
Cluster (bench_cluster.py): startrecord p50/p99 on 3 nodes on PostgreSQL + Redis, against one
node. ``BENCH_QUICK=1`` shortens both (shorter holds, fewer cycles).
WHEP (bench_whep.py): cost per viewer at ``BENCH_WHEP_VIEWERS`` (50) viewers of one 720p
1.5 Mbps publisher beside the receive path's cost for it, and glass-to-glass latency by a colour
change (goals <= 0.004 cores per viewer, median <= 200 ms).
Web page (bench_webpage.py): cores and peak memory of a 1280x720@15 recording of a page that
animates and plays sound, beside Xvfb + chromium + ffmpeg x11grab/libx264 of the same page.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))

import bench_api  # noqa: E402
import bench_audio  # noqa: E402
import bench_capacity  # noqa: E402
import bench_cluster  # noqa: E402
import bench_ingest  # noqa: E402
import bench_load  # noqa: E402
import bench_mixed  # noqa: E402
import bench_receive  # noqa: E402
import bench_storage  # noqa: E402
import bench_thirdparty  # noqa: E402
import bench_webpage  # noqa: E402
import bench_whep  # noqa: E402
from common import (  # noqa: E402
    APPID,
    HEADERS,
    HEADLINES,
    ServerProcess,
    measure_cores,
    start_publishers,
    start_server,
    wait_ready,
)

from cloudrec.webrtc.synthetic import make_clip  # noqa: E402

MEASURE_S = float(os.environ.get("BENCH_SECONDS", "10"))
STORAGE = {"vender": 101, "endpoint": "local", "bucket": "bench", "accesskey": "-",
           "secretkey": "-"}


def start_recording(server: ServerProcess, client: httpx.Client, room: str,
                    uid: str) -> tuple[str, str]:
    resid = client.post(server.api("applyrecord"), json={}).json()["resid"]
    body = {"resid": resid, "appid": APPID, "roomid": room, "recordtype": 0, "streamtype": 2,
            "uid": uid, "storagecfg": STORAGE}
    for _ in range(50):
        r = client.post(server.api("startrecord"), json=body).json()
        if r["code"] != 4005:
            break
        time.sleep(0.1)
    if r["code"] != 0:
        raise RuntimeError(f"startrecord: {r}")
    return resid, r["recordid"]


def source_case(server: ServerProcess, clip: Path, k: int) -> tuple[str, tuple[str, str] | None]:
    room = f"bench{k}"
    uids = [f"u{i}" for i in range(k)]
    pubs = start_publishers(server, room, uids, clip)
    try:
        wait_ready(pubs)
        time.sleep(2)
        floor = measure_cores(server.proc.pid, MEASURE_S)
        with httpx.Client(headers=HEADERS, timeout=30) as client:
            tasks = [(uid, *start_recording(server, client, room, uid)) for uid in uids]
            time.sleep(2)
            recording = measure_cores(server.proc.pid, MEASURE_S)
            first = (room, tasks[0][2])
            info = client.get(server.api(f"queryrecord/{room}/{tasks[0][2]}")).json()["data"]
            for _uid, resid, recordid in tasks:
                r = client.post(server.api("stoprecord"), json={
                    "resid": resid, "appid": APPID, "roomid": room, "recordid": recordid}).json()
                assert r["code"] == 0, r
    finally:
        pubs.terminate()
        pubs.wait(10)
    per = recording / k
    overhead = (recording - floor) / floor if floor > 0 else float("nan")
    line = (f"source x{k}: {per:.4f} cores/recording (goal <= 0.03; peer ~0.056)   "
            f"receive-only floor {floor / k:.4f} cores/stream   overhead above floor "
            f"{overhead:+.1%} (goal <= 10%)   [{info.get('segments')} segments in "
            f"{info.get('duration')} s, video transcoded: {info.get('videotranscoded')}]")
    return line, first if k == 1 else None


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cloudrec-bench-") as tmp:
        tmp_path = Path(tmp)
        clip = Path(make_clip(str(tmp_path / "clip.mkv"), seconds=6, width=640, height=480,
                              fps=15, bitrate=1_000_000, voice=True,
                              audio_channels=1))
        # workers = 1: one process whose CPU is all of the receiving and recording (with
        # worker processes the front's own CPU would be measured, not theirs)
        server = start_server(tmp_path / "data", workers=1, write_rate_per_s=1_000_000,
                              query_rate_per_s=1_000_000, idle_timeout_s=60)
        lines = []
        try:
            line, _ = source_case(server, clip, 1)
            lines.append(line)
            print(line, flush=True)
            line, _ = source_case(server, clip, 8)
            lines.append(line)
            print(line, flush=True)
            # API figures against a live task in a publishing room
            room, uid = "apiroom", "u0"
            pubs = start_publishers(server, room, [uid], clip)
            try:
                wait_ready(pubs)
                with httpx.Client(headers=HEADERS, timeout=30) as client:
                    resid, recordid = start_recording(server, client, room, uid)
                    for api_line in bench_api.run(server, room, recordid):
                        print(api_line, flush=True)
                    client.post(server.api("stoprecord"), json={
                        "resid": resid, "appid": APPID, "roomid": room, "recordid": recordid})
            finally:
                pubs.terminate()
                pubs.wait(10)
            for load_line in bench_load.run(server, clip):
                print(load_line, flush=True)
        finally:
            server.stop()
        print("\n".join(bench_receive.run(clip)), flush=True)
        clip720 = Path(make_clip(str(tmp_path / "clip720.mkv"), seconds=6, width=1280,
                                 height=720, fps=30, bitrate=1_500_000, voice=True,
                                 audio_channels=1))
        print("\n".join(bench_whep.run(clip720)), flush=True)
        print("\n".join(bench_thirdparty.run()), flush=True)
        print("\n".join(bench_capacity.run(clip)), flush=True)
        print("\n".join(bench_cluster.run(clip)), flush=True)
    print("\n".join(bench_ingest.run()), flush=True)
    print("\n".join(bench_storage.run()), flush=True)
    print("\n".join(bench_audio.run()), flush=True)
    print("\n".join(bench_mixed.run()), flush=True)
    print("\n".join(bench_webpage.run()), flush=True)
    print("\nsummary (the cost per recording, the mix against libx264, the capacity):")
    print("\n".join(f"  {line}" for line in HEADLINES), flush=True)


if __name__ == "__main__":
    main()
