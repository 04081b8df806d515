//! A guard run before any serde decoding of untrusted MessagePack: one
//! iterative pass that bounds nesting depth, the number of values and an
//! estimate of the memory the decoded value takes, and rejects length
//! headers that claim more than the bytes hold.
//!
//! serde's decoders recurse per level, so deep nesting would overflow the
//! stack; and decoding costs far more memory than the bytes (a one-byte nil
//! becomes a [`rmpv::Value`] of `size_of::<rmpv::Value>()` bytes, more while
//! its vector grows), so a 1 MiB envelope of nils or tiny maps would take
//! about 100 MiB. The check allocates nothing per value.

use rmp::Marker;
use settings::Settings;

/// The deepest nesting an envelope may have by default (the envelope itself
/// is level 1, `kwargs` level 2).
pub const MAX_DEPTH: usize = 64;

/// What one decoded value costs besides its string and binary bytes.
const VALUE_SIZE: u64 = std::mem::size_of::<rmpv::Value>() as u64;

/// What each item of an array or map costs on top of its own value: a
/// vector may hold as much unused capacity again while it grows (serde
/// preallocates at most 1 MiB and then doubles), and a top-level map is a
/// `BTreeMap` whose nodes take about as much.
const CONTAINER_SLACK: u64 = VALUE_SIZE;

/// Bounds on one untrusted envelope, checked before it is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// The largest payload considered at all, in bytes (`nats.max_payload`).
    pub max_payload: usize,
    /// The deepest nesting (`worker.decode_max_depth`).
    pub max_depth: usize,
    /// The most values: every array element, map key and map value counts
    /// (`worker.decode_max_items`).
    pub max_items: u64,
    /// The most memory the decoded value may take, by the estimate above
    /// (`worker.decode_max_bytes`).
    pub max_bytes: u64,
}

impl DecodeLimits {
    /// The defaults of `settings.toml`.
    pub const DEFAULT: Self =
        Self { max_payload: 1 << 20, max_depth: MAX_DEPTH, max_items: 16_384, max_bytes: 1 << 20 };

    /// Only a depth bound, for data Courier wrote itself (result records),
    /// whose size its writer already decided.
    pub const fn depth_only(max_depth: usize) -> Self {
        Self { max_payload: usize::MAX, max_depth, max_items: u64::MAX, max_bytes: u64::MAX }
    }

    /// The limits a worker applies: `nats.max_payload` and `worker.decode_*`.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            max_payload: settings.nats.max_payload,
            max_depth: settings.worker.decode_max_depth,
            max_items: settings.worker.decode_max_items,
            max_bytes: settings.worker.decode_max_bytes,
        }
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why bytes were refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// The data ends inside a value.
    #[error("truncated: the data ends inside {0}")]
    Truncated(&'static str),
    /// Byte 0xc1 is reserved.
    #[error("reserved byte 0xc1 is not MessagePack")]
    Reserved,
    /// A container claims more items than there are bytes left.
    #[error("a container claims {claimed} items but only {available} bytes follow")]
    LengthLie {
        /// Items claimed.
        claimed: u64,
        /// Bytes left.
        available: usize,
    },
    /// Nested deeper than the limit.
    #[error("nested deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// More values than the limit.
    #[error("more than {max} values")]
    TooManyItems {
        /// The limit.
        max: u64,
    },
    /// Decoding would take more memory than the limit.
    #[error("decoding would take more than {max} bytes of memory")]
    TooLarge {
        /// The limit.
        max: u64,
    },
}

/// Checks that `bytes` hold one well-formed value within `limits` (all but
/// `max_payload`, which the caller checks before anything else), without
/// recursion and without allocating per value.
pub fn check(bytes: &[u8], limits: &DecodeLimits) -> Result<(), ShapeError> {
    let mut rest = bytes;
    // Items still to read in each open container; the root is one item.
    let mut open: Vec<u64> = Vec::new();
    let mut remaining: u64 = 1;
    let mut budget = Budget { items: 0, bytes: 0, limits };
    budget.add(1, VALUE_SIZE)?;
    loop {
        while remaining == 0 {
            match open.pop() {
                Some(outer) => remaining = outer,
                None => return Ok(()),
            }
        }
        remaining -= 1;
        let (&byte, tail) = rest.split_first().ok_or(ShapeError::Truncated("a value"))?;
        rest = tail;
        let marker = Marker::from_u8(byte);
        let (skip, children) = match marker {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => (0, 0),
            Marker::U8 | Marker::I8 => (1, 0),
            Marker::U16 | Marker::I16 => (2, 0),
            Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
            Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
            Marker::FixStr(n) => (u64::from(n), 0),
            Marker::Str8 | Marker::Bin8 => (take_len(&mut rest, 1)?, 0),
            Marker::Str16 | Marker::Bin16 => (take_len(&mut rest, 2)?, 0),
            Marker::Str32 | Marker::Bin32 => (take_len(&mut rest, 4)?, 0),
            Marker::FixExt1 => (2, 0),
            Marker::FixExt2 => (3, 0),
            Marker::FixExt4 => (5, 0),
            Marker::FixExt8 => (9, 0),
            Marker::FixExt16 => (17, 0),
            Marker::Ext8 => (take_len(&mut rest, 1)? + 1, 0),
            Marker::Ext16 => (take_len(&mut rest, 2)? + 1, 0),
            Marker::Ext32 => (take_len(&mut rest, 4)? + 1, 0),
            Marker::FixArray(n) => (0, u64::from(n)),
            Marker::Array16 => (0, take_len(&mut rest, 2)?),
            Marker::Array32 => (0, take_len(&mut rest, 4)?),
            Marker::FixMap(n) => (0, 2 * u64::from(n)),
            Marker::Map16 => (0, 2 * take_len(&mut rest, 2)?),
            Marker::Map32 => (0, 2 * take_len(&mut rest, 4)?),
            Marker::Reserved => return Err(ShapeError::Reserved),
        };
        let skip_len = usize::try_from(skip).map_err(|_| ShapeError::Truncated("a string or binary"))?;
        rest = rest.get(skip_len..).ok_or(ShapeError::Truncated("a string or binary"))?;
        // String, binary and extension bytes are copied out as they are;
        // numbers live inside their value.
        if !is_number(marker) {
            budget.add(0, skip)?;
        }
        if children > 0 {
            // Every item takes at least one byte: a longer claim is a lie.
            if children > rest.len() as u64 {
                return Err(ShapeError::LengthLie { claimed: children, available: rest.len() });
            }
            if open.len() + 1 >= limits.max_depth {
                return Err(ShapeError::TooDeep { max: limits.max_depth });
            }
            // Charged when the header is read, so a container over the
            // limits is refused before its items are walked.
            budget.add(children, children * (VALUE_SIZE + CONTAINER_SLACK))?;
            open.push(remaining);
            remaining = children;
        }
    }
}

/// The values and estimated bytes counted so far.
struct Budget<'a> {
    items: u64,
    bytes: u64,
    limits: &'a DecodeLimits,
}

impl Budget<'_> {
    fn add(&mut self, items: u64, bytes: u64) -> Result<(), ShapeError> {
        self.items = self.items.saturating_add(items);
        self.bytes = self.bytes.saturating_add(bytes);
        if self.items > self.limits.max_items {
            return Err(ShapeError::TooManyItems { max: self.limits.max_items });
        }
        if self.bytes > self.limits.max_bytes {
            return Err(ShapeError::TooLarge { max: self.limits.max_bytes });
        }
        Ok(())
    }
}

fn is_number(marker: Marker) -> bool {
    matches!(
        marker,
        Marker::U8
            | Marker::I8
            | Marker::U16
            | Marker::I16
            | Marker::U32
            | Marker::I32
            | Marker::F32
            | Marker::U64
            | Marker::I64
            | Marker::F64
    )
}

fn take_len(rest: &mut &[u8], width: usize) -> Result<u64, ShapeError> {
    let (head, tail) = rest.split_at_checked(width).ok_or(ShapeError::Truncated("a length"))?;
    *rest = tail;
    Ok(head.iter().fold(0_u64, |acc, b| (acc << 8) | u64::from(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(value: &rmpv::Value) -> Vec<u8> {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, value).unwrap();
        bytes
    }

    const DEPTH: DecodeLimits = DecodeLimits::depth_only(MAX_DEPTH);

    #[test]
    fn accepts_ordinary_values() {
        let value = rmpv::Value::Map(vec![
            (rmpv::Value::from("a"), rmpv::Value::Array(vec![1.into(), "x".into(), rmpv::Value::Nil, 2.5.into()])),
            (rmpv::Value::from("b"), rmpv::Value::Binary(vec![0; 300])),
            (rmpv::Value::from("c"), rmpv::Value::from("y".repeat(70_000))),
            (rmpv::Value::from("d"), rmpv::Value::from(-5_000_000_000_i64)),
            (rmpv::Value::from("e"), rmpv::Value::Ext(3, vec![1, 2, 3])),
        ]);
        check(&encode(&value), &DEPTH).unwrap();
        check(&encode(&value), &DecodeLimits::DEFAULT).unwrap();
        // A string as large as a whole default payload still fits.
        let big = rmpv::Value::Map(vec![(rmpv::Value::from("s"), rmpv::Value::from("z".repeat(1_040_000)))]);
        check(&encode(&big), &DecodeLimits::DEFAULT).unwrap();
    }

    #[test]
    fn rejects_depth_bombs_and_lies() {
        let mut deep = vec![0x91; 100_000];
        deep.push(0xc0);
        assert_eq!(check(&deep, &DEPTH), Err(ShapeError::TooDeep { max: MAX_DEPTH }));
        let claims = [0xdd, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(matches!(check(&claims, &DEPTH), Err(ShapeError::LengthLie { .. })));
        assert!(matches!(check(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'x'], &DEPTH), Err(ShapeError::Truncated(_))));
        assert_eq!(check(&[0xc1], &DEPTH), Err(ShapeError::Reserved));
        assert!(matches!(check(&[], &DEPTH), Err(ShapeError::Truncated(_))));
        assert!(matches!(check(&[0x92, 0x01], &DEPTH), Err(ShapeError::LengthLie { .. })));
    }

    #[test]
    fn bounds_values_and_decoded_size() {
        let limits = DecodeLimits { max_items: 1000, max_bytes: 1 << 20, ..DecodeLimits::DEFAULT };
        // 1001 nils in one array: the header alone is refused.
        let mut nils = vec![0xdc, 0x03, 0xe9];
        nils.extend(std::iter::repeat_n(0xc0, 1001));
        assert_eq!(check(&nils, &limits), Err(ShapeError::TooManyItems { max: 1000 }));
        // The same count split over many small arrays is counted as well.
        let mut split = vec![0xdc, 0x01, 0xf4];
        split.extend(std::iter::repeat_n([0x92, 0xc0, 0xc0], 500).flatten());
        assert_eq!(check(&split, &limits), Err(ShapeError::TooManyItems { max: 1000 }));
        // Few values holding many bytes: the size estimate refuses it.
        let strings = rmpv::Value::Array(vec!["s".repeat(300_000).into(); 4]);
        assert_eq!(check(&encode(&strings), &limits), Err(ShapeError::TooLarge { max: 1 << 20 }));
        let three = rmpv::Value::Array(vec!["s".repeat(300_000).into(); 3]);
        check(&encode(&three), &limits).unwrap();
    }

    #[test]
    fn the_estimate_covers_what_decoding_allocates() {
        // 10,000 nils in an array take at least 10,000 values in memory.
        let mut nils = vec![0xdc, 0x27, 0x10];
        nils.extend(std::iter::repeat_n(0xc0, 10_000));
        let floor = 10_000 * VALUE_SIZE;
        let tight = DecodeLimits { max_bytes: floor, ..DecodeLimits::DEFAULT };
        assert_eq!(check(&nils, &tight), Err(ShapeError::TooLarge { max: floor }));
        let roomy = DecodeLimits { max_bytes: 3 * floor, ..DecodeLimits::DEFAULT };
        check(&nils, &roomy).unwrap();
    }
}
