"""What the console shows, as JSON: rooms and their publishers, recordings, nodes and workers.

Everything is read from what the node already has: the directory (every live worker of the
cluster), the workers themselves (publications, a running recording's live progress), the task
store (tasks, their stored progress) and the callback outbox (events and their delivery state).
A worker that does not answer within :data:`WORKER_TIMEOUT_S` is shown from the task store
instead, so one stuck worker never stalls the page. Responses are redacted by the caller.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cloudrec.console import files
from cloudrec.tasks import Status
from cloudrec.tasks.store import Task

log = logging.getLogger(__name__)

WORKER_TIMEOUT_S = 2.0
STREAM_TYPES = {1: "mixed", 2: "source"}
RECORD_TYPES = {0: "audio+video", 1: "video", 2: "audio"}
STATES = {"active": None, "recording": {Status.RECORDING}, "stopped": {Status.STOPPED},
          "failed": {Status.FAILED}, "ended": {Status.STOPPED, Status.FAILED}}


async def rooms(front: Any) -> list[dict[str, Any]]:
    """Each room of the cluster with its publishers; rooms held without a publisher (a mix
    holding its room, a room whose publisher just left) are listed with none."""
    pubs = await front.publications()
    workers = await front.directory.workers()
    out: dict[tuple[int, str], dict[str, Any]] = {}

    def room(appid: int, roomid: str, worker: str, node: str) -> dict[str, Any]:
        return out.setdefault((appid, roomid), {"appid": appid, "roomid": roomid,
                                                "worker": worker, "node": node,
                                                "publishers": []})

    for w in workers:
        for name in w.rooms:
            appid, _, roomid = name.partition("/")
            if appid.isdigit():
                room(int(appid), roomid, w.id, w.node)
    for p in pubs:
        video, audio = p.get("video") or {}, p.get("audio") or {}
        room(int(p["appid"]), str(p["roomid"]), p["worker"], p["node"])["publishers"].append({
            "uid": p["uid"], "state": p.get("state"), "kinds": p.get("kinds", []),
            "video_codec": p.get("video_codec") or video.get("codec"),
            "audio_codec": p.get("audio_codec") or audio.get("codec"),
            "width": p.get("width"), "height": p.get("height"),
            "fps": video.get("fps"), "video_kbps": video.get("kbps"),
            "audio_kbps": audio.get("kbps"),
            "kbps": round((video.get("kbps") or 0) + (audio.get("kbps") or 0), 1),
            "connected_at": p.get("connected_at") or p.get("joined_at"),
            "worker": p["worker"], "node": p["node"]})
    for r in out.values():
        r["publishers"].sort(key=lambda p: (p["connected_at"] or 0, p["uid"]))
    return sorted(out.values(), key=lambda r: (r["appid"], r["roomid"]))


async def recordings(front: Any, *, appid: int | None = None, roomid: str | None = None,
                     state: str = "all", before_ms: int | None = None,
                     limit: int = 50) -> dict[str, Any]:
    """A page of tasks, newest first, each with its progress and callback events."""
    active = True if state in ("active", "recording") else (
        False if state in ("stopped", "failed", "ended") else None)
    tasks = front.tasks.list_tasks(appid=appid, roomid=roomid, active=active,
                                   before_ms=before_ms, limit=limit)
    wanted = STATES.get(state)
    shown = [t for t in tasks if wanted is None or t.status in wanted]
    items = await asyncio.gather(*(recording(front, t) for t in shown))
    return {"recordings": list(items),
            "next_before": tasks[-1].createtime if len(tasks) >= limit else None}


async def recording(front: Any, task: Task, *, detail: bool = False) -> dict[str, Any]:
    """One task as the console shows it: live progress from its worker while it runs."""
    progress = await _progress(front, task)
    cfg = task.request.get("storagecfg") or {}
    item: dict[str, Any] = {
        "recordid": task.recordid, "appid": task.appid, "roomid": task.roomid,
        "uid": task.uid, "type": STREAM_TYPES.get(task.streamtype, str(task.streamtype)),
        "tracks": RECORD_TYPES.get(task.recordtype, str(task.recordtype)),
        "status": int(progress.get("status", task.status)),
        "state": Status(int(progress.get("status", task.status))).name.lower(),
        "active": task.active, "stopreason": progress.get("stopreason", task.stopreason),
        "error": progress.get("error", task.error),
        "createtime": task.createtime, "starttime": task.starttime, "stoptime": task.stoptime,
        "worker": task.owner,
        "duration": progress.get("duration", 0.0), "segments": progress.get("segments", 0),
        "storedfiles": progress.get("storedfiles", 0),
        "storedbytes": progress.get("storedbytes", 0),
        "pendingfiles": progress.get("pendingfiles", 0),
        "storageerror": progress.get("storageerror"),
        "warnings": progress.get("warnings") or [],
        "framesskipped": progress.get("framesskipped", 0),
        "framesdropped": progress.get("framesdropped", 0),
        "inputs": progress.get("inputs"),
        "webpage": ((task.request.get("mixconfig") or {}).get("webpage") or {}).get("url"),
        "snapshot": _last_snapshot(task, progress),
        "storage": {"vender": cfg.get("vender"), "bucket": cfg.get("bucket"),
                    "prefix": files.prefix(task)},
        "playlist": progress.get("playlist") or files.prefix(task) + files.basename(task) + ".m3u8",
        "player": (f"/console/files/{task.recordid}/{files.basename(task)}.m3u8"
                   if files.playable(task) else None),
        "callbackurl": task.request.get("callbackurl"),
        "events": front.outbox.events_for(task.recordid) if front.outbox is not None else [],
    }
    if detail:
        item["request"] = task.request
        item["progress"] = progress
    return item


def _last_snapshot(task: Task, progress: dict[str, Any]) -> str | None:
    """The console's URL of the recording's latest snapshot, where the console can read it."""
    shots = [f["name"] for f in progress.get("files") or [] if f.get("kind") == "snapshot"]
    if not shots or not files.playable(task):
        return None
    return f"/console/files/{task.recordid}/{shots[-1].rsplit('/', 1)[-1]}"


async def _progress(front: Any, task: Task) -> dict[str, Any]:
    if task.active:
        try:
            return dict(await asyncio.wait_for(
                front.query(task.appid, task.roomid, task.recordid), WORKER_TIMEOUT_S))
        except Exception as exc:  # a worker that is busy, gone or moving the task
            log.debug("live progress of %s unavailable: %s", task.recordid, exc)
            data = getattr(exc, "data", None)
            if isinstance(data, dict):
                return data
    return front.stored.describe(task)


async def nodes(front: Any) -> list[dict[str, Any]]:
    """Every live worker of the cluster, grouped by node."""
    out: dict[str, dict[str, Any]] = {}
    for w in sorted(await front.directory.workers(), key=lambda w: (w.node, w.id)):
        node = out.setdefault(w.node, {"node": w.node, "public_url": w.public_url,
                                       "workers": []})
        node["workers"].append({
            "id": w.id, "pid": w.pid, "cpu": round(w.cpu, 3), "capacity": w.capacity,
            "load": round(w.cpu / w.capacity, 3) if w.capacity else None,
            "recordings": w.recordings, "max_recordings": w.max_recordings,
            "publishers": w.publishers, "rooms": list(w.rooms), "draining": w.draining,
            "full": w.refused(), "updated": w.updated})
    return list(out.values())


def ingresses(store: Any) -> dict[str, Any]:
    """Every ingress not deleted, with its state, and every auto-record rule (the caller
    redacts: URLs lose their credentials, storage keys are hidden)."""
    from cloudrec.api.ingress_front import describe  # the API's own shape of an ingress

    return {"ingresses": [{**describe(i), "appid": i.appid} for i in store.ingresses()],
            "rules": [{"ruleid": r.ruleid, "appid": r.appid, "roomid": r.pattern,
                       **r.request, "streamtype": r.streamtype, "createtime": r.createtime}
                      for r in store.rules()]}
