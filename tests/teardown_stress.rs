//! Teardown stress: threads map, unmap and end access while domains are created and destroyed
//! in a loop; at the end every invariant holds, frame references are back to their baseline,
//! and no handle, pin, bus frame or quota unit leaked.
//!
//! `cargo test` runs a small version of each test on every design. The heavy version is
//! `#[ignore]`d and sized by `GNTTAB_STRESS_ROUNDS` (default 200):
//!
//! ```sh
//! GNTTAB_STRESS_ROUNDS=2000 cargo test --release --test teardown_stress -- --ignored --test-threads 1
//! ```
//!
//! docs/testing.md explains how to run it under ThreadSanitizer.

#[macro_use]
mod common;

use gnttab::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Grant refs each guest offers the backends.
const REFS: u32 = 48;

fn rounds(default: u64) -> u64 {
    std::env::var("GNTTAB_STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Live guests the backends may map from (ids are only a hint: a guest may die right after
/// being picked, which the hypercalls must handle).
struct Guests(Mutex<Vec<DomId>>);

impl Guests {
    fn pick(&self, r: &mut u64) -> Option<DomId> {
        let g = self.0.lock().unwrap();
        if g.is_empty() {
            None
        } else {
            Some(g[(next(r) % g.len() as u64) as usize])
        }
    }
}

fn guest_cfg(name: String) -> DomainConfig {
    DomainConfig::new(name)
        .memory_pages(u64::from(REFS) + 4)
        .max_grant_frames(1)
}

/// Creates a guest that grants `REFS` refs to each backend.
fn spawn_guest<D: Design>(hv: &Hypervisor<D>, n: u64, backends: &[DomId]) -> Option<DomId> {
    let id = hv.create_domain(guest_cfg(format!("guest-{n}"))).ok()?;
    let g = hv.guest(id)?;
    for r in 0..REFS {
        let to = backends[r as usize % backends.len()];
        g.grant_access(GrantRef(r), to, Gfn(u64::from(r)), r % 3 == 0)
            .expect("ref in range");
    }
    Some(id)
}

/// One backend vCPU: map batches from live guests, unmap them, repeat. If its domain is
/// killed (hypercalls fail with -ESRCH), it waits for the toolstack to recreate it.
fn backend_loop<D: Design>(
    hv: &Hypervisor<D>,
    name: &str,
    vcpu: u16,
    guests: &Guests,
    stop: &AtomicBool,
    seed: u64,
    mapped: &AtomicU64,
) {
    let mut r = seed | 1;
    let base = 0x2000_0000 + u64::from(vcpu) * 0x100_0000;
    while !stop.load(Ordering::Relaxed) {
        let Some(id) = hv.domain_by_name(name) else {
            std::thread::yield_now();
            continue;
        };
        let Ok(mut cx) = hv.vcpu(id, vcpu) else {
            std::thread::yield_now();
            continue;
        };
        'session: while !stop.load(Ordering::Relaxed) {
            let n = 1 + (next(&mut r) % 8) as usize;
            let mut ops = Vec::with_capacity(n);
            for i in 0..n {
                let Some(g) = guests.pick(&mut r) else { break };
                let gref = GrantRef((next(&mut r) % u64::from(REFS)) as u32);
                let mut flags = match next(&mut r) % 3 {
                    0 => GntMap::HOST_MAP,
                    1 => GntMap::DEVICE_MAP,
                    _ => GntMap::HOST_MAP | GntMap::DEVICE_MAP,
                };
                if gref.0 % 3 == 0 {
                    flags |= GntMap::READONLY;
                }
                ops.push(MapGrantRef::new(g, gref, flags, base + i as u64 * 4096));
            }
            if cx.map_grant_ref(&mut ops).is_err() {
                break 'session; // our domain is dying
            }
            let mut un: Vec<_> = ops
                .iter()
                .enumerate()
                .filter(|(_, o)| o.status == GntSt::Okay)
                .map(|(i, o)| {
                    let f = GntMap::from_bits_retain(o.flags);
                    let host = if f.contains(GntMap::HOST_MAP) {
                        base + i as u64 * 4096
                    } else {
                        0
                    };
                    let dev = if f.contains(GntMap::DEVICE_MAP) {
                        o.dev_bus_addr
                    } else {
                        0
                    };
                    UnmapGrantRef::new(o.handle, host, dev)
                })
                .collect();
            for o in &ops {
                assert!(
                    // general_error: the grant was ended or its granter is dying; bad_page:
                    // the granter died after the map's state check and its memory is gone
                    // (spec 11.3); bad_domain: it is destroyed.
                    matches!(
                        o.status,
                        GntSt::Okay
                            | GntSt::GeneralError
                            | GntSt::BadDomain
                            | GntSt::BadPage
                            | GntSt::NoSpace
                    ),
                    "unexpected map status {o:?}"
                );
            }
            mapped.fetch_add(un.len() as u64, Ordering::Relaxed);
            if cx.unmap_grant_ref(&mut un).is_err() {
                // Killed between map and unmap: teardown releases what we hold.
                break 'session;
            }
            for u in &un {
                assert_eq!(u.status, GntSt::Okay, "unmap of a live mapping: {u:?}");
            }
        }
    }
}

/// Toolstack + guests: create and destroy guests (and sometimes a backend, while it holds
/// mappings), guests ending and re-granting access.
fn toolstack_loop<D: Design>(
    hv: &Hypervisor<D>,
    backend_names: &[&str],
    backend_cfg: &dyn Fn(&str) -> DomainConfig,
    guests: &Guests,
    rounds: u64,
    seed: u64,
) {
    let mut r = seed | 1;
    let mut n = 0u64;
    let backend_ids = || -> Vec<DomId> {
        backend_names
            .iter()
            .filter_map(|b| hv.domain_by_name(b))
            .collect()
    };
    for round in 0..rounds {
        // Keep 2-4 guests alive.
        while guests.0.lock().unwrap().len() < 2 + (next(&mut r) % 3) as usize {
            n += 1;
            let bs = backend_ids();
            if bs.is_empty() {
                break;
            }
            if let Some(id) = spawn_guest(hv, n, &bs) {
                guests.0.lock().unwrap().push(id);
            } else {
                break;
            }
        }
        // A guest ends access to (and re-grants) a few refs.
        if let Some(g) = guests.pick(&mut r) {
            if let Some(gv) = hv.guest(g) {
                for _ in 0..4 {
                    let gref = GrantRef((next(&mut r) % u64::from(REFS)) as u32);
                    let snap = gv.entry_snapshot(gref).expect("ref in range");
                    if gv.end_access(gref).expect("ref in range") {
                        gv.grant_access(gref, snap.domid, Gfn(u64::from(gref.0)), gref.0 % 3 == 0)
                            .expect("ref in range");
                    }
                }
            }
        }
        // Destroy a guest every few rounds, stepping its teardown while others run.
        if round % 3 == 2 {
            let victim = {
                let mut g = guests.0.lock().unwrap();
                if g.len() > 1 {
                    let i = (next(&mut r) % g.len() as u64) as usize;
                    Some(g.swap_remove(i))
                } else {
                    None
                }
            };
            if let Some(v) = victim {
                let mut t = hv.kill_domain(v).expect("guest alive");
                while t.step() == Step::More {
                    assert!(t.stats().longest_step.as_secs() < 5);
                    std::thread::yield_now();
                }
            }
        }
        // Now and then kill a backend while it maps, and bring it back.
        if round % 17 == 16 {
            let name = backend_names[(next(&mut r) % backend_names.len() as u64) as usize];
            if let Some(b) = hv.domain_by_name(name) {
                let st = hv.kill_domain(b).expect("backend alive").run();
                assert!(st.longest_step.as_secs() < 5);
                // A backend's own pages are never granted, so it is destroyed at once.
                assert!(st.destroyed, "backend {name} left as a zombie: {st:?}");
                hv.create_domain(backend_cfg(name))
                    .expect("recreate backend");
            }
        }
        std::thread::yield_now();
    }
}

fn stress<D: Design>(rounds: u64, strict: bool) {
    let hv = Hypervisor::<D>::new(HypervisorConfig {
        seed: 7,
        ..HypervisorConfig::default()
    });
    let backend_cfg = move |name: &str| {
        let c = DomainConfig::new(name).vcpus(2).memory_pages(4);
        if strict {
            c.iommu(IommuMode::Strict)
        } else {
            c
        }
    };
    let names = ["backend-a", "backend-b"];
    for b in names {
        hv.create_domain(backend_cfg(b)).unwrap();
    }
    let baseline_frames = hv.machine().allocated_frames();
    let guests = Guests(Mutex::new(Vec::new()));
    let stop = AtomicBool::new(false);
    let mapped = AtomicU64::new(0);
    std::thread::scope(|s| {
        // Two backends: backend-a on vCPUs 0 and 1, backend-b on vCPU 0 (3 mapping threads
        // plus the toolstack; the machine has 2 cores, so they interleave).
        let (hv, guests, stop, mapped) = (&hv, &guests, &stop, &mapped);
        let workers = [("backend-a", 0u16), ("backend-a", 1), ("backend-b", 0)].map(|(name, v)| {
            s.spawn(move || {
                backend_loop(
                    hv,
                    name,
                    v,
                    guests,
                    stop,
                    0x9E37 + u64::from(v) * 31 + name.len() as u64,
                    mapped,
                )
            })
        });
        toolstack_loop(hv, &names, &backend_cfg, guests, rounds, 0xC0FFEE);
        // On a loaded machine the toolstack may finish before a backend thread ran at all:
        // let the backends map something before stopping them (bounded wait).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while mapped.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().expect("backend thread");
        }
    });
    assert!(mapped.load(Ordering::Relaxed) > 0, "no map ever succeeded");
    eprintln!(
        "{}: {rounds} rounds, {} maps (strict IOMMU {strict})",
        D::NAME,
        mapped.load(Ordering::Relaxed)
    );
    hv.check().assert_ok();
    // Destroy every guest; nothing maps them any more, so each is destroyed for good.
    for g in guests.0.into_inner().unwrap() {
        let st = hv.kill_domain(g).unwrap().run();
        assert!(st.destroyed, "{g:?} left as a zombie");
    }
    hv.check().assert_ok();
    // Back to the baseline: the two backends (re-created backends have the same size) and
    // frame 0; no zombie, no leaked frame, handle, pin, bus frame or quota unit.
    assert_eq!(
        hv.machine().allocated_frames(),
        baseline_frames,
        "frames leaked"
    );
    for b in names {
        let d = hv.domain(hv.domain_by_name(b).unwrap()).unwrap();
        if let Some(q) = d.quota() {
            assert_eq!(q.idle(), q.limit(), "{b}: quota units leaked");
        }
    }
    let left = hv.domain_ids();
    assert_eq!(left.len(), names.len(), "zombies left: {left:?}");
}

fn small<D: Design>() {
    stress::<D>(rounds(60).min(60), false);
}

fn small_strict_iommu<D: Design>() {
    stress::<D>(rounds(60).min(60), true);
}

fn heavy<D: Design>() {
    stress::<D>(rounds(200), false);
}

fn heavy_strict_iommu<D: Design>() {
    stress::<D>(rounds(200), true);
}

design_tests!(
    small,
    small_strict_iommu,
    #[ignore = "heavy; sized by GNTTAB_STRESS_ROUNDS"]
    heavy,
    #[ignore = "heavy; sized by GNTTAB_STRESS_ROUNDS"]
    heavy_strict_iommu,
);
