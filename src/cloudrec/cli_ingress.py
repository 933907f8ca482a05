"""``cloudrec rec ingress`` and ``cloudrec rec autorecord``: pulled sources and auto-record
rules through the API (``/app/{appid}/v1/ingress``, ``/app/{appid}/v1/autorecord``).

``ingress add`` prints the ingressid and ``autorecord add`` the ruleid alone on stdout. Exit
status as ``cloudrec rec``: 0 done, 1 the API refused, 2 usage, 3 the server unreachable.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer

from cloudrec.client import ApiError, ClientError, RecordClient

ingress_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Pull streams (RTSP, RTMP, SRT, HTTP, WHEP, Janus) into rooms.")
autorecord_app = typer.Typer(add_completion=False, no_args_is_help=True,
                             help="Rules that record every publisher of matching rooms.")


def _fail(message: str, status: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(status)


@contextmanager
def _client(ctx: typer.Context) -> Iterator[RecordClient]:
    """The client, with the API's refusals and an unreachable server turned into messages."""
    client = ctx.obj.client()
    try:
        yield client
    except ApiError as exc:
        _fail(f"{exc.code} {exc.message}", 1)
    except ClientError as exc:
        _fail(str(exc), 3)
    finally:
        client.close()


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((ms or 0) / 1000))


def _listing(items: list[dict[str, Any]], as_json: bool, header: str,
             row: Callable[[dict[str, Any]], str]) -> None:
    """``items`` as JSON, or as a table: ``header``, then one ``row`` each."""
    if as_json:
        typer.echo(json.dumps(items, indent=2, ensure_ascii=False))
        return
    typer.echo(header)
    for item in items:
        typer.echo(row(item))


@ingress_app.command("add")
def ingress_add(ctx: typer.Context, url: str = typer.Argument(..., help="the source URL"),
                room: str = typer.Option(..., help="the room it publishes in"),
                uid: Optional[str] = typer.Option(None, help="its uid (none for a Janus room)")
                ) -> None:
    """Pull URL into ROOM as UID; prints the ingressid."""
    body: dict[str, Any] = {"roomid": room, "url": url}
    if uid is not None:
        body["uid"] = uid
    with _client(ctx) as client:
        typer.echo(client.call_v1("POST", "ingress", body)["ingressid"])


@ingress_app.command("list")
def ingress_list(ctx: typer.Context,
                 room: Optional[str] = typer.Option(None, help="only this room"),
                 as_json: bool = typer.Option(False, "--json", help="as JSON")) -> None:
    """The app's ingresses and their state."""
    params = {"roomid": room} if room else None
    with _client(ctx) as client:
        items = client.call_v1("GET", "ingress", params=params)["data"]["ingresses"]
    _listing(items, as_json,
             f"{'INGRESSID':<28} {'ROOM':<16} {'UID':<12} {'KIND':<6} {'STATE':<10} "
             f"{'SINCE':<19}  URL / ERROR",
             lambda i: f"{i['ingressid']:<28} {i['roomid']:<16} {i.get('uid') or '-':<12} "
                       f"{i['kind']:<6} {i['state']:<10} {_when(i['since']):<19}  "
                       f"{i['url']}{'  (' + i['error'] + ')' if i.get('error') else ''}")


@ingress_app.command("show")
def ingress_show(ctx: typer.Context, ingressid: str) -> None:
    """One ingress as JSON (state, error, publishers)."""
    with _client(ctx) as client:
        typer.echo(json.dumps(client.call_v1("GET", f"ingress/{ingressid}")["data"], indent=2,
                              ensure_ascii=False))


@ingress_app.command("delete")
def ingress_delete(ctx: typer.Context, ingressid: str) -> None:
    """End an ingress: its publishers leave the room."""
    with _client(ctx) as client:
        client.call_v1("DELETE", f"ingress/{ingressid}")
    typer.echo(f"ingress {ingressid} deleted", err=True)


@autorecord_app.command("add")
def autorecord_add(
    ctx: typer.Context,
    room: str = typer.Option(..., help="room pattern; * matches any characters"),
    storage: Path = typer.Option(..., help="a storagecfg JSON file"),
    recordtype: int = typer.Option(0, help="0 audio+video, 1 video, 2 audio"),
    mixconfig: Optional[Path] = typer.Option(None, help="a mixconfig JSON file: record the "
                                             "room as a mix (streamtype 1)"),
    callbackurl: Optional[str] = typer.Option(None, help="where events are posted"),
) -> None:
    """Record every publisher of matching rooms (or the room as a mix); prints the ruleid."""
    try:
        body: dict[str, Any] = {"roomid": room, "recordtype": recordtype,
                                "streamtype": 1 if mixconfig else 2,
                                "storagecfg": json.loads(storage.read_text())}
        if mixconfig is not None:
            body["mixconfig"] = json.loads(mixconfig.read_text())
    except (OSError, ValueError) as exc:
        _fail(f"cannot read a JSON file: {exc}", 2)
    if callbackurl:
        body["callbackurl"] = callbackurl
    with _client(ctx) as client:
        typer.echo(client.call_v1("POST", "autorecord", body)["ruleid"])


@autorecord_app.command("list")
def autorecord_list(ctx: typer.Context,
                    as_json: bool = typer.Option(False, "--json", help="as JSON")) -> None:
    """The app's rules."""
    with _client(ctx) as client:
        rules = client.call_v1("GET", "autorecord")["data"]["rules"]
    _listing(rules, as_json,
             f"{'RULEID':<22} {'ROOMS':<20} {'TYPE':<6} {'RECORDTYPE':<10} CREATED",
             lambda r: f"{r['ruleid']:<22} {r['roomid']:<20} "
                       f"{'mixed' if r['streamtype'] == 1 else 'source':<6} "
                       f"{r['recordtype']:<10} {_when(r.get('createtime'))}")


@autorecord_app.command("delete")
def autorecord_delete(ctx: typer.Context, ruleid: str) -> None:
    """Remove a rule (recordings it started go on until their publisher leaves)."""
    with _client(ctx) as client:
        client.call_v1("DELETE", f"autorecord/{ruleid}")
    typer.echo(f"rule {ruleid} deleted", err=True)
