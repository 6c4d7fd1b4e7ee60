//! Xen's per-CPU reader-writer lock (`gnttab::table::PercpuRwLock`, spec 9.3), used directly.
//!
//! The protected data lives in an `UnsafeCell` that only the lock guards: under loom every
//! access is recorded, and a write not ordered (happens-before) against a read is reported as
//! a causality violation, i.e. the writer overlapped a reader.

use crate::harness::{model, thread, Arc, Outcomes, UnsafeCell};
use gnttab::table::{PcpuSet, PercpuRead, PercpuRwLock};

/// Data guarded by a lock under test.
#[derive(Debug)]
struct Guarded(UnsafeCell<u32>);

// SAFETY: every access to the cell goes through `read`/`write` below, which the models call
// only while holding the lock under test; that the lock really excludes a writer from readers
// is exactly what the models check (loom reports any unordered pair of accesses).
unsafe impl Sync for Guarded {}

impl Guarded {
    fn new() -> Self {
        Self(UnsafeCell::new(0))
    }
    /// Caller holds a read (or write) guard of the protecting lock.
    fn read(&self) -> u32 {
        // SAFETY: see the `Sync` impl: a read guard is held, so no writer runs.
        self.0.with(|p| unsafe { *p })
    }
    /// Caller holds the write guard of the protecting lock.
    fn bump(&self) {
        // SAFETY: see the `Sync` impl: the write guard is held, so nobody else accesses it.
        self.0.with_mut(|p| unsafe { *p += 1 })
    }
}

/// One reader on the per-CPU fast path against one writer: the writer's flag and the reader's
/// slot form a store-buffering pair ordered by two SeqCst fences, so either the reader sees
/// the flag and waits, or the writer sees the slot and waits.
#[test]
fn read_vs_write() {
    let outcomes = Outcomes::new();
    let record = outcomes.clone();
    model(move || {
        let cpus = Arc::new(PcpuSet::new(2));
        let lock = Arc::new(PercpuRwLock::new());
        let data = Arc::new(Guarded::new());
        let cpu = cpus.acquire().expect("a free pCPU slot");

        let reader = {
            let (cpus, lock, data) = (cpus.clone(), lock.clone(), data.clone());
            thread::spawn(move || {
                let g = lock.read(&cpus, cpu);
                assert!(
                    matches!(g, PercpuRead::Slot(_)),
                    "first read lock takes the slot path"
                );
                let v = data.read();
                drop(g);
                v
            })
        };
        let writer = {
            let (cpus, lock, data) = (cpus.clone(), lock.clone(), data.clone());
            thread::spawn(move || {
                let g = lock.write(&cpus);
                data.bump();
                drop(g);
            })
        };
        let seen = reader.join().unwrap();
        writer.join().unwrap();

        assert!(seen <= 1, "reader saw {seen} writes, only one happened");
        record.record(if seen == 0 {
            "read before the write"
        } else {
            "read after the write"
        });
        cpus.release(cpu);
        let g = lock.write(&cpus);
        assert_eq!(data.read(), 1, "the write is visible to the next writer");
        drop(g);
    });
    outcomes.assert_seen(&["read before the write", "read after the write"]);
}

/// A second per-CPU lock read-locked on the same pCPU slot falls back to the plain rwlock
/// (Xen's per-CPU path is not recursive), while a writer of the inner lock and a writer of the
/// outer lock run: the inner writer must be excluded by the fallback, and the outer writer
/// must still see the outer read lock in the slot after the inner one is dropped.
#[test]
fn fallback_read_vs_write() {
    let outcomes = Outcomes::new();
    let seen = outcomes.clone();
    model(move || {
        let cpus = Arc::new(PcpuSet::new(2));
        let outer = Arc::new((PercpuRwLock::new(), Guarded::new()));
        let inner = Arc::new((PercpuRwLock::new(), Guarded::new()));
        let cpu = cpus.acquire().expect("a free pCPU slot");

        let reader = {
            let (cpus, outer, inner) = (cpus.clone(), outer.clone(), inner.clone());
            thread::spawn(move || {
                let go = outer.0.read(&cpus, cpu);
                assert!(
                    matches!(go, PercpuRead::Slot(_)),
                    "outer read takes the slot path"
                );
                let gi = inner.0.read(&cpus, cpu);
                assert!(
                    matches!(gi, PercpuRead::Plain(_)),
                    "a second per-CPU lock on the same slot must fall back to the rwlock"
                );
                let vi = inner.1.read();
                drop(gi);
                let vo = outer.1.read();
                drop(go);
                (vo, vi)
            })
        };
        let writers: Vec<_> = [outer.clone(), inner.clone()]
            .into_iter()
            .map(|l| {
                let cpus = cpus.clone();
                thread::spawn(move || {
                    let g = l.0.write(&cpus);
                    l.1.bump();
                    drop(g);
                })
            })
            .collect();
        let (vo, vi) = reader.join().unwrap();
        for w in writers {
            w.join().unwrap();
        }

        assert!(
            vo <= 1 && vi <= 1,
            "reader saw {vo}/{vi} writes, one each happened"
        );
        seen.record(match (vo, vi) {
            (0, 0) => "both reads first",
            (0, _) => "inner write first",
            (_, 0) => "outer write first",
            _ => "both writes first",
        });
        cpus.release(cpu);
    });
    outcomes.assert_seen(&[
        "both reads first",
        "inner write first",
        "outer write first",
        "both writes first",
    ]);
}
