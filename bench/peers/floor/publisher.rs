//! One publisher connection (`GET /v1/publish`): each text frame holds one tick object
//! or a JSON array of them; each tick is encoded once and handed to the hub, and each
//! frame is answered with `[{"type":"published","accepted":N,"refused":M}]`.
//!
//! A tick object is any JSON object with a string `symbol` and a `type` that is absent
//! or `"tick"`; nothing else of it is checked. One that says `"type":"tick"` is forwarded
//! byte for byte as the publisher wrote it; one without `type` is written again
//! compactly with `"type":"tick"` first.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::hub::{Hub, Stats};
use crate::Ws;

/// The fields of a tick the floor reads; the others are skipped unread.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    symbol: Cow<'a, str>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
}

/// Serves one publisher until it goes away.
pub async fn serve(hub: Arc<Hub>, ws: Ws) {
    Stats::add(&hub.stats.publishers, 1);
    let mut ws = FragmentCollector::new(ws);
    let welcome = json!([{"type": "welcome", "node": "floor", "role": "publisher"}]);
    if send(&mut ws, &welcome).await.is_err() {
        return;
    }
    let mut ticks: Vec<(String, Bytes)> = Vec::with_capacity(512);
    loop {
        let reply = {
            let frame = match ws.read_frame().await {
                Ok(f) => f,
                Err(_) => return,
            };
            match frame.opcode {
                OpCode::Close => return,
                OpCode::Text => {
                    Stats::add(&hub.stats.frames_in, 1);
                    match read_ticks(&frame.payload, &mut ticks) {
                        Ok(refused) => {
                            let accepted = ticks.len() as u64;
                            hub.fan_out(&ticks);
                            ticks.clear();
                            Stats::add(&hub.stats.ticks_in, accepted);
                            Stats::add(&hub.stats.refused, refused);
                            json!([{"type": "published", "accepted": accepted, "refused": refused}])
                        }
                        Err(why) => bad_request(why),
                    }
                }
                OpCode::Binary => {
                    bad_request("binary frames are not accepted; send ticks as JSON text")
                }
                _ => continue,
            }
        };
        if send(&mut ws, &reply).await.is_err() {
            return;
        }
    }
}

fn bad_request(why: &str) -> Value {
    json!([
        {"type": "error", "code": "bad_request", "message": why},
        {"type": "published", "accepted": 0, "refused": 0},
    ])
}

async fn send(
    ws: &mut FragmentCollector<crate::TokioUpgraded>,
    msg: &Value,
) -> Result<(), fastwebsockets::WebSocketError> {
    let body = msg.to_string().into_bytes();
    ws.write_frame(Frame::text(Payload::Owned(body))).await
}

/// Appends the frame's ticks, each with its encoded bytes, to `out`; returns how many
/// items were not tick objects, or why the frame is not a JSON value at all.
fn read_ticks(frame: &[u8], out: &mut Vec<(String, Bytes)>) -> Result<u64, &'static str> {
    let items = split_items(frame).ok_or("the frame is not JSON")?;
    let mut refused = 0;
    for item in items {
        match encode(item) {
            Some(t) => out.push(t),
            None => refused += 1,
        }
    }
    Ok(refused)
}

/// One tick object's symbol and the bytes subscribers get, or None when it is not one.
fn encode(item: &[u8]) -> Option<(String, Bytes)> {
    if item.first() != Some(&b'{') {
        return None;
    }
    let head: Head = serde_json::from_slice(item).ok()?;
    let symbol = head.symbol.into_owned();
    match head.kind.as_deref() {
        Some("tick") => Some((symbol, Bytes::copy_from_slice(item))),
        Some(_) => None,
        None => {
            let fields: Map<String, Value> = serde_json::from_slice(item).ok()?;
            let mut buf = Vec::with_capacity(item.len() + 16);
            buf.extend_from_slice(br#"{"type":"tick""#);
            for (k, v) in &fields {
                buf.push(b',');
                serde_json::to_writer(&mut buf, k).ok()?;
                buf.push(b':');
                serde_json::to_writer(&mut buf, v).ok()?;
            }
            buf.push(b'}');
            Some((symbol, Bytes::from(buf)))
        }
    }
}

/// The items of a frame without parsing them: the elements of a top-level JSON array,
/// or the whole frame when it is not an array. None when brackets or quotes do not
/// balance. Each item is checked where it is decoded.
fn split_items(frame: &[u8]) -> Option<Vec<&[u8]>> {
    let whole = frame.trim_ascii();
    let Some(inner) = whole.strip_prefix(b"[") else {
        return Some(vec![whole]);
    };
    let inner = inner.strip_suffix(b"]")?;
    if inner.trim_ascii().is_empty() {
        return Some(Vec::new());
    }
    let mut items = Vec::new();
    let (mut depth, mut in_string, mut escaped, mut start) = (0u32, false, false, 0);
    for (i, &b) in inner.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            b',' if depth == 0 => {
                items.push(inner[start..i].trim_ascii());
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_string || depth != 0 {
        return None;
    }
    items.push(inner[start..].trim_ascii());
    Some(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_arrays_at_top_level_commas_only() {
        let f = br#" [ {"symbol":"A,B","x":[1,2]} , {"symbol":"C\"]"} ] "#;
        let items = split_items(f).unwrap();
        assert_eq!(
            items,
            vec![
                &br#"{"symbol":"A,B","x":[1,2]}"#[..],
                br#"{"symbol":"C\"]"}"#
            ]
        );
        assert_eq!(split_items(b"[]").unwrap().len(), 0);
        assert_eq!(split_items(br#"{"symbol":"A"}"#).unwrap().len(), 1);
        assert!(split_items(br#"[{"symbol":"A"}"#).is_none());
        assert!(split_items(br#"[{"symbol":"A}]"#).is_none());
    }

    #[test]
    fn forwards_ticks_as_is_and_adds_the_type_where_missing() {
        let typed = br#"{"type":"tick", "symbol":"AAPL","seq":1}"#;
        let (s, b) = encode(typed).unwrap();
        assert_eq!((s.as_str(), &b[..]), ("AAPL", &typed[..]));
        let (_, b) = encode(br#"{ "symbol" : "AAPL", "seq": 2, "bid": 1.25 }"#).unwrap();
        assert_eq!(
            &b[..],
            br#"{"type":"tick","bid":1.25,"seq":2,"symbol":"AAPL"}"#
        );
        assert!(encode(br#"{"type":"snapshot","symbol":"AAPL"}"#).is_none());
        assert!(encode(br#"{"seq":1}"#).is_none());
        assert!(encode(br#"["AAPL"]"#).is_none());
        assert!(encode(br#"{"symbol":"AAPL"} x"#).is_none());
    }
}
