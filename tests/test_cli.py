"""The command line as a new user meets it: token, and demo producing a playable recording."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cloudrec.rooms import verify_token
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
