"""Benchmark plumbing: a cloudrec server in its own process, CPU accounting from /proc."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

APPID, KEY, SECRET = 10034, "bench-key", "bench-secret"
HEADERS = {"AppID": str(APPID), "Token": base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()}
CLK_TCK = os.sysconf("SC_CLK_TCK")
HEADLINES: list[str] = []  # the figures `make bench` repeats at its end


def headline(text: str) -> None:
    """Keep ``text`` for the summary that ``bench/run.py`` prints last."""
    HEADLINES.append(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def measure_cores(pid: int, seconds: float) -> float:
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, what: str) -> str:
        return f"{self.base}/app/{APPID}/v1/recordoss/{what}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_server(data_dir: Path, quiet: bool = False, **settings: object) -> ServerProcess:
    """``quiet``: the server's stderr goes to ``data_dir/server.log``, not to ours."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = [f'data_dir = "{data_dir}"', f"port = {port}"]
    lines += [] if "log_level" in settings else ['log_level = "warning"']
    lines += [f"{k} = {v!r}" if isinstance(v, str) else
              f"{k} = {str(v).lower()}" if isinstance(v, bool) else f"{k} = {v}"
              for k, v in settings.items()]
    lines += ["[[apps]]", f"appid = {APPID}", f'key = "{KEY}"', f'secret = "{SECRET}"']
    config = data_dir / "bench.toml"
    config.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudrec.cli", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(data_dir / "server.log", "wb") if quiet else None)
    deadline = time.monotonic() + 90  # a loaded box starts a node (and its workers) slowly
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return ServerProcess(proc, port, data_dir)
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("cloudrec did not start")


def start_publishers(server: ServerProcess, room: str, uids: list[str], clip: Path,
                     nice: int = 0) -> subprocess.Popen[bytes]:
    """Publishers run in their own process so their CPU is not counted as cloudrec's; with
    ``nice`` (e.g. 19) at that lower priority, so that they yield the CPU to the server."""
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("publishers.py")), server.base, str(APPID),
         SECRET, room, str(clip), *uids],
        stdout=subprocess.PIPE, preexec_fn=(lambda: os.nice(nice)) if nice else None,
    )


def wait_ready(pubs: subprocess.Popen[bytes]) -> None:
    assert pubs.stdout is not None
    line = pubs.stdout.readline().decode().strip()
    if line != "ready":
        raise RuntimeError(f"publishers failed: {line!r}")
