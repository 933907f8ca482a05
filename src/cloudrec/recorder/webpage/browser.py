"""One headless Debian chromium showing one page, and what leaves it: pictures and sound.

Pictures: the DevTools screencast (``Page.startScreencast``), JPEG frames at the output size,
sent by the compositor when the page changes. Each is acknowledged no sooner than
``frame_period`` after the previous one, so the browser encodes no JPEG the recording would
drop (``everyNthFrame`` would not do: it counts frames that changed, so a page that changes
once a second would show one change in N); a page that goes quiet after a delayed
acknowledgement gets one screenshot, so its last change is kept.

Sound: a script (:mod:`.tap`) added to every document before the page's own
(``Page.addScriptToEvaluateOnNewDocument``) taps every ``AudioContext`` that connects to its
destination and every ``<audio>``/``<video>`` that plays (``captureStream()``) into one 48 kHz
tap context, whose ``ScriptProcessorNode`` hands 16-bit stereo PCM to the worker through a
DevTools binding (``Runtime.addBinding``). The browser itself runs ``--mute-audio``: no sound
device is opened.

Why this capture: Chromium's own tab capture (``getDisplayMedia`` with ``preferCurrentTab``
and MediaRecorder) would hand over encoded H.264 and Opus, but in headless mode it answers
"Could not start video source" / "Could not start audio source" (chromium 156 here). A virtual
display (Xvfb) with PulseAudio and a grabber is what makes other recorders heavy and fragile
(a display server and a sound server per recording, PulseAudio's client limits). The
screencast and the tap need no X server and no sound server: one browser process tree and one
DevTools websocket per recording. The price is the screencast's JPEG readback and encoding.

``cloudrecStart()`` / ``cloudrecStop()`` are bindings too (``waitforsignal``). With
``allow_origins`` or without ``allow_private_urls``, documents are paused (``Fetch`` domain):
a main-frame navigation goes on only to an allowed origin (or the origin of a URL the API asked
for), and, without ``allow_private_urls``, no document (page or frame) goes to a host that
resolves to a private or local address; each refusal is a warning. A crashed renderer
(``Inspector.targetCrashed``) or a closed DevTools connection ends :meth:`BrowserPage.run`;
the caller starts a new browser. With ``single_process`` (``webpage_single_process``, the
default) the renderer and the audio service run in the browser process: a renderer crash is
the browser's crash, told from a kill by how the process ended, and the audio service's
thread is given the real-time priority chromium gives it in a process of its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cloudrec.fetch import PrivateAddress, resolve_checked
from cloudrec.lifelines import die_with_parent

from .cdp import Cdp, CdpClosed, CdpError
from .tap import TAP_SCRIPT

log = logging.getLogger(__name__)

#: Debian's ``chromium-headless-shell`` (the browser without its desktop UI, lighter by about
#: half) when it is installed, else Debian's ``chromium`` in its headless mode. The binary,
#: not the ``/usr/bin`` wrapper, which would stay between the worker and the browser.
HEADLESS_SHELL = "/usr/lib/chromium/chromium-headless-shell"
CHROMIUM = os.environ.get("CLOUDREC_CHROMIUM") or (
    HEADLESS_SHELL if os.access(HEADLESS_SHELL, os.X_OK) else "chromium")
LAUNCH_TIMEOUT_S = 20.0
LOAD_TIMEOUT_S = 15.0
JPEG_QUALITY = 80
AUDIO_THREADS = ("AudioThread", "AudioWorkerThre")  # /proc's comm: 15 characters at most
AUDIO_PRIORITY = 8  # chromium's real-time audio priority on Linux


def chromium_args(profile: str, width: int, height: int, *,
                  single_process: bool = False) -> list[str]:
    """The command line of one page's browser. One page per browser, so no site isolation and
    one renderer; no zygote; the GPU thread (software compositing) and the network service in
    the browser process. ``single_process``: the renderer and the audio service run in the
    browser process too (one process: the libraries and heaps a renderer and a utility
    process would map again are mapped once); otherwise three processes: the browser, the
    page's renderer and the audio service. Either way a crashed renderer ends the browser's
    run (with one process it is the browser's crash)."""
    headless = [] if CHROMIUM.endswith("headless-shell") else ["--headless=new"]
    single = ["--single-process"] if single_process else []
    return [
        CHROMIUM, *headless, *single, "--no-sandbox", "--no-zygote", "--disable-gpu",
        "--in-process-gpu", "--renderer-process-limit=1", "--disable-site-isolation-trials",
        "--disable-features=IsolateOrigins,site-per-process,SpareRendererForSitePerProcess,"
        "Translate,OptimizationHints,MediaRouter",
        "--enable-features=NetworkServiceInProcess2",
        "--disable-background-networking", "--disable-component-update", "--no-first-run",
        "--disable-extensions", "--disable-sync", "--disk-cache-size=8388608",
        "--no-default-browser-check", "--disable-dev-shm-usage", "--mute-audio",
        "--autoplay-policy=no-user-gesture-required", "--hide-scrollbars",
        "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
        f"--user-data-dir={profile}", "--remote-debugging-port=0",
        f"--window-size={width},{height}", "about:blank",
    ]


@dataclass(slots=True)
class PageEvents:
    """What the page hands out, called on the loop."""

    on_picture: Callable[[bytes], None]
    on_sound: Callable[[bytes], None]  # s16le stereo 48 kHz
    on_signal: Callable[[str], None]
    on_warning: Callable[[str], None]


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    host = (parts.hostname or "").lower()
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port and port != default else "")


@dataclass(slots=True)
class BrowserPage:
    """One chromium process and its page; :meth:`run` returns when the browser or its
    renderer is gone (or :meth:`close` was called)."""

    width: int
    height: int
    events: PageEvents
    allow_origins: list[str] | None = None
    allow_private: bool = True
    single_process: bool = False
    process: subprocess.Popen[bytes] | None = None
    cdp: Cdp | None = None
    session: str | None = None
    crashed: asyncio.Event = field(default_factory=asyncio.Event)
    frame_period: float = 0.0
    _profile: str = ""
    _next_ack: float = 0.0
    _frames: int = 0
    _frame_id: str | None = None
    _allowed: set[str] = field(default_factory=set)
    _asked: set[str] = field(default_factory=set)
    _loaded: asyncio.Event = field(default_factory=asyncio.Event)
    _audio: asyncio.Future[None] | None = None

    async def launch(self) -> None:
        self._profile = tempfile.mkdtemp(prefix="cloudrec-page-")
        args = chromium_args(self._profile, self.width, self.height,
                            single_process=self.single_process)
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True, preexec_fn=die_with_parent)
        port_file = os.path.join(self._profile, "DevToolsActivePort")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LAUNCH_TIMEOUT_S
        lines: list[str] = []
        while loop.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited at start ({self.process.returncode})")
            with contextlib.suppress(OSError):
                with open(port_file) as f:
                    lines = f.read().split()
            if len(lines) >= 2:
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("chromium did not open its DevTools port")
        self.cdp = Cdp()
        await self.cdp.connect(f"ws://127.0.0.1:{lines[0]}{lines[1]}")
        cdp = self.cdp
        targets = await cdp.call("Target.getTargets")
        page = next(t for t in targets["targetInfos"] if t["type"] == "page")
        attached = await cdp.call("Target.attachToTarget",
                                  {"targetId": page["targetId"], "flatten": True})
        self.session = s = attached["sessionId"]
        self._frame_id = page["targetId"]  # a page target's main frame has its id
        cdp.on("Page.screencastFrame", self._on_frame)
        cdp.on("Runtime.bindingCalled", self._on_binding)
        cdp.on("Inspector.targetCrashed", lambda _p, _s: self.crashed.set())
        cdp.on("Fetch.requestPaused", self._on_request)
        cdp.on("Page.loadEventFired", lambda _p, _s: self._loaded.set())
        for method in ("Page.enable", "Runtime.enable", "Inspector.enable"):
            await cdp.call(method, session=s)
        for name in ("cloudrecAudio", "cloudrecSignal"):
            await cdp.call("Runtime.addBinding", {"name": name}, session=s)
        await cdp.call("Emulation.setDeviceMetricsOverride",
                       {"width": self.width, "height": self.height, "deviceScaleFactor": 1,
                        "mobile": False}, session=s)
        await cdp.call("Page.addScriptToEvaluateOnNewDocument", {"source": TAP_SCRIPT},
                       session=s)
        if self.allow_origins or not self.allow_private:
            await cdp.call("Fetch.enable", {"patterns": [{"resourceType": "Document"}]},
                           session=s)
        if self.single_process:
            self._audio = asyncio.ensure_future(self._raise_audio())
        await cdp.call("Page.startScreencast",
                       {"format": "jpeg", "quality": JPEG_QUALITY, "maxWidth": self.width,
                        "maxHeight": self.height, "everyNthFrame": 1}, session=s)

    async def navigate(self, url: str) -> None:
        """Go to ``url``; a page that does not load in time is a warning, not an error."""
        assert self.cdp is not None
        self._allowed.add(origin_of(url))  # the page asked for is always allowed
        self._asked.add(url)  # and was checked by the API
        self._loaded.clear()
        try:
            answer = await self.cdp.call("Page.navigate", {"url": url}, session=self.session)
        except (CdpError, TimeoutError) as exc:
            self.events.on_warning(f"page {url} did not load: {exc}")
            return
        if answer.get("errorText"):
            self.events.on_warning(f"page {url} did not load: {answer['errorText']}")
            return
        try:
            async with asyncio.timeout(LOAD_TIMEOUT_S):
                await self._loaded.wait()
        except TimeoutError:
            self.events.on_warning(f"page {url} did not finish loading in "
                                   f"{LOAD_TIMEOUT_S:.0f} s")

    async def run(self) -> str:
        """Until the browser is gone: why it ended."""
        assert self.cdp is not None
        waits = {asyncio.ensure_future(self.crashed.wait()): "the page's renderer crashed",
                 asyncio.ensure_future(self.cdp.closed.wait()): "the browser exited"}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        why = waits[next(iter(done))]
        if why == "the browser exited" and await self._crashed_by_signal():
            return "the browser crashed"
        return why

    async def _crashed_by_signal(self) -> bool:
        """Whether the browser ended by a fault of its own (a signal other than a kill, or
        its crash handler's exit), not killed or closed (a page's renderer crash is one with
        ``single_process``)."""
        if self.process is None:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while self.process.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.05)
        code = self.process.returncode
        if self.crashed.is_set():
            return True
        return code is not None and code != 0 and code not in (-signal.SIGKILL, -signal.SIGTERM)

    def _on_frame(self, params: dict, session: str | None) -> None:
        assert self.cdp is not None
        self._frames += 1
        asyncio.ensure_future(self._ack(params["sessionId"]))
        self.events.on_picture(base64.b64decode(params["data"]))

    async def _ack(self, frame: int) -> None:
        """Acknowledge a frame no sooner than ``frame_period`` after the previous one: the
        browser encodes no JPEG it would have to drop. A change made while a frame waited is
        not sent when nothing changes after it, so a quiet page after a delayed
        acknowledgement gets one screenshot (``Page.captureScreenshot``)."""
        loop = asyncio.get_running_loop()
        wait = self._next_ack - loop.time()
        self._next_ack = max(loop.time(), self._next_ack) + self.frame_period
        if wait > 0:
            await asyncio.sleep(wait)
        seen = self._frames
        with contextlib.suppress(CdpClosed, CdpError, TimeoutError):
            assert self.cdp is not None
            await self.cdp.call("Page.screencastFrameAck", {"sessionId": frame},
                                session=self.session)
            if wait <= 0:
                return
            await asyncio.sleep(2 * self.frame_period)
            if self._frames == seen:
                shot = await self.cdp.call("Page.captureScreenshot",
                                           {"format": "jpeg", "quality": JPEG_QUALITY},
                                           session=self.session)
                if self._frames == seen:
                    self.events.on_picture(base64.b64decode(shot["data"]))

    def _on_binding(self, params: dict, session: str | None) -> None:
        if params.get("name") == "cloudrecAudio":
            self.events.on_sound(base64.b64decode(params.get("payload", "")))
        elif params.get("name") == "cloudrecSignal":
            self.events.on_signal(params.get("payload", ""))

    def _on_request(self, params: dict, session: str | None) -> None:
        asyncio.ensure_future(self._judge(params))

    async def _judge(self, params: dict) -> None:
        """A document (the page's or a frame's) goes on unless it leaves ``allow_origins`` (the
        main frame only) or, without ``allow_private_urls``, its host is a private or local
        address (URLs the API asked for were checked by the API)."""
        assert self.cdp is not None
        url = params["request"]["url"]
        main = params.get("frameId") == self._frame_id
        why = None
        if main and self.allow_origins is not None and origin_of(url) not in (
                self._allowed | {origin_of(o) for o in self.allow_origins}):
            why = "not in webpage.allow_origins"
        elif not self.allow_private and url not in self._asked and await _is_private(url):
            why = "a private or local address (allow_private_urls is off)"
        with contextlib.suppress(CdpClosed, CdpError, TimeoutError):
            if why is not None:
                self.events.on_warning(f"navigation to {origin_of(url)} refused: {why}")
                await self.cdp.call("Fetch.failRequest", {"requestId": params["requestId"],
                                    "errorReason": "BlockedByClient"}, session=self.session)
            else:
                await self.cdp.call("Fetch.continueRequest",
                                    {"requestId": params["requestId"]}, session=self.session)

    async def crash_renderer(self) -> None:
        """For tests: the page's renderer crashes, as a page that kills it would
        (``Page.crash``); with one process the browser crashes with it."""
        assert self.cdp is not None
        with contextlib.suppress(CdpClosed, CdpError, TimeoutError):
            await self.cdp.call("Page.crash", session=self.session, timeout=2.0)

    async def _raise_audio(self) -> None:
        """Until the browser's audio thread is there (it starts with the page's first
        sound, within seconds), :func:`raise_audio_threads`."""
        assert self.process is not None
        for _ in range(120):
            try:
                if raise_audio_threads(self.process.pid):
                    return
            except PermissionError:
                log.warning("the browser's audio thread cannot have real-time priority (no "
                            "CAP_SYS_NICE): on a loaded machine its sound may fall behind")
                return
            await asyncio.sleep(0.5)

    async def close(self) -> None:
        if self._audio is not None:
            self._audio.cancel()
        if self.cdp is not None:
            await self.cdp.close()
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await asyncio.get_running_loop().run_in_executor(None, self.process.wait)
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)


async def _is_private(url: str) -> bool:
    """Whether ``url``'s host resolves to an address the SSRF guard refuses (one that does not
    resolve is left to the browser, which fails it)."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        await resolve_checked(parts.hostname or "", port, allow_private=False)
    except PrivateAddress:
        return True
    except (OSError, ValueError, UnicodeError):
        return False
    return False


def raise_audio_threads(pid: int) -> int:
    """Give the audio threads of a one-process browser ``pid`` the real-time scheduling
    (``SCHED_RR``, priority 8) chromium gives the audio service's threads in a process of their
    own: in the browser process the audio service renders on its ``AudioThread`` at normal
    priority, and on a loaded machine its clock falls behind (about 43k samples a second
    instead of 48k). How many threads were raised; ``PermissionError`` without
    ``CAP_SYS_NICE`` (or an ``RLIMIT_RTPRIO``)."""
    raised = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            if name in AUDIO_THREADS:
                os.sched_setscheduler(int(tid), os.SCHED_RR, os.sched_param(AUDIO_PRIORITY))
                raised += 1
    return raised
