//! The binary encoding of ticks and snapshots (`encoding=binary`), documented byte by
//! byte in `docs/protocol.md` §7.
//!
//! A record is one tick or snapshot: an 86-byte fixed part of little-endian integers and
//! IEEE 754 doubles, then the symbol and the epoch as length-prefixed bytes. A binary
//! frame holds one or more records back to back and nothing else (no frame header: the
//! WebSocket frame says where it ends, each record says where it ends). The first byte
//! of a record is its kind (`0x01`, `0x02`), never `{`, so a queue holding records and
//! JSON messages side by side tells them apart by their first byte ([`is_record`]).
//!
//! Prices are the same doubles the JSON numbers denote, bit for bit: no scale to agree
//! on, no rounding, and a decoded tick equals the one the feed made.
//!
//! A paced tick (`throttle_ms`) carries its `skipped` count as a u64 right after the
//! epoch, announced by bit 1 of the flags ([`with_skipped`]): an addition in the room
//! the layout keeps for later fields, which decoders that do not know it step over.
//!
//! Book records (`book` `0x03`, `book_update` `0x04`) are laid out in [`book`]; a frame
//! may hold records of both kinds, which [`decode_any`] reads.

pub mod book;

use std::sync::Arc;

use crate::tick::{valid_symbol, Kind, Tick};

/// First byte of a `tick` record.
pub const KIND_TICK: u8 = 0x01;
/// First byte of a `snapshot` record.
pub const KIND_SNAPSHOT: u8 = 0x02;
/// Bit of the flags byte set when `src_ts` is present.
pub const FLAG_SRC_TS: u8 = 0x01;
/// Bit of the flags byte set when `skipped` follows the epoch (a paced tick).
pub const FLAG_SKIPPED: u8 = 0x02;
/// Size of the fixed part of a record; the symbol starts here.
pub const FIXED_LEN: usize = 86;
/// Largest symbol or epoch a record can carry, in bytes.
pub const MAX_NAME: usize = u8::MAX as usize;

/// Offsets of the fields of the fixed part.
mod at {
    pub const KIND: usize = 0;
    pub const FLAGS: usize = 1;
    pub const LEN: usize = 2;
    pub const SYMBOL_LEN: usize = 4;
    pub const EPOCH_LEN: usize = 5;
    pub const SEQ: usize = 6;
    pub const TS: usize = 14;
    pub const BID: usize = 22;
    pub const ASK: usize = 30;
    pub const BID_SIZE: usize = 38;
    pub const ASK_SIZE: usize = 46;
    pub const LAST: usize = 54;
    pub const LAST_SIZE: usize = 62;
    pub const VOLUME: usize = 70;
    pub const SRC_TS: usize = 78;
}

/// Why a tick has no binary record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The symbol or the epoch is longer than a length byte can say.
    #[error("{field} is {len} bytes; a binary record carries at most {MAX_NAME}")]
    TooLong {
        /// `symbol` or `epoch`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The symbol is empty.
    #[error("a binary record needs a symbol")]
    NoSymbol,
}

/// Why a binary frame could not be decoded. `offset` is where, in the frame, the record
/// at fault starts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame holds no record at all.
    #[error("empty binary frame: a frame holds at least one record")]
    Empty,
    /// The frame ends inside a record.
    #[error("record at byte {offset}: truncated, needs {need} bytes, {have} left")]
    Truncated {
        /// Where the record starts.
        offset: usize,
        /// Bytes the record needs.
        need: usize,
        /// Bytes left in the frame.
        have: usize,
    },
    /// The first byte is not a known kind.
    #[error("record at byte {offset}: unknown kind 0x{kind:02x} (0x01 tick, 0x02 snapshot, 0x03 book, 0x04 book_update)")]
    UnknownKind {
        /// Where the record starts.
        offset: usize,
        /// The byte found.
        kind: u8,
    },
    /// The length field is shorter than the fixed part, symbol, epoch (and `skipped`,
    /// when the flags announce it) together.
    #[error("record at byte {offset}: length {len} is less than the {need} bytes its fields take")]
    BadLength {
        /// Where the record starts.
        offset: usize,
        /// The length field.
        len: usize,
        /// What the fixed part, symbol and epoch take.
        need: usize,
    },
    /// The symbol is not one of the symbol grammar.
    #[error("record at byte {offset}: symbol is not 1 to 32 of A-Z 0-9 . _ : / -")]
    BadSymbol {
        /// Where the record starts.
        offset: usize,
    },
    /// The epoch is not UTF-8.
    #[error("record at byte {offset}: epoch is not UTF-8")]
    BadEpoch {
        /// Where the record starts.
        offset: usize,
    },
    /// A book record's price decimals are more than a price may have.
    #[error("record at byte {offset}: {decimals} price decimals, more than 9")]
    BadDecimals {
        /// Where the record starts.
        offset: usize,
        /// The decimals byte.
        decimals: u8,
    },
}

/// Whether an encoded message is a binary record rather than a JSON object.
pub fn is_record(msg: &[u8]) -> bool {
    matches!(msg.first(), Some(&b) if b != b'{')
}

/// Appends `tick` as one record of `kind` to `out`. On error nothing is appended.
pub fn write(tick: &Tick, kind: Kind, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let symbol = tick.symbol.as_bytes();
    let epoch = tick.epoch.as_bytes();
    if symbol.is_empty() {
        return Err(EncodeError::NoSymbol);
    }
    for (field, len) in [("symbol", symbol.len()), ("epoch", epoch.len())] {
        if len > MAX_NAME {
            return Err(EncodeError::TooLong { field, len });
        }
    }
    let len = FIXED_LEN + symbol.len() + epoch.len();
    out.reserve(len);
    out.push(match kind {
        Kind::Tick => KIND_TICK,
        Kind::Snapshot => KIND_SNAPSHOT,
    });
    out.push(if tick.src_ts.is_some() {
        FLAG_SRC_TS
    } else {
        0
    });
    // At most 86 + 255 + 255 bytes: fits.
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.push(symbol.len() as u8);
    out.push(epoch.len() as u8);
    for v in [tick.seq, tick.ts] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&tick.bid.to_le_bytes());
    out.extend_from_slice(&tick.ask.to_le_bytes());
    out.extend_from_slice(&tick.bid_size.to_le_bytes());
    out.extend_from_slice(&tick.ask_size.to_le_bytes());
    out.extend_from_slice(&tick.last.to_le_bytes());
    for v in [tick.last_size, tick.volume, tick.src_ts.unwrap_or(0)] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(symbol);
    out.extend_from_slice(epoch);
    Ok(())
}

/// `tick` as one record of `kind`.
pub fn encode(tick: &Tick, kind: Kind) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(FIXED_LEN + tick.symbol.len() + tick.epoch.len());
    write(tick, kind, &mut out)?;
    Ok(out)
}

/// A copy of `record` (one record as [`write()`] makes it, ending at its epoch) carrying
/// `skipped`: bit 1 of the flags set, `len` 8 bytes longer, the count after the epoch.
pub fn with_skipped(record: &[u8], skipped: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.len() + 8);
    out.extend_from_slice(record);
    out[at::FLAGS] |= FLAG_SKIPPED;
    let len = u16::from_le_bytes([out[at::LEN], out[at::LEN + 1]]) + 8;
    out[at::LEN..at::LEN + 2].copy_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&skipped.to_le_bytes());
    out
}

/// One decoded record, borrowing its symbol and epoch from the frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Record<'a> {
    /// Tick or snapshot.
    pub kind: Kind,
    /// The symbol.
    pub symbol: &'a str,
    /// The epoch (empty when the record carries none).
    pub epoch: &'a str,
    /// Per-symbol sequence number.
    pub seq: u64,
    /// Source time, nanoseconds since the Unix epoch.
    pub ts: u64,
    /// Best bid price.
    pub bid: f64,
    /// Best ask price.
    pub ask: f64,
    /// Size at the best bid.
    pub bid_size: u64,
    /// Size at the best ask.
    pub ask_size: u64,
    /// Last trade price.
    pub last: f64,
    /// Last trade size.
    pub last_size: u64,
    /// Cumulative traded volume.
    pub volume: u64,
    /// Original source time of a replayed tick.
    pub src_ts: Option<u64>,
    /// On a paced tick: the ticks of its symbol folded into it since the previous one.
    pub skipped: Option<u64>,
}

impl Record<'_> {
    /// The tick this record holds, with new symbol and epoch strings.
    pub fn tick(&self) -> Tick {
        self.to_tick(|s| Arc::from(s))
    }

    /// The tick this record holds; `name` makes the shared symbol and epoch strings
    /// (a client's intern table, or `Arc::from`).
    pub fn to_tick(&self, mut name: impl FnMut(&str) -> Arc<str>) -> Tick {
        Tick {
            symbol: name(self.symbol),
            epoch: name(self.epoch),
            seq: self.seq,
            ts: self.ts,
            bid: self.bid,
            ask: self.ask,
            bid_size: self.bid_size,
            ask_size: self.ask_size,
            last: self.last,
            last_size: self.last_size,
            volume: self.volume,
            src_ts: self.src_ts,
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn f64_at(b: &[u8], at: usize) -> f64 {
    f64::from_bits(u64_at(b, at))
}

/// The kind, `seq` and `ts` of an encoded record, read from their fixed offsets without
/// decoding the rest; `None` for what is not a whole fixed part of a known kind. For
/// readers that need only these (latency, sequence checks).
pub fn peek(rec: &[u8]) -> Option<(Kind, u64, u64)> {
    if rec.len() < FIXED_LEN {
        return None;
    }
    let kind = match rec[at::KIND] {
        KIND_TICK => Kind::Tick,
        KIND_SNAPSHOT => Kind::Snapshot,
        _ => return None,
    };
    Some((kind, u64_at(rec, at::SEQ), u64_at(rec, at::TS)))
}

/// Decodes the record that starts at `offset` of `frame`; returns it with the offset of
/// the next one.
fn decode_at(frame: &[u8], offset: usize) -> Result<(Record<'_>, usize), DecodeError> {
    let b = &frame[offset..];
    let truncated = |need: usize| DecodeError::Truncated {
        offset,
        need,
        have: b.len(),
    };
    let kind = match b[at::KIND] {
        KIND_TICK => Kind::Tick,
        KIND_SNAPSHOT => Kind::Snapshot,
        kind => return Err(DecodeError::UnknownKind { offset, kind }),
    };
    if b.len() < FIXED_LEN {
        return Err(truncated(FIXED_LEN));
    }
    let len = usize::from(u16::from_le_bytes([b[at::LEN], b[at::LEN + 1]]));
    let symbol_len = usize::from(b[at::SYMBOL_LEN]);
    let epoch_len = usize::from(b[at::EPOCH_LEN]);
    let names = FIXED_LEN + symbol_len + epoch_len;
    let has_skipped = b[at::FLAGS] & FLAG_SKIPPED != 0;
    let need = names + if has_skipped { 8 } else { 0 };
    if len < need {
        return Err(DecodeError::BadLength { offset, len, need });
    }
    if b.len() < len {
        return Err(truncated(len));
    }
    let symbol = std::str::from_utf8(&b[FIXED_LEN..FIXED_LEN + symbol_len])
        .ok()
        .filter(|s| valid_symbol(s))
        .ok_or(DecodeError::BadSymbol { offset })?;
    let epoch = std::str::from_utf8(&b[FIXED_LEN + symbol_len..names])
        .map_err(|_| DecodeError::BadEpoch { offset })?;
    let record = Record {
        kind,
        symbol,
        epoch,
        seq: u64_at(b, at::SEQ),
        ts: u64_at(b, at::TS),
        bid: f64_at(b, at::BID),
        ask: f64_at(b, at::ASK),
        bid_size: u64_at(b, at::BID_SIZE),
        ask_size: u64_at(b, at::ASK_SIZE),
        last: f64_at(b, at::LAST),
        last_size: u64_at(b, at::LAST_SIZE),
        volume: u64_at(b, at::VOLUME),
        src_ts: (b[at::FLAGS] & FLAG_SRC_TS != 0).then(|| u64_at(b, at::SRC_TS)),
        skipped: has_skipped.then(|| u64_at(b, names)),
    };
    Ok((record, offset + len))
}

/// The records of a binary frame, in order. After the first error it yields nothing
/// more: what follows a bad record cannot be found.
pub struct Records<'a> {
    frame: &'a [u8],
    offset: usize,
    failed: bool,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset >= self.frame.len() {
            return None;
        }
        match decode_at(self.frame, self.offset) {
            Ok((r, next)) => {
                self.offset = next;
                Some(Ok(r))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// One record of a frame of any kind.
#[derive(Clone, Debug, PartialEq)]
pub enum AnyRecord<'a> {
    /// A tick or a snapshot.
    Tick(Record<'a>),
    /// A book or a book update.
    Book(book::BookRecord<'a>),
}

/// Decodes a whole binary frame holding records of any kind: every record, or the
/// first error.
pub fn decode_any(frame: &[u8]) -> Result<Vec<AnyRecord<'_>>, DecodeError> {
    if frame.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < frame.len() {
        let (record, next) = match frame[offset] {
            book::KIND_BOOK | book::KIND_BOOK_UPDATE => {
                let (r, next) = book::decode_at(frame, offset)?;
                (AnyRecord::Book(r), next)
            }
            _ => {
                let (r, next) = decode_at(frame, offset)?;
                (AnyRecord::Tick(r), next)
            }
        };
        out.push(record);
        offset = next;
    }
    Ok(out)
}

/// Iterates over the tick and snapshot records of `frame` (an empty frame yields
/// nothing; [`decode`] refuses it); a book record is an unknown kind here (see
/// [`decode_any`]).
pub fn records(frame: &[u8]) -> Records<'_> {
    Records {
        frame,
        offset: 0,
        failed: false,
    }
}

/// Decodes a whole binary frame: every record, or the first error.
pub fn decode(frame: &[u8]) -> Result<Vec<Record<'_>>, DecodeError> {
    if frame.is_empty() {
        return Err(DecodeError::Empty);
    }
    records(frame).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tick {
        Tick::example()
    }

    #[test]
    fn every_field_round_trips() {
        let mut t = sample();
        for src_ts in [None, Some(1_764_000_000_000_000_001)] {
            t.src_ts = src_ts;
            for kind in [Kind::Tick, Kind::Snapshot] {
                let rec = encode(&t, kind).unwrap();
                assert_eq!(rec.len(), FIXED_LEN + 4 + 6);
                assert!(is_record(&rec));
                let got = decode(&rec).unwrap();
                assert_eq!(got.len(), 1);
                assert_eq!(got[0].kind, kind);
                assert_eq!(got[0].tick(), t);
                assert_eq!(peek(&rec), Some((kind, t.seq, t.ts)));
            }
        }
        t.epoch = "".into();
        let rec = encode(&t, Kind::Tick).unwrap();
        assert_eq!(decode(&rec).unwrap()[0].epoch, "");
    }

    #[test]
    fn several_records_make_a_frame_and_later_fields_are_skipped() {
        let mut frame = encode(&sample(), Kind::Snapshot).unwrap();
        // A record from a later version, with 3 more bytes after its epoch.
        let mut longer = encode(&sample(), Kind::Tick).unwrap();
        let len = longer.len() as u16 + 3;
        longer[2..4].copy_from_slice(&len.to_le_bytes());
        longer.extend_from_slice(&[9, 9, 9]);
        frame.extend_from_slice(&longer);
        let mut t = sample();
        t.seq += 1;
        write(&t, Kind::Tick, &mut frame).unwrap();
        let got = decode(&frame).unwrap();
        let seqs: Vec<(Kind, u64)> = got.iter().map(|r| (r.kind, r.seq)).collect();
        assert_eq!(
            seqs,
            [
                (Kind::Snapshot, 1043),
                (Kind::Tick, 1043),
                (Kind::Tick, 1044)
            ]
        );
    }

    #[test]
    fn a_paced_tick_carries_skipped_after_its_epoch() {
        let t = sample();
        let plain = encode(&t, Kind::Tick).unwrap();
        let paced = with_skipped(&plain, 7);
        assert_eq!(paced.len(), plain.len() + 8);
        assert_eq!(paced[1], FLAG_SKIPPED);
        let got = decode(&paced).unwrap();
        assert_eq!((got[0].skipped, got[0].tick()), (Some(7), t.clone()));
        assert_eq!(decode(&plain).unwrap()[0].skipped, None);
        // A decoder that reads `len` finds the next record after it.
        let mut frame = paced.clone();
        frame.extend_from_slice(&plain);
        assert_eq!(decode(&frame).unwrap().len(), 2);
        // The flag with no room for the count is refused.
        let mut short = plain.clone();
        short[1] |= FLAG_SKIPPED;
        assert!(matches!(decode(&short), Err(DecodeError::BadLength { .. })));
    }

    #[test]
    fn bad_frames_get_clear_errors() {
        let rec = encode(&sample(), Kind::Tick).unwrap();
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        assert_eq!(
            decode(b"{\"type\":\"tick\"}").unwrap_err(),
            DecodeError::UnknownKind {
                offset: 0,
                kind: b'{'
            }
        );
        let mut two = rec.clone();
        two.extend_from_slice(&rec[..40]);
        assert_eq!(
            decode(&two).unwrap_err(),
            DecodeError::Truncated {
                offset: rec.len(),
                need: FIXED_LEN,
                have: 40
            }
        );
        assert!(matches!(
            decode(&rec[..rec.len() - 1]),
            Err(DecodeError::Truncated { offset: 0, .. })
        ));
        let mut short = rec.clone();
        short[2..4].copy_from_slice(&10u16.to_le_bytes());
        assert!(matches!(decode(&short), Err(DecodeError::BadLength { .. })));
        let mut lower = rec.clone();
        lower[FIXED_LEN] = b'a';
        assert_eq!(
            decode(&lower).unwrap_err(),
            DecodeError::BadSymbol { offset: 0 }
        );
        let mut epoch = rec.clone();
        epoch[FIXED_LEN + 4] = 0xff;
        assert_eq!(
            decode(&epoch).unwrap_err(),
            DecodeError::BadEpoch { offset: 0 }
        );
        let e = decode(&two).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn names_too_long_for_a_length_byte_are_refused() {
        let mut t = sample();
        t.epoch = "e".repeat(256).into();
        assert_eq!(
            encode(&t, Kind::Tick),
            Err(EncodeError::TooLong {
                field: "epoch",
                len: 256
            })
        );
        t.epoch = "e".repeat(255).into();
        let rec = encode(&t, Kind::Tick).unwrap();
        assert_eq!(decode(&rec).unwrap()[0].epoch.len(), 255);
    }
}
