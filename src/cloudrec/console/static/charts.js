// The console's charts: the last 10 minutes of /console/api/samples as small SVG line charts,
// each publisher's bitrate and frame rate and each node's CPU and recordings. Drawn with DOM
// calls and SVG attributes only (no inline style: the page's Content-Security-Policy allows none).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const CHART_W = 260, CHART_H = 70, PAD = 2;

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceMax(x) {
  if (!(x > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(x)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

// One chart: values aligned with times (null where absent), over [end - span, end].
function lineChart(name, unit, times, values, end, span, color, digits) {
  const present = values.filter((v) => v !== null && v !== undefined);
  const top = niceMax(Math.max(0, ...present));
  const x = (t) => PAD + (CHART_W - 2 * PAD) * (1 - (end - t) / span);
  const y = (v) => CHART_H - PAD - (CHART_H - 2 * PAD) * (v / top);
  const root = svg("svg", { viewBox: "0 0 " + CHART_W + " " + CHART_H, width: CHART_W,
    height: CHART_H, class: "chart", role: "img", "aria-label": name + " over the last 10 minutes" });
  root.append(svg("rect", { x: 0, y: 0, width: CHART_W, height: CHART_H, fill: "#fbfcfd",
    stroke: "#e1e5ea" }));
  for (const f of [0.5]) {
    root.append(svg("line", { x1: 0, x2: CHART_W, y1: y(top * f), y2: y(top * f),
      stroke: "#e9ecef", "stroke-dasharray": "3 3" }));
  }
  let run = [];
  const flush = () => {
    if (run.length === 1) root.append(svg("circle", { cx: run[0][0], cy: run[0][1], r: 1.5, fill: color }));
    else if (run.length > 1) root.append(svg("polyline", { points: run.map((p) => p.join(",")).join(" "),
      fill: "none", stroke: color, "stroke-width": 1.6, "stroke-linejoin": "round" }));
    run = [];
  };
  times.forEach((t, i) => {
    const v = values[i];
    if (v === null || v === undefined || end - t > span) { flush(); return; }
    run.push([x(t).toFixed(1), y(v).toFixed(1)]);
  });
  flush();
  root.append(svg("text", { x: 4, y: 12, "text-anchor": "start", "font-size": 10,
    fill: "#6b7684" }, "max " + top + " " + unit));
  const last = present.length ? present[present.length - 1] : null;
  const figure = document.createElement("figure");
  figure.className = "chart-card";
  figure.dataset.chart = name;
  figure.dataset.points = String(present.length);
  const caption = document.createElement("figcaption");
  caption.textContent = name + ": " + (last === null ? "–" : Number(last).toFixed(digits) + " " + unit);
  figure.append(caption, root);
  return figure;
}

function drawCharts(box, data) {
  box.replaceChildren();
  const times = data.t || [];
  if (!times.length) { box.append(document.createTextNode("No sample yet.")); return; }
  const end = times[times.length - 1];
  const span = data.period_s * data.points;
  const group = (title, key, charts) => {
    const div = document.createElement("div");
    div.className = "chart-group";
    div.dataset.series = key;
    const h = document.createElement("h3");
    h.textContent = title;
    div.append(h, ...charts);
    box.append(div);
  };
  for (const [key, s] of Object.entries(data.publishers)) {
    group("publisher " + key, "publisher:" + key, [
      lineChart("bitrate", "kbps", times, s.kbps, end, span, "#1971c2", 0),
      lineChart("frame rate", "fps", times, s.fps, end, span, "#2f9e44", 1)]);
  }
  for (const [key, s] of Object.entries(data.nodes)) {
    group("node " + key, "node:" + key, [
      lineChart("CPU", "cores", times, s.cpu, end, span, "#e8590c", 2),
      lineChart("recordings", "", times, s.recordings, end, span, "#e5484d", 0)]);
  }
}

window.cloudrecCharts = { drawCharts };
