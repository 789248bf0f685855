// The depth ladder of the selected row: that symbol's L2 book (`channel: "book"`,
// docs/protocol.md section 9 "Order books"), kept, checked and drawn by the page.
//
// BookSync holds the one book subscription (the selected symbol's, at depth 10) and
// the book the messages give: a `book` replaces it, a `book_update` whose `prev_seq` is
// the seq held is applied, and after each the CRC-32 of the top 10 levels is computed
// and compared with the message's `checksum`. An update that does not follow (a hole)
// re-syncs with `resume` from the seq held: the node answers one update that nets out
// what was missed. A checksum that does not match means the book held is wrong: it is
// thrown away and the subscription is made again (unsubscribe, subscribe), which
// starts with a fresh `book`. Both are counted and shown under the ladder.
//
// Prices are keyed by their text as the node wrote it ("189.10", "1.08420"), never by
// a float: parseFrame reads frames that hold levels with JSON.parse's access to each
// number's source text. Ladder writes the levels into a fixed set of rows, only the
// text that changed, and is called at most once per animation frame.

export const DEPTH = 10;
const CHECKSUM_LEVELS = 10;
const RESYNC_MIN_MS = 1000; // a second re-sync waits this long after the first

// ---- frames ----
/** Keeps the source text of every number directly inside a two-element array: the
 *  `[price, size]` levels of `book` and `book_update` (no other message the node sends
 *  holds numbers in arrays). Without source access (older browsers) numbers stay. */
function levelText(_key, value, ctx) {
  if (typeof value === "number" && Array.isArray(this) && this.length === 2 && ctx && typeof ctx.source === "string") {
    return ctx.source;
  }
  return value;
}

/** Parses one frame from the node; frames with book levels keep their numbers' text. */
export function parseFrame(text) {
  return text.includes('"bids"') ? JSON.parse(text, levelText) : JSON.parse(text);
}

// ---- the checksum (docs/protocol.md, "Checksum") ----
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (IEEE 802.3, zlib's) of an ASCII string, unsigned. */
export function crc32(s) {
  let c = ~0;
  for (let i = 0; i < s.length; i++) c = CRC_TABLE[(c ^ s.charCodeAt(i)) & 0xff] ^ (c >>> 8);
  return (~c) >>> 0;
}

/** The checksum of a book whose sides (best first) are these levels. */
export function checksum(asks, bids) {
  let s = "";
  for (let i = 0; i < asks.length && i < CHECKSUM_LEVELS; i++) s += asks[i].digits + asks[i].sizeText;
  for (let i = 0; i < bids.length && i < CHECKSUM_LEVELS; i++) s += bids[i].digits + bids[i].sizeText;
  return crc32(s);
}

// ---- levels ----
/** Decimals of a price text ("189.10" → 2). */
const decimalsIn = (text) => {
  const dot = text.indexOf(".");
  return dot < 0 ? 0 : text.length - dot - 1;
};

/** One `[price, size]` of a message as a level, or null when it is not one. A price
 *  that came as a number (no source text) is written with `decimals`. */
function level(pair, decimals) {
  if (!Array.isArray(pair) || pair.length !== 2) return null;
  const [p, q] = pair;
  const text = typeof p === "string" ? p : typeof p === "number" ? p.toFixed(decimals) : null;
  const sizeText = typeof q === "string" ? q : typeof q === "number" ? String(q) : null;
  if (text === null || sizeText === null || !/^[0-9]+(\.[0-9]+)?$/.test(text) || !/^[0-9]+$/.test(sizeText)) return null;
  const px = Number(text);
  if (!(px > 0)) return null;
  return { px, text, digits: text.replace(".", "").replace(/^0+/, "") || "0", size: Number(sizeText), sizeText };
}

/** The decimals numbers of a message need when they came without their text: the
 *  most any of them shows, at least `held`. */
function guessDecimals(m, held) {
  let d = held;
  for (const side of [m.bids, m.asks]) {
    if (!Array.isArray(side)) continue;
    for (const pair of side) {
      if (Array.isArray(pair) && typeof pair[0] === "number") {
        const s = String(pair[0]);
        if (!s.includes("e")) d = Math.max(d, decimalsIn(s));
      }
    }
  }
  return Math.min(d, 9);
}

/** Whether `a` comes before `b` on its side: bids highest first, asks lowest first. */
const before = (bid, a, b) => (bid ? a > b : a < b);

/** Sets `lv` on a side held best first: size 0 removes the price. */
function setLevel(sideLevels, bid, lv) {
  let i = 0;
  while (i < sideLevels.length && before(bid, sideLevels[i].px, lv.px)) i++;
  const here = i < sideLevels.length && sideLevels[i].px === lv.px;
  if (lv.size === 0) {
    if (here) sideLevels.splice(i, 1);
  } else if (here) {
    sideLevels[i] = lv;
  } else {
    sideLevels.splice(i, 0, lv);
  }
}

/** The levels of a message's side, or null when one is malformed. */
function levelsOf(list, decimals) {
  if (!Array.isArray(list)) return null;
  const out = [];
  for (const pair of list) {
    const lv = level(pair, decimals);
    if (!lv) return null;
    out.push(lv);
  }
  return out;
}

// ---- the subscription and its book ----
export class BookSync {
  /** `send(cmd)` sends on every live connection; `nextId()` numbers commands. */
  constructor(send, nextId) {
    this.send = send;
    this.nextId = nextId;
    this.symbol = null;
    this.reset();
    this.stats = {
      books: 0, updates: 0, verified: 0, mismatches: 0, resyncs: 0, breaks: 0, overlap: 0,
      skew: 0, dropped: 0, gaps: 0, stray: 0, malformed: 0, recovered: 0,
    };
    this.hooks = { corrupt: false, drop: false }; // for tests: see corrupt() and drop()
    this.dirty = true;
  }

  /** Forgets the book held (a new symbol, or a book found wrong). */
  reset() {
    this.epoch = null;
    this.seq = null;
    this.bids = [];
    this.asks = [];
    this.decimals = 0;
    this.valid = false; // holds a book whose checksum matched
    this.waiting = "book"; // "book": a whole book is due; "resume": the resume's answer
    this.lastResyncAt = -Infinity;
    this.resyncing = false; // a re-sync was asked for and has not yet given a good book
    this.resyncTimer = 0;
    this.note = "";
  }

  /** Shows the book of `symbol` (null: none), dropping the subscription of the last. */
  select(symbol, now) {
    if (symbol === this.symbol) return;
    if (this.symbol) this.send(this.unsubscribeCmd());
    clearTimeout(this.resyncTimer);
    this.symbol = symbol;
    this.reset();
    this.selectedAt = now;
    this.shownAt = 0;
    this.dirty = true;
    if (symbol) this.send(this.subscribeCmd());
  }

  /** The subscribe of the selected book: from the seq held (`resume`) when the book is
   *  good, else a fresh start. */
  subscribeCmd() {
    const cmd = { op: "subscribe", id: this.nextId(), channel: "book", depth: DEPTH, symbols: [this.symbol] };
    if (this.valid) cmd.resume = { [this.symbol]: { epoch: this.epoch, seq: this.seq } };
    return cmd;
  }

  unsubscribeCmd() {
    return { op: "unsubscribe", id: this.nextId(), channel: "book", symbols: [this.symbol] };
  }

  /** Whether `m` is of the book shown; others (of a dropped subscription) are counted. */
  mine(m) {
    if (m.symbol === this.symbol && this.symbol) return true;
    this.stats.stray += 1;
    return false;
  }

  onBook(m, now) {
    if (!this.mine(m)) return;
    this.stats.books += 1;
    // An older copy (the other connection of a move) is dropped, unless a book is due.
    if (!this.waiting && m.epoch === this.epoch && m.seq <= this.seq) {
      this.stats.overlap += 1;
      return;
    }
    this.decimals = guessDecimals(m, this.decimals);
    const bids = levelsOf(m.bids, this.decimals);
    const asks = levelsOf(m.asks, this.decimals);
    if (!bids || !asks) return this.malformed(now);
    this.epoch = m.epoch;
    this.seq = m.seq;
    this.bids = bids;
    this.asks = asks;
    this.check(m, now);
  }

  onUpdate(m, now, moving) {
    if (!this.mine(m)) return;
    this.stats.updates += 1;
    if (!this.valid || m.epoch !== this.epoch) {
      this.stats.dropped += 1; // a whole book is due first
      return;
    }
    if (m.seq <= this.seq) {
      this.stats.overlap += 1;
      return;
    }
    if (this.hooks.drop) {
      this.hooks.drop = false; // as if it never came: the next one does not follow
      return;
    }
    if (m.prev_seq !== this.seq) {
      // During a move the two connections may be at different places for a moment;
      // the one that follows is applied. A resume already asked for is awaited.
      if (moving || this.waiting) this.stats.skew += 1;
      else this.onBreak(m, now);
      return;
    }
    this.decimals = guessDecimals(m, this.decimals);
    const bids = levelsOf(m.bids, this.decimals);
    const asks = levelsOf(m.asks, this.decimals);
    if (!bids || !asks) return this.malformed(now);
    for (const lv of bids) setLevel(this.bids, true, lv);
    for (const lv of asks) setLevel(this.asks, false, lv);
    this.seq = m.seq;
    this.check(m, now);
  }

  /** A `gap` of the book: a fresh `book` follows. */
  onGap(m) {
    if (!this.mine(m)) return;
    this.stats.gaps += 1;
    this.valid = false;
    this.waiting = "book";
    this.note = `gap ${m.from}–${m.to} · ${String(m.reason).replace(/_/g, " ")}`;
    this.dirty = true;
  }

  onError(m) {
    const symbols = Array.isArray(m.symbols) ? m.symbols : [];
    if (symbols.length && !symbols.includes(this.symbol)) return;
    this.note = m.message || m.code;
    this.dirty = true;
  }

  /** After a message: its checksum against the book now held. */
  check(m, now) {
    if (this.hooks.corrupt && this.bids.length) {
      // A test's fault: one level the node did not send, as a bug would leave it.
      this.hooks.corrupt = false;
      const lv = this.bids[Math.min(this.bids.length, CHECKSUM_LEVELS) - 1];
      this.bids[Math.min(this.bids.length, CHECKSUM_LEVELS) - 1] = { ...lv, size: lv.size + 1, sizeText: String(lv.size + 1) };
    }
    this.dirty = true;
    if (typeof m.checksum === "number" && checksum(this.asks, this.bids) !== m.checksum) {
      this.stats.mismatches += 1;
      this.note = `checksum mismatch at seq ${m.seq}: fetching the book again`;
      this.resync("book", now);
      return;
    }
    this.stats.verified += 1;
    if (this.resyncing) {
      this.resyncing = false;
      this.stats.recovered += 1;
    }
    if (!this.shownAt) this.shownAt = now;
    this.valid = true;
    this.waiting = null;
    this.note = "";
  }

  onBreak(m, now) {
    this.stats.breaks += 1;
    this.note = `update ${m.seq} follows ${m.prev_seq}, not ${this.seq}: resuming`;
    this.resync("resume", now);
  }

  malformed(now) {
    this.stats.malformed += 1;
    this.note = "a malformed book message: fetching the book again";
    this.resync("book", now);
  }

  /** "resume": ask for what nets out the seqs missed; "book": start again. At most one
   *  re-sync per RESYNC_MIN_MS; one asked for sooner waits for its turn. */
  resync(kind, now) {
    this.dirty = true;
    if (kind === "book") {
      this.valid = false;
      this.waiting = "book";
    } else if (!this.waiting) {
      this.waiting = "resume";
    }
    if (this.resyncTimer) return;
    const wait = this.lastResyncAt + RESYNC_MIN_MS - now;
    if (wait > 0) {
      this.resyncTimer = setTimeout(() => {
        this.resyncTimer = 0;
        if (this.waiting) this.resync(this.valid ? "resume" : "book", performance.timeOrigin + performance.now());
      }, wait);
      return;
    }
    this.lastResyncAt = now;
    this.stats.resyncs += 1;
    this.resyncing = true;
    // Subscribing again with the same depth and no resume changes only the pace: a
    // fresh book needs the subscription dropped first.
    if (!this.valid) this.send(this.unsubscribeCmd());
    this.send(this.subscribeCmd());
  }

  /** What tests and the console read. */
  info() {
    const bb = this.bids[0];
    const ba = this.asks[0];
    return {
      symbol: this.symbol, epoch: this.epoch, seq: this.seq, valid: this.valid, waiting: this.waiting,
      bids: this.bids.length, asks: this.asks.length,
      bestBid: bb ? bb.px : null, bestAsk: ba ? ba.px : null,
      shownMs: this.shownAt ? this.shownAt - this.selectedAt : null, note: this.note, ...this.stats,
    };
  }
}

// ---- the ladder ----
const sizeFmt = new Intl.NumberFormat("en-US");

/** A size as a person reads it: 1,200 · 25,000 · 1.25M. */
function fmtSize(n) {
  if (n < 1e6) return sizeFmt.format(n);
  if (n < 1e9) return `${(n / 1e6).toFixed(n < 1e7 ? 2 : 1)}M`;
  return `${(n / 1e9).toFixed(2)}B`;
}

function ladderRow(cls) {
  const el = document.createElement("div");
  el.className = `lv ${cls}`;
  const bar = document.createElement("span");
  bar.className = "bar";
  const text = (c) => {
    const s = document.createElement("span");
    s.className = c;
    el.append(s);
    return s.appendChild(document.createTextNode(""));
  };
  el.append(bar);
  return { el, bar, px: text("px"), sz: text("sz"), cum: text("cum"), best: false, scale: -1 };
}

export class Ladder {
  /** Draws into the ladder's elements (see index.html): `asks`, `bids` (rows are made
   *  here), `spread`, `state`, `mismatches`, `resyncs`. */
  constructor(els) {
    this.els = els;
    this.asks = [];
    this.bids = [];
    for (let i = 0; i < DEPTH; i++) {
      this.asks.push(ladderRow("ask"));
      this.bids.push(ladderRow("bid"));
    }
    els.asks.append(...this.asks.map((r) => r.el));
    els.bids.append(...this.bids.map((r) => r.el));
    this.text = {};
    for (const k of ["spread", "state", "mismatches", "resyncs"]) {
      this.text[k] = els[k].appendChild(document.createTextNode(""));
    }
    this.warn = null;
  }

  draw(book) {
    book.dirty = false;
    const cumAsk = cumulative(book.asks);
    const cumBid = cumulative(book.bids);
    const top = Math.max(cumAsk[cumAsk.length - 1] || 0, cumBid[cumBid.length - 1] || 0) || 1;
    // Asks: the best at the bottom, next to the spread.
    for (let i = 0; i < DEPTH; i++) {
      const k = DEPTH - 1 - i;
      drawRow(this.asks[i], book.asks[k], cumAsk[k], top, k === 0);
      drawRow(this.bids[i], book.bids[i], cumBid[i], top, i === 0);
    }
    set(this.text.spread, spreadText(book));
    set(this.text.state, stateText(book));
    set(this.text.mismatches, String(book.stats.mismatches));
    set(this.text.resyncs, String(book.stats.resyncs));
    const warn = book.stats.mismatches > 0;
    if (warn !== this.warn) {
      this.els.mismatches.classList.toggle("warn", warn);
      this.warn = warn;
    }
    this.els.root.classList.toggle("syncing", !book.valid);
  }
}

function set(t, s) {
  if (t.data !== s) t.data = s;
}

function cumulative(levels) {
  const out = [];
  let n = 0;
  for (let i = 0; i < levels.length && i < DEPTH; i++) {
    n += levels[i].size;
    out.push(n);
  }
  return out;
}

function drawRow(row, lv, cum, top, best) {
  set(row.px, lv ? lv.text : "");
  set(row.sz, lv ? fmtSize(lv.size) : "");
  set(row.cum, lv ? fmtSize(cum) : "");
  const scale = lv ? Math.round((cum / top) * 1000) / 1000 : 0;
  if (scale !== row.scale) {
    row.bar.style.transform = `scaleX(${scale})`;
    row.scale = scale;
  }
  const isBest = best && !!lv;
  if (isBest !== row.best) {
    row.el.classList.toggle("best", isBest);
    row.best = isBest;
  }
}

function spreadText(book) {
  const b = book.bids[0];
  const a = book.asks[0];
  if (!b || !a) return book.symbol ? "spread –" : "";
  const d = Math.max(decimalsIn(a.text), decimalsIn(b.text));
  const ticks = Number(a.digits) - Number(b.digits);
  const spread = a.px - b.px;
  const bp = (spread / ((a.px + b.px) / 2)) * 1e4;
  const bpText = bp >= 10 ? bp.toFixed(0) : bp >= 0.1 ? bp.toFixed(1) : bp.toPrecision(1);
  return `spread ${spread.toFixed(d)} · ${ticks} tick${ticks === 1 ? "" : "s"} · ${bpText} bp`;
}

function stateText(book) {
  if (!book.symbol) return "";
  if (book.note) return book.note;
  if (!book.valid) return "waiting for the book";
  return `depth ${DEPTH} · seq ${book.seq} · checksum ok`;
}
