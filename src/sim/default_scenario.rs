//! The default scenario (`cargo run --release`): one backend domain with two vCPU threads
//! mapping and unmapping grants of four guest domains, while the guests keep granting and
//! ending access, for a fixed time. Reports throughput, the fast/slow maptrack split and the
//! invariant checker's verdict at the end.

use crate::abi::{DomId, Gfn, GntMap, GntSt, GrantRef, MapGrantRef, UnmapGrantRef};
use crate::check::CheckReport;
use crate::design::Design;
use crate::domain::{DomainConfig, DomainStats};
use crate::hypervisor::{Hypervisor, HypervisorConfig};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Parameters of the default scenario.
#[derive(Clone, Debug)]
pub struct Params {
    /// Guest domains granting pages to the backend.
    pub guests: u16,
    /// Backend vCPU threads.
    pub backend_vcpus: u16,
    /// Grant refs each guest cycles through.
    pub refs_per_guest: u32,
    /// Map ops per hypercall (and the matching unmap batch).
    pub batch: usize,
    /// Wall-clock duration.
    pub duration: Duration,
    /// Seed for the workload's choices.
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            guests: 4,
            backend_vcpus: 2,
            refs_per_guest: 256,
            batch: 8,
            duration: Duration::from_secs(3),
            seed: 1,
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Design name.
    pub design: &'static str,
    /// Wall-clock time of the measured run.
    pub elapsed: Duration,
    /// Map ops issued (every element of every batch).
    pub map_ops: u64,
    /// Unmap ops issued.
    pub unmap_ops: u64,
    /// Map statuses by value.
    pub map_status: BTreeMap<i16, u64>,
    /// Guest end-access attempts that succeeded / failed (grant in use).
    pub ends_ok: u64,
    /// Failed end-access attempts.
    pub ends_busy: u64,
    /// Backend counters (fast vs slow records, flushes).
    pub backend: DomainStats,
    /// The invariant checker's verdict after all threads stopped.
    pub check: CheckReport,
}

impl Outcome {
    /// Grant operations (map + unmap elements) per second.
    pub fn ops_per_sec(&self) -> f64 {
        (self.map_ops + self.unmap_ops) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn next(s: &mut u64) -> u64 {
    // splitmix64: workload choices only (not the hypervisor's).
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs the default scenario on design `D`.
pub fn run<D: Design>(p: &Params) -> Outcome {
    let hv = Hypervisor::<D>::new(HypervisorConfig {
        seed: p.seed,
        ..HypervisorConfig::default()
    });
    let backend = hv
        .create_domain(
            DomainConfig::new("backend")
                .vcpus(p.backend_vcpus)
                .memory_pages(16),
        )
        .expect("create backend");
    let frames = p
        .refs_per_guest
        .div_ceil(crate::abi::SHGNT_PER_PAGE_V1)
        .max(1);
    let guests: Vec<DomId> = (0..p.guests)
        .map(|i| {
            hv.create_domain(
                DomainConfig::new(format!("guest{i}"))
                    .memory_pages(u64::from(p.refs_per_guest) + 8)
                    .max_grant_frames(frames.max(1)),
            )
            .expect("create guest")
        })
        .collect();
    // Grow each guest's table and grant every ref once.
    for &g in &guests {
        let mut cx = hv.vcpu(g, 0).expect("guest vcpu");
        let mut st = [crate::abi::SetupTable {
            dom: DomId::SELF,
            nr_frames: frames,
            ..Default::default()
        }];
        cx.setup_table(&mut st).expect("setup_table");
        assert_eq!(st[0].status, GntSt::Okay);
        let gv = hv.guest(g).expect("guest view");
        for r in 0..p.refs_per_guest {
            gv.grant_access(GrantRef(r), backend, Gfn(u64::from(r)), r % 4 == 0)
                .expect("grant");
        }
    }

    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (per_backend, (ends_ok, ends_busy)) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..p.backend_vcpus)
            .map(|v| {
                let (hv, guests, stop) = (&hv, &guests, &stop);
                s.spawn(move || backend_loop(hv, backend, v, guests, p, stop))
            })
            .collect();
        let guest_thread = {
            let (hv, guests, stop) = (&hv, &guests, &stop);
            s.spawn(move || guest_loop(hv, backend, guests, p, stop))
        };
        std::thread::sleep(p.duration);
        stop.store(true, Ordering::Relaxed);
        let per: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("backend thread"))
            .collect();
        (per, guest_thread.join().expect("guest thread"))
    });
    let elapsed = start.elapsed();
    let mut out = Outcome {
        design: D::NAME,
        elapsed,
        map_ops: 0,
        unmap_ops: 0,
        map_status: BTreeMap::new(),
        ends_ok,
        ends_busy,
        backend: hv.domain(backend).expect("backend").stats(),
        check: hv.check(),
    };
    for (maps, unmaps, st) in per_backend {
        out.map_ops += maps;
        out.unmap_ops += unmaps;
        for (k, v) in st {
            *out.map_status.entry(k).or_default() += v;
        }
    }
    out
}

type BackendTally = (u64, u64, BTreeMap<i16, u64>);

fn backend_loop<D: Design>(
    hv: &Hypervisor<D>,
    backend: DomId,
    vcpu: u16,
    guests: &[DomId],
    p: &Params,
    stop: &AtomicBool,
) -> BackendTally {
    let mut cx = hv.vcpu(backend, vcpu).expect("backend vcpu");
    let mut rng = p.seed ^ ((u64::from(vcpu) + 1) * 0x1234_5678);
    let mut maps = 0;
    let mut unmaps = 0;
    let mut status: BTreeMap<i16, u64> = BTreeMap::new();
    let mut ops = vec![MapGrantRef::default(); p.batch];
    let mut un = Vec::with_capacity(p.batch);
    // Each vCPU maps into its own window of host addresses.
    let base = 0x1000_0000 + u64::from(vcpu) * 0x100_0000;
    while !stop.load(Ordering::Relaxed) {
        for (i, op) in ops.iter_mut().enumerate() {
            let g = guests[(next(&mut rng) % guests.len() as u64) as usize];
            let r = (next(&mut rng) % u64::from(p.refs_per_guest)) as u32;
            let ro = r % 4 == 0;
            let mut flags = GntMap::HOST_MAP;
            if ro {
                flags |= GntMap::READONLY;
            }
            *op = MapGrantRef::new(g, GrantRef(r), flags, base + i as u64 * 4096);
        }
        cx.map_grant_ref(&mut ops).expect("map hypercall");
        maps += ops.len() as u64;
        un.clear();
        for (i, op) in ops.iter().enumerate() {
            *status.entry(op.status.code()).or_default() += 1;
            if op.status.is_ok() {
                un.push(UnmapGrantRef::new(op.handle, base + i as u64 * 4096, 0));
            }
        }
        cx.unmap_grant_ref(&mut un).expect("unmap hypercall");
        unmaps += un.len() as u64;
        for u in &un {
            assert_eq!(u.status, GntSt::Okay, "unmap of a live mapping failed");
        }
    }
    (maps, unmaps, status)
}

fn guest_loop<D: Design>(
    hv: &Hypervisor<D>,
    backend: DomId,
    guests: &[DomId],
    p: &Params,
    stop: &AtomicBool,
) -> (u64, u64) {
    let views: Vec<_> = guests
        .iter()
        .map(|&g| hv.guest(g).expect("guest"))
        .collect();
    let mut rng = p.seed ^ 0xABCD;
    let (mut ok, mut busy) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        let gv = &views[(next(&mut rng) % views.len() as u64) as usize];
        let r = GrantRef((next(&mut rng) % u64::from(p.refs_per_guest)) as u32);
        // End access (fails while the backend has it mapped), then grant a fresh frame.
        if gv.end_access(r).expect("ref in range") {
            ok += 1;
            let gfn = Gfn(next(&mut rng) % u64::from(p.refs_per_guest));
            gv.grant_access(r, backend, gfn, r.0 % 4 == 0)
                .expect("grant");
        } else {
            busy += 1;
        }
        std::thread::yield_now();
    }
    (ok, busy)
}
