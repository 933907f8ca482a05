"""Logs that tell a recording's story: ``cloudrec serve`` with ``log_format = "json"`` and
``--log-level info`` writes one JSON object per line, from the front and from its worker
processes, and one line per recording event with the task's identity."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from cloudrec.logs import JsonFormatter
from tests.helpers import APPID
from tests.media_check import probe_playlist
from tests.nodes import Node


async def test_serve_writes_json_lines_with_the_recordings_story(tmp_path: Path) -> None:
    node = Node(tmp_path / "node", workers=2, log_format="json")  # log_level "warning" there
    log_path = node.data_dir / "serve.log"
    with open(log_path, "wb") as log_file:
        node.proc = subprocess.Popen(
            [sys.executable, "-m", "cloudrec.cli", "serve", "--config", str(node.config),
             "--log-level", "info"], stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            await node.ready()
            pub = await node.publisher("logroom", "carol")
            try:
                resid, recordid = await node.record("logroom", "carol")
                for _ in range(60):  # a few 1 s segments stored
                    data = (await node.call(f"queryrecord/logroom/{recordid}"))["data"]
                    if data["storedfiles"] >= 4:
                        break
                    await asyncio.sleep(0.25)
                stop = await node.call("stoprecord", {"resid": resid, "appid": APPID,
                                                      "roomid": "logroom", "recordid": recordid})
                assert stop["code"] == 0, stop
            finally:
                await pub.stop()
        finally:
            node.stop()

    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    objects: list[dict[str, Any]] = []
    for line in lines:
        if line.startswith("Fatal Python error") or not line.startswith("{"):
            continue  # the interpreter's own words at a worker's exit, not a log line
        objects.append(json.loads(line))
    assert len(objects) >= 5 and len(objects) >= len(lines) - 10, lines[:20]
    for obj in objects:
        assert {"time", "level", "logger", "message"} <= set(obj), obj
        assert obj["time"].endswith("Z") and obj["level"] in ("INFO", "WARNING", "ERROR")
    assert any(o["logger"].startswith("uvicorn") for o in objects), "uvicorn's lines too"

    story = [o for o in objects if o.get("recordid") == recordid and "event" in o]
    events = [o["event"] for o in story]
    assert events[0] == "recording.started" and events[-1] == "recording.stopped", events
    assert events.count("recording.segment_stored") >= 2, events
    for obj in story:
        assert obj["appid"] == APPID and obj["roomid"] == "logroom" and obj["uid"] == "carol"
        assert obj["type"] == "source" and obj["worker"] in ("w0", "w1"), obj
        assert recordid in obj["message"]
    stored = next(o for o in story if o["event"] == "recording.segment_stored")
    assert stored["file"].endswith(".ts") and stored["size"] > 0
    stopped = story[-1]
    assert stopped["reason"] == "api" and stopped["segments"] >= 2 and stopped["error"] is None
    assert stopped["level"] == "INFO"
    playlist = next(o for o in story if o["event"] == "recording.started")["playlist"]
    probe = probe_playlist(node.data_dir / "storage" / "rec-bucket" / playlist)
    assert probe.duration >= 1.5


def test_json_lines_carry_extra_fields_and_exceptions() -> None:
    formatter = JsonFormatter({"worker": "w3"})
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("cloudrec.x").makeRecord(
            "cloudrec.x", logging.ERROR, __file__, 1, "failed %s", ("it",), sys.exc_info(),
            extra={"recordid": "r1", "path": Path("/a")})
    obj = json.loads(formatter.format(record))
    assert obj["message"] == "failed it" and obj["level"] == "ERROR"
    assert obj["recordid"] == "r1" and obj["path"] == "/a" and obj["worker"] == "w3"
    assert "ValueError: boom" in obj["exception"]
