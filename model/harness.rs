//! The model harness (mycelium pattern): one `model` function and one set of primitives that
//! work in both worlds, so the models never rot.
//!
//! * `RUSTFLAGS="--cfg loom"`: [`model`] runs the closure under `loom::model::Builder`, with a
//!   preemption bound of 2 unless `LOOM_MAX_PREEMPTIONS` says otherwise. The library swapped
//!   its own primitives (`src/sync.rs`), so the models check the real code.
//! * normal build: [`model`] runs the closure once on real threads (a smoke test that keeps
//!   every model compiling and running in plain `cargo test`).
//!
//! [`thread`], [`Arc`] and [`UnsafeCell`] are re-exported from loom or std accordingly.

#[cfg(loom)]
pub(crate) use loom::{cell::UnsafeCell, sync::Arc, thread};

#[cfg(not(loom))]
pub(crate) use std::{sync::Arc, thread};

/// Loom's `UnsafeCell` API (`with`, `with_mut`) over `std::cell::UnsafeCell`, so the models can
/// be written once. Loom's version records every access and reports two conflicting ones that
/// are not ordered by happens-before ("Causality violation").
#[cfg(not(loom))]
#[derive(Debug, Default)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(v: T) -> Self {
        Self(std::cell::UnsafeCell::new(v))
    }
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Wraps a shared hook implementation in the hypervisor's `Arc<dyn Hooks>`. Loom's `Arc`
/// cannot be coerced to a trait object; it is built from a std one, which must be unique, so
/// the model's handle `h` is kept behind a forwarding wrapper.
pub(crate) fn hooks_arc<H: gnttab::prelude::Hooks + 'static>(
    h: std::sync::Arc<H>,
) -> Arc<dyn gnttab::prelude::Hooks> {
    #[derive(Debug)]
    struct Forward<H>(std::sync::Arc<H>);
    impl<H: gnttab::prelude::Hooks> gnttab::prelude::Hooks for Forward<H> {
        fn at(&self, ctx: &gnttab::prelude::HookCtx) -> gnttab::prelude::HookAction {
            self.0.at(ctx)
        }
    }
    let h: std::sync::Arc<dyn gnttab::prelude::Hooks> = std::sync::Arc::new(Forward(h));
    #[cfg(loom)]
    {
        Arc::from_std(h)
    }
    #[cfg(not(loom))]
    {
        h
    }
}

/// The outcomes a model reached, collected across all its executions (outside the model:
/// plain std types, invisible to loom).
///
/// A model records which side of its race won in each execution; after [`model`] returns,
/// [`Outcomes::assert_seen`] checks under loom that every legal outcome was reached in some
/// execution (unless the search was cut short: bound 0, `LOOM_MAX_PERMUTATIONS`,
/// `LOOM_MAX_DURATION`), so a model that silently stopped exploring its race (loom's DPOR hole, a
/// set-up change) fails instead of passing vacuously. Run once on real threads, only the
/// outcome that happened is checked to be one of the legal ones.
#[derive(Debug, Default)]
pub(crate) struct Outcomes(std::sync::Mutex<std::collections::BTreeSet<&'static str>>);

impl Outcomes {
    pub(crate) fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::default()
    }

    /// Records the outcome of one execution.
    pub(crate) fn record(&self, outcome: &'static str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(outcome);
    }

    /// Every outcome reached is in `legal`; after a full loom search, every one of `legal` was
    /// reached.
    #[track_caller]
    pub(crate) fn assert_seen(&self, legal: &[&'static str]) {
        let seen = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let legal: std::collections::BTreeSet<_> = legal.iter().copied().collect();
        assert!(!seen.is_empty(), "the model recorded no outcome");
        assert!(
            seen.is_subset(&legal),
            "outcomes {seen:?} outside the legal set {legal:?}"
        );
        if full_search() {
            assert_eq!(
                seen, legal,
                "loom never reached some legal outcome: the model does not explore its race"
            );
        }
    }
}

/// Whether the search can be expected to reach every outcome of a race: loom, at least one
/// preemption allowed (with none, each thread runs to completion in turn), and no cap on
/// the number of executions or the time.
fn full_search() -> bool {
    let var = |v: &str| std::env::var(v).ok();
    cfg!(loom)
        && var("LOOM_MAX_PREEMPTIONS").as_deref() != Some("0")
        && var("LOOM_MAX_PERMUTATIONS").is_none()
        && var("LOOM_MAX_DURATION").is_none()
}

/// Default preemption bound when `LOOM_MAX_PREEMPTIONS` is unset (sharded-slab, tokio,
/// crossbeam, mycelium all use 2).
#[cfg(loom)]
const DEFAULT_PREEMPTIONS: usize = 2;

/// Default branch limit when `LOOM_MAX_BRANCHES` is unset. Loom counts every atomic access
/// and lock operation of an execution, including the main thread's set-up (creating a
/// hypervisor and two domains, a few set-up hypercalls), which overruns loom's own default of
/// 1,000. tokio runs with 10,000 as well.
#[cfg(loom)]
const DEFAULT_BRANCHES: usize = 10_000;

/// Runs `f` under loom (every interleaving within the preemption bound) or once on real
/// threads. Prints the number of executions and the time taken (visible with `--nocapture`).
pub(crate) fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    let name = std::thread::current().name().unwrap_or("model").to_string();
    // Plain std atomics on purpose: the counter is outside the model and must not be tracked.
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = {
        let runs = runs.clone();
        move || {
            runs.fetch_add(1, Ordering::Relaxed);
            f();
        }
    };
    // Reports on the way out, also when an execution panics (a failing model shows after how
    // many executions loom found the bad interleaving). `eprintln!` panics only if stderr
    // cannot be written; under libtest it goes to the capture buffer, which cannot fail.
    struct Report {
        name: String,
        runs: std::sync::Arc<AtomicUsize>,
        start: Instant,
    }
    impl Drop for Report {
        fn drop(&mut self) {
            let verdict = if std::thread::panicking() {
                "FAILED in"
            } else {
                "passed,"
            };
            eprintln!(
                "{}: {verdict} {} execution(s) in {:.2?}",
                self.name,
                self.runs.load(Ordering::Relaxed),
                self.start.elapsed()
            );
        }
    }
    let _report = Report {
        name,
        runs,
        start: Instant::now(),
    };
    run(counted);
}

#[cfg(loom)]
fn run<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let defaults = [
        ("LOOM_MAX_PREEMPTIONS", DEFAULT_PREEMPTIONS),
        ("LOOM_MAX_BRANCHES", DEFAULT_BRANCHES),
    ];
    if std::env::var_os("LOOM_LOG").is_some() {
        // Tracing output needs the subscriber that only `loom::model` installs, and
        // `loom::model` takes its limits from the environment alone.
        for (var, default) in defaults {
            if std::env::var_os(var).is_none() {
                // Only Rust code reads the environment here (std serialises it), and
                // debugging runs use `--test-threads 1` anyway.
                std::env::set_var(var, default.to_string());
            }
        }
        loom::model(f);
        return;
    }
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(DEFAULT_PREEMPTIONS);
    }
    if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
        b.max_branches = DEFAULT_BRANCHES;
    }
    b.check(f);
}

#[cfg(not(loom))]
fn run<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    f();
}
