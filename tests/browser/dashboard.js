// Drives the dashboard in headless Chromium for tests/dashboard.rs.
//
// Usage: node dashboard.js URL SCREENSHOT.png
//
// Talks to the test over stdio, one line each way:
//   stdout "KILL"       the page is live and a symbol was added: stop the server now
//   stdin  "KILLED"     the server is gone
//   stdout "RESTART"    the page shows its reconnect countdown: start the server again
//   stdin  "RESTARTED"  the server listens again on the same port
//   stdout "GAP"        the page resumed: restart Redis under the node
//   stdin  "REDIS_RESTARTED"
//   stdout "FEED_STOP"  the gap was shown: kill the feed process
//   stdin  "FEED_STOPPED"
//   stdout "FEED_START" the rows are greyed as stale, their age ticking: start the feed again
//   stdin  "FEED_STARTED"
//   stdout "RESULT {…}" what the page counted; exit status 0 when every check held
//
// Last, the watchlist is set to 200 symbols and the page reloaded: with ticks arriving
// faster than the browser draws frames, the page renders at most once per animation
// frame (both counted in the page) and draws only the rows in view.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const { launch, expectLine, check, until } = require("./driver");

const [url, shot] = process.argv.slice(2);
if (!url || !shot) {
  console.error("usage: node dashboard.js URL SCREENSHOT.png");
  process.exit(2);
}
const ADDED = process.env.ADD_SYMBOL || "TSLA";

/** The stale mark of the row of `symbol`: whether it is greyed, and its label. */
function staleMark(symbol) {
  const row = document.querySelector(`#rows .row[data-symbol="${symbol}"]`);
  const label = row.querySelector(".health");
  return { greyed: row.classList.contains("stale"), label: label.hidden ? "" : label.textContent };
}

async function feedStopsAndReturns(page, shot) {
  // Redis restarting under the node made the rows stale (bus) for a moment: live first.
  await until(page, "every row live before the feed stops", () =>
    window.__tickstream.staleRows === 0 && !document.querySelector("#rows .row.stale"), undefined, 20000);
  // The symbols' leases went with Redis's data: the feed claims them again and the node
  // reads who owns them within a few seconds (it judges a feed only by the symbols it owns).
  await page.waitForTimeout(5000);
  const rows = await page.$$eval("#rows .row", (trs) => trs.map((t) => t.dataset.symbol));
  const symbol = rows[0];
  console.log("FEED_STOP");
  await expectLine("FEED_STOPPED");
  const stoppedAt = Date.now();
  const first = await until(page, `${symbol} greyed as stale`, (s) => {
    const row = document.querySelector(`#rows .row[data-symbol="${s}"]`);
    const label = row.querySelector(".health");
    return row.classList.contains("stale") && !label.hidden ? label.textContent : null;
  }, symbol, 15000);
  const markedAfterMs = Date.now() - stoppedAt;
  check(/^stale \d+s · feed$/.test(first), `the label gives the age and the reason: "${first}"`);
  // The age ticks while nothing else changes.
  const later = await until(page, `${symbol}'s age to move on`, ([s, was]) => {
    const label = document.querySelector(`#rows .row[data-symbol="${s}"] .health`).textContent;
    return label !== was && /^stale \d+s · feed$/.test(label) ? label : null;
  }, [symbol, first], 5000);
  const age = (l) => Number(/\d+/.exec(l)[0]);
  check(age(later) > age(first), `the age grows: "${first}" then "${later}"`);
  const counted = await until(page, "every row stale", (n) =>
    window.__tickstream.staleRows === n ? {
      staleRows: window.__tickstream.staleRows,
      shown: document.getElementById("st-stale").textContent,
      symbols: window.__tickstream.symbols(),
      stats: { ...window.__tickstream.stats },
    } : null, rows.length, 10000);
  check(counted.shown === String(rows.length), `the status bar counts ${rows.length} stale rows: ${counted.shown}`);
  const st = counted.symbols[symbol].stale;
  check(st && st.reason === "feed" && st.forMs >= 1000, `the row's stale mark is readable: ${JSON.stringify(st)}`);
  const dimmed = await page.$eval(`#rows .row[data-symbol="${symbol}"] .last`, (td) => getComputedStyle(td).color);
  check(dimmed === "rgb(125, 136, 150)", `the stale price is greyed: ${dimmed}`);
  await page.screenshot({ path: shot.replace(/\.png$/, "-stale.png") });

  console.log("FEED_START");
  await expectLine("FEED_STARTED");
  const startedAt = Date.now();
  await until(page, "every row live again", () =>
    window.__tickstream.staleRows === 0 && !document.querySelector("#rows .row.stale")
      && [...document.querySelectorAll("#rows .row .health")].every((l) => l.hidden), undefined, 20000);
  const liveAfterMs = Date.now() - startedAt;
  const back = await page.evaluate(staleMark, symbol);
  check(!back.greyed && back.label === "", `${symbol} back to normal: ${JSON.stringify(back)}`);
  check(await page.textContent("#st-stale") === "0", "the status bar counts no stale row");
  const ticking = await page.evaluate(() => window.__tickstream.stats.ticks);
  await until(page, "ticks after the return", (was) => window.__tickstream.stats.ticks > was, ticking, 10000);
  return {
    symbol, first, later, markedAfterMs, liveAfterMs, rows: counted.staleRows,
    wentStale: counted.stats.stale, statuses: counted.stats.statuses,
  };
}

async function main() {
  const browser = await launch(1280, 560);
  const { context } = browser;
  const errors = [];
  // Counts animation frames on every load, independently of the page's own render loop.
  await context.addInitScript(() => {
    window.__frames = 0;
    const loop = () => { window.__frames += 1; requestAnimationFrame(loop); };
    requestAnimationFrame(loop);
  });
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.on("pageerror", (e) => errors.push(String(e)));
    // Chromium logs each refused connection while the node is down; those are expected.
    page.on("console", (m) => {
      if (m.type() === "error" && !/^WebSocket connection to .* failed/.test(m.text())) errors.push(m.text());
    });

    // 1. The page loads, connects and shows the default watchlist ticking.
    const resp = await page.goto(url, { waitUntil: "load" });
    check(resp && resp.status() === 200, `GET / answered ${resp && resp.status()}`);
    await until(page, "the connection to be live", () => window.__tickstream.state === "live");
    const defaults = await page.$$eval("#rows .row", (trs) => trs.map((t) => t.dataset.symbol));
    check(defaults.length >= 3, `a default watchlist, got ${JSON.stringify(defaults)}`);
    check(!defaults.includes(ADDED), `${ADDED} is not among the defaults`);
    await until(page, "every default symbol to show a price", () =>
      [...document.querySelectorAll("#rows .row .last")].every((td) => td.textContent !== "–"));
    const node1 = await page.evaluate(() => window.__tickstream.node);
    check(await page.textContent("#st-node") === node1, "the status bar shows the node name");

    // 2. A symbol the node does not serve is refused with a message, and nothing changes.
    await page.fill("#add-input", "NOPE9");
    await page.keyboard.press("Enter");
    const refusal = await page.textContent("#add-msg");
    check(/not served/.test(refusal), `a refused symbol is explained: "${refusal}"`);
    const rowsNow = await page.$$eval("#rows .row", (trs) => trs.map((t) => t.dataset.symbol));
    check(JSON.stringify(rowsNow) === JSON.stringify(defaults), "a refused symbol adds no row");
    await page.fill("#add-input", "");

    // Add a symbol through the box: type part of it, take the suggestion with Enter.
    await page.focus("#add-input");
    await page.keyboard.type(ADDED.slice(0, 3));
    await page.waitForSelector(`#suggest li >> text=${ADDED}`, { timeout: 5000 });
    const options = await page.$$eval("#suggest li", (lis) => lis.map((l) => l.textContent));
    check(options.length > 0 && options.every((o) => o.includes(ADDED.slice(0, 3))),
      `suggestions match what was typed: ${JSON.stringify(options)}`);
    while ((await page.$eval("#suggest li.active", (l) => l.textContent)) !== ADDED) {
      await page.keyboard.press("ArrowDown");
    }
    await page.keyboard.press("Enter");
    const row = `#rows .row[data-symbol="${ADDED}"]`;
    await page.waitForSelector(row, { timeout: 2000 });
    const firstPrice = await until(page, `${ADDED} to show a price`, (sel) => {
      const td = document.querySelector(sel);
      return td && td.textContent !== "–" ? td.textContent : null;
    }, `${row} .last`);
    const shownAt = Date.now();
    const quote = (sel) => {
      const tr = document.querySelector(sel);
      return ["bid", "ask", "last"].map((c) => tr.querySelector(`.${c}`).textContent).join(" ");
    };
    const before = await page.evaluate(quote, row);
    await until(page, `${ADDED}'s price to change within a second`,
      ([sel, was]) => {
        const tr = document.querySelector(sel);
        const now = ["bid", "ask", "last"].map((c) => tr.querySelector(`.${c}`).textContent).join(" ");
        return now !== was;
      }, [row, before], 1000);
    const changedAfterMs = Date.now() - shownAt;
    const stored = await page.evaluate(() => JSON.parse(localStorage.getItem("tickstream.watchlist")));
    check(stored.includes(ADDED), `the watchlist in localStorage holds ${ADDED}: ${JSON.stringify(stored)}`);

    // 3. The server goes away: the page counts down to its next attempt.
    await page.waitForTimeout(500);
    const beforeKill = await page.evaluate(() => ({
      stats: { ...window.__tickstream.stats }, symbols: window.__tickstream.symbols(),
    }));
    check(beforeKill.stats.holes === 0 && beforeKill.stats.gaps === 0,
      `no hole or gap before the restart: ${JSON.stringify(beforeKill.stats)}`);
    console.log("KILL");
    await expectLine("KILLED");
    const countdown = await until(page, "the reconnect countdown", () => {
      const t = document.getElementById("conn-text").textContent;
      return /^reconnecting in \d+\.\d s/.test(t) ? t : null;
    });
    console.log("RESTART");
    await expectLine("RESTARTED");

    // 4. It reconnects and resumes every symbol where it left off: no hole, no gap.
    await until(page, "a reconnect", () =>
      window.__tickstream.state === "live" && window.__tickstream.stats.reconnects >= 1, undefined, 40000);
    await until(page, "every symbol to move past where it was", (was) => {
      const now = window.__tickstream.symbols();
      return Object.keys(was).every((s) => now[s] && now[s].seq > was[s].seq + 5);
    }, beforeKill.symbols, 15000);
    const after = await page.evaluate(() => ({
      stats: { ...window.__tickstream.stats }, symbols: window.__tickstream.symbols(),
      node: window.__tickstream.node, latency: window.__tickstream.latency,
    }));
    for (const [s, was] of Object.entries(beforeKill.symbols)) {
      const now = after.symbols[s];
      check(now.epoch === was.epoch, `${s} kept its epoch across the restart`);
      check(now.holes === 0 && now.gaps === 0, `${s} resumed without a hole or gap`);
      // Rows are paced: a seq the page did not get as a tick was folded (`skipped`).
      const got = now.ticks - was.ticks;
      const folded = now.skipped - was.skipped;
      check(got + folded >= now.seq - was.seq,
        `${s}: every seq from ${was.seq} to ${now.seq} arrived or was folded (${got} ticks, ${folded} skipped)`);
    }
    check(after.stats.holes === 0, `no hole: ${JSON.stringify(after.stats)}`);
    check(after.stats.resumes >= 1, "the subscribe after the reconnect carried resume");
    check(after.latency.p50 !== null && after.latency.p99 >= after.latency.p50, "latency percentiles shown");

    // Let the sparklines fill a little, then keep the picture.
    await page.waitForTimeout(2500);
    fs.mkdirSync(path.dirname(shot), { recursive: true });
    await page.screenshot({ path: shot });

    // 5. Redis restarts under the node: what the node missed arrives as a `gap`
    //    (upstream) on the symbols it hit, shown on their rows; still no hole.
    console.log("GAP");
    await expectLine("REDIS_RESTARTED");
    const gapped = await until(page, "a gap shown on a row", () => {
      const b = [...document.querySelectorAll("#rows .row .badge")].find((e) => !e.hidden);
      return b ? `${b.closest(".row").dataset.symbol}: ${b.textContent}` : null;
    }, undefined, 30000);
    check(/: gap \d+(–\d+)? · upstream$/.test(gapped), `the badge names the range and reason: ${gapped}`);
    const afterGap = await page.evaluate(() => ({ ...window.__tickstream.stats }));
    check(afterGap.gaps >= 1 && afterGap.holes === 0, `gaps counted, no hole: ${JSON.stringify(afterGap)}`);
    await page.screenshot({ path: shot.replace(/\.png$/, "-gap.png") });

    // 6. The feed dies: the node says its symbols are stale, and every row is greyed with
    //    its age ticking and the reason, until the feed is back and the node says live.
    const stale = await feedStopsAndReturns(page, shot);

    // 7. Keyboard removal, then a reload keeps the list as it was left.
    const victim = defaults[defaults.length - 1];
    await page.focus(`#rows .row[data-symbol="${victim}"]`);
    await page.keyboard.press("Delete");
    check(!(await page.$(`#rows .row[data-symbol="${victim}"]`)), `${victim} removed with Delete`);
    await page.reload({ waitUntil: "load" });
    await until(page, "the connection after the reload", () => window.__tickstream.state === "live");
    const kept = await page.$$eval("#rows .row", (trs) => trs.map((t) => t.dataset.symbol));
    check(kept.includes(ADDED) && !kept.includes(victim),
      `the reloaded watchlist holds ${ADDED} and not ${victim}: ${JSON.stringify(kept)}`);

    // 8. 200 symbols: updates are coalesced into at most one render per frame.
    const many = await page.evaluate(async () => (await (await fetch("/v1/symbols")).json()).slice(0, 200));
    await page.evaluate((list) => localStorage.setItem("tickstream.watchlist", JSON.stringify(list)), many);
    await page.reload({ waitUntil: "load" });
    await until(page, "the connection with 200 symbols", () => window.__tickstream.state === "live");
    await until(page, "ticks on many rows", () =>
      Object.values(window.__tickstream.symbols()).filter((r) => r.ticks > 0).length >= 20, undefined, 15000);
    const count = () => page.evaluate(() => ({
      frames: window.__frames, renders: window.__tickstream.stats.renders,
      ticks: window.__tickstream.stats.ticks, wsFrames: window.__tickstream.stats.frames,
      batches: window.__tickstream.stats.batches, rowsRendered: window.__tickstream.stats.rowsRendered,
      inView: window.__tickstream.visibleRows,
    }));
    const c0 = await count();
    await page.waitForTimeout(3000);
    const c1 = await count();
    const coalesce = Object.fromEntries(Object.keys(c1).map((k) => [k, c1[k] - c0[k]]));
    coalesce.inView = c1.inView;
    check(coalesce.frames > 0 && coalesce.renders > 0, `frames and renders counted: ${JSON.stringify(coalesce)}`);
    check(coalesce.renders <= coalesce.frames + 1,
      `at most one render per animation frame: ${JSON.stringify(coalesce)}`);
    check(coalesce.ticks > coalesce.renders,
      `ticks arrived faster than the page rendered, so updates were coalesced: ${JSON.stringify(coalesce)}`);
    check(coalesce.batches <= coalesce.wsFrames, `frames reach the page in batches: ${JSON.stringify(coalesce)}`);
    check(c1.inView < many.length, `rows out of view are skipped: ${JSON.stringify(coalesce)}`);
    check(coalesce.rowsRendered <= coalesce.renders * c1.inView,
      `only rows in view are written: ${JSON.stringify(coalesce)}`);
    check(errors.length === 0, `no errors in the page: ${JSON.stringify(errors)}`);

    console.log("RESULT " + JSON.stringify({
      defaults, added: ADDED, firstPrice, changedAfterMs, countdown, node1, node2: after.node, gapped, stale,
      before: beforeKill.stats, after: after.stats, latency: after.latency, kept, coalesce,
    }));
  } finally {
    await browser.close();
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e && e.stack ? e.stack : String(e));
    process.exit(1);
  },
);
