"""A web page recorded as a mixed recording: one headless chromium per recording, publishing
the page's pictures and sound into a room of its own, which an ordinary mix records.

The page is "a new kind of publisher" (:mod:`.capture` over :mod:`.browser`): its uid
``webpage`` publishes H.264 at the output's size and rate and Opus in the private room
``webpage-{recordid}``, and the recording is a :class:`~cloudrec.recorder.mixed.MixedRecording`
whose one input covers the canvas. HLS segments, MP4, snapshots, live push, pause/resume,
progress and callbacks are therefore those of every mix.

Supervision: the browser is a child process in its own session; when it exits or its renderer
crashes, the publication ends (keeping its place), a warning is listed in ``queryrecord``, and
a new browser loads the page again after a short backoff; the mix goes on with what it last
showed. After ``MAX_RESTARTS`` restarts within ``RESTART_WINDOW_S`` the recording ends with
reason ``error``. A browser never runs in the worker's process, so its death cannot take the
worker down.

``webpage.waitforsignal``: nothing is published until the page calls ``cloudrecStart()`` (a
live page waiting for it does not count as idle); ``cloudrecStop()`` stops the recording
(reason ``api``). ``webpage.timeout_s``: the recording
stops by itself after that long. ``updatemixrecord`` with another ``webpage.url`` navigates the
same browser: the encoder keeps sending the last picture meanwhile, so there is no gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Any
from urllib.parse import urlsplit

from cloudrec.errors import InvalidParameter, RecordingError
from cloudrec.fetch import PrivateAddress, resolve_checked
from cloudrec.media.mix.output import VideoParams
from cloudrec.models.mixconfig import MixConfig
from cloudrec.recorder.mixed import MixedRecording
from cloudrec.rooms import Publication
from cloudrec.tasks import StopReason

from .browser import BrowserPage, PageEvents
from .capture import PageEncoder

log = logging.getLogger(__name__)

PAGE_UID = "webpage"
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
BROWSER_STOP_S = 10.0
URL_FIELD = "mixconfig.webpage.url"


def page_room(recordid: str) -> str:
    """The private room a recording's page publishes in."""
    return "webpage-" + re.sub(r"[^A-Za-z0-9_\-.@]", "_", recordid)[:100]


def inner_mixconfig(recordid: str, mixconfig: MixConfig) -> MixConfig:
    """The mix that records the page: one input, the page, covering the canvas."""
    out = mixconfig.output
    data: dict[str, Any] = {"output": out.model_dump(mode="json", exclude_none=True)}
    if out.has_video:
        data["input"] = [{"uid": PAGE_UID, "roomid": page_room(recordid),
                          "streamtype": out.streamtype, "layoutX": 0, "layoutY": 0,
                          "layoutW": out.videowidth, "layoutH": out.videoheight}]
    else:
        data["input"] = [{"uid": PAGE_UID, "roomid": page_room(recordid), "streamtype": 2}]
    return MixConfig.model_validate(data)


async def check_page_url(url: str, *, allow_private: bool) -> None:
    """2101 naming ``mixconfig.webpage.url`` for a host that is private or local (unless
    ``allow_private_urls``) or that does not resolve."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        await resolve_checked(parts.hostname or "", port, allow_private=allow_private)
    except PrivateAddress as exc:
        raise InvalidParameter(URL_FIELD, f"{exc}; private addresses need "
                               "allow_private_urls") from None
    except (OSError, ValueError) as exc:
        raise InvalidParameter(URL_FIELD, f"cannot be resolved ({exc})") from None


class _PageUpstream:
    """The page as the room sees it."""

    def __init__(self, encoder: PageEncoder) -> None:
        self.encoder = encoder

    @property
    def state(self) -> str:
        return "connected"

    def request_keyframe(self) -> None:
        self.encoder.request_keyframe()

    def close(self) -> None:
        pass


class WebpageRecording(MixedRecording):
    def __init__(self, *args: Any, mixconfig: MixConfig, single_process: bool = True,
                 **kwargs: Any) -> None:
        task = args[0]
        super().__init__(*args, mixconfig=inner_mixconfig(task.recordid, mixconfig), **kwargs)
        self.page_config = mixconfig
        self.single_process = single_process
        self.page: BrowserPage | None = None
        self.restarts: list[float] = []
        self.signalled = not (mixconfig.webpage and mixconfig.webpage.waitforsignal)
        self._pub: Publication | None = None
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def webpage(self) -> Any:
        return self.page_config.webpage

    def start(self, *, resume: bool) -> None:
        super().start(resume=resume)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def update(self, mixconfig: MixConfig) -> None:
        if mixconfig.webpage is None:
            raise RecordingError("mixconfig.webpage is required: this recording records a "
                                 "web page", 4016)
        if mixconfig.webpage.url != self.webpage.url:
            await check_page_url(mixconfig.webpage.url, allow_private=self.allow_private_urls)
        inner = inner_mixconfig(self.task.recordid, mixconfig)
        if inner != self.mixconfig:
            await super().update(inner)
        old_url = self.webpage.url
        self.page_config = mixconfig
        if mixconfig.webpage.url != old_url and self.page is not None:
            await self.page.navigate(mixconfig.webpage.url)
        self._save_progress()

    async def _finish(self) -> None:
        """The browser ends before the recording's files are finished (bounded)."""
        self._stop_requested.set()
        supervisor = self._supervisor
        if supervisor is not None and not supervisor.done():
            try:
                await asyncio.wait_for(asyncio.shield(supervisor), BROWSER_STOP_S)
            except (TimeoutError, Exception):
                page = self.page
                if page is not None:
                    await page.close()
                supervisor.cancel()
        await super()._finish()

    # -- the browser ------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        await self._worker_started.wait()
        timer = None
        if self.webpage.timeout_s:
            timer = asyncio.get_running_loop().call_later(
                self.webpage.timeout_s, self._stop_soon, "timeout_s")
        try:
            while not self._stop_requested.is_set() and self.worker is not None:
                why = await self._one_browser()
                if self._stop_requested.is_set():
                    break
                now = time.monotonic()
                self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S]
                self.restarts.append(now)
                self._warn(f"{why}; the browser is restarted")
                if len(self.restarts) > MAX_RESTARTS:
                    self.error = self.error or (f"the browser failed {len(self.restarts)} times "
                                                f"within {RESTART_WINDOW_S:.0f} s: {why}")
                    self.stop_reason = StopReason.ERROR
                    self._stop_requested.set()
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(0.5 * 2 ** (len(self.restarts) - 1), 5.0)):
                        await self._stop_requested.wait()
        finally:
            if timer is not None:
                timer.cancel()

    async def _one_browser(self) -> str:
        out = self.mixconfig.output
        width, height = (out.videowidth or 640), (out.videoheight or 360)
        loop = asyncio.get_running_loop()
        params = VideoParams(width, height, out.videofps, (out.videobitrate or 1000) * 2,
                             out.videogop)
        encoder = PageEncoder(loop, params, self._write, video="video" in self.kinds,
                              audio="audio" in self.kinds)
        page = BrowserPage(width, height, PageEvents(encoder.picture, encoder.sound,
                                                     self._on_signal, self._warn),
                           frame_period=1.0 / out.videofps,
                           allow_origins=self.webpage.allow_origins,
                           allow_private=self.allow_private_urls,
                           single_process=self.single_process)
        codecs: dict[str, str | None] = {
            k: c for k, c in (("video", "h264"), ("audio", "opus")) if k in self.kinds}
        try:
            await page.launch()
            self._pub = self.hub.attach(self.task.appid, page_room(self.task.recordid),
                                        PAGE_UID, kinds=frozenset(codecs), codecs=codecs,
                                        upstream=_PageUpstream(encoder), origin="webpage")
            encoder.start()
            self.page = page
            await page.navigate(self.webpage.url)
            run = asyncio.ensure_future(page.run())
            stop = asyncio.ensure_future(self._stop_requested.wait())
            done, _ = await asyncio.wait({run, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if run in done:
                return run.result()
            run.cancel()
            return "stopped"
        except Exception as exc:
            log.exception("recording %s: the browser failed", self.task.recordid)
            return f"the browser failed: {type(exc).__name__}: {exc}"
        finally:
            self.page = None
            await loop.run_in_executor(None, encoder.stop)
            log.info("recording %s: the page's %s", self.task.recordid, encoder.rates())
            if self._pub is not None:  # a restart keeps the page's place in its room
                self.hub.detach(self._pub, "browser closed",
                                keep_place=not self._stop_requested.is_set())
                self._pub = None
            await page.close()

    def _write(self, kind: str, codec: str, clock: int, data: bytes, ts: int) -> None:
        pub = self._pub
        if pub is not None and self.signalled:
            pub.write(kind, codec, clock, data, ts)
        elif pub is not None:  # a live page waiting to call cloudrecStart() is not idle
            self.last_media = time.monotonic()

    def _on_signal(self, signal: str) -> None:
        if signal == "start" and not self.signalled:
            log.info("recording %s: the page called cloudrecStart()", self.task.recordid)
            self.signalled = True
            if self.page is not None and self._pub is not None:
                self._pub.request_keyframe()
        elif signal == "stop":
            self._stop_soon("cloudrecStop()")

    def _stop_soon(self, why: str) -> None:
        log.info("recording %s: stopping (%s)", self.task.recordid, why)
        asyncio.get_running_loop().create_task(self.stop(StopReason.API))

    def _warn(self, note: str) -> None:
        log.warning("recording %s: %s", self.task.recordid, note)
        self.warnings.append(note)
        del self.warnings[:-20]

    def _media_progress(self) -> dict[str, Any]:
        progress = super()._media_progress()
        progress["mixconfig"] = self.page_config.model_dump(mode="json", by_alias=True,
                                                            exclude_none=True)
        progress["webpage"] = {"url": self.webpage.url, "restarts": len(self.restarts),
                               "started": self.signalled}
        return progress
