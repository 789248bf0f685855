//! The publisher endpoint's tick parser: the input, split at 0xFF bytes, is the messages
//! of one publisher connection; each is answered with a JSON array of errors ending in
//! `published`, whose counts add up to the ticks the message held.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tickstream::bus::LocalBus;
use tickstream::config::Settings;
use tickstream::hub::Hub;
use tickstream::node::Node;
use tickstream::feed::ingest::answer_frames;

static SETTINGS: OnceLock<Settings> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let settings = SETTINGS.get_or_init(Settings::default).clone();
    let hub = Arc::new(Hub::new(["AAPL".into(), "BTC-USD".into()], 16));
    let bus = Arc::new(LocalBus::new(hub.clone()));
    let node = Node::new(settings, hub, bus, None);
    let frames: Vec<&[u8]> = data.split(|b| *b == 0xFF).collect();
    let replies = answer_frames(&node.hub, &*node.bus, &node.publish, frames.iter().copied());
    assert_eq!(replies.len(), frames.len());
    for reply in replies {
        let msgs: Vec<Value> = serde_json::from_slice(&reply).expect("a reply is JSON");
        let last = msgs.last().expect("a reply ends with published");
        assert_eq!(last["type"], "published");
        let refused = last["refused"].as_u64().unwrap() as usize;
        // A frame that is not JSON has one error and counts nothing.
        assert!(msgs.len() - 1 == refused || (refused == 0 && msgs.len() == 2));
        for m in &msgs[..msgs.len() - 1] {
            assert_eq!(m["type"], "error");
            assert!(!m["message"].as_str().unwrap().is_empty());
        }
    }
});
