//! One subscriber connection (`GET /v1/ws`): a reader that applies the client's commands
//! and a writer that sends everything queued as one frame holding a JSON array.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, WebSocketWrite};
use serde::Deserialize;
use serde_json::json;
use tokio::io::WriteHalf;
use tokio::sync::mpsc;

use crate::hub::{Hub, Outbox, Stats};
use crate::{Opts, Ws};

/// How long a closing connection's writer may take to send what is left.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A client command; fields the floor does not use (`snapshot`, `resume`) are ignored.
#[derive(Deserialize)]
struct Cmd {
    op: String,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    symbols: Vec<String>,
}

/// Serves one subscriber until it goes away, then removes its subscriptions.
pub async fn serve(hub: Arc<Hub>, opts: Arc<Opts>, ws: Ws) {
    let session = hub
        .stats
        .subscribers
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = Arc::new(Outbox::new(opts.queue));
    out.push_reply(reply(json!({
        "type": "welcome",
        "node": "floor",
        "session": format!("{session:x}"),
        "heartbeat_ms": opts.heartbeat.as_millis() as u64,
        "encoding": "json",
    })));

    let (read, write) = ws.split(tokio::io::split);
    // Frames the protocol obliges the reader to answer (Pong, the Close echo) go to the
    // writer, which owns the write half.
    let (ctrl_tx, ctrl_rx) = mpsc::channel::<(OpCode, Vec<u8>)>(16);
    let writer = tokio::spawn(write_loop(
        write,
        out.clone(),
        ctrl_rx,
        hub.clone(),
        opts.clone(),
    ));

    let mut read = FragmentCollectorRead::new(read);
    let mut held: HashSet<String> = HashSet::new();
    loop {
        let mut obligated = |f: Frame<'_>| {
            let answer = (f.opcode, f.payload.to_vec());
            let tx = ctrl_tx.clone();
            async move {
                let _ = tx.send(answer).await;
                Ok::<(), std::io::Error>(())
            }
        };
        let frame = match read.read_frame(&mut obligated).await {
            Ok(f) => f,
            Err(_) => break,
        };
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text => command(&hub, &out, &mut held, &frame.payload),
            OpCode::Binary => out.push_reply(error(None, "bad_request", "commands are JSON text")),
            _ => {}
        }
    }
    for symbol in &held {
        hub.unsubscribe(symbol, &out);
    }
    // Nothing more is queued now: let the writer send what is left and the Close echo.
    drop(ctrl_tx);
    let mut writer = writer;
    if tokio::time::timeout(CLOSE_WAIT, &mut writer).await.is_err() {
        writer.abort();
    }
}

fn command(hub: &Hub, out: &Arc<Outbox>, held: &mut HashSet<String>, text: &[u8]) {
    let cmd: Cmd = match serde_json::from_slice(text) {
        Ok(c) => c,
        Err(e) => return out.push_reply(error(None, "bad_request", &e.to_string())),
    };
    let id = cmd.id;
    let msg = match cmd.op.as_str() {
        "subscribe" => {
            for s in &cmd.symbols {
                if held.insert(s.clone()) {
                    hub.subscribe(s, out);
                }
            }
            json!({"type": "subscribed", "id": id, "symbols": cmd.symbols})
        }
        "unsubscribe" => {
            for s in &cmd.symbols {
                if held.remove(s) {
                    hub.unsubscribe(s, out);
                }
            }
            json!({"type": "unsubscribed", "id": id, "symbols": cmd.symbols})
        }
        "list" => {
            let mut symbols: Vec<&String> = held.iter().collect();
            symbols.sort();
            json!({"type": "subscriptions", "id": id, "symbols": symbols})
        }
        "ping" => json!({"type": "pong", "id": id, "ts": now_ns()}),
        other => {
            return out.push_reply(error(id, "unknown_op", &format!("unknown op {other:?}")));
        }
    };
    out.push_reply(reply(msg));
}

fn reply(mut msg: serde_json::Value) -> Bytes {
    // An absent id is left out rather than sent as null.
    if let Some(obj) = msg.as_object_mut() {
        if obj.get("id").is_some_and(|v| v.is_null()) {
            obj.remove("id");
        }
    }
    Bytes::from(msg.to_string())
}

fn error(id: Option<u64>, code: &str, message: &str) -> Bytes {
    reply(json!({"type": "error", "id": id, "code": code, "message": message}))
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

async fn write_loop(
    mut write: WebSocketWrite<WriteHalf<crate::TokioUpgraded>>,
    out: Arc<Outbox>,
    mut ctrl: mpsc::Receiver<(OpCode, Vec<u8>)>,
    hub: Arc<Hub>,
    opts: Arc<Opts>,
) {
    let mut batch: Vec<Bytes> = Vec::with_capacity(64);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut ping = (!opts.heartbeat.is_zero()).then(|| {
        let every = opts.heartbeat;
        tokio::time::interval_at(tokio::time::Instant::now() + every, every)
    });
    loop {
        out.take(&mut batch, opts.max_batch);
        if !batch.is_empty() {
            buf.clear();
            buf.push(b'[');
            for (i, m) in batch.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                buf.extend_from_slice(m);
            }
            buf.push(b']');
            batch.clear();
            if write
                .write_frame(Frame::text(Payload::Borrowed(&buf)))
                .await
                .is_err()
            {
                return;
            }
            Stats::add(&hub.stats.frames_out, 1);
            Stats::add(&hub.stats.bytes_out, buf.len() as u64);
            continue;
        }
        let frame = tokio::select! {
            _ = out.ready() => continue,
            c = ctrl.recv() => match c {
                Some((OpCode::Close, p)) => {
                    let _ = write.write_frame(Frame::new(true, OpCode::Close, None, Payload::Owned(p))).await;
                    return;
                }
                Some((op, p)) => Frame::new(true, op, None, Payload::Owned(p)),
                None => return,
            },
            _ = tick(&mut ping) => Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[])),
        };
        if write.write_frame(frame).await.is_err() {
            return;
        }
    }
}

async fn tick(every: &mut Option<tokio::time::Interval>) {
    match every {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}
