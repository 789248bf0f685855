// The tickstream dashboard: one WebSocket to /v1/ws, a watchlist kept in localStorage,
// and a render loop that draws at most once per animation frame.
//
// The WebSocket lives in a worker (feed.js), which hands the frames over in batches: the
// page's main thread sees tens of messages a second, not thousands. Incoming messages
// only change plain state (numbers, flags, a dirty set); the frame callback then writes
// the changed text nodes of the rows in view and redraws their due sparklines. Rows out
// of view are skipped by the browser (content-visibility) and by the render loop, and
// nothing reads layout, so no update forces a reflow. The sparklines are drawn on a few
// tall canvases laid over the trend column (one per SPARK_CHUNK rows), not one canvas per
// row: each canvas is a compositor layer of its own, and hundreds of them cost every
// frame far more than all the drawing.
(() => {
  "use strict";

  const STORE_KEY = "tickstream.watchlist";
  const DEFAULT_WATCHLIST = ["AAPL", "MSFT", "NVDA", "EUR/USD", "BTC-USD"];
  const SYMBOL_RE = /^[A-Z0-9][A-Z0-9._:/-]{0,31}$/;
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 30000;
  const HEALTHY_AFTER_MS = 5000;
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
  const LAT_MIN_MS = 0.001; // histogram of latencies: 1 µs · 1.04^i
  const LAT_GROWTH = Math.log(1.04);
  const LAT_BUCKETS = 512;
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
    ticks: 0, snapshots: 0, gaps: 0, holes: 0, duplicates: 0, resets: 0,
    connects: 0, reconnects: 0, resumes: 0, errors: 0,
    frames: 0, batches: 0, renders: 0, rowsRendered: 0,
  };
  let node = null;
  let limits = null;
  let universe = [];
  let universeSet = null;

  // ---- per-symbol rows ----
  const rows = new Map(); // symbol -> Row
  const dirty = new Set(); // rows whose text needs writing (written when in view)
  const sparkDue = new Set(); // rows whose sparkline needs drawing
  const flashing = new Set(); // cells with a flash class on
  let statusDirty = true;
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

  function makeRow(symbol) {
    const el = tpl.content.firstElementChild.cloneNode(true);
    el.dataset.symbol = symbol;
    const name = el.querySelector(".sym-name");
    name.textContent = symbol;
    const badge = el.querySelector(".badge");
    const badgeText = document.createTextNode("");
    badge.appendChild(badgeText);
    const remove = el.querySelector(".remove");
    remove.setAttribute("aria-label", `Remove ${symbol}`);
    remove.title = `Remove ${symbol}`;
    remove.addEventListener("click", () => removeSymbol(symbol, true));
    el.addEventListener("keydown", (e) => {
      if (e.target === el && (e.key === "Delete" || e.key === "Backspace")) {
        e.preventDefault();
        removeSymbol(symbol, true);
      }
    });
    el.setAttribute("aria-label", symbol);
    const row = {
      symbol, el, badge, badgeText, index: rows.size,
      bid: cell(el.querySelector(".bid")),
      ask: cell(el.querySelector(".ask")),
      last: cell(el.querySelector(".last")),
      chg: cell(el.querySelector(".chg")),
      rate: cell(el.querySelector(".rate")),
      chgCls: "",
      // quote and position
      epoch: null, seq: null, q: null, prev: null, first: null, decimals: 2, decSamples: 0,
      stale: false, shownStale: false,
      // rate
      slots: new Uint32Array(RATE_SLOTS), perSec: 0, ticks: 0, holes: 0, gaps: 0,
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
    setText(row.chg.t, "");
    return row;
  }

  // ---- watchlist (localStorage) ----
  function loadWatchlist() {
    try {
      const raw = localStorage.getItem(STORE_KEY);
      if (raw !== null) {
        const list = JSON.parse(raw);
        if (Array.isArray(list)) return list.filter((s) => typeof s === "string" && SYMBOL_RE.test(s));
      }
    } catch (_) { /* storage unavailable or corrupt: start from the defaults */ }
    return DEFAULT_WATCHLIST.slice();
  }

  function saveWatchlist() {
    try {
      localStorage.setItem(STORE_KEY, JSON.stringify([...rows.keys()]));
    } catch (_) { /* private mode: the list lives as long as the page */ }
  }

  // Rows out of view are written and drawn when they come into view, not before. The
  // browser already knows which rows it skips (content-visibility: auto) and says so
  // when that changes; an IntersectionObserver would recompute 200 boxes every frame.
  function addRow(symbol) {
    const row = makeRow(symbol);
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
    return row;
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
    if (rows.has(symbol)) {
      rows.get(symbol).el.focus();
      return say(`${symbol} is already in the watchlist.`);
    }
    if (universeSet && !universeSet.has(symbol)) return say(`${symbol} is not served by this node.`);
    if (limits && rows.size >= limits.max_symbols) {
      return say(`At most ${limits.max_symbols} symbols per connection.`);
    }
    addRow(symbol);
    saveWatchlist();
    say("");
    send({ op: "subscribe", id: nextId(), symbols: [symbol], snapshot: true });
    schedule();
    return true;
  }

  function removeSymbol(symbol, moveFocus) {
    const row = rows.get(symbol);
    if (!row) return;
    const next = row.el.nextElementSibling || row.el.previousElementSibling;
    row.el.remove();
    rows.delete(symbol);
    dirty.delete(row);
    sparkDue.delete(row);
    for (const c of [row.bid, row.ask, row.last]) flashing.delete(c);
    reindex();
    saveWatchlist();
    send({ op: "unsubscribe", id: nextId(), symbols: [symbol] });
    statusDirty = true;
    if (moveFocus) (next || $("add-input")).focus();
    say(`Removed ${symbol}.`);
    schedule();
  }

  // ---- connection (the socket itself is in the worker) ----
  const feed = new Worker("/assets/feed.js");
  let open = false; // the worker's socket is open
  let connState = "connecting"; // connecting | live | waiting | stopped
  let connDetail = "";
  let attempt = 0; // consecutive failed connections
  let healthy = false;
  let openedAt = 0;
  let retryAt = 0;
  let retryTimer = 0;
  let everConnected = false;
  let ids = 0;
  const nextId = () => ++ids;

  function wsUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const q = token ? `?token=${encodeURIComponent(token)}` : "";
    return `${scheme}//${location.host}/v1/ws${q}`;
  }

  function send(msg) {
    if (open && connState === "live") feed.postMessage({ kind: "send", text: JSON.stringify(msg) });
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = 0;
    connState = "connecting";
    connDetail = attempt ? `attempt ${attempt + 1}` : "";
    statusDirty = true;
    schedule();
    healthy = false;
    open = false;
    feed.postMessage({ kind: "open", url: wsUrl() });
  }

  feed.onmessage = (e) => {
    const m = e.data;
    switch (m.kind) {
      case "frames": return onFrames(m.frames, m.times);
      case "open":
        open = true;
        openedAt = nowMs();
        return undefined;
      case "close":
        open = false;
        return onClose(m);
      case "error": return stop(`cannot open the WebSocket: ${m.message}`);
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

  function onClose(ev) {
    for (const row of rows.values()) row.stale = true;
    if (openedAt && nowMs() - openedAt >= HEALTHY_AFTER_MS) healthy = true;
    openedAt = 0;
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

  function onWelcome(m) {
    node = m.node || null;
    limits = m.limits || null;
    connState = "live";
    connDetail = "";
    stats.connects += 1;
    if (everConnected) stats.reconnects += 1;
    everConnected = true;
    statusDirty = true;
    const symbols = [...rows.keys()];
    if (!symbols.length) return;
    const resume = {};
    let resumed = 0;
    for (const row of rows.values()) {
      if (row.epoch !== null && row.seq !== null) {
        resume[row.symbol] = { epoch: row.epoch, seq: row.seq };
        resumed += 1;
      }
    }
    const cmd = { op: "subscribe", id: nextId(), symbols, snapshot: true };
    if (resumed) {
      cmd.resume = resume;
      stats.resumes += 1;
    }
    send(cmd);
  }

  // ---- messages ----
  /** A batch of frames from the worker, each with its receive time. */
  function onFrames(frames, times) {
    stats.batches += 1;
    stats.frames += frames.length;
    for (let f = 0; f < frames.length; f++) {
      let msgs;
      try {
        msgs = JSON.parse(frames[f]);
      } catch (_) {
        continue;
      }
      const now = times[f];
      if (!Array.isArray(msgs)) handle(msgs, now);
      else for (let i = 0; i < msgs.length; i++) handle(msgs[i], now);
    }
    schedule();
  }

  function handle(m, now) {
    switch (m.type) {
      case "tick": return onTick(m, now);
      case "snapshot": return onSnapshot(m, now);
      case "gap": return onGap(m, now);
      case "welcome": return onWelcome(m);
      case "error": return onError(m, now);
      default: return undefined; // subscribed, unsubscribed, subscriptions, pong
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
    }
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
    row.stale = false;
    dirty.add(row);
    sparkDue.add(row);
    markHealthy();
  }

  function onSnapshot(m, now) {
    const row = rows.get(m.symbol);
    if (!row) return;
    stats.snapshots += 1;
    if (row.epoch !== null && m.epoch !== row.epoch) {
      stats.resets += 1;
      resetRow(row);
    }
    row.epoch = m.epoch;
    row.seq = m.seq;
    if (row.error) {
      row.error = null;
      clearBadge(row);
    }
    applyQuote(row, m, now);
  }

  function onTick(m, now) {
    const row = rows.get(m.symbol);
    if (!row) return;
    if (m.epoch !== undefined && m.epoch !== row.epoch) {
      if (row.epoch !== null) {
        stats.resets += 1;
        resetRow(row);
      }
      row.epoch = m.epoch;
    } else if (row.seq !== null) {
      if (m.seq <= row.seq) {
        stats.duplicates += 1;
        return;
      }
      if (m.seq > row.seq + 1) {
        // A jump nobody announced: a hole.
        stats.holes += 1;
        row.holes += 1;
        showBadge(row, `hole ${row.seq + 1}–${m.seq - 1}`, "err", now);
      }
    }
    row.seq = m.seq;
    stats.ticks += 1;
    row.ticks += 1;
    row.slots[slotIndex(now)] += 1;
    globalSlots[slotIndex(now)] += 1;
    latencySample(now - m.ts / 1e6, now);
    applyQuote(row, m, now);
  }

  function onGap(m, now) {
    const row = rows.get(m.symbol);
    if (!row) return;
    stats.gaps += 1;
    row.gaps += 1;
    if (row.seq === null || m.to > row.seq) row.seq = m.to;
    row.stale = true;
    row.lastGap = { from: m.from, to: m.to, reason: m.reason };
    const span = m.from === m.to ? `${m.from}` : `${m.from}–${m.to}`;
    showBadge(row, `gap ${span} · ${String(m.reason).replace(/_/g, " ")}`, "", now);
    dirty.add(row);
  }

  function onError(m, now) {
    stats.errors += 1;
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

  function decimalsOf(x) {
    if (typeof x !== "number" || !isFinite(x)) return 0;
    const s = String(x);
    const dot = s.indexOf(".");
    if (dot < 0 || s.includes("e")) return 0;
    return Math.min(6, s.length - dot - 1);
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

  // ---- latency: per-second histograms over the last 10 s ----
  const latHist = Array.from({ length: LAT_WINDOW_S }, () => new Uint32Array(LAT_BUCKETS));
  const latSec = new Float64Array(LAT_WINDOW_S).fill(-1);
  const latSum = new Uint32Array(LAT_BUCKETS);
  let p50 = null;
  let p99 = null;

  function latencySample(ms, now) {
    const sec = Math.floor(now / 1000);
    const i = sec % LAT_WINDOW_S;
    if (latSec[i] !== sec) {
      latHist[i].fill(0);
      latSec[i] = sec;
    }
    let b = ms <= LAT_MIN_MS ? 0 : Math.ceil(Math.log(ms / LAT_MIN_MS) / LAT_GROWTH);
    if (b >= LAT_BUCKETS) b = LAT_BUCKETS - 1;
    latHist[i][b] += 1;
  }

  function latencyPercentiles(now) {
    const sec = Math.floor(now / 1000);
    latSum.fill(0);
    let n = 0;
    for (let i = 0; i < LAT_WINDOW_S; i++) {
      if (latSec[i] <= sec - LAT_WINDOW_S) continue;
      const h = latHist[i];
      for (let b = 0; b < LAT_BUCKETS; b++) {
        if (h[b]) {
          latSum[b] += h[b];
          n += h[b];
        }
      }
    }
    if (!n) {
      p50 = p99 = null;
      return;
    }
    const at = (q) => {
      const rank = Math.ceil(q * n);
      let seen = 0;
      for (let b = 0; b < LAT_BUCKETS; b++) {
        seen += latSum[b];
        if (seen >= rank) return LAT_MIN_MS * Math.exp(b * LAT_GROWTH);
      }
      return LAT_MIN_MS * Math.exp((LAT_BUCKETS - 1) * LAT_GROWTH);
    };
    p50 = at(0.5);
    p99 = at(0.99);
  }

  function fmtMs(ms) {
    if (ms === null) return "–";
    if (ms < 1) return `${ms.toFixed(2)} ms`;
    if (ms < 100) return `${ms.toFixed(1)} ms`;
    if (ms < 10000) return `${Math.round(ms)} ms`;
    return `${(ms / 1000).toFixed(0)} s`;
  }

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
    p99: $("st-p99").firstChild, gaps: $("st-gaps").firstChild, holes: $("st-holes").firstChild,
    reconnects: $("st-reconnects").firstChild, count: $("st-count").firstChild,
    universe: $("st-universe").firstChild,
  };
  let shownConn = "";
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
    for (const row of sparkDue) {
      if (!row.visible) {
        sparkDue.delete(row);
      } else if (now - row.sparkDrawn >= SPARK_MIN_INTERVAL_MS) {
        drawSpark(row);
        row.sparkDrawn = now;
        sparkDue.delete(row);
      }
    }
    if (statusDirty) renderStatus(now);
    if (flashing.size || sparkDue.size || connState === "waiting") schedule();
    if (shownBodyState !== connState) {
      document.body.dataset.state = connState;
      shownBodyState = connState;
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

  function renderRow(row, now) {
    const q = row.q;
    if (q) {
      const d = row.decimals;
      const p = row.prev;
      const bid = q.bid.toFixed(d);
      const ask = q.ask.toFixed(d);
      const last = q.last.toFixed(d);
      if (row.bid.t.data !== bid) {
        if (p) flash(row.bid, q.bid >= p.bid, now);
        row.bid.t.data = bid;
      }
      if (row.ask.t.data !== ask) {
        if (p) flash(row.ask, q.ask >= p.ask, now);
        row.ask.t.data = ask;
      }
      if (row.last.t.data !== last) {
        if (p) flash(row.last, q.last >= p.last, now);
        row.last.t.data = last;
      }
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
    setText(row.rate.t, String(row.perSec));
    if (row.stale !== row.shownStale) {
      row.el.classList.toggle("stale", row.stale);
      row.shownStale = row.stale;
    }
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

  function renderStatus(now) {
    statusDirty = false;
    let text;
    switch (connState) {
      case "live": text = "live"; break;
      case "connecting": text = connDetail ? `connecting · ${connDetail}` : "connecting"; break;
      case "waiting": {
        const s = Math.max(0, (retryAt - now) / 1000);
        text = `reconnecting in ${s.toFixed(1)} s · ${connDetail}`;
        statusDirty = true; // the countdown moves every frame
        break;
      }
      default: text = `stopped: ${connDetail}`;
    }
    setText(st.text, text);
    if (shownConn !== connState) {
      // Screen readers hear the state when it changes, not every step of the countdown.
      st.say.textContent = connState === "waiting" ? "connection lost, reconnecting" : connState;
      st.dot.className = `dot ${connState}`;
      st.retry.hidden = connState !== "waiting" && connState !== "stopped";
      shownConn = connState;
    }
    setText(st.node, node || "–");
    setText(st.rate, String(globalRate));
    setText(st.p50, fmtMs(p50));
    setText(st.p99, fmtMs(p99));
    setText(st.gaps, String(stats.gaps));
    setText(st.holes, String(stats.holes));
    setText(st.reconnects, String(stats.reconnects));
    setText(st.count, String(rows.size));
    setText(st.universe, universe.length ? String(universe.length) : "–");
    $("empty").hidden = rows.size > 0;
  }

  // Rates, latency percentiles and expiring badges move with time, not with messages.
  setInterval(() => {
    const now = nowMs();
    advanceSlots(now);
    const r = sum(globalSlots);
    if (r !== globalRate) globalRate = r;
    for (const row of rows.values()) {
      const n = sum(row.slots);
      if (n !== row.perSec) {
        row.perSec = n;
        dirty.add(row);
      }
      if (row.shownBadge && now >= row.badgeUntil) dirty.add(row);
    }
    latencyPercentiles(now);
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
    const firstV = row.spark[start];
    const lastV = row.spark[(start + n - 1) % SPARK_POINTS];
    const up = lastV >= firstV;
    const color = up ? "#22c55e" : "#f05252";
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
    ctx.fillStyle = up ? "rgba(34,197,94,0.10)" : "rgba(240,82,82,0.10)";
    ctx.fill();
    ctx.beginPath();
    ctx.arc(x(n - 1), y(lastV), 2 * dpr, 0, Math.PI * 2);
    ctx.fillStyle = color;
    ctx.fill();
  }

  // ---- the add box and its suggestions ----
  const input = $("add-input");
  const list = $("suggest");
  const msg = $("add-msg").appendChild(document.createTextNode(""));
  let matches = [];
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

  function showSuggestions() {
    const q = input.value.trim().toUpperCase();
    matches = filterUniverse(q);
    active = matches.length ? 0 : -1;
    list.replaceChildren(...matches.map((s, i) => {
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
    }));
    const open = matches.length > 0;
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
    matches = [];
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
      if (!matches.length) return;
      e.preventDefault();
      const step = e.key === "ArrowDown" ? 1 : -1;
      active = (active + step + matches.length) % matches.length;
      highlight();
    } else if (e.key === "Escape") {
      closeSuggestions();
    }
  });
  $("add-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const typed = input.value.trim().toUpperCase();
    // Enter takes the highlighted suggestion unless what was typed is a symbol itself.
    const choice = active >= 0 && !(universeSet && universeSet.has(typed)) ? matches[active] : typed;
    pick(choice);
  });
  st.retry.addEventListener("click", () => {
    if (connState === "waiting" || connState === "stopped") connect();
  });

  async function loadUniverse() {
    try {
      const resp = await fetch("/v1/symbols", { cache: "no-store" });
      if (!resp.ok) return;
      const list = await resp.json();
      if (!Array.isArray(list)) return;
      universe = list.filter((s) => typeof s === "string").sort();
      universeSet = new Set(universe);
      statusDirty = true;
      schedule();
    } catch (_) {
      // Without the list the box still takes any well-formed symbol; the node says no.
    }
  }

  // ---- what tests and curious people can read ----
  window.__tickstream = {
    stats,
    get state() { return connState; },
    get node() { return node; },
    get rate() { return globalRate; },
    get latency() { return { p50, p99 }; },
    get universe() { return universe.length; },
    get visibleRows() { let n = 0; for (const r of rows.values()) n += r.visible ? 1 : 0; return n; },
    symbols() {
      const out = {};
      for (const [s, r] of rows) {
        out[s] = {
          epoch: r.epoch, seq: r.seq, ticks: r.ticks, gaps: r.gaps, holes: r.holes,
          last: r.q ? r.q.last : null, bid: r.q ? r.q.bid : null, ask: r.q ? r.q.ask : null,
          error: r.error, lastGap: r.lastGap,
        };
      }
      return out;
    },
  };

  for (const s of loadWatchlist()) if (!rows.has(s)) addRow(s);
  loadUniverse();
  connect();
})();
