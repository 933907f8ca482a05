"""The flash-and-beep publisher that lip sync is measured with: a clip whose picture flashes
white for the first 100 ms of every second with a 1 kHz beep over the same 100 ms, sent by
FFmpeg's WHIP muxer. Read back with ``tests.media_check``'s lip sync readers."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
from pathlib import Path
from typing import Any

#: The mix the lip sync measures use: the publisher alone, full frame, 320x240@30.
MIX_OUT = {"streamtype": 0, "videowidth": 320, "videoheight": 240, "videobitrate": 500,
           "videofps": 30, "videogop": 60}


def one_input_mix(room: str, uid: str) -> dict[str, Any]:
    """``mixconfig`` of a mix of ``uid`` alone over the whole :data:`MIX_OUT` picture."""
    return {"input": [{"uid": uid, "roomid": room, "streamtype": 0, "zOrder": 0, "layoutX": 0,
                       "layoutY": 0, "layoutW": 320, "layoutH": 240, "crop": 0}],
            "output": MIX_OUT}

def make_flash_clip(ffmpeg: str, path: Path, seconds: float) -> Path:
    """320x240@30 H.264 that is white for the first 100 ms of every second, black otherwise,
    and Opus that beeps 1 kHz over the same 100 ms."""
    gate = "lt(mod(t\\,1)\\,0.1)"
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"color=black:s=320x240:r=30:d={seconds},"
         f"drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill:enable='{gate}'",
         "-f", "lavfi", "-i", f"sine=f=1000:sample_rate=48000:d={seconds},"
         f"volume='if({gate}\\,1\\,0)':eval=frame",
         "-c:v", "libx264", "-profile:v", "baseline", "-preset", "ultrafast", "-tune",
         "zerolatency", "-g", "30", "-bf", "0", "-pix_fmt", "yuv420p",
         "-c:a", "libopus", "-ac", "2", "-b:a", "64k", "-frame_duration", "20", str(path)],
        check=True, timeout=120)
    return path


async def ffmpeg_whip_many(ffmpeg: str, clip: Path, targets: list[tuple[str, str]], log: Path,
                           loop: bool = False) -> asyncio.subprocess.Process:
    """One FFmpeg process that sends ``clip`` in real time to every (url, token) of
    ``targets``, each a WHIP output of its own; with ``loop``, over and over until killed."""
    args = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "info", "-re"]
    args += ["-stream_loop", "-1"] if loop else []
    args += ["-i", str(clip)]
    for url, token in targets:
        args += ["-map", "0", "-c", "copy", "-f", "whip", "-authorization", token, url]
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(*args, stdout=subprocess.DEVNULL,
                                                    stderr=out)


def summary(offsets: list[float]) -> str:
    ms = [round(o * 1000) for o in offsets]
    return f"median {statistics.median(ms)} ms, min {min(ms)}, max {max(ms)}, n {len(ms)}"
