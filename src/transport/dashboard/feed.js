// The dashboard's WebSocket, on a thread of its own (a dedicated worker).
//
// At thousands of ticks per second the node writes a frame every millisecond or so, and
// each frame that reaches a page costs its main thread an IPC message and an event
// before any script runs. Here those land on the worker; the frames (still text) are
// handed to the page in batches, at most one per FLUSH_MS, each frame with its receive
// time so that the latency the page shows is not the batching's.
//
// Page → worker: {kind: "open", url} | {kind: "send", text}
// Worker → page: {kind: "open"} | {kind: "frames", frames: [text], times: [ms]}
//              | {kind: "close", code, reason} | {kind: "error", message}
"use strict";

const FLUSH_MS = 16;

let ws = null;
let frames = [];
let times = [];
let timer = 0;
let flushedAt = 0;

/** Wall-clock milliseconds with sub-millisecond precision (as the page computes it). */
const nowMs = () => performance.timeOrigin + performance.now();

function flush() {
  clearTimeout(timer);
  timer = 0;
  if (!frames.length) return;
  postMessage({ kind: "frames", frames, times });
  frames = [];
  times = [];
  flushedAt = nowMs();
}

function open(url) {
  if (ws) {
    const old = ws;
    ws = null;
    old.onopen = old.onmessage = old.onclose = null;
    old.close();
  }
  frames = [];
  times = [];
  let sock;
  try {
    sock = new WebSocket(url);
  } catch (e) {
    postMessage({ kind: "error", message: e.message });
    return;
  }
  ws = sock;
  sock.onopen = () => {
    if (sock === ws) postMessage({ kind: "open" });
  };
  sock.onmessage = (ev) => {
    if (sock !== ws) return;
    const now = nowMs();
    frames.push(ev.data);
    times.push(now);
    // A frame after a quiet spell goes at once; under load they wait for the next slot.
    if (now - flushedAt >= FLUSH_MS) flush();
    else if (!timer) timer = setTimeout(flush, FLUSH_MS - (now - flushedAt));
  };
  sock.onclose = (ev) => {
    if (sock !== ws) return;
    ws = null;
    flush(); // what arrived before the close is handled before it
    postMessage({ kind: "close", code: ev.code, reason: ev.reason });
  };
}

onmessage = (e) => {
  const m = e.data;
  if (m.kind === "open") open(m.url);
  else if (m.kind === "send" && ws && ws.readyState === WebSocket.OPEN) ws.send(m.text);
};
