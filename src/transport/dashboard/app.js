// The tickstream dashboard: a watchlist of paced quotes (symbols and patterns, kept in
// localStorage), a candle chart and a depth ladder of the selected row, and a render
// loop that draws at most once per animation frame.
//
// The WebSockets live in a worker (feed.js), which hands the frames over in batches: the
// page's main thread sees tens of messages a second, not thousands. Rows subscribe with
// the pace the page chooses (`throttle_ms`), so 200 rows cost the page and the node what
// a screen can show. Incoming messages only change plain state (numbers, flags, a dirty
// set); the frame callback then writes the changed text nodes of the rows in view,
// redraws their due sparklines and the chart. Rows out of view are skipped by the
// browser (content-visibility) and by the render loop, and nothing reads layout, so no
// update forces a reflow. The sparklines are drawn on a few tall canvases laid over the
// trend column (one per SPARK_CHUNK rows), not one canvas per row: each canvas is a
// compositor layer of its own, and hundreds of them cost every frame far more than all
// the drawing.
//
// When the node announces a planned close (`reconnect`), the page opens its next
// connection at once, subscribes there with `resume`, and closes the old one when the
// new one is live; ticks both deliver meanwhile are told apart by `seq`, book updates by
// `seq` and `prev_seq` (book.js).
import { BookSync, Ladder, parseFrame } from "./book.js";
import { CandleChart, INTERVALS } from "./chart.js";
import { Histogram, Window, fmtMs } from "./latency.js";

const STORE = {
  watch: "tickstream.watchlist", patterns: "tickstream.patterns", hidden: "tickstream.hidden",
  pace: "tickstream.pace", chart: "tickstream.chart",
};
const DEFAULT_WATCHLIST = ["AAPL", "MSFT", "NVDA", "EUR/USD", "BTC-USD"];
const PACES = [0, 100, 250, 1000];
const DEFAULT_PACE_MS = 250;
const SYMBOL_RE = /^[A-Z0-9][A-Z0-9._:/-]{0,31}$/;
const PATTERN_RE = /^(\*|[A-Z0-9][A-Z0-9._:/-]{0,30}\*)$/;
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30000;
const HEALTHY_AFTER_MS = 5000;
const MOVE_RETRY_MS = 1000; // a planned move whose new connection failed tries again
// Close codes after which the same request would be refused again (PROTOCOL.md).
const FINAL_CLOSE = new Set([1002, 1003, 1007, 1008, 1009]);
const RATE_SLOT_MS = 250; // ticks/s: a ring of four 250 ms slots, one second in all
const RATE_SLOTS = 4;
const SPARK_POINTS = 120; // one point per 250 ms of activity
const SPARK_BUCKET_MS = 250;
const SPARK_MIN_INTERVAL_MS = SPARK_BUCKET_MS; // redrawn at most once per point
const FLASH_MS = 280;
const GAP_BADGE_MS = 6000;
const LAT_WINDOW_S = 10;
const REPORT_MS = 10000; // a latency report to the node, and its summary of every client
const CHART_BACKFILL = 300; // closed bars asked for: more than a wide screen shows
const MAX_SUGGESTIONS = 12;
const ROW_H = 41; // px, as .row in style.css
const SPARK_W = 160; // px, the sparkline's box in its row
const SPARK_H = 28;
const SPARK_TOP = 6; // px from the row's top
const SPARK_CHUNK = 32; // rows per sparkline canvas

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get("token");

/** Wall-clock milliseconds with sub-millisecond precision. */
const nowMs = () => performance.timeOrigin + performance.now();

// ---- counters the page exposes (window.__tickstream) ----
const stats = {
  ticks: 0, skipped: 0, snapshots: 0, gaps: 0, holes: 0, duplicates: 0, overlap: 0, resets: 0,
  stale: 0, statuses: 0, connects: 0, reconnects: 0, resumes: 0, errors: 0,
  planned: 0, moves: 0, moveFailures: 0, lastMoveMs: null,
  reports: 0, reported: 0, candles: 0, candleUpdates: 0, strayCandles: 0,
  frames: 0, batches: 0, renders: 0, rowsRendered: 0, chartDraws: 0,
};
let universe = [];
let universeSet = null;

// ---- per-symbol rows ----
const rows = new Map(); // symbol -> Row
const dirty = new Set(); // rows whose text needs writing (written when in view)
const sparkDue = new Set(); // rows whose sparkline needs drawing
const flashing = new Set(); // cells with a flash class on
let statusDirty = true;
let chipsDirty = true;
let framePending = false;

const rowsEl = $("rows");
const tpl = $("row-tpl");
const dpr = Math.max(1, Math.min(3, window.devicePixelRatio || 1));

function setText(textNode, s) {
  if (textNode.data !== s) textNode.data = s;
}

function cell(td) {
  const t = document.createTextNode("");
  td.appendChild(t);
  return { td, t, flashUntil: 0, flashCls: "" };
}

/** A text node appended to the element of `sel` in `el`. */
function textIn(el, sel) {
  return el.querySelector(sel).appendChild(document.createTextNode(""));
}

function rowElement(symbol) {
  const el = tpl.content.firstElementChild.cloneNode(true);
  el.dataset.symbol = symbol;
  el.querySelector(".sym-name").textContent = symbol;
  const remove = el.querySelector(".remove");
  remove.setAttribute("aria-label", `Remove ${symbol}`);
  remove.title = `Remove ${symbol}`;
  remove.addEventListener("click", (e) => {
    e.stopPropagation();
    removeSymbol(symbol, true);
  });
  el.addEventListener("click", () => openChart(symbol));
  el.addEventListener("keydown", (e) => {
    if (e.target !== el) return;
    if (e.key === "Delete" || e.key === "Backspace") {
      e.preventDefault();
      removeSymbol(symbol, true);
    } else if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      openChart(symbol);
    }
  });
  el.setAttribute("aria-label", symbol);
  return el;
}

function makeRow(symbol, named) {
  const el = rowElement(symbol);
  const row = {
    symbol, el, named, index: rows.size,
    badge: el.querySelector(".badge"), badgeText: textIn(el, ".badge"),
    healthEl: el.querySelector(".health"), healthText: textIn(el, ".health"),
    bid: cell(el.querySelector(".bid")),
    ask: cell(el.querySelector(".ask")),
    last: cell(el.querySelector(".last")),
    chg: cell(el.querySelector(".chg")),
    rate: cell(el.querySelector(".rate")),
    chgCls: "",
    // quote and position
    epoch: null, seq: null, by: 0, q: null, prev: null, first: null, decimals: 2, decSamples: 0,
    outdated: false, shownOutdated: false,
    // the node's word on the symbol (status): null while live, else {since, reason}
    health: null, shownHealth: "",
    // rate; updates (ticks applied) and renders (quote written to the DOM)
    slots: new Uint32Array(RATE_SLOTS), perSec: 0, ticks: 0, skipped: 0, updates: 0, renders: 0,
    holes: 0, gaps: 0,
    // sparkline ring
    spark: new Float64Array(SPARK_POINTS), sparkLen: 0, sparkHead: 0, sparkBucket: -1,
    sparkDrawn: 0, visible: true,
    // badge: a gap or an error shown on the row
    badgeMsg: "", badgeCls: "", badgeUntil: 0, shownBadge: null,
    lastGap: null, error: null,
  };
  setText(row.rate.t, "0");
  setText(row.bid.t, "–");
  setText(row.ask.t, "–");
  setText(row.last.t, "–");
  return row;
}

// ---- what the page watches (localStorage): named symbols, patterns, the pace ----
function load(key, fallback) {
  try {
    const raw = localStorage.getItem(key);
    if (raw !== null) return JSON.parse(raw);
  } catch (_) { /* storage unavailable or corrupt: the defaults */ }
  return fallback;
}

function store(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch (_) { /* private mode: the list lives as long as the page */ }
}

const strings = (v, re) => (Array.isArray(v) ? v.filter((s) => typeof s === "string" && re.test(s)) : []);
let patterns = strings(load(STORE.patterns, []), PATTERN_RE);
const hidden = new Set(strings(load(STORE.hidden, []), SYMBOL_RE)); // removed, though a pattern matches them
let pace = load(STORE.pace, DEFAULT_PACE_MS);
if (!PACES.includes(pace)) pace = DEFAULT_PACE_MS;
// A link may choose the pace (`?pace=0` for every tick), kept as if chosen in the menu.
const paceParam = params.get("pace");
const paceParamOk = paceParam !== null && /^[0-9]+$/.test(paceParam) && PACES.includes(Number(paceParam));
const paceParamBad = paceParam !== null && !paceParamOk;
if (paceParamOk) {
  pace = Number(paceParam);
  store(STORE.pace, pace);
}

function loadWatchlist() {
  const list = load(STORE.watch, null);
  return Array.isArray(list) ? strings(list, SYMBOL_RE) : DEFAULT_WATCHLIST.slice();
}

const saveWatchlist = () => store(STORE.watch, [...rows.values()].filter((r) => r.named).map((r) => r.symbol));
const savePatterns = () => {
  store(STORE.patterns, patterns);
  store(STORE.hidden, [...hidden]);
  chipsDirty = true;
};

const matches = (pattern, symbol) => pattern === "*" || symbol.startsWith(pattern.slice(0, -1));
const matched = (symbol) => patterns.some((p) => matches(p, symbol));

// Rows out of view are written and drawn when they come into view, not before. The
// browser already knows which rows it skips (content-visibility: auto) and says so
// when that changes; an IntersectionObserver would recompute 200 boxes every frame.
function addRow(symbol, named) {
  const row = makeRow(symbol, named);
  rows.set(symbol, row);
  row.el.addEventListener("contentvisibilityautostatechange", (e) => {
    row.visible = !e.skipped;
    if (row.visible) {
      dirty.add(row);
      sparkDue.add(row);
      schedule();
    }
  });
  rowsEl.appendChild(row.el);
  sparkChunks(rows.size);
  statusDirty = true;
  chipsDirty = true;
  return row;
}

/** Takes the row of `symbol` off the page (nothing is sent). */
function dropRow(row) {
  row.el.remove();
  rows.delete(row.symbol);
  dirty.delete(row);
  sparkDue.delete(row);
  for (const c of conns.values()) c.recheck.delete(row);
  for (const c of [row.bid, row.ask, row.last]) flashing.delete(c);
  if (chartSub && chartSub.symbol === row.symbol) closeChart();
  statusDirty = true;
  chipsDirty = true;
}

// ---- sparkline canvases: row i is drawn on canvas ⌊i / SPARK_CHUNK⌋ ----
const sparkLayer = $("sparks");
const chunks = []; // { canvas, ctx }

/** Keeps one canvas per SPARK_CHUNK of `n` rows. */
function sparkChunks(n) {
  const want = Math.ceil(n / SPARK_CHUNK);
  while (chunks.length < want) {
    const k = chunks.length;
    const canvas = document.createElement("canvas");
    canvas.width = SPARK_W * dpr;
    canvas.height = SPARK_CHUNK * ROW_H * dpr;
    canvas.style.top = `${k * SPARK_CHUNK * ROW_H}px`;
    canvas.style.height = `${SPARK_CHUNK * ROW_H}px`;
    sparkLayer.appendChild(canvas);
    chunks.push({ canvas, ctx: canvas.getContext("2d") });
  }
  while (chunks.length > want) chunks.pop().canvas.remove();
}

/** After a removal the rows below move up: renumber, and draw every sparkline again. */
function reindex() {
  let i = 0;
  for (const row of rows.values()) {
    row.index = i++;
    row.sparkDrawn = 0;
    sparkDue.add(row);
  }
  sparkChunks(rows.size);
  for (const c of chunks) c.ctx.clearRect(0, 0, c.canvas.width, c.canvas.height);
}

function addSymbol(raw) {
  const symbol = raw.trim().toUpperCase();
  if (!symbol) return say("Type a symbol to add.");
  if (!SYMBOL_RE.test(symbol)) return say(`${symbol} is not a valid symbol.`);
  const held = rows.get(symbol);
  if (held && held.named) {
    held.el.focus();
    return say(`${symbol} is already in the watchlist.`);
  }
  if (universeSet && !universeSet.has(symbol)) return say(`${symbol} is not served by this node.`);
  const limits = primary && primary.limits;
  if (!held && limits && rows.size >= limits.max_symbols) {
    return say(`At most ${limits.max_symbols} symbols per connection.`);
  }
  hidden.delete(symbol);
  if (held) held.named = true;
  else {
    addRow(symbol, true);
    sendAll(tickSubscribe([symbol]));
  }
  saveWatchlist();
  savePatterns();
  say("");
  schedule();
  return true;
}

function removeSymbol(symbol, moveFocus) {
  const row = rows.get(symbol);
  if (!row) return;
  const neighbour = row.el.nextElementSibling || row.el.previousElementSibling;
  dropRow(row);
  reindex();
  // A pattern would bring it back on the next connection: it is remembered as removed.
  if (matched(symbol)) hidden.add(symbol);
  saveWatchlist();
  savePatterns();
  sendAll({ op: "unsubscribe", id: nextId(), symbols: [symbol] });
  if (moveFocus) (neighbour || $("add-input")).focus();
  say(`Removed ${symbol}.`);
  schedule();
}

// ---- patterns ----
const pendingPatterns = new Map(); // subscribe id -> pattern, until the node answers

function addPattern(raw) {
  const p = raw.trim().toUpperCase();
  if (!PATTERN_RE.test(p)) {
    return say(`"${p}" is not a pattern: * alone, or the start of symbols followed by * (BTC-*).`);
  }
  if (patterns.includes(p)) return say(`${p} is already watched.`);
  patterns.push(p);
  for (const s of [...hidden]) if (matches(p, s)) hidden.delete(s); // asked for again
  savePatterns();
  const cmd = tickSubscribe([p]);
  pendingPatterns.set(cmd.id, p);
  sendAll(cmd); // rows come with the node's answer: what the pattern matched
  say("");
  schedule();
  return true;
}

/** Stops watching `p`. The node drops every symbol it matched, named or not: the rows
 *  still wanted (named, or matched by another pattern) are subscribed again. */
function removePattern(p) {
  if (!patterns.includes(p)) return;
  patterns = patterns.filter((x) => x !== p);
  for (const s of [...hidden]) if (!matched(s)) hidden.delete(s);
  savePatterns();
  sendAll({ op: "unsubscribe", id: nextId(), symbols: [p] });
  const keep = [];
  for (const row of [...rows.values()]) {
    if (!matches(p, row.symbol)) continue;
    if (row.named || matched(row.symbol)) keep.push(row.symbol);
    else dropRow(row);
  }
  reindex();
  if (keep.length) sendAll(tickSubscribe(keep, resumeOf(keep.map((s) => rows.get(s)))));
  schedule();
}

/** The node's `subscribed` on the ticks channel: symbols patterns matched become rows
 *  (those removed by hand are dropped again). */
function onSubscribed(c, m) {
  if (m.channel && m.channel !== "ticks") return;
  pendingPatterns.delete(m.id);
  const drop = [];
  for (const s of Array.isArray(m.symbols) ? m.symbols : []) {
    if (rows.has(s)) continue;
    if (hidden.has(s)) drop.push(s);
    else if (matched(s)) addRow(s, false);
  }
  if (drop.length) sendTo(c, { op: "unsubscribe", id: nextId(), symbols: drop });
  schedule();
}

function renderChips() {
  chipsDirty = false;
  $("patterns").replaceChildren(...patterns.map((p) => {
    const li = document.createElement("li");
    li.dataset.pattern = p;
    let n = 0;
    for (const s of rows.keys()) if (matches(p, s)) n += 1;
    const count = document.createElement("span");
    count.className = "n";
    count.textContent = `${n} symbol${n === 1 ? "" : "s"}`;
    const x = document.createElement("button");
    x.type = "button";
    x.textContent = "×";
    x.setAttribute("aria-label", `Stop watching ${p}`);
    x.addEventListener("click", () => removePattern(p));
    li.append(p, count, x);
    return li;
  }));
}

// ---- commands ----
let ids = 0;
const nextId = () => ++ids;

/** A subscribe of the ticks channel at the page's pace. */
function tickSubscribe(symbols, resume) {
  const cmd = { op: "subscribe", id: nextId(), symbols, snapshot: true, throttle_ms: pace };
  if (resume && Object.keys(resume).length) cmd.resume = resume;
  return cmd;
}

/** Where each of `list` stands: what a new connection resumes from. */
function resumeOf(list) {
  const resume = {};
  for (const row of list) {
    if (row && row.epoch !== null && row.seq !== null) resume[row.symbol] = { epoch: row.epoch, seq: row.seq };
  }
  return resume;
}

function setPace(ms) {
  if (!PACES.includes(ms) || ms === pace) return;
  pace = ms;
  store(STORE.pace, pace);
  // Subscribing again with another throttle_ms changes the pace and re-sends nothing.
  const symbols = [...rows.keys(), ...patterns];
  if (symbols.length) sendAll(tickSubscribe(symbols));
}

// ---- connections (the sockets themselves are in the worker) ----
// A connection is live once it has answered `welcome`. `primary` serves the page;
// `next` is the one opened for a planned move, promoted when it has caught up.
const feed = new Worker("/assets/feed.js");
const conns = new Map(); // id -> Conn
let connIds = 0;
let primary = null;
let next = null;
let moveStartedAt = 0;
let connState = "connecting"; // connecting | live | waiting | stopped
let connDetail = "";
let attempt = 0; // consecutive failed connections
let healthy = false;
let retryAt = 0;
let retryTimer = 0;
let everConnected = false;

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const q = token ? `?token=${encodeURIComponent(token)}` : "";
  return `${scheme}//${location.host}/v1/ws${q}`;
}

function openConn() {
  const c = {
    id: ++connIds, welcomed: false, node: null, limits: null, openedAt: 0,
    syncId: 0, synced: false, recheck: new Set(), leaving: null,
    // The connection this one took over from in a move (its id).
    took: 0,
  };
  conns.set(c.id, c);
  feed.postMessage({ kind: "open", conn: c.id, url: wsUrl() });
  return c;
}

function closeConn(c, code, reason) {
  conns.delete(c.id);
  feed.postMessage({ kind: "close", conn: c.id, code, reason });
}

function sendTo(c, msg) {
  if (c && c.welcomed && conns.has(c.id)) feed.postMessage({ kind: "send", conn: c.id, text: JSON.stringify(msg) });
}

/** Sends `msg` on every live connection (both, during a move). */
function sendAll(msg) {
  for (const c of conns.values()) sendTo(c, msg);
}

function connect() {
  clearTimeout(retryTimer);
  retryTimer = 0;
  connState = "connecting";
  connDetail = attempt ? `attempt ${attempt + 1}` : "";
  statusDirty = true;
  schedule();
  healthy = false;
  primary = openConn();
}

feed.onmessage = (e) => {
  const m = e.data;
  const c = conns.get(m.conn);
  switch (m.kind) {
    case "frames": return onFrames(m.frames, m.times, m.conns);
    case "open":
      if (c) c.openedAt = nowMs();
      return undefined;
    case "close":
      if (c) onClose(c, m);
      return undefined;
    case "error":
      if (!c) return undefined;
      conns.delete(c.id);
      if (c === next) return moveFailed(c);
      return c === primary ? stop(`cannot open the WebSocket: ${m.message}`) : undefined;
    default: return undefined;
  }
};
feed.onerror = (e) => stop(`the connection worker failed: ${e.message || "no reason given"}`);

function stop(why) {
  connState = "stopped";
  connDetail = why;
  statusDirty = true;
  schedule();
}

function onClose(c, ev) {
  conns.delete(c.id);
  if (c === next) return moveFailed(c);
  if (c !== primary) return undefined; // the old connection of a finished move
  if (next) {
    // The node closed the old one first: the new one serves from now on.
    primary = next;
    statusDirty = true;
    return undefined;
  }
  return lost(c, ev);
}

/** The connection serving the page is gone: wait (full jitter), then connect again. */
function lost(c, ev) {
  for (const row of rows.values()) row.outdated = true;
  if (c.openedAt && nowMs() - c.openedAt >= HEALTHY_AFTER_MS) healthy = true;
  if (FINAL_CLOSE.has(ev.code)) {
    stop(`closed by the server (${ev.code}${ev.reason ? ": " + ev.reason : ""}); reload to try again`);
    return;
  }
  if (healthy) attempt = 0;
  // Full jitter: uniform in [0, min(cap, base · 2^attempt)).
  const delay = Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
  attempt += 1;
  retryAt = nowMs() + delay;
  connState = "waiting";
  connDetail = ev.code && ev.code !== 1006 ? `closed ${ev.code}` : "connection lost";
  retryTimer = setTimeout(connect, delay);
  statusDirty = true;
  schedule();
}

function onWelcome(c, m) {
  c.welcomed = true;
  c.node = m.node || null;
  c.limits = m.limits || null;
  stats.connects += 1;
  if (c === primary && c !== next) {
    connState = "live";
    connDetail = "";
    if (everConnected) stats.reconnects += 1;
    everConnected = true;
  }
  statusDirty = true;
  subscribeAll(c);
}

/** Everything the page watches, on connection `c`, from where each row stands; then a
 *  ping, whose pong comes after everything the subscriptions queued. */
function subscribeAll(c) {
  const symbols = [...rows.keys(), ...patterns];
  if (symbols.length) {
    const cmd = tickSubscribe(symbols, resumeOf(rows.values()));
    if (cmd.resume) stats.resumes += 1;
    sendTo(c, cmd);
  }
  if (chartSub) sendTo(c, candleSubscribe(chartSub));
  if (books.symbol) sendTo(c, books.subscribeCmd());
  // A new connection is a new session: its node says `status` stale right after the
  // subscription's snapshot for every symbol stale there, and nothing for the others.
  // Rows marked stale keep their mark until the pong: a row not called stale by then is
  // live there.
  c.recheck = new Set([...rows.values()].filter((r) => r.health));
  c.syncId = nextId();
  sendTo(c, { op: "ping", id: c.syncId });
}

function onPong(c, m) {
  if (!c.syncId || m.id !== c.syncId) return;
  c.synced = true;
  for (const row of c.recheck) setHealth(row, null);
  c.recheck.clear();
  if (c === next) finishMove(c);
}

// ---- planned moves (`reconnect`) ----
function onPlanned(c, m) {
  if (c !== primary || next) return;
  stats.planned += 1;
  c.leaving = { reason: String(m.reason || ""), inMs: Number(m.in_ms) || 0, at: nowMs() };
  moveStartedAt = nowMs();
  next = openConn();
  statusDirty = true;
}

/** The new connection has subscribed everything and delivered what that queued: it
 *  serves the page, and the old one is closed. */
function finishMove(c) {
  const old = primary;
  primary = c;
  c.took = old ? old.id : 0;
  next = null;
  stats.moves += 1;
  stats.lastMoveMs = Math.round(nowMs() - moveStartedAt);
  if (old && old !== c && conns.has(old.id)) closeConn(old, 1000, "moved");
  connState = "live";
  connDetail = "";
  healthy = true;
  attempt = 0;
  statusDirty = true;
}

function moveFailed(c) {
  next = null;
  stats.moveFailures += 1;
  if (primary === c) {
    // The old connection had already gone: an ordinary reconnect.
    lost(c, { code: 1006 });
    return;
  }
  setTimeout(() => {
    if (!next && primary && primary.leaving && conns.has(primary.id)) next = openConn();
  }, MOVE_RETRY_MS);
}

// ---- health of a symbol (status) ----
function onStatus(c, m, now) {
  const row = rows.get(m.symbol);
  if (!row) return;
  stats.statuses += 1;
  c.recheck.delete(row);
  if (m.state === "live") setHealth(row, null);
  else if (m.state === "stale") setHealth(row, { since: now, reason: String(m.reason || "") });
}

/** Takes the node's word on a row: null (live) or {since, reason}. */
function setHealth(row, health) {
  if (health && row.health) {
    row.health.reason = health.reason; // still stale: it keeps when it went stale
  } else if (health || row.health) {
    if (health) stats.stale += 1;
    row.health = health;
  } else {
    return;
  }
  dirty.add(row);
  sparkDue.add(row); // drawn grey while stale
  statusDirty = true;
}

function staleRows() {
  let n = 0;
  for (const row of rows.values()) if (row.health) n += 1;
  return n;
}

/** How long a row has been stale: 4s, 3m 05s, 2h 07m. */
function fmtAge(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
}

// ---- messages ----
/** A batch of frames from the worker, each with its receive time and connection. */
function onFrames(frames, times, from) {
  stats.batches += 1;
  stats.frames += frames.length;
  for (let f = 0; f < frames.length; f++) {
    const c = conns.get(from[f]);
    if (!c) continue; // a connection the page has closed
    let msgs;
    try {
      msgs = parseFrame(frames[f]);
    } catch (_) {
      continue;
    }
    const now = times[f];
    if (!Array.isArray(msgs)) handle(msgs, now, c);
    else for (let i = 0; i < msgs.length; i++) handle(msgs[i], now, c);
  }
  schedule();
}

function handle(m, now, c) {
  switch (m.type) {
    case "tick": return onTick(m, now, c);
    case "snapshot": return onSnapshot(m, now, c);
    case "candle": return onCandle(m);
    case "candles": return onCandles(m, now);
    case "book": return books.onBook(m, now);
    case "book_update": return books.onUpdate(m, now, conns.size > 1);
    case "gap":
      if (m.channel === "book") return books.onGap(m);
      return m.channel && m.channel !== "ticks" ? undefined : onGap(m, now, c);
    case "welcome": return onWelcome(c, m);
    case "subscribed": return onSubscribed(c, m);
    case "unsubscribed": return onUnsubscribed(m);
    case "error": return onError(m, now);
    case "status": return onStatus(c, m, now);
    case "pong": return onPong(c, m);
    case "reconnect": return onPlanned(c, m);
    case "reported":
      stats.reported += 1;
      return undefined;
    default: return undefined; // subscriptions, and what this page does not know
  }
}

function markHealthy() {
  if (!healthy) {
    healthy = true;
    attempt = 0;
  }
}

/** Throws away what the row held: a new epoch restarts the symbol's numbering. */
function resetRow(row) {
  row.seq = null;
  row.q = null;
  row.prev = null;
  row.first = null;
  row.sparkLen = 0;
  row.sparkHead = 0;
  row.sparkBucket = -1;
}

function applyQuote(row, m, now) {
  row.prev = row.q;
  row.q = m;
  if (row.first === null) row.first = m.last;
  if (row.decSamples < 24) {
    row.decSamples += 1;
    row.decimals = Math.max(row.decimals, decimalsOf(m.bid), decimalsOf(m.ask), decimalsOf(m.last));
    if (chartSub && chartSub.symbol === row.symbol) chart.setDecimals(row.decimals);
  }
  if (chartSub && chartSub.symbol === row.symbol) headDirty = true;
  // sparkline: one point per bucket, the newest price of that bucket
  const b = Math.floor(now / SPARK_BUCKET_MS);
  if (b === row.sparkBucket && row.sparkLen > 0) {
    row.spark[(row.sparkHead + SPARK_POINTS - 1) % SPARK_POINTS] = m.last;
  } else {
    row.spark[row.sparkHead] = m.last;
    row.sparkHead = (row.sparkHead + 1) % SPARK_POINTS;
    if (row.sparkLen < SPARK_POINTS) row.sparkLen += 1;
    row.sparkBucket = b;
  }
  row.outdated = false;
  dirty.add(row);
  sparkDue.add(row);
  markHealthy();
}

function onSnapshot(m, now, c) {
  const row = rows.get(m.symbol);
  if (!row) return;
  if (row.epoch !== null && m.epoch !== row.epoch) {
    stats.resets += 1;
    resetRow(row);
  } else if (row.seq !== null && m.seq < row.seq) {
    stats.overlap += 1; // older than what the other connection already gave
    return;
  }
  stats.snapshots += 1;
  row.epoch = m.epoch;
  row.seq = m.seq;
  row.by = c.id;
  if (row.error) {
    row.error = null;
    clearBadge(row);
  }
  applyQuote(row, m, now);
}

/** How many ticks the jump to `m` folded: `skipped`, or fewer where this page already
 *  held some of them (the other connection of a move gave them). -1 for a hole. */
function folded(row, m) {
  const missing = m.seq - row.seq - 1;
  const skipped = m.skipped || 0;
  return missing > skipped ? -1 : missing;
}

function onTick(m, now, c) {
  const row = rows.get(m.symbol);
  if (!row) return;
  let skipped = m.skipped || 0;
  if (m.epoch !== undefined && m.epoch !== row.epoch) {
    if (row.epoch !== null) {
      stats.resets += 1;
      resetRow(row);
    }
    row.epoch = m.epoch;
  } else if (row.seq !== null) {
    if (m.seq <= row.seq) {
      // During a move both connections deliver: the second copy is dropped. So is one
      // the new connection brings right after the move of what the old one gave
      // before it closed.
      if (conns.size > 1 || (row.by !== c.id && row.by === c.took)) stats.overlap += 1;
      else stats.duplicates += 1;
      return;
    }
    skipped = folded(row, m);
    if (skipped < 0) {
      // A jump nobody announced: a hole.
      stats.holes += 1;
      row.holes += 1;
      showBadge(row, `hole ${row.seq + 1}–${m.seq - 1}`, "err", now);
      skipped = m.skipped || 0;
    }
  }
  row.seq = m.seq;
  row.by = c.id;
  stats.ticks += 1;
  stats.skipped += skipped;
  row.ticks += 1;
  row.skipped += skipped;
  row.updates += 1;
  row.slots[slotIndex(now)] += 1 + skipped;
  globalSlots[slotIndex(now)] += 1 + skipped;
  const ms = now - m.ts / 1e6;
  latWindow.add(ms, now);
  reportHist.add(ms);
  applyQuote(row, m, now);
}

function onGap(m, now, c) {
  const row = rows.get(m.symbol);
  if (!row) return;
  stats.gaps += 1;
  row.gaps += 1;
  if (row.seq === null || m.to > row.seq) {
    row.seq = m.to;
    row.by = c.id;
  }
  row.outdated = true;
  row.lastGap = { from: m.from, to: m.to, reason: m.reason };
  const span = m.from === m.to ? `${m.from}` : `${m.from}–${m.to}`;
  showBadge(row, `gap ${span} · ${String(m.reason).replace(/_/g, " ")}`, "", now);
  dirty.add(row);
}

function onError(m, now) {
  stats.errors += 1;
  const pattern = pendingPatterns.get(m.id);
  if (pattern !== undefined) {
    pendingPatterns.delete(m.id);
    patterns = patterns.filter((p) => p !== pattern);
    savePatterns();
    say(`${pattern}: ${m.message || m.code}`);
    return;
  }
  if (m.channel === "candles") {
    chartNote = m.message || m.code;
    chart.dirty = true;
    return;
  }
  if (m.channel === "book") return books.onError(m);
  const symbols = Array.isArray(m.symbols) ? m.symbols : [];
  let onRows = 0;
  for (const s of symbols) {
    const row = rows.get(s);
    if (!row) continue;
    row.error = m.code;
    showBadge(row, String(m.code).replace(/_/g, " "), "err", now, Infinity);
    onRows += 1;
  }
  if (!onRows) say(m.message || m.code);
}

function showBadge(row, text, cls, now, ttl = GAP_BADGE_MS) {
  row.badgeMsg = text;
  row.badgeCls = cls;
  row.badgeUntil = now + ttl;
  dirty.add(row);
}

function clearBadge(row) {
  row.badgeMsg = "";
  row.badgeUntil = 0;
  dirty.add(row);
}

/** The decimals a price is written with (at most 6): the fewest that hold it, so that a
 *  float's noise (1.1000000000000001) does not count. */
function decimalsOf(x) {
  if (typeof x !== "number" || !isFinite(x)) return 0;
  for (let d = 0; d < 6; d++) {
    const scaled = x * 10 ** d;
    if (Math.abs(scaled - Math.round(scaled)) <= 1e-9 * Math.max(1, Math.abs(scaled))) return d;
  }
  return 6;
}

// ---- the depth ladder of the selected row (the book channel, book.js) ----
const books = new BookSync((cmd) => sendAll(cmd), nextId);
const ladder = new Ladder({
  root: $("ladder"), asks: $("lad-asks"), bids: $("lad-bids"), spread: $("lad-spread"),
  state: $("lad-state"), mismatches: $("lad-mismatches"), resyncs: $("lad-resyncs"),
});

// ---- the chart of the selected row (the candles channel) ----
const chart = new CandleChart($("chart-canvas"));
let chartSub = null; // {symbol, interval, selectedAt, loadedAt, drawnAt}
let chartNote = "";
let headDirty = false; // the chart's header: the symbol's price moved
const unsubscribing = new Map(); // unsubscribe id -> "SYMBOL interval"
const gone = new Set(); // candle subscriptions the node said it dropped
const chartKey = (symbol, interval) => `${symbol} ${interval}`;

function candleSubscribe(sub) {
  return {
    op: "subscribe", id: nextId(), channel: "candles", interval: sub.interval,
    backfill: CHART_BACKFILL, symbols: [sub.symbol],
  };
}

/** Shows the chart of `symbol` at `interval` (the current one by default), dropping the
 *  subscription of the chart it replaces. */
function openChart(symbol, interval = chartSub ? chartSub.interval : "1s") {
  if (!INTERVALS[interval] || !rows.has(symbol)) return;
  if (chartSub && chartSub.symbol === symbol && chartSub.interval === interval) return;
  if (chartSub) dropCandles(chartSub);
  const was = chartSub && chartSub.symbol;
  chartSub = { symbol, interval, selectedAt: nowMs(), loadedAt: 0, drawnAt: 0 };
  chartNote = "";
  gone.delete(chartKey(symbol, interval));
  chart.reset(INTERVALS[interval]);
  chart.setDecimals(rows.get(symbol).decimals);
  sendAll(candleSubscribe(chartSub));
  books.select(symbol, chartSub.selectedAt);
  store(STORE.chart, { symbol, interval });
  markSelected(was, symbol);
  showDetail(true);
  schedule();
}

function closeChart() {
  if (!chartSub) return;
  dropCandles(chartSub);
  books.select(null, nowMs());
  markSelected(chartSub.symbol, null);
  chartSub = null;
  store(STORE.chart, null);
  showDetail(false);
}

function dropCandles(sub) {
  const id = nextId();
  unsubscribing.set(id, chartKey(sub.symbol, sub.interval));
  sendAll({ op: "unsubscribe", id, channel: "candles", interval: sub.interval, symbols: [sub.symbol] });
}

function onUnsubscribed(m) {
  const k = unsubscribing.get(m.id);
  if (k === undefined) return;
  unsubscribing.delete(m.id);
  if (!chartSub || chartKey(chartSub.symbol, chartSub.interval) !== k) gone.add(k);
}

/** Whether `m` is of the chart shown; messages of a dropped subscription are counted. */
function charted(m) {
  if (chartSub && m.symbol === chartSub.symbol && m.interval === chartSub.interval) return true;
  if (gone.has(chartKey(m.symbol, m.interval))) stats.strayCandles += 1;
  return false;
}

function onCandles(m, now) {
  stats.candles += 1;
  if (!charted(m) || !Array.isArray(m.bars)) return;
  chart.load(m.bars);
  if (!chartSub.loadedAt) chartSub.loadedAt = now;
}

function onCandle(m) {
  stats.candleUpdates += 1;
  if (charted(m)) chart.update(m);
}

function markSelected(from, to) {
  const a = from && rows.get(from);
  if (a) {
    a.el.classList.remove("selected");
    a.el.setAttribute("aria-selected", "false");
  }
  const b = to && rows.get(to);
  if (b) {
    b.el.classList.add("selected");
    b.el.setAttribute("aria-selected", "true");
  }
}

const detail = $("detail");
const chartHead = {
  sym: $("ch-sym").appendChild(document.createTextNode("")),
  lastEl: $("ch-last"), last: $("ch-last").appendChild(document.createTextNode("")),
  info: $("ch-info").appendChild(document.createTextNode("")),
};

function showDetail(on) {
  detail.hidden = !on;
  for (const b of detail.querySelectorAll(".intervals button")) {
    b.setAttribute("aria-pressed", String(!!chartSub && b.dataset.interval === chartSub.interval));
  }
  if (chartSub) setText(chartHead.sym, chartSub.symbol);
}

new ResizeObserver((entries) => {
  const r = entries[entries.length - 1].contentRect;
  chart.resize(r.width, r.height);
  schedule();
}).observe($("chart"));

const canvasEl = $("chart-canvas");
canvasEl.addEventListener("pointermove", (e) => {
  chart.setPointer({ x: e.offsetX, y: e.offsetY });
  schedule();
});
canvasEl.addEventListener("pointerleave", () => {
  chart.setPointer(null);
  schedule();
});
$("ch-close").addEventListener("click", closeChart);
for (const b of detail.querySelectorAll(".intervals button")) {
  b.addEventListener("click", () => chartSub && openChart(chartSub.symbol, b.dataset.interval));
}

function renderChart(now) {
  if (chart.dirty) {
    chart.draw();
    stats.chartDraws += 1;
    if (!chartSub.drawnAt && chart.bars.length) chartSub.drawnAt = now;
  }
  headDirty = false;
  const row = rows.get(chartSub.symbol);
  const d = row ? row.decimals : 2;
  const b = chart.readout();
  const text = b
    ? `O ${b.open.toFixed(d)}  H ${b.high.toFixed(d)}  L ${b.low.toFixed(d)}  C ${b.close.toFixed(d)}  V ${b.volume}  ${b.ticks} ticks${b.closed ? "" : " · forming"}`
    : chartNote || "waiting for bars";
  setText(chartHead.info, text);
  if (row && row.q) {
    setText(chartHead.last, row.q.last.toFixed(d));
    chartHead.lastEl.className = `ch-last ${row.q.last >= row.first ? "pos" : "neg"}`;
  }
}

// ---- rates ----
const globalSlots = new Uint32Array(RATE_SLOTS);
let slotNow = Math.floor(nowMs() / RATE_SLOT_MS);
let globalRate = 0;

function slotIndex(now) {
  advanceSlots(now);
  return slotNow % RATE_SLOTS;
}

function advanceSlots(now) {
  const s = Math.floor(now / RATE_SLOT_MS);
  if (s === slotNow) return;
  const steps = Math.min(RATE_SLOTS, s - slotNow);
  for (let k = 1; k <= steps; k++) {
    const i = (slotNow + k) % RATE_SLOTS;
    globalSlots[i] = 0;
    for (const row of rows.values()) row.slots[i] = 0;
  }
  slotNow = s;
}

function sum(a) {
  let n = 0;
  for (let i = 0; i < a.length; i++) n += a[i];
  return n;
}

// ---- latency: the page's own (shown, and reported to the node), and every client's ----
const latWindow = new Window(LAT_WINDOW_S);
const reportHist = new Histogram(); // since the last report
let reportFrom = nowMs();
let latency = null; // {p50, p99} over the last 10 s
let lastReport = null;
let clients = null; // the node's GET /v1/latency

/** Tells the node what this page saw since its last report (nothing when it saw nothing). */
function report() {
  const now = nowMs();
  const s = reportHist.summary();
  const windowMs = Math.max(1, Math.round(now - reportFrom));
  reportFrom = now;
  const count = reportHist.n;
  reportHist.clear();
  if (!s || !primary || !primary.welcomed) return;
  const ms = (x) => Math.min(3600000, Math.round(x * 1000) / 1000);
  lastReport = { p50: ms(s.p50), p99: ms(s.p99), max: ms(s.max) };
  sendTo(primary, { op: "report", id: nextId(), latency_ms: lastReport, count, window_ms: Math.min(3600000, windowMs) });
  stats.reports += 1;
}

async function fetchClients() {
  try {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const resp = await fetch("/v1/latency", { cache: "no-store", headers });
    clients = resp.ok ? await resp.json() : null;
  } catch (_) {
    clients = null;
  }
  statusDirty = true;
  schedule();
}

setInterval(() => {
  report();
  setTimeout(fetchClients, 500); // after the node has taken the report
}, REPORT_MS);

// ---- rendering ----
function schedule() {
  if (!framePending) {
    framePending = true;
    requestAnimationFrame(render);
  }
}

const st = {
  dot: $("conn-dot"), text: $("conn-text").firstChild,
  retry: $("retry-now"), say: $("conn-say"),
  node: $("st-node").firstChild, rate: $("st-rate").firstChild, p50: $("st-p50").firstChild,
  p99: $("st-p99").firstChild, clients: $("st-clients").firstChild,
  gaps: $("st-gaps").firstChild, holes: $("st-holes").firstChild,
  reconnects: $("st-reconnects").firstChild, moves: $("st-moves").firstChild,
  stale: $("st-stale").firstChild, count: $("st-count").firstChild,
  universe: $("st-universe").firstChild,
};
let shownConn = "";
let shownStaleWarn = false;
let shownBodyState = "";

function render() {
  framePending = false;
  stats.renders += 1;
  const now = nowMs();
  // Rows out of view stay dirty until they come into view.
  for (const row of dirty) {
    if (!row.visible) continue;
    renderRow(row, now);
    stats.rowsRendered += 1;
    dirty.delete(row);
  }
  for (const c of flashing) {
    if (now >= c.flashUntil) {
      c.td.classList.remove(c.flashCls);
      c.flashCls = "";
      flashing.delete(c);
    }
  }
  drawSparks(now);
  if (chartSub && (chart.dirty || headDirty)) renderChart(now);
  if (books.dirty) ladder.draw(books);
  if (chipsDirty) renderChips();
  if (statusDirty) renderStatus(now);
  if (flashing.size || sparkDue.size || connState === "waiting") schedule();
  if (shownBodyState !== connState) {
    document.body.dataset.state = connState;
    shownBodyState = connState;
  }
}

function drawSparks(now) {
  for (const row of sparkDue) {
    if (!row.visible) {
      sparkDue.delete(row);
    } else if (now - row.sparkDrawn >= SPARK_MIN_INTERVAL_MS) {
      drawSpark(row);
      row.sparkDrawn = now;
      sparkDue.delete(row);
    }
  }
}

function flash(c, up, now) {
  const cls = up ? "flash-up" : "flash-down";
  if (c.flashCls !== cls) {
    if (c.flashCls) c.td.classList.remove(c.flashCls);
    c.td.classList.add(cls);
    c.flashCls = cls;
  }
  c.flashUntil = now + FLASH_MS;
  flashing.add(c);
}

/** Writes `v` into the cell `c` when its text changes, flashing up or down. */
function writePrice(c, v, was, d, now) {
  const s = v.toFixed(d);
  if (c.t.data === s) return false;
  if (was !== undefined) flash(c, v >= was, now);
  c.t.data = s;
  return true;
}

function renderQuote(row, now) {
  const q = row.q;
  const d = row.decimals;
  const p = row.prev;
  const a = writePrice(row.bid, q.bid, p ? p.bid : undefined, d, now);
  const b = writePrice(row.ask, q.ask, p ? p.ask : undefined, d, now);
  const c = writePrice(row.last, q.last, p ? p.last : undefined, d, now);
  if (a || b || c) row.renders += 1;
  const diff = q.last - row.first;
  const pct = row.first ? (diff / row.first) * 100 : 0;
  const sign = diff > 0 ? "+" : diff < 0 ? "−" : "±";
  setText(row.chg.t, `${sign}${Math.abs(diff).toFixed(d)}  ${sign}${Math.abs(pct).toFixed(2)}%`);
  const cls = diff > 0 ? "pos" : diff < 0 ? "neg" : "flat";
  if (cls !== row.chgCls) {
    if (row.chgCls) row.chg.td.classList.remove(row.chgCls);
    row.chg.td.classList.add(cls);
    row.chgCls = cls;
  }
}

function renderRow(row, now) {
  if (row.q) renderQuote(row, now);
  setText(row.rate.t, String(row.perSec));
  if (row.outdated !== row.shownOutdated) {
    row.el.classList.toggle("outdated", row.outdated);
    row.shownOutdated = row.outdated;
  }
  renderHealth(row, now);
  const badge = row.badgeMsg && now < row.badgeUntil ? row.badgeMsg : "";
  if (badge !== row.shownBadge) {
    setText(row.badgeText, badge);
    row.badge.hidden = !badge;
    row.badge.className = row.badgeCls ? `badge ${row.badgeCls}` : "badge";
    row.shownBadge = badge;
    row.el.title = row.lastGap
      ? `last gap ${row.lastGap.from}–${row.lastGap.to} (${row.lastGap.reason}); ${row.gaps} gaps`
      : "";
  }
}

/** The row's stale mark: greyed, with how long and why ("stale 4s · feed"). */
function renderHealth(row, now) {
  const h = row.health;
  const text = h ? `stale ${fmtAge(now - h.since)} · ${h.reason}` : "";
  if (text === row.shownHealth) return;
  if (!text !== !row.shownHealth) {
    row.el.classList.toggle("stale", !!h);
    row.healthEl.hidden = !h;
    row.healthEl.title = h
      ? `The node says the source of ${row.symbol} stopped (${h.reason}): the price shown is not current.`
      : "";
  }
  setText(row.healthText, text);
  row.shownHealth = text;
}

function connText(now) {
  switch (connState) {
    case "live": return next ? "live · moving" : "live";
    case "connecting": return connDetail ? `connecting · ${connDetail}` : "connecting";
    case "waiting": {
      const s = Math.max(0, (retryAt - now) / 1000);
      statusDirty = true; // the countdown moves every frame
      return `reconnecting in ${s.toFixed(1)} s · ${connDetail}`;
    }
    default: return `stopped: ${connDetail}`;
  }
}

function renderStatus(now) {
  statusDirty = false;
  setText(st.text, connText(now));
  if (shownConn !== connState) {
    // Screen readers hear the state when it changes, not every step of the countdown.
    st.say.textContent = connState === "waiting" ? "connection lost, reconnecting" : connState;
    st.dot.className = `dot ${connState}`;
    st.retry.hidden = connState !== "waiting" && connState !== "stopped";
    shownConn = connState;
  }
  setText(st.node, (primary && primary.node) || "–");
  setText(st.rate, String(globalRate));
  setText(st.p50, fmtMs(latency && latency.p50));
  setText(st.p99, fmtMs(latency && latency.p99));
  const all = clients && clients.reports ? `${fmtMs(clients.p50_ms)} · ${fmtMs(clients.p99_ms)}` : "–";
  setText(st.clients, all);
  $("st-clients").title = clients ? `${clients.reports} reports over the last minute, max ${fmtMs(clients.max_ms)}` : "";
  setText(st.gaps, String(stats.gaps));
  setText(st.holes, String(stats.holes));
  setText(st.reconnects, String(stats.reconnects));
  setText(st.moves, String(stats.moves));
  const nStale = staleRows();
  setText(st.stale, String(nStale));
  if ((nStale > 0) !== shownStaleWarn) {
    shownStaleWarn = nStale > 0;
    $("st-stale").classList.toggle("warn", shownStaleWarn);
  }
  setText(st.count, String(rows.size));
  setText(st.universe, universe.length ? String(universe.length) : "–");
  $("empty").hidden = rows.size > 0;
}

// Rates, latency percentiles and expiring badges move with time, not with messages.
setInterval(() => {
  const now = nowMs();
  advanceSlots(now);
  globalRate = sum(globalSlots);
  for (const row of rows.values()) {
    const n = sum(row.slots);
    if (n !== row.perSec) {
      row.perSec = n;
      dirty.add(row);
    }
    if (row.shownBadge && now >= row.badgeUntil) dirty.add(row);
    if (row.health) dirty.add(row); // its age moves
  }
  latency = latWindow.percentiles(now);
  statusDirty = true;
  schedule();
}, RATE_SLOT_MS);

function drawSpark(row) {
  const chunk = chunks[Math.floor(row.index / SPARK_CHUNK)];
  if (!chunk) return;
  const ctx = chunk.ctx;
  const w = SPARK_W * dpr;
  const h = SPARK_H * dpr;
  ctx.setTransform(1, 0, 0, 1, 0, ((row.index % SPARK_CHUNK) * ROW_H + SPARK_TOP) * dpr);
  ctx.clearRect(0, 0, w, h);
  const n = row.sparkLen;
  if (n < 2) return;
  const start = (row.sparkHead + SPARK_POINTS - n) % SPARK_POINTS;
  let lo = Infinity;
  let hi = -Infinity;
  for (let k = 0; k < n; k++) {
    const v = row.spark[(start + k) % SPARK_POINTS];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const pad = 3 * dpr;
  const span = hi - lo || Math.abs(hi) * 1e-6 || 1;
  // The points held span the whole width, the newest at the right edge.
  const stepX = (w - 4 * dpr) / (n - 1);
  const x = (k) => dpr + k * stepX;
  const y = (v) => h - pad - ((v - lo) / span) * (h - 2 * pad);
  const lastV = row.spark[(start + n - 1) % SPARK_POINTS];
  const up = lastV >= row.spark[start];
  const color = row.health ? "#56606d" : up ? "#22c55e" : "#f05252";
  ctx.beginPath();
  for (let k = 0; k < n; k++) {
    const v = row.spark[(start + k) % SPARK_POINTS];
    if (k === 0) ctx.moveTo(x(k), y(v));
    else ctx.lineTo(x(k), y(v));
  }
  ctx.lineWidth = 1.4 * dpr;
  ctx.lineJoin = "round";
  ctx.strokeStyle = color;
  ctx.stroke();
  ctx.lineTo(x(n - 1), h);
  ctx.lineTo(x(0), h);
  ctx.closePath();
  ctx.fillStyle = row.health ? "rgba(125,136,150,0.08)" : up ? "rgba(34,197,94,0.10)" : "rgba(240,82,82,0.10)";
  ctx.fill();
  ctx.beginPath();
  ctx.arc(x(n - 1), y(lastV), 2 * dpr, 0, Math.PI * 2);
  ctx.fillStyle = color;
  ctx.fill();
}

// ---- the add box and its suggestions; the pattern box; the pace ----
const input = $("add-input");
const list = $("suggest");
const msg = $("add-msg").appendChild(document.createTextNode(""));
let suggestions = [];
let active = -1;

function say(text) {
  setText(msg, text);
  return false;
}

function filterUniverse(q) {
  if (!q) return [];
  const starts = [];
  const contains = [];
  for (const s of universe) {
    if (rows.has(s)) continue;
    const i = s.indexOf(q);
    if (i === 0) starts.push(s);
    else if (i > 0) contains.push(s);
    if (starts.length >= MAX_SUGGESTIONS) break;
  }
  return starts.concat(contains).slice(0, MAX_SUGGESTIONS);
}

function suggestion(s, i, q) {
  const li = document.createElement("li");
  li.id = `opt-${i}`;
  li.setAttribute("role", "option");
  const at = s.indexOf(q);
  li.append(s.slice(0, at));
  const mark = document.createElement("mark");
  mark.textContent = s.slice(at, at + q.length);
  li.append(mark, s.slice(at + q.length));
  li.addEventListener("mousedown", (e) => {
    e.preventDefault(); // keep the focus in the input
    pick(s);
  });
  return li;
}

function showSuggestions() {
  const q = input.value.trim().toUpperCase();
  suggestions = filterUniverse(q);
  active = suggestions.length ? 0 : -1;
  list.replaceChildren(...suggestions.map((s, i) => suggestion(s, i, q)));
  const open = suggestions.length > 0;
  list.hidden = !open;
  input.setAttribute("aria-expanded", String(open));
  highlight();
}

function highlight() {
  [...list.children].forEach((li, i) => {
    const on = i === active;
    li.classList.toggle("active", on);
    li.setAttribute("aria-selected", String(on));
    if (on) li.scrollIntoView({ block: "nearest" });
  });
  if (active >= 0) input.setAttribute("aria-activedescendant", `opt-${active}`);
  else input.removeAttribute("aria-activedescendant");
}

function closeSuggestions() {
  list.hidden = true;
  input.setAttribute("aria-expanded", "false");
  input.removeAttribute("aria-activedescendant");
  suggestions = [];
  active = -1;
}

function pick(symbol) {
  if (addSymbol(symbol)) {
    input.value = "";
    closeSuggestions();
  }
}

input.addEventListener("input", showSuggestions);
input.addEventListener("blur", () => setTimeout(closeSuggestions, 0));
input.addEventListener("keydown", (e) => {
  if (e.key === "ArrowDown" || e.key === "ArrowUp") {
    if (list.hidden) showSuggestions();
    if (!suggestions.length) return;
    e.preventDefault();
    const step = e.key === "ArrowDown" ? 1 : -1;
    active = (active + step + suggestions.length) % suggestions.length;
    highlight();
  } else if (e.key === "Escape") {
    closeSuggestions();
  }
});
$("add-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const typed = input.value.trim().toUpperCase();
  // Enter takes the highlighted suggestion unless what was typed is a symbol itself.
  const choice = active >= 0 && !(universeSet && universeSet.has(typed)) ? suggestions[active] : typed;
  pick(choice);
});
$("pattern-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const box = $("pattern-input");
  if (addPattern(box.value)) box.value = "";
});
const paceEl = $("pace");
paceEl.value = String(pace);
if (paceParamBad) say(`?pace= takes one of ${PACES.join(", ")} (ms); the pace stays ${pace} ms`);
paceEl.addEventListener("change", () => setPace(Number(paceEl.value)));
st.retry.addEventListener("click", () => {
  if (connState === "waiting" || connState === "stopped") connect();
});

async function loadUniverse() {
  try {
    const resp = await fetch("/v1/symbols", { cache: "no-store" });
    if (!resp.ok) return;
    const all = await resp.json();
    if (!Array.isArray(all)) return;
    universe = all.filter((s) => typeof s === "string").sort();
    universeSet = new Set(universe);
    statusDirty = true;
    schedule();
  } catch (_) {
    // Without the list the box still takes any well-formed symbol; the node says no.
  }
}

// ---- what tests and curious people can read ----
function rowInfo(r) {
  return {
    epoch: r.epoch, seq: r.seq, ticks: r.ticks, skipped: r.skipped, updates: r.updates,
    renders: r.renders, gaps: r.gaps, holes: r.holes, named: r.named,
    last: r.q ? r.q.last : null, bid: r.q ? r.q.bid : null, ask: r.q ? r.q.ask : null,
    error: r.error, lastGap: r.lastGap,
    stale: r.health ? { reason: r.health.reason, forMs: nowMs() - r.health.since } : null,
  };
}

function chartInfo() {
  if (!chartSub) return null;
  const last = chart.last();
  const closed = chart.bars.filter((b) => b.closed).length;
  return {
    symbol: chartSub.symbol, interval: chartSub.interval, bars: chart.bars.length, closed,
    forming: last && !last.closed ? last.t : null, newest: last ? last.t : null,
    ...chart.stats,
    dropped: [...gone], // "SYMBOL interval" of the candle subscriptions the node dropped
    loadedMs: chartSub.loadedAt ? chartSub.loadedAt - chartSub.selectedAt : null,
    drawnMs: chartSub.drawnAt ? chartSub.drawnAt - chartSub.selectedAt : null,
  };
}

window.__tickstream = {
  stats,
  get state() { return connState; },
  get node() { return primary ? primary.node : null; },
  get moving() { return !!next; },
  get connections() { return conns.size; },
  get rate() { return globalRate; },
  get latency() { return { p50: latency ? latency.p50 : null, p99: latency ? latency.p99 : null }; },
  get lastReport() { return lastReport; },
  get clients() { return clients; },
  get pace() { return pace; },
  get patterns() { return patterns.slice(); },
  get universe() { return universe.length; },
  get visibleRows() { let n = 0; for (const r of rows.values()) n += r.visible ? 1 : 0; return n; },
  get staleRows() { return staleRows(); },
  get chart() { return chartInfo(); },
  get book() { return books.info(); },
  /** Test hooks: the next book message applied leaves one level wrong (a checksum
   *  mismatch follows), or the next update is lost (a hole in prev_seq follows). */
  corruptBook() { books.hooks.corrupt = true; },
  dropBookUpdate() { books.hooks.drop = true; },
  symbols() {
    const out = {};
    for (const [s, r] of rows) out[s] = rowInfo(r);
    return out;
  },
};

for (const s of loadWatchlist()) if (!rows.has(s)) addRow(s, true);
const shown = load(STORE.chart, null);
if (shown && typeof shown.symbol === "string" && rows.has(shown.symbol)) openChart(shown.symbol, shown.interval);
loadUniverse();
fetchClients();
connect();
