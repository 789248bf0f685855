// A candle chart of one symbol on one <canvas>: candles with their wicks, volume bars
// under them, a price axis on the right, a time axis below, the forming bar drawn hollow
// with a dashed line at its price, and a crosshair under the pointer.
//
// Bars are placed by time: an interval without a tick has no bar (the node sends none),
// and its place stays empty. The newest bar is at the right edge, at a fixed spacing,
// so a wider window shows more history. Drawing happens only when asked (`draw`), at
// most once per animation frame by the page's render loop.

const COLORS = {
  up: "#22c55e", down: "#f05252", upVol: "rgba(34,197,94,0.32)", downVol: "rgba(240,82,82,0.32)",
  grid: "rgba(255,255,255,0.05)", axis: "#7d8896", axisBg: "#0e1319", line: "#222a35",
  cross: "rgba(215,221,229,0.35)", label: "#d7dde5", labelBg: "#2a3340",
};
const FONT = '11px ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", Menlo, monospace';
const AXIS_MIN_W = 56; // px, the price axis at its narrowest (it fits its labels)
const TIME_H = 22; // px, the time axis
const PAD_TOP = 12;
const PAD_RIGHT = 6; // px between the newest bar and the price axis
const VOL_SHARE = 0.2; // of the plot's height, for the volume bars
const SPACING = 8; // px per interval
const BODY = 0.68; // of the spacing, a candle's body width
const KEEP = 1000; // bars held at most (the node's largest backfill)
// Time-axis steps, in seconds: the first that leaves labels ≥ 84 px apart.
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
  43200, 86400, 172800, 604800];
const LABEL_GAP = 84;

/** The node's intervals, in ms. */
export const INTERVALS = { "1s": 1000, "1m": 60000, "5m": 300000, "1h": 3600000 };

/** A bar of a `candles` or `candle` message, its time in ms. */
function toBar(m) {
  return {
    t: Math.round(m.start / 1e6), open: m.open, high: m.high, low: m.low, close: m.close,
    volume: m.volume, ticks: m.ticks, closed: m.closed === true,
  };
}

/** A round step of about `raw`: 1, 2, 2.5 or 5 times a power of ten. */
function niceStep(raw) {
  const mag = 10 ** Math.floor(Math.log10(raw));
  const n = raw / mag;
  return (n <= 1 ? 1 : n <= 2 ? 2 : n <= 2.5 ? 2.5 : n <= 5 ? 5 : 10) * mag;
}

const pad2 = (n) => String(n).padStart(2, "0");

/** A time label in local time: 14:03:25, 14:03 or 12-02 as the step calls for. */
function timeLabel(ms, stepS) {
  const d = new Date(ms);
  if (stepS >= 86400) return `${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}`;
  const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  return stepS < 60 ? `${hm}:${pad2(d.getSeconds())}` : hm;
}

export class CandleChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.dpr = Math.max(1, Math.min(3, window.devicePixelRatio || 1));
    this.w = 0;
    this.h = 0;
    this.bars = [];
    this.iv = 1000;
    this.decimals = 2;
    this.pointer = null; // {x, y} in CSS px, or null
    this.axisW = AXIS_MIN_W;
    this.dirty = true;
    this.stats = { loads: 0, updates: 0, closes: 0, draws: 0 };
  }

  /** Forgets the bars: a new symbol or interval of `ivMs`. */
  reset(ivMs) {
    this.bars = [];
    this.iv = ivMs;
    this.pointer = null;
    this.dirty = true;
  }

  setDecimals(d) {
    if (d !== this.decimals) {
      this.decimals = d;
      this.dirty = true;
    }
  }

  /** Takes the bars of a `candles` message, replacing what was held. */
  load(bars) {
    this.bars = bars.map(toBar).sort((a, b) => a.t - b.t).slice(-KEEP);
    this.stats.loads += 1;
    this.dirty = true;
  }

  /** Takes a `candle` message: the forming bar changed, or a bar closed. */
  update(m) {
    const b = toBar(m);
    const bars = this.bars;
    let i = bars.length - 1;
    while (i >= 0 && bars[i].t > b.t) i--;
    if (i >= 0 && bars[i].t === b.t) {
      if (bars[i].closed && !b.closed) return; // a closed bar stays closed
      if (b.closed && !bars[i].closed) this.stats.closes += 1;
      bars[i] = b;
    } else {
      if (b.closed) this.stats.closes += 1;
      bars.splice(i + 1, 0, b);
      if (bars.length > KEEP) bars.splice(0, bars.length - KEEP);
    }
    this.stats.updates += 1;
    this.dirty = true;
  }

  /** The newest bar, or null. */
  last() {
    return this.bars.length ? this.bars[this.bars.length - 1] : null;
  }

  /** The CSS size of the canvas changed: the backing store follows it. */
  resize(w, h) {
    this.w = Math.max(0, Math.floor(w));
    this.h = Math.max(0, Math.floor(h));
    this.canvas.width = Math.round(this.w * this.dpr);
    this.canvas.height = Math.round(this.h * this.dpr);
    this.dirty = true;
  }

  setPointer(p) {
    this.pointer = p;
    this.dirty = true;
  }

  /** Where things go for the current size and bars. */
  layout() {
    const plotR = this.w - this.axisW;
    const plotB = this.h - TIME_H;
    const volH = Math.round((plotB - PAD_TOP) * VOL_SHARE);
    const n = Math.max(1, Math.floor((plotR - PAD_RIGHT) / SPACING));
    const last = this.last();
    const lastSlot = last ? Math.floor(last.t / this.iv) : 0;
    return {
      plotR, plotB, priceB: plotB - volH - 8, volT: plotB - volH, n, lastSlot,
      firstSlot: lastSlot - n + 1,
      x: (slot) => plotR - PAD_RIGHT - (lastSlot - slot) * SPACING - SPACING / 2,
    };
  }

  /** The bars in view, oldest first. */
  visible(L) {
    let i = this.bars.length;
    while (i > 0 && this.bars[i - 1].t / this.iv >= L.firstSlot) i--;
    return this.bars.slice(i);
  }

  /** The bar under the pointer, else the newest: what the page's readout shows. */
  readout() {
    if (!this.pointer || !this.bars.length || !this.w) return this.last();
    const L = this.layout();
    const slot = L.lastSlot - Math.round((L.x(L.lastSlot) - this.pointer.x) / SPACING);
    return this.bars.find((b) => Math.floor(b.t / this.iv) === slot) || this.last();
  }

  draw() {
    this.dirty = false;
    const { ctx, w, h } = this;
    if (!w || !h) return;
    this.stats.draws += 1;
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = FONT;
    this.fitAxis();
    const L = this.layout();
    const bars = this.visible(L);
    this.drawFrame(L);
    if (!bars.length) {
      ctx.fillStyle = COLORS.axis;
      ctx.textAlign = "center";
      ctx.fillText("waiting for the first bar", L.plotR / 2, h / 2);
      return;
    }
    const scale = this.priceScale(bars, L);
    const lastY = scale.y(bars[bars.length - 1].close);
    this.drawPriceAxis(scale, L, (y) => Math.abs(y - lastY) < 14);
    this.drawTimeAxis(L);
    this.drawVolume(bars, L);
    this.drawCandles(bars, scale, L);
    this.drawLastPrice(bars[bars.length - 1], scale, L);
    this.drawCrosshair(scale, L);
  }

  /** Widens the price axis to its widest label (the bars' highest price). */
  fitAxis() {
    let hi = 0;
    for (const b of this.bars) if (Math.abs(b.high) > hi) hi = Math.abs(b.high);
    const w = Math.ceil(this.ctx.measureText(hi.toFixed(this.decimals)).width) + 18;
    this.axisW = Math.max(AXIS_MIN_W, w);
  }

  drawFrame(L) {
    const { ctx } = this;
    ctx.fillStyle = COLORS.axisBg;
    ctx.fillRect(L.plotR, 0, this.axisW, this.h);
    ctx.fillRect(0, L.plotB, this.w, TIME_H);
    ctx.strokeStyle = COLORS.line;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(L.plotR + 0.5, 0);
    ctx.lineTo(L.plotR + 0.5, L.plotB);
    ctx.moveTo(0, L.plotB + 0.5);
    ctx.lineTo(this.w, L.plotB + 0.5);
    ctx.stroke();
  }

  /** The price range of `bars` with a margin, and its mapping to y. */
  priceScale(bars, L) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const b of bars) {
      if (b.low < lo) lo = b.low;
      if (b.high > hi) hi = b.high;
    }
    const span = hi - lo || Math.abs(hi) * 0.002 || 1;
    lo -= span * 0.08;
    hi += span * 0.08;
    const top = PAD_TOP;
    const bottom = L.priceB;
    return { lo, hi, y: (p) => bottom - ((p - lo) / (hi - lo)) * (bottom - top) };
  }

  /** Grid lines and price labels; no label where `hides(y)` (the last price's box). */
  drawPriceAxis(s, L, hides) {
    const { ctx } = this;
    const step = niceStep((s.hi - s.lo) / Math.max(2, Math.floor((L.priceB - PAD_TOP) / 44)));
    const dec = Math.max(0, Math.min(8, Math.max(this.decimals, -Math.floor(Math.log10(step) - 1e-9))));
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    ctx.strokeStyle = COLORS.grid;
    ctx.beginPath();
    for (let p = Math.ceil(s.lo / step) * step; p <= s.hi; p += step) {
      const y = Math.round(s.y(p)) + 0.5;
      ctx.moveTo(0, y);
      ctx.lineTo(L.plotR, y);
      if (hides(y)) continue;
      ctx.fillStyle = COLORS.axis;
      ctx.fillText(p.toFixed(dec), L.plotR + 8, y);
    }
    ctx.stroke();
  }

  drawTimeAxis(L) {
    const { ctx } = this;
    const stepS = TIME_STEPS.find((s) => (s * 1000 / this.iv) * SPACING >= LABEL_GAP && s * 1000 >= this.iv)
      || TIME_STEPS[TIME_STEPS.length - 1];
    const stepMs = stepS * 1000;
    // Labels fall on round local times (a whole minute, hour or day where you are).
    const off = new Date(L.lastSlot * this.iv).getTimezoneOffset() * 60000;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.strokeStyle = COLORS.grid;
    ctx.beginPath();
    for (let slot = L.firstSlot; slot <= L.lastSlot; slot++) {
      const t = slot * this.iv;
      if ((((t - off) % stepMs) + stepMs) % stepMs !== 0) continue;
      const x = Math.round(L.x(slot)) + 0.5;
      ctx.moveTo(x, PAD_TOP);
      ctx.lineTo(x, L.plotB);
      ctx.fillStyle = COLORS.axis;
      ctx.fillText(timeLabel(t, stepS), x, L.plotB + TIME_H / 2 + 1);
    }
    ctx.stroke();
  }

  drawVolume(bars, L) {
    const { ctx } = this;
    let max = 0;
    for (const b of bars) if (b.volume > max) max = b.volume;
    if (!max) return;
    const hVol = L.plotB - L.volT;
    const bw = Math.max(1, Math.floor(SPACING * BODY));
    for (const b of bars) {
      const x = Math.round(L.x(Math.floor(b.t / this.iv)) - bw / 2);
      const hb = Math.max(1, Math.round((b.volume / max) * hVol));
      ctx.globalAlpha = b.closed ? 1 : 0.55;
      ctx.fillStyle = b.close >= b.open ? COLORS.upVol : COLORS.downVol;
      ctx.fillRect(x, L.plotB - hb, bw, hb);
    }
    ctx.globalAlpha = 1;
  }

  drawCandles(bars, s, L) {
    const { ctx } = this;
    const bw = Math.max(1, Math.floor(SPACING * BODY));
    for (const b of bars) {
      const up = b.close >= b.open;
      const color = up ? COLORS.up : COLORS.down;
      const cx = Math.round(L.x(Math.floor(b.t / this.iv)));
      const yo = s.y(b.open);
      const yc = s.y(b.close);
      const top = Math.round(Math.min(yo, yc));
      const hb = Math.max(1, Math.round(Math.abs(yc - yo)));
      ctx.fillStyle = color;
      ctx.fillRect(cx, Math.round(s.y(b.high)), 1, Math.max(1, Math.round(s.y(b.low) - s.y(b.high))));
      const left = cx - Math.floor(bw / 2);
      if (b.closed) {
        ctx.fillRect(left, top, bw, hb);
      } else {
        // The forming bar: hollow, so it reads as not final.
        ctx.fillStyle = COLORS.axisBg;
        ctx.fillRect(left, top, bw, hb);
        ctx.strokeStyle = color;
        ctx.lineWidth = 1;
        ctx.strokeRect(left + 0.5, top + 0.5, bw - 1, Math.max(0, hb - 1));
      }
    }
  }

  /** A dashed line at the newest bar's close, its price in a box on the axis. */
  drawLastPrice(b, s, L) {
    const { ctx } = this;
    const y = Math.round(s.y(b.close)) + 0.5;
    const color = b.close >= b.open ? COLORS.up : COLORS.down;
    ctx.strokeStyle = color;
    ctx.setLineDash([3, 3]);
    ctx.beginPath();
    ctx.moveTo(0, y);
    ctx.lineTo(L.plotR, y);
    ctx.stroke();
    ctx.setLineDash([]);
    this.axisBox(b.close.toFixed(this.decimals), y, color, "#061018", L);
  }

  axisBox(text, y, bg, fg, L) {
    const { ctx } = this;
    ctx.fillStyle = bg;
    ctx.fillRect(L.plotR + 1, y - 9, this.axisW - 1, 18);
    ctx.fillStyle = fg;
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    ctx.fillText(text, L.plotR + 8, y);
  }

  drawCrosshair(s, L) {
    const p = this.pointer;
    if (!p || p.x < 0 || p.x >= L.plotR || p.y < PAD_TOP || p.y >= L.plotB) return;
    const { ctx } = this;
    const slot = L.lastSlot - Math.round((L.x(L.lastSlot) - p.x) / SPACING);
    const x = Math.round(L.x(slot)) + 0.5;
    const y = Math.round(p.y) + 0.5;
    ctx.strokeStyle = COLORS.cross;
    ctx.setLineDash([2, 3]);
    ctx.beginPath();
    ctx.moveTo(x, PAD_TOP);
    ctx.lineTo(x, L.plotB);
    if (p.y <= L.priceB) {
      ctx.moveTo(0, y);
      ctx.lineTo(L.plotR, y);
    }
    ctx.stroke();
    ctx.setLineDash([]);
    if (p.y <= L.priceB) {
      const price = s.lo + ((L.priceB - p.y) / (L.priceB - PAD_TOP)) * (s.hi - s.lo);
      this.axisBox(price.toFixed(this.decimals), y, COLORS.labelBg, COLORS.label, L);
    }
    const label = timeLabel(slot * this.iv, this.iv < 60000 ? 1 : 60);
    const tw = ctx.measureText(label).width + 12;
    ctx.fillStyle = COLORS.labelBg;
    ctx.fillRect(x - tw / 2, L.plotB + 2, tw, TIME_H - 4);
    ctx.fillStyle = COLORS.label;
    ctx.textAlign = "center";
    ctx.fillText(label, x, L.plotB + TIME_H / 2 + 1);
  }
}
