"""``cloudrec rec``: drive recordings on a server through its API (:mod:`cloudrec.client`).

Output is made for shells: ``apply`` prints the resid and ``start`` the recordid alone on
stdout (``RECORDID=$(cloudrec rec start ...)``), what a person wants to know goes to stderr.
``stop``, ``update`` and ``query`` need the task's room and (to stop or update) its resid: give
them with ``--room`` and ``--resid``, or let the command look the task up with ``listrecord``,
which lists the app's tasks with both.

Exit status: 0 done, 1 the API refused (its code and message on stderr), 2 a usage or settings
problem, 3 the server could not be reached.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from cloudrec.cli_ingress import _client, _fail, autorecord_app, ingress_app
from cloudrec.client import STATUS_NAMES, ClientError, RecordClient, resolve

rec_app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

rec_app.add_typer(ingress_app, name="ingress")
rec_app.add_typer(autorecord_app, name="autorecord")

LOCAL_BUCKET = "recordings"


class _Ctx:
    def __init__(self, **options: Any) -> None:
        self.options = options

    def client(self) -> RecordClient:
        try:
            return RecordClient(resolve(**self.options))
        except ClientError as exc:
            _fail(str(exc), 2)


@rec_app.callback()
def _options(
    ctx: typer.Context,
    server: Optional[str] = typer.Option(None, help="the server's URL (CLOUDREC_SERVER; "
                                         "default http://127.0.0.1:8080)"),
    appid: Optional[int] = typer.Option(None, help="the app's id (CLOUDREC_APPID)"),
    key: Optional[str] = typer.Option(None, help="the app's key (CLOUDREC_KEY)"),
    secret: Optional[str] = typer.Option(None, help="the app's secret (CLOUDREC_SECRET)"),
    profile: Optional[str] = typer.Option(
        None, help="a table of ~/.config/cloudrec/profile.toml (CLOUDREC_PROFILE)"),
) -> None:
    """Drive recordings on a cloudrec server through its API."""
    ctx.obj = _Ctx(server=server, appid=appid, key=key, secret=secret, profile=profile)


def _read_json(source: str) -> dict[str, Any]:
    """A JSON object from a file, or from stdin for ``-``."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        _fail(f"cannot read JSON from {'stdin' if source == '-' else source}: {exc}", 2)
    if not isinstance(data, dict):
        _fail("the JSON must be an object (the request's body)", 2)
    return data


def _task(client: RecordClient, recordid: str, room: Optional[str],
          resid: Optional[str] = None, need_resid: bool = False) -> tuple[str, str | None]:
    """The task's room and resid: from the flags, else from ``listrecord``."""
    if room and (resid or not need_resid):
        return room, resid
    record = client.find(recordid, room)
    if record is None:
        _fail(f"recordid {recordid} is not among the app's tasks"
              + (f" in room {room}" if room else ""), 1)
    return room or str(record["roomid"]), resid or record.get("resid")


# -- apply, start ---------------------------------------------------------------------------------


@rec_app.command()
def apply(ctx: typer.Context) -> None:
    """applyrecord: print a new resid (valid a few minutes, starts one recording)."""
    with _client(ctx) as client:
        typer.echo(client.apply())


def _storage(local: bool, storage: Optional[Path], bucket: str,
             prefix: Optional[str]) -> dict[str, Any]:
    if storage is not None:
        return _read_json(str(storage))
    if not local:
        _fail("say where the files go: --local (the server's data_dir, vender 101) or "
              "--storage FILE (a storagecfg JSON object)", 2)
    cfg: dict[str, Any] = {"vender": 101, "endpoint": "local", "bucket": bucket,
                           "accesskey": "unused", "secretkey": "unused"}
    if prefix:
        cfg["fileprefix"] = [p for p in prefix.split("/") if p]
    return cfg


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        _fail(f"--size must look like 1280x720, not {text!r}", 2)
    return width, height


@rec_app.command()
def start(
    ctx: typer.Context,
    body: Optional[str] = typer.Argument(
        None, help="the startrecord JSON, from a file or - for stdin (appid and resid are "
        "filled in when absent); or build the request with the options below"),
    room: Optional[str] = typer.Option(None, help="the room to record"),
    uid: Optional[str] = typer.Option(None, help="a source recording of this publisher"),
    template: Optional[int] = typer.Option(None, help="a mix of the room with layout "
                                           "template 1-5 (3: tiled)"),
    local: bool = typer.Option(False, "--local", help="store into the server's local "
                               "storage (vender 101): {data_dir}/storage/{bucket}/{prefix}"),
    storage: Optional[Path] = typer.Option(None, help="a storagecfg JSON object in a file"),
    bucket: str = typer.Option(LOCAL_BUCKET, help="the bucket, with --local"),
    prefix: Optional[str] = typer.Option(None, help="the file prefix, a/b/c"),
    recordtype: int = typer.Option(0, help="0 audio+video, 1 video, 2 audio"),
    callback: Optional[str] = typer.Option(None, help="callbackurl for the events"),
    size: str = typer.Option("1280x720", help="a mix's canvas"),
    fps: int = typer.Option(15, help="a mix's frame rate"),
    bitrate: int = typer.Option(1500, help="a mix's video bit rate, kbps"),
    resid: Optional[str] = typer.Option(None, help="a resid from `rec apply` (default: a "
                                        "new one)"),
) -> None:
    """startrecord: print the new recordid (the resid and room go to stderr)."""
    if body is not None:
        if room or uid or template or local or storage:
            _fail("give the request's JSON or build it with options, not both", 2)
        request = _read_json(body)
    else:
        if not room:
            _fail("--room is needed (or give the request's JSON)", 2)
        if (uid is None) == (template is None):
            _fail("give --uid (a source recording) or --template (a mix), one of them", 2)
        request = {"roomid": room, "recordtype": recordtype,
                   "storagecfg": _storage(local, storage, bucket, prefix)}
        if uid is not None:
            request.update(streamtype=2, uid=uid)
        else:
            width, height = _size(size)
            request.update(streamtype=1, mixconfig={"templateid": template, "output": {
                "streamtype": 0, "videowidth": width, "videoheight": height,
                "videobitrate": bitrate, "videofps": fps, "videogop": fps * 2}})
        if callback:
            request["callbackurl"] = callback
    if resid:
        request["resid"] = resid
    with _client(ctx) as client:
        if not request.get("resid"):
            request["resid"] = client.apply()
        recordid = client.start(request)
        typer.echo(recordid)
        typer.echo(f"recording {recordid} started in room {request.get('roomid')} "
                   f"(resid {request['resid']}); stop it with: cloudrec rec stop {recordid}",
                   err=True)


# -- stop, update ---------------------------------------------------------------------------------


@rec_app.command()
def stop(
    ctx: typer.Context,
    recordid: str = typer.Argument(...),
    room: Optional[str] = typer.Option(None, help="the task's room (default: looked up)"),
    resid: Optional[str] = typer.Option(None, help="the task's resid (default: looked up)"),
) -> None:
    """stoprecord: the last segment and the ended playlist are stored before it returns."""
    with _client(ctx) as client:
        roomid, task_resid = _task(client, recordid, room, resid, need_resid=True)
        assert task_resid is not None
        client.stop(roomid, recordid, task_resid)
        data = client.query(roomid, recordid)
        typer.echo(f"recording {recordid} {STATUS_NAMES.get(data.get('status'), 'stopped')}: "
                   f"{data.get('segments', 0)} segments, {data.get('duration', 0):.1f} s, "
                   f"playlist {data.get('playlist')}")


@rec_app.command()
def update(
    ctx: typer.Context,
    recordid: str = typer.Argument(...),
    body: Optional[str] = typer.Argument(
        None, help="the updatemixrecord JSON (or just its mixconfig), from a file or - for "
        "stdin; or use --template"),
    template: Optional[int] = typer.Option(
        None, help="switch the running mix to layout template 1-5, output unchanged"),
    room: Optional[str] = typer.Option(None, help="the task's room (default: looked up)"),
    resid: Optional[str] = typer.Option(None, help="the task's resid (default: looked up)"),
) -> None:
    """updatemixrecord: change a running mix's layout without a gap."""
    if (body is None) == (template is None):
        _fail("give the request's JSON or --template, one of them", 2)
    with _client(ctx) as client:
        roomid, task_resid = _task(client, recordid, room, resid, need_resid=True)
        if body is not None:
            request = _read_json(body)
            if "mixconfig" not in request:
                request = {"mixconfig": request}
        else:
            current = client.query(roomid, recordid).get("mixconfig")
            if not isinstance(current, dict):
                _fail(f"recording {recordid} is not a running mix", 1)
            mixconfig = {k: v for k, v in current.items() if k not in ("input", "intput")}
            request = {"mixconfig": {**mixconfig, "templateid": template}}
        request = {"resid": task_resid, "roomid": roomid, "recordid": recordid, **request}
        client.update(request)
        typer.echo(f"recording {recordid} updated")


# -- query, list ---------------------------------------------------------------------------------


def _progress_line(data: dict[str, Any]) -> str:
    status = STATUS_NAMES.get(data.get("status"), str(data.get("status")))
    line = (f"{status:<9} duration {float(data.get('duration') or 0):7.1f} s  "
            f"segments {data.get('segments', 0)}  stored {data.get('storedfiles', 0)}  "
            f"pending {data.get('pendingfiles', 0)}")
    if data.get("stopreason") and data.get("status", 0) >= 4:
        line += f"  reason {data['stopreason']}"
    for key in ("storageerror", "error"):
        if data.get(key):
            line += f"  {key}: {data[key]}"
    return line


@rec_app.command()
def query(
    ctx: typer.Context,
    recordid: str = typer.Argument(...),
    room: Optional[str] = typer.Option(None, help="the task's room (default: looked up)"),
    watch: bool = typer.Option(False, "--watch", "-w", help="show progress live until the "
                               "task has stopped"),
    interval: float = typer.Option(1.0, help="seconds between looks, with --watch"),
) -> None:
    """queryrecord: the task's state as JSON, or with --watch one line per change."""
    with _client(ctx) as client:
        roomid, _ = _task(client, recordid, room)
        if not watch:
            typer.echo(json.dumps(client.query(roomid, recordid), indent=2, ensure_ascii=False))
            return
        last = ""
        while True:
            data = client.query(roomid, recordid)
            line = _progress_line(data)
            if line != last:
                typer.echo(f"{time.strftime('%H:%M:%S')} {line}")
                last = line
            if int(data.get("status", 0)) >= 4:
                return
            time.sleep(max(0.2, interval))


@rec_app.command(name="list")
def list_(
    ctx: typer.Context,
    room: Optional[str] = typer.Option(None, help="only this room"),
    state: Optional[str] = typer.Option(None, help="active or stopped"),
    limit: int = typer.Option(20, help="at most this many (1-1000)"),
    before: Optional[int] = typer.Option(None, help="tasks created before this time (ms): "
                                         "the next page"),
    as_json: bool = typer.Option(False, "--json", help="the records as JSON"),
) -> None:
    """listrecord: the app's tasks, newest first."""
    with _client(ctx) as client:
        records, next_before = client.list(room, state, limit, before)
        if as_json:
            typer.echo(json.dumps({"records": records, "before": next_before}, indent=2,
                                  ensure_ascii=False))
            return
        typer.echo(f"{'RECORDID':<36} {'ROOM':<16} {'WHO':<12} {'TYPE':<6} {'STATUS':<9} "
                   f"{'CREATED':<19} {'DURATION':>8} {'SEGS':>5}  REASON")
        for r in records:
            who = r.get("uid") or f"mix t{(r.get('mixconfig') or {}).get('templateid', '-')}"
            created = time.strftime("%Y-%m-%d %H:%M:%S",
                                    time.localtime(int(r.get("createtime") or 0) / 1000))
            typer.echo(f"{r['recordid']:<36} {r['roomid']:<16} {who:<12} "
                       f"{'mixed' if r.get('streamtype') == 1 else 'source':<6} "
                       f"{STATUS_NAMES.get(r.get('status'), '?'):<9} {created:<19} "
                       f"{float(r.get('duration') or 0):8.1f} {r.get('segments', 0):>5}  "
                       f"{r.get('stopreason') or ''}")
        if next_before is not None:
            typer.echo(f"more: cloudrec rec list --before {next_before}", err=True)
