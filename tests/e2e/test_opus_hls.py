"""Opus kept as Opus through the whole service: a WebRTC publisher recorded with
``outputs.audiocodec = "opus"``, its fMP4 HLS stored, read by ffprobe, listed and called back
with its initialisation section, made into an MP4, and played by hls.js in Chromium while it
records and, once stopped, to its end."""

from __future__ import annotations

import asyncio
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from cloudrec.console.assets import HLS_JS, STATIC_DIR, STATIC_URL
from tests.e2e.test_callbacks import Receiver, serving
from tests.e2e.test_console import (
    PASSWORD,
    STORAGE,
    _browser,
    _drive_console,
    _requests,
    needs_browser,
    publish,
)
from tests.helpers import (
    APPID,
    file_kinds,
    make_settings,
    query_until,
    running_server,
    source_body,
    startrecord,
)
from tests.unit.test_media_source import publish as publish_frames
from tests.unit.test_media_source import record

ROOM, UID = "console-room", "alice"

PLAY_TO_END = """
const [url, done] = [arguments[0], arguments[arguments.length - 1]];
const video = document.createElement("video");
video.muted = true;
document.body.appendChild(video);
const log = [];
const keep = (level) => (...args) => {
  log.push(`${(performance.now() / 1000).toFixed(2)} ${level} ${args.join(" ")}`.slice(0, 300));
  if (log.length > 80) log.shift();
};
const logger = {trace: () => {}, debug: keep("debug"), log: keep("log"), info: keep("info"),
                warn: keep("warn"), error: keep("error")};
const hls = new window.Hls({debug: logger});
let error = null;
hls.on(window.Hls.Events.ERROR, (_e, data) => { if (data.fatal) error = data.details; });
const ranges = (r) => Array.from({length: r.length}, (_, i) => [r.start(i), r.end(i)]);
video.addEventListener("ended", () => done({
  ended: true, time: video.currentTime, error, buffered: ranges(video.buffered)}));
const buffers = [];
const addSourceBuffer = MediaSource.prototype.addSourceBuffer;
MediaSource.prototype.addSourceBuffer = function (type) {
  const buffer = addSourceBuffer.call(this, type);
  buffers.push([type, buffer]);
  return buffer;
};
setTimeout(() => done({
  ended: false, time: video.currentTime, error, duration: video.duration,
  readyState: video.readyState, buffered: ranges(video.buffered),
  tracks: buffers.map(([type, b]) => [type, ranges(b.buffered)]), log,
}), 40000);
hls.loadSource(url);
hls.attachMedia(video);
video.playbackRate = 4;
video.play().catch((e) => { error = String(e); });
"""


def ffprobe(path: Path) -> dict[str, Any]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                          "stream=codec_name:format=duration", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def play_files_in_hls_js(directory: Path, name: str, tmp_path: Path) -> dict[str, Any]:
    """Play the playlist ``name`` of ``directory`` to its end with hls.js (the console's) in
    Chromium, both served on loopback: what :data:`PLAY_TO_END` reports."""
    page = b'<html><body><script src="/hls.min.js"></script></body></html>'
    files = {"/": (page, "text/html"), "/hls.min.js": (
        (STATIC_DIR / HLS_JS.removeprefix(STATIC_URL + "/")).read_bytes(), "text/javascript")}

    class Files(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?")[0]
            if path.startswith("/media/") and "/" not in path[7:]:
                file = directory / path[7:]
                found = (file.read_bytes(), "application/octet-stream") if file.is_file() else None
            else:
                found = files.get(path)
            if found is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", found[1])
            self.send_header("Content-Length", str(len(found[0])))
            self.end_headers()
            self.wfile.write(found[0])

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    driver = _browser(tmp_path)
    try:
        return _play_to_end(driver, base, f"{base}/media/{name}")
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()


def _play_to_end(driver: Any, base: str, url: str) -> dict[str, Any]:
    driver.set_script_timeout(60)
    driver.get(base + "/")
    return driver.execute_async_script(PLAY_TO_END, url)


@needs_browser
async def test_opus_recording_plays_live_and_to_its_end(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, operator_password=PASSWORD, segment_seconds=2.0,
                             idle_timeout_s=10.0, write_rate_per_s=100, query_rate_per_s=1000)
    rx = Receiver(failures=0)
    async with serving(rx) as hook, running_server(settings) as server:
        pub = await publish(server, ROOM, UID)
        driver = await asyncio.to_thread(_browser, tmp_path)
        try:
            resid = await server.apply()
            body = source_body(resid, ROOM, UID, storagecfg=dict(STORAGE), callbackurl=hook,
                               outputs={"audiocodec": "opus", "mp4": True})
            data = await startrecord(server.call, body)
            assert data["code"] == 0, data
            recordid = str(data["recordid"])
            shown = await asyncio.to_thread(_drive_console, driver, server.base, recordid, None)
            await asyncio.sleep(2.0)
            await server.call("stoprecord", {"resid": resid, "appid": APPID, "roomid": ROOM,
                                             "recordid": recordid})
            final = await query_until(server.call, ROOM, recordid,
                                      lambda a: a.get("code") == 4013 or "mp4" in file_kinds(a),
                                      what="the MP4")
            base = f"{APPID}_{ROOM}_{recordid}_{UID}"
            url = f"{server.base}/console/files/{recordid}/{base}.m3u8"
            ended = await asyncio.to_thread(_play_to_end, driver, server.base, url)
            urls, errors = await asyncio.to_thread(_requests, driver)
        finally:
            await asyncio.to_thread(driver.quit)
            await pub.stop()
        stored = server.storage_root() / "console"
    assert shown["advanced"] > 1.5, f"the player did not advance live: {shown}"
    playlist = (stored / f"{base}.m3u8").read_text()
    assert ended["ended"] and ended["error"] is None, (ended, playlist)
    assert any(u.endswith(".m4s") for u in urls) and any(u.endswith("_init.mp4") for u in urls)
    assert errors == [], errors
    kinds = file_kinds(final)
    assert "init" in kinds and "segment" in kinds and "mp4" in kinds, final
    lines = (stored / f"{base}.m3u8").read_text().splitlines()
    assert "#EXT-X-VERSION:7" in lines and f'#EXT-X-MAP:URI="{base}_init.mp4"' in lines
    assert lines[-1] == "#EXT-X-ENDLIST"
    events = [e for e, _, _ in rx.accepted]
    uploaded = {e["data"]["kind"] for e in events if e["type"] == "file.uploaded"}
    assert {"init", "segment", "mp4"} <= uploaded, uploaded
    if shutil.which("ffprobe"):
        for path in (stored / f"{base}.m3u8", stored / f"{base}.mp4"):
            meta = ffprobe(path)
            assert {s["codec_name"] for s in meta["streams"]} == {"h264", "opus"}, meta
            assert float(meta["format"]["duration"]) > 3.0, meta


@needs_browser
def test_a_stretch_without_pictures_plays_through(tmp_path: Path) -> None:
    """The camera off for 2 s of an Opus (fMP4) recording: the stretch holds the last key
    frame's picture, so hls.js plays its sound and reaches the end (without it, the stretch
    was a hole in the one buffer hls.js keeps audio and video in: skipped, and no end)."""
    frames = publish_frames(8.0, video_off=(2.0, 4.0))
    rec = record(tmp_path / "rec", frames, audio_codec="opus", segment_seconds=2.0)
    assert [s.discontinuity for s in rec.segments] == [False, True, True, False]
    ended = play_files_in_hls_js(rec.playlist_path.parent, rec.playlist_path.name, tmp_path)
    assert ended["ended"] and ended["error"] is None, ended
    (start, end), = ended["buffered"]  # one range: no hole
    assert start < 0.1 and end > 7.9, ended
