"""Who is calling: the ``AppID`` header and the app's Basic credentials."""

from __future__ import annotations

import base64
import binascii
import hmac

from starlette.requests import Request

from cloudrec.config import AppConfig, Settings
from cloudrec.errors import AuthError


def authenticate(request: Request, path_appid: int, settings: Settings) -> AppConfig:
    """Return the app, or raise 1002 (no/unknown AppID), 1001 (mismatch, bad token), 1000 (none)."""
    header = request.headers.get("appid")
    if header is None or not header.strip():
        raise AuthError("AppID header is missing", 1002)
    try:
        header_appid = int(header.strip())
    except ValueError:
        raise AuthError("AppID header is not a configured app", 1002) from None
    app = settings.app(header_appid)
    if app is None:
        raise AuthError(f"AppID {header_appid} is not a configured app", 1002)
    if header_appid != path_appid:
        raise AuthError("AppID header does not match the appid in the path", 1001)
    token = request.headers.get("token") or request.headers.get("authorization")
    if token is None or not token.strip():
        raise AuthError("Token header is missing", 1000)
    if not _basic_matches(token, app):
        raise AuthError("Token is invalid for this AppID", 1001)
    return app


def _basic_matches(token: str, app: AppConfig) -> bool:
    token = token.strip()
    if token[:6].lower() == "basic ":
        token = token[6:].strip()
    try:
        decoded = base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        return False
    expected = f"{app.key}:{app.secret}".encode()
    return hmac.compare_digest(decoded, expected)


def basic_token(key: str, secret: str) -> str:
    return base64.b64encode(f"{key}:{secret}".encode()).decode()
