use gnttab::prelude::*;

fn run<D: Design>() {
    let hv = Hypervisor::<D>::new(HypervisorConfig::default());
    let a = hv.create_domain(DomainConfig::new("a")).unwrap();
    let b = hv.create_domain(DomainConfig::new("b").vcpus(2)).unwrap();
    let ga = hv.guest(a).unwrap();
    for r in 0..4 {
        ga.grant_access(GrantRef(r), b, Gfn(r as u64 + 10), false).unwrap();
    }
    let mut cx = hv.vcpu(b, 0).unwrap();
    // three maps of one gref
    let mut ops: Vec<_> = (0..3).map(|i| MapGrantRef::new(a, GrantRef(1), GntMap::HOST_MAP, 0x10000 + i * 0x1000)).collect();
    cx.map_grant_ref(&mut ops).unwrap();
    for o in &ops { assert_eq!(o.status, GntSt::Okay, "{o:?}"); }
    println!("{}: handles {:?}", D::NAME, ops.iter().map(|o| o.handle).collect::<Vec<_>>());
    hv.check().assert_ok();
    assert_eq!(ga.entry_snapshot(GrantRef(1)).unwrap().flags & (gtf::READING|gtf::WRITING), gtf::READING|gtf::WRITING);
    // partial: device+host map, unmap host then device
    let mut m = [MapGrantRef::new(a, GrantRef(2), GntMap::HOST_MAP | GntMap::DEVICE_MAP, 0x90000)];
    cx.map_grant_ref(&mut m).unwrap();
    assert_eq!(m[0].status, GntSt::Okay);
    hv.check().assert_ok();
    let mut u = [UnmapGrantRef::new(m[0].handle, 0x90000, 0)];
    cx.unmap_grant_ref(&mut u).unwrap();
    assert_eq!(u[0].status, GntSt::Okay);
    hv.check().assert_ok();
    let mut u = [UnmapGrantRef::new(m[0].handle, 0, m[0].dev_bus_addr + 1)];
    cx.unmap_grant_ref(&mut u).unwrap();
    assert_eq!(u[0].status, GntSt::BadDevAddr);
    let mut u = [UnmapGrantRef::new(m[0].handle, 0, m[0].dev_bus_addr)];
    cx.unmap_grant_ref(&mut u).unwrap();
    assert_eq!(u[0].status, GntSt::Okay);
    cx.unmap_grant_ref(&mut u).unwrap();
    assert_eq!(u[0].status, GntSt::BadHandle);
    hv.check().assert_ok();
    let mut un: Vec<_> = ops.iter().enumerate().map(|(i, o)| UnmapGrantRef::new(o.handle, 0x10000 + i as u64 * 0x1000, 0)).collect();
    cx.unmap_grant_ref(&mut un).unwrap();
    for o in &un { assert_eq!(o.status, GntSt::Okay, "{o:?}"); }
    hv.check().assert_ok();
    assert!(ga.end_access(GrantRef(1)).unwrap());
    assert!(ga.end_access(GrantRef(2)).unwrap());
    println!("{}: stats {:?}", D::NAME, hv.domain(b).unwrap().stats());
}

#[test]
fn smoke_fast() { run::<Fast>(); }
#[test]
fn smoke_xen() { run::<Xen>(); }
#[test]
fn smoke_ablations() { run::<XenFastSlots>(); run::<FastNoSlots>(); run::<XenPlainRw>(); }
