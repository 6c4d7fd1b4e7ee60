//! Maptrack handle encoding.
//!
//! A handle is the 32-bit value map returns and unmap takes. The Xen design hands out plain
//! indices into the mapper's maptrack table. The Fast design (seed 004) also hands out *fast*
//! handles naming an inline slot pair in the granter's active entry:
//!
//! | bits   | fast handle (`F` = 1)  | slow handle (`F` = 0)        |
//! |--------|------------------------|------------------------------|
//! | 31     | `F` = 1                | `F` = 0                      |
//! | 30..16 | granter domid (15 bits)| index into the mapper's      |
//! | 15..0  | grant ref (16 bits)    | maptrack table (31 bits)     |
//!
//! Domids of real domains are below `0x7FF0`, so 15 bits hold any granter; grant refs of
//! 2^16 and above cannot be encoded and always use the slow table. Both slots of one entry
//! share the one fast handle, so two maps of one gref by one mapper return equal handles;
//! unmap tells them apart by address (see `docs/design.md`, "Choosing a fast slot on unmap").

use crate::abi::{DomId, GrantHandle, GrantRef};

/// Bit 31: set for fast handles.
pub const FAST_BIT: u32 = 1 << 31;
/// Width of the gref field of a fast handle.
pub const FAST_REF_BITS: u32 = 16;
/// Width of the domid field of a fast handle.
pub const FAST_DOMID_BITS: u32 = 15;
/// Largest grant ref a fast handle can name, plus one.
pub const FAST_REF_LIMIT: u32 = 1 << FAST_REF_BITS;
/// Largest slow handle index plus one (the slow field is 31 bits wide).
pub const SLOW_INDEX_LIMIT: u32 = FAST_BIT;

const _: () = {
    assert!(FAST_REF_BITS + FAST_DOMID_BITS + 1 == 32);
    // Every real domid must fit the field.
    assert!((DomId::FIRST_RESERVED.0 as u32) <= (1 << FAST_DOMID_BITS));
};

/// A decoded handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decoded {
    /// Names the fast slots of `granter`'s active entry `gref`.
    Fast {
        /// The granter.
        granter: DomId,
        /// The grant ref.
        gref: GrantRef,
    },
    /// An index into the mapper's maptrack table.
    Slow(u32),
}

/// Encodes a fast handle, if the granter and gref fit the fields.
#[inline]
pub const fn encode_fast(granter: DomId, gref: GrantRef) -> Option<GrantHandle> {
    if gref.0 >= FAST_REF_LIMIT || (granter.0 as u32) >= (1 << FAST_DOMID_BITS) {
        return None;
    }
    Some(GrantHandle(
        FAST_BIT | ((granter.0 as u32) << FAST_REF_BITS) | gref.0,
    ))
}

/// Encodes a slow handle (a maptrack index below 2^31).
#[inline]
pub const fn encode_slow(index: u32) -> Option<GrantHandle> {
    if index >= SLOW_INDEX_LIMIT {
        None
    } else {
        Some(GrantHandle(index))
    }
}

/// Decodes a handle under the Fast design's layout.
#[inline]
pub const fn decode(h: GrantHandle) -> Decoded {
    if h.0 & FAST_BIT != 0 {
        Decoded::Fast {
            granter: DomId(((h.0 & !FAST_BIT) >> FAST_REF_BITS) as u16),
            gref: GrantRef(h.0 & (FAST_REF_LIMIT - 1)),
        }
    } else {
        Decoded::Slow(h.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_examples() {
        let h = encode_fast(DomId(5), GrantRef(0x1234)).unwrap();
        assert_eq!(h.0, 0x8005_1234);
        assert_eq!(
            decode(h),
            Decoded::Fast {
                granter: DomId(5),
                gref: GrantRef(0x1234)
            }
        );
        assert_eq!(encode_fast(DomId(5), GrantRef(1 << 16)), None);
        assert_eq!(
            encode_fast(DomId(0x7FEF), GrantRef(0xFFFF)).unwrap().0,
            0xFFEF_FFFF
        );
        assert_eq!(decode(GrantHandle(7)), Decoded::Slow(7));
        assert_eq!(encode_slow(1 << 31), None);
    }
}
