// Live page: the MJPEG stream plus numbers polled from /api/stats and /api/defects.
"use strict";
const $ = (id) => document.getElementById(id);
const fmt = (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const int = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US"));
let classColors = {};
let lastRecentKey = "";

function startStream() {
  const img = $("stream");
  img.onerror = () => setTimeout(startStream, 2000);  // service restarting: try again
  img.src = "/stream.mjpg?t=" + Date.now();
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
  $("source-spec").textContent = s.source.spec + " (" + s.source.kind + ")";
  if (s.model) {
    $("model-desc").textContent = (s.model.arch || "model") + " " + s.model.version + " · " +
      s.model.backend + " · " + s.model.precision;
    classColors = Object.fromEntries(s.model.classes.map((c) => [c.name, c.color]));
    $("legend").innerHTML = s.model.classes.map((c) =>
      `<span><i class="swatch" style="background:${c.color}"></i>${c.name}</span>`).join("");
  }
  $("uptime").textContent = duration(s.uptime_s);
  if (s.ready) setStatus("ok", "LIVE", s.ready_reason);
  else if (s.source.finished) setStatus("warn", "ENDED", s.ready_reason);
  else setStatus("bad", "NOT READY", s.ready_reason);

  $("fps-processed").textContent = fmt(s.fps.processed);
  $("fps-capture").textContent = fmt(s.fps.capture);
  $("latency-p50").textContent = fmt(s.latency_ms.p50, 0);
  $("latency-p95").textContent = fmt(s.latency_ms.p95, 0);
  $("frames-processed").textContent = int(s.frames.processed);
  $("frames-captured").textContent = "of " + int(s.frames.captured) + " captured";
  const dropped = s.frames.dropped;
  const total = Object.values(dropped).reduce((a, b) => a + b, 0);
  $("frames-dropped").textContent = int(total);
  $("dropped-detail").textContent = Object.entries(dropped).filter(([, n]) => n > 0)
    .map(([r, n]) => r + " " + n).join(" · ") || "none";
  $("reconnects").textContent = int(s.source.reconnects);
  $("source-state").textContent = s.source.up ? "source up" : (s.source.finished ? "source ended" : "source DOWN");
  const st = s.stage_ms;
  $("stage-times").textContent = "per frame: pre-process " + fmt(st.preprocess) + " ms · inference " +
    fmt(st.inference) + " ms · post-process " + fmt(st.postprocess) + " ms" +
    (s.last_frame ? " · " + s.last_frame.tiles + " tile(s) of " + s.last_frame.shape.join("×") : "");
  if (s.last_frame) $("frame-info").textContent = "frame #" + s.last_frame.seq;

  // Each physical defect counts once, however many frames it is seen in.
  $("window-label").textContent = "last " + Math.round(s.defects.window_s / 60) + " min";
  const counts = s.defects.in_window;
  const perMetre = s.defects.per_metre || {};
  const max = Math.max(1, ...Object.values(counts));
  $("class-bars").innerHTML = Object.entries(counts).map(([name, n]) =>
    `<div class="bar"><span>${name}</span><div class="track"><div class="fill" style="width:${100 * n / max}%;` +
    `background:${classColors[name] || "#888"}"></div></div><span class="count">${int(n)}</span></div>`).join("") +
    (s.defects.strip_metres !== undefined ? `<div class="dim per-metre">per 100 m of strip (${int(s.defects.strip_metres)} m inspected): ` +
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

startStream();
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
poll("/api/defects?limit=15", renderRecent, 2000);
