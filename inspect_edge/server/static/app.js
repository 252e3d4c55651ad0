// Live page: the selected camera's MJPEG stream plus numbers polled from /api/stats and
// /api/defects; with several cameras, a grid of all of them (snapshots, so they do not
// use up the stream viewer limit) where a click selects the one shown in full.
"use strict";
const $ = (id) => document.getElementById(id);
const fmt = (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const int = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US"));
const esc = (t) => String(t).replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");
let classColors = {};
let lastRecentKey = "";
let selected = decodeURIComponent((location.hash.match(/camera=([^&]+)/) || [])[1] || "");
let streaming = null;
let gridKey = "";

function startStream() {
  const img = $("stream");
  streaming = selected;
  img.onerror = () => setTimeout(startStream, 2000);  // service restarting: try again
  img.src = "/stream.mjpg?camera=" + encodeURIComponent(selected) + "&t=" + Date.now();
}

function select(name) {
  if (name === selected && streaming === name) return;
  selected = name;
  history.replaceState(null, "", "#camera=" + encodeURIComponent(name));
  lastRecentKey = "";
  startStream();
}

function renderGrid(cameras) {
  const grid = $("cameras");
  grid.hidden = cameras.length < 2;
  if (grid.hidden) return;
  const key = cameras.map((c) => c.name).join(",");
  if (key !== gridKey) {  // build the tiles once; later polls only update them
    gridKey = key;
    grid.innerHTML = cameras.map((c) =>
      `<button class="cam" data-camera="${esc(c.name)}"><img alt="">` +
      `<div class="cam-line"><i class="dot"></i><b>${esc(c.name)}</b><span class="cam-num"></span></div>` +
      `<div class="cam-why dim"></div></button>`).join("");
    grid.querySelectorAll(".cam").forEach((el) => { el.onclick = () => select(el.dataset.camera); });
  }
  const now = Date.now();
  for (const c of cameras) {
    const el = grid.querySelector(`.cam[data-camera="${CSS.escape(c.name)}"]`);
    el.classList.toggle("sel", c.name === selected);
    el.classList.toggle("down", !c.delivering);
    const found = Object.values(c.defects.total).reduce((a, b) => a + b, 0);
    el.querySelector(".cam-num").textContent = fmt(c.fps.processed) + " fps · age p99 " +
      fmt(c.frame_age_ms.p99, 0) + " ms · " + int(found) + " defects";
    el.querySelector(".cam-why").textContent = c.delivering ? c.spec : c.reason;
    const img = el.querySelector("img");
    if (c.last_frame && img.dataset.seq !== String(c.last_frame.seq)) {
      img.dataset.seq = String(c.last_frame.seq);
      img.src = "/snapshot.jpg?camera=" + encodeURIComponent(c.name) + "&seq=" + c.last_frame.seq + "&t=" + now;
    }
  }
}

function duration(s) {
  s = Math.floor(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + sec + "s";
}

function setStatus(kind, text, title) {
  const el = $("status");
  el.className = "pill pill-" + kind;
  el.textContent = text;
  el.title = title || "";
}

function renderStats(s) {
  const cams = s.cameras;
  if (!cams.some((c) => c.name === selected)) select(cams[0].name);
  else if (streaming !== selected) startStream();
  const cam = cams.find((c) => c.name === selected);
  renderGrid(cams);
  $("camera-name").textContent = cams.length > 1 ? cam.name : "";
  $("source-spec").textContent = cam.spec + " (" + cam.kind + ")";
  if (s.model) {
    $("model-desc").textContent = (s.model.arch || "model") + " " + s.model.version + " · " +
      s.model.backend + " · " + s.model.precision;
    classColors = Object.fromEntries(s.model.classes.map((c) => [c.name, c.color]));
    $("legend").innerHTML = s.model.classes.map((c) =>
      `<span><i class="swatch" style="background:${c.color}"></i>${c.name}</span>`).join("");
  }
  $("uptime").textContent = duration(s.uptime_s);
  const down = cams.filter((c) => !c.delivering).length;
  if (s.ready && down) setStatus("warn", "LIVE · " + down + " DOWN", s.ready_reason);
  else if (s.ready) setStatus("ok", "LIVE", s.ready_reason);
  else if (cams.every((c) => c.finished)) setStatus("warn", "ENDED", s.ready_reason);
  else setStatus("bad", "NOT READY", s.ready_reason);

  // Everything below is the selected camera's.
  $("fps-processed").textContent = fmt(cam.fps.processed);
  $("fps-capture").textContent = fmt(cam.fps.capture);
  $("latency-p50").textContent = fmt(cam.frame_age_ms.p50, 0);
  $("latency-p95").textContent = fmt(cam.frame_age_ms.p99, 0);
  $("frames-processed").textContent = int(cam.frames.processed);
  $("frames-captured").textContent = "of " + int(cam.frames.captured) + " captured";
  const dropped = cam.frames.dropped;
  const total = Object.values(dropped).reduce((a, b) => a + b, 0);
  $("frames-dropped").textContent = int(total);
  $("dropped-detail").textContent = Object.entries(dropped).filter(([, n]) => n > 0)
    .map(([r, n]) => r + " " + n).join(" · ") || "none";
  $("reconnects").textContent = int(cam.reconnects);
  $("source-state").textContent = cam.up ? "source up" : (cam.finished ? "source ended" : "source DOWN");
  const st = s.stage_ms;
  $("stage-times").textContent = "per frame: pre-process " + fmt(st.preprocess) + " ms · inference " +
    fmt(st.inference) + " ms · post-process " + fmt(st.postprocess) + " ms" +
    (cam.last_frame ? " · " + cam.last_frame.tiles + " tile(s) of " + cam.last_frame.shape.join("×") : "");
  if (cam.last_frame) $("frame-info").textContent = "frame #" + cam.last_frame.seq;

  // Each physical defect counts once, however many frames it is seen in.
  $("window-label").textContent = "last " + Math.round(s.defects.window_s / 60) + " min" + (cams.length > 1 ? " · " + cam.name : "");
  const counts = cam.defects.in_window;
  const perMetre = cam.defects.per_metre || {};
  const max = Math.max(1, ...Object.values(counts));
  $("class-bars").innerHTML = Object.entries(counts).map(([name, n]) =>
    `<div class="bar"><span>${name}</span><div class="track"><div class="fill" style="width:${100 * n / max}%;` +
    `background:${classColors[name] || "#888"}"></div></div><span class="count">${int(n)}</span></div>`).join("") +
    (cam.defects.strip_metres !== undefined ? `<div class="dim per-metre">per 100 m of strip (${int(cam.defects.strip_metres)} m inspected): ` +
      Object.entries(perMetre).map(([name, r]) => `${name} ${r === null ? "–" : (100 * r).toFixed(1)}`).join(" · ") + "</div>" : "");
}

function ago(t) {
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 60 ? Math.round(s) + " s ago" : Math.round(s / 60) + " min ago";
}

function renderRecent(items) {
  const list = $("recent");
  if (!items.length) { list.innerHTML = '<li class="empty">No defects yet</li>'; return; }
  const key = items.map((d) => d.id).join(",");
  if (key === lastRecentKey) {  // only the "ago" texts change: keep thumbnails from reloading
    list.querySelectorAll("[data-t]").forEach((el) => { el.textContent = ago(Number(el.dataset.t)); });
    return;
  }
  lastRecentKey = key;
  list.innerHTML = items.map((d) =>
    `<li><img src="${d.thumbnail}" alt="${d.class_name}" loading="lazy">` +
    `<div><div class="cls" style="color:${classColors[d.class_name] || "#ddd"}">${d.class_name}</div>` +
    `<div class="detail">${int(d.area_px)} px · peak ${(100 * d.peak_prob).toFixed(0)} % · ` +
    `box ${d.bbox[2]}×${d.bbox[3]} at (${d.bbox[0]}, ${d.bbox[1]})</div>` +
    `<div class="detail" data-t="${d.frame_time}">${ago(d.frame_time)}</div></div></li>`).join("");
}

async function poll(url, render, every) {
  for (;;) {
    try {
      const r = await fetch(url, { cache: "no-store" });
      if (r.ok) render(await r.json());
    } catch (e) {
      setStatus("bad", "NO CONNECTION", String(e));
    }
    await new Promise((res) => setTimeout(res, every));
  }
}

// A candidate model shadowed beside production (POST /api/model): its version and agreement.
function renderCandidate(m) {
  const sh = m.shadow;
  $("candidate").textContent = !m.candidate ? "" :
    "candidate " + m.candidate + " in shadow" + (sh ? " · " + int(sh.frames) + " frames · Dice vs production " +
    Object.entries(sh.dice_vs_production).map(([c, d]) => c + " " + d.toFixed(3)).join(", ") +
    " · defects " + (sh.defect_count_diff >= 0 ? "+" : "") + sh.defect_count_diff : "");
}

poll("/api/stats", renderStats, 1000);
poll("/api/model", renderCandidate, 3000);
async function pollRecent() {
  for (;;) {
    if (streaming !== null) {
      try {
        const r = await fetch("/api/defects?limit=15&camera=" + encodeURIComponent(selected), { cache: "no-store" });
        if (r.ok) renderRecent(await r.json());
      } catch (e) { /* the stats poll reports a lost connection */ }
    }
    await new Promise((res) => setTimeout(res, 2000));
  }
}
pollRecent();
