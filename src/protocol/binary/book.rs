//! Book records of the binary encoding: a `book` (kind `0x03`) or a `book_update` (kind
//! `0x04`), documented byte by byte in `docs/protocol.md` §7.
//!
//! A 40-byte fixed part (kind, flags, length, the lengths of the symbol and the epoch,
//! the price decimals, seq, prev_seq, ts, checksum and the number of levels of each
//! side), the symbol and the epoch, then the levels: bids then asks, each a price in
//! ticks and a size, two little-endian u64. Fixed-point integers, as the book holds
//! them: a client computes the checksum from the digits of these integers, and writes a
//! price by putting the point `decimals` digits from the right.

use super::{u64_at, DecodeError, EncodeError, MAX_NAME};
use crate::book::{BookMsg, Level, Spec};
use crate::tick::valid_symbol;

/// First byte of a `book` record.
pub const KIND_BOOK: u8 = 0x03;
/// First byte of a `book_update` record.
pub const KIND_BOOK_UPDATE: u8 = 0x04;
/// Size of the fixed part; the symbol starts here.
pub const FIXED_LEN: usize = 40;
/// Bytes of one level.
pub const LEVEL_LEN: usize = 16;

/// Offsets of the fields of the fixed part.
mod at {
    pub const KIND: usize = 0;
    pub const LEN: usize = 2;
    pub const SYMBOL_LEN: usize = 4;
    pub const EPOCH_LEN: usize = 5;
    pub const DECIMALS: usize = 6;
    pub const SEQ: usize = 8;
    pub const PREV_SEQ: usize = 16;
    pub const TS: usize = 24;
    pub const CHECKSUM: usize = 32;
    pub const BIDS: usize = 36;
    pub const ASKS: usize = 38;
}

/// What a book record says besides its levels.
#[derive(Clone, Copy, Debug)]
pub struct BookHead<'a> {
    /// The symbol.
    pub symbol: &'a str,
    /// The epoch.
    pub epoch: &'a str,
    /// The price decimals.
    pub spec: Spec,
    /// The book's seq after this record.
    pub seq: u64,
    /// For an update, the seq it applies to; `None` for a whole book.
    pub prev_seq: Option<u64>,
    /// Source time.
    pub ts: u64,
    /// The checksum of the book once applied.
    pub checksum: u32,
}

/// Appends one book record to `out`. On error nothing is appended.
pub fn write(
    head: &BookHead<'_>,
    bids: &[Level],
    asks: &[Level],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let (symbol, epoch) = (head.symbol.as_bytes(), head.epoch.as_bytes());
    if symbol.is_empty() {
        return Err(EncodeError::NoSymbol);
    }
    for (field, len) in [("symbol", symbol.len()), ("epoch", epoch.len())] {
        if len > MAX_NAME {
            return Err(EncodeError::TooLong { field, len });
        }
    }
    let len = FIXED_LEN + symbol.len() + epoch.len() + LEVEL_LEN * (bids.len() + asks.len());
    let (Ok(len16), Ok(nb), Ok(na)) = (
        u16::try_from(len),
        u16::try_from(bids.len()),
        u16::try_from(asks.len()),
    ) else {
        return Err(EncodeError::TooLong {
            field: "levels",
            len,
        });
    };
    out.reserve(len);
    out.push(match head.prev_seq {
        None => KIND_BOOK,
        Some(_) => KIND_BOOK_UPDATE,
    });
    out.push(0);
    out.extend_from_slice(&len16.to_le_bytes());
    out.extend_from_slice(&[symbol.len() as u8, epoch.len() as u8, head.spec.decimals, 0]);
    for v in [head.seq, head.prev_seq.unwrap_or(0), head.ts] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&head.checksum.to_le_bytes());
    out.extend_from_slice(&nb.to_le_bytes());
    out.extend_from_slice(&na.to_le_bytes());
    out.extend_from_slice(symbol);
    out.extend_from_slice(epoch);
    for l in bids.iter().chain(asks) {
        out.extend_from_slice(&l.price.to_le_bytes());
        out.extend_from_slice(&l.size.to_le_bytes());
    }
    Ok(())
}

/// One decoded book record, borrowing its symbol and epoch from the frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookRecord<'a> {
    /// The symbol.
    pub symbol: &'a str,
    /// The epoch.
    pub epoch: &'a str,
    /// The price decimals.
    pub spec: Spec,
    /// The book's seq after this record.
    pub seq: u64,
    /// For an update, the seq it applies to; `None` for a whole book.
    pub prev_seq: Option<u64>,
    /// Source time.
    pub ts: u64,
    /// The checksum of the book once applied.
    pub checksum: u32,
    /// Bid levels, best first.
    pub bids: Vec<Level>,
    /// Ask levels, best first.
    pub asks: Vec<Level>,
}

impl BookRecord<'_> {
    /// The message this record holds.
    pub fn to_msg(&self) -> BookMsg {
        BookMsg {
            symbol: self.symbol.into(),
            epoch: self.epoch.into(),
            seq: self.seq,
            prev_seq: self.prev_seq,
            ts: self.ts,
            bids: self.bids.clone(),
            asks: self.asks.clone(),
            checksum: Some(self.checksum),
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Decodes the book record that starts at `offset` of `frame` (its kind byte already
/// known to be a book's); returns it with the offset of the next record.
pub(super) fn decode_at(
    frame: &[u8],
    offset: usize,
) -> Result<(BookRecord<'_>, usize), DecodeError> {
    let b = &frame[offset..];
    if b.len() < FIXED_LEN {
        let have = b.len();
        return Err(DecodeError::Truncated {
            offset,
            need: FIXED_LEN,
            have,
        });
    }
    let len = u16_at(b, at::LEN);
    let (sl, el) = (
        usize::from(b[at::SYMBOL_LEN]),
        usize::from(b[at::EPOCH_LEN]),
    );
    let (nb, na) = (u16_at(b, at::BIDS), u16_at(b, at::ASKS));
    let names = FIXED_LEN + sl + el;
    let need = names + LEVEL_LEN * (nb + na);
    if len < need {
        return Err(DecodeError::BadLength { offset, len, need });
    }
    if b.len() < len {
        let have = b.len();
        return Err(DecodeError::Truncated {
            offset,
            need: len,
            have,
        });
    }
    let decimals = b[at::DECIMALS];
    if decimals > crate::book::MAX_DECIMALS {
        return Err(DecodeError::BadDecimals { offset, decimals });
    }
    let symbol = std::str::from_utf8(&b[FIXED_LEN..FIXED_LEN + sl])
        .ok()
        .filter(|s| valid_symbol(s))
        .ok_or(DecodeError::BadSymbol { offset })?;
    let epoch = std::str::from_utf8(&b[FIXED_LEN + sl..names])
        .map_err(|_| DecodeError::BadEpoch { offset })?;
    let level = |i: usize| {
        let at = names + i * LEVEL_LEN;
        Level::new(u64_at(b, at), u64_at(b, at + 8))
    };
    let record = BookRecord {
        symbol,
        epoch,
        spec: Spec::new(decimals),
        seq: u64_at(b, at::SEQ),
        prev_seq: (b[at::KIND] == KIND_BOOK_UPDATE).then(|| u64_at(b, at::PREV_SEQ)),
        ts: u64_at(b, at::TS),
        checksum: u32::from_le_bytes([
            b[at::CHECKSUM],
            b[at::CHECKSUM + 1],
            b[at::CHECKSUM + 2],
            b[at::CHECKSUM + 3],
        ]),
        bids: (0..nb).map(level).collect(),
        asks: (nb..nb + na).map(level).collect(),
    };
    Ok((record, offset + len))
}

#[cfg(test)]
mod tests {
    use super::super::{decode_any, AnyRecord};
    use super::*;

    fn head(prev_seq: Option<u64>) -> BookHead<'static> {
        BookHead {
            symbol: "AAPL",
            epoch: "k3v9q1",
            spec: Spec::new(2),
            seq: 8,
            prev_seq,
            ts: 1_764_284_400_124_456_789,
            checksum: 3_810_180_913,
        }
    }

    #[test]
    fn book_records_round_trip_and_mix_with_ticks() {
        let bids = [Level::new(18910, 300), Level::new(18909, 500)];
        let asks = [Level::new(18912, 0)];
        let mut frame = Vec::new();
        write(&head(Some(7)), &bids, &asks, &mut frame).unwrap();
        assert_eq!(frame.len(), FIXED_LEN + 4 + 6 + 3 * LEVEL_LEN);
        super::super::write(
            &crate::tick::Tick::example(),
            crate::tick::Kind::Tick,
            &mut frame,
        )
        .unwrap();
        write(&head(None), &bids, &[], &mut frame).unwrap();
        let got = decode_any(&frame).unwrap();
        assert_eq!(got.len(), 3);
        let AnyRecord::Book(update) = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(
            (update.prev_seq, update.seq, update.checksum),
            (Some(7), 8, 3_810_180_913)
        );
        assert_eq!(
            (update.bids.as_slice(), update.asks.as_slice()),
            (&bids[..], &asks[..])
        );
        assert!(matches!(got[1], AnyRecord::Tick(_)));
        let AnyRecord::Book(book) = &got[2] else {
            panic!()
        };
        assert_eq!((book.prev_seq, book.asks.len()), (None, 0));
        assert_eq!(book.to_msg().bids, bids);
    }

    #[test]
    fn bad_book_records_get_clear_errors() {
        let mut rec = Vec::new();
        write(&head(None), &[Level::new(1, 1)], &[], &mut rec).unwrap();
        let mut short = rec.clone();
        short[at::BIDS] = 2;
        assert!(matches!(
            decode_any(&short),
            Err(DecodeError::BadLength { .. })
        ));
        assert!(matches!(
            decode_any(&rec[..20]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut dec = rec.clone();
        dec[at::DECIMALS] = 10;
        assert!(matches!(
            decode_any(&dec),
            Err(DecodeError::BadDecimals { .. })
        ));
        let mut sym = rec.clone();
        sym[FIXED_LEN] = b'a';
        assert_eq!(
            decode_any(&sym).unwrap_err(),
            DecodeError::BadSymbol { offset: 0 }
        );
        let many = vec![Level::new(1, 1); 5000];
        assert!(matches!(
            write(&head(None), &many, &[], &mut Vec::new()),
            Err(EncodeError::TooLong {
                field: "levels",
                ..
            })
        ));
    }
}
