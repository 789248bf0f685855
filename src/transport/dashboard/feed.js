// The dashboard's WebSockets, on a thread of their own (a dedicated worker).
//
// At thousands of ticks per second the node writes a frame every millisecond or so, and
// each frame that reaches a page costs its main thread an IPC message and an event
// before any script runs. Here those land on the worker; the frames (still text) are
// handed to the page in batches, at most one per FLUSH_MS, each frame with its receive
// time (so that the latency the page shows is not the batching's) and the connection
// it came on. Usually one connection is open; during a planned move (the node's
// `reconnect`) the next one opens beside it, and the page closes the old one when the
// new one is live.
//
// Page → worker: {kind: "open", conn, url} | {kind: "send", conn, text}
//              | {kind: "close", conn, code, reason}
// Worker → page: {kind: "open", conn}
//              | {kind: "frames", frames: [text], times: [ms], conns: [conn]}
//              | {kind: "close", conn, code, reason} | {kind: "error", conn, message}
"use strict";

const FLUSH_MS = 16;

const socks = new Map(); // conn -> WebSocket
let frames = [];
let times = [];
let conns = [];
let timer = 0;
let flushedAt = 0;

/** Wall-clock milliseconds with sub-millisecond precision (as the page computes it). */
const nowMs = () => performance.timeOrigin + performance.now();

function flush() {
  clearTimeout(timer);
  timer = 0;
  if (!frames.length) return;
  postMessage({ kind: "frames", frames, times, conns });
  frames = [];
  times = [];
  conns = [];
  flushedAt = nowMs();
}

function forget(conn) {
  const sock = socks.get(conn);
  if (!sock) return;
  socks.delete(conn);
  sock.onopen = sock.onmessage = sock.onclose = null;
  return sock;
}

function open(conn, url) {
  let sock;
  try {
    sock = new WebSocket(url);
  } catch (e) {
    postMessage({ kind: "error", conn, message: e.message });
    return;
  }
  socks.set(conn, sock);
  sock.onopen = () => postMessage({ kind: "open", conn });
  sock.onmessage = (ev) => {
    const now = nowMs();
    frames.push(ev.data);
    times.push(now);
    conns.push(conn);
    // A frame after a quiet spell goes at once; under load they wait for the next slot.
    if (now - flushedAt >= FLUSH_MS) flush();
    else if (!timer) timer = setTimeout(flush, FLUSH_MS - (now - flushedAt));
  };
  sock.onclose = (ev) => {
    forget(conn);
    flush(); // what arrived before the close is handled before it
    postMessage({ kind: "close", conn, code: ev.code, reason: ev.reason });
  };
}

/** Closes `conn` from this side: the page hears nothing more of it. */
function close(conn, code, reason) {
  const sock = forget(conn);
  if (sock) sock.close(code || 1000, reason || "");
}

onmessage = (e) => {
  const m = e.data;
  if (m.kind === "open") open(m.conn, m.url);
  else if (m.kind === "close") close(m.conn, m.code, m.reason);
  else if (m.kind === "send") {
    const sock = socks.get(m.conn);
    if (sock && sock.readyState === WebSocket.OPEN) sock.send(m.text);
  }
};
