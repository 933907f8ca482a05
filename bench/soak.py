"""A soak: a 2-node cluster recording publishers that come and go, for ``SOAK_SECONDS``.

Method: a real PostgreSQL and Redis (tests/services.py's starters, on loopback) and two
``cloudrec serve`` nodes (``workers = 2`` each) sharing them, local storage under one shared
``storage_root``. 16 publishers (clip publishers: pre-encoded H.264 + Opus, 4 rooms of 4 uids)
each publish for 30-300 s (at most a quarter of the run), leave for 2-10 s and come back, through
the nodes in turn. Every room has a source recording of its first uid, and rooms 0 and 1 a mix
of their four uids (2x2 at 320x240); they run from start to end (``idle_timeout_s`` is longer
than any absence). Half-way, Redis is restarted (empty) and then PostgreSQL.

Every ``SAMPLE_S`` the RSS, open fds and threads of every process of each node (front,
workers, mix processes: /proc) are sampled. At the end every recording is stopped and read
back: its playlist ended, every listed segment stored, no name listed twice, and its frames
(decoded with PyAV) against the wall time it ran. Memory: the least-squares slope of each
worker's RSS over the second half of the run, in MB/h.

Pass: every worker's slope at most ``MAX_MB_PER_H`` (5) and every recording whole. Prints a
table and writes ``SOAK_REPORT`` (default soak-report.json). A short run (``SOAK_SECONDS=180``)
checks the machinery; its slope says little (start-up growth dominates). ``SOAK_KEEP=folder``
keeps the run's recordings, server logs and databases in that folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
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
from cloudrec.webrtc.synthetic import make_clip  # noqa: E402
from cloudrec.webrtc.whip_client import Publisher, PublishError  # noqa: E402
from tests.services import start_postgres, start_redis  # noqa: E402

SECONDS = float(os.environ.get("SOAK_SECONDS", "7200"))
REPORT = Path(os.environ.get("SOAK_REPORT", "soak-report.json"))
KEEP = os.environ.get("SOAK_KEEP", "")  # a folder: keep the run's files there
SAMPLE_S = 10.0
MAX_MB_PER_H = 5.0
ROOMS, UIDS = 4, 4
MIXED_ROOMS = 2
STORAGE = {"vender": 101, "endpoint": "local", "bucket": "soak", "accesskey": "-",
           "secretkey": "-", "fileprefix": ["soak"]}
OUT = {"streamtype": 0, "videowidth": 320, "videoheight": 240, "videofps": 15,
       "videobitrate": 400, "videogop": 30}


# -- processes ------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def _sample(pid: int) -> dict[str, Any] | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "VmRSS" not in fields:  # a process that is exiting (a zombie) has no memory left
        return None
    return {"pid": pid, "cmd": cmd, "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
            "threads": int(fields["Threads"]), "fds": fds}


def _role(sample: dict[str, Any], front: int) -> str:
    if sample["pid"] == front:
        return "front"
    cmd = sample["cmd"]
    if "media.mix" in cmd or "multiprocessing" in cmd:
        return "mix"
    return "worker" if "workers.main" in cmd else "child"


# -- the load -------------------------------------------------------------------------------


async def publisher(nodes: list[ServerProcess], room: str, uid: str, clip: str,
                    end: float, turn: int, log: list[str]) -> None:
    """Publish, leave, come back, until ``end``."""
    rng = random.Random(f"{room}/{uid}")
    longest = max(30.0, SECONDS / 4)
    while time.monotonic() < end:
        node = nodes[turn % len(nodes)]
        turn += 1
        pub = Publisher(f"{node.base}/whip/{APPID}/{room}/{uid}",
                        make_token(APPID, room, uid, SECRET), clip=clip)
        try:
            await pub.start()
            await pub.wait_connected()
        except (PublishError, Exception) as exc:  # a node busy or restarting: try the other
            log.append(f"{time.strftime('%H:%M:%S')} {room}/{uid}: publish failed: {exc}")
            await pub.stop()
            await asyncio.sleep(2)
            continue
        await asyncio.sleep(min(rng.uniform(30, 300) * min(1.0, longest / 300),
                                max(0.0, end - time.monotonic())))
        await pub.stop()
        if time.monotonic() < end:
            await asyncio.sleep(rng.uniform(2, 10))


async def call(client: httpx.AsyncClient, node: ServerProcess, verb: str,
               body: dict[str, Any] | None = None) -> dict[str, Any]:
    url = node.api(verb)
    r = await (client.get(url) if body is None else client.post(url, json=body))
    return dict(r.json())


async def start_recording(client: httpx.AsyncClient, node: ServerProcess,
                          body: dict[str, Any]) -> tuple[str, str]:
    for _ in range(600):
        resid = (await call(client, node, "applyrecord", {}))["resid"]
        data = await call(client, node, "startrecord", {**body, "resid": resid})
        if data["code"] == 0:
            return resid, data["recordid"]
        await asyncio.sleep(0.5)
    raise RuntimeError(f"startrecord never succeeded: {data}")


# -- restarts -------------------------------------------------------------------------------


def restart_redis(url: str) -> subprocess.Popen[bytes]:
    """SHUTDOWN NOSAVE, then a new redis-server on the same port: it comes back empty. Returns
    the new server's process (the caller stops it)."""
    import redis

    client = redis.Redis.from_url(url)
    directory = client.config_get("dir")["dir"]
    port = url.rsplit(":", 1)[1].split("/")[0]
    try:
        client.shutdown(nosave=True)
    except redis.ConnectionError:
        pass
    binary = "redis-server"
    return subprocess.Popen([binary, "--port", port, "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", directory, "--daemonize", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _pg_user() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {}
    import pwd

    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def pg_ctl(data: str, *args: str) -> None:
    from tests.services import _postgres_bin

    # the restarted server keeps pg_ctl's stdout and stderr: never pipes (they would not close)
    subprocess.run([str(_postgres_bin() / "pg_ctl"), "-D", data, *args], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp",
                   **_pg_user())


def restart_postgres(url: str) -> str:
    """``pg_ctl restart -m fast`` on the server's own data directory; returns it."""
    import psycopg

    with psycopg.connect(url) as conn:
        data = str(conn.execute("SHOW data_directory").fetchone()[0])  # type: ignore[index]
    pg_ctl(data, "-m", "fast", "-w", "-l", str(Path(data).parent / "restart.log"), "restart")
    return data


# -- the run --------------------------------------------------------------------------------


def slope_mb_per_h(points: list[tuple[float, float]]) -> float:
    if len(points) < 3:
        return float("nan")
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return (sum((t - mt) * (v - mv) for t, v in points) / var) * 3600 if var else 0.0


def whole(playlist: Path) -> dict[str, Any]:
    import av

    from cloudrec.media.hls import parse_playlist

    if not playlist.exists():
        return {"whole": False, "why": "no playlist"}
    text = playlist.read_text()
    segments = parse_playlist(text, playlist.parent)
    names = [s.name for s in segments]
    missing = [s.name for s in segments if not s.path.exists()]
    frames = audio = 0
    damaged: list[str] = []
    for seg in segments:  # one by one: a playlist without ENDLIST is live to FFmpeg
        if not seg.path.exists():
            continue
        try:
            with av.open(str(seg.path)) as container:
                for frame in container.decode(*container.streams.video,
                                              *container.streams.audio):
                    if isinstance(frame, av.VideoFrame):
                        frames += 1
                    else:
                        audio += 1
        except av.FFmpegError as exc:
            damaged.append(f"{seg.name}: {exc}")
    listed = sum(s.duration for s in segments)
    ok = (text.rstrip().endswith("#EXT-X-ENDLIST") and not missing and not damaged
          and len(set(names)) == len(names))
    return {"whole": ok, "segments": len(segments), "missing": missing, "damaged": damaged,
            "duration": round(listed, 1), "frames": frames, "audio_frames": audio,
            "discontinuities": text.count("#EXT-X-DISCONTINUITY")}


async def run(tmp: Path) -> dict[str, Any]:
    pg_url, pg_stop = start_postgres(tmp)
    redis_url, redis_stop = start_redis(tmp)
    shared = tmp / "storage"
    nodes: list[ServerProcess] = []
    pg_data: str | None = None
    restarted_redis: subprocess.Popen[bytes] | None = None
    try:
        for name in ("soak-a", "soak-b"):
            nodes.append(start_server(tmp / name, quiet=True, node_id=name, workers=2,
                                      database_url=pg_url, redis_url=redis_url,
                                      cluster_secret="soak-secret", storage_root=str(shared),
                                      idle_timeout_s=900, max_cpu=64.0,
                                      write_rate_per_s=1000, query_rate_per_s=1000))
        clip = make_clip(str(tmp / "clip.mp4"), seconds=10, width=320, height=240, fps=15,
                         bitrate=300_000)
        began = time.monotonic()
        end = began + SECONDS
        log: list[str] = []
        pubs = [asyncio.create_task(publisher(nodes, f"room{r}", f"u{u}", clip, end, r + u, log))
                for r in range(ROOMS) for u in range(UIDS)]
        samples: list[dict[str, Any]] = []
        recordings: list[dict[str, Any]] = []
        async with httpx.AsyncClient(headers=HEADERS, timeout=30) as client:
            for r in range(ROOMS):
                body = {"appid": APPID, "roomid": f"room{r}", "recordtype": 0, "streamtype": 2,
                        "uid": "u0", "storagecfg": STORAGE}
                resid, rid = await start_recording(client, nodes[r % 2], body)
                recordings.append({"kind": "source", "room": f"room{r}", "uid": "u0",
                                   "resid": resid, "recordid": rid, "t0": time.monotonic()})
            for r in range(MIXED_ROOMS):
                inputs = [{"uid": f"u{u}", "roomid": f"room{r}", "streamtype": 0, "zOrder": u,
                           "layoutX": 160 * (u % 2), "layoutY": 120 * (u // 2), "layoutW": 160,
                           "layoutH": 120, "crop": 0} for u in range(UIDS)]
                body = {"appid": APPID, "roomid": f"room{r}", "recordtype": 0, "streamtype": 1,
                        "mixconfig": {"input": inputs, "output": OUT}, "storagecfg": STORAGE}
                resid, rid = await start_recording(client, nodes[(r + 1) % 2], body)
                recordings.append({"kind": "mix", "room": f"room{r}", "resid": resid,
                                   "recordid": rid, "t0": time.monotonic()})
            restarted: dict[str, Any] = {"redis": None, "postgres": None}
            while time.monotonic() < end:
                now = time.monotonic() - began
                for i, node in enumerate(nodes):
                    for pid in _tree(node.proc.pid):
                        s = _sample(pid)
                        if s is not None:
                            samples.append({"t": round(now, 1), "node": i,
                                            "role": _role(s, node.proc.pid), **s})
                if restarted["redis"] is None and now >= SECONDS / 2:
                    restarted_redis = await asyncio.to_thread(restart_redis, redis_url)
                    restarted["redis"] = round(now, 1)
                    print(f"{now:.0f} s: redis restarted", flush=True)
                elif restarted["postgres"] is None and now >= SECONDS / 2 + 20:
                    pg_data = await asyncio.to_thread(restart_postgres, pg_url)
                    restarted["postgres"] = round(now, 1)
                    print(f"{now:.0f} s: postgres restarted", flush=True)
                await asyncio.sleep(min(SAMPLE_S, max(0.1, end - time.monotonic())))
            for rec in recordings:  # a client retries a failed stop; the failures are counted
                rec["wall"] = round(time.monotonic() - rec["t0"], 1)
                rec["stop_failures"] = []
                for attempt in range(10):
                    data = await call(client, nodes[attempt % 2], "stoprecord", {
                        "resid": rec["resid"], "appid": APPID, "roomid": rec["room"],
                        "recordid": rec["recordid"]})
                    if data["code"] == 0 or (data["code"] == 4013 and rec["stop_failures"]):
                        break  # 4013 after a failure: that failed stop did stop it
                    rec["stop_failures"].append(f"{data['code']} {data.get('message')}")
                    await asyncio.sleep(1)
        await asyncio.gather(*pubs, return_exceptions=True)
        await asyncio.sleep(10)  # the last files reach the store
        for rec in recordings:
            base = f"{APPID}_{rec['room']}_{rec['recordid']}" + (
                f"_{rec['uid']}" if rec["kind"] == "source" else "")
            rec.update(whole(shared / "soak" / "soak" / f"{base}.m3u8"))
        return {"seconds": SECONDS, "samples": samples, "recordings": recordings,
                "restarted": restarted, "publish_log": log[-50:]}
    finally:
        for node in nodes:
            node.stop()
        redis_stop()
        if restarted_redis is not None:  # the one restart_redis started, which redis_stop
            restarted_redis.terminate()  # does not know
            restarted_redis.wait(10)
        if pg_data is not None:  # the restarted server is pg_ctl's, not pg_stop's
            pg_ctl(pg_data, "-m", "immediate", "stop")
        pg_stop()


def summarise(report: dict[str, Any]) -> bool:
    by_proc: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for s in report["samples"]:
        by_proc.setdefault((s["node"], s["pid"]), []).append(s)
    half = report["seconds"] / 2
    ok = True
    print(f"soak: {report['seconds']:.0f} s, 2 nodes; redis restarted at "
          f"{report['restarted']['redis']} s, postgres at {report['restarted']['postgres']} s")
    print(f"{'node':>4} {'pid':>7} {'role':7} {'rss MB first→last':>20} {'MB/h (2nd half)':>16}"
          f" {'fds':>9} {'threads':>9}")
    slopes = []
    for (node, pid), rows in sorted(by_proc.items()):
        role = rows[0]["role"]
        late = [(r["t"], r["rss_mb"]) for r in rows if r["t"] >= half]
        slope = slope_mb_per_h(late)
        if role == "worker":
            slopes.append(slope)
            ok = ok and not slope > MAX_MB_PER_H
        print(f"{node:>4} {pid:>7} {role:7} {rows[0]['rss_mb']:>9.1f}→{rows[-1]['rss_mb']:<9.1f}"
              f" {slope:>16.1f} {rows[0]['fds']:>4}→{rows[-1]['fds']:<4}"
              f" {rows[0]['threads']:>4}→{rows[-1]['threads']:<4}")
    for rec in report["recordings"]:
        ok = ok and bool(rec.get("whole"))
        print(f"{rec['kind']:6} {rec['room']:6} wall {rec['wall']:>7} s  listed "
              f"{rec.get('duration')} s  frames {rec.get('frames')}  segments "
              f"{rec.get('segments')}  discontinuities {rec.get('discontinuities')}  "
              f"whole {rec.get('whole')} {rec.get('why', '')}"
              + ("  stop retried: " + "; ".join(rec["stop_failures"])
                 if rec.get("stop_failures") else ""))
    report["worker_mb_per_h"] = slopes
    report["pass"] = ok
    print("PASS" if ok else "FAIL", f"(≤ {MAX_MB_PER_H} MB/h per worker, every recording whole)")
    return ok


def main() -> int:
    if KEEP:  # the recordings, server logs and databases stay for a look afterwards
        Path(KEEP).mkdir(parents=True, exist_ok=True)
        report = asyncio.run(run(Path(tempfile.mkdtemp(prefix="cloudrec-soak-", dir=KEEP))))
    else:
        with tempfile.TemporaryDirectory(prefix="cloudrec-soak-") as tmp:
            report = asyncio.run(run(Path(tmp)))
    ok = summarise(report)
    REPORT.write_text(json.dumps(report, indent=1))
    print(f"report: {REPORT.resolve()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
