"""A client of cloudrec's recordoss API (the seed's five endpoints and ``listrecord``), used by
the ``cloudrec rec`` commands and usable from scripts.

Where the server and the app's credentials come from, first found wins, each value on its own:
the arguments (command-line flags), the environment (``CLOUDREC_SERVER``, ``CLOUDREC_APPID``,
``CLOUDREC_KEY``, ``CLOUDREC_SECRET``), a profile file, and last the development app of a
server run in this directory (``./data/dev-app.json``, what ``cloudrec serve`` creates when no
app is configured). The profile file is ``~/.config/cloudrec/profile.toml`` (or under
``$XDG_CONFIG_HOME``, or ``$CLOUDREC_PROFILE_FILE``), one table per profile::

    [default]
    server = "http://127.0.0.1:8080"
    appid = 10034
    key = "demo-key"
    secret = "demo-secret"

``--profile NAME`` (``CLOUDREC_PROFILE``) picks a table; without it ``default`` is used when
present.

The client is synchronous (httpx): a command makes a handful of calls.
"""

from __future__ import annotations

import base64
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8080"
# Keyed by the status number as a JSON answer gives it (so any value may be looked up).
STATUS_NAMES: dict[Any, str] = {0: "init", 1: "starting", 2: "recording", 3: "stopping",
                                4: "stopped", 5: "failed"}


class ClientError(Exception):
    """Settings that cannot work (no credentials, a missing profile), or no server there."""


class ApiError(Exception):
    """The server answered a seed code other than 0."""

    def __init__(self, code: int, message: str, status: int, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status, self.data = code, message, status, data


@dataclass(frozen=True)
class Credentials:
    server: str
    appid: int
    key: str
    secret: str

    @property
    def token(self) -> str:
        return base64.b64encode(f"{self.key}:{self.secret}".encode()).decode()


def profile_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("CLOUDREC_PROFILE_FILE"):
        return Path(env["CLOUDREC_PROFILE_FILE"])
    config_home = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "cloudrec" / "profile.toml"


def _profile(name: str | None, env: Mapping[str, str]) -> dict[str, Any]:
    path = profile_path(env)
    name = name or env.get("CLOUDREC_PROFILE") or None
    if not path.exists():
        if name:
            raise ClientError(f"profile {name!r} asked for, but there is no {path}")
        return {}
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ClientError(f"cannot read {path}: {exc}") from exc
    if name is None:
        return dict(profiles.get("default") or {})
    if name not in profiles:
        raise ClientError(f"no profile {name!r} in {path} (it has: "
                          f"{', '.join(sorted(profiles)) or 'none'})")
    return dict(profiles[name])


def _dev_app(cwd: Path) -> dict[str, Any]:
    path = cwd / "data" / "dev-app.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def resolve(server: str | None = None, appid: int | None = None, key: str | None = None,
            secret: str | None = None, profile: str | None = None,
            env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Credentials:
    """The server and credentials, from the arguments, the environment, the profile file and
    the development app, in that order (see the module's docstring)."""
    env = os.environ if env is None else env
    given = {"server": server, "appid": appid, "key": key, "secret": secret}
    from_env = {name: env.get(f"CLOUDREC_{name.upper()}") for name in given}
    from_profile = _profile(profile, env)
    dev = _dev_app(cwd or Path.cwd())
    values: dict[str, Any] = {}
    for name in given:
        for source in (given, from_env, from_profile, dev):
            if source.get(name) not in (None, ""):
                values[name] = source[name]
                break
    values.setdefault("server", DEFAULT_SERVER)
    missing = [name for name in ("appid", "key", "secret") if name not in values]
    if missing:
        raise ClientError(
            f"no {', '.join(missing)}: pass --appid/--key/--secret, set CLOUDREC_APPID, "
            f"CLOUDREC_KEY and CLOUDREC_SECRET, write them in {profile_path(env)}, or run this "
            "where `cloudrec serve` keeps its development app (./data/dev-app.json)")
    try:
        app = int(values["appid"])
    except (TypeError, ValueError):
        raise ClientError(f"appid must be a number, not {values['appid']!r}") from None
    return Credentials(str(values["server"]).rstrip("/"), app, str(values["key"]),
                       str(values["secret"]))


class RecordClient:
    """The recordoss API of one app on one server."""

    def __init__(self, creds: Credentials, *, timeout_s: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.creds = creds
        self.base = f"{creds.server}/app/{creds.appid}/v1/recordoss"
        self._http = httpx.Client(timeout=timeout_s, transport=transport, headers={
            "AppID": str(creds.appid), "Token": creds.token})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RecordClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, what: str, body: dict[str, Any] | None = None,
             params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One call; the answer's envelope, or ApiError for a code other than 0."""
        return self._request(method, f"{self.base}/{what}", body, params)

    def call_v1(self, method: str, path: str, body: dict[str, Any] | None = None,
                params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A call beside the recordoss verbs: ``/app/{appid}/v1/{path}`` (ingress,
        autorecord)."""
        return self._request(method, f"{self.creds.server}/app/{self.creds.appid}/v1/{path}",
                             body, params)

    def _request(self, method: str, url: str, body: dict[str, Any] | None,
                 params: dict[str, Any] | None) -> dict[str, Any]:
        try:
            r = self._http.request(method, url, json=body, params=params)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach {self.creds.server}: {exc}") from exc
        try:
            data = r.json()
        except ValueError:
            raise ClientError(f"{method} {url} answered HTTP {r.status_code}, not the API's "
                              f"JSON: {r.text[:200]!r}") from None
        if not isinstance(data, dict) or "code" not in data:
            raise ClientError(f"{method} {url} answered {str(data)[:200]!r}")
        if data["code"] != 0:
            raise ApiError(int(data["code"]), str(data.get("message", "")), r.status_code,
                           data.get("data"))
        return data

    # -- the verbs ------------------------------------------------------------------------------

    def apply(self) -> str:
        return str(self.call("POST", "applyrecord", {})["resid"])

    def start(self, body: dict[str, Any]) -> str:
        """``startrecord``; ``appid`` is filled in, and a ``resid`` applied for when absent."""
        body = {**body, "appid": body.get("appid", self.creds.appid)}
        if not body.get("resid"):
            body["resid"] = self.apply()
        return str(self.call("POST", "startrecord", body)["recordid"])

    def stop(self, roomid: str, recordid: str, resid: str) -> str:
        body = {"resid": resid, "appid": self.creds.appid, "roomid": roomid,
                "recordid": recordid}
        return str(self.call("POST", "stoprecord", body)["recordid"])

    def update(self, body: dict[str, Any]) -> str:
        body = {**body, "appid": body.get("appid", self.creds.appid)}
        return str(self.call("POST", "updatemixrecord", body)["recordid"])

    def query(self, roomid: str, recordid: str) -> dict[str, Any]:
        """The task's state; for a stopped task, the final state that cloudrec adds to the
        seed's 4013 (an unknown recordid still raises 4013)."""
        try:
            return dict(self.call("GET", f"queryrecord/{roomid}/{recordid}")["data"])
        except ApiError as exc:
            if exc.code == 4013 and isinstance(exc.data, dict):
                return dict(exc.data)
            raise

    def list(self, roomid: str | None = None, state: str | None = None,
             limit: int | None = None, before: int | None = None
             ) -> tuple[list[dict[str, Any]], int | None]:
        """One page of the app's tasks, newest first, and the ``before`` of the next page
        (None on the last one)."""
        params = {k: v for k, v in {"roomid": roomid, "state": state, "limit": limit,
                                    "before": before}.items() if v is not None}
        data = self.call("GET", "listrecord", params=params)["data"]
        return list(data["records"]), data.get("before")

    def find(self, recordid: str, roomid: str | None = None,
             max_pages: int = 20) -> dict[str, Any] | None:
        """A task by its recordid (for its room and resid): the active ones first, then
        every task, page by page."""
        for state in ("active", None):
            before: int | None = None
            for _ in range(max_pages):
                records, before = self.list(roomid=roomid, state=state, limit=1000,
                                            before=before)
                for record in records:
                    if record["recordid"] == recordid:
                        return record
                if before is None:
                    break
        return None
