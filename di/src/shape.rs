//! A guard run before any serde decoding of untrusted MessagePack: one
//! iterative pass that bounds nesting depth and rejects length headers that
//! claim more than the bytes hold. serde's decoders recurse per level, so a
//! deeply nested payload would otherwise overflow the stack of the thread
//! that decodes it.

use rmp::Marker;

/// The deepest nesting an envelope may have (the envelope itself is level 1,
/// `kwargs` level 2).
pub const MAX_DEPTH: usize = 64;

/// Checks that `bytes` hold one well-formed value nested at most
/// `max_depth` levels, without recursion and without allocating per entry.
pub fn check(bytes: &[u8], max_depth: usize) -> Result<(), String> {
    let mut rest = bytes;
    // Items still to read in each open container; the root is one item.
    let mut open: Vec<u64> = Vec::new();
    let mut remaining: u64 = 1;
    loop {
        while remaining == 0 {
            match open.pop() {
                Some(outer) => remaining = outer,
                None => return Ok(()),
            }
        }
        remaining -= 1;
        let (&byte, tail) = rest.split_first().ok_or("truncated: the data ends inside a value")?;
        rest = tail;
        let (skip, children) = match Marker::from_u8(byte) {
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
            Marker::Reserved => return Err("reserved byte 0xc1 is not MessagePack".to_owned()),
        };
        let skip = usize::try_from(skip).map_err(|_| "length too large")?;
        rest = rest.get(skip..).ok_or("truncated: a string or binary is longer than the data")?;
        if children > 0 {
            // Every item takes at least one byte: a longer claim is a lie.
            if children > rest.len() as u64 {
                return Err(format!("a container claims {children} items but only {} bytes follow", rest.len()));
            }
            if open.len() + 1 >= max_depth {
                return Err(format!("nested deeper than {max_depth} levels"));
            }
            open.push(remaining);
            remaining = children;
        }
    }
}

fn take_len(rest: &mut &[u8], width: usize) -> Result<u64, String> {
    let (head, tail) = rest.split_at_checked(width).ok_or("truncated: the data ends inside a length")?;
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

    #[test]
    fn accepts_ordinary_values() {
        let value = rmpv::Value::Map(vec![
            (rmpv::Value::from("a"), rmpv::Value::Array(vec![1.into(), "x".into(), rmpv::Value::Nil, 2.5.into()])),
            (rmpv::Value::from("b"), rmpv::Value::Binary(vec![0; 300])),
            (rmpv::Value::from("c"), rmpv::Value::from("y".repeat(70_000))),
            (rmpv::Value::from("d"), rmpv::Value::from(-5_000_000_000_i64)),
            (rmpv::Value::from("e"), rmpv::Value::Ext(3, vec![1, 2, 3])),
        ]);
        check(&encode(&value), MAX_DEPTH).unwrap();
    }

    #[test]
    fn rejects_depth_bombs_and_lies() {
        let mut deep = vec![0x91; 100_000];
        deep.push(0xc0);
        assert!(check(&deep, MAX_DEPTH).unwrap_err().contains("nested deeper"));
        let claims = [0xdd, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(check(&claims, MAX_DEPTH).unwrap_err().contains("claims"));
        assert!(check(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'x'], MAX_DEPTH).unwrap_err().contains("truncated"));
        assert!(check(&[0xc1], MAX_DEPTH).is_err());
        assert!(check(&[], MAX_DEPTH).is_err());
        assert!(check(&[0x92, 0x01], MAX_DEPTH).is_err());
    }
}
