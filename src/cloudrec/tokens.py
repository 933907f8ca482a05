"""Publish tokens: a JWT (HS256, signed with the app's secret) naming appid, roomid and uid.

The API, the CLI and the ingest listeners check them; this module imports only PyJWT (and
:mod:`cloudrec.errors`). A WHIP publish is allowed when its bearer token verifies with the
app's secret, has not expired and names exactly the appid, roomid and uid of the request path.
"""

from __future__ import annotations

import time
import warnings

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from cloudrec.errors import AuthError

__all__ = ["make_token", "verify_token"]

_ALGORITHM = "HS256"
# App secrets are whatever the operator configured (often shorter than the 32 bytes RFC 7518
# recommends); other JWT libraries sign with the raw secret, so we must too. PyJWT warns about
# short keys on every call: the warning is silenced here, locally.


def make_token(appid: int, roomid: str, uid: str, secret: str, ttl_s: float = 3600) -> str:
    """A publish token for ``uid`` in room ``(appid, roomid)``, valid ``ttl_s`` seconds."""
    now = int(time.time())
    claims = {
        "appid": int(appid),
        "roomid": str(roomid),
        "uid": str(uid),
        "iat": now,
        "exp": now + int(ttl_s),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm=_ALGORITHM)


def verify_token(token: str, appid: int, roomid: str, uid: str, secret: str) -> None:
    """Raise :class:`AuthError` unless ``token`` is valid for exactly this appid/roomid/uid."""
    if not token:
        raise AuthError("missing publish token", code=1000)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            claims = jwt.decode(
                token,
                secret,
                algorithms=[_ALGORITHM],
                options={"require": ["exp", "appid", "roomid", "uid"]},
            )
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("publish token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid publish token: {exc}") from exc
    if (
        type(claims["appid"]) is not int
        or claims["appid"] != appid
        or claims["roomid"] != roomid
        or claims["uid"] != uid
    ):
        raise AuthError("publish token is for another appid, roomid or uid")
