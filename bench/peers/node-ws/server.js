'use strict';
// A reference server for the benchmarks: Redis Pub/Sub fan-out to WebSocket clients,
// written the way the common Node.js tutorials do it (ws + ioredis), speaking
// tickstream's protocol (PROTOCOL.md) so the same load can be run against it.
//
//   node server.js --listen 127.0.0.1:9200 --redis redis://127.0.0.1:6379 [--prefix tickstream:]
//
// GET /v1/ws: {"op":"subscribe"|"unsubscribe"|"list"|"ping", "id":N, "symbols":[...]}.
// The server subscribes the Redis channel <prefix>tick:{SYMBOL} while at least one
// local client wants SYMBOL and sends each message published there to each of those
// clients as its own frame, [payload]. GET /healthz answers "ok".

const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');
const Redis = require('ioredis');

function parseArgs(argv) {
  const opts = { listen: '127.0.0.1:9200', redis: 'redis://127.0.0.1:6379', prefix: 'tickstream:' };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    if (key === '--help' || key === '-h') {
      console.log('usage: node server.js --listen HOST:PORT --redis redis://HOST:PORT [--prefix tickstream:]');
      process.exit(0);
    }
    const name = key.replace(/^--/, '');
    if (!key.startsWith('--') || !(name in opts) || argv[i + 1] === undefined) {
      console.error(`node-ws: unknown or incomplete argument ${key}; see --help`);
      process.exit(2);
    }
    opts[name] = argv[++i];
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const colon = opts.listen.lastIndexOf(':');
const host = opts.listen.slice(0, colon);
const port = Number(opts.listen.slice(colon + 1));
const HEARTBEAT_MS = 30000;

const channelOf = (symbol) => `${opts.prefix}tick:{${symbol}}`;
const lastKeyOf = (symbol) => `${opts.prefix}last:{${symbol}}`;

// One connection for commands (GET), one in subscriber mode.
const redis = new Redis(opts.redis);
const sub = new Redis(opts.redis);
redis.on('error', (err) => console.error('node-ws: redis:', err.message));
sub.on('error', (err) => console.error('node-ws: redis subscriber:', err.message));

// channel -> Set of the clients subscribed to its symbol
const channels = new Map();
const stats = { connections: 0, redis_messages: 0, sent: 0 };

function join(ws, symbol) {
  const channel = channelOf(symbol);
  let clients = channels.get(channel);
  if (!clients) {
    clients = new Set();
    channels.set(channel, clients);
    sub.subscribe(channel).catch((err) => console.error('node-ws: subscribe:', err.message));
  }
  clients.add(ws);
}

function leave(ws, symbol) {
  const channel = channelOf(symbol);
  const clients = channels.get(channel);
  if (!clients) return;
  clients.delete(ws);
  if (clients.size === 0) {
    channels.delete(channel);
    sub.unsubscribe(channel).catch((err) => console.error('node-ws: unsubscribe:', err.message));
  }
}

sub.on('message', (channel, message) => {
  stats.redis_messages++;
  const clients = channels.get(channel);
  if (!clients) return;
  const frame = `[${message}]`;
  for (const ws of clients) {
    if (ws.readyState === WebSocket.OPEN) {
      ws.send(frame);
      stats.sent++;
    }
  }
});

function send(ws, msg) {
  if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify([msg]));
}

function reply(type, id, fields) {
  return id === undefined ? { type, ...fields } : { type, id, ...fields };
}

function sendSnapshot(ws, symbol) {
  redis
    .get(lastKeyOf(symbol))
    .then((last) => {
      if (!last || !ws.symbols.has(symbol)) return;
      send(ws, { ...JSON.parse(last), type: 'snapshot' });
    })
    .catch((err) => console.error('node-ws: snapshot:', err.message));
}

function onMessage(ws, data) {
  let msg;
  try {
    msg = JSON.parse(data);
  } catch (err) {
    send(ws, { type: 'error', code: 'bad_request', message: `not JSON: ${err.message}` });
    return;
  }
  if (msg === null || typeof msg !== 'object') {
    send(ws, { type: 'error', code: 'bad_request', message: 'a command is a JSON object' });
    return;
  }
  const symbols = Array.isArray(msg.symbols) ? msg.symbols.filter((s) => typeof s === 'string') : [];
  switch (msg.op) {
    case 'subscribe':
      for (const s of symbols) {
        if (!ws.symbols.has(s)) {
          ws.symbols.add(s);
          join(ws, s);
        }
      }
      send(ws, reply('subscribed', msg.id, { symbols }));
      if (msg.snapshot !== false) symbols.forEach((s) => sendSnapshot(ws, s));
      break;
    case 'unsubscribe':
      for (const s of symbols) {
        if (ws.symbols.delete(s)) leave(ws, s);
      }
      send(ws, reply('unsubscribed', msg.id, { symbols }));
      break;
    case 'list':
      send(ws, reply('subscriptions', msg.id, { symbols: [...ws.symbols].sort() }));
      break;
    case 'ping':
      send(ws, reply('pong', msg.id, { ts: Date.now() * 1e6 }));
      break;
    default:
      send(ws, reply('error', msg.id, { code: 'unknown_op', message: `unknown op ${JSON.stringify(msg.op)}` }));
  }
}

const server = http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('ok\n');
  } else {
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end('not found\n');
  }
});

const wss = new WebSocketServer({ server, path: '/v1/ws' });

wss.on('connection', (ws) => {
  stats.connections++;
  ws.symbols = new Set();
  ws.isAlive = true;
  ws.on('pong', () => {
    ws.isAlive = true;
  });
  ws.on('message', (data) => onMessage(ws, data));
  ws.on('close', () => {
    for (const s of ws.symbols) leave(ws, s);
    ws.symbols.clear();
  });
  ws.on('error', () => {});
  send(ws, {
    type: 'welcome',
    node: 'node-ws',
    session: stats.connections.toString(16),
    heartbeat_ms: HEARTBEAT_MS,
    encoding: 'json',
  });
});

// The usual heartbeat: ping everyone, drop whoever did not answer the previous ping.
const heartbeat = setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.isAlive) {
      ws.terminate();
      continue;
    }
    ws.isAlive = false;
    ws.ping();
  }
}, HEARTBEAT_MS);

// Listen once both Redis connections are ready: a SUBSCRIBE sent while ioredis is still
// in its connection handshake can collide with it ("Connection in subscriber mode").
const ready = (client) =>
  new Promise((resolve) => (client.status === 'ready' ? resolve() : client.once('ready', resolve)));
Promise.all([ready(redis), ready(sub)]).then(() => {
  server.listen(port, host, () => {
    const addr = server.address();
    console.error(`node-ws listening on ${addr.address}:${addr.port}`);
  });
});

function shutdown() {
  clearInterval(heartbeat);
  for (const ws of wss.clients) ws.close(1001, 'server shutting down');
  console.log(JSON.stringify(stats));
  server.close();
  Promise.allSettled([sub.quit(), redis.quit()]).finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}

process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
