// The console's live view and its writes: "watch live" plays one publisher over WHEP (a
// recvonly RTCPeerConnection; the offer goes to /whep/... with a play token the console mints
// for the signed-in operator; DELETE on close), and a recording is started or stopped through
// the console's JSON writes (always a JSON body: the console's guard against forged requests).
"use strict";

const live = { pc: null, session: null, key: null, timer: null };

async function postJSON(path, body) {
  const response = await fetch(path, {
    method: "POST", credentials: "same-origin", cache: "no-store",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}),
  });
  let data = {};
  try { data = await response.json(); } catch (_err) { data = {}; }
  if (!response.ok) {
    const err = new Error((data.code !== undefined ? data.code + ": " : "HTTP " + response.status + ": ") +
      (data.message || data.error || response.statusText));
    err.code = data.code;
    throw err;
  }
  return data;
}

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((done) => {
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, 2000);  // go on with the candidates gathered so far
  });
}

// The receiver's mean jitter-buffer delay of the video (seconds): how far behind the packets
// the picture plays, the server-to-screen share of the latency.
async function playoutDelay(pc) {
  const stats = await pc.getStats();
  for (const s of stats.values()) {
    if (s.type === "inbound-rtp" && s.kind === "video" && s.jitterBufferEmittedCount) {
      return s.jitterBufferDelay / s.jitterBufferEmittedCount;
    }
  }
  return null;
}

function liveState(text) { document.getElementById("live-state").textContent = text; }

async function watchLive(appid, roomid, uid) {
  closeLive();
  const key = appid + "/" + roomid + "/" + uid;
  live.key = key;
  document.getElementById("live-section").hidden = false;
  document.getElementById("live-title").textContent = "app " + appid + " · " + roomid + " / " + uid;
  const video = document.getElementById("live");
  liveState("connecting…");
  try {
    const grant = await postJSON("/console/api/playtoken", { appid, roomid, uid });
    if (live.key !== key) return;
    const pc = new RTCPeerConnection();
    live.pc = pc;
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    const remote = new MediaStream();
    pc.addEventListener("track", (event) => {
      remote.addTrack(event.track);
      video.srcObject = remote;
      video.play().catch(() => {});
    });
    pc.addEventListener("connectionstatechange", () => {
      if (live.pc === pc) liveState(pc.connectionState);
    });
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const response = await fetch(grant.whep, {
      method: "POST", body: pc.localDescription.sdp, cache: "no-store",
      headers: { "Content-Type": "application/sdp", "Authorization": "Bearer " + grant.token },
    });
    const answer = await response.text();
    if (response.status !== 201) throw new Error("WHEP " + response.status + ": " + answer.trim());
    const session = new URL(response.headers.get("Location"), location.href).href;
    if (live.pc !== pc) { fetch(session, { method: "DELETE" }).catch(() => {}); return; }
    live.session = session;
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
    live.timer = setInterval(async () => {
      if (!video.videoWidth || live.pc !== pc) return;
      const delay = await playoutDelay(pc);
      video.dataset.delay = delay === null ? "" : delay.toFixed(3);
      liveState(pc.connectionState + " · " + video.videoWidth + "×" + video.videoHeight +
        (delay === null ? "" : " · buffered " + Math.round(delay * 1000) + " ms"));
    }, 1000);
  } catch (err) {
    if (live.key === key) liveState("cannot watch: " + err.message);
  }
}

function closeLive() {
  clearInterval(live.timer);
  live.timer = null;
  const pc = live.pc;
  // DELETE first, then close: a closed peer connection ends the session on its own
  if (live.session) {
    fetch(live.session, { method: "DELETE", keepalive: true }).catch(() => {})
      .finally(() => { if (pc) pc.close(); });
  } else if (pc) pc.close();
  live.pc = null;
  live.session = null;
  live.key = null;
  const video = document.getElementById("live");
  video.srcObject = null;
}

function notice(text, bad) {
  const box = document.getElementById("notice");
  box.hidden = false;
  box.className = bad ? "error" : "muted";
  box.textContent = text;
}

// kinds: the publisher's tracks ("audio", "video"); the recording takes what it publishes
async function startRecording(appid, roomid, uid, kinds) {
  const audio = !kinds || kinds.includes("audio"), video = !kinds || kinds.includes("video");
  const recordtype = audio && video ? 0 : (video ? 1 : 2);
  try {
    const started = await postJSON("/console/api/recordings", { appid, roomid, uid, recordtype });
    notice("started recording " + started.recordid + " of " + roomid + " / " + uid, false);
    return started;
  } catch (err) {
    notice("cannot start a recording of " + roomid + " / " + uid + ": " + err.message, true);
    return null;
  }
}

async function stopRecording(recordid) {
  try {
    const stopped = await postJSON("/console/api/recordings/" + encodeURIComponent(recordid) + "/stop", {});
    notice("stopped recording " + recordid + " (" + stopped.files + " files)", false);
    return stopped;
  } catch (err) {
    notice("cannot stop " + recordid + ": " + err.message, true);
    return null;
  }
}

document.getElementById("live-close").addEventListener("click", () => {
  closeLive();
  document.getElementById("live-section").hidden = true;
});
window.addEventListener("pagehide", closeLive);
window.cloudrecLive = { watchLive, closeLive, startRecording, stopRecording, live };
