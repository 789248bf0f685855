// A TCP proxy in front of a tickstream node for the browser tests: plain HTTP passes
// through as it is; on a WebSocket it reads the frames both ways (to count what the
// node sends, and to see who closes), and can add a message to what the node sends —
// at a frame boundary, never inside a fragmented message — or close the connection as
// the node would.
"use strict";

const net = require("node:net");

/** Splits a byte stream into WebSocket frames. */
class Frames {
  constructor() {
    this.buf = Buffer.alloc(0);
  }

  /** The whole frames `d` completes: {raw, fin, op, payload} (payload unmasked). */
  push(d) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    const out = [];
    for (;;) {
      const b = this.buf;
      if (b.length < 2) break;
      let len = b[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (b.length < 4) break;
        len = b.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (b.length < 10) break;
        len = Number(b.readBigUInt64BE(2));
        off = 10;
      }
      const masked = (b[1] & 0x80) !== 0;
      const key = masked ? b.subarray(off, off + 4) : null;
      if (masked) off += 4;
      if (b.length < off + len) break;
      const payload = Buffer.from(b.subarray(off, off + len));
      if (key) for (let i = 0; i < payload.length; i++) payload[i] ^= key[i % 4];
      out.push({ raw: b.subarray(0, off + len), fin: (b[0] & 0x80) !== 0, op: b[0] & 0x0f, payload });
      this.buf = b.subarray(off + len);
    }
    return out;
  }
}

/** An unmasked frame (server to client) of opcode `op`. */
function frame(op, payload) {
  const n = payload.length;
  const head = n < 126 ? Buffer.from([0x80 | op, n])
    : n < 65536 ? Buffer.from([0x80 | op, 126, n >> 8, n & 0xff])
      : (() => { const h = Buffer.alloc(10); h[0] = 0x80 | op; h[1] = 127; h.writeBigUInt64BE(BigInt(n), 2); return h; })();
  return Buffer.concat([head, payload]);
}

/** One WebSocket through the proxy. */
class Conn {
  constructor(id, client, upstream) {
    this.id = id;
    this.client = client;
    this.upstream = upstream;
    this.openedAt = Date.now();
    this.closedAt = null;
    this.closedBy = null; // "page" (its close frame came first), "node" or "proxy"
    this.closeCode = null;
    this.inMessage = false; // inside a fragmented message from the node
    this.queued = [];
    this.counts = new Map(); // "type", "type interval" or "book… SYMBOL" -> messages from the node
    this.firstAt = new Map(); // the same -> when the first arrived
  }

  get open() { return this.closedAt === null; }

  count(key) { return this.counts.get(key) || 0; }

  /** Counts the messages of a text frame from the node. */
  saw(payload) {
    let msgs;
    try {
      msgs = JSON.parse(payload.toString("utf8"));
    } catch (_) {
      return;
    }
    for (const m of Array.isArray(msgs) ? msgs : [msgs]) {
      const book = m.type === "book" || m.type === "book_update";
      const keys = m.interval ? [m.type, `${m.type} ${m.interval}`] : book ? [m.type, `${m.type} ${m.symbol}`] : [m.type];
      for (const k of keys) {
        this.counts.set(k, this.count(k) + 1);
        if (!this.firstAt.has(k)) this.firstAt.set(k, Date.now());
      }
    }
  }

  /** Adds `msgs` (a JSON array) to what the node sends, at the next frame boundary. */
  inject(msgs) {
    const f = frame(0x1, Buffer.from(JSON.stringify(msgs)));
    if (this.inMessage) this.queued.push(f);
    else this.client.write(f);
  }

  /** Closes as the node would: a close frame with `code`, then the end of both sides. */
  close(code, reason) {
    if (!this.open) return;
    this.closedBy = "proxy";
    this.closeCode = code;
    this.closedAt = Date.now();
    const p = Buffer.alloc(2 + Buffer.byteLength(reason));
    p.writeUInt16BE(code, 0);
    p.write(reason, 2);
    this.client.end(frame(0x8, p));
    this.upstream.destroy();
  }

  fromNode(f) {
    this.client.write(f.raw);
    if (f.op === 0x1 && f.fin) this.saw(f.payload);
    if (f.op <= 0x2) this.inMessage = !f.fin;
    if (!this.inMessage) while (this.queued.length) this.client.write(this.queued.shift());
    if (f.op === 0x8) this.ended("node", f.payload);
  }

  fromPage(f) {
    if (f.op === 0x8) this.ended("page", f.payload);
  }

  ended(by, payload) {
    if (!this.open) return;
    this.closedBy = by;
    this.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : null;
    this.closedAt = Date.now();
  }
}

/** Starts the proxy on a free loopback port in front of `target` ("http://host:port/"). */
function startProxy(target) {
  const { hostname, port } = new URL(target);
  const conns = [];
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), hostname);
    let head = Buffer.alloc(0);
    let conn = null;
    const toNode = new Frames();
    const toPage = new Frames();
    client.on("data", (d) => {
      upstream.write(d);
      if (conn) for (const f of toNode.push(d)) conn.fromPage(f);
    });
    upstream.on("data", (d) => {
      if (conn) {
        for (const f of toPage.push(d)) conn.fromNode(f);
        return;
      }
      if (head === null) {
        client.write(d); // plain HTTP after its first answer
        return;
      }
      head = Buffer.concat([head, d]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      client.write(head.subarray(0, end + 4));
      const rest = head.subarray(end + 4);
      if (/^HTTP\/1\.1 101/.test(head.toString("latin1", 0, 16))) {
        conn = new Conn(conns.length + 1, client, upstream);
        conns.push(conn);
        for (const f of toPage.push(rest)) conn.fromNode(f);
      } else if (rest.length) {
        client.write(rest);
      }
      head = null;
    });
    const done = () => {
      if (conn && conn.open) conn.ended(conn.closedBy || "node", Buffer.alloc(0));
      client.destroy();
      upstream.destroy();
    };
    client.on("close", done);
    upstream.on("close", done);
    client.on("error", () => {});
    upstream.on("error", () => {});
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve({
      port: server.address().port,
      conns,
      /** The WebSockets still open. */
      open: () => conns.filter((c) => c.open),
      close: () => server.close(),
    }));
  });
}

module.exports = { startProxy };
