"""RTMP and SRT push ingest, recorded: cloudrec beside FFmpeg doing the same remux.

N publishers (``ffmpeg -re -stream_loop -1 -c copy``, processes of their own, not counted) push
a pre-encoded 640x480@15 H.264 (constrained baseline) + AAC 48 kHz clip at about 1 Mbps. cloudrec
(``workers = 1``: one process receives, demuxes, publishes and records) takes all N and records
each as a source recording (H.264 and AAC remuxed into HLS on local storage); its process
tree's CPU is measured from /proc. The reference is what FFmpeg needs for the same work: one
``ffmpeg -listen 1 -i rtmp://... -c copy -f hls`` per stream (SRT: ``srt://...?mode=listener``),
their CPU summed. Goals: at most 1.3x FFmpeg, at most 0.01 cores per stream at 16 streams.
``BENCH_QUICK=1`` measures 3 s instead of 10.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from common import APPID, CLK_TCK, HEADERS, SECRET, ServerProcess, free_port, headline, start_server  # noqa: E402

from cloudrec.tokens import make_token  # noqa: E402

QUICK = bool(os.environ.get("BENCH_QUICK"))
MEASURE_S = 3.0 if QUICK else float(os.environ.get("BENCH_SECONDS", "10"))
STREAMS = int(os.environ.get("BENCH_INGEST_STREAMS", "16"))
STORAGE = {"vender": 101, "endpoint": "local", "bucket": "bench", "accesskey": "-",
           "secretkey": "-"}
FFMPEG = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error"]


def make_clips(folder: Path) -> dict[str, Path]:
    """The clip as FLV (for RTMP) and MPEG-TS (for SRT): 10 s, ~1 Mbps in all."""
    clips = {"flv": folder / "clip.flv", "mpegts": folder / "clip.ts"}
    for fmt, path in clips.items():
        subprocess.run([*FFMPEG, "-y", "-f", "lavfi", "-i", "testsrc2=size=640x480:rate=15",
                        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "10",
                        "-c:v", "libx264", "-profile:v", "baseline", "-preset", "veryfast",
                        "-b:v", "900k", "-maxrate", "900k", "-bufsize", "900k", "-g", "30",
                        "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k", "-f", fmt,
                        str(path)], check=True)
    return clips


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        todo.extend(children.get(p, []))
    return total


def measure(pids: list[int], seconds: float) -> float:
    c0, t0 = sum(tree_cpu(p) for p in pids), time.monotonic()
    time.sleep(seconds)
    return (sum(tree_cpu(p) for p in pids) - c0) / (time.monotonic() - t0)


def push(clip: Path, fmt: str, url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*FFMPEG, "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy",
                             "-f", fmt, url], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def url(transport: str, port: int, room: str, uid: str) -> str:
    token = make_token(APPID, room, uid, SECRET)
    if transport == "rtmp":
        return f"rtmp://127.0.0.1:{port}/live/{APPID}/{room}/{uid}?token={token}"
    return (f"srt://127.0.0.1:{port}?streamid=publish:{APPID}/{room}/{uid}:{token}"
            "&pkt_size=1316")


def cloudrec_case(server: ServerProcess, clips: dict[str, Path], transport: str,
                  port: int) -> tuple[float, str]:
    room, fmt = f"push{transport}", "flv" if transport == "rtmp" else "mpegts"
    uids = [f"u{i}" for i in range(STREAMS)]
    pubs = [push(clips[fmt], fmt, url(transport, port, room, uid)) for uid in uids]
    tasks = []
    try:
        with httpx.Client(headers=HEADERS, timeout=30) as client:
            for uid in uids:
                resid = client.post(server.api("applyrecord"), json={}).json()["resid"]
                body = {"resid": resid, "appid": APPID, "roomid": room, "recordtype": 0,
                        "streamtype": 2, "uid": uid, "storagecfg": STORAGE}
                for _ in range(100):
                    r = client.post(server.api("startrecord"), json=body).json()
                    if r["code"] != 4005:
                        break
                    time.sleep(0.1)
                if r["code"] != 0:
                    raise RuntimeError(f"startrecord {transport} {uid}: {r}")
                tasks.append((resid, r["recordid"]))
            time.sleep(3)
            cores = measure([server.proc.pid], MEASURE_S)
            info = client.get(server.api(f"queryrecord/{room}/{tasks[0][1]}")).json()["data"]
            for resid, recordid in tasks:
                client.post(server.api("stoprecord"), json={
                    "resid": resid, "appid": APPID, "roomid": room, "recordid": recordid})
    finally:
        for p in pubs:
            p.terminate()
        for p in pubs:
            p.wait(10)
    return cores, f"{info.get('segments')} segments in {info.get('duration')} s"


def ffmpeg_case(clips: dict[str, Path], transport: str, out: Path) -> float:
    """N FFmpeg listeners remuxing to HLS, each fed by one publisher."""
    fmt = "flv" if transport == "rtmp" else "mpegts"
    listeners, pubs = [], []
    try:
        for i in range(STREAMS):
            port, folder = free_port(), out / f"{transport}{i}"
            folder.mkdir(parents=True)
            source = (f"rtmp://127.0.0.1:{port}/live/s" if transport == "rtmp"
                      else f"srt://127.0.0.1:{port}?mode=listener&pkt_size=1316")
            listeners.append(subprocess.Popen(
                [*FFMPEG, *(["-listen", "1"] if transport == "rtmp" else []), "-i", source,
                 "-c", "copy", "-f", "hls", "-hls_time", "6", "-hls_list_size", "0",
                 str(folder / "index.m3u8")], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
            time.sleep(0.2)
            target = (f"rtmp://127.0.0.1:{port}/live/s" if transport == "rtmp"
                      else f"srt://127.0.0.1:{port}?pkt_size=1316")
            pubs.append(push(clips[fmt], fmt, target))
        time.sleep(3)
        alive = [p.pid for p in listeners if p.poll() is None]
        if len(alive) < STREAMS:
            raise RuntimeError(f"{STREAMS - len(alive)} ffmpeg listeners exited")
        return measure(alive, MEASURE_S)
    finally:
        for p in pubs + listeners:
            p.terminate()
        for p in pubs + listeners:
            p.wait(10)


def run() -> list[str]:
    lines = []
    with tempfile.TemporaryDirectory(prefix="cloudrec-bench-ingest-") as tmp:
        tmp_path = Path(tmp)
        clips = make_clips(tmp_path)
        ports = {"rtmp": free_port(), "srt": free_port()}
        server = start_server(tmp_path / "data", quiet=True, workers=1,
                              write_rate_per_s=1_000_000, query_rate_per_s=1_000_000,
                              idle_timeout_s=60, max_cpu=64.0, rtmp_port=ports["rtmp"],
                              srt_port=ports["srt"])
        try:
            ours = {t: cloudrec_case(server, clips, t, ports[t]) for t in ("rtmp", "srt")}
        finally:
            server.stop()
        for transport in ("rtmp", "srt"):
            cores, what = ours[transport]
            reference = ffmpeg_case(clips, transport, tmp_path / "ffmpeg")
            ratio = cores / reference if reference > 0 else float("nan")
            line = (f"{transport} ingest x{STREAMS}, recorded: {cores / STREAMS:.4f} cores/stream "
                    f"(goal <= 0.01)   ffmpeg -c copy -f hls {reference / STREAMS:.4f} "
                    f"cores/stream   ratio {ratio:.2f}x (goal <= 1.3x)   [{what}]")
            lines.append(line)
            headline(line)
    return lines


if __name__ == "__main__":
    print("\n".join(run()), flush=True)
