"""Publish and play tokens: a JWT (HS256, signed with the app's secret) naming appid, roomid
and uid; a play token has the same claims plus ``"play": true``.

The API, the CLI and the ingest listeners check them; this module imports only PyJWT (and
:mod:`cloudrec.errors`). A WHIP publish is allowed when its bearer token verifies with the
app's secret, has not expired, names exactly the appid, roomid and uid of the request path and
is not a play token (:class:`PlayTokenRefused`). A WHEP play is allowed with either kind of
token of the room (:func:`verify_room_token`), whatever uid it names: that uid is the viewer's.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from cloudrec.errors import AuthError

__all__ = ["PlayTokenRefused", "make_token", "verify_room_token", "verify_token"]

_ALGORITHM = "HS256"
# App secrets are whatever the operator configured (often shorter than the 32 bytes RFC 7518
# recommends); other JWT libraries sign with the raw secret, so we must too. PyJWT warns about
# short keys on every call: the warning is silenced here, locally.


class PlayTokenRefused(AuthError):
    """A play token where a publish token is needed: it authenticates, but never publishes
    (WHIP answers 403)."""


def make_token(appid: int, roomid: str, uid: str, secret: str, ttl_s: float = 3600, *,
               play: bool = False) -> str:
    """A publish token for ``uid`` in room ``(appid, roomid)``, valid ``ttl_s`` seconds;
    ``play=True``: a play token (it watches the room, it never publishes)."""
    now = int(time.time())
    claims = {
        "appid": int(appid),
        "roomid": str(roomid),
        "uid": str(uid),
        "iat": now,
        "exp": now + int(ttl_s),
    }
    if play:
        claims["play"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm=_ALGORITHM)


def _claims(token: str, secret: str) -> dict[str, Any]:
    if not token:
        raise AuthError("missing publish token", code=1000)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            return dict(jwt.decode(
                token,
                secret,
                algorithms=[_ALGORITHM],
                options={"require": ["exp", "appid", "roomid", "uid"]},
            ))
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("publish token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid publish token: {exc}") from exc


def verify_token(token: str, appid: int, roomid: str, uid: str, secret: str) -> None:
    """Raise :class:`AuthError` unless ``token`` is a publish token for exactly this
    appid/roomid/uid (:class:`PlayTokenRefused` for a valid play token)."""
    claims = _claims(token, secret)
    if (
        type(claims["appid"]) is not int
        or claims["appid"] != appid
        or claims["roomid"] != roomid
        or claims["uid"] != uid
    ):
        raise AuthError("publish token is for another appid, roomid or uid")
    if claims.get("play") is True:
        raise PlayTokenRefused("a play token cannot publish")


def verify_room_token(token: str, appid: int, roomid: str, secret: str) -> tuple[str, bool]:
    """``(uid, play)`` of a publish or play token of room ``(appid, roomid)``; raise
    :class:`AuthError` for no token, a bad or expired one, or another room's."""
    claims = _claims(token, secret)
    if type(claims["appid"]) is not int or claims["appid"] != appid \
            or claims["roomid"] != roomid:
        raise AuthError("token is for another appid or roomid")
    return str(claims["uid"]), claims.get("play") is True
