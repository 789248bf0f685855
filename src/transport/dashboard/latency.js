// Latency as the page sees it: receive time minus a tick's `ts`, in ms. Kept in
// log-scaled histograms (1 µs · 1.04^i, 4 % apart), so a percentile costs a walk over
// 512 counters whatever the number of ticks.

const MIN_MS = 0.001;
const GROWTH = Math.log(1.04);
const BUCKETS = 512;

const bucketOf = (ms) => {
  const b = ms <= MIN_MS ? 0 : Math.ceil(Math.log(ms / MIN_MS) / GROWTH);
  return b >= BUCKETS ? BUCKETS - 1 : b;
};
const boundOf = (b) => MIN_MS * Math.exp(b * GROWTH);

/** The `q` quantile (the upper bound of its bucket) of `counts` holding `n` samples. */
function quantile(counts, n, q) {
  const rank = Math.ceil(q * n);
  let seen = 0;
  for (let b = 0; b < BUCKETS; b++) {
    seen += counts[b];
    if (seen >= rank) return boundOf(b);
  }
  return boundOf(BUCKETS - 1);
}

/** Samples since it was last cleared, with their exact maximum. */
export class Histogram {
  constructor() {
    this.counts = new Uint32Array(BUCKETS);
    this.n = 0;
    this.max = 0;
  }

  add(ms) {
    this.counts[bucketOf(ms)] += 1;
    this.n += 1;
    if (ms > this.max) this.max = ms;
  }

  clear() {
    this.counts.fill(0);
    this.n = 0;
    this.max = 0;
  }

  /** `{p50, p99, max}` in ms, each at most the next (a bucket's bound may pass the max). */
  summary() {
    if (!this.n) return null;
    const max = Math.max(0, this.max);
    const p99 = Math.min(quantile(this.counts, this.n, 0.99), max);
    const p50 = Math.min(quantile(this.counts, this.n, 0.5), p99);
    return { p50, p99, max };
  }
}

/** The last `seconds` seconds of samples, in one histogram per second. */
export class Window {
  constructor(seconds) {
    this.seconds = seconds;
    this.hist = Array.from({ length: seconds }, () => new Uint32Array(BUCKETS));
    this.sec = new Float64Array(seconds).fill(-1);
    this.sum = new Uint32Array(BUCKETS);
  }

  add(ms, now) {
    const sec = Math.floor(now / 1000);
    const i = sec % this.seconds;
    if (this.sec[i] !== sec) {
      this.hist[i].fill(0);
      this.sec[i] = sec;
    }
    this.hist[i][bucketOf(ms)] += 1;
  }

  /** `{p50, p99}` over the window ending at `now`, or null without samples. */
  percentiles(now) {
    const sec = Math.floor(now / 1000);
    this.sum.fill(0);
    let n = 0;
    for (let i = 0; i < this.seconds; i++) {
      if (this.sec[i] <= sec - this.seconds) continue;
      const h = this.hist[i];
      for (let b = 0; b < BUCKETS; b++) {
        if (h[b]) {
          this.sum[b] += h[b];
          n += h[b];
        }
      }
    }
    if (!n) return null;
    return { p50: quantile(this.sum, n, 0.5), p99: quantile(this.sum, n, 0.99) };
  }
}

/** 0.42 ms, 12.3 ms, 250 ms, 12 s; "–" for nothing. */
export function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 100) return `${ms.toFixed(1)} ms`;
  if (ms < 10000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(0)} s`;
}
