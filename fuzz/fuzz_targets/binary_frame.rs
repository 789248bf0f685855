//! The binary codec's decoder: any bytes give records or an error that says where and
//! what; every record decoded holds a symbol of the grammar and encodes again to a
//! record of the same fields; the Rust client's decoder agrees.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickstream::client::message::for_each_record;
use tickstream::client::Names;
use tickstream::protocol::binary;
use tickstream::tick::valid_symbol;

fuzz_target!(|data: &[u8]| {
    let whole = binary::decode(data);
    match &whole {
        Ok(records) => {
            assert!(!data.is_empty());
            for r in records {
                assert!(valid_symbol(r.symbol));
                let again = binary::encode(&r.tick(), r.kind).expect("a decoded tick encodes");
                let back = binary::decode(&again).expect("and decodes again");
                assert_eq!(back.len(), 1);
                assert_eq!((back[0].kind, back[0].symbol, back[0].epoch), (r.kind, r.symbol, r.epoch));
                assert_eq!((back[0].seq, back[0].ts, back[0].volume), (r.seq, r.ts, r.volume));
                assert_eq!(back[0].bid.to_bits(), r.bid.to_bits());
                assert_eq!(back[0].src_ts, r.src_ts);
            }
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an error says what is wrong"),
    }
    let client = for_each_record(data, &mut Names::default(), |_| {});
    assert_eq!(client.is_ok(), whole.is_ok());
});
