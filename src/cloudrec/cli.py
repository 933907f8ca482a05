"""The ``cloudrec`` command: serve, demo, publish, token, probe, and rec (the API's client)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

import typer

from cloudrec.cli_rec import rec_app
from cloudrec.config import (
    ConfigError,
    Settings,
    check_settings,
    load_settings,
    start_warnings,
    with_dev_app,
)

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
app.add_typer(rec_app, name="rec", help="Drive recordings on a server through its API.")

ConfigOpt = typer.Option(None, "--config", "-c", help="TOML settings file")


def _settings(config: Optional[Path], *, check: bool = True, dev_app: bool = True,
              **overrides: Any) -> Settings:
    """Settings read (and, with ``check``, checked) for a command; a config mistake is printed
    as its one line on stderr and the command exits with status 2."""
    try:
        settings = load_settings(config, **overrides)
        if check:
            check_settings(settings)
        return with_dev_app(settings) if dev_app else settings
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def _serve(settings: Settings) -> None:
    import uvicorn

    from cloudrec.api import create_app
    from cloudrec.logs import configure, uvicorn_log_config

    configure(settings.log_level, settings.log_format)
    for warning in start_warnings(settings):
        logging.getLogger("cloudrec.serve").warning("%s", warning)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=settings.log_level, log_config=uvicorn_log_config(),
                timeout_graceful_shutdown=int(settings.stop_timeout_s))


def _print_app(settings: Settings) -> None:
    from cloudrec.api.auth import basic_token

    for app_cfg in settings.apps:
        typer.echo(f"app {app_cfg.appid}: key={app_cfg.key} secret={app_cfg.secret}")
        token = basic_token(app_cfg.key, app_cfg.secret)
        typer.echo(f"  headers: AppID: {app_cfg.appid}  Token: {token}")
    typer.echo(f"API base: {settings.base_url}/app/{{appid}}/v1/recordoss/")
    typer.echo(f"publish page: {settings.base_url}/publish   data: {settings.data_dir.resolve()}")


@app.command()
def serve(
    config: Optional[Path] = ConfigOpt,
    host: Optional[str] = typer.Option(None, help="listen address (CLOUDREC_HOST)"),
    port: Optional[int] = typer.Option(None, help="listen port (CLOUDREC_PORT)"),
    data_dir: Optional[Path] = typer.Option(None, help="task store, spool, local storage"),
    log_level: Optional[str] = typer.Option(
        None, help="debug, info, warning or error (CLOUDREC_LOG_LEVEL)"),
    log_format: Optional[str] = typer.Option(
        None, help="text, or json: one JSON object per line (CLOUDREC_LOG_FORMAT)"),
) -> None:
    """Run the service: REST API, WHIP ingest, recorders."""
    settings = _settings(config, host=host, port=port, data_dir=data_dir, log_level=log_level,
                         log_format=log_format)
    _print_app(settings)
    _serve(settings)


@app.command()
def token(
    appid: int = typer.Argument(...),
    roomid: str = typer.Argument(...),
    uid: str = typer.Argument(...),
    ttl: int = typer.Option(3600, help="seconds the token is valid"),
    config: Optional[Path] = ConfigOpt,
    data_dir: Optional[Path] = typer.Option(
        None, help="the server's data directory, for its development app (CLOUDREC_DATA_DIR)"),
    secret: Optional[str] = typer.Option(None, help="the app's secret (default: from settings)"),
    play: bool = typer.Option(False, "--play", help="a play token: it watches the room (WHEP, "
                              "the room page's events) and never publishes"),
) -> None:
    """Print a publish token (JWT) for one uid in one room (``--play``: a play token).

    The secret is the server's: an app of ``--config``, or the development app that ``cloudrec
    serve`` created under its data directory. This command never creates an app: a token signed
    with a secret the server does not know would only be refused."""
    from cloudrec.tokens import make_token

    if secret is None:
        secret = _server_secret(appid, _settings(config, check=False, dev_app=False,
                                                 data_dir=data_dir))
    typer.echo(make_token(appid, roomid, uid, secret, ttl_s=ttl, play=play))


def _server_secret(appid: int, settings: Settings) -> str:
    """The secret of ``appid`` as the server with these settings knows it, read-only."""
    for app_cfg in settings.apps:
        if app_cfg.appid == appid:
            return app_cfg.secret
    dev_app = settings.data_dir / "dev-app.json"
    if settings.apps:
        where = f"the configured apps ({', '.join(str(a.appid) for a in settings.apps)})"
    elif dev_app.exists():
        data = json.loads(dev_app.read_text())
        if int(data["appid"]) == appid:
            return str(data["secret"])
        where = f"the development app in {dev_app.resolve()} (appid {data['appid']})"
    else:
        typer.echo(
            f"error: no server settings found: no [[apps]] in a config file (--config) and no "
            f"development app at {dev_app.resolve()} (--data-dir). Run this where `cloudrec "
            "serve` runs, or pass its --config or --data-dir, or --secret.", err=True)
        raise typer.Exit(2)
    typer.echo(f"error: app {appid} is not among {where}", err=True)
    raise typer.Exit(2)


@app.command()
def publish(
    url: str = typer.Argument(..., help="WHIP URL, e.g. http://127.0.0.1:8080/whip/10034/room1/u1"),
    token_: str = typer.Option(..., "--token", help="publish token (cloudrec token ...)"),
    seconds: Optional[float] = typer.Option(
        None, help="stop after this long (default: run until Ctrl-C)"),
    width: int = 640,
    height: int = 480,
    fps: int = 15,
    codec: str = typer.Option("h264", help="h264 or vp8"),
    audio: bool = True,
    video: bool = True,
    tone: float = 440.0,
    clip: Optional[Path] = typer.Option(
        None, help="send a pre-encoded file (H.264/Opus) without re-encoding"),
    stats_every: float = typer.Option(5.0, help="print what was sent every this many seconds"),
) -> None:
    """Publish a synthetic stream (moving pattern, clock, tone) over WHIP; print the
    connection's state as it changes and what was sent every few seconds."""
    from cloudrec.webrtc.whip_client import PublishError
    from cloudrec.webrtc.whip_client import publish as run_publish

    def on_state(state: str) -> None:
        typer.echo(f"{time.strftime('%H:%M:%S')} state {state}")

    def on_report(report: dict[str, object]) -> None:
        parts = [f"{kind} {s['frames']} frames {s['fps']} fps {s['kbps']} kbps"  # type: ignore[index]
                 for kind, s in report.items() if kind in ("video", "audio")]
        typer.echo(f"{time.strftime('%H:%M:%S')} sent {report['seconds']} s: {', '.join(parts)}")

    typer.echo(f"{time.strftime('%H:%M:%S')} publishing to {url}")
    try:
        stats = asyncio.run(run_publish(
            url, token_, width=width, height=height, fps=fps, audio=audio, video=video,
            video_codec=codec, duration=seconds, tone_hz=tone, clip=str(clip) if clip else None,
            on_state=on_state, on_report=on_report, report_every_s=stats_every))
    except PublishError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    typer.echo(f"{time.strftime('%H:%M:%S')} published {stats.seconds:.1f} s: "
               f"{stats.video_frames} video frames ({stats.video_codec}), "
               f"{stats.audio_frames} audio frames")


@app.command()
def probe(
    path: str = typer.Argument(..., help="a playlist (.m3u8), segment or MP4, or its URL"),
    packets_only: bool = typer.Option(False, "--packets-only",
                                      help="count packets, decode nothing"),
) -> None:
    """Show what a recording holds: duration, and per stream its codec, size and frames."""
    from cloudrec.probe import probe as run_probe

    try:
        report = run_probe(path, decode=not packets_only)
    except Exception as exc:  # FFmpeg's errors (a missing file, no media) as one line
        typer.echo(f"cannot read {path}: {exc}", err=True)
        raise typer.Exit(1) from None
    for line in report.lines():
        typer.echo(line)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@app.command()
def demo(
    seconds: float = typer.Option(20.0, help="how long to record"),
    data_dir: Path = typer.Option(Path("./data"), help="where the files land"),
) -> None:
    """Start a server, publish a synthetic user, record it and print where the files are."""
    from cloudrec.demo import run_demo

    port = free_port()
    settings = _settings(None, port=port, data_dir=data_dir, log_level="warning")
    playlist = asyncio.run(run_demo(settings, seconds))
    typer.echo(f"recorded {seconds:.0f} s: {playlist}")
    typer.echo(f"play it:   ffplay {playlist}")
    typer.echo(f"probe it:  ffprobe -hide_banner {playlist}")


def main() -> None:  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
