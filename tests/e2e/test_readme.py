"""The README's worked example, run as a new user would: ``cloudrec serve`` on its embedded
defaults in a fresh directory, then the example's shell block pasted into bash as it is
(only the port, and the wait while it records, are changed)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port

README = Path(__file__).resolve().parents[2] / "README.md"


def worked_example() -> str:
    text = README.read_text()
    section = text[text.index("## A worked example"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_the_worked_example_runs_end_to_end(tmp_path: Path) -> None:
    os.symlink(Path(sys.prefix), tmp_path / ".venv")
    port = free_port()
    env = {**os.environ, "CLOUDREC_PORT": str(port), "CLOUDREC_WORKERS": "2"}
    server = subprocess.Popen([str(tmp_path / ".venv/bin/cloudrec"), "serve"], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stderr.read().decode()  # type: ignore[union-attr]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "cloudrec serve did not come up"
            time.sleep(0.2)
        script = worked_example().replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        script = script.replace("sleep 15", "sleep 8")
        run = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120, start_new_session=True)
        out = run.stdout
        assert run.returncode == 0, run.stdout + run.stderr
        recordid = re.search(r"^([0-9a-f]{30,})$", out, re.M)
        assert recordid is not None, out
        assert '"status":2' in out.replace(" ", ""), out  # queryrecord while it records
        assert "_teacher.m3u8" in out and "_teacher_00000.ts" in out, out
        assert re.search(r"stream \d: video h264 \d+x\d+ \((\d+) packets", out), out
        assert re.search(r"stream \d: audio aac 48000 Hz", out), out
        frames = int(re.search(r"video h264 \d+x\d+ \((\d+) packets", out).group(1))  # type: ignore[union-attr]
        assert frames >= 8 * 15 // 2, out  # at least half of 8 s at the publisher's 15 fps
        leftover = subprocess.run(["pgrep", "-f", "cloudrec publish"], capture_output=True,
                                  text=True)
        assert str(tmp_path) not in leftover.stdout
        mine = [pid for pid in leftover.stdout.split()
                if Path(f"/proc/{pid}/cwd").exists() and
                os.path.realpath(f"/proc/{pid}/cwd") == os.path.realpath(tmp_path)]
        assert not mine, "the example left its publisher running"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            pytest.fail("cloudrec serve did not stop on SIGTERM")
