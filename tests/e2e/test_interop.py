"""Publishers nobody on the project wrote: GStreamer's webrtcbin and FFmpeg's WHIP muxer, each
publishing into a real cloudrec server and recorded; and the ICE settings for deployments
(announced addresses, a UDP port range).

The GStreamer publisher is a small Python + gi WHIP client run with the system Python (gi is
not in the virtual environment). Its sliced IDR pictures carry SPS/PPS between slices, which
the tap reorders (see ``test_parameter_sets_between_slices_are_moved_in_front``). FFmpeg is the
static build in the ``imageio-ffmpeg`` wheel,
which has the ``whip`` muxer. Each test is skipped where its client is not installed
(``scripts/setup-system.sh test`` installs the GStreamer packages).
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from cloudrec.media.codecs.h264 import conformant_access_unit, join_annexb, split_annexb
from cloudrec.rooms import RoomHub
from cloudrec.tokens import make_token
from cloudrec.webrtc import _aiortc_transport as transport
from cloudrec.webrtc.ingest import WebRtcIngest
from cloudrec.webrtc.synthetic import Pacer, TestPatternTrack
from tests.e2e.conftest import WhipServer
from tests.e2e.test_recording import playlist_of, start, stop
from tests.helpers import APPID, SECRET, make_settings, running_server
from tests.media_check import ffprobe_streams, probe_playlist

SYSTEM_PYTHON = "/usr/bin/python3"


def _gstreamer_ready() -> bool:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    probe = ("import sys, gi; gi.require_version('Gst', '1.0');"
             "gi.require_version('GstWebRTC', '1.0'); gi.require_version('GstSdp', '1.0');"
             "from gi.repository import Gst, GstWebRTC, GstSdp; Gst.init(None);"
             "sys.exit(0 if all(Gst.ElementFactory.find(e) for e in ('webrtcbin', 'nicesrc',"
             " 'x264enc', 'opusenc', 'rtph264pay', 'rtpopuspay')) else 1)")
    return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True).returncode == 0


def _ffmpeg_with_whip() -> str | None:
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    muxers = subprocess.run([exe, "-hide_banner", "-muxers"], capture_output=True, text=True)
    return exe if re.search(r"^\s*E\s+whip\b", muxers.stdout, re.M) else None


GSTREAMER = _gstreamer_ready()
FFMPEG = _ffmpeg_with_whip()


@pytest.fixture
def gstreamer() -> None:
    """These clients are installed by the project's setup: missing, the test fails, loudly."""
    if not GSTREAMER:
        pytest.fail("GStreamer webrtcbin + python3-gi are not installed "
                    "(scripts/setup-system.sh test installs them)")


@pytest.fixture
def ffmpeg_whip() -> None:
    if FFMPEG is None:
        pytest.fail("imageio-ffmpeg with the whip muxer is not installed "
                    "(pip install -e '.[test]')")


needs_gstreamer = pytest.mark.usefixtures("gstreamer")
needs_ffmpeg = pytest.mark.usefixtures("ffmpeg_whip")

# A WHIP publisher on webrtcbin: videotestsrc -> x264enc, audiotestsrc -> opusenc. webrtcbin
# makes an RSA-2048 certificate and, answered `a=setup:active`, is the DTLS server.
# argv: url token seconds
GST_WHIP_CLIENT = r'''
import sys, urllib.error, urllib.parse, urllib.request
import gi
gi.require_version("Gst", "1.0"); gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC

url, token, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
Gst.init(None)
pipeline = Gst.parse_launch(
    "webrtcbin name=webrtc bundle-policy=max-bundle "
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 "
    "! videoconvert ! queue ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 "
    "bitrate=300 ! video/x-h264,profile=constrained-baseline "
    "! rtph264pay config-interval=-1 aggregate-mode=zero-latency "
    "! application/x-rtp,media=video,encoding-name=H264,payload=96 ! webrtc. "
    "audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample ! queue "
    "! opusenc ! rtpopuspay ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111 "
    "! webrtc.")
webrtc = pipeline.get_by_name("webrtc")
loop = GLib.MainLoop()
state = {"location": None, "rc": 1}

def log(*args):
    print("gst-whip:", *args, file=sys.stderr, flush=True)

def fail(message):
    log("error:", message)
    state["rc"] = 1
    loop.quit()
    return False

def finish():
    if state["location"]:
        request = urllib.request.Request(state["location"], method="DELETE")
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.URLError as exc:
            log("DELETE failed:", exc)
    state["rc"] = 0
    loop.quit()
    return False

def on_answer_set(promise, _):
    promise.wait()
    log("answer applied; publishing for", seconds, "s")
    GLib.timeout_add(int(seconds * 1000), finish)

def post_offer():
    if state["location"] is not None:
        return False
    state["location"] = ""
    offer = webrtc.get_property("local-description").sdp.as_text()
    request = urllib.request.Request(url, data=offer.encode(), method="POST", headers={
        "Content-Type": "application/sdp", "Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = response.read().decode()
            state["location"] = urllib.parse.urljoin(url, response.headers["Location"])
    except urllib.error.HTTPError as exc:
        return fail("POST answered %d: %s" % (exc.code, exc.read().decode()))
    except urllib.error.URLError as exc:
        return fail("POST failed: %s" % exc)
    log("POST answered 201")
    _, sdp = GstSdp.SDPMessage.new_from_text(answer)
    description = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
    webrtc.emit("set-remote-description", description,
                Gst.Promise.new_with_change_func(on_answer_set, None))
    return False

def on_gathering(element, _pspec):
    if element.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
        GLib.idle_add(post_offer)

def on_offer(promise, _):
    promise.wait()
    reply = promise.get_reply()  # kept referenced: the offer belongs to it
    offer = reply.get_value("offer")
    if offer is not None:  # NULL while a pad's caps are not known yet; renegotiated after
        webrtc.emit("set-local-description", offer, Gst.Promise.new())

def on_negotiation_needed(element):
    element.emit("create-offer", None, Gst.Promise.new_with_change_func(on_offer, None))

def on_message(_bus, message):
    if message.type == Gst.MessageType.ERROR:
        error, debug = message.parse_error()
        fail("%s (%s)" % (error.message, debug))

def on_connection_state(element, _pspec):
    log("connection state", element.get_property("connection-state").value_nick)

webrtc.connect("on-negotiation-needed", on_negotiation_needed)
webrtc.connect("notify::ice-gathering-state", on_gathering)
webrtc.connect("notify::connection-state", on_connection_state)
bus = pipeline.get_bus()
bus.add_signal_watch()
bus.connect("message", on_message)
pipeline.set_state(Gst.State.PLAYING)
for index in range(2):
    transceiver = webrtc.emit("get-transceiver", index)
    if transceiver is not None:
        transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
GLib.timeout_add(int((seconds + 30) * 1000), lambda: fail("timed out"))
loop.run()
pipeline.set_state(Gst.State.NULL)
sys.exit(state["rc"])
'''


# -- helpers -----------------------------------------------------------------------------------


async def _wait_for(predicate, timeout: float, what: str, proc=None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline or (proc is not None and proc.returncode is not None):
            detail = log.read_text(errors="replace")[-3000:] if log is not None else ""
            raise AssertionError(f"{what}\n{detail}")
        await asyncio.sleep(0.1)


def _has_media(webrtc: WebRtcIngest, roomid: str, uid: str) -> bool:
    """True once the ingest has received frames from ``uid``'s WebRTC publication."""
    return any(p.uid == uid and p.key == (APPID, roomid) and p.frames > 0
               for p in webrtc.sessions())


def _make_clip(path: Path, seconds: float) -> Path:
    """A 320x240 H.264 (baseline, no B-frames, 1 s GOP) + Opus clip for FFmpeg to send as is."""
    assert FFMPEG is not None
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=15:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
         "-c:v", "libx264", "-profile:v", "baseline", "-preset", "ultrafast", "-tune",
         "zerolatency", "-g", "15", "-bf", "0", "-pix_fmt", "yuv420p",
         "-c:a", "libopus", "-ac", "2", "-b:a", "48k", str(path)],
        check=True, timeout=120)
    return path


async def _ffmpeg_whip(clip: Path, url: str, token: str, log: Path) -> asyncio.subprocess.Process:
    assert FFMPEG is not None
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "info", "-re", "-i", str(clip),
            "-c", "copy", "-f", "whip", "-authorization", token, url,
            stdout=subprocess.DEVNULL, stderr=out)


async def _end(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


# -- GStreamer webrtcbin -------------------------------------------------------------------------


@needs_gstreamer
async def test_gstreamer_webrtcbin_publisher_is_recorded(tmp_path: Path) -> None:
    """webrtcbin's RSA certificate: DTLS completes (an ECDHE-RSA suite) and the source
    recording decodes at the published size, with audio, for as long as it was recorded."""
    script, log = tmp_path / "gst_whip.py", tmp_path / "gst.log"
    script.write_text(GST_WHIP_CLIENT)
    settings = make_settings(tmp_path, write_rate_per_s=100, query_rate_per_s=100)
    room, uid = "gst", "webrtcbin"
    async with running_server(settings) as server:
        webrtc = server.app.state.webrtc
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                SYSTEM_PYTHON, str(script), server.whip_url(room, uid),
                make_token(APPID, room, uid, SECRET), "14", stderr=out)
        try:
            await _wait_for(lambda: _has_media(webrtc, room, uid), 30,
                            "no media from the webrtcbin publisher", proc, log)
            pub = next(p for p in webrtc.sessions() if p.uid == uid)
            ssl = pub.pc.getTransceivers()[0].receiver.transport._ssl
            cipher = ssl.get_cipher_name()
            assert cipher.startswith("ECDHE-RSA-"), cipher  # the case that failed before
            assert ssl.get_peer_certificate().get_pubkey().bits() == 2048
            resid, recordid, t0 = await start(server, room, uid, 0)
            await asyncio.sleep(6.0)
            t1 = await stop(server, room, resid, recordid)
            assert await asyncio.wait_for(proc.wait(), 30) == 0, log.read_text()
        finally:
            await _end(proc)
    playlist = playlist_of(server, room, recordid, uid)
    probe = probe_playlist(playlist)
    assert (probe.video_codec, probe.width, probe.height) == ("h264", 320, 240)
    assert probe.audio_codec == "aac" and probe.audio_rate and probe.audio_frames > 100
    assert probe.video_frames >= 15 * 4
    assert abs(probe.duration - (t1 - t0)) <= 1.5, (probe.duration, t1 - t0)
    streams = ffprobe_streams(playlist)
    if streams is not None:
        assert {s["codec_type"] for s in streams} == {"video", "audio"}


def test_parameter_sets_between_slices_are_moved_in_front() -> None:
    """What webrtcbin sends for a sliced IDR picture (x264enc tune=zerolatency, rtph264pay
    config-interval=-1: SPS/PPS before each IDR slice) becomes one conformant access unit."""
    aud, sps, pps = b"\x09\xf0", b"\x67\x42\xc0\x0c\xda", b"\x68\xce\x3c\x80"
    top, bottom = b"\x65\x88\x84\x21", b"\x65\x00\xa0\x88\x42"
    sliced = join_annexb([aud, sps, pps, top, sps, pps, bottom])
    assert split_annexb(conformant_access_unit(sliced)) == [aud, sps, pps, top, bottom]
    for fine in (join_annexb([sps, pps, top, bottom]), join_annexb([b"\x41\x9a", b"\x41\x9b"])):
        assert conformant_access_unit(fine) is fine


# -- FFmpeg's WHIP muxer -----------------------------------------------------------------------


@pytest.mark.slow
@needs_ffmpeg
async def test_ffmpeg_whip_publisher_is_recorded_for_a_minute(tmp_path: Path) -> None:
    """FFmpeg never answers the server's consent checks (RFC 7675); its media keeps the
    publication alive, so a 64 s clip sent in real time is recorded whole."""
    clip = _make_clip(tmp_path / "clip.mkv", 64)
    log = tmp_path / "ffmpeg.log"
    settings = make_settings(tmp_path, write_rate_per_s=100, query_rate_per_s=100)
    room, uid = "ff", "ffmpeg"
    async with running_server(settings) as server:
        webrtc = server.app.state.webrtc
        proc = await _ffmpeg_whip(clip, server.whip_url(room, uid),
                                  make_token(APPID, room, uid, SECRET), log)
        try:
            await _wait_for(lambda: _has_media(webrtc, room, uid), 20,
                            "no media from FFmpeg", proc, log)
            resid, recordid, t0 = await start(server, room, uid, 0)
            await asyncio.sleep(45)
            assert _has_media(webrtc, room, uid), "the FFmpeg publication was dropped"
            rc = await asyncio.wait_for(proc.wait(), 40)
            t1 = await stop(server, room, resid, recordid)
        finally:
            await _end(proc)
    assert rc == 0, log.read_text(errors="replace")[-3000:]
    probe = probe_playlist(playlist_of(server, room, recordid, uid))
    assert (probe.video_codec, probe.width, probe.height) == ("h264", 320, 240)
    assert probe.audio_codec == "aac" and probe.audio_frames > 1000
    assert probe.duration >= 58, (probe.duration, t1 - t0)


@needs_ffmpeg
@pytest.mark.parametrize("whip_server", [{"liveness_timeout_s": 2.0}], indirect=True)
async def test_silent_publisher_is_dropped_and_sending_one_is_kept(
    whip_server: WhipServer, tmp_path: Path
) -> None:
    """With a 2 s liveness timeout, FFmpeg (which never answers consent checks) stays published
    for 7 s while it sends; killed, it sends nothing more and is dropped within seconds."""
    s, room, uid = whip_server, "live", "ffmpeg"
    clip = _make_clip(tmp_path / "clip.mkv", 30)
    log = tmp_path / "ffmpeg.log"
    sub = s.hub.subscribe(s.appid, room, uid)
    proc = await _ffmpeg_whip(clip, s.url(room, uid), s.token(room, uid), log)
    try:
        await _wait_for(lambda: _has_media(s.webrtc, room, uid), 20, "no media from FFmpeg",
                        proc, log)
        await asyncio.sleep(7)
        assert s.hub.is_publishing(s.appid, room) and proc.returncode is None
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await _wait_for(lambda: not s.hub.is_publishing(s.appid, room), 8,
                        "a publisher that went away was not dropped")
        assert time.monotonic() - killed >= 1.5
    finally:
        await _end(proc)
        sub.close()


# -- ICE settings --------------------------------------------------------------------------------


def _candidates(sdp: str) -> list[tuple[str, int, str]]:
    """(address, port, type) of every a=candidate line."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            out.append((parts[4], int(parts[5]), parts[7]))
    return out


async def _publish_raw(s: WhipServer, room: str, uid: str) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.addTrack(TestPatternTrack(160, 120, 15, Pacer()))
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient() as http:
        r = await http.post(s.url(room, uid), content=pc.localDescription.sdp,
                            headers={"Content-Type": "application/sdp",
                                     "Authorization": f"Bearer {s.token(room, uid)}"})
    assert r.status_code == 201, r.text
    await pc.setRemoteDescription(RTCSessionDescription(r.text, "answer"))
    return pc, r.text


def _free_udp_range(size: int) -> tuple[int, int]:
    """A run of ``size`` UDP ports that are free right now, away from the ephemeral range."""
    for low in range(20000, 30000, size):
        socks = []
        try:
            for port in range(low, low + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("0.0.0.0", port))
            return low, low + size - 1
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free UDP port range")


PORTS = _free_udp_range(8)


@pytest.mark.parametrize(
    "whip_server", [{"announced_addresses": ["203.0.113.7"], "port_range": PORTS}], indirect=True)
async def test_announced_address_and_port_range(whip_server: WhipServer) -> None:
    """The answer offers the announced address beside the interface ones, every host
    candidate's socket is bound inside the port range, and loopback publishing still works."""
    s = whip_server
    low, high = PORTS
    sub = s.hub.subscribe(s.appid, "nat", "u")
    pc, answer = await _publish_raw(s, "nat", "u")
    try:
        candidates = _candidates(answer)
        announced = [c for c in candidates if c[0] == "203.0.113.7"]
        interface = [c for c in candidates if c[0] != "203.0.113.7"]
        assert announced and interface, candidates
        assert {port for _, port, _ in announced} <= {port for _, port, _ in interface}
        for address, port, _ in candidates:
            assert low <= port <= high, (address, port, PORTS)
        for address, port, _ in interface:  # really bound: the port is taken on that address
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                with pytest.raises(OSError) as taken:
                    probe.bind((address, port))
                assert taken.value.errno == errno.EADDRINUSE
        await _wait_for(lambda: any(p.frames > 0 for p in s.webrtc.sessions()), 10,
                        "no media over loopback with the ICE settings")
    finally:
        await pc.close()
        sub.close()


def test_ice_settings_are_checked_and_the_internals_pinned() -> None:
    """Invalid settings are refused when the ingest is built; the aiortc/aioice internals that
    _aiortc_transport reaches into are where it expects them (pinned versions)."""
    for bad in ({"announced_addresses": ["not-an-ip"]}, {"announced_addresses": ["host.example"]},
                {"port_range": (5000, 4000)}, {"port_range": (0, 10)},
                {"port_range": (1, 70000)}, {"liveness_timeout_s": 0}):
        with pytest.raises(ValueError):
            WebRtcIngest(RoomHub(), **bad)
    webrtc = WebRtcIngest(RoomHub(), port_range=(40000, 40100),
                          announced_addresses=[" 203.0.113.7", "2001:db8::1", "203.0.113.7"])
    assert webrtc.ice.announced_addresses == ("203.0.113.7", "2001:db8::1")
    assert webrtc.ice.port_range == (40000, 40100) and webrtc.ice.liveness_timeout_s == 30.0
    assert (transport.AIORTC_VERSION, transport.AIOICE_VERSION) == ("1.16.0", "0.13.0")
    transport.check_internals()
    assert b"ECDHE-RSA-AES128-GCM-SHA256" in transport.DTLS_CIPHERS
