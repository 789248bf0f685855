// What the browser drivers of tests/dashboard.rs share: Debian's headless Chromium with
// a fresh profile, the line-by-line conversation with the test on stdio, and checks
// that fail with what the page held.
"use strict";

const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const readline = require("node:readline");
const { chromium } = require("playwright-core");

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

/** Chromium with a profile of its own (a first visit: nothing in localStorage) and a
 *  window of `width`×`height`; `close()` ends it and removes the profile. */
async function launch(width, height) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "tickstream-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width, height },
    deviceScaleFactor: 1,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  return {
    context,
    close: async () => {
      await context.close();
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

// The test's side of the conversation: one line at a time, in order.
const stdin = readline.createInterface({ input: process.stdin });
const lines = [];
let waiter = null;
stdin.on("line", (l) => {
  if (waiter) {
    const w = waiter;
    waiter = null;
    w(l.trim());
  } else lines.push(l.trim());
});

function readLine() {
  if (lines.length) return Promise.resolve(lines.shift());
  return new Promise((resolve) => { waiter = resolve; });
}

/** Waits for the test to say `want`; anything else fails the run. */
async function expectLine(want) {
  const got = await readLine();
  if (got !== want) throw new Error(`expected "${want}" from the test, got "${got}"`);
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

/** Polls `fn` in the page until it returns something truthy; on a timeout, fails with
 *  the page's connection state, counters, chart and book. */
async function until(page, what, fn, arg, timeout = 10000) {
  try {
    const h = await page.waitForFunction(fn, arg, { timeout, polling: 50 });
    return await h.jsonValue();
  } catch (e) {
    const state = await page.evaluate(() => {
      const t = window.__tickstream;
      const conn = document.getElementById("conn-text");
      return {
        state: t && t.state, stats: t && t.stats, chart: t && t.chart, book: t && t.book,
        conn: conn && conn.textContent,
      };
    }).catch(() => null);
    throw new Error(`timed out waiting for ${what}: ${JSON.stringify(state)}`);
  }
}

module.exports = { CHROMIUM, launch, expectLine, check, until };
