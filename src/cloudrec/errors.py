"""The one exception tree of cloudrec.

    CloudrecError                (code, http_status, message)
    ├── AuthError                1000 no token, 1001 bad token / appid mismatch, 1002 no appid
    ├── RateLimited              2105
    ├── InvalidParameter         2101, message names the field
    ├── InternalError            2104
    └── RecordingError           4xxx: 4004, 4005, 4011, 4012, 4013, 4019, ...
        ├── StorageError         a destination (storage) fault, told apart from service faults
        └── CapacityError        4001 (HTTP 503): no node of the cluster takes the work now

Every error carries its recordoss code and the HTTP status the API answers with; the API layer
turns any of them into the seed's JSON envelope. Third-party errors are translated at the
boundary: ``raise StorageError(...) from exc``.
"""

from __future__ import annotations

from typing import Any

# recordoss code -> HTTP status. Codes not listed answer 400.
HTTP_STATUS: dict[int, int] = {
    1000: 401,
    1001: 401,
    1002: 401,
    2101: 400,
    2103: 504,
    2104: 500,
    2105: 429,
    4001: 503,
    4004: 400,
    4005: 409,
    4011: 409,
    4012: 404,
    4013: 404,
    4019: 400,
}


class CloudrecError(Exception):
    code: int = 2104
    # The envelope's ``data`` member of the error answer, where the error has one (queryrecord of
    # a stopped task answers 4013 with the task's last description).
    data: dict[str, Any] | None = None

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 400)


class AuthError(CloudrecError):
    code = 1001


class RateLimited(CloudrecError):
    code = 2105


class InvalidParameter(CloudrecError):
    code = 2101

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"invalid parameter {field}: {problem}")
        self.field = field


class InternalError(CloudrecError):
    code = 2104


class RecordingError(CloudrecError):
    code = 4004


class StorageError(RecordingError):
    """The destination store refused or could not be reached."""

    code = 4004


class CapacityError(RecordingError):
    """Every worker that could take the work is full or draining: retry later.

    Answered with the seed's 4001 ("recording operation timeout": the operation could not be
    carried out now) and HTTP 503, at once: a full cluster never queues or hangs a request.
    """

    code = 4001
