//! Session ids are random labels: distinct, 128 bits of hex, and unrelated to each
//! other, so one client cannot guess another's.

mod common;

use common::{settings, start, Client};

#[tokio::test]
async fn session_ids_are_random_128_bit_hex_and_unrelated() {
    let run = start(settings()).await;
    let mut ids = Vec::new();
    for _ in 0..12 {
        let (_c, w) = Client::ready(run.addr).await;
        let id = w["session"].as_str().expect("a session id").to_owned();
        assert_eq!(id.len(), 32, "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "lowercase hex: {id}"
        );
        ids.push(u128::from_str_radix(&id, 16).unwrap());
    }
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            assert_ne!(a, b, "ids are distinct");
            // A counter, with or without a fixed mask, changes few low bits between
            // connections; independent random ids differ in about 64 of 128 bits (fewer
            // than 24 happens with probability below 1e-12 per pair).
            let differing = (a ^ b).count_ones();
            assert!(
                differing >= 24,
                "{a:032x} and {b:032x} differ in {differing} bits"
            );
            assert!(a.abs_diff(*b) > 1 << 64, "{a:032x} and {b:032x} are close");
        }
    }
    run.shutdown().await;
}
