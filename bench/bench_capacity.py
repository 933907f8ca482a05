"""Capacity of one node: the most source recordings it holds with >= 99 % of the sent video
frames recorded, for ``workers = 1`` and ``workers = 2`` in the same run, and their ratio.

Method, one step of N recordings:

- A fresh ``cloudrec serve`` (its own data dir, ``workers = W``) and N publishers of the
  pre-encoded 640x480@15 clip, one room each (so that rooms spread over the workers), in
  separate processes of ``PER_PROCESS`` publishers at ``nice 19``: they yield the CPU to the
  server instead of starving it. Their CPU is read from /proc and printed beside the server's.
- A video-only source recording (recordtype 1) per publisher. Once all of them are recording,
  the publishers report their sent frame counts (SIGUSR1), we hold ``HOLD_S``, they report
  again, and a second later the recordings are stopped. CPU is measured over the hold.
- The stored ``.ts`` segments are demuxed with PyAV. A recording keeps the sender's RTP clock,
  and the clip stamps frame i at i * 6000 ticks, so the frames the publisher sent between the
  first and the last recorded frame are ``span / 6000 + 1``. Expected frames are that, or the
  frames it reported sending during the hold if more (a recording that lost its head or tail).
  A step passes when recorded / expected >= 99 % over all its recordings; a refusal (WHIP 503
  or startrecord 4001 for longer than ``RETRY_S``) fails it too.

The search: a probe step (``PROBE`` recordings, workers = 1; for workers = 2, the last passing
step) gives the costs per recording and per publisher; from the N they would fill (see
:func:`first_guess`) each worker count walks its grid of ``GRID`` up until a step fails, or
down until one passes. The capacity is the last passing N: always measured, never projected.
``BENCH_QUICK=1`` holds 8 s instead of 15.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import av
import httpx

sys.path.insert(0, str(Path(__file__).parent))

from common import (  # noqa: E402
    APPID,
    CLK_TCK,
    HEADERS,
    ServerProcess,
    cpu_seconds,
    headline,
    start_publishers,
    start_server,
    wait_ready,
)

from cloudrec.webrtc.synthetic import make_clip  # noqa: E402
from cloudrec.workers.load import tree_cpu_seconds  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
HOLD_S = float(os.environ.get("BENCH_CAPACITY_HOLD_S", "8" if QUICK else "15"))
GRID = 8  # capacities are found to this many recordings
MAX_N = 160
PROBE = int(os.environ.get("BENCH_CAPACITY_PROBE", "24"))
PER_PROCESS = 4  # publishers per publisher process
RETRY_S = 60.0
GOAL = 0.99
FPS = 15
TICKS_PER_FRAME = 90_000 // FPS
BUCKET = "capacity"
STORAGE = {"vender": 101, "endpoint": "local", "bucket": BUCKET, "accesskey": "-", "secretkey": "-"}


@dataclass
class Step:
    workers: int
    n: int
    recorded: int = 0
    expected: int = 0
    worst: float = 0.0  # the lowest recorded/expected of one recording
    sent_rate: float = 0.0  # frames the publishers sent during the hold / (15 fps x hold x n)
    server_cores: float = 0.0  # front + workers (process tree)
    worker_cores: list[float] = field(default_factory=list)
    publisher_cores: float = 0.0
    other_cores: float = 0.0  # the rest of the box's busy CPU: other processes on this machine
    failed: int = 0  # recordings that ended failed (status 5)
    rooms: list[int] = field(default_factory=list)  # rooms per worker
    error: str = ""

    @property
    def ratio(self) -> float:
        return self.recorded / self.expected if self.expected else 0.0

    @property
    def passed(self) -> bool:
        return not self.error and self.ratio >= GOAL

    def line(self) -> str:
        head = f"  workers={self.workers} N={self.n:>2}: "
        if self.error:
            return head + f"FAIL ({self.error})"
        return head + (
            f"{'pass' if self.passed else 'FAIL'} {self.ratio:.2%} of sent frames recorded "
            f"(worst recording {self.worst:.1%}; publishers sent {self.sent_rate:.1%} of 15 fps)  "
            f"server {self.server_cores:.2f} cores (workers "
            f"{' + '.join(f'{c:.2f}' for c in self.worker_cores)}), "
            f"{self.server_cores / self.n:.3f}/recording  publishers {self.publisher_cores:.2f} "
            f"cores, {self.publisher_cores / self.n:.3f}/stream  other processes "
            f"{self.other_cores:.2f} cores  rooms per worker {self.rooms}"
            + (f"  {self.failed} recordings failed" if self.failed else ""))


class Publishers:
    """N publishers, one room each, in processes of ``PER_PROCESS`` at nice 19."""

    def __init__(self, server: ServerProcess, rooms: list[str], clip: Path) -> None:
        groups = [rooms[i:i + PER_PROCESS] for i in range(0, len(rooms), PER_PROCESS)]
        self.procs = [start_publishers(server, g[0], [f"{r}/u0" for r in g], clip, nice=19)
                      for g in groups]

    def ready(self) -> None:
        for proc in self.procs:
            wait_ready(proc)

    def sent(self) -> dict[str, int]:
        """Video frames sent so far, by room."""
        for proc in self.procs:
            proc.send_signal(signal.SIGUSR1)
        out: dict[str, int] = {}
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            out.update({k.split("/")[0]: v for k, v in json.loads(line.split(" ", 1)[1]).items()})
        return out

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except Exception:
                proc.kill()


def box_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores, all processes), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK  # less idle and iowait


def recorded_frames(data_dir: Path, room: str, recordid: str) -> tuple[int, int]:
    """(video frames in the stored segments, frames the publisher sent from the first recorded
    frame to the last: their PTS span in frames, since the recording keeps the RTP clock)."""
    pts: list[int] = []
    for ts in sorted((data_dir / "storage" / BUCKET).rglob(f"{APPID}_{room}_{recordid}_u0_*.ts")):
        try:
            with av.open(str(ts)) as container:
                for packet in container.demux(video=0):
                    if packet.pts is not None and packet.size:
                        pts.append(packet.pts)
        except av.FFmpegError:  # an empty or broken segment: its frames count as lost
            continue
    if not pts:
        return 0, 0
    return len(pts), round((max(pts) - min(pts)) / TICKS_PER_FRAME) + 1


def _call(client: httpx.Client, server: ServerProcess, what: str, body: object = None) -> dict:
    r = client.get(server.api(what)) if body is None else client.post(server.api(what), json=body)
    return dict(r.json())


def _start(client: httpx.Client, server: ServerProcess, room: str) -> tuple[str, str]:
    """applyrecord + startrecord, retrying "not publishing yet" and "no capacity" for a while."""
    resid = _call(client, server, "applyrecord", {})["resid"]
    body = {"resid": resid, "appid": APPID, "roomid": room, "recordtype": 1, "streamtype": 2,
            "uid": "u0", "storagecfg": STORAGE}
    deadline = time.monotonic() + RETRY_S
    while True:
        r = _call(client, server, "startrecord", body)
        if r["code"] == 0:
            return resid, r["recordid"]
        if r["code"] not in (4001, 4005) or time.monotonic() > deadline:
            raise RuntimeError(f"startrecord refused: {r['code']} {r.get('message', '')}"[:200])
        time.sleep(0.5)


def run_step(workers: int, n: int, clip: Path, tmp: Path) -> Step:
    step = Step(workers, n)
    data = tmp / f"w{workers}n{n}"
    # max_cpu high: admission is off, so a step finds where frames start to be lost (in
    # service, max_cpu refuses new work before that point)
    server = start_server(data, quiet=True, workers=workers, idle_timeout_s=300, max_cpu=64.0,
                          write_rate_per_s=1_000_000, query_rate_per_s=1_000_000)
    rooms = [f"cap{i}" for i in range(n)]
    pubs = Publishers(server, rooms, clip)
    tasks: dict[str, tuple[str, str]] = {}
    try:
        pubs.ready()
        with httpx.Client(headers=HEADERS, timeout=60) as client, ThreadPoolExecutor(8) as pool:
            for room, task in zip(rooms, pool.map(lambda r: _start(client, server, r), rooms)):
                tasks[room] = task
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(
                    _call(client, server, f"queryrecord/{r}/{t[1]}")["data"]["status"] < 2
                    for r, t in tasks.items()):
                time.sleep(0.5)
            sent0, pub0, box0 = pubs.sent(), pubs.cpu(), box_busy_seconds()
            srv0, t0 = tree_cpu_seconds(server.proc.pid), time.monotonic()
            time.sleep(HOLD_S)
            srv1, pub1, t1 = tree_cpu_seconds(server.proc.pid), pubs.cpu(), time.monotonic()
            box1 = box_busy_seconds()
            sent1 = pubs.sent()
            health = client.get(f"{server.base}/healthz").json()
            time.sleep(1)  # frames sent just before the second report reach the recordings
            list(pool.map(lambda r: _call(client, server, "stoprecord", {
                "resid": tasks[r][0], "appid": APPID, "roomid": r, "recordid": tasks[r][1]}),
                rooms))
            step.failed = sum(_call(client, server, f"queryrecord/{r}/{t[1]}")["data"]["status"]
                              == 5 for r, t in tasks.items())
    except Exception as exc:  # a refused publisher or recording fails the step
        step.error = str(exc).splitlines()[0][:160]
        return step
    finally:
        pubs.stop()
        server.stop()
    wall = t1 - t0
    used = {pid: srv1[pid] - srv0.get(pid, 0.0) for pid in srv1}
    step.server_cores = sum(used.values()) / wall
    step.worker_cores = [c / wall for pid, c in used.items() if pid != server.proc.pid] or [
        step.server_cores]
    step.publisher_cores = (pub1 - pub0) / wall
    step.other_cores = max(0.0, (box1 - box0) / wall - step.server_cores - step.publisher_cores)
    step.rooms = [len(w["rooms"]) for w in health["workers"]]
    held = {r: sent1[r] - sent0[r] for r in rooms}
    step.sent_rate = sum(held.values()) / (FPS * wall * n)
    ratios = []
    for room, (_, recordid) in tasks.items():
        got, span = recorded_frames(data, room, recordid)
        expected = max(span, held[room])
        step.recorded += got
        step.expected += expected
        ratios.append(got / expected if expected else 0.0)
    step.worst = min(ratios)
    return step


def walk(workers: int, first: int, clip: Path, tmp: Path, done: list[Step]) -> int:
    """The last passing N on the grid of ``GRID``: up from ``first`` until a step fails, or
    down until one passes. Steps already measured (``done``) are not run again."""
    n, direction = max(GRID, first // GRID * GRID), 0
    while GRID <= n <= MAX_N:
        step = next((s for s in done if s.workers == workers and s.n == n), None)
        if step is None:
            step = run_step(workers, n, clip, tmp)
            done.append(step)
            print(step.line(), flush=True)
        direction = direction or (1 if step.passed else -1)
        if direction > 0 and not step.passed:
            return n - GRID
        if direction < 0 and step.passed:
            return n
        n += direction * GRID
    return MAX_N if direction > 0 else 0


def first_guess(workers: int, probe: Step) -> int:
    """Where to start looking (the capacity itself is always measured): the N at which the
    probe's per-recording costs would fill 80 % of the admission limit (0.85 core per worker)
    or of the box's cores, server and publishers together."""
    per_recording = probe.server_cores / probe.n
    per_stream = per_recording + probe.publisher_cores / probe.n
    fill = min(0.85 * workers / per_recording, (os.cpu_count() or 1) / per_stream)
    return int(0.8 * fill)


def run(clip: Path | None = None) -> list[str]:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cloudrec-capacity-") as tmp:
        tmp_path = Path(tmp)
        if clip is None:
            clip = Path(make_clip(str(tmp_path / "clip.mkv"), seconds=6, width=640, height=480,
                                  fps=15, bitrate=1_000_000, voice=True, audio_channels=1))
        print(f"capacity: N video-only source recordings of 640x480@15 ~1 Mbps, {HOLD_S:.0f} s "
              f"each; publishers at nice 19 in processes of {PER_PROCESS}, their CPU from /proc "
              f"({os.cpu_count()} cores here)", flush=True)
        steps: list[Step] = [run_step(1, PROBE, clip, tmp_path)]
        print(steps[0].line(), flush=True)
        probe = steps[0] if steps[0].passed else None
        cap1 = walk(1, first_guess(1, probe) if probe else PROBE, clip, tmp_path, steps)
        known = next((s for s in reversed(steps) if s.passed), None)  # costs to guess from
        cap2 = walk(2, first_guess(2, known) if known else cap1, clip, tmp_path, steps)
        elapsed = time.monotonic() - t0
    at1 = next((s for s in steps if s.workers == 1 and s.n == cap1), None)
    at2 = next((s for s in steps if s.workers == 2 and s.n == cap2), None)

    def at(step: Step | None) -> str:
        if step is None:
            return "no passing step"
        return (f"server {step.server_cores:.2f} cores = {step.server_cores / step.n:.3f} per "
                f"recording, publishers {step.publisher_cores:.2f} cores = "
                f"{step.publisher_cores / step.n:.3f} per stream, other processes "
                f"{step.other_cores:.2f}, of {os.cpu_count()} cores")

    ratio = cap2 / cap1 if cap1 else float("nan")
    lines = [f"capacity workers=1: {cap1} recordings at >= 99 % of frames ({at(at1)})",
             f"capacity workers=2: {cap2} recordings at >= 99 % of frames ({at(at2)})",
             f"capacity ratio workers=2 / workers=1: {ratio:.2f}x (goal >= 1.8x on 2 cores); "
             f"to {GRID} recordings, {len(steps)} steps in {elapsed:.0f} s"]
    headline(f"capacity: {cap1} source recordings (workers=1), {cap2} (workers=2) held with "
             f">= 99 % of sent frames recorded, ratio {ratio:.2f}x")
    over = next((s for s in steps if s.workers == 2 and s.n == cap2 + GRID), None)
    cores = os.cpu_count() or 1
    busy = over.server_cores + over.publisher_cores + over.other_cores if over else 0.0
    if over is not None and busy > 0.8 * cores:
        lines.append(
            f"  note: where workers=2 failed (N={over.n}) the box was CPU-bound: server "
            f"{over.server_cores:.2f} + publishers {over.publisher_cores:.2f} + other processes "
            f"{over.other_cores:.2f} of {cores} cores, so the box, not the workers, bounds the "
            "ratio here")
    return lines


if __name__ == "__main__":
    print("\n".join(run()), flush=True)
