"""The page's pictures and sound as a room publication: H.264 at the output's size and rate,
Opus 48 kHz stereo, written like any publisher's frames (``Publication.write``).

The screencast sends a picture only when the page changes; a clock at ``fps`` encodes the
latest one (decoded once, scaled to ``width``×``height``), so the publication has a steady
frame rate and integer timestamps (frame index × 90000 / fps). This hop to the mix is on
loopback: ultrafast at constant quality, the mix's encoder setting the recording's bit rate.
Sound arrives as 16-bit PCM and is cut into 20 ms Opus packets, timestamps counted in samples.
Encoding runs in one thread per page; frames go to the room on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from fractions import Fraction

import av
import numpy as np

from cloudrec.media.mix.output import VideoParams

log = logging.getLogger(__name__)

OPUS_SAMPLES = 960  # 20 ms at 48 kHz
VIDEO_CLOCK = 90000


class PageEncoder:
    """Encodes what :class:`~.browser.BrowserPage` hands out; ``write(kind, codec, clock,
    data, ts)`` is called on ``loop`` (a publication's ``write``, or nothing while held)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, params: VideoParams, write,
                 *, video: bool = True, audio: bool = True) -> None:
        self.loop = loop
        self.params = params
        self.write = write
        self.video, self.audio = video, audio
        self._jpeg: bytes | None = None
        self._jpeg_new = False
        self._frame: av.VideoFrame | None = None
        self._jpeg_decoder = av.CodecContext.create("mjpeg", "r")
        self._pcm = bytearray()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._key = True
        self.frames = 0
        self.samples = 0
        self._opus_ts = 0
        self.pictures = 0
        self._sound, self._pictures = _Rate(), _Rate()
        self._thread = threading.Thread(target=self._run, name="webpage-encoder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def picture(self, jpeg: bytes) -> None:
        with self._lock:
            self._jpeg, self._jpeg_new = jpeg, True
        self.pictures += 1
        self._pictures.arrived(1)

    def sound(self, pcm: bytes) -> None:
        with self._lock:
            self._pcm += pcm
        self._sound.arrived(len(pcm) // 4)
        self._wake.set()

    def rates(self) -> str:
        """How fast the page's sound and pictures arrived, between the first and the last of
        each: stereo samples per second (48000 when the tap keeps up with real time) and
        screencast pictures per second (at most the output's rate)."""
        return (f"sound {self._sound.rate():.0f} samples/s, pictures "
                f"{self._pictures.rate():.1f}/s over {self._sound.seconds():.1f} s")

    def request_keyframe(self) -> None:
        self._key = True

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    # -- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            venc = open_page_encoder(self.params) if self.video else None
            aenc = _open_opus() if self.audio else None
            started = time.monotonic()
            period = 1.0 / self.params.fps
            while not self._stop.is_set():
                if aenc is not None:
                    self._encode_audio(aenc)
                if venc is not None:
                    due = started + self.frames * period
                    if time.monotonic() >= due:
                        self._encode_video(venc)
                        continue
                    self._wake.wait(max(0.0, min(due - time.monotonic(), 0.02)))
                else:
                    self._wake.wait(0.02)
                self._wake.clear()
        except Exception:
            log.exception("web page encoder failed")

    def _latest(self) -> av.VideoFrame:
        with self._lock:
            jpeg, fresh = self._jpeg, self._jpeg_new
            self._jpeg_new = False
        if fresh and jpeg is not None:
            try:
                image = self._jpeg_decoder.decode(av.Packet(jpeg))[0]
                self._frame = image.reformat(self.params.width, self.params.height, "yuv420p")
            except (av.FFmpegError, IndexError) as exc:
                log.warning("a screencast picture could not be decoded: %s", exc)
        if self._frame is None:
            blank = np.zeros((self.params.height, self.params.width, 3), np.uint8)
            self._frame = av.VideoFrame.from_ndarray(blank, "rgb24").reformat(format="yuv420p")
        return self._frame

    def _encode_video(self, enc: av.VideoCodecContext) -> None:
        frame = self._latest()
        out = frame
        out.pts = self.frames
        out.time_base = Fraction(1, self.params.fps)
        out.pict_type = av.video.frame.PictureType.I if self._key else \
            av.video.frame.PictureType.NONE
        self._key = False
        self.frames += 1
        for packet in enc.encode(out):
            ts = int(packet.pts or 0) * VIDEO_CLOCK // self.params.fps
            self.loop.call_soon_threadsafe(self.write, "video", "h264", VIDEO_CLOCK,
                                           bytes(packet), ts)

    def _encode_audio(self, enc: av.AudioCodecContext) -> None:
        need = OPUS_SAMPLES * 4
        while True:
            with self._lock:
                if len(self._pcm) < need:
                    return
                chunk = bytes(self._pcm[:need])
                del self._pcm[:need]
            samples = np.frombuffer(chunk, np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
            frame.sample_rate = 48000
            frame.pts = self.samples
            frame.time_base = Fraction(1, 48000)
            self.samples += OPUS_SAMPLES
            for packet in enc.encode(frame):
                ts = self._opus_ts
                self._opus_ts += OPUS_SAMPLES
                self.loop.call_soon_threadsafe(self.write, "audio", "opus", 48000,
                                               bytes(packet), ts)


def open_page_encoder(params: VideoParams) -> av.VideoCodecContext:
    """libx264 for the page's hop to the mix on loopback: ultrafast at constant quality
    (CRF 20; the mix's own encoder sets the recording's bit rate), zerolatency, no B-frames,
    keyint = GOP, SPS/PPS before every IDR, an IDR on request."""
    enc = av.CodecContext.create("libx264", "w")
    assert isinstance(enc, av.VideoCodecContext)
    enc.width, enc.height, enc.pix_fmt = params.width, params.height, "yuv420p"
    enc.time_base = Fraction(1, params.fps)
    enc.framerate = Fraction(params.fps, 1)
    enc.gop_size = params.gop
    enc.max_b_frames = 0
    enc.thread_count = 1
    enc.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "20",
                   "forced-idr": "1", "x264-params": "repeat-headers=1:bframes=0"}
    enc.open()
    return enc


def _open_opus() -> av.AudioCodecContext:
    enc = av.CodecContext.create("libopus", "w")
    assert isinstance(enc, av.AudioCodecContext)
    enc.sample_rate = 48000
    enc.layout = "stereo"
    enc.format = "s16"
    enc.bit_rate = 96000
    enc.time_base = Fraction(1, 48000)
    enc.options = {"application": "audio", "frame_duration": "20"}
    enc.open()
    return enc


class _Rate:
    """Units counted after the first arrival, over the time from the first to the last."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0
        self.count = 0

    def arrived(self, units: int) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        else:
            self.count += units
            self.last = now

    def seconds(self) -> float:
        return 0.0 if self.first is None else max(0.0, self.last - self.first)

    def rate(self) -> float:
        return self.count / self.seconds() if self.seconds() > 0 else 0.0
