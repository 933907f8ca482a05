#!/usr/bin/env bash
# Installs the Debian packages cloudrec needs, when they are missing.
#   venv:  python3-venv, when Debian's Python cannot make a virtual environment yet.
#   serve: fonts-noto-cjk (NotoSansCJK, the font of mixed recordings' text and timestamp
#          watermarks, so Chinese renders; without it they fall back to Pillow's default font),
#          libsrt1.5-gnutls (the SRT listener of push ingest binds it through ctypes),
#          chromium (a web page recording, mixconfig.webpage, runs one headless chromium),
#          chromium-headless-shell where Debian has it (the same browser without its desktop UI,
#          half the memory; web page recordings use it when it is installed).
#   test:  also ffmpeg (ffprobe reads recordings independently of PyAV; the ffmpeg CLI is the
#          benchmark reference and, in listen mode, the RTMP server and reader of the live-push
#          test, tests/e2e/test_pause_push.py; PyAV wheels bundle their own FFmpeg, so the service does not need
#          it), chromium (a real browser publishes through the /publish page in the tests),
#          chromium-driver (selenium drives chromium through the console in tests/e2e/test_console.py),
#          postgresql and redis-server (tests/services.py runs real ones for the cluster paths).
#          GStreamer's webrtcbin with x264/opus and python3-gi (tests/e2e/test_interop.py publishes
#          from a real webrtcbin pipeline, run with the system Python).
#          gir1.2-gst-rtsp-server-1.0 (tests/e2e/test_ingress.py pulls from a GStreamer RTSP server
#          serving H.264 + G.711 like an IP camera).
#          janus and iproute2 (tests/e2e/test_janus.py runs Janus's VideoRoom, with a configuration
#          of its own, in a network namespace it creates with ip netns and a veth pair, and mirrors
#          its publishers).
#          xvfb (bench/bench_webpage.py compares a web page recording with ffmpeg's x11grab
#          of the same page on a virtual display).
set -euo pipefail
purpose=${1:-test}
need=()
if [ "$purpose" = venv ]; then
  need+=(python3-venv "python$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv")
else
  [ -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ] || need+=(fonts-noto-cjk)
  compgen -G '/usr/lib/*/libsrt*.so.1.5*' >/dev/null || need+=(libsrt1.5-gnutls)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  [ -x /usr/lib/chromium/chromium-headless-shell ] || ! apt-cache show chromium-headless-shell \
    >/dev/null 2>&1 || need+=(chromium-headless-shell)
  if [ "$purpose" != serve ]; then
    command -v ffprobe >/dev/null 2>&1 || need+=(ffmpeg)
    command -v Xvfb >/dev/null 2>&1 || need+=(xvfb)
    command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need+=(postgresql)
    command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
    gst=(/usr/lib/*/gstreamer-1.0)
    for pair in webrtc:gstreamer1.0-plugins-bad nice:gstreamer1.0-nice rtp:gstreamer1.0-plugins-good \
                x264:gstreamer1.0-plugins-ugly; do
      [ -e "${gst[0]}/libgst${pair%%:*}.so" ] || need+=("${pair#*:}")
    done
    compgen -G '/usr/lib/*/girepository-1.0/GstWebRTC-1.0.typelib' >/dev/null \
      || need+=(gir1.2-gst-plugins-bad-1.0)
    /usr/bin/python3 -c 'import gi' >/dev/null 2>&1 || need+=(python3-gi)
    compgen -G '/usr/lib/*/girepository-1.0/GstRtspServer-1.0.typelib' >/dev/null \
      || need+=(gir1.2-gst-rtsp-server-1.0)
    command -v janus >/dev/null 2>&1 || need+=(janus)
    command -v ip >/dev/null 2>&1 || need+=(iproute2)
  fi
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
  echo "setup-system: missing ${need[*]} and no root/sudo to install them" >&2; exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
