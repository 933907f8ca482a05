"""A publisher cloudrec did not write: FFmpeg's WHIP muxer (the static FFmpeg >= 8 of the
``imageio-ffmpeg`` wheel), ``-c copy`` of a 640x480@15 ~1 Mbps H.264 clip with stereo Opus.

One server, one worker process (``workers = 1``: one PID holds all the work), ``PUBLISHERS``
FFmpeg processes at a lower priority. Measured in turn on the same publishers:

- receive only (the floor);
- every publisher recorded with ``outputs.audiocodec = "aac"`` (Opus decoded, AAC encoded);
- every publisher recorded with ``outputs.audiocodec = "opus"`` (fMP4, Opus kept: a remux);

printed as cores per recording (the server's CPU over the recordings, receiving included).
Goals: <= 0.015 (AAC) and <= 0.008 (Opus kept). Beside each: the worker's busiest thread (its
event loop) in cores, what bounds one worker process (one thread cannot pass one core), and the
projection for 16 cores at ``max_cpu = 0.85`` (13.6 cores) from the measured cost.

Then admission: a burst of ``BURST`` starts at once (source AAC, the publishers recorded
twice over) against the capacity the same worker shows when the starts come one by one, a
heartbeat apart, until the first 4001.

The audio signal (``BENCH_FFMPEG_SIGNAL``): ``voice`` (a gliding pitch with syllable-rate
loudness, the default), ``music`` (a chord, its channels differing: real stereo) or ``tone`` (a
440 Hz sine); ``voice`` and ``tone`` are sent as dual-mono stereo (``-ac 2`` of one channel),
as a mono source through FFmpeg is.

    .venv/bin/python bench/bench_thirdparty.py
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

from common import (  # noqa: E402
    APPID,
    CLK_TCK,
    HEADERS,
    SECRET,
    ServerProcess,
    headline,
    start_server,
)

from cloudrec.tokens import make_token  # noqa: E402

PUBLISHERS = int(os.environ.get("BENCH_FFMPEG_PUBLISHERS", "16"))
BURST = int(os.environ.get("BENCH_BURST", "32"))
MEASURE_S = float(os.environ.get("BENCH_SECONDS", "10"))
SIGNAL = os.environ.get("BENCH_FFMPEG_SIGNAL", "voice")
STORAGE = {"vender": 101, "endpoint": "local", "bucket": "bench", "accesskey": "-",
           "secretkey": "-"}
AUDIO = {
    "voice": ("aevalsrc=0.25*sin(2*PI*220*t*(1+0.3*sin(PI*t)))*(0.55+0.45*sin(6*PI*t))"
              ":s=48000", ["-ac", "2"]),
    "tone": ("sine=frequency=440:sample_rate=48000", ["-ac", "2"]),
    "music": ("aevalsrc=0.1*sin(2*PI*261.6*t)+0.1*sin(2*PI*392*t)|0.1*sin(2*PI*329.6*t)"
              "+0.1*sin(2*PI*392*t):s=48000", []),
}


USABLE_16 = 16 * 0.85  # cores a 16-core node admits on (max_cpu = 0.85)


def _thread_ticks(pid: int) -> dict[str, int]:
    ticks: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        ticks[f"{name}/{task.name}"] = int(fields[11]) + int(fields[12])
    return ticks


def measure_threads(pid: int, seconds: float) -> tuple[float, float, str]:
    """The process's cores over ``seconds``, its busiest thread's cores and that thread's name."""
    t0, a = time.monotonic(), _thread_ticks(pid)
    time.sleep(seconds)
    b, wall = _thread_ticks(pid), time.monotonic() - t0
    used = {k: (v - a.get(k, 0)) / CLK_TCK / wall for k, v in b.items()}
    busiest = max(used, key=lambda k: used[k])
    return sum(used.values()), used[busiest], busiest.split("/")[0]


def ffmpeg() -> str | None:
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    muxers = subprocess.run([exe, "-hide_banner", "-muxers"], capture_output=True, text=True)
    return exe if " whip " in muxers.stdout else None


def make_clip(exe: str, path: Path, seconds: int = 6) -> Path:
    source, channels = AUDIO[SIGNAL]
    subprocess.run(
        [exe, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=640x480:rate=15:duration={seconds}",
         "-f", "lavfi", "-t", str(seconds), "-i", source,
         "-c:v", "libx264", "-profile:v", "baseline", "-preset", "veryfast", "-tune",
         "zerolatency", "-g", "30", "-bf", "0", "-b:v", "1M", "-pix_fmt", "yuv420p",
         "-c:a", "libopus", *channels, "-b:a", "64k", str(path)],
        check=True, timeout=300)
    return path


def publish(exe: str, server: ServerProcess, clip: Path, room: str, uid: str,
            log: Path) -> subprocess.Popen[bytes]:
    url = f"{server.base}/whip/{APPID}/{room}/{uid}"
    return subprocess.Popen(
        [exe, "-hide_banner", "-nostdin", "-loglevel", "warning", "-re", "-stream_loop", "-1",
         "-i", str(clip), "-c", "copy", "-f", "whip", "-authorization",
         make_token(APPID, room, uid, SECRET), url],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"), preexec_fn=lambda: os.nice(10))


def start(client: httpx.Client, server: ServerProcess, room: str, uid: str,
          codec: str, tries: int = 100) -> dict:
    resid = client.post(server.api("applyrecord"), json={}).json()["resid"]
    body = {"resid": resid, "appid": APPID, "roomid": room, "recordtype": 0, "streamtype": 2,
            "uid": uid, "storagecfg": STORAGE, "outputs": {"audiocodec": codec}}
    for _ in range(tries):
        r = client.post(server.api("startrecord"), json=body).json()
        if r["code"] != 4005:
            break
        time.sleep(0.2)
    return r | {"resid": resid}


def stop_all(client: httpx.Client, server: ServerProcess, room: str, started: list[dict]) -> None:
    for r in started:
        if r["code"] == 0:
            client.post(server.api("stoprecord"), json={
                "resid": r["resid"], "appid": APPID, "roomid": room,
                "recordid": r["recordid"]})
    time.sleep(2)


def run() -> list[str]:
    exe = ffmpeg()
    if exe is None:
        return ["third-party publisher: skipped (imageio-ffmpeg with the whip muxer missing)"]
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cloudrec-bench-ff-") as tmp:
        tmp_path = Path(tmp)
        clip = make_clip(exe, tmp_path / "clip.mkv")
        server = start_server(tmp_path / "data", quiet=True, workers=1,
                              write_rate_per_s=1_000_000, query_rate_per_s=1_000_000,
                              idle_timeout_s=60)
        room = "ff"
        uids = [f"f{i}" for i in range(PUBLISHERS)]
        pubs = [publish(exe, server, clip, room, u, tmp_path / f"{u}.log") for u in uids]
        try:
            with httpx.Client(headers=HEADERS, timeout=30) as client:
                probe = start(client, server, room, uids[-1], "aac")  # all are publishing
                stop_all(client, server, room, [probe])
                time.sleep(2)
                floor = measure_threads(server.proc.pid, MEASURE_S)[0] / PUBLISHERS
                per: dict[str, float] = {}
                loop: dict[str, tuple[float, str]] = {}
                for codec in ("aac", "opus"):
                    started = [start(client, server, room, u, codec) for u in uids]
                    bad = [r for r in started if r["code"] != 0]
                    if bad:
                        raise RuntimeError(f"startrecord ({codec}): {bad[0]}")
                    time.sleep(3)
                    cores, busiest, name = measure_threads(server.proc.pid, MEASURE_S)
                    per[codec], loop[codec] = cores / PUBLISHERS, (busiest, name)
                    stop_all(client, server, room, started)
                lines.append(
                    f"FFmpeg WHIP x{PUBLISHERS} ({SIGNAL}, stereo Opus): AAC {per['aac']:.4f} "
                    f"cores/recording (goal <= 0.015), Opus kept {per['opus']:.4f} (goal <= "
                    f"0.008), receive-only floor {floor:.4f} cores/stream")
                headline(lines[-1])
                for codec in ("aac", "opus"):
                    busiest, name = loop[codec]
                    lines.append(
                        f"  {codec}: busiest thread ({name}) {busiest:.3f} cores of the worker's "
                        f"{per[codec] * PUBLISHERS:.3f}: one worker process holds ~"
                        f"{0.85 * PUBLISHERS / max(busiest, 1e-6):.0f} such recordings before "
                        f"that thread fills a core; 16 cores (13.6 usable) ~"
                        f"{USABLE_16 / per[codec]:.0f} recordings, as many workers as cores")
                    headline(lines[-1])
                lines.append(burst_line(client, server, room, uids))
                headline(lines[-1])
        finally:
            for p in pubs:
                p.terminate()
            for p in pubs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
            server.stop()
    return lines


def burst_line(client: httpx.Client, server: ServerProcess, room: str, uids: list[str]) -> str:
    """Accepted of a burst of BURST starts, against the capacity one by one."""
    import concurrent.futures

    targets = [uids[i % len(uids)] for i in range(BURST)]
    with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
        burst = list(pool.map(lambda u: start(client, server, room, u, "aac", tries=1), targets))
    accepted = sum(r["code"] == 0 for r in burst)
    refused = [r["message"] for r in burst if r["code"] == 4001]
    stop_all(client, server, room, burst)
    time.sleep(2)
    one_by_one: list[dict] = []
    for u in targets:
        r = start(client, server, room, u, "aac", tries=1)
        one_by_one.append(r)
        if r["code"] != 0:
            break
        time.sleep(1.2)  # a heartbeat: the worker's committed cost counts it
    capacity = sum(r["code"] == 0 for r in one_by_one)
    stop_all(client, server, room, one_by_one)
    why = f"; first refusal: {refused[0]}" if refused else ""
    return (f"burst of {BURST} starts on one worker: {accepted} accepted, {len(refused)} "
            f"refused; one by one it took {capacity}{'' if capacity < BURST else '+'}{why}")


if __name__ == "__main__":
    print("\n".join(run()), flush=True)
