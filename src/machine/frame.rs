//! Machine frames: owner, page references, writable-type references and real 4 KiB contents.
//!
//! The counts follow Xen's page accounting in the parts the grant code depends on:
//!
//! | word         | bits  | meaning                                                          |
//! |--------------|-------|------------------------------------------------------------------|
//! | `owner`      | 0..15 | owning domain id; `DOMID_INVALID` while free                     |
//! |              | 16    | `XENHEAP`: a hypervisor page shared with the owner (grant frame) |
//! | `count`      | 0..31 | page references; the allocation holds one, every mapping part    |
//! |              |       | (host or device) one more; 0 means free                          |
//! | `type_info`  | 0..30 | writable type references                                         |
//! |              | 31    | `PGT_OTHER`: the frame has a non-writable type (e.g. a page      |
//! |              |       | table); writable type references are then refused                |
//!
//! Contents are allocated on first touch as 512 atomic words, so concurrent readers and writers
//! through mappings and device DMA are data-race free (a racy guest sees torn data, as on real
//! hardware, never undefined behaviour).

use crate::abi::{DomId, PAGE_SIZE};
use crate::sync::{AtomicU32, AtomicU64, OnceBox, Ordering};

/// Words of a page's contents.
const WORDS: usize = PAGE_SIZE / 8;

/// `owner` bit: the frame is a hypervisor page shared with its owner.
pub(crate) const OWNER_XENHEAP: u32 = 1 << 16;
/// `type_info` bit: the frame has a non-writable type.
pub(crate) const PGT_OTHER: u32 = 1 << 31;

/// Lazily allocated page contents.
#[derive(Debug)]
pub(crate) struct PageData {
    words: [AtomicU64; WORDS],
}

impl PageData {
    fn zeroed() -> Box<Self> {
        Box::new(Self {
            words: core::array::from_fn(|_| AtomicU64::new(0)),
        })
    }
}

/// One machine frame.
#[derive(Debug)]
pub struct Frame {
    owner: AtomicU32,
    count: AtomicU32,
    type_info: AtomicU32,
    contents: OnceBox<PageData>,
}

impl Default for Frame {
    fn default() -> Self {
        Self {
            owner: AtomicU32::new(DomId::INVALID.0 as u32),
            count: AtomicU32::new(0),
            type_info: AtomicU32::new(0),
            contents: OnceBox::new(),
        }
    }
}

impl Frame {
    /// The owner, if the frame is allocated.
    pub fn owner(&self) -> Option<DomId> {
        // Acquire: pairs with the Release store in `assign`, so a reader that sees the owner
        // also sees the scrubbed contents.
        let o = self.owner.load(Ordering::Acquire);
        let d = DomId(o as u16);
        (d != DomId::INVALID).then_some(d)
    }

    /// Whether the frame is a hypervisor page (grant frame) shared with its owner.
    pub fn is_xenheap(&self) -> bool {
        self.owner.load(Ordering::Relaxed) & OWNER_XENHEAP != 0
    }

    /// Current page references (allocation reference included).
    pub fn refcount(&self) -> u32 {
        self.count.load(Ordering::Acquire)
    }

    /// Current writable type references.
    pub fn writable_type_count(&self) -> u32 {
        self.type_info.load(Ordering::Acquire) & !PGT_OTHER
    }

    /// Whether the frame holds a non-writable type.
    pub fn has_other_type(&self) -> bool {
        self.type_info.load(Ordering::Acquire) & PGT_OTHER != 0
    }

    /// Makes a free frame owned by `owner` with the allocation reference.
    pub(crate) fn assign(&self, owner: DomId, xenheap: bool) {
        debug_assert_eq!(self.count.load(Ordering::Relaxed), 0);
        if let Some(c) = self.contents.get() {
            for w in &c.words {
                // Relaxed: published by the Release store of `owner` below.
                w.store(0, Ordering::Relaxed);
            }
        }
        self.type_info.store(0, Ordering::Relaxed);
        self.count.store(1, Ordering::Relaxed);
        let o = owner.0 as u32 | if xenheap { OWNER_XENHEAP } else { 0 };
        // Release: publishes the scrub and the counts to anyone who sees the new owner.
        self.owner.store(o, Ordering::Release);
    }

    /// `get_page(page, owner)`: takes a page reference if the frame is allocated to `owner`.
    /// Like Xen, the count is raised first and the owner checked after; a mismatch puts the
    /// reference back (and reports whether that freed the frame, which the caller must then
    /// release to the allocator).
    pub(crate) fn try_get(&self, owner: DomId) -> GetResult {
        let mut c = self.count.load(Ordering::Relaxed);
        loop {
            if c == 0 || c == u32::MAX {
                return GetResult::Refused;
            }
            // Acquire: orders the owner check after the count raise (pairs with `put`'s
            // Release on the final drop and with `assign`).
            match self
                .count
                .compare_exchange_weak(c, c + 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => c = now,
            }
        }
        if self.owner.load(Ordering::Acquire) as u16 == owner.0 {
            GetResult::Got
        } else if let Some(o) = self.put() {
            GetResult::RefusedAndFreed(o)
        } else {
            GetResult::Refused
        }
    }

    /// Drops a page reference; if it was the last one, marks the frame free and returns its
    /// former owner word (the frame must go back to the allocator).
    pub(crate) fn put(&self) -> Option<u32> {
        // Release: every use of the frame under this reference happens-before the free; the
        // Acquire fence below completes the pairing for the thread that frees.
        let prev = self.count.fetch_sub(1, Ordering::Release);
        assert!(prev != 0, "page reference underflow");
        if prev == 1 {
            crate::sync::fence(Ordering::Acquire);
            Some(self.owner.swap(DomId::INVALID.0 as u32, Ordering::AcqRel))
        } else {
            None
        }
    }

    /// `get_page_type(page, PGT_writable_page)`: refused if the frame has another type.
    pub(crate) fn get_writable_type(&self) -> bool {
        let mut t = self.type_info.load(Ordering::Relaxed);
        loop {
            if t & PGT_OTHER != 0 || t & !PGT_OTHER == !PGT_OTHER {
                return false;
            }
            // Acquire/Release: a type change is a synchronisation point for the frame's use.
            match self.type_info.compare_exchange_weak(
                t,
                t + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => t = now,
            }
        }
    }

    /// Drops a writable type reference.
    pub(crate) fn put_writable_type(&self) {
        let prev = self.type_info.fetch_sub(1, Ordering::AcqRel);
        assert!(prev & !PGT_OTHER != 0, "type reference underflow");
    }

    /// Gives the frame a non-writable type (as if the guest pinned it as a page table), which
    /// succeeds only while no writable type reference exists. Test and scenario hook.
    pub fn set_other_type(&self, on: bool) -> bool {
        if on {
            self.type_info
                .compare_exchange(0, PGT_OTHER, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        } else {
            self.type_info
                .compare_exchange(PGT_OTHER, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        }
    }

    /// Reads `buf.len()` bytes at `offset` (must stay inside the page).
    pub(crate) fn read(&self, offset: usize, buf: &mut [u8]) {
        assert!(offset + buf.len() <= PAGE_SIZE, "read beyond the page");
        let Some(c) = self.contents.get() else {
            buf.fill(0);
            return;
        };
        // One load per word touched (not per byte).
        let mut pos = offset;
        let mut rest = buf;
        while !rest.is_empty() {
            let shift = pos % 8;
            let n = (8 - shift).min(rest.len());
            // Relaxed: page contents carry no synchronisation of their own (like RAM).
            let w = c.words[pos / 8].load(Ordering::Relaxed).to_le_bytes();
            let (head, tail) = rest.split_at_mut(n);
            head.copy_from_slice(&w[shift..shift + n]);
            pos += n;
            rest = tail;
        }
    }

    /// Writes `data` at `offset` (must stay inside the page).
    pub(crate) fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= PAGE_SIZE, "write beyond the page");
        if data.is_empty() {
            return;
        }
        let c = self.contents.get_or_init(PageData::zeroed);
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let word = &c.words[pos / 8];
            let shift = pos % 8;
            let n = (8 - shift).min(rest.len());
            if n == 8 {
                let v = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
                word.store(v, Ordering::Relaxed);
            } else {
                let mut mask = 0u64;
                let mut bits = 0u64;
                for (j, &b) in rest[..n].iter().enumerate() {
                    mask |= 0xFF << ((shift + j) * 8);
                    bits |= (b as u64) << ((shift + j) * 8);
                }
                // Relaxed RMW: bytes of the word outside `mask` written concurrently by
                // others are preserved.
                let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                    Some((w & !mask) | bits)
                });
            }
            pos += n;
            rest = &rest[n..];
        }
    }
}

/// Result of [`Frame::try_get`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GetResult {
    Got,
    Refused,
    /// Refused, and putting back the speculative reference freed the frame (owner word).
    RefusedAndFreed(u32),
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Reads and writes at every alignment and length agree with a plain byte array.
    #[test]
    fn read_write_any_alignment() {
        let f = Frame::default();
        let mut model = vec![0u8; PAGE_SIZE];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..400 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let off = (seed % PAGE_SIZE as u64) as usize;
            let len = ((seed >> 20) % 40) as usize % (PAGE_SIZE - off + 1);
            let data: Vec<u8> = (0..len).map(|i| (round * 7 + i) as u8).collect();
            f.write(off, &data);
            model[off..off + len].copy_from_slice(&data);
            let roff = ((seed >> 32) % PAGE_SIZE as u64) as usize;
            let rlen = ((seed >> 44) % 45) as usize % (PAGE_SIZE - roff + 1);
            let mut buf = vec![0xAA; rlen];
            f.read(roff, &mut buf);
            assert_eq!(buf, model[roff..roff + rlen], "read {rlen} at {roff}");
        }
        let mut all = vec![0u8; PAGE_SIZE];
        f.read(0, &mut all);
        assert_eq!(all, model);
    }
}
