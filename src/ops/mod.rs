//! The hypercalls, written once for every design.
//!
//! Each function follows the spec's ordered checks; the design's strategies decide what a
//! table read-side section costs ([`TableSync`](crate::table::TableSync)) and where a mapping
//! is recorded ([`SlotPolicy`](crate::maptrack::SlotPolicy)).

pub(crate) mod copy;
pub(crate) mod map;
pub(crate) mod table;
pub(crate) mod unmap;

use crate::abi::{Gfn, GntMap, GntSt, Mfn};
use crate::design::Design;
use crate::domain::Domain;
use crate::grant::{ActiveData, SharedEntry};
use crate::hypervisor::{Hypervisor, VcpuCtx};
use crate::machine::{HostAddr, P2mEntry, Tlb};

/// The caller's identity, borrowed from a [`VcpuCtx`] (separately from its random state).
#[derive(Debug)]
pub struct Env<'a, D: Design> {
    pub(crate) hv: &'a Hypervisor<D>,
    pub(crate) ld: &'a Domain<D>,
    pub(crate) vcpu: u16,
    pub(crate) cpu: usize,
}

impl<'a, D: Design> Env<'a, D> {
    pub(crate) fn of(cx: &'a VcpuCtx<'_, D>) -> Self {
        Self {
            hv: cx.hv,
            ld: &cx.dom,
            vcpu: cx.vcpu,
            cpu: cx.cpu,
        }
    }

    #[inline]
    pub(crate) fn tlb(&self) -> &'a Tlb {
        &self.ld.vcpus[self.vcpu as usize].tlb
    }

    #[inline]
    pub(crate) fn read<'t>(
        &self,
        d: &'t Domain<D>,
    ) -> <D::Table as crate::table::TableSync>::Read<'t>
    where
        'a: 't,
    {
        <D::Table as crate::table::TableSync>::read(&d.gt.lock, &self.hv.pcpus, self.cpu)
    }
}

/// Drops the page and type references held by the removed `parts` of a mapping of `mfn`
/// (host and/or device bits, plus `READONLY` for a read-only mapping), as unmap phase 2,
/// map undo and teardown do.
#[inline]
pub(crate) fn put_refs<D: Design>(
    hv: &Hypervisor<D>,
    ld: &Domain<D>,
    rd: &Domain<D>,
    mfn: Mfn,
    parts: GntMap,
) {
    let ro = parts.contains(GntMap::READONLY);
    if parts.contains(GntMap::DEVICE_MAP) {
        if !ro {
            hv.machine.put_writable_type(mfn);
        }
        hv.put_page(mfn);
    }
    if parts.contains(GntMap::HOST_MAP) {
        if host_takes_type_ref(ro, ld, rd) {
            hv.machine.put_writable_type(mfn);
        }
        hv.put_page(mfn);
    }
}

/// Removes the uses `parts` from the pin and clears the status bits the drop makes stale
/// (`reduce_status_for_pin`, spec 3.2). Caller holds the entry lock.
#[inline]
pub(crate) fn unpin_and_clear(act: &mut ActiveData, shared: &SharedEntry, parts: GntMap) {
    act.unpin(parts);
    let clear = act.status_to_clear(parts.contains(GntMap::READONLY));
    if clear != 0 {
        shared.clear_status(clear);
    }
}

/// `get_paged_frame`: translates the granter's gfn and takes a page reference.
#[inline]
pub(crate) fn get_paged_frame<D: Design>(
    hv: &Hypervisor<D>,
    rd: &Domain<D>,
    gfn: Gfn,
) -> Result<Mfn, GntSt> {
    match rd.p2m.lookup(gfn) {
        P2mEntry::Absent => Err(GntSt::BadPage),
        P2mEntry::PagedOut(_) => Err(GntSt::Eagain),
        P2mEntry::Present(mfn) => {
            if hv.get_page(mfn, rd.id()) {
                Ok(mfn)
            } else {
                // Not the granter's page (foreign-owned or freed).
                Err(GntSt::BadPage)
            }
        }
    }
}

/// `gnttab_host_mapping_get_page_type`: whether a host mapping takes a writable type
/// reference (x86: writable, and the granter is PV or maps itself).
#[inline]
pub(crate) fn host_takes_type_ref<D: Design>(
    readonly: bool,
    ld: &Domain<D>,
    rd: &Domain<D>,
) -> bool {
    !readonly && (ld.id() == rd.id() || !rd.translated())
}

/// How `host_addr` names a page-table slot for the mapper.
#[inline]
pub(crate) fn host_slot<D: Design>(ld: &Domain<D>, host_addr: u64, flags: GntMap) -> Option<u64> {
    let a = if !ld.translated() && flags.contains(GntMap::CONTAINS_PTE) {
        HostAddr::Pte(host_addr)
    } else {
        HostAddr::Linear(host_addr)
    };
    ld.aspace.slot_of(a)
}
