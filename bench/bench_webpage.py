"""Recording a web page: cores and peak memory of a 1280x720@15 recording of a page that
animates and plays sound, beside ffmpeg's x11grab + libx264 of the same page in a chromium on
a virtual display (Xvfb), measured in the same run.

cloudrec: one server (``workers = 1``) records the page (its headless chromium, the page's
H.264/Opus encoding, the mix process). Cores: the CPU of the server's whole process tree while
recording, less the same tree idle just before. Memory: the peak over the run of the tree's
PSS (each shared page counted once, shared among the processes that map it) above the idle
server's, and the browser's tree alone.

Reference: Xvfb at 1280x720, chromium showing the page in kiosk mode on it, and
``ffmpeg -f x11grab -framerate 15 -c:v libx264 -preset veryfast -tune zerolatency`` writing a
file; cores of Xvfb + the browser tree + ffmpeg. It records no sound (that needs PulseAudio).
Goal: at most 1 core and 400 MB for cloudrec at 720p15.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from common import APPID, HEADERS, cpu_seconds, headline, start_server  # noqa: E402

MEASURE_S = float(os.environ.get("BENCH_SECONDS", "10"))
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
    found, todo = [pid], [pid]
    while todo:
        parent = todo.pop()
        try:
            kids = [int(k) for k in Path(f"/proc/{parent}/task/{parent}/children").read_text()
                    .split()]
        except OSError:
            continue
        found += kids
        todo += kids
    return found


def tree_cpu(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            out[pid] = cpu_seconds(pid)
        except OSError:
            pass
    return out


def pss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def measure_tree(roots: list[int], seconds: float, browser_of=None) -> tuple[float, float, float]:
    """Cores of the roots' trees over ``seconds``, their peak PSS (MB), and the peak PSS of
    the browser's tree (``browser_of()``: its root pids), sampled every 0.5 s."""
    pids = [p for r in roots for p in tree(r)]
    c0, t0 = tree_cpu(pids), time.monotonic()
    peak = peak_browser = 0.0
    while time.monotonic() - t0 < seconds:
        peak = max(peak, pss_mb([p for r in roots for p in tree(r)]))
        if browser_of is not None:
            peak_browser = max(peak_browser, pss_mb([p for r in browser_of() for p in tree(r)]))
        time.sleep(0.5)
    c1, elapsed = tree_cpu(pids), time.monotonic() - t0
    used = sum(c1[p] - c0[p] for p in c1 if p in c0)
    return used / elapsed, peak, peak_browser


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
        except OSError:
            continue
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        if "chrom" in exe and "chrom" not in _exe(parent):
            roots.append(pid)
    return roots


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def bench_cloudrec(work: Path, url: str) -> tuple[float, float, float, float]:
    server = start_server(work / "server", quiet=True, allow_private_urls=True)
    try:
        idle, idle_pss, _ = measure_tree([server.proc.pid], 3.0)
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
        cores, peak, browser = measure_tree([server.proc.pid], MEASURE_S,
                                            lambda: chromium_roots(server.proc.pid))
        b1 = tree_cpu(browser_pids)
        browser_cores = sum(b1[p] - b0[p] for p in b1 if p in b0) / MEASURE_S
        stop = {k: body[k] for k in ("resid", "appid", "roomid")}
        httpx.post(server.api("stoprecord"), json={**stop, "recordid": answer["recordid"]},
                   headers=HEADERS, timeout=60)
        return cores - idle, peak - idle_pss, browser, browser_cores
    finally:
        server.stop()


def bench_x11grab(work: Path, url: str) -> tuple[float, float] | None:
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
        cores, peak, _ = measure_tree([xvfb.pid, browser.pid, ffmpeg.pid], MEASURE_S)
        return cores, peak
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
        cores, peak, browser, browser_cores = bench_cloudrec(work, url)
        lines.append(f"web page 1280x720@15, cloudrec (headless chromium, screencast + audio "
                     f"tap, mix): {cores:.2f} cores (the browser {browser_cores:.2f}), peak PSS "
                     f"+{peak:.0f} MB over the idle server (the browser {browser:.0f} MB)")
        reference = bench_x11grab(work, url)
        if reference is None:
            headline(f"web page 720p15: {cores:.2f} cores, +{peak:.0f} MB")
            return lines
        ref_cores, ref_peak = reference
        lines.append(f"web page 1280x720@15, Xvfb + chromium + ffmpeg x11grab/libx264 (no "
                     f"sound): {ref_cores:.2f} cores, peak PSS {ref_peak:.0f} MB")
        headline(f"web page 720p15: {cores:.2f} cores, +{peak:.0f} MB (x11grab reference "
                 f"{ref_cores:.2f} cores, {ref_peak:.0f} MB, no sound)")
    return lines


if __name__ == "__main__":
    print("\n".join(run()))
