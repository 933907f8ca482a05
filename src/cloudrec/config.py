"""Service settings: embedded defaults, a TOML file (``--config``) and ``CLOUDREC_*`` overrides.

Precedence, lowest first: defaults, the TOML file, environment variables. A mistake in any of
them raises :class:`ConfigError`, whose text is one line: reading (:func:`load_settings`) finds
an unreadable file, an unknown setting or a value of the wrong type; :func:`check_settings`, run
once at start, finds values and combinations the service cannot start with. When no app is
configured, a development app is created once under ``data_dir`` (``dev-app.json``) so that
``cloudrec serve`` works with no set-up and keeps its credentials across restarts.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
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
    webpage_single_process: bool = True  # a page's chromium as one process (less memory)
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
    # -- WHEP playback ------------------------------------------------------------------------
    max_viewers: int = 50  # WHEP viewers of one room at most (more answer 503)
    # -- push ingest (RTMP, SRT) ---------------------------------------------------------------
    rtmp_port: int = 1935  # RTMP publishers (RTMPS with tls_cert/tls_key); 0: off
    srt_port: int = 8890  # SRT publishers (UDP); 0: off
    tls_cert: str = ""  # PEM certificate chain: the RTMP port speaks RTMPS
    tls_key: str = ""  # its PEM private key
    # -- storage ------------------------------------------------------------------------------
    allow_private_storage: bool = False  # may storagecfg.endpoint be a loopback/private address
    # local storage (vender 101): "" is data_dir/storage; a cluster gives every node one shared
    # root (a network file system) so a task resumed on another node finds its files
    storage_root: str = ""
    # -- operators (the console at /, /docs) ---------------------------------------------------
    operator_password: str = ""  # "": the console is open on loopback, closed elsewhere
    console_sample_s: float = 5.0  # how often the console's charts take a sample (120 kept)
    apps: tuple[AppConfig, ...] = field(default_factory=tuple)

    @property
    def local_storage_dir(self) -> Path:
        """Where local storage (vender 101) keeps its buckets."""
        return Path(self.storage_root) if self.storage_root else self.data_dir / "storage"

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"

    def app(self, appid: int) -> AppConfig | None:
        for app in self.apps:
            if app.appid == appid:
                return app
        return None


_ENV_PREFIX = "CLOUDREC_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_KIND_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false",
               "Path": "a path", "str": "a string"}
_SERVE_OPTIONS = {"host": "--host", "port": "--port", "data_dir": "--data-dir",
                  "log_level": "--log-level", "log_format": "--log-format"}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """A setting the service cannot start with. ``str()`` is one line: which setting, what is
    wrong with it, and how to fix it."""

    def __init__(self, setting: str, problem: str, fix: str) -> None:
        self.setting, self.problem, self.fix = setting, problem, fix
        super().__init__(" ".join(f"config error: {setting} {problem}; {fix}".splitlines()))


def _where(name: str) -> str:
    """Where a setting is given: the TOML file, its variable and its option of ``serve``."""
    variable = _ENV_PREFIX + name.upper()
    if name in _SERVE_OPTIONS:
        return f"in the TOML file, {variable} or {_SERVE_OPTIONS[name]}"
    return f"in the TOML file or {variable}"


def _coerce(name: str, value: Any, origin: str = "") -> Any:
    """``value`` as the type of setting ``name``; ConfigError, saying where the value came from
    (``origin``: the file, the variable or the option), when it is not of that type."""
    kind = {f.name: f.type for f in fields(Settings)}[name]
    try:
        return _convert(kind, value)
    except (TypeError, ValueError, OverflowError):
        pass  # raised below, outside the handler: one line, no chained traceback
    word = _KIND_WORDS.get(str(kind), str(kind))
    shown = repr(value) if kind in ("int", "float", "bool") else f"a {type(value).__name__}"
    example = f" such as {getattr(Settings(), name)!r}" if kind in ("int", "float") else ""
    if kind == "bool":
        word, example = "true or false", f" ({', '.join(_TRUE + _FALSE[:-1])})"
    if origin.startswith(_ENV_PREFIX):
        fix = f"set {origin} to {word}{example}, or unset it"
    else:
        fix = f"give {word}{example} {_where(name)}"
    raise ConfigError(name, f"is {shown} ({origin}), not {word}", fix) from None


def _convert(kind: Any, value: Any) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)):
            text = str(value).strip().lower()
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
        raise ValueError(value)
    if isinstance(value, bool) and kind != "str":
        raise TypeError(value)
    if kind == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(value, (int, str)):
            return int(value)
        raise TypeError(value)
    if kind == "float":
        if isinstance(value, (int, float, str)):
            return float(value)
        raise TypeError(value)
    if not isinstance(value, (str, int, float, Path)) or isinstance(value, bool):
        raise TypeError(value)
    return Path(str(value)) if kind == "Path" else str(value)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"--config {path}", f"cannot be read ({reason})",
                          "give the path of a readable TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}", f"is not valid TOML ({exc})",
                          "correct the file there; the README's Configuration section shows "
                          "one") from None


def _apps(raw: Any, path: Path | None) -> tuple[AppConfig, ...]:
    fix = "give each [[apps]] table appid (a whole number), key and secret (strings) only"
    if not isinstance(raw, list):
        raise ConfigError("apps", f"in {path} is not a list of [[apps]] tables", fix)
    apps = []
    for number, entry in enumerate(raw, 1):
        where = f"[[apps]] table {number} in {path}"
        if not isinstance(entry, dict):
            raise ConfigError("apps", f"{where} is not a table", fix)
        missing = [k for k in ("appid", "key", "secret") if k not in entry]
        extra = sorted(set(entry) - {"appid", "key", "secret"})
        if missing or extra:
            what = (f"lacks {', '.join(missing)}" if missing
                    else f"has unknown keys {', '.join(extra)}")
            raise ConfigError("apps", f"{where} {what}", fix)
        appid, key, secret = entry["appid"], entry["key"], entry["secret"]
        if isinstance(appid, bool) or not isinstance(appid, int):
            raise ConfigError("apps", f"{where}: appid is {appid!r}, not a whole number", fix)
        if not (isinstance(key, str) and isinstance(secret, str) and key and secret):
            raise ConfigError("apps", f"{where}: key and secret must be non-empty strings", fix)
        apps.append(AppConfig(appid=appid, key=key, secret=secret))
    return tuple(apps)


def load_settings(
    config_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Read settings; ``overrides`` (from the command line) win over everything. A file that
    cannot be read, an unknown setting in it or a value of the wrong type, wherever it comes
    from, raises :class:`ConfigError`."""
    env = os.environ if env is None else env
    raw = _read_toml(config_path) if config_path is not None else {}
    scalar_names = [f.name for f in fields(Settings) if f.name != "apps"]
    unknown = sorted(set(raw) - set(scalar_names) - {"apps"})
    if unknown:
        close = difflib.get_close_matches(unknown[0], scalar_names + ["apps"], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        what = "is not a known setting" if len(unknown) == 1 else "are not known settings"
        raise ConfigError(", ".join(unknown), f"in {config_path} {what}{hint}",
                          "correct or remove it; the README's Configuration section lists "
                          "every setting")
    values: dict[str, Any] = {}
    for name in scalar_names:
        if name in raw:
            values[name] = _coerce(name, raw[name], f"in {config_path}")
        env_name = _ENV_PREFIX + name.upper()
        if env.get(env_name) is not None:
            values[name] = _coerce(name, env[env_name], env_name)
    for name, value in overrides.items():
        if value is not None:
            values[name] = _coerce(name, value, _SERVE_OPTIONS.get(name, name))
    apps = _apps(raw["apps"], config_path) if "apps" in raw else ()
    return Settings(**values, apps=apps)


def _scheme(url: str) -> str:
    """The scheme of ``url`` as it is shown in an error: never the rest, which may hold a
    password."""
    return repr(url.split("://", 1)[0] + "://") if "://" in url else "no scheme"


def check_settings(settings: Settings) -> None:
    """Raise :class:`ConfigError` for the first setting, or combination of settings, that the
    service cannot start with. Called once at start, before anything is built."""
    s = settings
    if s.log_level.lower() not in LOG_LEVELS:
        raise ConfigError("log_level", f"is {s.log_level!r}, not a log level",
                          f"set it to one of {', '.join(LOG_LEVELS[:4])} {_where('log_level')}")
    if s.log_format not in LOG_FORMATS:
        raise ConfigError("log_format", f"is {s.log_format!r}, not text or json",
                          f"set it to text or json {_where('log_format')}")
    if not 1 <= s.port <= 65535:
        raise ConfigError("port", f"is {s.port}, not a TCP port (1-65535)",
                          f"set a port from 1 to 65535 {_where('port')}")
    _check_ice(s)
    _check_ingest(s)
    if not (math.isfinite(s.max_cpu) and s.max_cpu > 0):
        raise ConfigError("max_cpu", f"is {s.max_cpu}, not a positive number (the cores of "
                          "each worker a node admits work up to)",
                          f"set it to 0.85 or another positive number {_where('max_cpu')}")
    for f in fields(Settings):
        value = getattr(s, f.name)
        if f.type in ("int", "float") and not value >= 0:
            raise ConfigError(f.name, f"is {value}, below 0",
                              f"set 0 or more {_where(f.name)}")
    for name in ("idle_timeout_s", "segment_seconds", "resid_ttl_s", "console_sample_s"):
        if not getattr(s, name) > 0:
            raise ConfigError(name, "is 0, not a positive number",
                              f"set a positive number of seconds {_where(name)}")
    if s.public_url and not s.public_url.startswith(("http://", "https://")):
        raise ConfigError("public_url", f"has {_scheme(s.public_url)}, not http:// or https://",
                          f"set it to the URL publishers reach, such as "
                          f"http://203.0.113.11:8080, {_where('public_url')}")
    _check_cluster(s)


def _check_ice(s: Settings) -> None:
    for text in s.ice_announced_addresses.split(","):
        if text.strip():
            try:
                ipaddress.ip_address(text.strip())
            except ValueError:
                raise ConfigError("ice_announced_addresses", f"holds {text.strip()!r}, not an "
                                  "IP address", "list IP addresses separated by commas (a host "
                                  f"name is resolved differently by each peer) "
                                  f"{_where('ice_announced_addresses')}") from None
    low, high = s.ice_port_min, s.ice_port_max
    if low == high == 0:
        return
    fix = ("set ice_port_min and ice_port_max to a UDP port range within 1-65535, low first, "
           f"or both to 0 for any port, in the TOML file or {_ENV_PREFIX}ICE_PORT_MIN/MAX")
    if not (low and high):
        zero, other = ("ice_port_min", "ice_port_max") if not low else ("ice_port_max",
                                                                          "ice_port_min")
        raise ConfigError(zero, f"is 0 while {other} is set, so the range would be ignored", fix)
    if not 1 <= low <= 65535 or not 1 <= high <= 65535:
        name = "ice_port_min" if not 1 <= low <= 65535 else "ice_port_max"
        raise ConfigError(name, f"is {getattr(s, name)}, not a UDP port (1-65535)", fix)
    if low > high:
        raise ConfigError("ice_port_min", f"is {low}, above ice_port_max {high}", fix)


def _check_ingest(s: Settings) -> None:
    for name in ("rtmp_port", "srt_port"):
        if not 0 <= getattr(s, name) <= 65535:
            raise ConfigError(name, f"is {getattr(s, name)}, not a port (1-65535, or 0: off)",
                              f"set a port from 1 to 65535, or 0 to turn it off, {_where(name)}")
    if bool(s.tls_cert) != bool(s.tls_key):
        missing = "tls_key" if s.tls_cert else "tls_cert"
        raise ConfigError(missing, "is empty while the other TLS file is set",
                          f"set both tls_cert and tls_key (PEM files) or neither {_where(missing)}")
    for name in ("tls_cert", "tls_key"):
        path = getattr(s, name)
        if path and not Path(path).is_file():
            raise ConfigError(name, f"names {path!r}, which is not a readable file",
                              f"point it at a PEM file {_where(name)}")


def _check_cluster(s: Settings) -> None:
    if s.database_url and not s.database_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("database_url", f"has {_scheme(s.database_url)}, not postgresql:// "
                          "or postgres://", "give a PostgreSQL URL such as "
                          "postgresql://user:password@host/dbname, or leave it empty for SQLite "
                          f"in data_dir, {_where('database_url')}")
    if s.redis_url and not s.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("redis_url", f"has {_scheme(s.redis_url)}, not redis://, rediss:// "
                          "or unix://", "give a Redis URL such as redis://host:6379/0, or leave "
                          f"it empty for a node alone, {_where('redis_url')}")
    if not s.redis_url:
        return  # database_url alone: one node keeping its task store in PostgreSQL
    if not s.cluster_secret:
        raise ConfigError("cluster_secret", "is empty; a cluster (redis_url is set) needs the "
                          "same secret on every node", "set cluster_secret in the TOML file or "
                          f"{_ENV_PREFIX}CLUSTER_SECRET")
    if not s.database_url:
        raise ConfigError("database_url", "is empty; a cluster (redis_url is set) shares its "
                          "tasks, resids and callbacks in PostgreSQL, and with a SQLite file per "
                          "node a resid or recordid from one node is unknown to the others",
                          "set the same postgresql:// database_url on every node in the TOML "
                          f"file or {_ENV_PREFIX}DATABASE_URL, or unset redis_url for a node "
                          "alone")


def start_warnings(settings: Settings) -> list[str]:
    """What a node with these (valid) settings warns about once at start."""
    if not settings.redis_url or settings.storage_root:
        return []
    return ["this node is part of a cluster (redis_url is set), and vender 101 (local "
            "storage) writes to this node's own disk under data_dir: recordings written to "
            "local storage on one node are not visible to the others; set storage_root to a "
            "directory every node shares, or give a cluster's recordings an S3-compatible "
            "storagecfg"]


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
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except OSError as exc:
            raise ConfigError("data_dir", f"{str(settings.data_dir)!r} cannot be written "
                              f"({exc.strerror or type(exc).__name__})", "set data_dir to a "
                              f"directory this user may write {_where('data_dir')}") from None
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
