"""Operator sign-in: who may see the console, its JSON, the recordings' files and ``/docs``.

The mode is decided once, at start-up, from the settings:

- ``password``: ``operator_password`` is set. A request is signed in by the session cookie the
  sign-in form sets or, for scripts, by ``Authorization: Bearer <password>`` or ``Basic`` with
  the user ``operator``.
- ``open``: no password and the server listens on a loopback address only (the development
  default of ``make serve``): nobody else can reach it, so the console is open and start-up
  logs a WARNING saying so.
- ``closed``: no password on any other address: every console route answers 401 and start-up
  logs an ERROR naming the setting that opens it. An unprotected console on a network would
  show every room and recording to whoever finds the port.

The session cookie is stateless, so any node of a cluster accepts it without a session store:
``v1.{expires}.{nonce}.{mac}``, the MAC an HMAC-SHA256 keyed with
``HMAC(base, "cloudrec console session" + password)``. ``base`` is ``cluster_secret`` when set
(the same on every node) or a random secret kept in ``data_dir/console-secret``, so sessions
survive a restart. The password is part of the key: changing it signs every session out. The
cookie is ``HttpOnly`` (page scripts cannot read it), ``SameSite=Strict`` (no request from
another site carries it: the console's defence against cross-site request forgery) and
``Secure`` when the request came over https. Sign-out clears it in the browser; a copy of it
stays valid until it expires (:data:`SESSION_S`).

Failed sign-ins are limited per client address (:data:`MAX_FAILURES` a minute, then 429), which
makes guessing the password over the network slow.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import time
from collections import deque
from pathlib import Path

from starlette.requests import Request

from cloudrec.config import Settings

log = logging.getLogger(__name__)

COOKIE = "cloudrec_console"
SESSION_S = 12 * 3600
MAX_FAILURES = 10  # failed sign-ins per client address per minute
OPERATOR_USER = "operator"  # the user name of Basic credentials


class SignInRequired(Exception):
    """The request carries no valid operator credential (or the console is closed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_loopback(host: str) -> bool:
    """Whether ``host`` (the address the server binds) is reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _base_secret(settings: Settings) -> bytes:
    if settings.cluster_secret:
        return settings.cluster_secret.encode()
    path = settings.data_dir / "console-secret"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(secrets.token_bytes(32))
    os.chmod(tmp, 0o600)
    try:
        os.link(tmp, path)  # the first process to create it wins; others read the winner's
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return Path(path).read_bytes()


class OperatorAuth:
    def __init__(self, settings: Settings) -> None:
        self.password = settings.operator_password
        if self.password:
            self.mode = "password"
        elif is_loopback(settings.host):
            self.mode = "open"
        else:
            self.mode = "closed"
        self._key = b""
        if self.password:
            self._key = hmac.new(_base_secret(settings),
                                 b"cloudrec console session\0" + self.password.encode(),
                                 hashlib.sha256).digest()
        self._failures: dict[str, deque[float]] = {}

    def announce(self, address: str) -> None:
        """The start-up line that says who can open the console."""
        if self.mode == "open":
            log.warning("the operator console at %s/ is OPEN: no operator_password is set and "
                        "the server listens on loopback only; set operator_password before "
                        "listening on any other address", address)
        elif self.mode == "closed":
            log.error("the operator console at %s/ is CLOSED (every request answers 401): no "
                      "operator_password is set and the server listens beyond loopback; set "
                      "operator_password (or CLOUDREC_OPERATOR_PASSWORD) to open it", address)
        else:
            log.info("the operator console at %s/ asks for the operator password", address)

    # -- checking a request ----------------------------------------------------------------------

    def check(self, request: Request) -> None:
        """Raise :class:`SignInRequired` unless the request may use the console."""
        if self.mode == "open":
            return
        if self.mode == "closed":
            raise SignInRequired("the console is closed: set operator_password to open it")
        header = request.headers.get("authorization", "")
        if header and self._credential_ok(header):
            return
        if self.session_ok(request.cookies.get(COOKIE, "")):
            return
        raise SignInRequired("sign in with the operator password")

    def signed_in(self, request: Request) -> bool:
        try:
            self.check(request)
        except SignInRequired:
            return False
        return True

    def _credential_ok(self, header: str) -> bool:
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            return self.password_ok(value)
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(user.encode(), OPERATOR_USER.encode()) & \
                self.password_ok(password)
        return False

    def password_ok(self, password: str) -> bool:
        return bool(self.password) and hmac.compare_digest(password.encode(),
                                                           self.password.encode())

    # -- sessions --------------------------------------------------------------------------------

    def new_session(self, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + SESSION_S)
        payload = f"v1.{expires}.{secrets.token_urlsafe(12)}"
        return f"{payload}.{self._mac(payload)}"

    def session_ok(self, cookie: str, now: float | None = None) -> bool:
        if not self._key or cookie.count(".") != 3:
            return False
        payload, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return False
        try:
            expires = int(payload.split(".")[1])
        except ValueError:
            return False
        return expires > (now if now is not None else time.time())

    def _mac(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    # -- guessing ---------------------------------------------------------------------------------

    def too_many_failures(self, client: str) -> bool:
        window = self._failures.get(client)
        now = time.monotonic()
        while window and now - window[0] > 60:
            window.popleft()
        return window is not None and len(window) >= MAX_FAILURES

    def failed(self, client: str) -> None:
        if len(self._failures) > 10000:  # bounded memory under a spray of addresses
            self._failures.clear()
        self._failures.setdefault(client, deque()).append(time.monotonic())
