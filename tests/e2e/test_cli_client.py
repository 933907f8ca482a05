"""``cloudrec rec``: recordings driven entirely through the command line against a real
``cloudrec serve``, with ``cloudrec publish`` sending real WebRTC media; the files decode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cloudrec.client import ClientError, resolve
from cloudrec.tokens import make_token
from tests.helpers import APPID, KEY, SECRET
from tests.media_check import playlist_lines, probe_playlist
from tests.nodes import Node

CLI = [sys.executable, "-m", "cloudrec.cli"]


def env_for(node: Node, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDREC_")}
    env.update(CLOUDREC_SERVER=node.base, CLOUDREC_APPID=str(APPID), CLOUDREC_KEY=KEY,
               CLOUDREC_SECRET=SECRET, **extra)
    return env


def rec(env: dict[str, str], *args: str, cwd: Path, stdin: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CLI, "rec", *args], env=env, cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=90)
    if check:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def start_until_publishing(env: dict[str, str], *args: str, cwd: Path,
                           stdin: str | None = None) -> str:
    """``rec start`` again while the room is not publishing yet (4005): a publication is
    announced with its first frames, a moment after ``cloudrec publish`` connected."""
    for _ in range(60):
        done = rec(env, "start", *args, cwd=cwd, stdin=stdin, check=False)
        if done.returncode == 0:
            return done.stdout.strip()
        assert "4005" in done.stderr, done.stderr
        time.sleep(0.25)
    raise AssertionError("the room never published")


def publish(node: Node, room: str, uid: str, cwd: Path) -> subprocess.Popen[str]:
    url = f"{node.base}/whip/{APPID}/{room}/{uid}"
    return subprocess.Popen([*CLI, "publish", url, "--token", make_token(APPID, room, uid, SECRET),
                             "--seconds", "60", "--stats-every", "1"], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_for(node))


def wait_stored(env: dict[str, str], recordid: str, files: int, cwd: Path) -> dict[str, Any]:
    for _ in range(80):
        data = json.loads(rec(env, "query", recordid, cwd=cwd).stdout)
        if data["storedfiles"] >= files:
            return dict(data)
        time.sleep(0.5)
    raise AssertionError(f"fewer than {files} files stored: {data}")


def stop_publisher(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    return out


async def test_a_source_recording_through_the_cli(tmp_path: Path) -> None:
    node = Node(tmp_path / "node", workers=1).start()
    pub: subprocess.Popen[str] | None = None
    try:
        await node.ready()
        env = env_for(node)
        pub = publish(node, "cliroom", "dave", tmp_path)
        resid = rec(env, "apply", cwd=tmp_path).stdout.strip()
        assert len(resid) > 8
        recordid = start_until_publishing(env, "--room", "cliroom", "--uid", "dave", "--local",
                                          "--prefix", "cli/src", "--resid", resid, cwd=tmp_path)
        watch = subprocess.Popen([*CLI, "rec", "query", recordid, "--watch", "--interval", "0.3"],
                                 env=env, cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        data = wait_stored(env, recordid, 4, tmp_path)
        assert data["status"] == 2 and data["roomid"] == "cliroom" and data["uid"] == "dave"

        listed = json.loads(rec(env, "list", "--state", "active", "--json", cwd=tmp_path).stdout)
        mine = [r for r in listed["records"] if r["recordid"] == recordid]
        assert mine and mine[0]["resid"] == resid and mine[0]["status"] == 2
        table = rec(env, "list", "--room", "cliroom", cwd=tmp_path).stdout
        assert recordid in table and "recording" in table and "source" in table

        stopped = rec(env, "stop", recordid, cwd=tmp_path).stdout  # room and resid looked up
        assert f"recording {recordid} stopped" in stopped, stopped
        out, err = watch.communicate(timeout=30)
        assert watch.returncode == 0, err
        lines = out.strip().splitlines()
        assert any(" recording " in line for line in lines), lines
        assert "stopped" in lines[-1] and "reason api" in lines[-1], lines

        again = rec(env, "stop", recordid, "--room", "cliroom", "--resid", resid,
                    cwd=tmp_path, check=False)
        assert again.returncode == 1 and "4013" in again.stderr
        final = json.loads(rec(env, "query", recordid, "--room", "cliroom", cwd=tmp_path).stdout)
        assert final["status"] == 4 and final["stopreason"] == "api"

        playlist = (node.data_dir / "storage" / "recordings" / "cli" / "src"
                    / f"{APPID}_cliroom_{recordid}_dave.m3u8")
        assert playlist_lines(playlist)[-1] == "#EXT-X-ENDLIST"
        probe = probe_playlist(playlist)
        assert probe.video_codec == "h264" and probe.audio_codec == "aac"
        # at least what was recorded when the files were seen stored (the stop came after)
        assert probe.duration >= data["duration"] >= 1.5 and probe.video_frames > 15 * 1.5

        published = stop_publisher(pub)
        pub = None
        assert "state connected" in published and " sent " in published, published
        assert "video" in published and "kbps" in published
    finally:
        if pub is not None:
            stop_publisher(pub)
        node.stop()


async def test_a_mix_from_stdin_updated_and_stopped_through_the_cli(tmp_path: Path) -> None:
    node = Node(tmp_path / "node", workers=1).start()
    pubs: list[subprocess.Popen[str]] = []
    try:
        await node.ready()
        env = env_for(node)
        pubs = [publish(node, "mixroom", uid, tmp_path) for uid in ("erin", "frank")]
        request = {"roomid": "mixroom", "recordtype": 0, "streamtype": 1,
                   "mixconfig": {"templateid": 3, "output": {
                       "streamtype": 0, "videowidth": 320, "videoheight": 240,
                       "videobitrate": 300, "videofps": 10, "videogop": 10}},
                   "storagecfg": {"vender": 101, "endpoint": "local", "bucket": "mixes",
                                  "accesskey": "a", "secretkey": "s"}}
        recordid = start_until_publishing(env, "-", cwd=tmp_path, stdin=json.dumps(request))
        wait_stored(env, recordid, 3, tmp_path)
        rec(env, "update", recordid, "--template", "4", cwd=tmp_path)
        data = json.loads(rec(env, "query", recordid, cwd=tmp_path).stdout)
        assert data["mixconfig"]["templateid"] == 4
        assert data["mixconfig"]["output"]["videowidth"] == 320
        wait_stored(env, recordid, data["storedfiles"] + 2, tmp_path)
        rec(env, "stop", recordid, cwd=tmp_path)
        playlist = node.data_dir / "storage" / "mixes" / f"{APPID}_mixroom_{recordid}.m3u8"
        assert playlist_lines(playlist)[-1] == "#EXT-X-ENDLIST"
        probe = probe_playlist(playlist)
        assert (probe.width, probe.height) == (320, 240) and probe.duration >= 2
    finally:
        for pub in pubs:
            stop_publisher(pub)
        node.stop()


async def test_credentials_profile_and_refusals(tmp_path: Path) -> None:
    node = Node(tmp_path / "node", workers=1).start()
    try:
        await node.ready()
        profiles = tmp_path / "profile.toml"
        profiles.write_text(f'[default]\nserver = "http://127.0.0.1:1"\n\n[lab]\n'
                            f'server = "{node.base}"\nappid = {APPID}\nkey = "{KEY}"\n'
                            f'secret = "{SECRET}"\n')
        bare = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDREC_")}
        bare["CLOUDREC_PROFILE_FILE"] = str(profiles)
        listed = rec(bare, "--profile", "lab", "list", "--json", cwd=tmp_path).stdout
        assert json.loads(listed)["records"] == []
        assert rec({**bare, "CLOUDREC_PROFILE": "lab"}, "apply", cwd=tmp_path).stdout.strip()

        no_creds = rec(bare, "list", cwd=tmp_path, check=False)  # [default] has no app
        assert no_creds.returncode == 2 and "CLOUDREC_KEY" in no_creds.stderr
        missing = rec(bare, "--profile", "nope", "list", cwd=tmp_path, check=False)
        assert missing.returncode == 2 and "no profile 'nope'" in missing.stderr
        wrong = rec(env_for(node), "--secret", "wrong", "apply", cwd=tmp_path, check=False)
        assert wrong.returncode == 1 and "1001" in wrong.stderr
        away = rec({**env_for(node), "CLOUDREC_SERVER": "http://127.0.0.1:1"}, "apply",
                   cwd=tmp_path, check=False)
        assert away.returncode == 3 and "cannot reach" in away.stderr
        bad = rec(env_for(node), "list", "--state", "paused", cwd=tmp_path, check=False)
        assert bad.returncode == 1 and "2101" in bad.stderr and "state" in bad.stderr
        neither = rec(env_for(node), "start", "--room", "r1", "--uid", "u1", cwd=tmp_path,
                      check=False)
        assert neither.returncode == 2 and "--local" in neither.stderr
    finally:
        node.stop()


def test_resolve_precedence(tmp_path: Path) -> None:
    profiles = tmp_path / "p.toml"
    profiles.write_text('[default]\nserver = "http://p:1"\nappid = 1\nkey = "pk"\n'
                        'secret = "ps"\n')
    env = {"CLOUDREC_PROFILE_FILE": str(profiles), "CLOUDREC_KEY": "ek"}
    creds = resolve(secret="fs", env=env, cwd=tmp_path)
    assert (creds.server, creds.appid, creds.key, creds.secret) == ("http://p:1", 1, "ek", "fs")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dev-app.json").write_text(
        json.dumps({"appid": 10034, "key": "dk", "secret": "ds"}))
    dev = resolve(env={"CLOUDREC_PROFILE_FILE": str(tmp_path / "none.toml")}, cwd=tmp_path)
    assert (dev.server, dev.appid, dev.key) == ("http://127.0.0.1:8080", 10034, "dk")
    with pytest.raises(ClientError, match="asked for, but there is no"):
        resolve(profile="x", env={"CLOUDREC_PROFILE_FILE": str(tmp_path / "none.toml")},
                cwd=tmp_path)
