// Drives the dashboard as a trading screen in headless Chromium for tests/dashboard.rs.
//
// Usage: node trading.js NODE_URL SCREENSHOT.png
//
// The node is fed by the test: three hours of BTC-USD (bars exist before the page
// opens), and AAPL, MSFT, NVDA, EUR/USD, BTC-USD and ETH-USD 20 times a second. The page
// is loaded through a proxy (wsproxy.js) that counts what the node sends on each
// WebSocket and can add a `reconnect` to it. Each live symbol has a book of 20 levels a
// side that moves with its quote; the selected row's is drawn as a ladder. One line each way with the test:
//   stdout "LATE"            the pattern ETH-* is shown: give ETH-EUR its first value
//   stdin  "LATE_PUBLISHED"
//   stdout "RESULT {…}"      what was measured; exit status 0 when every check held
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const { launch, expectLine, check, until } = require("./driver");
const { startProxy } = require("./wsproxy");

const [nodeUrl, shot] = process.argv.slice(2);
if (!nodeUrl || !shot) {
  console.error("usage: node trading.js NODE_URL SCREENSHOT.png");
  process.exit(2);
}
const CHARTED = "BTC-USD";
const FX = "EUR/USD"; // a book of 5 decimals, some of its prices ending in 0
const PACED = "AAPL";
const PACE_MS = 250;
const MOVE_IN_MS = 3000;

/** Polls `fn` here (not in the page) until it returns something truthy. */
async function untilHere(what, fn, timeout) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const ts = (page) => page.evaluate(() => ({
  stats: { ...window.__tickstream.stats }, symbols: window.__tickstream.symbols(),
  chart: window.__tickstream.chart, connections: window.__tickstream.connections,
  book: window.__tickstream.book,
}));

/** Selecting a row opens its chart, filled from backfill at once; a bar closes and the
 *  next starts; the candle colours are on the canvas. */
async function chartOpens(page) {
  await page.click(`#rows .row[data-symbol="${CHARTED}"] .sym`);
  const chart = await until(page, "the chart with its backfilled bars", () => {
    const c = window.__tickstream.chart;
    return c && c.drawnMs !== null && c.bars >= 100 ? c : null;
  }, undefined, 5000);
  check(chart.symbol === CHARTED && chart.interval === "1s", `the chart of the row: ${JSON.stringify(chart)}`);
  check(chart.drawnMs <= 1000, `bars drawn within a second of the click: ${chart.drawnMs} ms`);
  check(await page.isVisible("#chart-canvas"), "the chart is shown");
  check(await page.$eval(`#rows .row[data-symbol="${CHARTED}"]`, (r) => r.classList.contains("selected")),
    "the row is marked selected");
  const pixels = await page.evaluate(() => {
    const c = document.getElementById("chart-canvas");
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let up = 0;
    let down = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i] === 34 && d[i + 1] === 197 && d[i + 2] === 94) up += 1;
      else if (d[i] === 240 && d[i + 1] === 82 && d[i + 2] === 82) down += 1;
    }
    return { up, down, width: c.width, height: c.height };
  });
  check(pixels.up > 200 && pixels.down > 200, `rising and falling candles drawn: ${JSON.stringify(pixels)}`);
  const was = chart.newest;
  const closes = chart.closes;
  const next = await until(page, "a bar to close and the next to start", ([t, n]) => {
    const c = window.__tickstream.chart;
    return c.closes > n && c.newest > t ? c : null;
  }, [was, closes], 5000);
  return { chart, pixels, closed: { was, next: next.newest, closes: next.closes - closes } };
}

/** What the ladder shows: its rows with a price, top to bottom, and its counters. */
const ladderDom = (page) => page.evaluate(() => {
  const rows = (sel) => [...document.querySelectorAll(sel)]
    .filter((r) => r.querySelector(".px").textContent)
    .map((r) => ({
      text: r.querySelector(".px").textContent, px: Number(r.querySelector(".px").textContent),
      size: r.querySelector(".sz").textContent, best: r.classList.contains("best"),
      bar: r.querySelector(".bar").style.transform,
    }));
  const text = (id) => document.getElementById(id).textContent;
  const box = document.getElementById("ladder").getBoundingClientRect();
  return {
    asks: rows("#lad-asks .lv"), bids: rows("#lad-bids .lv"), spread: text("lad-spread"),
    state: text("lad-state"), mismatches: text("lad-mismatches"), resyncs: text("lad-resyncs"),
    warn: document.getElementById("lad-mismatches").classList.contains("warn"),
    shown: box.width > 200 && box.height > 300,
  };
});

const book = (page) => page.evaluate(() => window.__tickstream.book);

/** Waits for the ladder of `symbol` holding a checked book of 10 levels a side, and
 *  for the page to have drawn them (it draws on the next animation frame). */
const ladderOf = (page, symbol, timeout = 5000) => until(page, `the ladder of ${symbol}`, (sym) => {
  const b = window.__tickstream.book;
  const drawn = (side) => [...document.querySelectorAll(`#lad-${side} .lv .px`)]
    .filter((p) => p.textContent).length >= 10;
  return b && b.symbol === sym && b.valid && b.bids >= 10 && b.asks >= 10 && b.shownMs !== null
    && drawn("asks") && drawn("bids") ? b : null;
}, symbol, timeout);

/** The ladder as drawn: 10 levels a side, asks above bids, each side in price order
 *  from the touch, the best two highlighted, bid below ask, cumulative bars. */
function ladderDrawn(dom, symbol) {
  const asks = dom.asks.map((l) => l.px);
  const bids = dom.bids.map((l) => l.px);
  check(dom.shown, `the ladder is beside the chart: ${JSON.stringify(dom)}`);
  check(asks.length === 10 && bids.length === 10, `${symbol}: 10 levels a side drawn: ${JSON.stringify(dom)}`);
  check(asks.every((p, i) => i === 0 || asks[i - 1] > p), `${symbol}: asks from the highest down to the best: ${asks}`);
  check(bids.every((p, i) => i === 0 || bids[i - 1] > p), `${symbol}: bids from the best down: ${bids}`);
  const bestAsk = dom.asks[9];
  const bestBid = dom.bids[0];
  check(bestBid.px < bestAsk.px, `${symbol}: best bid ${bestBid.text} < best ask ${bestAsk.text}`);
  check(bestAsk.best && bestBid.best && [...dom.asks, ...dom.bids].filter((l) => l.best).length === 2,
    `${symbol}: the best bid and ask highlighted, nothing else: ${JSON.stringify(dom)}`);
  check(/^spread /.test(dom.spread), `${symbol}: the spread is shown: ${dom.spread}`);
  check([...dom.asks, ...dom.bids].some((l) => l.bar === "scaleX(1)") && dom.bids[0].bar !== "scaleX(1)",
    `${symbol}: cumulative bars, the deepest the longest: ${JSON.stringify(dom.bids.map((l) => l.bar))}`);
  return { bestBid: bestBid.text, bestAsk: bestAsk.text, spread: dom.spread };
}

/** Selecting a row shows its book beside the chart within a second; it updates, and
 *  every message's checksum matches for several seconds of live updates. */
async function ladderShows(page) {
  const first = await ladderOf(page, CHARTED);
  check(first.shownMs <= 1000, `levels within a second of the click: ${first.shownMs} ms`);
  const drawn = ladderDrawn(await ladderDom(page), CHARTED);
  await page.waitForTimeout(4000);
  const later = await book(page);
  const dom = await ladderDom(page);
  ladderDrawn(dom, CHARTED);
  const verified = later.verified - first.verified;
  check(verified >= 20 && later.seq > first.seq, `the book updates: ${verified} messages checked, seq ${first.seq} → ${later.seq}`);
  for (const k of ["mismatches", "resyncs", "breaks", "malformed", "stray"]) {
    check(later[k] === 0, `${k} stays 0 over live updates: ${JSON.stringify(later)}`);
  }
  check(dom.mismatches === "0" && dom.resyncs === "0" && /checksum ok/.test(dom.state),
    `the counters shown: ${JSON.stringify(dom)}`);
  return { shownMs: first.shownMs, verified, seq: [first.seq, later.seq], first: drawn, later: ladderDrawn(dom, CHARTED) };
}

/** Another row's ladder: its book alone is subscribed (the last one's stops on the
 *  wire); then back. */
async function ladderSwitches(page, proxy) {
  const [conn] = proxy.open();
  await page.click(`#rows .row[data-symbol="${FX}"] .sym`);
  const fx = await ladderOf(page, FX);
  const drawn = ladderDrawn(await ladderDom(page), FX);
  check(/\.\d{5}$/.test(drawn.bestBid) && /\.\d{5}$/.test(drawn.bestAsk), `${FX} prices with 5 decimals: ${JSON.stringify(drawn)}`);
  await page.waitForTimeout(300); // what the node had queued before the unsubscribe
  const old0 = conn.count(`book_update ${CHARTED}`);
  const fx0 = conn.count(`book_update ${FX}`);
  await page.waitForTimeout(1500);
  const oldBook = conn.count(`book_update ${CHARTED}`) - old0;
  const fxBook = conn.count(`book_update ${FX}`) - fx0;
  check(oldBook === 0, `no update of ${CHARTED}'s book after the switch: ${oldBook}`);
  check(fxBook > 0, `${FX}'s book flows: ${fxBook}`);
  const fxLater = await book(page);
  check(fxLater.mismatches === 0 && fxLater.verified > fx.verified, `${FX}: checked with no mismatch: ${JSON.stringify(fxLater)}`);
  await page.click(`#rows .row[data-symbol="${CHARTED}"] .sym`);
  const back = await ladderOf(page, CHARTED);
  return { fx: drawn, fxUpdates: fxBook, oldUpdates: oldBook, backShownMs: back.shownMs };
}

/** Forced faults: an update lost in the page (the next does not follow: resumed from
 *  the seq held), then a level corrupted (the checksum says so: the book is fetched
 *  again). The counters move, and the book recovers and stays checked. */
async function ladderRecovers(page) {
  const a = await book(page);
  await page.evaluate(() => window.__tickstream.dropBookUpdate());
  const resumed = await until(page, "the book resumed after a lost update", (was) => {
    const b = window.__tickstream.book;
    return b.breaks > was.breaks && b.valid && !b.waiting && b.verified > was.verified + 2 ? b : null;
  }, a, 5000);
  check(resumed.mismatches === a.mismatches && resumed.resyncs === a.resyncs + 1,
    `a hole is a re-sync, not a mismatch: ${JSON.stringify(resumed)}`);
  await page.evaluate(() => window.__tickstream.corruptBook());
  const fixed = await until(page, "the book fetched again after a mismatch", (was) => {
    const b = window.__tickstream.book;
    return b.mismatches > was.mismatches && b.valid && !b.waiting && b.verified > was.verified + 2 ? b : null;
  }, resumed, 5000);
  check(resumed.recovered === a.recovered + 1, `the resume gave a good book: ${JSON.stringify(resumed)}`);
  check(fixed.mismatches === resumed.mismatches + 1 && fixed.resyncs === resumed.resyncs + 1 && fixed.books > resumed.books
    && fixed.recovered === resumed.recovered + 1,
    `one mismatch, one re-sync, a fresh book: ${JSON.stringify(fixed)}`);
  await page.waitForTimeout(2000);
  const after = await book(page);
  const dom = await ladderDom(page);
  ladderDrawn(dom, CHARTED);
  check(after.mismatches === fixed.mismatches && after.verified > fixed.verified + 10,
    `checked again with no further mismatch: ${JSON.stringify(after)}`);
  check(dom.mismatches === String(after.mismatches) && dom.warn && dom.resyncs === String(after.resyncs),
    `the counters shown: ${JSON.stringify(dom)}`);
  return {
    resumed: { breaks: resumed.breaks, resyncs: resumed.resyncs, recovered: resumed.recovered },
    fixed: { mismatches: fixed.mismatches, resyncs: fixed.resyncs, books: fixed.books },
    shown: { mismatches: dom.mismatches, resyncs: dom.resyncs },
    after: { mismatches: after.mismatches, verified: after.verified },
  };
}

/** The interval switches to 1m: its own backfill, and nothing of the 1s subscription
 *  once the node has dropped it (counted on the wire by the proxy). */
async function intervalSwitches(page, proxy) {
  const [conn] = proxy.open();
  await page.click('#detail .intervals button[data-interval="1m"]');
  const m = await until(page, "the 1m chart", () => {
    const c = window.__tickstream.chart;
    return c.interval === "1m" && c.drawnMs !== null && c.bars >= 100 ? c : null;
  }, undefined, 5000);
  await until(page, "the node to confirm the 1s candles dropped", (k) =>
    window.__tickstream.chart.dropped.includes(k), `${CHARTED} 1s`, 2000);
  await page.waitForTimeout(300); // what the node had queued before the unsubscribe
  const old0 = conn.count("candle 1s");
  const new0 = conn.count("candle 1m");
  await page.waitForTimeout(1500);
  const oldInterval = conn.count("candle 1s") - old0;
  const newInterval = conn.count("candle 1m") - new0;
  check(oldInterval === 0, `no 1s candle after the switch: ${oldInterval}`);
  check(newInterval > 0, `1m candles flow: ${newInterval}`);
  const stray = await page.evaluate(() => window.__tickstream.stats.strayCandles);
  check(stray === 0, `no stray candle reached the page: ${stray}`);
  return { interval: m.interval, bars: m.bars, drawnMs: m.drawnMs, oldInterval, newInterval };
}

/** A paced row: the DOM of the row changes at most once per pace, while the node folds
 *  the symbol's 20 ticks a second into it (`skipped`). */
async function paceHolds(page) {
  check(await page.evaluate(() => window.__tickstream.pace) === PACE_MS, `the page's pace is ${PACE_MS} ms`);
  const before = (await ts(page)).symbols[PACED];
  await page.evaluate((sym) => {
    const row = document.querySelector(`#rows .row[data-symbol="${sym}"]`);
    window.__domUpdates = [];
    const mo = new MutationObserver(() => window.__domUpdates.push(performance.now()));
    for (const c of row.querySelectorAll(".bid, .ask, .last")) {
      mo.observe(c, { characterData: true, childList: true, subtree: true });
    }
  }, PACED);
  await page.waitForTimeout(4000);
  const times = await page.evaluate(() => window.__domUpdates);
  const after = (await ts(page)).symbols[PACED];
  check(times.length >= 8, `the row updated: ${times.length} times`);
  const span = times[times.length - 1] - times[0];
  const allowed = Math.floor(span / PACE_MS) + 2;
  let maxPerSecond = 0;
  for (let i = 0, j = 0; i < times.length; i++) {
    while (times[i] - times[j] >= 1000) j++;
    maxPerSecond = Math.max(maxPerSecond, i - j + 1);
  }
  check(times.length <= allowed, `${times.length} DOM updates in ${span} ms: at most ${allowed}`);
  check(maxPerSecond <= 5, `at most 5 updates in any second: ${maxPerSecond}`);
  const skipped = after.skipped - before.skipped;
  const advance = after.seq - before.seq;
  check(skipped > 0, `the node folded ticks into the paced ones: ${skipped}`);
  check(after.ticks - before.ticks + skipped === advance && after.holes === 0,
    `every seq accounted for: ${JSON.stringify({ before, after })}`);
  return { updates: times.length, spanMs: Math.round(span), allowed, maxPerSecond, skipped, advance };
}

/** A pattern adds every symbol it matches; one with no value yet gets it later. */
async function patternAdds(page) {
  await page.fill("#pattern-input", "ETH-*");
  await page.press("#pattern-input", "Enter");
  const added = await until(page, "the pattern's rows", () => {
    const s = Object.keys(window.__tickstream.symbols()).filter((x) => x.startsWith("ETH-")).sort();
    return s.length >= 2 ? s : null;
  }, undefined, 5000);
  // The chip is written by the next frame after the rows arrive.
  const chip = await until(page, "the pattern's chip to count its rows", () => {
    const li = document.querySelector('#patterns li[data-pattern="ETH-*"]');
    return li && /2 symbols/.test(li.textContent) ? li.textContent : null;
  }, undefined, 2000);
  await until(page, "ETH-USD's price", () =>
    document.querySelector('#rows .row[data-symbol="ETH-USD"] .last').textContent !== "–", undefined, 3000);
  check(await page.textContent('#rows .row[data-symbol="ETH-EUR"] .last') === "–", "ETH-EUR has no value yet");
  console.log("LATE");
  await expectLine("LATE_PUBLISHED");
  const price = await until(page, "ETH-EUR's first value", () => {
    const t = document.querySelector('#rows .row[data-symbol="ETH-EUR"] .last').textContent;
    return t !== "–" ? t : null;
  }, undefined, 5000);
  const stored = await page.evaluate(() => JSON.parse(localStorage.getItem("tickstream.patterns")));
  check(JSON.stringify(stored) === '["ETH-*"]', `the pattern is kept: ${JSON.stringify(stored)}`);
  return { rows: added, chip, lateFirst: price };
}

/** The page's report reached the node, and the bar shows what every client reports. */
async function reportReaches(page) {
  const sent = await until(page, "the page's latency report taken by the node", () =>
    window.__tickstream.stats.reported >= 1 ? window.__tickstream.lastReport : null, undefined, 15000);
  const node = await (await fetch(new URL("/v1/latency", nodeUrl))).json();
  check(node.reports >= 1 && node.reports_total >= 1, `the node counts the report: ${JSON.stringify(node)}`);
  const shown = await until(page, "every client's latency in the bar", () => {
    const t = document.getElementById("st-clients").textContent;
    return t !== "–" ? t : null;
  }, undefined, 5000);
  return { sent, node, shown };
}

/** Records every text the connection pill shows from now on. */
const watchConnText = (page) => page.evaluate(() => {
  window.__connTexts = [];
  const el = document.getElementById("conn-text");
  new MutationObserver(() => window.__connTexts.push(el.textContent))
    .observe(el, { characterData: true, childList: true, subtree: true });
});

/** The node's `reconnect` (added by the proxy): the page opens its next connection at
 *  once, resumes there, and closes the old one itself when the new one is live. */
async function plannedMove(page, proxy) {
  // Back to 1s bars: closes every second, to see the chart go on across the move.
  await page.click('#detail .intervals button[data-interval="1s"]');
  await until(page, "the 1s chart again", () => window.__tickstream.chart.interval === "1s"
    && window.__tickstream.chart.bars >= 100, undefined, 5000);
  const open = proxy.open();
  check(open.length === 1, `one WebSocket before the move: ${open.length}`);
  const old = open[0];
  await watchConnText(page);
  const before = await ts(page);
  const at = Date.now();
  old.inject([{ type: "reconnect", reason: "lifetime", in_ms: MOVE_IN_MS }]);
  const fresh = await untilHere("the next connection", () => proxy.conns.find((c) => c.id > old.id), 1000);
  const closeTimer = setTimeout(() => old.close(1001, "server shutting down"), MOVE_IN_MS);
  await until(page, "the move", () => window.__tickstream.stats.moves >= 1 && !window.__tickstream.moving,
    undefined, MOVE_IN_MS + 2000);
  await untilHere("the old connection closed", () => !old.open, MOVE_IN_MS);
  clearTimeout(closeTimer);
  // Every live row moves on, on the new connection only.
  await until(page, "every live row past where it was", (was) => {
    const now = window.__tickstream.symbols();
    return ["AAPL", "MSFT", "NVDA", "EUR/USD", "BTC-USD", "ETH-USD"]
      .every((s) => now[s] && now[s].seq > was[s].seq + 10);
  }, before.symbols, 10000);
  const chartLater = await until(page, "the chart to go on", (n) =>
    window.__tickstream.chart.closes > n + 1 ? window.__tickstream.chart : null,
  (await ts(page)).chart.closes, 5000);
  await until(page, "the book to go on", (n) => {
    const b = window.__tickstream.book;
    return b.valid && b.verified > n + 20;
  }, before.book.verified, 5000);
  const after = await ts(page);
  return moveResult(page, { old, fresh, at, before, after, chartLater });
}

async function moveResult(page, { old, fresh, at, before, after, chartLater }) {
  const delta = {};
  for (const k of Object.keys(after.stats)) delta[k] = after.stats[k] - before.stats[k];
  for (const [s, was] of Object.entries(before.symbols)) {
    const now = after.symbols[s];
    check(now.holes === was.holes && now.gaps === was.gaps, `${s}: no hole or gap in the move`);
    check(now.ticks - was.ticks + now.skipped - was.skipped === now.seq - was.seq,
      `${s}: every seq from ${was.seq} to ${now.seq} arrived or was folded, once`);
  }
  const texts = await page.evaluate(() => window.__connTexts);
  check(texts.every((t) => t.startsWith("live")), `no backoff, no countdown: ${JSON.stringify(texts)}`);
  check(old.closedBy === "page" && old.closeCode === 1000, `the page closed the old connection: ${old.closedBy} ${old.closeCode}`);
  check(fresh.openedAt - at < 1000, `the next connection opened at once: ${fresh.openedAt - at} ms`);
  const subscribedAt = fresh.firstAt.get("pong");
  check(subscribedAt && old.closedAt >= subscribedAt, "the old one closed after the new one was live");
  check(old.closedAt - at < MOVE_IN_MS, `before the node would have closed it: ${old.closedAt - at} ms`);
  check(after.connections === 1 && fresh.open, "one connection after the move");
  check(after.chart.loads > before.chart.loads, "the chart was subscribed on the new connection");
  const book = {};
  for (const k of ["mismatches", "resyncs", "breaks", "skew", "overlap", "books", "verified"]) book[k] = after.book[k] - before.book[k];
  check(book.mismatches === 0 && after.book.valid, `the book moved with no mismatch: ${JSON.stringify(book)}`);
  return {
    delta, overlap: delta.overlap, old: { closedBy: old.closedBy, code: old.closeCode, afterMs: old.closedAt - at },
    fresh: { openedAfterMs: fresh.openedAt - at, liveAfterMs: subscribedAt - at, ticks: fresh.count("tick") },
    lastMoveMs: after.stats.lastMoveMs, chartCloses: chartLater.closes, book,
  };
}

/** A link chooses the pace (`?pace=`), kept as if chosen; a bad one is said and ignored. */
async function paceFromLink(context, errors) {
  const page = await context.newPage();
  page.on("pageerror", (e) => errors.push(String(e)));
  try {
    await page.goto(`http://127.0.0.1:${proxyPort}/?pace=nope`, { waitUntil: "load" });
    await until(page, "the page to start", () => window.__tickstream && window.__tickstream.state === "live");
    const bad = { pace: await page.evaluate(() => window.__tickstream.pace), msg: await page.textContent("#add-msg") };
    check(bad.pace === PACE_MS && /\?pace= takes one of/.test(bad.msg), `a bad ?pace= is said and ignored: ${JSON.stringify(bad)}`);
    await page.goto(`http://127.0.0.1:${proxyPort}/?pace=1000`, { waitUntil: "load" });
    await until(page, "the page to start", () => window.__tickstream && window.__tickstream.state === "live");
    const good = { pace: await page.evaluate(() => window.__tickstream.pace), menu: await page.inputValue("#pace"),
      stored: await page.evaluate(() => localStorage.getItem("tickstream.pace")) };
    check(good.pace === 1000 && good.menu === "1000" && good.stored === "1000", `?pace=1000 is the pace: ${JSON.stringify(good)}`);
    return { bad, good };
  } finally {
    await page.close();
  }
}

let proxyPort = 0;

async function main() {
  const proxy = await startProxy(nodeUrl);
  proxyPort = proxy.port;
  const browser = await launch(1280, 900);
  const { context } = browser;
  const errors = [];
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
    const resp = await page.goto(`http://127.0.0.1:${proxy.port}/`, { waitUntil: "load" });
    check(resp && resp.status() === 200, `GET / answered ${resp && resp.status()}`);
    await until(page, "the connection to be live", () => window.__tickstream.state === "live");
    await until(page, "every row to show a price", () =>
      [...document.querySelectorAll("#rows .row .last")].every((td) => td.textContent !== "–"));

    const opened = await chartOpens(page);
    const ladder = await ladderShows(page);
    const minute = await intervalSwitches(page, proxy);
    const ladderSwitch = await ladderSwitches(page, proxy);
    const faults = await ladderRecovers(page);
    const pace = await paceHolds(page);
    const pattern = await patternAdds(page);
    fs.mkdirSync(path.dirname(shot), { recursive: true });
    await page.screenshot({ path: shot });
    const report = await reportReaches(page);
    const move = await plannedMove(page, proxy);
    const paceLink = await paceFromLink(context, errors);
    check(errors.length === 0, `no errors in the page: ${JSON.stringify(errors)}`);
    console.log("RESULT " + JSON.stringify({
      chart: opened.chart, pixels: opened.pixels, closed: opened.closed, minute, pace, pattern, report, move, paceLink,
      ladder, ladderSwitch, faults,
    }));
  } finally {
    await browser.close();
    proxy.close();
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e && e.stack ? e.stack : String(e));
    process.exit(1);
  },
);
