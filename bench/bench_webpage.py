"""Recording a web page: cores and peak memory of a 1280x720@15 recording of a page that
animates and plays sound, beside ffmpeg's x11grab + libx264 of the same page in a chromium on
a virtual display (Xvfb), measured in the same run.

cloudrec: one server records the page (its headless chromium, one process unless
``BENCH_SINGLE_PROCESS=0``; the page's H.264/Opus encoding; the mix process). Cores: the CPU of
the server's whole process tree while recording, less the same tree idle just before. Memory,
sampled every 0.5 s, what the recording adds to the idle server: the peak summed RSS of the
recording's processes (the browser's, the mix process and the worker's growth; a page shared
by N processes counted N times) and the peak PSS (each shared page counted once, shared among
the processes that map it), each also for the browser apart and for the rest. The goal's
400 MB is held against both, and the bench says which are met. Then how fast the page's sound
(stereo samples per second: 48000 is real time) and its screencast pictures arrived, as the
server logged it when the browser closed. ``BENCH_VERBOSE=1`` prints each process's PSS and
RSS; ``BENCH_SECONDS`` the measured time (10 s); ``BENCH_X11GRAB=0`` leaves out the reference.

Reference: Xvfb at 1280x720, chromium showing the page in kiosk mode on it, and
``ffmpeg -f x11grab -framerate 15 -c:v libx264 -preset veryfast -tune zerolatency`` writing a
file; cores of Xvfb + the browser tree + ffmpeg. It records no sound (that needs PulseAudio).
Goal: at most 1 core and 400 MB (summed RSS and PSS of what the recording adds) at 720p15.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from common import APPID, HEADERS, cpu_seconds, headline, start_server  # noqa: E402

MEASURE_S = float(os.environ.get("BENCH_SECONDS", "10"))
SINGLE_PROCESS = os.environ.get("BENCH_SINGLE_PROCESS", "1") != "0"
REFERENCE = os.environ.get("BENCH_X11GRAB", "1") != "0"
GOAL_MB = 400
WARMUP_S = 5.0
PAGE = """<!doctype html><html><body style="margin:0;background:#234;overflow:hidden">
<div id="box" style="position:absolute;width:200px;height:200px;background:#e83"></div>
<div id="n" style="position:absolute;left:40px;top:40px;font:64px sans-serif;color:#fff"></div>
<script>
let t0 = performance.now();
function frame(now) {
  const t = (now - t0) / 1000;
  const box = document.getElementById('box');
  box.style.left = (540 + 400 * Math.sin(t)) + 'px';
  box.style.top = (260 + 200 * Math.cos(1.3 * t)) + 'px';
  box.style.transform = 'rotate(' + (t * 90) + 'deg)';
  document.getElementById('n').textContent = t.toFixed(2);
  requestAnimationFrame(frame);
}
requestAnimationFrame(frame);
const ctx = new AudioContext();
const osc = ctx.createOscillator(); osc.frequency.value = 440;
const lfo = ctx.createOscillator(); lfo.frequency.value = 0.5;
const depth = ctx.createGain(); depth.gain.value = 200;
lfo.connect(depth); depth.connect(osc.frequency);
const gain = ctx.createGain(); gain.gain.value = 0.3;
osc.connect(gain); gain.connect(ctx.destination); osc.start(); lfo.start();
</script></body></html>"""


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants: the children of each of a process's threads (chromium
    starts its children from a launcher thread)."""
    found, todo = [pid], [pid]
    while todo:
        parent = todo.pop()
        kids = []
        for task in _listdir(f"/proc/{parent}/task"):
            try:
                kids += [int(k) for k in
                         Path(f"/proc/{parent}/task/{task}/children").read_text().split()]
            except OSError:
                continue
        found += kids
        todo += kids
    return found


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def tree_cpu(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            out[pid] = cpu_seconds(pid)
        except OSError:
            pass
    return out


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """The processes' summed PSS and summed RSS (MB), from ``/proc/PID/smaps_rollup``."""
    pss = rss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss += int(line.split()[1])
        except OSError:
            pass
    return pss / 1024, rss / 1024


@dataclass
class Peaks:
    """Peak memory (MB) over a run, sampled every 0.5 s: the whole tree's PSS and summed RSS,
    the browser's tree's, and the rest of the tree's (the worker and its mix process)."""

    pss: float = 0.0
    rss: float = 0.0
    browser_pss: float = 0.0
    browser_rss: float = 0.0
    rest_pss: float = 0.0
    rest_rss: float = 0.0

    def sample(self, pids: list[int], browser: set[int]) -> None:
        pss, rss = memory_mb(pids)
        bpss, brss = memory_mb([p for p in pids if p in browser])
        rpss, rrss = memory_mb([p for p in pids if p not in browser])
        self.pss, self.rss = max(self.pss, pss), max(self.rss, rss)
        self.browser_pss, self.browser_rss = max(self.browser_pss, bpss), max(self.browser_rss,
                                                                              brss)
        self.rest_pss, self.rest_rss = max(self.rest_pss, rpss), max(self.rest_rss, rrss)


def measure_tree(roots: list[int], seconds: float,
                 browser_of: Callable[[], list[int]] | None = None) -> tuple[float, Peaks]:
    """Cores of the roots' trees over ``seconds`` and their peak memory; ``browser_of()``:
    the browser's root pids, whose trees are also counted apart."""
    pids = [p for r in roots for p in tree(r)]
    c0, t0 = tree_cpu(pids), time.monotonic()
    peaks = Peaks()
    while time.monotonic() - t0 < seconds:
        browser = set() if browser_of is None else {p for r in browser_of() for p in tree(r)}
        peaks.sample([p for r in roots for p in tree(r)], browser)
        time.sleep(0.5)
    c1, elapsed = tree_cpu(pids), time.monotonic() - t0
    used = sum(c1[p] - c0[p] for p in c1 if p in c0)
    return used / elapsed, peaks


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def serve_page(root: Path) -> str:
    (root / "index.html").write_text(PAGE)
    handler = partial(_Quiet, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}/index.html"


def chromium_roots(server_pid: int) -> list[int]:
    roots = []
    for pid in tree(server_pid):
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:  # gone meanwhile
            continue
        if "chrom" in exe and "chrom" not in _exe(parent):
            roots.append(pid)
    return roots


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


@dataclass
class CloudrecRun:
    cores: float  # the server's tree, less the idle server
    browser_cores: float
    idle: Peaks  # the idle server, before the recording
    peaks: Peaks  # while recording
    rates: str  # the page's sound (samples/s) and pictures (per second), as the server logged

    @property
    def added_pss(self) -> float:
        """The figure held against the goal: what the recording adds to the server's
        memory, PSS (pages shared by the browser's processes counted once in all)."""
        return self.peaks.pss - self.idle.pss

    @property
    def added_rss(self) -> float:
        """What the recording adds to the server's summed RSS: the browser's processes, the
        mix process and the worker's growth (pages shared by processes counted in each)."""
        return self.peaks.rss - self.idle.rss


def bench_cloudrec(work: Path, url: str) -> CloudrecRun:
    # max_cpu: admission is not measured here; a loaded 2-core box would refuse the page
    server = start_server(work / "server", quiet=True, allow_private_urls=True, max_cpu=4.0,
                          webpage_single_process=SINGLE_PROCESS, log_level="info")
    try:
        idle_cores, idle = measure_tree([server.proc.pid], 3.0)
        resid = httpx.post(server.api("applyrecord"), json={}, headers=HEADERS).json()["resid"]
        body = {"resid": resid, "appid": APPID, "roomid": "bench", "recordtype": 0,
                "streamtype": 1,
                "mixconfig": {"webpage": {"url": url},
                              "output": {"streamtype": 0, "videowidth": 1280,
                                         "videoheight": 720, "videobitrate": 2000,
                                         "videofps": 15, "videogop": 30}},
                "storagecfg": {"vender": 101, "endpoint": "local", "bucket": "bench-bucket",
                               "accesskey": "a", "secretkey": "s", "fileprefix": ["p"]}}
        answer = httpx.post(server.api("startrecord"), json=body, headers=HEADERS).json()
        assert answer["code"] == 0, answer
        time.sleep(WARMUP_S)
        browser_pids = [p for r in chromium_roots(server.proc.pid) for p in tree(r)]
        b0 = tree_cpu(browser_pids)
        cores, peaks = measure_tree([server.proc.pid], MEASURE_S,
                                    lambda: chromium_roots(server.proc.pid))
        b1 = tree_cpu(browser_pids)
        browser_cores = sum(b1[p] - b0[p] for p in b1 if p in b0) / MEASURE_S
        if os.environ.get("BENCH_VERBOSE"):
            print_processes(tree(server.proc.pid))
        stop = {k: body[k] for k in ("resid", "appid", "roomid")}
        httpx.post(server.api("stoprecord"), json={**stop, "recordid": answer["recordid"]},
                   headers=HEADERS, timeout=60)
        rates = page_rates(work / "server" / "server.log")
        return CloudrecRun(cores - idle_cores, browser_cores, idle, peaks, rates)
    finally:
        server.stop()


def page_rates(server_log: Path) -> str:
    """The server's log line of how fast the page's sound and pictures arrived (the encoder
    logs it when the browser closes)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in server_log.read_text(errors="replace").splitlines():
            if "the page's sound" in line:
                return line.split("the page's ", 1)[1]
        time.sleep(0.2)
    return "not logged"


def print_processes(pids: list[int]) -> None:
    """Each process's PSS, RSS and command (``BENCH_VERBOSE=1``)."""
    for pid in pids:
        pss, rss = memory_mb([pid])
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        kind = " ".join(w for w in cmd.split() if w.startswith(("--type=", "--utility-sub")))
        print(f"  {pid:>7} PSS {pss:6.1f} RSS {rss:6.1f}  {cmd.split()[0][-30:]} {kind}")


def bench_x11grab(work: Path, url: str) -> tuple[float, Peaks] | None:
    if shutil.which("Xvfb") is None or shutil.which("ffmpeg") is None:
        return None
    display = ":97"
    env = {**os.environ, "DISPLAY": display}
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "1280x720x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    browser = subprocess.Popen(
        ["chromium", "--no-sandbox", "--disable-gpu", "--no-first-run", "--kiosk",
         "--autoplay-policy=no-user-gesture-required", "--window-position=0,0",
         "--window-size=1280,720", f"--user-data-dir={work / 'x11-profile'}", url],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3.0)
    ffmpeg = subprocess.Popen(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "x11grab", "-framerate", "15",
         "-video_size", "1280x720", "-i", display, "-c:v", "libx264", "-preset", "veryfast",
         "-tune", "zerolatency", "-b:v", "2000k", "-g", "30", "-pix_fmt", "yuv420p",
         str(work / "x11grab.ts")], env=env, stdin=subprocess.DEVNULL)
    try:
        time.sleep(WARMUP_S)
        return measure_tree([xvfb.pid, browser.pid, ffmpeg.pid], MEASURE_S)
    finally:
        for proc in (ffmpeg, browser, xvfb):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def run() -> list[str]:
    lines = []
    with tempfile.TemporaryDirectory(prefix="bench-webpage-") as tmp:
        work = Path(tmp)
        (work / "site").mkdir()
        url = serve_page(work / "site")
        r = bench_cloudrec(work, url)
        p = r.peaks
        held = [f"{name} {'met' if value <= GOAL_MB else 'NOT met'}"
                for name, value in (("summed RSS", r.added_rss), ("PSS", r.added_pss))]
        lines.append(
            f"web page 1280x720@15, cloudrec (headless chromium"
            f"{', one process' if SINGLE_PROCESS else ''}, screencast + sound tap, mix): "
            f"{r.cores:.2f} cores (the browser {r.browser_cores:.2f})\n"
            f"  peak summed RSS of the recording's processes: +{r.added_rss:.0f} MB (the "
            f"browser's {p.browser_rss:.0f} MB, the mix process and the worker's growth "
            f"+{p.rest_rss - r.idle.rss:.0f} MB)\n"
            f"  peak PSS over the idle server: +{r.added_pss:.0f} MB (the browser's "
            f"{p.browser_pss:.0f} MB, the mix process and the worker's growth "
            f"+{p.rest_pss - r.idle.pss:.0f} MB)\n"
            f"  goal {GOAL_MB} MB held against both: {', '.join(held)}\n"
            f"  the page's {r.rates}")
        reference = bench_x11grab(work, url) if REFERENCE else None
        if reference is None:
            headline(f"web page 720p15: {r.cores:.2f} cores, summed RSS +{r.added_rss:.0f} MB, "
                     f"PSS +{r.added_pss:.0f} MB")
            return lines
        ref_cores, ref = reference
        lines.append(f"web page 1280x720@15, Xvfb + chromium + ffmpeg x11grab/libx264 (no "
                     f"sound): {ref_cores:.2f} cores, peak PSS {ref.pss:.0f} MB, summed RSS "
                     f"{ref.rss:.0f} MB")
        headline(f"web page 720p15: {r.cores:.2f} cores, summed RSS +{r.added_rss:.0f} MB, "
                 f"PSS +{r.added_pss:.0f} MB (x11grab "
                 f"reference {ref_cores:.2f} cores, PSS {ref.pss:.0f} MB, no sound)")
    return lines


if __name__ == "__main__":
    print("\n".join(run()))
