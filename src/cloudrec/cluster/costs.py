"""What a recording costs a worker: the reservation admission counts for it.

Admission counts committed cost, not a moment's CPU reading: a worker publishes ``committed``,
the sum of the costs of what it carries (each running recording at the cost of its kind, each
publisher it receives), and a start is accepted while ``committed + reservations + the cost of
the new recording`` stays within ``max_cpu``. A neighbour's CPU spike, or the start-up burst of
the recordings just accepted, does not move it.

Kinds and their starting costs (cores; measured by ``make bench`` on the reference box):

- ``source_aac``: a source recording that encodes AAC (Opus → AAC);
- ``source_opus``: a source recording that keeps Opus (a remux);
- ``mix``: a mixed recording, scaled by its output's pixels against 640×480;
- ``publisher``: receiving one publication (WebRTC, RTMP, SRT ingest).

Each worker keeps these costs from what its own process tree measures: one factor, the
tree's CPU over what the model expected of what it carried, smoothed over ``SMOOTH_S`` seconds
and bounded, scales every kind. So a worker on a slower box, or with heavier publishers, learns
higher costs, and a busy moment of its own or of the box moves them only a little.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

BASE_COSTS: dict[str, float] = {
    "source_aac": 0.012,
    "source_opus": 0.006,
    "mix": 0.08,
    "publisher": 0.004,
}
MIX_PIXELS = 640 * 480
SMOOTH_S = 30.0  # time constant of the measured factor
MIN_SCALE, MAX_SCALE = 0.25, 6.0
MIN_LOAD = 0.05  # below this expected load the measurement says too little to learn from


def recording_kind(request: Mapping[str, Any]) -> tuple[str, float]:
    """(kind, units) of a start request (its JSON, or the model dumped): a mix counts in
    units of 640×480 output pixels."""
    if request.get("streamtype") == 1:
        output = (request.get("mixconfig") or {}).get("output") or {}
        width = output.get("videowidth") or 640
        height = output.get("videoheight") or 480
        return "mix", max(0.25, width * height / MIX_PIXELS)
    outputs = request.get("outputs") or {}
    return ("source_opus" if outputs.get("audiocodec") == "opus" else "source_aac"), 1.0


class CostModel:
    """One worker's costs per kind, learned from its process tree's CPU."""

    def __init__(self, base: Mapping[str, float] | None = None) -> None:
        self.base = dict(base or BASE_COSTS)
        self.scale = 1.0
        self._at: float | None = None

    def expected(self, units: Iterable[tuple[str, float]]) -> float:
        """Cores the model expects of what a worker carries, at the base costs."""
        return sum(self.base.get(kind, 0.0) * n for kind, n in units)

    def observe(self, cpu: float, units: Iterable[tuple[str, float]],
                now: float | None = None) -> None:
        """Fold one reading of the tree's CPU (cores) into the factor."""
        now = time.monotonic() if now is None else now
        expected = self.expected(units)
        elapsed = 0.0 if self._at is None else now - self._at
        self._at = now
        if expected < MIN_LOAD or elapsed <= 0:
            return
        target = min(max(cpu / expected, MIN_SCALE), MAX_SCALE)
        self.scale += (target - self.scale) * min(1.0, elapsed / SMOOTH_S)

    def costs(self) -> dict[str, float]:
        return {kind: round(cost * self.scale, 5) for kind, cost in self.base.items()}

    def committed(self, units: Iterable[tuple[str, float]]) -> float:
        """Cores reserved by what the worker carries, at its learned costs."""
        return self.expected(units) * self.scale
