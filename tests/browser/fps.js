// Measures the dashboard under load in headless Chromium: frames per second, renders
// per frame, ticks per second, long tasks, and where the main thread's time went.
//
// Usage: node fps.js URL [SECONDS] [SYMBOLS] [--profile] [--assets DIR]
//
// The watchlist is set to the first SYMBOLS symbols of the node's /v1/symbols (default
// 200) before the page loads. After a 3 s warm-up it counts, for SECONDS (default 10):
// animation frames (an independent requestAnimationFrame loop), the page's own renders
// (window.__tickstream.renders), ticks, long tasks (over 50 ms), and Chromium's
// Performance.getMetrics (script, style, layout time). With --profile it also prints
// the functions with the most self time (the DevTools CPU profiler). With --assets DIR
// the page (index.html, app.js, style.css) is taken from DIR instead of the node (to measure
// another version of the page against the same node).
//
// Prints one line: "FPS {…}" (JSON). A measurement tool, not a test.
"use strict";

const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { chromium } = require("playwright-core");

const args = process.argv.slice(2);
const profile = args.includes("--profile");
const assetsAt = args.indexOf("--assets");
const assets = assetsAt >= 0 ? args.splice(assetsAt, 2)[1] : null;
const traceAt = args.indexOf("--trace");
const traceFile = traceAt >= 0 ? args.splice(traceAt, 2)[1] : null;
const [url, secondsArg, symbolsArg] = args.filter((a) => a !== "--profile");
if (!url) {
  console.error("usage: node fps.js URL [SECONDS] [SYMBOLS] [--profile]");
  process.exit(2);
}
const SECONDS = Number(secondsArg || 10);
const SYMBOLS = Number(symbolsArg || 200);
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

async function main() {
  const all = await (await fetch(new URL("/v1/symbols", url))).json();
  const watch = all.slice(0, SYMBOLS);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tickstream-chromium-"));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 900 },
    deviceScaleFactor: 1,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      // A page answered by page.route (--assets) has no address of its own, so Chromium
      // would refuse its WebSocket to loopback as a public page reaching a local one.
      "--disable-features=LocalNetworkAccessChecks"],
  });
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.on("pageerror", (e) => console.error(`page error: ${e}`));
    page.on("console", (m) => { if (m.type() === "error") console.error(`console: ${m.text()}`); });
    await page.addInitScript((list) => {
      localStorage.setItem("tickstream.watchlist", JSON.stringify(list));
      const probe = { frames: 0, longTasks: 0, longMs: 0, messages: 0 };
      const WS = window.WebSocket;
      window.WebSocket = function (...a) {
        const ws = new WS(...a);
        ws.addEventListener("message", () => { probe.messages += 1; });
        return ws;
      };
      window.WebSocket.prototype = WS.prototype;
      Object.assign(window.WebSocket, { OPEN: WS.OPEN, CLOSED: WS.CLOSED, CONNECTING: WS.CONNECTING });
      window.__probe = probe;
      const loop = () => { probe.frames += 1; requestAnimationFrame(loop); };
      requestAnimationFrame(loop);
      try {
        new PerformanceObserver((l) => {
          for (const e of l.getEntries()) { probe.longTasks += 1; probe.longMs += e.duration; }
        }).observe({ entryTypes: ["longtask"] });
      } catch (_) { /* no long task API */ }
    }, watch);
    if (assets) {
      // (The worker's script, feed.js, cannot be routed: it comes from the node.)
      for (const [name, type, at] of [["index.html", "text/html", "/"],
        ["app.js", "text/javascript", "/assets/app.js"], ["style.css", "text/css", "/assets/style.css"]]) {
        if (!fs.existsSync(path.join(assets, name))) continue;
        const body = fs.readFileSync(path.join(assets, name));
        await page.route((u) => u.pathname === at, (r) => r.fulfill({ status: 200, contentType: type, body }));
      }
    }
    await page.goto(url, { waitUntil: "load" });
    await page.waitForFunction(() => window.__tickstream && window.__tickstream.state === "live",
      undefined, { timeout: 20000 }).catch(async (e) => {
      const st = await page.evaluate(() => window.__tickstream && [window.__tickstream.state,
        document.getElementById("conn-text").textContent]).catch(() => null);
      throw new Error(`the page is not live: ${JSON.stringify(st)}: ${e.message}`);
    });
    await page.waitForTimeout(3000);

    const cdp = await context.newCDPSession(page);
    await cdp.send("Performance.enable");
    if (profile) {
      await cdp.send("Profiler.enable");
      await cdp.send("Profiler.setSamplingInterval", { interval: 200 });
      await cdp.send("Profiler.start");
    }
    const snap = () => page.evaluate(() => ({
      t: performance.now(), frames: window.__probe.frames, longTasks: window.__probe.longTasks,
      longMs: window.__probe.longMs,
      // frames the page's WebSocket received: counted by the page when its worker holds it
      messages: window.__tickstream.stats.frames !== undefined
        ? window.__tickstream.stats.frames : window.__probe.messages,
      visible: window.__tickstream.visibleRows, ticks: window.__tickstream.stats.ticks,
      renders: window.__tickstream.stats.renders || 0,
    }));
    const metrics = async () => Object.fromEntries(
      (await cdp.send("Performance.getMetrics")).metrics.map((m) => [m.name, m.value]));
    const events = [];
    if (traceFile) {
      cdp.on("Tracing.dataCollected", (e) => events.push(...e.value));
      await cdp.send("Tracing.start", {
        transferMode: "ReportEvents",
        traceConfig: { includedCategories: ["devtools.timeline", "disabled-by-default-devtools.timeline",
          "disabled-by-default-devtools.timeline.frame", "blink", "cc", "gpu", "viz", "toplevel"] },
      });
    }
    const m0 = await metrics();
    const a = await snap();
    await page.waitForTimeout(SECONDS * 1000);
    const b = await snap();
    const m1 = await metrics();
    const s = (b.t - a.t) / 1000;
    const per = (k) => Math.round(((m1[k] - m0[k]) / s) * 1000) / 1000;
    const out = {
      seconds: Math.round(s * 10) / 10,
      symbols: watch.length,
      fps: Math.round(((b.frames - a.frames) / s) * 10) / 10,
      renders_per_s: Math.round(((b.renders - a.renders) / s) * 10) / 10,
      ticks_per_s: Math.round((b.ticks - a.ticks) / s),
      ws_messages_per_s: Math.round((b.messages - a.messages) / s),
      rows_in_view: b.visible,
      long_tasks: b.longTasks - a.longTasks,
      long_task_ms_per_s: Math.round((b.longMs - a.longMs) / s),
      // seconds of main-thread time per second of wall time
      script_s_per_s: per("ScriptDuration"),
      style_s_per_s: per("RecalcStyleDuration"),
      layout_s_per_s: per("LayoutDuration"),
      task_s_per_s: per("TaskDuration"),
      style_recalcs_per_s: per("RecalcStyleCount"),
      layouts_per_s: per("LayoutCount"),
    };
    if (traceFile) {
      const done = new Promise((r) => cdp.once("Tracing.tracingComplete", r));
      await cdp.send("Tracing.end");
      await done;
      fs.writeFileSync(traceFile, JSON.stringify({ traceEvents: events }));
      // Wall time of complete events by thread and name (nested events counted in each).
      const threads = new Map();
      for (const e of events) {
        if (e.ph === "M" && e.name === "thread_name") threads.set(`${e.pid}:${e.tid}`, e.args.name);
      }
      const sums = new Map();
      for (const e of events) {
        if (e.ph !== "X" || !e.dur) continue;
        const k = `${threads.get(`${e.pid}:${e.tid}`) || e.tid} ${e.name}`;
        sums.set(k, (sums.get(k) || 0) + e.dur);
      }
      out.trace_top_ms_per_s = [...sums.entries()].sort((x, y) => y[1] - x[1]).slice(0, 25)
        .map(([k, v]) => `${(v / 1000 / s).toFixed(1)} ${k}`);
    }
    if (profile) {
      const { profile: p } = await cdp.send("Profiler.stop");
      const self = new Map();
      const byId = new Map(p.nodes.map((n) => [n.id, n]));
      const dt = p.timeDeltas;
      for (let i = 0; i < p.samples.length; i++) {
        const n = byId.get(p.samples[i]);
        const cf = n.callFrame;
        const key = `${cf.functionName || "(anonymous)"} ${path.basename(cf.url || "")}:${cf.lineNumber + 1}`;
        self.set(key, (self.get(key) || 0) + (dt[i] || 0));
      }
      const total = [...self.values()].reduce((x, y) => x + y, 0);
      out.top_self = [...self.entries()].sort((x, y) => y[1] - x[1]).slice(0, 15)
        .map(([k, v]) => `${(100 * v / total).toFixed(1)}% ${k}`);
    }
    console.log("FPS " + JSON.stringify(out));
  } finally {
    await context.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
