"""Service settings: embedded defaults, a TOML file (``--config``) and ``CLOUDREC_*`` overrides.

Precedence, lowest first: defaults, the TOML file, environment variables. When no app is
configured, a development app is created once under ``data_dir`` (``dev-app.json``) so that
``cloudrec serve`` works with no set-up and keeps its credentials across restarts.
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

DEV_APPID = 10034


@dataclass(frozen=True)
class AppConfig:
    appid: int
    key: str
    secret: str


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("./data")
    idle_timeout_s: float = 30.0
    segment_seconds: float = 6.0
    resid_ttl_s: float = 300.0
    write_rate_per_s: int = 10  # per AppID and write endpoint
    query_rate_per_s: int = 10  # per recordid
    stop_timeout_s: float = 15.0  # how long stoprecord waits for the last segment to be stored
    callback_retry_s: float = 3600.0  # how long an undelivered callback is retried
    pause_timeout_s: float = 3600.0  # a recording paused longer than this stops (reason "paused")
    allow_private_urls: bool = False  # SSRF guard: may picture URLs point at private addresses
    public_url: str = ""  # how publishers reach this server; default http://{host}:{port}
    log_level: str = "info"
    log_format: str = "text"  # "text", or "json": one JSON object per line (cloudrec.logs)
    # -- every core, and a cluster ---------------------------------------------------------------
    workers: int = 0  # worker processes of this node; 0: one per core; 1: one process (no workers)
    database_url: str = ""  # postgresql://...: a cluster's shared task store; "" SQLite in data_dir
    redis_url: str = ""  # redis://...: a cluster's rooms, nodes and rate limits; "" this node alone
    node_id: str = ""  # this node's name in a cluster; default host:port
    cluster_secret: str = ""  # authenticates calls between nodes and workers; "" a random one
    internal_host: str = ""  # the address other nodes reach this node's workers at; default host
    max_cpu: float = 0.85  # share of each worker's core a node admits work up to
    max_recordings: int = 0  # recordings a worker takes at most (0: as many as its CPU allows)
    # -- ICE (WebRTC) -------------------------------------------------------------------------
    ice_announced_addresses: str = ""  # comma-separated: the address(es) put in SDP answers
    ice_port_min: int = 0  # UDP port range for WebRTC media (0: any ephemeral port)
    ice_port_max: int = 0
    # -- storage ------------------------------------------------------------------------------
    allow_private_storage: bool = False  # may storagecfg.endpoint be a loopback/private address
    # -- operators (the console at /, /docs) ---------------------------------------------------
    operator_password: str = ""  # "": the console is open on loopback, closed elsewhere
    apps: tuple[AppConfig, ...] = field(default_factory=tuple)

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"

    def app(self, appid: int) -> AppConfig | None:
        for app in self.apps:
            if app.appid == appid:
                return app
        return None


_ENV_PREFIX = "CLOUDREC_"


def _coerce(name: str, value: Any) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if kind in ("bool",):
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in ("1", "true", "yes", "on")
    if kind in ("int",):
        return int(value)
    if kind in ("float",):
        return float(value)
    if kind in ("Path",):
        return Path(value)
    return str(value)


def load_settings(
    config_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Read settings; ``overrides`` (from the command line) win over everything."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if config_path is not None:
        with open(config_path, "rb") as fh:
            raw = tomllib.load(fh)
    scalar_names = [f.name for f in fields(Settings) if f.name != "apps"]
    values: dict[str, Any] = {}
    for name in scalar_names:
        if name in raw:
            values[name] = _coerce(name, raw[name])
        env_value = env.get(_ENV_PREFIX + name.upper())
        if env_value is not None:
            values[name] = _coerce(name, env_value)
    for name, value in overrides.items():
        if value is not None:
            values[name] = _coerce(name, value)
    unknown = set(raw) - set(scalar_names) - {"apps"}
    if unknown:
        raise ValueError(f"unknown settings in {config_path}: {', '.join(sorted(unknown))}")
    apps = tuple(
        AppConfig(appid=int(a["appid"]), key=str(a["key"]), secret=str(a["secret"]))
        for a in raw.get("apps", [])
    )
    return Settings(**values, apps=apps)


def with_dev_app(settings: Settings) -> Settings:
    """Return settings with a development app when none is configured (persisted in data_dir)."""
    if settings.apps:
        return settings
    path = settings.data_dir / "dev-app.json"
    if path.exists():
        data = json.loads(path.read_text())
    else:
        data = {"appid": DEV_APPID, "key": "dev-" + secrets.token_hex(6),
                "secret": secrets.token_hex(16)}
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    return replace(settings, apps=(AppConfig(**data),))


def settings_to_json(settings: Settings) -> dict[str, Any]:
    """Settings as JSON (handed to worker processes)."""
    data = {f.name: getattr(settings, f.name) for f in fields(Settings) if f.name != "apps"}
    data["data_dir"] = str(settings.data_dir)
    data["apps"] = [{"appid": a.appid, "key": a.key, "secret": a.secret} for a in settings.apps]
    return data


def settings_from_json(data: Mapping[str, Any]) -> Settings:
    values = {k: v for k, v in data.items() if k != "apps"}
    values["data_dir"] = Path(values["data_dir"])
    return Settings(**values, apps=tuple(AppConfig(**a) for a in data.get("apps", [])))


def worker_count(settings: Settings) -> int:
    """``workers``, where 0 means one per core this process may run on."""
    if settings.workers > 0:
        return settings.workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def node_name(settings: Settings) -> str:
    return settings.node_id or f"{settings.internal_host or settings.host}:{settings.port}"
