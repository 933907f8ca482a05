"""What a ``startrecord`` implies beyond its own fields: the rooms it reads, the tracks it
records, whether this server can push where it asks, and the answer when none of its rooms is
publishing. Pure functions of the request, shared by the front (which routes the request) and
the worker (which runs it).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any
from urllib.parse import urlsplit

from cloudrec.errors import InvalidParameter, RecordingError

from .mixconfig import MixConfig
from .outputs import PUSH_SCHEMES

#: The tracks each ``recordtype`` asks for: 0 audio and video, 1 video, 2 audio.
RECORD_KINDS = {0: frozenset({"audio", "video"}), 1: frozenset({"video"}),
                2: frozenset({"audio"})}

NOT_PUBLISHING = 4005

#: The cores a web page recording reserves beyond a mix's measured cost: its browser (the
#: page's rendering and scripts, the screencast's JPEG encoding: 0.40-0.62 cores) and the
#: page's own H.264/Opus encoding, measured at 1280x720@15 by ``bench/bench_webpage.py``
#: (0.84-0.92 cores in all with chromium-headless-shell, the mix included, on a busy 2-core
#: box). A start bigger than a worker's ``max_cpu`` goes only to an idle worker.
WEBPAGE_CORES = 0.7


def webpage_cost(req: Any) -> float:
    """What a ``startrecord`` of a web page reserves beyond a mix's cost (0 for others)."""
    mixconfig = getattr(req, "mixconfig", None)
    if req.streamtype == 1 and mixconfig is not None and mixconfig.webpage is not None:
        return WEBPAGE_CORES
    return 0.0


def mixed_kinds(recordtype: int, mixconfig: MixConfig) -> frozenset[str]:
    """The tracks of a mixed recording: what recordtype asks for and the output has."""
    out = mixconfig.output
    has = {k for k, present in (("audio", out.has_audio), ("video", out.has_video)) if present}
    return RECORD_KINDS[recordtype] & has


def mix_rooms(roomid: str, mixconfig: MixConfig) -> list[str]:
    """The rooms a mix takes media from: the inputs' rooms, or the task's room."""
    if mixconfig.inputs:
        return list(dict.fromkeys(i.roomid for i in mixconfig.inputs))
    return [roomid]


def start_rooms(req: Any) -> list[str]:
    """The rooms a ``startrecord`` reads: a mix's rooms, or the task's room."""
    if req.streamtype == 1 and req.mixconfig is not None:
        return mix_rooms(req.roomid, req.mixconfig)
    return [req.roomid]


def not_publishing(rooms: list[str]) -> RecordingError:
    """4005 for a recording none of whose rooms has a publisher."""
    named = ", ".join(repr(r) for r in rooms)
    return RecordingError(f"room {named} is not publishing" if len(rooms) == 1 else
                          f"none of the rooms {named} is publishing", NOT_PUBLISHING)


def push_url_problem(url: str, protocols: Collection[str]) -> str | None:
    """Why this server cannot push to ``url``, or None when it can. ``protocols``: the push
    schemes its workers can write to (``rtmp`` always; ``srt`` where libsrt is installed)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in PUSH_SCHEMES or not parts.hostname:
        return "must be an rtmp:// or srt:// URL"
    if scheme not in protocols:
        return (f"{scheme}:// is not supported by this server: it needs libsrt, which is not "
                "installed (Debian: libsrt1.5-gnutls); use rtmp://")
    return None


def check_push_urls(outputs: Any, protocols: Collection[str]) -> None:
    """2101 naming ``outputs.pushurl[i]`` for a URL this server cannot push to."""
    for i, url in enumerate(getattr(outputs, "pushurl", None) or []):
        why = push_url_problem(url, protocols)
        if why is not None:
            raise InvalidParameter(f"outputs.pushurl[{i}]", why)
