// The web page: submit, jobs, job and compare views over the documented HTTP API (see api.js). Hash routes
// (#/, #/jobs, #/job/ID, #/compare, #/compare/ID) so the service only serves this one page.

import { Api, ApiError, saveBlob } from "./api.js";
import { Viewer, formatSize } from "./viewer.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const STATES = ["queued", "preprocessing", "reconstructing", "merging", "comparing", "succeeded", "failed", "cancelled"];
const STAGES = [
  ["queue", "queued", "queue_wait"],
  ["preprocess", "preprocessing", "preprocess"],
  ["reconstruct", "reconstructing", "reconstruct"],
  ["merge", "merging", "merge"],
];
// Why a candidate frame was not used (keys of pipeline/preprocess.py REASON_TEXT, fusion report reasons).
const REASONS = {
  blurred: "too blurred",
  duplicate: "near-copy of another frame",
  empty_foreground: "no object found",
  tiny_foreground: "object too small in the picture",
  cut_by_border: "object runs out of the picture",
  surplus: "more images than num_frames; a sharper one nearby was used",
  alignment_outlier: "did not align with the other frames",
  empty: "empty mesh",
  non_finite: "broken mesh",
  degenerate: "degenerate mesh",
  not_used_by_strategy_best: "not the best frame (merge=best)",
};
const LIST_REFRESH_MS = 4000;
const MAX_LIST_STREAMS = 3; // live SSE streams on the jobs list (browsers allow ~6 connections per host)

// -- small DOM helpers ---------------------------------------------------------------------------------------
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}
const $ = (sel, root = document) => root.querySelector(sel);
const fmtS = (s) => (s === undefined || s === null ? "–" : s < 10 ? `${s.toFixed(2)} s` : `${s.toFixed(1)} s`);
const fmtBytes = (n) => (n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(0)} kB` : `${(n / 1048576).toFixed(1)} MB`);
const fmtNum = (v, digits = 2) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "–");
const fmtPct = (v) => (typeof v === "number" ? `${(v * 100).toFixed(1)} %` : "–");
const shortId = (id) => `${id.slice(0, 8)}…`;
const kindOf = (job) => job.kind || "reconstruct";
const stateBadge = (state) => h("span", { class: `state ${state}`, dataset: { state }, text: state });

function errorBox(err) {
  const text = err instanceof ApiError ? err.readable : String(err && err.message ? err.message : err);
  return h("p", { class: "error", role: "alert", text });
}

function showBanner(err) {
  const banner = $("#banner");
  banner.replaceChildren(errorBox(err));
  banner.hidden = false;
}

// -- the token dialog ----------------------------------------------------------------------------------------
function askToken(wrong) {
  const dialog = $("#token-dialog");
  const input = $("#token-input");
  const error = $("#token-error");
  error.hidden = !wrong;
  error.textContent = wrong ? "That token was refused; enter the right one." : "";
  input.value = "";
  return new Promise((resolve) => {
    const done = (value) => {
      dialog.removeEventListener("close", onClose);
      $("#token-cancel").removeEventListener("click", onCancel);
      resolve(value);
    };
    const onClose = () => done(dialog.returnValue === "ok" && input.value.trim() ? input.value.trim() : null);
    const onCancel = () => {
      dialog.returnValue = "cancel";
      dialog.close();
    };
    dialog.addEventListener("close", onClose);
    $("#token-cancel").addEventListener("click", onCancel);
    dialog.returnValue = "";
    dialog.showModal();
    input.focus();
  });
}

const api = new Api(askToken);

function updateTokenButton() {
  const button = $("#token-button");
  button.hidden = !api.token;
  button.textContent = "Forget token";
}

// -- router --------------------------------------------------------------------------------------------------
let cleanup = () => {};

async function route() {
  cleanup();
  const controller = new AbortController();
  const disposers = [];
  cleanup = () => {
    controller.abort();
    disposers.forEach((d) => d());
  };
  const ctx = { signal: controller.signal, onDispose: (d) => disposers.push(d) };
  const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const parts = path.split("/").filter(Boolean);
  const main = $("#main");
  main.replaceChildren();
  $("#banner").hidden = true;
  const name = parts[0] === "job" ? "jobs" : parts[0] || "submit";
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.body.dataset.view = parts[0] || "submit";
  try {
    if (!parts.length) await submitView(main, ctx);
    else if (parts[0] === "jobs") await jobsView(main, ctx, new URLSearchParams(query));
    else if (parts[0] === "job" && parts[1]) await jobView(main, ctx, parts[1]);
    else if (parts[0] === "compare") await compareView(main, ctx, parts[1]);
    else main.append(h("h2", { text: "Page not found" }), h("p", {}, h("a", { href: "#/", text: "Submit a job" })));
  } catch (err) {
    if (err.name !== "AbortError") main.append(errorBox(err));
  }
  updateTokenButton();
}

// -- submit --------------------------------------------------------------------------------------------------
async function submitView(main, ctx) {
  document.title = "Submit · triposr-serve";
  const files = { list: [] };
  const input = h("input", { type: "file", id: "file-input", multiple: true,
    accept: "video/*,image/*,.zip,application/zip" });  // prettier-ignore
  const chosen = h("p", { class: "muted small", id: "chosen-files", text: "No file chosen yet." });
  const zone = h("label", { class: "drop", for: "file-input", id: "drop-zone" },
    h("strong", { text: "Drop a video, photos or a zip of photos here" }),
    h("span", { class: "muted", text: "or press Enter / click to choose files" }), input);  // prettier-ignore
  const setFiles = (list) => {
    files.list = [...list];
    chosen.textContent = files.list.length
      ? files.list.map((f) => `${f.name} (${fmtBytes(f.size)})`).join(", ")
      : "No file chosen yet.";
    submit.disabled = !files.list.length;
  };
  input.addEventListener("change", () => setFiles(input.files));
  for (const ev of ["dragenter", "dragover"])
    zone.addEventListener(ev, (e) => {
      e.preventDefault();
      zone.classList.add("over");
    });
  for (const ev of ["dragleave", "drop"]) zone.addEventListener(ev, () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) setFiles(e.dataTransfer.files);
  });

  const paramsBox = h("div", { class: "params", id: "params" }, h("p", { class: "muted", text: "Loading parameters…" }));
  const progress = h("progress", { id: "upload-progress", max: 1, value: 0, hidden: true });
  const progressText = h("span", { class: "muted small", id: "upload-text" });
  const result = h("div", { id: "submit-result", "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "primary", id: "submit-button", disabled: true, text: "Upload and reconstruct" });
  const form = h("form", { id: "submit-form" },
    h("div", { class: "panel" }, zone, chosen),
    h("div", { class: "panel" }, h("h3", { text: "Parameters" }), paramsBox),
    h("div", { class: "panel" }, h("div", { class: "row" }, submit, progressText), progress, result));  // prettier-ignore
  main.append(h("h2", { text: "Reconstruct an object" }), form);

  let spec = [];
  try {
    spec = (await api.json("params", { signal: ctx.signal })).params;
    paramsBox.replaceChildren(...spec.map(paramInput));
  } catch (err) {
    paramsBox.replaceChildren(errorBox(err));
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!files.list.length) return;
    const data = new FormData();
    for (const p of spec) {
      const el = $(`[name="${p.name}"]`, paramsBox);
      if (!el) continue;
      const value = p.type === "boolean" ? String(el.checked) : el.value.trim();
      if (value !== "") data.append(p.name, value);
    }
    if (files.list.length === 1) data.append("file", files.list[0], files.list[0].name);
    else for (const f of files.list) data.append("images", f, f.name);
    submit.disabled = true;
    result.replaceChildren();
    progress.hidden = false;
    progress.value = 0;
    try {
      const body = await api.upload("reconstruct", data, (loaded, total) => {
        progress.value = loaded / total;
        progressText.textContent = `Uploading… ${fmtBytes(loaded)} of ${fmtBytes(total)}`;
      });
      progress.value = 1;
      progressText.textContent = "Uploaded.";
      location.hash = `#/job/${body.job_id}`;
    } catch (err) {
      progress.hidden = true;
      progressText.textContent = "";
      result.replaceChildren(errorBox(err));
      submit.disabled = false;
    }
  });
}

function paramInput(p) {
  const id = `param-${p.name}`;
  const label = p.name.replace(/_/g, " ");
  const range = p.min !== null && p.max !== null ? ` (${p.min}–${p.max})` : "";
  const help = h("span", { class: "help muted", text: p.help + (p.optional ? "; blank: not applied" : "") });
  if (p.type === "boolean")
    return h("div", {}, h("label", { class: "check", for: id },
      h("input", { type: "checkbox", id, name: p.name, checked: Boolean(p.default) }), label), help);  // prettier-ignore
  let control;
  if (p.type === "choice") {
    control = h("select", { id, name: p.name }, ...p.choices.map((c) => h("option", { value: c, selected: c === p.default, text: c })));
  } else {
    const step = p.type === "integer" ? 1 : "any";
    control = h("input", { type: "number", id, name: p.name, min: p.min, max: p.max, step,
      value: p.default === null ? "" : p.default, placeholder: p.optional ? "not set" : String(p.default) });  // prettier-ignore
  }
  return h("div", {}, h("label", { for: id }, `${label}${range}`, control), help);
}

// -- jobs list -----------------------------------------------------------------------------------------------
async function jobsView(main, ctx, query) {
  document.title = "Jobs · triposr-serve";
  const selected = new Set((query.get("state") || "").split(",").filter(Boolean));
  const kind = query.get("kind") || "";
  const stateBoxes = STATES.map((s) =>
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "state", value: s, checked: selected.has(s) }), s));
  const kindSelect = h("select", { id: "kind-filter", name: "kind" },
    ...[["", "all"], ["reconstruct", "reconstruction"], ["compare", "comparison"]].map(([v, t]) =>
      h("option", { value: v, selected: v === kind, text: t })));  // prettier-ignore
  const apply = () => {
    const states = [...main.querySelectorAll('input[name="state"]:checked')].map((i) => i.value);
    const q = new URLSearchParams();
    if (states.length) q.set("state", states.join(","));
    if (kindSelect.value) q.set("kind", kindSelect.value);
    location.hash = `#/jobs${q.toString() ? `?${q}` : ""}`;
  };
  const filters = h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); apply(); } },
    h("fieldset", {}, h("legend", { text: "State" }), h("div", { class: "row" }, stateBoxes)),
    h("label", {}, "Kind", kindSelect), h("button", { type: "submit", text: "Filter" }));  // prettier-ignore
  const body = h("tbody");
  const status = h("p", { class: "muted small", "aria-live": "polite" });
  main.append(h("h2", { text: "Jobs" }), h("div", { class: "panel" }, filters,
    h("table", { id: "jobs-table" }, h("thead", {}, h("tr", {}, ...["Job", "Kind", "State", "Progress", "Frames", "Created", ""].map((t) => h("th", { text: t })))), body),
    status));  // prettier-ignore

  const rows = new Map();
  const streams = new Map();
  ctx.onDispose(() => streams.forEach((c) => c.abort()));

  const render = (job) => {
    const cancel = TERMINAL.has(job.state) ? "" : h("button", { type: "button", class: "danger small", text: "Cancel",
      "aria-label": `Cancel job ${job.job_id}`, onclick: () => cancelJob(job.job_id, status) });  // prettier-ignore
    const frames = job.frames && typeof job.frames.selected === "number" ? `${job.frames.selected} used, ${job.frames.rejected} rejected` : "–";
    return h("tr", { dataset: { job: job.job_id } },
      h("td", {}, h("a", { href: kindOf(job) === "compare" ? `#/compare/${job.job_id}` : `#/job/${job.job_id}`, text: shortId(job.job_id), title: job.job_id })),
      h("td", { text: kindOf(job) }), h("td", {}, stateBadge(job.state)),
      h("td", { class: "num", text: `${Math.round((job.progress || 0) * 100)} %` }), h("td", { text: frames }),
      h("td", { text: job.created_at ? new Date(job.created_at).toLocaleString() : "–" }), h("td", {}, cancel));  // prettier-ignore
  };
  const follow = (job) => {
    if (streams.has(job.job_id) || streams.size >= MAX_LIST_STREAMS || TERMINAL.has(job.state)) return;
    const controller = new AbortController();
    streams.set(job.job_id, controller);
    api.stream(`reconstruct/events/${job.job_id}`, (event) => {
      const current = rows.get(job.job_id);
      if (!current) return;
      const updated = { ...current.job, state: event.state, progress: event.progress };
      const tr = render(updated);
      current.tr.replaceWith(tr);
      rows.set(job.job_id, { job: updated, tr });
    }, controller.signal).catch(() => {}).finally(() => streams.delete(job.job_id));  // prettier-ignore
  };
  const load = async () => {
    const q = new URLSearchParams({ limit: "100" });
    if (selected.size) q.set("state", [...selected].join(","));
    if (kind) q.set("kind", kind);
    const doc = await api.json(`jobs?${q}`, { signal: ctx.signal });
    const jobs = doc.jobs.filter((j) => !kind || kindOf(j) === kind);
    body.replaceChildren();
    rows.clear();
    for (const job of jobs) {
      const tr = render(job);
      body.append(tr);
      rows.set(job.job_id, { job, tr });
      follow(job);
    }
    if (!jobs.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted", text: "No jobs match." })));
    status.textContent = `${doc.total} job(s); updated ${new Date().toLocaleTimeString()}.`;
  };
  await load();
  const timer = setInterval(() => load().catch((err) => err.name !== "AbortError" && status.replaceChildren(errorBox(err))), LIST_REFRESH_MS);
  ctx.onDispose(() => clearInterval(timer));
}

async function cancelJob(jobId, where) {
  try {
    const r = await api.send("DELETE", `jobs/${jobId}`);
    where.replaceChildren(`Job ${shortId(jobId)}: ${r.state === "cancelled" ? "cancelled" : "cancelling…"}`);
  } catch (err) {
    where.replaceChildren(errorBox(err));
  }
}

// -- one job -------------------------------------------------------------------------------------------------
async function jobView(main, ctx, jobId) {
  document.title = `Job ${shortId(jobId)} · triposr-serve`;
  const head = h("div", { class: "row" }, h("h2", { text: `Job ${jobId}` }));
  const summary = h("div", { id: "job-summary" });
  const warnings = h("div", { id: "job-warnings" });
  const framesBox = h("div", { id: "frames" });
  const viewerBox = h("div", { class: "viewer", id: "viewer" }, h("div", { class: "overlay", text: "The 3D view appears when the job has succeeded." }));
  const toolbar = h("div", { class: "toolbar", id: "viewer-tools" });
  const downloads = h("div", { class: "toolbar", id: "downloads" });
  main.append(head, h("div", { class: "grid2" },
    h("div", {}, h("div", { class: "panel" }, viewerBox, toolbar, h("p", { class: "muted small", id: "model-size" })),
      h("div", { class: "panel" }, h("h3", { text: "Frames" }), framesBox)),
    h("div", {}, h("div", { class: "panel" }, summary, warnings), h("div", { class: "panel" }, h("h3", { text: "Downloads" }), downloads))));  // prettier-ignore

  let doc = await api.json(`reconstruct/status/${jobId}`, { signal: ctx.signal });
  if (kindOf(doc) === "compare") {
    location.replace(`#/compare/${jobId}`);
    return;
  }
  let lastMessage = "";
  let shownFrames = null;
  let viewer = null;
  ctx.onDispose(() => viewer && viewer.dispose());

  const paint = () => {
    renderSummary(summary, doc, lastMessage, () => cancelJob(jobId, summary));
    renderWarnings(warnings, doc);
    const report = doc.frames && doc.frames.report;
    if (report && report.length && shownFrames !== JSON.stringify([report, doc.report && doc.report.fusion && doc.report.fusion.frames])) {
      shownFrames = JSON.stringify([report, doc.report && doc.report.fusion && doc.report.fusion.frames]);
      renderFrames(framesBox, doc, ctx);
    } else if (!report || !report.length) {
      framesBox.replaceChildren(h("p", { class: "muted", text: TERMINAL.has(doc.state) ? "No per-frame report." : "The frame report appears after preprocessing." }));
    }
  };
  paint();

  if (!TERMINAL.has(doc.state)) {
    let lastState = doc.state;
    await api.stream(`reconstruct/events/${jobId}`, async (event) => {
      lastMessage = event.message || "";
      doc = { ...doc, state: event.state, progress: event.progress, stage: event.stage || doc.stage };
      paint();
      if (event.state !== lastState || TERMINAL.has(event.state)) {
        lastState = event.state;
        doc = await api.json(`reconstruct/status/${jobId}`, { signal: ctx.signal });
        paint();
      }
    }, ctx.signal);  // prettier-ignore
    if (ctx.signal.aborted) return;
    doc = await api.json(`reconstruct/status/${jobId}`, { signal: ctx.signal });
    paint();
  }
  renderDownloads(downloads, doc);
  if (doc.state !== "succeeded") return;
  viewerBox.replaceChildren(h("div", { class: "overlay", text: "Loading the mesh…" }));
  const buffer = await (await api.fetch(`reconstruct/result/${jobId}`, { signal: ctx.signal })).arrayBuffer();
  viewer = new Viewer(viewerBox);
  const gltf = await viewer.load(buffer, doc.params.format);
  viewerBox.querySelector(".overlay").remove();
  viewerBox.dataset.loaded = "true";
  viewerTools(toolbar, viewer);
  const extras = (gltf && gltf.scene && gltf.scene.userData) || {};
  // GLB: the export extras say whether it is in metres; OBJ/PLY carry no metadata, the job's parameter does.
  const metres = gltf ? (extras.export || {}).units === "m" : Boolean(doc.params.object_size_m);
  const size = viewer.size();
  $("#model-size").textContent =
    size && metres ? `Size: ${formatSize(size)} (object_size_m ${doc.params.object_size_m} m)`
      : size ? "Real-world size unknown: TripoSR has no metric scale (submit with object_size_m to set it)." : "";  // prettier-ignore
}

function viewerTools(toolbar, viewer, extra = []) {
  const wire = h("button", { type: "button", id: "wireframe-button", "aria-pressed": "false", text: "Wireframe" });
  wire.addEventListener("click", () => {
    const on = wire.getAttribute("aria-pressed") !== "true";
    wire.setAttribute("aria-pressed", String(on));
    viewer.setWireframe(on);
  });
  toolbar.replaceChildren(h("button", { type: "button", id: "reset-button", text: "Reset view", onclick: () => viewer.fit() }), wire, ...extra,
    h("span", { class: "muted small", text: "Drag to turn, wheel to zoom, right-drag or arrow keys to pan." }));  // prettier-ignore
}

function renderSummary(box, doc, message, onCancel) {
  const stateIndex = STATES.indexOf(doc.state);
  const stages = STAGES.map(([name, state, timing]) => {
    const i = STATES.indexOf(state);
    const done = doc.timings && doc.timings[timing] !== undefined && (stateIndex > i || TERMINAL.has(doc.state));
    const now = doc.state === state;
    return h("div", { class: `stage${done ? " done" : ""}${now ? " now" : ""}` },
      h("div", { text: name }), h("div", { class: "muted", text: done ? fmtS(doc.timings[timing]) : now ? "running…" : "–" }));  // prettier-ignore
  });
  const cancel = TERMINAL.has(doc.state) ? "" : h("button", { type: "button", class: "danger", id: "cancel-button", text: "Cancel job", onclick: onCancel });
  const rows = [
    ["State", stateBadge(doc.state)],
    ["Progress", `${Math.round((doc.progress || 0) * 100)} %${message && !TERMINAL.has(doc.state) ? ` — ${message}` : ""}`],
    ["Input", doc.input_kind || "–"],
    ["Frames", doc.frames && typeof doc.frames.selected === "number" ? `${doc.frames.selected} used, ${doc.frames.rejected} rejected` : "–"],
    ["Total time", fmtS(doc.timings && doc.timings.total)],
    ["Parameters", Object.entries(doc.params || {}).filter(([, v]) => v !== null).map(([k, v]) => `${k}=${v}`).join(", ")],
  ];  // prettier-ignore
  box.replaceChildren(
    h("div", { class: "row" }, h("h3", { text: "Status" }), cancel),
    h("progress", { max: 1, value: doc.progress || 0, "aria-label": "job progress" }),
    h("div", { class: "stages", id: "stages" }, stages),
    h("dl", { class: "kv" }, rows.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)])),
    doc.error ? h("p", { class: "error", id: "job-error", text: `${doc.error.message} (${doc.error.code})` }) : "",
  );  // prettier-ignore
  box.dataset.state = doc.state;
}

function renderWarnings(box, doc) {
  const list = [...(doc.warnings || []), ...((doc.report && doc.report.fusion && doc.report.fusion.warnings) || [])];
  const unique = [...new Set(list.map((w) => (typeof w === "string" ? w : w.message || JSON.stringify(w))))];
  box.replaceChildren(...(unique.length ? [h("h3", { text: "Warnings" }), h("ul", { class: "warning" }, unique.map((w) => h("li", { text: w })))] : []));
}

function renderFrames(box, doc, ctx) {
  const fusionFrames = (doc.report && doc.report.fusion && doc.report.fusion.frames) || [];
  let chosenSeen = 0;
  const cards = doc.frames.report.map((r, n) => {
    let verdict = r.chosen ? "chosen" : `rejected: ${REASONS[r.reason] || r.reason}`;
    if (r.chosen && r.warning) verdict = `chosen, best effort: ${REASONS[r.warning] || r.warning}`;
    let cls = r.chosen ? "chosen" : "rejected";
    if (r.chosen) {
      const fused = fusionFrames[chosenSeen++];
      if (fused && fused.kept === false) {
        verdict = `dropped in fusion: ${REASONS[fused.reason] || fused.reason}`;
        cls = "rejected";
      }
    }
    const img = h("div", { class: "img" }, h("span", { class: "muted", text: r.reason === "surplus" ? "no preview" : "…" }));
    if (r.reason !== "surplus") loadThumbnail(img, doc.job_id, n, r, ctx);
    const when = r.timestamp_s !== null && r.timestamp_s !== undefined ? `${r.timestamp_s.toFixed(2)} s` : r.source;
    return h("figure", { class: `frame ${cls}`, dataset: { reason: r.reason || "", chosen: String(r.chosen) } }, img,
      h("figcaption", { class: "cap" }, h("div", { class: "verdict", text: verdict }),
        h("div", { class: "muted", text: `${when} · sharpness ${fmtNum(r.sharpness, 0)}` })));  // prettier-ignore
  });
  box.replaceChildren(h("div", { class: "frames", id: "frame-grid" }, cards));
}

async function loadThumbnail(box, jobId, n, report, ctx) {
  try {
    const blob = await api.blob(`reconstruct/frames/${jobId}/${n}`);
    const url = URL.createObjectURL(blob);
    ctx.onDispose(() => URL.revokeObjectURL(url));
    const verdict = report.chosen ? "chosen" : `rejected (${report.reason})`;
    box.replaceChildren(h("img", { src: url, alt: `${report.source}, ${verdict}` }));
  } catch {
    box.replaceChildren(h("span", { class: "muted", text: "no preview" }));
  }
}

function renderDownloads(box, doc) {
  box.replaceChildren();
  if (doc.state !== "succeeded") {
    box.append(h("p", { class: "muted", text: "Downloads appear when the job has succeeded." }));
    return;
  }
  const format = doc.params.format;
  for (const f of ["glb", "obj", "ply"]) {
    const mine = f === format;
    box.append(h("button", { type: "button", id: `download-${f}`, disabled: !mine,
      title: mine ? `Download the ${f.toUpperCase()} result` : `This job made ${format.toUpperCase()}; submit with format ${f} for ${f.toUpperCase()}`,
      text: `${f.toUpperCase()}`, onclick: () => download(`reconstruct/result/${doc.job_id}`, `${doc.job_id}.${f}`, box) }));  // prettier-ignore
  }
  box.append(h("button", { type: "button", id: "download-report", text: "Report JSON",
    onclick: () => download(`reconstruct/result/${doc.job_id}?part=report`, `${doc.job_id}.report.json`, box) }));  // prettier-ignore
}

async function download(path, name, where) {
  try {
    saveBlob(await api.blob(path), name);
  } catch (err) {
    where.append(errorBox(err));
  }
}

// -- compare -------------------------------------------------------------------------------------------------
async function compareView(main, ctx, compareId) {
  document.title = "Compare · triposr-serve";
  main.append(h("h2", { text: "Compare two reconstructions" }));
  const formBox = h("div", { class: "panel", id: "compare-form" });
  const resultBox = h("div", { id: "compare-result" });
  main.append(formBox, resultBox);

  const jobs = await api.json("jobs?state=succeeded&limit=200", { signal: ctx.signal });
  const recon = jobs.jobs.filter((j) => kindOf(j) === "reconstruct");
  const label = (j) => `${shortId(j.job_id)} · ${new Date(j.created_at).toLocaleString()}${j.params && j.params.object_size_m ? ` · ${j.params.object_size_m} m` : ""}`;
  const pick = (id, text, index) => h("label", {}, text, h("select", { id, name: id, required: true },
    h("option", { value: "", text: "choose a job" }), ...recon.map((j, i) => h("option", { value: j.job_id, selected: i === index, text: label(j) }))));  // prettier-ignore
  const size = h("input", { type: "number", id: "compare-size", name: "object_size_m", min: 0.001, max: 100, step: "any", placeholder: "e.g. 0.72" });
  const threshold = h("input", { type: "number", id: "compare-threshold", name: "threshold_mm", min: 0.01, max: 100, step: "any", value: 1.0 });
  const run = h("button", { type: "submit", class: "primary", id: "compare-button", text: "Compare", disabled: recon.length < 2 });
  const message = h("div", { "aria-live": "polite", id: "compare-message" });
  const form = h("form", { class: "filters" }, pick("reference", "Reference (before)", 1), pick("candidate", "Candidate (after)", 0),
    h("label", {}, "Object size (m, largest dimension)", size), h("label", {}, "Threshold (mm)", threshold), run);  // prettier-ignore
  formBox.append(form, recon.length < 2 ? h("p", { class: "muted", text: "Two succeeded reconstruction jobs are needed." }) : "", message);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { reference: $("#reference").value, candidate: $("#candidate").value,
      object_size_m: size.value ? Number(size.value) : null, threshold_mm: threshold.value ? Number(threshold.value) : 1.0 };  // prettier-ignore
    message.replaceChildren();
    if (!body.reference || !body.candidate) return message.append(errorBox("Choose a reference and a candidate job."));
    run.disabled = true;
    try {
      const accepted = await api.send("POST", "compare", body);
      location.hash = `#/compare/${accepted.job_id}`;
    } catch (err) {
      message.append(errorBox(err));
      run.disabled = false;
    }
  });

  const previous = await api.json("jobs?kind=compare&limit=20", { signal: ctx.signal }).catch(() => null);
  const earlier = previous ? previous.jobs.filter((j) => kindOf(j) === "compare" && j.job_id !== compareId) : [];
  if (earlier.length)
    formBox.append(h("p", { class: "small" }, "Earlier comparisons: ",
      ...earlier.slice(0, 8).flatMap((j) => [h("a", { href: `#/compare/${j.job_id}`, text: shortId(j.job_id) }), " ", stateBadge(j.state), "  "])));  // prettier-ignore
  if (compareId) await compareResult(resultBox, ctx, compareId);
}

async function compareResult(box, ctx, id) {
  const status = h("div", { class: "panel", id: "compare-status" });
  box.append(status);
  let doc = await api.json(`reconstruct/status/${id}`, { signal: ctx.signal });
  const paint = () => {
    status.replaceChildren(h("div", { class: "row" }, h("h3", { text: `Comparison ${shortId(id)}` }), stateBadge(doc.state),
      h("span", { class: "muted", text: `${Math.round((doc.progress || 0) * 100)} %` })),
      doc.error ? h("p", { class: "error", text: `${doc.error.message} (${doc.error.code})` }) : "");  // prettier-ignore
    status.dataset.state = doc.state;
  };
  paint();
  if (!TERMINAL.has(doc.state)) {
    await api.stream(`reconstruct/events/${id}`, (event) => {
      doc = { ...doc, state: event.state, progress: event.progress };
      paint();
    }, ctx.signal);  // prettier-ignore
    if (ctx.signal.aborted) return;
    doc = await api.json(`reconstruct/status/${id}`, { signal: ctx.signal });
    paint();
  }
  if (doc.state !== "succeeded") return;

  const [glb, report] = await Promise.all([
    api.fetch(`reconstruct/result/${id}`, { signal: ctx.signal }).then((r) => r.arrayBuffer()),
    api.json(`reconstruct/result/${id}?part=report`, { signal: ctx.signal }),
  ]);
  const viewerBox = h("div", { class: "viewer", id: "heatmap-viewer" });
  const toolbar = h("div", { class: "toolbar" });
  const legend = h("div", { class: "legend", id: "legend" });
  const chart = h("div", { class: "chart", id: "sector-chart" }, h("p", { class: "muted", text: "Loading the sector chart…" }));
  const figures = h("div", { id: "compare-figures" });
  box.append(h("div", { class: "grid2" },
    h("div", {}, h("div", { class: "panel" }, viewerBox, toolbar, legend)),
    h("div", {}, h("div", { class: "panel" }, figures), h("div", { class: "panel" }, h("h3", { text: "Sectors" }), chart))));  // prettier-ignore

  const viewer = new Viewer(viewerBox);
  ctx.onDispose(() => viewer.dispose());
  const gltf = await viewer.load(glb);
  viewerBox.dataset.loaded = "true";
  const candidate = viewer.nodes()[1];
  const overlay = h("label", { class: "check" }, h("input", { type: "checkbox", id: "overlay-toggle", disabled: !candidate }), "Show the candidate (aligned) as an overlay");
  $("input", overlay).addEventListener("change", (e) => {
    if (!candidate) return;
    candidate.visible = e.target.checked;
    candidate.traverse((o) => {
      if (o.isMesh) Object.assign(o.material, { transparent: true, opacity: 0.45, depthWrite: false });
    });
    viewer.render();
  });
  viewerTools(toolbar, viewer, [overlay]);
  const extras = ((gltf.scene && gltf.scene.userData) || {}).triposr_compare || {};
  renderLegend(legend, report.colour_scale || extras.colour_scale || {}, report);
  renderFigures(figures, report, id);
  try {
    const png = await api.blob(`reconstruct/result/${id}?part=chart`);
    const url = URL.createObjectURL(png);
    ctx.onDispose(() => URL.revokeObjectURL(url));
    chart.replaceChildren(h("img", { src: url, alt: "Loss per 10° sector around the tyre's axis" }));
  } catch (err) {
    chart.replaceChildren(errorBox(err));
  }
}

const unitOf = (report) => (typeof report.units === "string" ? report.units : (report.units && report.units.distance) || "");
const floorOf = (report) => {
  const nf = report.noise_floor;
  if (typeof nf === "number") return nf;
  if (nf && typeof nf === "object") return [nf.value, nf.distance, nf.p95, nf.rms].find((v) => typeof v === "number") ?? null;
  return null;
};

/** [{t in 0..1, css colour}] and the value range of a colour scale, whatever list shape it comes in. */
function scaleStops(cs, report) {
  const toCss = (c) => {
    if (typeof c === "string") return c;
    if (Array.isArray(c)) {
      const k = c.every((v) => v <= 1) ? 255 : 1;
      return `rgb(${c.slice(0, 3).map((v) => Math.round(v * k)).join(",")})`;
    }
    return "#888";
  };
  let lo = cs.min ?? cs.vmin ?? cs.lo;
  let hi = cs.max ?? cs.vmax ?? cs.hi;
  const raw = cs.stops || cs.colours || cs.colors || null;
  if (Array.isArray(raw) && raw.length >= 2) {
    const pairs = raw.map((s, i) => {
      if (Array.isArray(s) && s.length === 2 && typeof s[0] === "number") return [s[0], s[1]];
      if (s && typeof s === "object" && !Array.isArray(s)) return [s.value ?? s.at ?? i / (raw.length - 1), s.colour ?? s.color];
      return [null, s];
    });
    if (pairs.every(([v]) => typeof v === "number") && (lo === undefined || hi === undefined)) {
      lo = Math.min(...pairs.map(([v]) => v));
      hi = Math.max(...pairs.map(([v]) => v));
    }
    if (lo === undefined || hi === undefined) [lo, hi] = [-1, 1];
    const span = hi - lo || 1;
    const stops = pairs.map(([v, c], i) => ({ t: typeof v === "number" ? (v - lo) / span : i / (pairs.length - 1), colour: toCss(c) }));
    return { lo, hi, stops };
  }
  const limit = hi ?? cs.limit ?? Math.max(Math.abs((report.distance || {}).p05 || 0), Math.abs((report.distance || {}).p95 || 0), floorOf(report) || 0) ?? 1;
  lo = lo ?? -limit;
  hi = hi ?? limit;
  return { lo, hi, stops: [{ t: 0, colour: "rgb(59,76,192)" }, { t: 0.5, colour: "rgb(245,245,245)" }, { t: 1, colour: "rgb(180,4,38)" }] };
}

function renderLegend(box, cs, report) {
  const { lo, hi, stops } = scaleStops(cs, report);
  const unit = unitOf(report);
  const canvas = h("canvas", { width: 512, height: 22, id: "legend-bar", role: "img",
    "aria-label": `colour scale from ${fmtNum(lo)} to ${fmtNum(hi)} ${unit}: loss blue, gain red` });  // prettier-ignore
  const g = canvas.getContext("2d");
  const grad = g.createLinearGradient(0, 0, canvas.width, 0);
  for (const s of stops) grad.addColorStop(Math.min(Math.max(s.t, 0), 1), s.colour);
  g.fillStyle = grad;
  g.fillRect(0, 0, canvas.width, canvas.height);
  const floor = typeof cs.white_within === "number" ? cs.white_within : floorOf(report);
  if (floor !== null && hi > lo) {
    const x0 = ((-floor - lo) / (hi - lo)) * canvas.width;
    const x1 = ((floor - lo) / (hi - lo)) * canvas.width;
    g.strokeStyle = "#222";
    g.setLineDash([3, 2]);
    g.strokeRect(Math.max(x0, 0.5), 0.5, Math.max(x1 - x0, 1), canvas.height - 1);
  }
  box.replaceChildren(h("h3", { text: "Signed distance (negative = material lost)" }), canvas,
    h("div", { class: "ticks" }, h("span", { text: `${fmtNum(lo)} ${unit} (loss)` }), h("span", { text: "0" }), h("span", { text: `${fmtNum(hi)} ${unit} (gain)` })),
    h("p", { class: "small muted", id: "noise-floor" }, floor !== null ? `Noise floor ±${fmtNum(floor)} ${unit} (dashed box, white on the mesh): differences inside it are reconstruction noise, not wear.` : "Noise floor: not reported.",
      cs.no_counterpart ? ` Grey (${cs.no_counterpart}): no counterpart on the candidate.` : ""));  // prettier-ignore
  box.dataset.ready = "true";
}

function renderFigures(box, report, id) {
  const unit = unitOf(report);
  const a = report.alignment || {};
  const d = report.distance || {};
  const stat = (o) => (o ? `max ${fmtNum(o.max)} ${unit}, mean ${fmtNum(o.mean)} ${unit}, area ${fmtPct(o.area_fraction)}` : "–");
  const bands = Array.isArray(report.bands) ? report.bands : Object.entries(report.bands || {}).map(([name, v]) => ({ name, ...v }));
  box.replaceChildren(h("div", { class: "row" }, h("h3", { text: "Figures" }),
      h("button", { type: "button", id: "download-compare-report", text: "Report JSON",
        onclick: () => saveBlob(new Blob([JSON.stringify(report, null, 1)], { type: "application/json" }), `${id}.compare.json`) }),
      h("button", { type: "button", id: "download-heatmap", text: "Heat-map GLB", onclick: () => download(`reconstruct/result/${id}`, `${id}.heatmap.glb`, box) })),
    h("dl", { class: "kv" },
      h("dt", { text: "Noise floor" }), h("dd", { text: `${fmtNum(floorOf(report))} ${unit}` }),
      h("dt", { text: "Distance p05 / p50 / p95" }), h("dd", { text: `${fmtNum(d.p05)} / ${fmtNum(d.p50)} / ${fmtNum(d.p95)} ${unit}` }),
      h("dt", { text: "Loss" }), h("dd", { text: stat(report.loss) }),
      h("dt", { text: "Gain" }), h("dd", { text: stat(report.gain) }),
      h("dt", { text: "Alignment" }), h("dd", { text: `rms ${fmtNum(a.rms, 3)}, scale ${fmtNum(a.scale, 3)}, turn ${a.turn_determined === false ? "not determined" : `${fmtNum(a.turn_deg, 1)}°`}` })),
    h("h3", { text: "Bands" }),
    h("table", { id: "bands-table" }, h("thead", {}, h("tr", {}, ...["Band", `Mean loss (${unit})`, `Max loss (${unit})`, "Area over threshold"].map((t, i) => h("th", { class: i ? "num" : "", text: t })))),
      h("tbody", {}, bands.length ? bands.map((b) => h("tr", {}, h("td", { text: b.name || b.band || "–" }), h("td", { class: "num", text: fmtNum(b.mean_loss) }),
        h("td", { class: "num", text: fmtNum(b.max_loss) }), h("td", { class: "num", text: fmtPct(b.area_fraction_over_threshold) }))) : h("tr", {}, h("td", { colspan: 4, class: "muted", text: "No bands (no axis found)." })))));  // prettier-ignore
}

// -- start ---------------------------------------------------------------------------------------------------
window.addEventListener("hashchange", route);
window.addEventListener("unhandledrejection", (e) => {
  if (e.reason && e.reason.name === "AbortError") return e.preventDefault();
  e.preventDefault();
  showBanner(e.reason);
});
$("#token-button").addEventListener("click", () => {
  api.token = null;
  updateTokenButton();
  route();
});
route();
