// rfrt live viewer: JPEG frames from the WebSocket drawn on a canvas, paced at the video's frame rate.
"use strict";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const query = new URLSearchParams({ stream: params.get("stream") || "main" });
if (params.get("token")) query.set("token", params.get("token"));
const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws?${query}`);
ws.binaryType = "arraybuffer";

const canvas = $("view");
const ctx = canvas.getContext("2d");
// Decoded frames waiting to be shown. Chunks arrive as bursts of frames; showing them at the video's rate
// keeps motion smooth, and a short cap keeps latency low (older frames are skipped when it overflows). A paced
// server sends a chunk while the one before it plays, so the cap holds three chunks: two, and one to spare.
const pending = [];
let videoFps = 16, drawn = 0, dropped = 0, nextDraw = 0;
let perChunk = 1, lastChunk = -1, chunkFrames = 0;
const maxPending = () => Math.max(24, 3 * perChunk);
const drawTimes = [];
window.rfrt = { framesDrawn: () => drawn, framesDropped: () => dropped, lastEvent: null, events: [] };

function showError(message) {
  $("error").textContent = message;
  console.warn("rfrt:", message);
}

function send(obj) {
  if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
  else showError("not connected to the server");
}

function onEvent(ev) {
  window.rfrt.lastEvent = ev;
  window.rfrt.events.push(ev);
  if (window.rfrt.events.length > 200) window.rfrt.events.shift();
  if (ev.type === "error") { showError(ev.message); return; }
  if (ev.type === "prompt") {
    $("error").textContent = "";
    $("log").textContent = `prompt switched at chunk ${ev.chunk}: ${ev.prompt}`;
    return;
  }
  if (ev.type === "hello" || ev.type === "status") {
    $("state").textContent = ev.state;
    $("chunks").textContent = ev.chunk;
    $("viewers").textContent = ev.viewers;
    $("genfps").textContent = ev.gen_fps == null ? "-" : ev.gen_fps.toFixed(1);
    if (ev.video_fps) videoFps = ev.video_fps;
    if (ev.width && ev.height && (canvas.width !== ev.width || canvas.height !== ev.height)) {
      canvas.width = ev.width; canvas.height = ev.height;
    }
    if (ev.type === "hello" && ev.prompt && !$("prompt").value) $("prompt").value = ev.prompt;
  }
}

ws.onmessage = async (msg) => {
  if (typeof msg.data === "string") {
    try { onEvent(JSON.parse(msg.data)); } catch (err) { showError(`bad message from the server: ${err}`); }
    return;
  }
  const header = new DataView(msg.data, 0, 8);
  const chunk = header.getUint32(0, true);
  try {
    const bitmap = await createImageBitmap(new Blob([new Uint8Array(msg.data, 8)], { type: "image/jpeg" }));
    if (chunk === lastChunk) chunkFrames++;
    else { perChunk = Math.max(perChunk, chunkFrames); lastChunk = chunk; chunkFrames = 1; }
    pending.push({ bitmap, chunk });
    while (pending.length > maxPending()) { pending.shift().bitmap.close(); dropped++; }
  } catch (err) {
    showError(`could not decode a frame: ${err}`);
  }
};
ws.onclose = (ev) => { $("state").textContent = "disconnected"; if (ev.reason) showError(ev.reason); };
ws.onerror = () => showError("WebSocket error (is the server running? is the token right? the server refuses "
                             + "pages from other addresses, and names it was not started for)");

function tick(now) {
  const interval = 1000 / videoFps;
  if (pending.length && now >= nextDraw - 2) {
    const { bitmap } = pending.shift();
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    drawn++;
    // A clock, not a delay since the last frame: each frame is due one interval after the one before, so the
    // page shows videoFps on average however the display's refresh rate divides it (waiting a whole interval
    // after each draw lands on every fourth 60 Hz refresh: 15 of 16 FPS, and a paced stream piles up). After a
    // gap with nothing to show, the clock starts again from now.
    nextDraw = now - nextDraw > interval ? now + interval : nextDraw + interval;
    drawTimes.push(now);
  }
  while (drawTimes.length && now - drawTimes[0] > 2000) drawTimes.shift();
  $("fps").textContent = (drawTimes.length / 2).toFixed(1);
  $("dropped").textContent = dropped;
  requestAnimationFrame(tick);
}
requestAnimationFrame(tick);

function seed() {
  const s = Number($("seed").value);
  if (!Number.isInteger(s) || s < 0) { showError("the seed must be a non-negative integer"); return null; }
  return s;
}

$("promptform").onsubmit = (e) => {
  e.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) { showError("type a prompt first"); return; }
  if ($("state").textContent === "running") send({ cmd: "prompt", prompt, recache: $("recache").checked });
  else { const s = seed(); if (s !== null) send({ cmd: "start", prompt, seed: s }); }
};
$("start").onclick = () => {
  if ($("state").textContent === "stopped") { send({ cmd: "start" }); return; }  // resume where it stopped
  const s = seed(); if (s === null) return;
  const prompt = $("prompt").value.trim();
  send(prompt ? { cmd: "start", prompt, seed: s } : { cmd: "start", seed: s });
};
$("stop").onclick = () => send({ cmd: "stop" });
$("reset").onclick = () => {
  const s = seed(); if (s === null) return;
  const prompt = $("prompt").value.trim();
  send(prompt ? { cmd: "reset", prompt, seed: s } : { cmd: "reset", seed: s });
};
