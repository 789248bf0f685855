//! The book decoders: any bytes read as binary book records, or as a JSON `book` /
//! `book_update`, give messages or an error that says what is wrong; every message
//! decoded encodes again to the same one, and applying it to a book never panics and
//! leaves the book unchanged when refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickstream::book::json::{self, Head};
use tickstream::book::{Book, Levels, Spec};
use tickstream::protocol::binary::{self, book::BookHead, AnyRecord};

fuzz_target!(|data: &[u8]| {
    match binary::decode_any(data) {
        Ok(records) => {
            for r in records {
                let AnyRecord::Book(b) = r else { continue };
                let head = BookHead {
                    symbol: b.symbol,
                    epoch: b.epoch,
                    spec: b.spec,
                    seq: b.seq,
                    prev_seq: b.prev_seq,
                    ts: b.ts,
                    checksum: b.checksum,
                };
                let mut again = Vec::new();
                binary::book::write(&head, &b.bids, &b.asks, &mut again).expect("re-encodes");
                let back = binary::decode_any(&again).expect("and decodes");
                assert_eq!(back, vec![AnyRecord::Book(b)]);
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let spec = Spec::new(2);
    match json::parse(data, |_| Some(spec), 1000) {
        Ok(msg) => {
            let head = Head {
                symbol: &msg.symbol,
                epoch: &msg.epoch,
                seq: msg.seq,
                ts: msg.ts,
                spec,
            };
            let mut text = Vec::new();
            let sum = msg.checksum.unwrap_or(0);
            json::write(&mut text, &head, msg.prev_seq, &msg.bids, &msg.asks, sum);
            let back = json::parse(&text, |_| Some(spec), 1000).expect("written, it reads back");
            assert_eq!(back, tickstream::book::BookMsg { checksum: Some(sum), ..msg.clone() });
            let mut book = Book {
                epoch: msg.epoch.clone(),
                seq: msg.prev_seq.unwrap_or(0),
                ts: 0,
                levels: Levels::default(),
            };
            let before = book.clone();
            if book.apply(&msg, 1000).is_err() {
                assert_eq!(book, before, "a refused message changes nothing");
            }
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
