"""The command line as a new user meets it: token, and demo producing a playable recording."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cloudrec.config import load_settings, with_dev_app
from cloudrec.tokens import verify_token
from tests.media_check import ffprobe_streams, playlist_lines, probe_playlist


def cloudrec(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "cloudrec.cli", *args], cwd=cwd, check=True,
                          capture_output=True, text=True, timeout=120)
    return done.stdout


def test_token_for_configured_app(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[[apps]]\nappid = 7\nkey = "k"\nsecret = "s3cr3t"\n')
    token = cloudrec("token", "7", "room1", "u1", "--config", str(config), cwd=tmp_path).strip()
    verify_token(token, 7, "room1", "u1", "s3cr3t")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDREC_")}
    return subprocess.run([sys.executable, "-m", "cloudrec.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_token_outside_the_servers_directory_creates_no_app(tmp_path: Path) -> None:
    """Once, a new development app with a new secret was made here, and its tokens refused."""
    done = run_cli("token", "10034", "room1", "u1", cwd=tmp_path)
    assert done.returncode != 0 and done.stdout == ""
    assert "no server settings found" in done.stderr and "--data-dir" in done.stderr
    assert list(tmp_path.iterdir()) == [], "nothing is created"


def test_token_signs_with_the_servers_development_app(tmp_path: Path) -> None:
    server_dir = tmp_path / "server"
    dev = with_dev_app(load_settings(None, data_dir=server_dir / "data")).apps[0]  # as serve does
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = run_cli("token", str(dev.appid), "room1", "u1", "--data-dir", str(server_dir / "data"),
                   cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    verify_token(done.stdout.strip(), dev.appid, "room1", "u1", dev.secret)
    here = run_cli("token", str(dev.appid), "room1", "u1", cwd=server_dir)  # ./data by default
    verify_token(here.stdout.strip(), dev.appid, "room1", "u1", dev.secret)
    other = run_cli("token", "7", "room1", "u1", cwd=server_dir)
    assert other.returncode != 0 and "app 7 is not among" in other.stderr
    assert list(elsewhere.iterdir()) == []


def test_demo_records_a_playable_playlist(tmp_path: Path) -> None:
    out = cloudrec("demo", "--seconds", "4", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    playlist = Path(out.split("recorded 4 s: ")[1].splitlines()[0])
    assert playlist.exists() and playlist.is_relative_to(tmp_path)
    assert playlist_lines(playlist)[-1] == "#EXT-X-ENDLIST"
    probe = probe_playlist(playlist)
    assert (probe.width, probe.height) == (640, 480) and abs(probe.duration - 4) <= 1.0
    streams = ffprobe_streams(playlist)
    if streams is not None:
        assert sorted(str(s["codec_name"]) for s in streams) == ["aac", "h264"]
