// Review view: the newest defects with evidence; each decision is POSTed to /api/review.
const $ = (id) => document.getElementById(id);
let classes = [];

function card(item) {
  const r = item.review;
  const div = document.createElement("div");
  div.className = "card" + (r ? " done" : "");
  div.dataset.defect = item.defect_id;
  const options = classes.filter((c) => c !== item.class).map((c) => `<option>${c}</option>`).join("");
  div.innerHTML =
    `<img src="/api/review/${item.defect_id}/overlay.jpg" alt="defect ${item.defect_id}">` +
    `<div class="info">#${item.defect_id} <b>${item.class}</b> peak ${item.peak_prob.toFixed(2)} · ` +
    `${item.frames} frame(s) · ${item.length_px} px · ${new Date(item.first_time * 1000).toLocaleTimeString()}` +
    (r ? ` · <span class="decision">${r.decision}${r.class ? " → " + r.class : ""}</span>` : "") + `</div>` +
    `<button data-d="confirm">confirm</button><button data-d="reject">reject (false)</button>` +
    `<select>${options}</select><button data-d="reclass">change class</button>` +
    `<button data-d="missed">missed defect in frame</button>`;
  div.querySelectorAll("button").forEach((b) => b.addEventListener("click", () => decide(item, b.dataset.d, div)));
  return div;
}

async function decide(item, decision, div) {
  const body = { defect_id: item.defect_id, decision, reviewer: $("reviewer").value || null };
  if (decision === "reclass") body.class = div.querySelector("select").value;
  const r = await fetch("/api/review", { method: "POST", headers: { "Content-Type": "application/json" },
                                         body: JSON.stringify(body) });
  if (!r.ok) { alert((await r.json()).detail); return; }
  item.review = await r.json();
  div.replaceWith(card(item));
}

async function load() {
  const r = await fetch("/api/review?limit=60", { cache: "no-store" });
  const q = $("queue");
  if (!r.ok) { q.innerHTML = `<p class="dim">${(await r.json()).detail}</p>`; return; }
  const data = await r.json();
  classes = data.classes;
  q.innerHTML = data.items.length ? "" : '<p class="dim">No saved evidence yet.</p>';
  data.items.forEach((it) => q.appendChild(card(it)));
}
load();
