// texocr's page: draw, upload or paste an image of math; POST it to v1/predict; edit the LaTeX beside its
// KaTeX rendering. No build step and no dependency but KaTeX (served by texocr itself, never a CDN).
"use strict";

const $ = (id) => document.getElementById(id);
const HISTORY_KEY = "texocr.history";
const HISTORY_SIZE = 6;
const MARGIN = 16; // white border (CSS px) around the ink of a drawing: the model was trained on padded crops

// ------------------------------------------------------------ the drawing pad

const pad = $("pad");
const ctx = pad.getContext("2d");
const strokes = []; // [{width, points: [[x, y], ...]}] in CSS pixels: undo is "drop the last, redraw all"
let current = null;
let autoRead = null;

function fitPad() {
  const ratio = window.devicePixelRatio || 1;
  const box = pad.getBoundingClientRect();
  pad.width = Math.round(box.width * ratio);
  pad.height = Math.round(box.height * ratio);
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  redraw();
}

function drawStroke(c, s, dx = 0, dy = 0) {
  c.lineCap = "round";
  c.lineJoin = "round";
  c.strokeStyle = "#000";
  c.lineWidth = s.width;
  c.beginPath();
  const [x0, y0] = s.points[0];
  c.moveTo(x0 - dx, y0 - dy);
  if (s.points.length === 1) c.lineTo(x0 - dx + 0.01, y0 - dy); // a dot
  for (const [x, y] of s.points.slice(1)) c.lineTo(x - dx, y - dy);
  c.stroke();
}

function redraw() {
  ctx.save();
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  ctx.restore();
  for (const s of strokes) drawStroke(ctx, s);
  if (current) drawStroke(ctx, current);
}

function point(e) {
  const box = pad.getBoundingClientRect();
  return [e.clientX - box.left, e.clientY - box.top];
}

pad.addEventListener("pointerdown", (e) => {
  if (e.button !== 0 && e.pointerType === "mouse") return;
  pad.setPointerCapture(e.pointerId);
  clearTimeout(autoRead);
  const base = Number($("width").value);
  // a pen's pressure thickens the line (0.5 is what a mouse or finger reports)
  const width = e.pointerType === "pen" && e.pressure > 0 ? base * (0.5 + e.pressure) : base;
  current = { width, points: [point(e)] };
  redraw();
});

pad.addEventListener("pointermove", (e) => {
  if (!current) return;
  const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
  for (const ev of events.length ? events : [e]) current.points.push(point(ev));
  redraw();
});

function endStroke() {
  if (!current) return;
  strokes.push(current);
  current = null;
  redraw();
  clearTimeout(autoRead);
  autoRead = setTimeout(readDrawing, 900); // read once the writer pauses
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

$("undo").addEventListener("click", () => { strokes.pop(); redraw(); });
$("clear").addEventListener("click", () => { strokes.length = 0; redraw(); });
$("width").addEventListener("input", () => { $("width-value").textContent = $("width").value; });
document.addEventListener("keydown", (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key === "z" && document.activeElement !== $("latex")) {
    strokes.pop();
    redraw();
    e.preventDefault();
  }
});

// The ink's bounding box with a white margin, at CSS-pixel scale: what a scan of the formula would look like.
function drawingBlob() {
  const pts = strokes.flatMap((s) => s.points.map(([x, y]) => [x, y, s.width]));
  if (!pts.length) return Promise.resolve(null);
  const x0 = Math.min(...pts.map((p) => p[0] - p[2])) - MARGIN;
  const y0 = Math.min(...pts.map((p) => p[1] - p[2])) - MARGIN;
  const x1 = Math.max(...pts.map((p) => p[0] + p[2])) + MARGIN;
  const y1 = Math.max(...pts.map((p) => p[1] + p[2])) + MARGIN;
  const out = document.createElement("canvas");
  out.width = Math.ceil(x1 - x0);
  out.height = Math.ceil(y1 - y0);
  const c = out.getContext("2d");
  c.fillStyle = "#fff";
  c.fillRect(0, 0, out.width, out.height);
  for (const s of strokes) drawStroke(c, s, x0, y0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

async function readDrawing() {
  clearTimeout(autoRead);
  const blob = await drawingBlob();
  if (!blob) return setStatus("draw something first", true);
  await recognize(blob, "drawing");
}
$("recognize").addEventListener("click", readDrawing);

// ------------------------------------------------------------ upload, drop, paste

$("file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (file) recognize(file, file.name);
  e.target.value = ""; // the same file chosen again is read again
});

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/"));
  if (file) recognize(file, file.name);
  else setStatus("that is not an image file", true);
});

document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData ? e.clipboardData.items : [])].find((it) => it.type.startsWith("image/"));
  if (!item) return; // plain text: let it paste into the editor as usual
  e.preventDefault();
  recognize(item.getAsFile(), "pasted image");
});

// ------------------------------------------------------------ the API

function headers() {
  const key = $("apikey").value.trim() || localStorage.getItem("texocr.key") || "";
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function recognize(blob, label) {
  $("sent").src = URL.createObjectURL(blob);
  $("sent-figure").hidden = false;
  document.body.dataset.busy = "1";
  setStatus(`reading ${label}…`);
  const form = new FormData();
  form.append("file", blob, label.endsWith(".png") ? label : `${label}.png`);
  try {
    const res = await fetch("v1/predict", { method: "POST", body: form, headers: headers() });
    const body = await res.json().catch(() => ({}));
    if (res.status === 401 || res.status === 403) $("key-row").hidden = false;
    if (!res.ok) {
      const err = body.error || {};
      setStatus(`${err.message || res.statusText} (${res.status})`, true);
      return;
    }
    const r = body.results[0];
    if ($("apikey").value.trim()) localStorage.setItem("texocr.key", $("apikey").value.trim());
    $("latex").value = r.latex;
    renderLatex();
    setStatus(`${Math.round(body.total_ms)} ms${r.valid ? "" : ", not valid LaTeX"}`);
    remember(r.latex, await thumbnail(blob));
  } catch (e) {
    setStatus(`no answer from the server: ${e.message}`, true);
  } finally {
    delete document.body.dataset.busy;
    document.body.dataset.done = String(Number(document.body.dataset.done || 0) + 1);
  }
}

function setStatus(text, bad = false) {
  $("status").textContent = text;
  $("status").classList.toggle("bad", bad);
}

async function loadModel() {
  try {
    const res = await fetch("v1/model", { headers: headers() });
    if (res.status === 401 || res.status === 403) { $("key-row").hidden = false; return; }
    const m = await res.json();
    $("model").textContent = [m.card || m.model, m.family, m.device].filter(Boolean).join(" · ");
  } catch (e) { /* the page still works; the header just stays empty */ }
}

// ------------------------------------------------------------ the editor and its rendering

function renderLatex() {
  const tex = $("latex").value;
  $("render-error").textContent = "";
  if (!tex.trim()) { $("rendered").textContent = ""; return; }
  try {
    // trust: false keeps \href, \url, \includegraphics and HTML extensions off: the LaTeX may come from anyone
    // rendered off-page first: katex.render empties its target before it parses
    const fresh = document.createElement("div");
    katex.render(tex, fresh, { displayMode: true, throwOnError: true, trust: false, strict: "ignore",
                               maxSize: 20, maxExpand: 500 });
    $("rendered").replaceChildren(...fresh.childNodes);
  } catch (e) {
    $("render-error").textContent = e.message; // the last good rendering stays while the LaTeX is half typed
  }
}
$("latex").addEventListener("input", renderLatex);

$("copy").addEventListener("click", async () => {
  const text = $("latex").value;
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) { // no clipboard permission (plain http on another host): the old way
    $("latex").select();
    document.execCommand("copy");
  }
  setStatus("copied");
});

// ------------------------------------------------------------ recent results

function thumbnail(blob) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => {
      const scale = Math.min(1, 192 / img.width, 72 / img.height);
      const c = document.createElement("canvas");
      c.width = Math.max(1, Math.round(img.width * scale));
      c.height = Math.max(1, Math.round(img.height * scale));
      c.getContext("2d").drawImage(img, 0, 0, c.width, c.height);
      resolve(c.toDataURL("image/png"));
    };
    img.onerror = () => resolve("");
    img.src = URL.createObjectURL(blob);
  });
}

function history() {
  try { return JSON.parse(localStorage.getItem(HISTORY_KEY)) || []; } catch (e) { return []; }
}

function remember(latex, thumb) {
  const items = [{ latex, thumb, at: Date.now() }, ...history()].slice(0, HISTORY_SIZE);
  try { localStorage.setItem(HISTORY_KEY, JSON.stringify(items)); } catch (e) { /* storage full: keep in page */ }
  showHistory(items);
}

function showHistory(items = history()) {
  const list = $("recent");
  list.textContent = "";
  for (const it of items) {
    const li = document.createElement("li");
    const img = document.createElement("img");
    img.src = it.thumb || "";
    img.alt = "";
    const code = document.createElement("code");
    code.textContent = it.latex; // textContent, never innerHTML: the LaTeX is untrusted text
    li.append(img, code);
    li.title = "put back into the editor";
    li.addEventListener("click", () => { $("latex").value = it.latex; renderLatex(); });
    list.append(li);
  }
}

window.addEventListener("resize", fitPad);
fitPad();
showHistory();
loadModel();
