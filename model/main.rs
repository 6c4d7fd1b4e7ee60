//! Loom models of gnttab's concurrent protocols (see `docs/testing.md`, "Loom models").
//!
//! ```sh
//! cargo test --test model                                   # every model once, real threads
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test --release --test model                     # exhaustive, preemption bound 2
//! ```
//!
//! With `--cfg loom` the library swaps its atomics and locks for loom's (`src/sync.rs`), so
//! the models drive the real hypercall code. Shape of every model (style.md 3.6, rule 6): the
//! main thread builds the state, spawns one thread per racing role, joins, then checks; each
//! role does 1-3 operations; at most 3 spawned threads; `hv.check()` runs after the join.

mod common;
mod harness;

mod copy;
mod end_access;
mod fast_slots;
mod growth;
mod hints;
mod iommu_bfn;
mod iommu_xen;
mod maptrack;
mod pause;
mod percpu;
mod quota;
mod registry;
mod unmap;
mod zombie;
