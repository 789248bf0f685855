//! Frame reading and reassembly of a client's byte stream, as the node reads it: the
//! input's first four bytes set the limits (largest message, most fragments, most empty
//! fragments) and how the stream is cut into reads; the rest is the stream, handed to
//! `FrameReader` + `Reassembler` in pieces of those sizes, twice: frame by frame, and
//! with the held middle fragments taken in runs (`FrameReader::take_fragments`) as the
//! endpoints read them. Both give the same messages and the same close. Every message
//! is within the limits and every text is valid UTF-8; a stream is refused only with a
//! code of RFC 6455 (1002, 1007, 1009) or the node's policy (1008). The slowest input so
//! far (both readings) is printed whenever it grows: the work must stay linear in the
//! input.
#![no_main]

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use nix::time::{clock_gettime, ClockId};
use tickstream::protocol::CloseCode;
use tickstream::transport::frames::{
    Fragments, FrameBudget, FrameReader, Message, ReadError, Reassembler,
};
use tokio::io::{AsyncRead, ReadBuf};

/// Hands out its bytes in pieces whose sizes come from `cuts`, then EOF.
struct Pieces<'a> {
    data: &'a [u8],
    cuts: u32,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // xorshift: piece sizes from 1 byte to 4 KiB, the small ones most often.
        self.cuts ^= self.cuts << 13;
        self.cuts ^= self.cuts >> 17;
        self.cuts ^= self.cuts << 5;
        let size = 1usize << (self.cuts % 13);
        let n = (self.cuts as usize % size + 1)
            .min(self.data.len())
            .min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// The most CPU time any input took so far, µs (printed when it grows: libFuzzer's
/// own `-report_slow_units` counts whole seconds of wall time).
static SLOWEST_US: AtomicU64 = AtomicU64::new(0);

/// CPU time of this thread, µs: what an input costs, whatever else the machine runs.
fn cpu_us() -> u64 {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("a thread CPU clock");
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
}

fuzz_target!(|data: &[u8]| {
    let t0 = cpu_us();
    let by_frame = read_all(data, false);
    let in_runs = read_all(data, true);
    assert_eq!(by_frame, in_runs, "frame by frame and in runs");
    let us = cpu_us() - t0;
    if us > SLOWEST_US.fetch_max(us, Ordering::Relaxed) {
        eprintln!(
            "slowest input so far: {us} us of CPU ({} bytes)",
            data.len()
        );
    }
});

/// What a stream gave: its messages (Pings included) and the close that ended it.
type Outcome = (Vec<(u8, Vec<u8>)>, Option<u16>);

/// Reads `data` (limits, then the stream) to its end or its refusal, checking every
/// message and the refusal's code; with `runs`, middle fragments already held are taken
/// in runs.
fn read_all(data: &[u8], runs: bool) -> Outcome {
    let [a, b, c, d, stream @ ..] = data else {
        return (Vec::new(), None);
    };
    let max = 1 + usize::from(u16::from_le_bytes([*a, *b]));
    let limits = Fragments {
        most: 1 + usize::from(*c),
        empty: usize::from(*d % 8),
    };
    let mut io = Pieces {
        data: stream,
        cuts: 0x9e37_79b9 ^ u32::from(*c) << 8 ^ u32::from(*d),
    };
    let mut reader = FrameReader::new(max);
    let mut whole = Reassembler::new(max, limits);
    let mut budget = FrameBudget::new(u32::MAX, u32::MAX, 1);
    let mut got = Vec::new();
    let mut frames = 0usize;
    loop {
        if runs {
            match reader.take_fragments(&mut whole, &mut budget) {
                Ok(n) => frames += n,
                Err((code, _)) => return (got, Some(check_code(code))),
            }
        }
        // The stream never waits: one poll reads the next frame or ends.
        let read = pin!(reader.read(&mut io));
        let Poll::Ready(read) = read.poll(&mut Context::from_waker(Waker::noop())) else {
            panic!("a stream that never waits made the reader wait");
        };
        let frame = match read {
            Ok(frame) => frame,
            Err(ReadError::Gone) => return (got, None),
            Err(ReadError::Refused((code, _))) => return (got, Some(check_code(code))),
        };
        let data = matches!(frame.opcode as u8, 0..=2);
        frames += usize::from(data);
        match whole.push(frame) {
            Ok(None) => assert!(frames <= limits.most),
            Ok(Some(Message::Text(p))) => {
                assert!(p.len() <= max && frames <= limits.most);
                assert!(std::str::from_utf8(&p).is_ok(), "text is UTF-8");
                got.push((1, p.to_vec()));
                frames = 0;
            }
            Ok(Some(Message::Binary(p))) => {
                assert!(p.len() <= max && frames <= limits.most);
                got.push((2, p.to_vec()));
                frames = 0;
            }
            Ok(Some(Message::Ping(p))) => {
                assert!(p.len() <= 125);
                got.push((9, p.to_vec()));
            }
            Ok(Some(Message::Pong | Message::Close)) => {}
            Err((code, _)) => return (got, Some(check_code(code))),
        }
    }
}

/// A refusal closes with 1002 (protocol error), 1007 (not UTF-8), 1008 (a limit of the
/// node) or 1009 (too big), nothing else: the code, checked.
fn check_code(code: CloseCode) -> u16 {
    assert!(
        matches!(code.code(), 1002 | 1007 | 1008 | 1009),
        "refused with {}",
        code.code()
    );
    code.code()
}
