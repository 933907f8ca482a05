"""What never reaches the browser: apps' secrets, storage keys, signatures, credentials in URLs.

Every console JSON response goes through :func:`redact`, whatever built it, so a field added to
a task's request or progress later cannot leak by being forgotten here: values under a key that
names a secret are replaced, and URLs lose their user info and query values (callback URLs
often carry a token there).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

HIDDEN = "***"

# Keys whose values are secrets wherever they appear (matched without case, "_" or "-").
_SECRET_KEYS = {"secret", "secretkey", "accesskey", "key", "token", "password", "signature",
                "xcloudrecsignature", "authorization", "sessiontoken", "clustersecret",
                "operatorpassword", "credentials", "secretaccesskey", "accesskeyid"}
_URL_KEYS = {"callbackurl", "url", "patchurl", "endpoint"}
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def _norm(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


def redact_url(url: str) -> str:
    """``scheme://host/path`` with the user info dropped and every query value hidden."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return HIDDEN
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    if ":" in (parts.hostname or "") and parts.hostname:
        host = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
    query = urlencode([(k, HIDDEN) for k, _ in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def redact(value: Any, key: str = "") -> Any:
    """A copy of ``value`` (JSON-like) with secrets hidden."""
    name = _norm(key)
    if name in _SECRET_KEYS and value not in (None, ""):
        return HIDDEN
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, key) for v in value]
    if isinstance(value, str) and (name in _URL_KEYS or _URL.match(value)):
        return redact_url(value) if _URL.match(value) else value
    return value
