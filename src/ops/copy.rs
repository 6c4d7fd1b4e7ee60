//! `GNTTABOP_copy` (spec 8.1), generic over the design.
//!
//! Each element copies bytes between two "buffers": a grant of some domain (acquired with a
//! host read pin for the source or a host write pin for the destination, plus a page
//! reference) or one of the caller's own frames (a page reference). Buffers stay acquired
//! across consecutive elements that name the same grant or frame (Xen `d28f42f270`) and are
//! released at the end of the batch, on any failed element, or at a preemption point.
//!
//! No two grant-table locks are ever held at once: each acquisition and release takes and
//! drops its own domain's read-side section and entry lock. What keeps both frames valid
//! during the byte copy is the pins plus page references.

use super::{get_paged_frame, unpin_and_clear, Env};
use crate::abi::{
    gntcopy, CopyPtr, DomId, Gfn, GntMap, GntSt, GnttabCopy, GrantRef, Mfn, PAGE_SIZE,
};
use crate::design::{Design, SlotExt};
use crate::domain::{Domain, DomainState};
use crate::grant::{pin, EntryRef};
use crate::hooks::{HookAction, HookPoint};
use crate::hypervisor::VcpuCtx;
use crate::reclaim::{self, Guard};

/// What a cached buffer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Gref(u32),
    Frame(u64),
}

/// An acquired buffer.
struct Buf<'g, D: Design> {
    key: Key,
    mfn: Mfn,
    /// The grant held (domain, entry) for a `Gref` buffer.
    grant: Option<(&'g Domain<D>, EntryRef<'g, SlotExt<D>>)>,
    /// Source (read pin) or destination (write pin).
    readonly: bool,
    /// A writable type reference was taken (destinations).
    typed: bool,
    /// Byte window usable by the copy: `[start, start + len)` (v1: the whole page).
    start: usize,
    len: usize,
}

/// A side's raw domid and the domain it names.
type Side<'g, D> = (DomId, &'g Domain<D>);

/// Per-hypercall copy state: the domains named by the cached sides and the cached buffers.
struct State<'g, D: Design> {
    /// `(raw source domid, raw dest domid)` as given (DOMID_SELF and the caller's numeric id
    /// are different keys, as in Xen), with the looked-up domains.
    doms: Option<(Side<'g, D>, Side<'g, D>)>,
    src: Option<Buf<'g, D>>,
    dst: Option<Buf<'g, D>>,
    /// Bounce buffer for the bytes (source and destination may be one frame), grown on demand
    /// and reused by every element of the batch: zeroing a page-sized buffer per element
    /// cost more than copying 1,500 bytes.
    bounce: Vec<u8>,
}

pub(crate) fn copy<D: Design>(cx: &VcpuCtx<'_, D>, ops: &mut [GnttabCopy]) {
    let g = reclaim::pin();
    let env = Env::of(cx);
    let mut st = State {
        doms: None,
        src: None,
        dst: None,
        bounce: Vec::new(),
    };
    for (i, op) in ops.iter_mut().enumerate() {
        // Preemption point before every element but the first: a continuation re-issues the
        // hypercall for the rest, with nothing cached (invisible to the guest; XSA-318).
        if i > 0 && env.hv.hook(HookPoint::CopyPreempt, env.ld.id(), env.vcpu) == HookAction::Fail {
            release_all(&env, &mut st);
            st.doms = None;
        }
        op.status = match copy_one(&env, &mut st, op, &g) {
            Ok(()) => GntSt::Okay,
            Err(s) => {
                release_buf(&env, &mut st.src);
                release_buf(&env, &mut st.dst);
                s
            }
        };
    }
    release_all(&env, &mut st);
}

fn release_all<D: Design>(env: &Env<'_, D>, st: &mut State<'_, D>) {
    release_buf(env, &mut st.src);
    release_buf(env, &mut st.dst);
}

/// Lookup for one side (`gnttab_copy_lock_domain`): a frame side must be the caller's own
/// (`DOMID_SELF`); lookup by any id.
fn side_domain<'g, D: Design>(
    env: &Env<'g, D>,
    p: &CopyPtr,
    is_gref: bool,
    g: &'g Guard,
) -> Result<&'g Domain<D>, GntSt> {
    if !is_gref && p.domid != DomId::SELF {
        return Err(GntSt::PermissionDenied);
    }
    if p.domid == DomId::SELF {
        return Ok(env.ld);
    }
    // XSM: default policy allows copy.
    env.hv.registry.get(p.domid, g).ok_or(GntSt::BadDomain)
}

fn copy_one<'g, D: Design>(
    env: &Env<'g, D>,
    st: &mut State<'g, D>,
    op: &GnttabCopy,
    g: &'g Guard,
) -> Result<(), GntSt> {
    // 1. Zero-length copies are fully ignored (a4a790f432, after XSA-448).
    if op.len == 0 {
        return Ok(());
    }
    let src_gref = op.flags & gntcopy::SOURCE_GREF != 0;
    let dst_gref = op.flags & gntcopy::DEST_GREF != 0;
    // 2. New domains named: drop everything cached and look both up again.
    let same =
        matches!(st.doms, Some(((s, _), (d, _))) if s == op.source.domid && d == op.dest.domid);
    if !same {
        release_all(env, st);
        st.doms = None;
        let sd = side_domain(env, &op.source, src_gref, g)?;
        let dd = side_domain(env, &op.dest, dst_gref, g)?;
        st.doms = Some(((op.source.domid, sd), (op.dest.domid, dd)));
    }
    let ((_, sd), (_, dd)) = st.doms.expect("set above");
    // 3-4. Claim the buffers that are not already held.
    let sk = if src_gref {
        Key::Gref(op.source.u as u32)
    } else {
        Key::Frame(op.source.u)
    };
    if st.src.as_ref().map(|b| b.key) != Some(sk) {
        release_buf(env, &mut st.src);
        st.src = Some(claim(env, sd, sk, true)?);
    }
    let dk = if dst_gref {
        Key::Gref(op.dest.u as u32)
    } else {
        Key::Frame(op.dest.u)
    };
    if st.dst.as_ref().map(|b| b.key) != Some(dk) {
        release_buf(env, &mut st.dst);
        st.dst = Some(claim(env, dd, dk, false)?);
    }
    let (src, dst) = (
        st.src.as_ref().expect("claimed"),
        st.dst.as_ref().expect("claimed"),
    );
    // 5. Ranges: inside the page, then inside the buffers' windows.
    let (so, doff, len) = (
        op.source.offset as usize,
        op.dest.offset as usize,
        op.len as usize,
    );
    if so + len > PAGE_SIZE || doff + len > PAGE_SIZE {
        return Err(GntSt::BadCopyArg);
    }
    if so < src.start
        || so + len > src.start + src.len
        || doff < dst.start
        || doff + len > dst.start + dst.len
    {
        return Err(GntSt::GeneralError);
    }
    // 6. The bytes.
    let m = &env.hv.machine;
    let (sf, df) = (
        m.frame(src.mfn).expect("referenced frame exists"),
        m.frame(dst.mfn).expect("referenced frame exists"),
    );
    if st.bounce.len() < len {
        st.bounce.resize(len, 0);
    }
    let tmp = &mut st.bounce[..len];
    sf.read(so, tmp);
    df.write(doff, tmp);
    Ok(())
}

/// `gnttab_copy_claim_buf`.
fn claim<'g, D: Design>(
    env: &Env<'g, D>,
    d: &'g Domain<D>,
    key: Key,
    readonly: bool,
) -> Result<Buf<'g, D>, GntSt> {
    let mut b = match key {
        Key::Gref(r) => {
            let (e, mfn) = acquire_grant_for_copy(env, d, GrantRef(r), readonly)?;
            Buf {
                key,
                mfn,
                grant: Some((d, e)),
                readonly,
                typed: false,
                start: 0,
                len: PAGE_SIZE,
            }
        }
        Key::Frame(gfn) => {
            // The caller's own frame, with a page reference. Not `d`: the domains are cached
            // by raw domid, so a frame side repeating a grant side's foreign domid is never
            // looked up (no DOMID_SELF check) and `d` may be that foreign domain.
            let mfn = get_paged_frame(env.hv, env.ld, Gfn(gfn))?;
            Buf {
                key,
                mfn,
                grant: None,
                readonly,
                typed: false,
                start: 0,
                len: PAGE_SIZE,
            }
        }
    };
    if !readonly {
        if !env.hv.machine.get_writable_type(b.mfn) {
            let mut o = Some(b);
            release_buf(env, &mut o);
            return Err(GntSt::GeneralError);
        }
        b.typed = true;
    }
    Ok(b)
}

/// `acquire_grant_for_copy` for v1 grants: a host read (source) or write (destination) pin
/// and a page reference.
fn acquire_grant_for_copy<'g, D: Design>(
    env: &Env<'g, D>,
    rd: &'g Domain<D>,
    gref: GrantRef,
    readonly: bool,
) -> Result<(EntryRef<'g, SlotExt<D>>, Mfn), GntSt> {
    let me = env.ld.id();
    let incr = if readonly {
        pin::HSTR_INC
    } else {
        pin::HSTW_INC
    };
    let _rl = env.read(rd);
    let e = rd.gt.entry(gref).ok_or(GntSt::BadGntref)?;
    let mut act = e.active.lock();
    if act.pin != 0 && (act.domid != me || pin::would_overflow(act.pin, incr)) {
        return Err(GntSt::GeneralError);
    }
    let mfn = if act.pin == 0 || (!readonly && !pin::has_writable(act.pin)) {
        // Unpinned, or the first writable use: status bits, then the frame from the entry.
        e.shared.set_status(act.pin != 0, readonly, false, me)?;
        let gfn = Gfn(u64::from(e.shared.frame()));
        let mfn = match get_paged_frame(env.hv, rd, gfn) {
            Ok(m) => m,
            Err(st) => {
                e.shared.clear_status(act.status_to_clear(readonly));
                return Err(st);
            }
        };
        if act.pin == 0 {
            act.domid = me;
            act.mfn = mfn;
        } else if mfn != act.mfn {
            // XSA-500: an upgrade re-read the entry and found another frame than the one the
            // existing pins use; the new reference would protect the wrong page.
            env.hv.put_page(mfn);
            e.shared.clear_status(act.status_to_clear(readonly));
            return Err(GntSt::GeneralError);
        }
        mfn
    } else {
        // Already pinned and compatible: a reference on the frame the pins use.
        if rd.state() != DomainState::Alive || !env.hv.get_page(act.mfn, rd.id()) {
            return Err(GntSt::BadDomain);
        }
        act.mfn
    };
    act.pin += incr;
    Ok((e, mfn))
}

/// `gnttab_copy_release_buf`: the pin first (with the status bits), then the type and page
/// references (XSA-236 order).
fn release_buf<D: Design>(env: &Env<'_, D>, b: &mut Option<Buf<'_, D>>) {
    let Some(b) = b.take() else { return };
    if let Some((rd, e)) = b.grant {
        let _rl = env.read(rd);
        let mut act = e.active.lock();
        let parts = if b.readonly {
            GntMap::HOST_MAP | GntMap::READONLY
        } else {
            GntMap::HOST_MAP
        };
        unpin_and_clear(&mut act, e.shared, parts);
    }
    if b.typed {
        env.hv.machine.put_writable_type(b.mfn);
    }
    env.hv.put_page(b.mfn);
}
