"""The console's ring buffer of samples: at most 120, series aligned with their times, null
where a publisher or node was absent."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from cloudrec.console.live import POINTS, Samples


@dataclass
class _Worker:
    node: str
    cpu: float
    recordings: int


class _Directory:
    def __init__(self) -> None:
        self.list = [_Worker("n1", 0.25, 1), _Worker("n1", 0.5, 2)]

    async def workers(self) -> list[_Worker]:
        return self.list


class _Front:
    def __init__(self) -> None:
        self.directory = _Directory()
        self.pubs: list[dict[str, Any]] = []

    async def publications(self) -> list[dict[str, Any]]:
        return self.pubs


def test_samples_keep_the_last_points_aligned() -> None:
    front = _Front()
    samples = Samples(front, 5.0)
    asyncio.run(samples.sample())
    front.pubs = [{"appid": 1, "roomid": "r", "uid": "u", "video": {"kbps": 900.0, "fps": 29.97},
                   "audio": {"kbps": 32.0}}]
    asyncio.run(samples.sample())
    series = samples.series()
    assert series["period_s"] == 5.0 and series["points"] == POINTS == 120
    assert len(series["t"]) == 2
    assert series["publishers"] == {"1/r/u": {"kbps": [None, 932.0], "fps": [None, 30.0]}}
    assert series["nodes"] == {"n1": {"cpu": [0.75, 0.75], "recordings": [3, 3]}}
    for _ in range(POINTS + 5):
        asyncio.run(samples.sample())
    series = samples.series()
    assert len(series["t"]) == POINTS
    assert series["publishers"]["1/r/u"]["kbps"] == [932.0] * POINTS
