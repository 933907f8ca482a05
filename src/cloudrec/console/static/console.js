// The cloudrec console: polls the node's /console/api/* every POLL_MS and draws rooms,
// recordings, workers and charts (charts.js); plays a recording's HLS with the bundled hls.js
// and a publisher live over WHEP (live.js), which also starts and stops recordings. Everything is built
// with DOM calls and textContent (never innerHTML), so names and error messages from the
// server are shown, never interpreted.
"use strict";

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);
const state = { apps: null, playing: null, hls: null, timer: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function getJSON(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) {
    location.assign("/login?next=" + encodeURIComponent(location.pathname));
    throw new Error("signed out");
  }
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

// -- formatting --------------------------------------------------------------------------------

function ago(seconds) {
  if (seconds < 60) return Math.round(seconds) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.round(seconds % 60) + " s";
  return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
}
function since(epochSeconds) {
  if (!epochSeconds) return "–";
  const d = new Date(epochSeconds * 1000);
  return d.toLocaleTimeString() + " (" + ago(Date.now() / 1000 - epochSeconds) + " ago)";
}
function clock(ms) { return ms ? new Date(ms).toLocaleString() : "–"; }
function duration(s) {
  s = Number(s || 0);
  const m = Math.floor(s / 60);
  return (m ? m + ":" + String(Math.floor(s % 60)).padStart(2, "0") : s.toFixed(1) + " s");
}
function num(x, digits) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }

// -- rooms -------------------------------------------------------------------------------------

function drawRooms(rooms) {
  $("rooms-count").textContent = rooms.length ? "(" + rooms.length + ")" : "";
  const box = $("rooms");
  box.replaceChildren();
  if (!rooms.length) { box.append(el("p", { class: "muted" }, "No room is publishing.")); return; }
  for (const room of rooms) {
    const rows = room.publishers.map((p) => el("tr", { "data-uid": p.uid },
      el("td", {}, el("code", {}, p.uid)),
      el("td", {}, [p.video_codec, p.audio_codec].filter(Boolean).join(" + ") || "–"),
      el("td", {}, p.width ? p.width + "×" + p.height : "–"),
      el("td", {}, p.fps ? num(p.fps, 1) + " fps" : "–"),
      el("td", {}, num(p.kbps, 0) + " kbps"),
      el("td", {}, since(p.connected_at)),
      el("td", { class: "muted" }, p.worker),
      el("td", {}, el("button", { class: "play live", type: "button", "data-action": "watch",
        onclick: () => window.cloudrecLive.watchLive(room.appid, room.roomid, p.uid) }, "● Watch live"), " ",
        el("button", { class: "record", type: "button", "data-action": "record",
          onclick: async () => { await window.cloudrecLive.startRecording(room.appid, room.roomid, p.uid, p.kinds); schedule(); } },
          "Record"))));
    box.append(el("div", { class: "room", "data-room": room.appid + "/" + room.roomid },
      el("h3", {}, el("code", {}, room.roomid), el("span", { class: "muted" }, "app " + room.appid),
        el("span", { class: "muted" }, room.publishers.length + " publisher" +
          (room.publishers.length === 1 ? "" : "s"))),
      rows.length ? el("table", {},
        el("thead", {}, el("tr", {}, ["uid", "codecs", "picture", "frame rate", "bitrate",
          "connected since", "worker", ""].map((h) => el("th", {}, h)))),
        el("tbody", {}, rows)) : el("p", { class: "muted" }, "No publisher (held by " + room.worker + ")")));
  }
}

// -- recordings --------------------------------------------------------------------------------

function eventChips(rec) {
  if (!rec.callbackurl) return el("span", { class: "muted" }, "no callbackurl");
  const groups = new Map();
  for (const e of rec.events) {
    const key = e.type + "|" + e.state;
    const g = groups.get(key) || { type: e.type, state: e.state, n: 0, last: e };
    g.n += 1; g.last = e;
    groups.set(key, g);
  }
  if (!groups.size) return el("span", { class: "muted" }, "none yet");
  return el("div", { class: "chips" }, [...groups.values()].map((g) => {
    const e = g.last;
    const title = e.state === "pending"
      ? "not delivered yet: " + e.attempts + " attempt(s)" + (e.last_error ? ", last: " + e.last_error : "")
        + (e.next_ms ? ", next " + clock(e.next_ms) : "")
      : e.state + " " + clock(e.finished_ms) + (e.last_error ? " (" + e.last_error + ")" : "");
    return el("span", { class: "chip " + e.state, title: title },
      e.type + (g.n > 1 ? " ×" + g.n : "") + " · " + e.state);
  }));
}

function drawRecordings(recordings) {
  const body = $("recordings");
  body.replaceChildren();
  $("recordings-empty").hidden = recordings.length > 0;
  for (const r of recordings) {
    const who = r.uid ? r.roomid + " / " + r.uid : r.roomid;
    body.append(el("tr", { "data-recordid": r.recordid, "data-state": r.state },
      el("td", {}, el("code", { title: r.recordid }, r.recordid.slice(0, 12)), el("br"),
        el("span", { class: "muted" }, "app " + r.appid + " · " + who), el("br"),
        el("span", { class: "muted" }, clock(r.createtime))),
      el("td", {}, r.type, el("br"), el("span", { class: "muted" }, r.tracks),
        r.webpage ? el("div", { class: "muted webpage" }, r.webpage) : null,
        r.snapshot ? el("img", { class: "snapshot", src: r.snapshot, alt: "last snapshot" }) : null),
      el("td", {}, el("span", { class: "state " + r.state }, r.state),
        r.error ? el("div", { class: "warn" }, r.error) : null),
      el("td", {}, r.stopreason || "–"),
      el("td", {}, duration(r.duration)),
      el("td", {}, r.segments + " (" + r.storedfiles + " / " + r.pendingfiles + ")"),
      el("td", { class: r.storageerror ? "warn" : "" }, r.storageerror || "–"),
      el("td", {}, r.warnings.length ? r.warnings.map((w) => el("div", { class: "warn" }, w)) : "–"),
      el("td", {}, r.framesskipped + " / " + r.framesdropped),
      el("td", {}, eventChips(r)),
      el("td", {}, r.player ? el("button", { class: "play", type: "button",
        onclick: () => play(r) }, r.active ? "▶ Live" : "▶ Play") :
        el("span", { class: "muted", title: "only local storage (vender 101) is readable here" }, "–"),
        r.active ? el("button", { class: "stop", type: "button", "data-action": "stop",
          onclick: async () => { await window.cloudrecLive.stopRecording(r.recordid); schedule(); } },
          "■ Stop") : null)));
  }
}

function drawIngresses(data) {
  const body = $("ingresses");
  body.replaceChildren();
  $("ingresses-empty").hidden = data.ingresses.length > 0;
  for (const i of data.ingresses) {
    const who = i.uid ? i.roomid + " / " + i.uid : i.roomid;
    body.append(el("tr", { "data-ingressid": i.ingressid, "data-state": i.state },
      el("td", {}, el("code", {}, i.ingressid), el("br"),
        el("span", { class: "muted" }, "app " + i.appid + " · " + who)),
      el("td", {}, i.kind),
      el("td", {}, el("span", { class: "state " + i.state }, i.state),
        i.error ? el("div", { class: "warn" }, i.error) : null),
      el("td", {}, clock(i.since)),
      el("td", {}, i.publishers.length ? i.publishers.map((p) => el("div", {},
        p.uid + " · " + (p.video_codec || "–") + "/" + (p.audio_codec || "–") + " · " +
        num(p.kbps, 0) + " kbps")) : "–"),
      el("td", {}, String(i.reconnects)),
      el("td", {}, el("code", {}, i.url))));
  }
  const rules = $("rules");
  rules.replaceChildren();
  $("rules-empty").hidden = data.rules.length > 0;
  for (const r of data.rules) {
    rules.append(el("tr", { "data-ruleid": r.ruleid },
      el("td", {}, el("code", {}, r.ruleid)), el("td", {}, String(r.appid)),
      el("td", {}, el("code", {}, r.roomid)),
      el("td", {}, r.streamtype === 1 ? "mixed" : "source"),
      el("td", {}, ["audio+video", "video", "audio"][r.recordtype] || String(r.recordtype)),
      el("td", {}, clock(r.createtime))));
  }
}

// -- player ------------------------------------------------------------------------------------

function play(rec) {
  stopPlayer();
  const video = $("player");
  $("player-section").hidden = false;
  $("player-title").textContent = rec.recordid + (rec.active ? " (live)" : "");
  state.playing = rec.recordid;
  if (window.Hls && window.Hls.isSupported()) {
    const hls = new window.Hls({ liveSyncDurationCount: 2, enableWorker: true });
    state.hls = hls;
    hls.on(window.Hls.Events.ERROR, (_event, data) => {
      $("player-state").textContent = (data.fatal ? "error: " : "retrying: ") + data.details;
      if (data.fatal && data.type === window.Hls.ErrorTypes.NETWORK_ERROR) hls.startLoad();
      else if (data.fatal && data.type === window.Hls.ErrorTypes.MEDIA_ERROR) hls.recoverMediaError();
    });
    hls.on(window.Hls.Events.LEVEL_LOADED, (_event, data) => {
      $("player-state").textContent = (data.details.live ? "live, " : "") +
        data.details.fragments.length + " segments";
    });
    hls.loadSource(rec.player);
    hls.attachMedia(video);
  } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
    video.src = rec.player;  // Safari plays HLS itself
  } else {
    $("player-state").textContent = "this browser cannot play HLS";
    return;
  }
  video.play().catch(() => { $("player-state").textContent = "press play"; });
}

function stopPlayer() {
  if (state.hls) { state.hls.destroy(); state.hls = null; }
  const video = $("player");
  video.removeAttribute("src");
  video.load();
  state.playing = null;
}

// -- nodes -------------------------------------------------------------------------------------

function drawNodes(nodes) {
  const box = $("nodes");
  box.replaceChildren();
  for (const n of nodes) {
    box.append(el("div", { class: "node" },
      el("h3", {}, el("code", {}, n.node), " ", el("span", { class: "muted" }, n.public_url)),
      el("table", { class: "workers" },
        el("thead", {}, el("tr", {}, ["worker", "load", "CPU (cores)", "recordings", "publishers",
          "rooms", "state"].map((h) => el("th", {}, h)))),
        el("tbody", {}, n.workers.map((w) => el("tr", { "data-worker": w.id },
          el("td", {}, el("code", {}, w.id), el("span", { class: "muted" }, " pid " + w.pid)),
          el("td", {}, el("span", { class: "bar" + (w.load > 0.8 ? " hot" : "") },
            el("span", { style: null })), Math.round((w.load || 0) * 100) + " %"),
          el("td", {}, num(w.cpu, 2) + " of " + num(w.capacity, 2)),
          el("td", {}, w.recordings + (w.max_recordings ? " of " + w.max_recordings : "")),
          el("td", {}, w.publishers),
          el("td", {}, w.rooms.length),
          el("td", { class: w.full ? "warn" : "" }, w.draining ? "draining" : (w.full ? "full: " + w.full : "taking work"))))))));
  }
  // Bar widths through the CSSOM: the page's Content-Security-Policy allows no inline styles.
  box.querySelectorAll("tr[data-worker]").forEach((row, i) => {
    const w = nodes.flatMap((n) => n.workers)[i];
    row.querySelector(".bar > span").style.width = Math.min(100, Math.round((w.load || 0) * 100)) + "%";
  });
}

// -- polling -----------------------------------------------------------------------------------

function recordingsQuery() {
  const q = new URLSearchParams({ state: $("f-state").value, limit: "50" });
  if ($("f-app").value) q.set("appid", $("f-app").value);
  if ($("f-room").value.trim()) q.set("roomid", $("f-room").value.trim());
  return "/console/api/recordings?" + q;
}

async function refresh() {
  try {
    const [overview, rooms, recordings, samples] = await Promise.all([
      getJSON("/console/api/overview"), getJSON("/console/api/rooms"), getJSON(recordingsQuery()),
      getJSON("/console/api/samples")]);
    $("summary").textContent = "node " + overview.node + " · " + overview.nodes + " node(s), " +
      overview.workers + " worker(s) · " + overview.publishers + " publisher(s) · " +
      overview.recordings + " recording(s)";
    const badge = $("authmode");
    badge.textContent = overview.auth === "open" ? "open: no operator_password (loopback only)" : "signed in";
    badge.className = "badge" + (overview.auth === "open" ? " open" : "");
    $("logout").hidden = overview.auth === "open";
    if (state.apps === null) {
      state.apps = overview.apps;
      for (const a of overview.apps) $("f-app").append(el("option", { value: a }, a));
    }
    drawRooms(rooms.rooms);
    drawRecordings(recordings.recordings);
    drawIngresses(await getJSON("/console/api/ingresses"));
    $("charts-period").textContent = samples.period_s;
    window.cloudrecCharts.drawCharts($("charts"), samples);
    const many = overview.workers > 1;
    $("nodes-section").hidden = !many;
    if (many) drawNodes((await getJSON("/console/api/nodes")).nodes);
    $("error").hidden = true;
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    $("error").hidden = false;
    $("error").textContent = "cannot refresh: " + err.message;
  }
}

function schedule() {
  clearTimeout(state.timer);
  const generation = state.generation = (state.generation || 0) + 1;
  refresh().finally(() => {
    if (generation === state.generation) state.timer = setTimeout(schedule, POLL_MS);
  });
}

$("filters").addEventListener("submit", (e) => { e.preventDefault(); schedule(); });
$("filters").addEventListener("change", schedule);
$("f-room").addEventListener("input", schedule);
$("player-close").addEventListener("click", () => { stopPlayer(); $("player-section").hidden = true; });
window.cloudrecConsole = { play, state };
schedule();
