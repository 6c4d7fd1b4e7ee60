//! `GNTTABOP_setup_table` and `GNTTABOP_query_size` (spec 8.2-8.4).

use crate::abi::{DomId, Errno, GntSt, QuerySize, SetupTable};
use crate::design::Design;
use crate::domain::Domain;
use crate::hypervisor::VcpuCtx;
use crate::reclaim::{self, Guard};
use crate::table::TableSync;

/// Lookup "by any id": `DOMID_SELF` names the caller.
fn lookup_any<'g, D: Design>(
    cx: &'g VcpuCtx<'_, D>,
    dom: DomId,
    g: &'g Guard,
) -> Option<&'g Domain<D>> {
    if dom == DomId::SELF {
        Some(&cx.dom)
    } else {
        cx.hv.registry.get(dom, g)
    }
}

/// XSM default policy for table operations on another domain: the caller must be a control
/// domain.
fn may_manage<D: Design>(cx: &VcpuCtx<'_, D>, d: &Domain<D>) -> bool {
    d.id() == cx.dom.id() || cx.dom.privileged()
}

pub(crate) fn setup_table<D: Design>(
    cx: &VcpuCtx<'_, D>,
    ops: &mut [SetupTable],
) -> Result<(), Errno> {
    let [op] = ops else {
        return Err(Errno::Inval);
    };
    let g = reclaim::pin();
    op.frame_list.clear();
    op.status = setup_one(cx, op, &g).err().unwrap_or(GntSt::Okay);
    Ok(())
}

fn setup_one<D: Design>(cx: &VcpuCtx<'_, D>, op: &mut SetupTable, g: &Guard) -> Result<(), GntSt> {
    let d = lookup_any(cx, op.dom, g).ok_or(GntSt::BadDomain)?;
    if !may_manage(cx, d) {
        return Err(GntSt::PermissionDenied);
    }
    let w = D::Table::write(&d.gt.lock, &cx.hv.pcpus);
    if op.nr_frames > d.gt.max_frames() {
        return Err(GntSt::GeneralError);
    }
    if op.nr_frames > d.gt.nr_frames() {
        d.gt.grow(&w, &cx.hv.machine, d.id(), op.nr_frames)?;
    }
    op.frame_list = d.gt.frame_list(op.nr_frames);
    Ok(())
}

pub(crate) fn query_size<D: Design>(
    cx: &VcpuCtx<'_, D>,
    ops: &mut [QuerySize],
) -> Result<(), Errno> {
    let [op] = ops else {
        return Err(Errno::Inval);
    };
    let g = reclaim::pin();
    op.status = match lookup_any(cx, op.dom, &g) {
        None => GntSt::BadDomain,
        Some(d) if !may_manage(cx, d) => GntSt::PermissionDenied,
        Some(d) => {
            let _rl = D::Table::read(&d.gt.lock, &cx.hv.pcpus, cx.cpu);
            op.nr_frames = d.gt.nr_frames();
            op.max_nr_frames = d.gt.max_frames();
            GntSt::Okay
        }
    };
    Ok(())
}
