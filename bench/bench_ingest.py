"""RTMP and SRT push ingest, recorded: cloudrec beside FFmpeg doing the same remux.

N publishers (``ffmpeg -re -stream_loop -1 -c copy``, processes of their own, not counted) push
a pre-encoded 640x480@15 H.264 (constrained baseline) + AAC 48 kHz clip at about 1 Mbps. cloudrec
(``workers = 1``: one process receives, demuxes, publishes and records) takes all N and records
each as a source recording (H.264 and AAC remuxed into HLS on local storage); its process
tree's CPU is measured from /proc. The reference is what FFmpeg needs for the same work: one
``ffmpeg -listen 1 -i rtmp://... -c copy -f hls`` per stream (SRT: ``srt://...?mode=listener``),
their CPU summed. Both run at once (cloudrec's N streams and FFmpeg's N, each fed by its own
publisher) and are sampled over the same windows (``BENCH_INGEST_WINDOWS``, 3), so a shared,
loaded box slows both alike; each window's ratio is printed, then the medians.
Goals: at most 0.01 cores per stream at 16 streams, and at most 2x the PyAV remux floor (below).
The 1.3x FFmpeg first asked for is printed too; it is below the floor for RTMP (the floor alone is
1.31-1.41x FFmpeg), so the README holds the floor ratio instead.

The floor of any Python pipeline, in the same windows: N ``bench/pyav_remux.py`` (PyAV
listening and remuxing to HLS packet by packet, nothing else), fed by N more publishers
(``BENCH_INGEST_FLOOR=0`` leaves it out). It prints as a ratio to FFmpeg, and cloudrec's cores
as a ratio to it.

RTSP cameras: N GStreamer RTSP cameras (one server process, N mounts, each 320x240@15 H.264 +
G.711 A-law 8 kHz, as the ingress tests' camera) pulled as ingresses into one room, each
source-recorded by an auto-record rule (H.264 remuxed, G.711 transcoded to AAC 48 kHz): cores
per camera of cloudrec's process tree (the cameras' process is not counted).
``BENCH_QUICK=1`` measures 3 s instead of 10.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parents[1]))

from common import APPID, CLK_TCK, HEADERS, SECRET, ServerProcess, free_port, headline, start_server  # noqa: E402

from cloudrec.tokens import make_token  # noqa: E402
from tests.e2e.ingress_sources import RtspCamera  # noqa: E402

QUICK = bool(os.environ.get("BENCH_QUICK"))
MEASURE_S = 3.0 if QUICK else float(os.environ.get("BENCH_SECONDS", "10"))
WINDOWS = int(os.environ.get("BENCH_INGEST_WINDOWS", "3"))
WARMUP_S = 3.0
TRANSPORTS = os.environ.get("BENCH_INGEST_TRANSPORTS", "rtmp,srt").split(",")
STREAMS = int(os.environ.get("BENCH_INGEST_STREAMS", "16"))
FLOOR = os.environ.get("BENCH_INGEST_FLOOR", "1") != "0"  # also run N PyAV remuxes
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


def cpu_table() -> dict[int, tuple[int, float]]:
    """Every process's parent and CPU seconds, read from /proc in one pass."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                table[int(entry.name)] = (int(fields[1]),
                                          (int(fields[11]) + int(fields[12])) / CLK_TCK)
            except (OSError, IndexError, ValueError):
                continue
    return table


def trees_cpu(table: dict[int, tuple[int, float]], pids: list[int]) -> float:
    """CPU seconds of ``pids`` and every process below them, from one ``cpu_table()``."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, list(pids), set()
    while todo:
        p = todo.pop()
        if p in seen or p not in table:
            continue
        seen.add(p)
        total += table[p][1]
        todo.extend(children.get(p, []))
    return total


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and every process below it."""
    return trees_cpu(cpu_table(), [pid])


def measure(pids: list[int], seconds: float) -> float:
    c0, t0 = trees_cpu(cpu_table(), pids), time.monotonic()
    time.sleep(seconds)
    return (trees_cpu(cpu_table(), pids) - c0) / (time.monotonic() - t0)


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


def start_cloudrec(server: ServerProcess, clips: dict[str, Path], transport: str, port: int,
                   pubs: list[subprocess.Popen[bytes]]) -> tuple[str, list[tuple[str, str]]]:
    """N publishers pushed to cloudrec, each source-recorded; the room and (resid, recordid)s."""
    room, fmt = f"push{transport}", "flv" if transport == "rtmp" else "mpegts"
    uids = [f"u{i}" for i in range(STREAMS)]
    pubs += [push(clips[fmt], fmt, url(transport, port, room, uid)) for uid in uids]
    tasks = []
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
    return room, tasks


def start_ffmpeg(clips: dict[str, Path], transport: str, out: Path,
                 listeners: list[subprocess.Popen[bytes]],
                 pubs: list[subprocess.Popen[bytes]], *, pyav: bool = False) -> None:
    """N FFmpeg listeners remuxing to HLS, each fed by one publisher; with ``pyav`` the same
    remux driven from Python (``bench/pyav_remux.py``: the floor of a Python pipeline)."""
    fmt = "flv" if transport == "rtmp" else "mpegts"
    for i in range(STREAMS):
        port, folder = free_port(), out / f"{transport}{i}{'py' if pyav else ''}"
        folder.mkdir(parents=True)
        source = (f"rtmp://127.0.0.1:{port}/live/s" if transport == "rtmp"
                  else f"srt://127.0.0.1:{port}?mode=listener&pkt_size=1316")
        command = ([sys.executable, str(Path(__file__).with_name("pyav_remux.py")), source,
                    str(folder / "index.m3u8")] if pyav else
                   [*FFMPEG, *(["-listen", "1"] if transport == "rtmp" else []), "-i", source,
                    "-c", "copy", "-f", "hls", "-hls_time", "6", "-hls_list_size", "0",
                    str(folder / "index.m3u8")])
        listeners.append(subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                          stderr=open(folder / "stderr.txt", "wb")))
        time.sleep(1.0 if pyav else 0.2)  # a Python listener takes longer to open its port
        target = (f"rtmp://127.0.0.1:{port}/live/s" if transport == "rtmp"
                  else f"srt://127.0.0.1:{port}?pkt_size=1316")
        pubs.append(push(clips[fmt], fmt, target))


def same_window(server: ServerProcess, clips: dict[str, Path], transport: str, port: int,
                out: Path) -> list[str]:
    """cloudrec's N recorded streams, FFmpeg's N remuxes and (``BENCH_INGEST_FLOOR``, on by
    default) N PyAV remuxes running at once, the process trees' CPU sampled over the same
    windows (the publishers are not counted)."""
    listeners: list[subprocess.Popen[bytes]] = []
    floors: list[subprocess.Popen[bytes]] = []
    pubs: list[subprocess.Popen[bytes]] = []
    lines: list[str] = []
    ours_per, refs_per, floor_per, ratios, floor_ratios = [], [], [], [], []
    try:
        start_ffmpeg(clips, transport, out, listeners, pubs)
        if FLOOR:
            start_ffmpeg(clips, transport, out, floors, pubs, pyav=True)
        room, tasks = start_cloudrec(server, clips, transport, port, pubs)
        time.sleep(WARMUP_S)
        alive = [p.pid for p in listeners if p.poll() is None]
        floor_alive = [p.pid for p in floors if p.poll() is None]
        if len(alive) < STREAMS or len(floor_alive) < (STREAMS if FLOOR else 0):
            raise RuntimeError(f"{STREAMS - len(alive)} ffmpeg listeners and "
                               f"{len(floors) - len(floor_alive)} pyav ones exited")
        ours_pids = [server.proc.pid]
        table = cpu_table()
        c0, f0, p0 = (trees_cpu(table, ours_pids), trees_cpu(table, alive),
                      trees_cpu(table, floor_alive))
        t0 = time.monotonic()
        for window in range(WINDOWS):
            time.sleep(MEASURE_S)
            table = cpu_table()
            c1, f1, p1 = (trees_cpu(table, ours_pids), trees_cpu(table, alive),
                          trees_cpu(table, floor_alive))
            t1 = time.monotonic()
            ours, ref = (c1 - c0) / (t1 - t0) / STREAMS, (f1 - f0) / (t1 - t0) / STREAMS
            floor = (p1 - p0) / (t1 - t0) / STREAMS
            ratio = ours / ref if ref > 0 else float("nan")
            ours_per.append(ours)
            refs_per.append(ref)
            ratios.append(ratio)
            line = (f"  {transport} window {window + 1}: cloudrec {ours:.4f} cores/stream   "
                    f"ffmpeg {ref:.4f}   ratio {ratio:.2f}x")
            if FLOOR:
                floor_per.append(floor)
                floor_ratios.append(floor / ref if ref > 0 else float("nan"))
                line += f"   pyav remux {floor:.4f} ({floor_ratios[-1]:.2f}x ffmpeg)"
            lines.append(line)
            print(line, flush=True)
            c0, f0, p0, t0 = c1, f1, p1, t1
        with httpx.Client(headers=HEADERS, timeout=30) as client:
            info = client.get(server.api(f"queryrecord/{room}/{tasks[0][1]}")).json()["data"]
            for resid, recordid in tasks:
                client.post(server.api("stoprecord"), json={
                    "resid": resid, "appid": APPID, "roomid": room, "recordid": recordid})
    finally:
        for p in pubs + listeners + floors:
            p.terminate()
        for p in pubs + listeners + floors:
            p.wait(10)
    median = statistics.median
    line = (f"{transport} ingest x{STREAMS}, recorded, same window as FFmpeg: cloudrec "
            f"{median(ours_per):.4f} cores/stream (goal <= 0.01)   ffmpeg -c copy -f hls "
            f"{median(refs_per):.4f}   ratio median {median(ratios):.2f}x "
            f"(first asked <= 1.3x) of {' '.join(f'{r:.2f}' for r in ratios)}   "
            f"[{info.get('segments')} segments in {info.get('duration')} s]")
    if FLOOR:
        line += (f"   pyav remux floor {median(floor_per):.4f} = {median(floor_ratios):.2f}x "
                 f"ffmpeg, cloudrec {median(ours_per) / median(floor_per):.2f}x the floor "
                 f"(goal <= 2x)")
    headline(line)
    return [*lines, line]


def cameras_case(data_dir: Path) -> tuple[float, str]:
    """N RTSP cameras pulled and recorded by a rule; cloudrec's cores."""
    cameras = RtspCamera(cameras=STREAMS)
    cameras.start()
    try:
        server = start_server(data_dir, quiet=True, workers=1, write_rate_per_s=1_000_000,
                              query_rate_per_s=1_000_000, idle_timeout_s=60, max_cpu=64.0,
                              allow_private_urls=True, rtmp_port=0, srt_port=0)
    except BaseException:
        cameras.kill()
        raise
    room = "cams"
    try:
        with httpx.Client(headers=HEADERS, timeout=30) as client:
            base = f"{server.base}/app/{APPID}/v1"
            rule = client.post(f"{base}/autorecord", json={
                "roomid": room, "streamtype": 2, "recordtype": 0, "storagecfg": STORAGE}).json()
            if rule["code"] != 0:
                raise RuntimeError(f"autorecord: {rule}")
            for i in range(STREAMS):
                r = client.post(f"{base}/ingress", json={
                    "roomid": room, "uid": f"cam{i}", "url": cameras.camera_url(i)}).json()
                if r["code"] != 0:
                    raise RuntimeError(f"ingress cam{i}: {r}")
            deadline = time.monotonic() + 60
            while True:
                listed = client.get(server.api(f"listrecord?roomid={room}")).json()
                records = (listed.get("data") or {}).get("records") or []
                if len(records) >= STREAMS:
                    break
                if time.monotonic() > deadline:
                    log = (data_dir / "server.log").read_text()[-3000:]
                    raise RuntimeError(f"{len(records)} of {STREAMS} cameras recorded: "
                                       f"{listed}\n{log}")
                time.sleep(0.5)
            time.sleep(3)
            cores = measure([server.proc.pid], MEASURE_S)
            first = records[0]["recordid"]
            info = client.get(server.api(f"queryrecord/{room}/{first}")).json()["data"]
    finally:
        server.stop()
        cameras.kill()
    return cores, f"{info.get('segments')} segments in {info.get('duration')} s"


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
            for transport in TRANSPORTS:
                lines += same_window(server, clips, transport, ports[transport],
                                     tmp_path / "ffmpeg")
        finally:
            server.stop()
        if "--no-cameras" not in sys.argv:
            cores, what = cameras_case(tmp_path / "cams")
            line = (f"rtsp cameras x{STREAMS} (H.264 + G.711 -> AAC), recorded: "
                    f"{cores / STREAMS:.4f} cores/camera   [{what}]")
            lines.append(line)
            headline(line)
    return lines


if __name__ == "__main__":
    if "--cameras" in sys.argv:
        with tempfile.TemporaryDirectory(prefix="cloudrec-bench-cameras-") as tmp:
            cores, what = cameras_case(Path(tmp))
        print(f"rtsp cameras x{STREAMS}, recorded: {cores / STREAMS:.4f} cores/camera   "
              f"[{what}]", flush=True)
    else:
        print("\n".join(run()), flush=True)
