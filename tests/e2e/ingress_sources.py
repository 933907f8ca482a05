"""Sources for the ingress tests: a clip file served over HTTP, a GStreamer RTSP server like a
camera (H.264 + G.711 A-law), run with the system Python in a subprocess."""

from __future__ import annotations

import functools
import http.server
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import free_port

SYSTEM_PYTHON = "/usr/bin/python3"


def make_clip(path: Path, seconds: int = 6, fmt: str = "mp4") -> Path:
    """An H.264 + AAC clip (a key frame every second) made by FFmpeg."""
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc=size=320x240:rate=15:duration={seconds}", "-f", "lavfi", "-i",
         f"sine=frequency=440:sample_rate=48000:duration={seconds}", "-c:v", "libx264",
         "-preset", "ultrafast", "-g", "15", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
         *(["-movflags", "+faststart"] if fmt == "mp4" else []), "-f", fmt, str(path)], check=True)
    return path


@contextmanager
def http_files(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on loopback; the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


RTSP_SERVER = textwrap.dedent("""
    import sys
    import gi
    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import Gst, GstRtspServer, GLib
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(sys.argv[1])
    video = sys.argv[2]
    for path in sys.argv[3:] or ["/cam"]:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(
            "( videotestsrc is-live=true pattern=ball "
            "! video/x-raw,width=320,height=240,framerate=15/1 "
            f"! x{video[1:]}enc tune=zerolatency speed-preset=ultrafast key-int-max=15 "
            f"! rtp{video}pay name=pay0 pt=96 config-interval=1 "
            "audiotestsrc is-live=true wave=sine freq=440 ! audio/x-raw,rate=8000,channels=1 "
            "! alawenc ! rtppcmapay name=pay1 pt=8 )")
        factory.set_shared(True)
        server.get_mount_points().add_factory(path, factory)
    server.attach(None)
    print("ready", flush=True)
    GLib.MainLoop().run()
""")


def gst_rtsp_available() -> bool:
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version("
                            "'GstRtspServer', '1.0'); from gi.repository import GstRtspServer"],
                           capture_output=True)
    return probe.returncode == 0


class RtspCamera:
    """A GStreamer RTSP server on a fixed port, to kill and start again; ``cameras`` > 1 serves
    that many independent cameras, ``/cam0`` … (:meth:`camera_url`), from one process."""

    def __init__(self, port: int | None = None, cameras: int = 1, video: str = "h264") -> None:
        self.port = port or free_port()
        self.cameras = cameras
        self.video = video  # "h264" or "h265": GStreamer's x264enc/x265enc, rtph264pay/rtph265pay
        self.proc: subprocess.Popen[str] | None = None

    def camera_url(self, i: int) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam{i}"

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self) -> None:
        self.proc = subprocess.Popen([SYSTEM_PYTHON, "-c", RTSP_SERVER, str(self.port),
                                      self.video, *([f"/cam{i}" for i in range(self.cameras)]
                                        if self.cameras > 1 else [])],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", line
        time.sleep(0.2)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
