//! The client command parser: any bytes give a command or an error with a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickstream::protocol::parse_command;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    if let Err(e) = parse_command(&mut buf) {
        assert!(!e.message.is_empty(), "an error says what is wrong");
    }
});
