"""Mixed recording cost: MixedHlsRecorder fed pre-encoded inputs as fast as it goes.

Three cases, each a template-3 (tiled) mix with audio of every input:
  (a) 4 inputs 320x240@15 → 640x480@15, 500 kbps
  (b) 4 inputs 640x360@15 → 1280x720@15, 1500 kbps
  (c) 9 inputs 640x360@15 → 1920x1080@15, 3000 kbps
The input clips (H.264 baseline with some grain, so they cost what camera video costs to decode,
and voice-like Opus) are encoded once, before anything is measured, and demuxed into memory as
the room plane would hand them over. Then, in the same run:
  - cloudrec: decode + compose + libx264 + audio mix + AAC + HLS segments, CPU of the process
    (all threads) per second of media = cores per recording at real time;
  - bare encode: libx264 with the same settings on the same canvas frames, composed beforehand
    (what the encoder alone costs: the floor of any mixer);
  - codec floor: the codec calls no mix can do without, by PyAV with nothing around them:
    every input's H.264 and Opus decoded, the mixed audio encoded to AAC, plus the bare encode
    (:class:`Floor`); cloudrec's cost over it is what composing, mixing and segmenting add;
  - ffmpeg CLI: Debian's ``ffmpeg`` decoding the same files, ``scale``/``crop`` + ``xstack`` and
    ``amix``, libx264 with the same settings, AAC 128 kbps, HLS (what a user would script).
cloudrec, the bare encode and the floor run ``BENCH_MIXED_ROUNDS`` (3) alternated rounds and
the medians are printed, so one busy moment of a shared box does not decide a ratio.

Then the starvation check (issue 10): a cloudrec server (one process) receives K real WebRTC
publishers (K = 20, pre-encoded 640x480@15 ~1 Mbps clips, in their own process), records each
as a source recording and mixes all of them at 1920x1080@15; once with the mix in its own
process (the default), once in a thread of the server (``CLOUDREC_MIX_WORKER=thread``). For
each: the share of sent frames the source recordings hold (the worst one and all together), the
server's and the mix child's CPU, the server's /healthz latency (how long its event loop keeps a
request waiting) and the mix's skipped frames.

    .venv/bin/python bench/bench_mixed.py        (BENCH_MIXED_SECONDS=10 by default)
    .venv/bin/python bench/bench_mixed.py starve (only the starvation check; BENCH_STARVE_K=20)
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import av
import httpx
import numpy as np
from common import (
    APPID,
    HEADERS,
    ServerProcess,
    cpu_seconds,
    headline,
    start_publishers,
    start_server,
    wait_ready,
)

from cloudrec.media.audio import open_aac
from cloudrec.media.mix.compose import Compositor, frame_from_planes, frame_planes
from cloudrec.media.mix.layout import placements_from_config, template_rects
from cloudrec.media.mix.output import AAC_BIT_RATE, VideoParams, default_threads, open_h264_encoder
from cloudrec.media.mix.recorder import MixedHlsRecorder
from cloudrec.mediatypes import EncodedFrame
from cloudrec.models.mixconfig import MixConfig
from cloudrec.webrtc.synthetic import make_clip

MEDIA_S = float(os.environ.get("BENCH_MIXED_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_MIXED_ROUNDS", "3"))
FPS = 15
GOAL_A = 0.12
FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"


@dataclass(frozen=True)
class Case:
    name: str
    inputs: int
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    kbps: int
    in_kbps: int


CASES = [
    Case("a", 4, (320, 240), (640, 480), 500, 300),
    Case("b", 4, (640, 360), (1280, 720), 1500, 800),
    Case("c", 9, (640, 360), (1920, 1080), 3000, 800),
]
DISTINCT_CLIPS = 4  # per input size; more inputs reuse them (same decoding cost)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def load_clip(path: str) -> list[tuple[int, EncodedFrame]]:
    """(90 kHz time, frame) of a clip's H.264 (Annex B) and Opus packets, as the room plane
    hands them over."""
    out: list[tuple[int, EncodedFrame]] = []
    with av.open(path) as container:
        video = container.streams.video[0]
        bsf = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", video)
        for packet in container.demux(video):
            for p in bsf.filter(packet) if packet.size else []:
                ticks = round(p.pts * p.time_base * 90000)
                out.append((ticks, EncodedFrame("video", "h264", bytes(p), ticks, 90000,
                                                ticks / 90000, bool(p.is_keyframe), 1)))
        container.seek(0)
        audio = container.streams.audio[0]
        for p in container.demux(audio):
            if p.size and p.pts is not None:
                sample = round(p.pts * p.time_base * 48000)
                ticks = sample * 90000 // 48000
                out.append((ticks, EncodedFrame("audio", "opus", bytes(p), sample, 48000,
                                                ticks / 90000, False, 1)))
    out.sort(key=lambda item: item[0])
    return out


def _mixconfig(case: Case) -> MixConfig:
    w, h = case.out_size
    return MixConfig.model_validate_json(json.dumps({"templateid": 3, "output": {
        "streamtype": 0, "videowidth": w, "videoheight": h, "videobitrate": case.kbps,
        "videofps": FPS, "videogop": 2 * FPS}}))


def run_cloudrec(case: Case, clips: list[list[tuple[int, EncodedFrame]]], out_dir: Path
                 ) -> tuple[float, float, MixedHlsRecorder]:
    """(cpu seconds, wall seconds, recorder) for MEDIA_S of media."""
    uids = [f"u{i}" for i in range(case.inputs)]
    rec = MixedHlsRecorder(out_dir, "bench_mix", _mixconfig(case), "room")
    rec.set_publishers(uids)
    feeds = [(("room", uid), clips[i % len(clips)]) for i, uid in enumerate(uids)]
    positions = [0] * len(feeds)
    frames = int(MEDIA_S * FPS)
    c0, t0 = _cpu(), time.perf_counter()
    for n in range(frames):
        now = n * 90000 // FPS
        for i, (key, clip) in enumerate(feeds):
            pos = positions[i]
            while pos < len(clip) and clip[pos][0] <= now:
                rec.push(key, clip[pos][1])
                pos += 1
            positions[i] = pos
        rec.advance_to(now)
    rec.close()
    return _cpu() - c0, time.perf_counter() - t0, rec


def composed_frames(case: Case, paths: list[str]) -> list[av.VideoFrame]:
    """The canvas frames of the mix, composed beforehand (not measured)."""
    config = _mixconfig(case)
    uids = [f"u{i}" for i in range(case.inputs)]
    placements = placements_from_config(config, "room", uids)
    comp = Compositor.from_output(config.output)
    decoded = []
    for i in range(case.inputs):
        with av.open(paths[i % len(paths)]) as c:
            decoded.append([f for _, f in zip(range(int(MEDIA_S * FPS)), c.decode(video=0))])
    out = []
    for n in range(int(MEDIA_S * FPS)):
        canvas = comp.compose([(p, decoded[i][min(n, len(decoded[i]) - 1)])
                               for i, p in enumerate(placements)])
        out.append(frame_from_planes(*frame_planes(canvas)))  # the compositor keeps its canvas
    return out


def run_bare_encode(case: Case, frames: list[av.VideoFrame]) -> float:
    """CPU seconds of libx264 alone on the composed frames, with the mix's settings."""
    w, h = case.out_size
    enc = open_h264_encoder(VideoParams(w, h, FPS, case.kbps, 2 * FPS))
    seg = 6 * FPS
    c0 = _cpu()
    for n, frame in enumerate(frames):
        frame.pts = n
        frame.pict_type = av.video.frame.PictureType.I if n % seg == 0 else (
            av.video.frame.PictureType.NONE)
        enc.encode(frame)
    enc.encode(None)
    return _cpu() - c0


@dataclass
class Floor:
    """CPU seconds per second of media of the codec calls a mix cannot do without, made by
    PyAV with nothing around them: every input's H.264 and Opus decoded, the mixed audio
    encoded to AAC, and the bare libx264 encode."""

    h264: float
    opus: float
    aac: float
    x264: float

    @property
    def total(self) -> float:
        return self.h264 + self.opus + self.aac + self.x264

    def parts(self) -> str:
        return (f"H.264 decodes {self.h264:.4f} + Opus decodes {self.opus:.4f} + AAC "
                f"{self.aac:.4f} + libx264 {self.x264:.4f}")


def run_floor(case: Case, clips: list[list[tuple[int, EncodedFrame]]], bare: float) -> Floor:
    """The codec floor of ``case`` (see :class:`Floor`); ``bare`` is its measured libx264."""
    end = int(MEDIA_S * 90000)
    video, audio, pcm = 0.0, 0.0, []
    for i in range(case.inputs):
        frames = [f for ticks, f in clips[i % len(clips)] if ticks < end]
        vdec = av.CodecContext.create("h264", "r")
        vdec.thread_count = 1  # as the mix decodes
        adec = av.CodecContext.create("opus", "r")
        adec.sample_rate, adec.layout = 48000, "stereo"
        c0 = _cpu()
        for f in frames:
            if f.kind == "video":
                vdec.decode(av.Packet(f.data))
        c1 = _cpu()
        decoded = [d for f in frames if f.kind == "audio" for d in adec.decode(av.Packet(f.data))]
        audio += _cpu() - c1
        video += c1 - c0
        pcm.append(np.concatenate([d.to_ndarray() for d in decoded], axis=1))
    n = min(p.shape[1] for p in pcm) // 1024 * 1024
    mixed = np.clip(sum(p[:, :n] for p in pcm), -0.98, 0.98).astype(np.float32)
    aac_frames = []
    for start in range(0, n, 1024):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mixed[:, start:start + 1024]),
                                           format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = 48000, start
        aac_frames.append(frame)
    enc = open_aac(2, AAC_BIT_RATE)  # FFmpeg's encoder with the mix's settings, nothing skipped
    c0 = _cpu()
    for frame in aac_frames:
        enc.encode(frame)
    enc.encode(None)
    aac = _cpu() - c0
    return Floor(video / MEDIA_S, audio / MEDIA_S, aac / MEDIA_S, bare)


def ffmpeg_command(case: Case, paths: list[str], out: Path) -> list[str]:
    w, h = case.out_size
    rects = template_rects(3, case.inputs, w, h)
    cmd = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    for i in range(case.inputs):
        cmd += ["-i", paths[i % len(paths)]]
    chains = [f"[{i}:v]scale={r.w}:{r.h}:force_original_aspect_ratio=increase,"
              f"crop={r.w}:{r.h},setsar=1[v{i}]" for i, r in enumerate(rects)]
    stack = "".join(f"[v{i}]" for i in range(case.inputs))
    layout = "|".join(f"{r.x}_{r.y}" for r in rects)
    chains.append(f"{stack}xstack=inputs={case.inputs}:layout={layout}:fill=black,"
                  f"pad={w}:{h}:0:0:black,fps={FPS}[v]")
    chains.append("".join(f"[{i}:a]" for i in range(case.inputs))
                  + f"amix=inputs={case.inputs}:normalize=0[a]")
    cmd += ["-filter_complex", ";".join(chains), "-map", "[v]", "-map", "[a]", "-t", str(MEDIA_S),
            "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
            "-b:v", f"{case.kbps}k", "-g", str(2 * FPS), "-bf", "0",
            "-threads:v", str(default_threads(w, h)),
            "-force_key_frames", "expr:gte(t,n_forced*6)",
            "-c:a", "aac", "-b:a", "128k", "-ar", "48000", "-ac", "2",
            "-f", "hls", "-hls_time", "6", "-hls_playlist_type", "event", str(out)]
    return cmd


def run_ffmpeg(case: Case, paths: list[str], out_dir: Path) -> tuple[float, float] | None:
    if not Path(FFMPEG).exists():
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = ffmpeg_command(case, paths, out_dir / "ffmpeg.m3u8")
    c0, t0 = _child_cpu(), time.perf_counter()
    subprocess.run(cmd, check=True)
    return _child_cpu() - c0, time.perf_counter() - t0


# per input (size, kbps): the clip paths and each clip demuxed into memory
Inputs = dict[tuple[int, int], tuple[list[str], list[list[tuple[int, EncodedFrame]]]]]


def make_inputs(tmp: Path) -> Inputs:
    """Encode the input clips once (DISTINCT_CLIPS per size) and demux them into memory."""
    out = {}
    for size, kbps in sorted({(c.in_size, c.in_kbps) for c in CASES}):
        paths = []
        for i in range(DISTINCT_CLIPS):
            path = tmp / f"in_{size[0]}x{size[1]}_{i}.mkv"
            make_clip(str(path), seconds=MEDIA_S + 0.5, width=size[0], height=size[1], fps=FPS,
                      bitrate=kbps * 1000, tone_hz=220.0 * (i + 2), voice=True)
            paths.append(str(path))
        out[size] = (paths, [load_clip(p) for p in paths])
    return out


def run() -> list[str]:
    lines = []
    with tempfile.TemporaryDirectory(prefix="cloudrec-bench-mixed-") as tmp_name:
        tmp = Path(tmp_name)
        inputs = make_inputs(tmp)
        for case in CASES:
            paths, clips = inputs[case.in_size]
            canvases = composed_frames(case, paths)
            runs, bares, floors = [], [], []
            for i in range(ROUNDS):  # alternated, medians: a busy moment skews one round
                runs.append(run_cloudrec(case, clips, tmp / f"rec_{case.name}_{i}"))
                bares.append(run_bare_encode(case, canvases) / MEDIA_S)
                floors.append(run_floor(case, clips, bares[-1]))
            cpu, wall, rec = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
            cores = cpu / MEDIA_S
            bare = statistics.median(bares)
            floor = Floor(*(statistics.median(getattr(f, name) for f in floors)
                            for name in ("h264", "opus", "aac", "x264")))
            ff = run_ffmpeg(case, paths, tmp / f"ff_{case.name}")
            s = rec.stats
            stages = (f"decode {s.decode_s / MEDIA_S:.3f}, compose {s.compose_s / MEDIA_S:.3f}, "
                      f"encode {s.encode_s / MEDIA_S:.3f}, audio {s.audio_s / MEDIA_S:.3f}")
            w, h = case.out_size
            line = (f"mixed ({case.name}) {case.inputs}x{case.in_size[0]}x{case.in_size[1]} -> "
                    f"{w}x{h}@{FPS} {case.kbps} kbps: {cores:.3f} cores/recording at real time")
            if case.name == "a":
                line += f" (goal <= {GOAL_A}; peer ~0.17)"
            line += (f"   real-time factor x{MEDIA_S / wall:.1f}   vs bare libx264 encode "
                     f"{cores / bare:.2f}x ({bare:.3f} cores)")
            if ff is None:
                line += "   ffmpeg CLI: skipped (no /usr/bin/ffmpeg)"
            else:
                line += (f"   vs ffmpeg CLI {cores / (ff[0] / MEDIA_S):.2f}x "
                         f"({ff[0] / MEDIA_S:.3f} cores, x{MEDIA_S / ff[1]:.1f} real time)")
            line += (f"   codec floor {floor.total:.3f} cores = {floor.total / bare:.2f}x bare "
                     f"libx264, cloudrec {cores / floor.total:.2f}x the floor ({floor.parts()})")
            line += f"   [wall per stage, s/s: {stages}; {len(rec.segments)} segments]"
            lines.append(line)
            if case.name == "a":
                headline(f"mixed (a) 4x320x240 -> 640x480@15: {cores:.3f} cores = "
                         f"{cores / bare:.2f}x bare libx264 (goal <= 1.3x); the codec calls alone "
                         f"are {floor.total / bare:.2f}x, so cloudrec adds "
                         f"{(cores - floor.total) / bare:.2f}x of libx264 around them")
    return lines + run_starvation_pair()


# -- starvation: WebRTC receive next to a 1080p mix ------------------------------------------------

STARVE_K = int(os.environ.get("BENCH_STARVE_K", "20"))
STARVE_S = float(os.environ.get("BENCH_STARVE_SECONDS", "15"))
STARVE_STORAGE = {"vender": 101, "endpoint": "local", "bucket": "starve", "accesskey": "-",
                  "secretkey": "-"}


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


def _mix_children(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        try:
            if b"cloudrec.media.mix.worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            pass
    return found


def _received_share(playlist: Path) -> float:
    """Frames recorded / frames their PTS span holds (a source recording's PTS follow the RTP
    clock, so a frame lost on the way in is a hole)."""
    if not playlist.exists():
        return 0.0
    with av.open(str(playlist)) as container:
        pts = sorted(p.pts for p in container.demux(video=0) if p.size and p.pts is not None)
    return len(pts) / (round((pts[-1] - pts[0]) * FPS / 90000) + 1) if pts else 0.0


def _start(client: httpx.Client, server: ServerProcess, body: dict[str, object]) -> str:
    for _ in range(50):
        r = client.post(server.api("startrecord"), json=body).json()
        if r["code"] != 4005:
            break
        time.sleep(0.1)
    if r["code"] != 0:
        raise RuntimeError(f"startrecord: {r}")
    return str(r["recordid"])


def run_starvation(mode: str, clip: Path, tmp: Path) -> str:
    """One server, K publishers, K source recordings + one 1080p mix; see the module doc."""
    old = os.environ.get("CLOUDREC_MIX_WORKER")
    os.environ["CLOUDREC_MIX_WORKER"] = mode
    try:
        server = start_server(tmp / f"data_{mode}", write_rate_per_s=1_000_000,
                              query_rate_per_s=1_000_000, idle_timeout_s=60, workers=1)
    finally:
        if old is None:
            os.environ.pop("CLOUDREC_MIX_WORKER", None)
        else:
            os.environ["CLOUDREC_MIX_WORKER"] = old
    room, uids = "starve", [f"u{i}" for i in range(STARVE_K)]
    pubs = start_publishers(server, room, uids, clip)
    try:
        wait_ready(pubs)
        time.sleep(1)
        with httpx.Client(headers=HEADERS, timeout=30) as client:
            def apply() -> str:
                return str(client.post(server.api("applyrecord"), json={}).json()["resid"])

            sources = []
            for uid in uids:
                resid = apply()
                sources.append((uid, resid, _start(client, server, {
                    "resid": resid, "appid": APPID, "roomid": room, "recordtype": 0,
                    "streamtype": 2, "uid": uid, "storagecfg": STARVE_STORAGE})))
            mix_resid = apply()
            mix = _start(client, server, {
                "resid": mix_resid, "appid": APPID, "roomid": room, "recordtype": 0,
                "streamtype": 1, "storagecfg": STARVE_STORAGE, "mixconfig": {
                    "templateid": 3, "output": {"streamtype": 0, "videowidth": 1920,
                                                "videoheight": 1080, "videobitrate": 3000,
                                                "videofps": FPS, "videogop": 2 * FPS}}})
            time.sleep(2)
            mixers = _mix_children(server.proc.pid)
            c0 = cpu_seconds(server.proc.pid)
            m0 = sum(cpu_seconds(p) for p in mixers)
            t0 = time.monotonic()
            latencies = []
            load = os.getloadavg()[0]
            while time.monotonic() - t0 < STARVE_S:
                a = time.perf_counter()
                client.get(f"{server.base}/healthz")
                latencies.append(time.perf_counter() - a)
                time.sleep(0.05)
            wall = time.monotonic() - t0
            server_cores = (cpu_seconds(server.proc.pid) - c0) / wall
            mix_cores = (sum(cpu_seconds(p) for p in mixers) - m0) / wall
            info = client.get(server.api(f"queryrecord/{room}/{mix}")).json()["data"]
            for _uid, resid, recordid in sources:
                client.post(server.api("stoprecord"), json={
                    "resid": resid, "appid": APPID, "roomid": room, "recordid": recordid})
            client.post(server.api("stoprecord"), json={
                "resid": mix_resid, "appid": APPID, "roomid": room, "recordid": mix})
    finally:
        pubs.terminate()
        pubs.wait(10)
        server.stop()
    root = server.data_dir / "storage" / STARVE_STORAGE["bucket"]
    shares = [_received_share(root / f"{APPID}_{room}_{recordid}_{uid}.m3u8")
              for uid, _, recordid in sources]
    latencies.sort()
    where = "own process" if mode == "process" else "server thread"
    return (f"starvation, mix in {where}: {STARVE_K} WebRTC streams 640x480@15 recorded + "
            f"1080p15 mix of all: frames recorded {min(shares):.2%} worst / "
            f"{sum(shares) / len(shares):.2%} mean (goal >= 99%)   server "
            f"{server_cores:.2f} cores, mix process {mix_cores:.2f} cores   /healthz p50 "
            f"{latencies[len(latencies) // 2] * 1000:.1f} ms p99 "
            f"{latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms max "
            f"{latencies[-1] * 1000:.1f} ms   mix: {info.get('framesskipped')} frames skipped, "
            f"{info.get('framesdropped')} dropped, {info.get('segments')} segments   "
            f"[{os.cpu_count()} cores, load average {load:.1f} at the start]")


def run_starvation_pair() -> list[str]:
    lines = []
    with tempfile.TemporaryDirectory(prefix="cloudrec-bench-starve-") as tmp_name:
        tmp = Path(tmp_name)
        clip = Path(make_clip(str(tmp / "clip.mkv"), seconds=6, width=640, height=480, fps=FPS,
                            bitrate=1_000_000, voice=True, audio_channels=1))
        for mode in ("process", "thread"):
            lines.append(run_starvation(mode, clip, tmp))
    return lines


if __name__ == "__main__":
    print("\n".join(run_starvation_pair() if sys.argv[1:] == ["starve"] else run()))
