"""What the console does beyond reading: charts' samples, play tokens, starting and stopping.

- :class:`Samples`: a ring buffer (:data:`POINTS` samples, one every ``console_sample_s``,
  10 minutes by default) of each publisher's bitrate and frame rate and each node's CPU and
  recordings, taken by the front's periodic loop and served as series for the page's charts.
- :func:`play_token`: a short-lived play token for the signed-in operator, minted here with
  the app's secret so the secret never reaches the page.
- :func:`start_source` / :func:`stop`: a source recording of one publisher and the stop of any
  recording, built server-side and sent through the front's ``apply``/``start``/``stop``, the
  same calls the API makes.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from typing import Any
from urllib.parse import quote

from cloudrec.config import Settings
from cloudrec.errors import CloudrecError, InvalidParameter
from cloudrec.models.requests import StartRecordRequest, StopRecordRequest, parse_request
from cloudrec.tokens import make_token

POINTS = 120
PLAY_TOKEN_S = 60  # a play token only opens the session; the session outlives it
CONSOLE_STORAGE = {"vender": 101, "endpoint": "local", "bucket": "console",
                   "accesskey": "console", "secretkey": "console", "fileprefix": ["console"]}


class Samples:
    """The last :data:`POINTS` samples of the cluster, oldest first."""

    def __init__(self, front: Any, period_s: float) -> None:
        self.front = front
        self.period_s = period_s
        self._ring: deque[dict[str, Any]] = deque(maxlen=POINTS)

    async def sample(self) -> None:
        """Take one sample: the publishers from their workers, the nodes from the directory."""
        pubs, workers = await asyncio.gather(self.front.publications(),
                                             self.front.directory.workers())
        publishers: dict[str, list[float | None]] = {}
        for p in pubs:
            video, audio = p.get("video") or {}, p.get("audio") or {}
            kbps = (video.get("kbps") or 0) + (audio.get("kbps") or 0)
            fps = video.get("fps")
            publishers[f"{p['appid']}/{p['roomid']}/{p['uid']}"] = [
                round(kbps, 1), None if fps is None else round(fps, 1)]
        nodes: dict[str, list[float]] = {}
        for w in workers:
            node = nodes.setdefault(w.node, [0.0, 0])
            node[0] = round(node[0] + w.cpu, 3)
            node[1] += w.recordings
        self._ring.append({"t": round(time.time(), 1), "publishers": publishers,
                           "nodes": nodes})

    def series(self) -> dict[str, Any]:
        """``{"period_s", "points", "t": [...], "publishers": {key: {"kbps", "fps"}},
        "nodes": {node: {"cpu", "recordings"}}}``, each list aligned with ``t`` (null where
        the publisher or node was absent)."""
        ring = list(self._ring)
        out: dict[str, Any] = {"period_s": self.period_s, "points": POINTS,
                               "t": [s["t"] for s in ring], "publishers": {}, "nodes": {}}
        for kind, names in (("publishers", ("kbps", "fps")), ("nodes", ("cpu", "recordings"))):
            keys = sorted({k for s in ring for k in s[kind]})
            for key in keys:
                values = [s[kind].get(key) for s in ring]
                out[kind][key] = {name: [v[i] if v is not None else None for v in values]
                                  for i, name in enumerate(names)}
        return out


def play_token(settings: Settings, body: dict[str, Any]) -> dict[str, Any]:
    """A play token of room ``(appid, roomid)`` for a viewer uid of the console, and the WHEP
    URL of publisher ``uid``; :class:`InvalidParameter` for an unknown app or a missing field."""
    appid, roomid, uid = _target(settings, body)
    app = settings.app(appid)
    assert app is not None
    viewer = "console-" + secrets.token_hex(4)
    return {"token": make_token(appid, roomid, viewer, app.secret, PLAY_TOKEN_S, play=True),
            "whep": f"/whep/{appid}/{_quote(roomid)}/{_quote(uid)}", "viewer": viewer,
            "expires_in": PLAY_TOKEN_S}


async def start_source(front: Any, settings: Settings, body: dict[str, Any]) -> dict[str, Any]:
    """A source recording of one publisher into local storage (vender 101), through ``apply``
    and ``start``: ``{"recordid", "resid"}``. ``recordtype`` as in the API: 0 (audio and
    video, the default), 1 (video) or 2 (audio)."""
    appid, roomid, uid = _target(settings, body)
    recordtype = body.get("recordtype", 0)
    if recordtype not in (0, 1, 2) or isinstance(recordtype, bool):
        raise InvalidParameter("recordtype", "must be 0 (audio and video), 1 (video) or 2 (audio)")
    resid = front.apply(appid)
    req = parse_request(StartRecordRequest, {
        "resid": resid, "appid": appid, "roomid": roomid, "uid": uid, "recordtype": recordtype,
        "streamtype": 2, "storagecfg": CONSOLE_STORAGE}, appid)
    return {"recordid": await front.start(appid, req), "resid": resid}


async def stop(front: Any, recordid: str) -> dict[str, Any]:
    """Stop a recording by its id, through the front's ``stop``: ``{"recordid", "files"}``."""
    task = front.tasks.get(recordid)
    if task is None:
        raise InvalidParameter("recordid", f"no recording {recordid!r}")
    req = parse_request(StopRecordRequest, {"appid": task.appid, "resid": task.resid,
                                            "roomid": task.roomid, "recordid": recordid},
                        task.appid)
    stopped = await front.stop(task.appid, req)
    return {"recordid": stopped["recordid"], "files": len(stopped.get("files") or [])}


def error_body(exc: CloudrecError) -> dict[str, Any]:
    """An error as the API's envelope shows it: its seed code and message."""
    return {"code": exc.code, "message": exc.message}


def _target(settings: Settings, body: dict[str, Any]) -> tuple[int, str, str]:
    try:
        appid = int(body.get("appid"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidParameter("appid", "a whole number is required") from None
    if settings.app(appid) is None:
        raise InvalidParameter("appid", f"no app {appid} on this server")
    roomid, uid = body.get("roomid"), body.get("uid")
    if not isinstance(roomid, str) or not roomid:
        raise InvalidParameter("roomid", "is required")
    if not isinstance(uid, str) or not uid:
        raise InvalidParameter("uid", "is required")
    return appid, roomid, uid


def _quote(part: str) -> str:
    return quote(part, safe="")
