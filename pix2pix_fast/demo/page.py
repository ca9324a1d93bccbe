"""The demo page: one HTML document with its CSS and vanilla JS inline (no build step, no CDN).

Painting writes pixels straight into the canvas's ImageData with hard-edged
round brushes and filled rectangles, never through the 2-D context's
anti-aliased strokes: a label map must keep exactly the palette's colours,
or the model sees colours it was never trained on.
"""
from __future__ import annotations

import json

__all__ = ["render_page"]


def render_page(config: dict) -> str:
    """The page with `config` (model, palette, limits) embedded as JSON."""
    blob = json.dumps(config).replace("</", "<\\/")
    return _PAGE.replace("__CONFIG__", blob)


_PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pix2pix-fast demo</title>
<style>
  :root { --fg:#1f2328; --muted:#656d76; --line:#d0d7de; --bg:#f6f8fa; --accent:#0969da; --err:#cf222e; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg); background:var(--bg); }
  header { padding:14px 24px 10px; background:#fff; border-bottom:1px solid var(--line); display:flex; align-items:baseline; gap:16px; flex-wrap:wrap; }
  h1 { font-size:18px; margin:0; }
  h2 { font-size:14px; margin:0; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); }
  .meta { color:var(--muted); }
  main { display:flex; gap:20px; padding:18px 24px; flex-wrap:wrap; align-items:flex-start; }
  .panel { background:#fff; border:1px solid var(--line); border-radius:8px; padding:14px; width:452px; }
  .head { display:flex; justify-content:space-between; align-items:baseline; margin-bottom:8px; }
  .stage { width:420px; height:420px; display:flex; align-items:center; justify-content:center; border-radius:4px;
           background:repeating-conic-gradient(#eef1f4 0 25%, #fff 0 50%) 0 0/16px 16px; position:relative; overflow:hidden; }
  .stage.drag { outline:3px dashed var(--accent); outline-offset:-3px; }
  canvas, #output { image-rendering:pixelated; display:block; box-shadow:0 0 0 1px var(--line); }
  canvas { cursor:crosshair; touch-action:none; }
  #output[hidden] { display:none; }
  #placeholder { color:var(--muted); position:absolute; }
  .row { display:flex; align-items:center; gap:8px; margin-top:10px; flex-wrap:wrap; }
  button, .button { font:inherit; padding:5px 11px; border:1px solid var(--line); border-radius:6px; background:#f6f8fa; color:var(--fg); cursor:pointer; }
  button:hover, .button:hover { background:#eaeef2; }
  button:disabled { opacity:.45; cursor:default; }
  button.on { background:var(--accent); border-color:var(--accent); color:#fff; }
  .primary { background:var(--accent); color:#fff; border-color:var(--accent); }
  .primary:hover { background:#0860ca; }
  .palette { display:flex; flex-wrap:wrap; gap:6px; margin-top:10px; }
  .swatch { display:flex; align-items:center; gap:6px; padding:3px 8px 3px 3px; }
  .swatch i { width:18px; height:18px; border-radius:4px; box-shadow:inset 0 0 0 1px rgba(0,0,0,.25); display:inline-block; }
  .swatch.on { background:#ddf4ff; border-color:var(--accent); color:var(--fg); }
  input[type=range] { width:110px; vertical-align:middle; }
  a { color:var(--accent); }
  p.hint { margin:10px 0 0; }
  .hint { color:var(--muted); font-size:12.5px; }
  .stats { margin-top:10px; font-variant-numeric:tabular-nums; min-height:21px; }
  .stats b { font-weight:600; }
  .busy::after { content:" running\2026"; color:var(--muted); }
  #error { margin:14px 24px 0; padding:10px 14px; border:1px solid #ffcecb; background:#ffebe9; color:var(--err); border-radius:6px; }
  #error[hidden] { display:none; }
  footer { padding:0 24px 18px; color:var(--muted); font-size:12.5px; }
</style>
</head>
<body>
<header><h1>pix2pix-fast demo</h1><span class="meta" id="meta"></span></header>
<div id="error" role="alert" hidden></div>
<main>
  <section class="panel">
    <div class="head"><h2>Input</h2><span class="hint" id="in-size"></span></div>
    <div class="stage" id="drop"><canvas id="input" width="1" height="1"></canvas></div>
    <div class="row" id="tools">
      <button id="tool-pen" class="on" title="paint (P)">Pen</button>
      <button id="tool-eraser" title="paint the background colour (E)">Eraser</button>
      <button id="tool-rect" title="fill a rectangle (R)">Rectangle</button>
      <label class="hint">brush <input type="range" id="brush" min="1" max="48" value="4" style="width:80px"> <span id="brush-val"></span></label>
    </div>
    <div class="palette" id="palette"></div>
    <div class="row">
      <label class="button primary">Upload image<input type="file" id="file" accept="image/*,.npy,.tif,.tiff" hidden></label>
      <button id="example" hidden>Example</button>
      <span style="flex:1"></span>
      <button id="undo" title="Ctrl+Z" disabled>Undo</button>
      <button id="clear">Clear</button>
    </div>
    <p class="hint">Paint with the mouse, or upload or drop an image of any size up to <span id="max-side"></span> px a side.</p>
  </section>
  <section class="panel">
    <div class="head"><h2>Output</h2><span class="hint"><span id="out-size"></span> <a id="download" download="output.png" hidden>download</a></span></div>
    <div class="stage"><img id="output" alt="model output" data-count="0" hidden><span id="placeholder">paint or upload an input</span></div>
    <div class="stats" id="stats"></div>
    <div class="row">
      <button id="sample" title="draw new dropout noise for the same input">Sample again</button>
      <label><input type="checkbox" id="deterministic"> deterministic (eval mode)</label>
    </div>
    <div class="row">
      <label>pad-then-crop margin <input type="range" id="margin" min="0" max="64" step="4" value="0"></label>
      <span id="margin-val"></span>
    </div>
    <p class="hint" id="mode-hint"></p>
  </section>
</main>
<footer id="footer"></footer>
<script type="application/json" id="config">__CONFIG__</script>
<script>
"use strict";
const CFG = JSON.parse(document.getElementById("config").textContent);
const $ = (id) => document.getElementById(id);
const cv = $("input"), ctx = cv.getContext("2d", { willReadFrequently: true });
const out = $("output");
const STAGE = 420, UNDO_DEPTH = 40;
const M = CFG.model, P = CFG.palette;
let tool = "pen", colour = P.colours[0].rgb, brush = 4;
let seed = newSeed(), undoStack = [], stroke = null, exampleIndex = 0, outputs = 0;
let chain = Promise.resolve(), queued = false;

function newSeed() { return Math.floor(Math.random() * 2147483647); }
function css(rgb) { return `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`; }
function showError(msg) { const e = $("error"); e.textContent = msg; e.hidden = false; }
function hideError() { $("error").hidden = true; }

// ------------------------------------------------------------------ layout
function fit() {
  const s = Math.min(STAGE / cv.width, STAGE / cv.height);
  const k = s >= 1 ? Math.floor(s) : s;  // integer zoom keeps pixels square and crisp
  const w = Math.max(1, Math.round(cv.width * k)) + "px", h = Math.max(1, Math.round(cv.height * k)) + "px";
  cv.style.width = out.style.width = w; cv.style.height = out.style.height = h;
  $("in-size").textContent = `${cv.width} \u00d7 ${cv.height} px`;
}
function blank(w, h) { cv.width = w; cv.height = h; ctx.fillStyle = css(P.background); ctx.fillRect(0, 0, w, h); fit(); }
function snapshot() {
  undoStack.push(ctx.getImageData(0, 0, cv.width, cv.height));
  if (undoStack.length > UNDO_DEPTH) undoStack.shift();
  $("undo").disabled = false;
}
function restore(img) { cv.width = img.width; cv.height = img.height; ctx.putImageData(img, 0, 0); fit(); }

// ---------------------------------------------------------------- painting
function paintColour() { return tool === "eraser" ? P.background : colour; }
function stamp(img, cx, cy, rgb) {
  const d = brush, c = (d - 1) / 2, r2 = (d / 2) * (d / 2), x0 = cx - Math.floor(c), y0 = cy - Math.floor(c);
  for (let j = 0; j < d; j++) for (let i = 0; i < d; i++) {
    if ((i - c) * (i - c) + (j - c) * (j - c) > r2) continue;
    const x = x0 + i, y = y0 + j;
    if (x < 0 || y < 0 || x >= img.width || y >= img.height) continue;
    const o = (y * img.width + x) * 4;
    img.data[o] = rgb[0]; img.data[o + 1] = rgb[1]; img.data[o + 2] = rgb[2]; img.data[o + 3] = 255;
  }
}
function line(img, a, b, rgb) {
  const n = Math.max(Math.abs(b.x - a.x), Math.abs(b.y - a.y), 1);
  for (let k = 0; k <= n; k++) stamp(img, Math.round(a.x + (b.x - a.x) * k / n), Math.round(a.y + (b.y - a.y) * k / n), rgb);
}
function rect(img, a, b, rgb) {
  const xs = [Math.min(a.x, b.x), Math.max(a.x, b.x)], ys = [Math.min(a.y, b.y), Math.max(a.y, b.y)];
  for (let y = Math.max(0, ys[0]); y <= Math.min(img.height - 1, ys[1]); y++)
    for (let x = Math.max(0, xs[0]); x <= Math.min(img.width - 1, xs[1]); x++) {
      const o = (y * img.width + x) * 4;
      img.data[o] = rgb[0]; img.data[o + 1] = rgb[1]; img.data[o + 2] = rgb[2]; img.data[o + 3] = 255;
    }
}
function pos(e) {
  const r = cv.getBoundingClientRect();
  return { x: Math.min(cv.width - 1, Math.max(0, Math.floor((e.clientX - r.left) * cv.width / r.width))),
           y: Math.min(cv.height - 1, Math.max(0, Math.floor((e.clientY - r.top) * cv.height / r.height))) };
}
cv.addEventListener("pointerdown", (e) => {
  if (e.button !== 0) return;
  e.preventDefault();
  cv.setPointerCapture(e.pointerId);
  snapshot();
  const p = pos(e), base = ctx.getImageData(0, 0, cv.width, cv.height);
  stroke = { start: p, last: p, base, img: new ImageData(new Uint8ClampedArray(base.data), base.width, base.height) };
  if (tool === "rect") rect(stroke.img, p, p, paintColour()); else stamp(stroke.img, p.x, p.y, paintColour());
  ctx.putImageData(stroke.img, 0, 0);
});
cv.addEventListener("pointermove", (e) => {
  if (!stroke) return;
  const p = pos(e);
  if (tool === "rect") {
    stroke.img.data.set(stroke.base.data);
    rect(stroke.img, stroke.start, p, paintColour());
  } else {
    line(stroke.img, stroke.last, p, paintColour());
  }
  stroke.last = p;
  ctx.putImageData(stroke.img, 0, 0);
});
function endStroke() { if (!stroke) return; stroke = null; translateCanvas(); }
cv.addEventListener("pointerup", endStroke);
cv.addEventListener("pointercancel", endStroke);

// -------------------------------------------------------------- the model
function enqueue(job) {
  chain = chain.then(job).catch((err) => showError(`the page lost the server: ${err.message || err}`));
  return chain;
}
function query(extra) {
  return new URLSearchParams(Object.assign({
    margin: $("margin").value, deterministic: $("deterministic").checked ? "1" : "0", seed: String(seed),
  }, extra || {}));
}
async function send(body, extra) {
  $("stats").classList.add("busy");
  try {
    const res = await fetch("/api/translate?" + query(extra), { method: "POST", body });
    let data;
    try { data = await res.json(); } catch (_) { data = { error: `the server answered ${res.status} ${res.statusText}` }; }
    if (!res.ok || data.error) { showError(data.error || `the server answered ${res.status}`); return null; }
    hideError();
    if (data.input) { snapshot(); await drawURL(data.input); }
    out.src = data.output;
    await out.decode();
    out.hidden = false; $("placeholder").hidden = true;
    $("download").href = data.output; $("download").hidden = false;
    $("out-size").textContent = `${data.width} \u00d7 ${data.height} px \u00b7`;
    const mode = data.deterministic ? "eval mode" : (M.dropout ? `dropout seed ${data.seed}` : "train mode");
    $("stats").innerHTML = `model <b>${data.ms.toFixed(1)} ms</b> on ${data.device} \u00b7 ${mode}` +
      (data.margin ? ` \u00b7 margin ${data.margin} px` : "") + (data.captured ? " \u00b7 CUDA graph captured" : "");
    out.dataset.count = String(++outputs);
    return data;
  } finally {
    $("stats").classList.remove("busy");
  }
}
function canvasBlob() { return new Promise((resolve) => cv.toBlob(resolve, "image/png")); }
function translateCanvas() {
  if (queued) return;  // the queued job reads the canvas when it runs, so it sees this change too
  queued = true;
  enqueue(async () => { queued = false; await send(await canvasBlob()); });
}
async function drawURL(url) {
  const img = new Image();
  img.src = url;
  await img.decode();
  cv.width = img.naturalWidth; cv.height = img.naturalHeight;
  ctx.drawImage(img, 0, 0);
  fit();
}
function upload(file) {
  if (!file) return;
  if (file.size > CFG.max_bytes) {
    showError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MiB; the demo takes files up to ${CFG.max_bytes / 1048576} MiB`);
    return;
  }
  enqueue(() => send(file, { echo: "1" }));
}
function loadExample() {
  enqueue(async () => {
    const res = await fetch(`/api/example?i=${exampleIndex++}`);
    if (!res.ok) { showError((await res.json()).error); return; }
    snapshot();
    await drawURL(URL.createObjectURL(await res.blob()));
    await send(await canvasBlob());
  });
}

// --------------------------------------------------------------- controls
function setTool(t) {
  tool = t;
  for (const name of ["pen", "eraser", "rect"]) $("tool-" + name).classList.toggle("on", name === t);
}
$("tool-pen").onclick = () => setTool("pen");
$("tool-eraser").onclick = () => setTool("eraser");
$("tool-rect").onclick = () => setTool("rect");
$("brush").oninput = () => { brush = +$("brush").value; $("brush-val").textContent = `${brush} px`; };
$("undo").onclick = () => {
  if (!undoStack.length) return;
  restore(undoStack.pop());
  $("undo").disabled = !undoStack.length;
  translateCanvas();
};
$("clear").onclick = () => { snapshot(); blank(cv.width, cv.height); translateCanvas(); };
$("file").onchange = () => { upload($("file").files[0]); $("file").value = ""; };
$("example").onclick = loadExample;
$("sample").onclick = () => { seed = newSeed(); translateCanvas(); };
$("deterministic").onchange = () => { updateMode(); translateCanvas(); };
$("margin").oninput = () => { $("margin-val").textContent = `${$("margin").value} px`; };
$("margin").onchange = () => translateCanvas();
document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT") return;
  if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); $("undo").click(); }
  else if (e.key === "p") setTool("pen");
  else if (e.key === "e") setTool("eraser");
  else if (e.key === "r") setTool("rect");
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("drag"); });
drop.addEventListener("dragleave", () => drop.classList.remove("drag"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("drag"); upload(e.dataTransfer.files[0]); });

function updateMode() {
  const det = $("deterministic").checked;
  $("sample").disabled = det || !M.dropout;
  $("mode-hint").textContent = !M.dropout
    ? "This model has no dropout: its outputs do not vary between runs. Eval mode switches normalisation to running statistics."
    : det ? "Eval mode: dropout off, BatchNorm running statistics; the same input always gives the same output."
          : "Test-time dropout is on, as in the paper: each seed draws different noise. Painting keeps the seed; Sample again draws a new one.";
}

// ------------------------------------------------------------------- start
(function start() {
  const steps = M.step == null ? "" : `, step ${M.step}`;
  $("meta").textContent = `${M.checkpoint}: ${M.netG}, ${M.input_nc} \u2192 ${M.output_nc} channels${steps}, on ${M.device}`;
  $("max-side").textContent = CFG.max_side;
  $("margin").max = Math.min(CFG.max_margin, Math.max(64, M.crop_size / 2));
  $("margin").step = Math.max(1, Math.round($("margin").max / 16));
  $("margin").oninput();
  $("brush").value = Math.max(1, Math.round(CFG.canvas / 16)); $("brush").oninput();
  $("footer").textContent = `Palette: ${P.source}. Inputs of any size are reflect-padded to a multiple of ${M.multiple} and cropped back.`;
  const pal = $("palette");
  if (P.kind === "edges") {
    $("tool-pen").textContent = "Pen"; pal.hidden = true;
  } else {
    P.colours.forEach((c, i) => {
      const b = document.createElement("button");
      b.className = "swatch" + (i === 0 ? " on" : "");
      b.title = `${c.name} (${css(c.rgb)})`;
      b.dataset.rgb = c.rgb.join(",");
      b.innerHTML = `<i style="background:${css(c.rgb)}"></i>`;
      b.append(document.createTextNode(c.name));
      b.onclick = () => {
        colour = c.rgb;
        for (const s of pal.querySelectorAll(".swatch")) s.classList.toggle("on", s === b);
        if (tool === "eraser") setTool("pen");
      };
      pal.append(b);
    });
    if (P.kind === "photo") {
      const pick = document.createElement("input");
      pick.type = "color"; pick.title = "any colour";
      pick.oninput = () => { const v = parseInt(pick.value.slice(1), 16); colour = [v >> 16, (v >> 8) & 255, v & 255]; };
      pal.append(pick);
    }
  }
  updateMode();
  blank(CFG.canvas, CFG.canvas);
  if (CFG.examples) { $("example").hidden = false; loadExample(); } else { translateCanvas(); }
})();
</script>
</body>
</html>
"""
