//! The recording-file parser: any bytes give ticks, then the end or an error naming a
//! line; never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tickstream::feed::recording::{Reader, RecordingError};

fuzz_target!(|data: &[u8]| {
    let lines = Box::new(std::io::Cursor::new(data.to_vec()));
    let mut reader = Reader::from_lines(Path::new("fuzz.ndjson"), lines);
    let mut last_line = 0;
    loop {
        match reader.next_tick() {
            Ok(None) => break,
            Ok(Some((line, tick))) => {
                assert!(line > last_line, "line numbers rise");
                last_line = line;
                assert!(tickstream::tick::valid_symbol(&tick.symbol));
            }
            Err(RecordingError::Line { line, message, .. }) => {
                assert!(line > last_line && !message.is_empty());
                break;
            }
            Err(e) => panic!("in-memory input gave an I/O error: {e}"),
        }
    }
});
