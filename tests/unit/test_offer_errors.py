"""How a WHIP or WHEP offer's failure reaches the client: ``api.whip._answer_offer``, the one
mapping both routes use."""

from __future__ import annotations

import pytest

from cloudrec.api.whip import _answer_offer
from cloudrec.errors import CapacityError, InvalidParameter
from cloudrec.models.rules import not_publishing
from cloudrec.workers.wire import WorkerUnavailable


async def _failing(exc: BaseException) -> tuple[str, str]:
    raise exc


@pytest.mark.parametrize(("exc", "status", "retry", "text"), [
    (CapacityError("every worker is full"), 503, True, "every worker is full"),
    (WorkerUnavailable("the room's worker did not answer"), 503, True, "did not answer"),
    (InvalidParameter("uid", "too long"), 400, False, "uid"),
    (not_publishing(["r1"]), 404, False, "r1"),
    (RuntimeError("the connection is closed"), 503, True, "shutting down"),
    (RuntimeError("no common codec"), 400, False, "cannot answer the offer: no common codec"),
    (ValueError("bad SDP line"), 400, False, "cannot answer the offer: bad SDP line"),
])
@pytest.mark.parametrize("kind", ["whip", "whep"])
async def test_failure_maps_to_status(kind: str, exc: BaseException, status: int, retry: bool,
                                      text: str) -> None:
    response = await _answer_offer(kind, _failing(exc))
    assert response.status_code == status
    assert text in bytes(response.body).decode()
    assert ("retry-after" in response.headers) == retry
    assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("kind", ["whip", "whep"])
async def test_answer_is_created_with_its_session(kind: str) -> None:
    async def answered() -> tuple[str, str]:
        return "v=0\r\n", "abc123"

    response = await _answer_offer(kind, answered())
    assert response.status_code == 201
    assert response.headers["location"] == f"/{kind}/session/abc123"
    assert response.headers["etag"] == '"abc123"'
    assert bytes(response.body) == b"v=0\r\n"
