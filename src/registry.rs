//! The domain registry: lookups by id and by name that never take a global lock.
//!
//! * By id: a fixed array of [`reclaim::Slot`]s indexed by domid; a lookup is one Acquire load
//!   under the caller's epoch guard.
//! * By name: an immutable name index, replaced wholesale (copy-on-write) whenever a domain is
//!   added or removed and read under the same guard. Names are immutable copies, so a lookup
//!   never touches a domain's own state (seed 000).
//! * Creation (seed 001) reserves the id and the name under the registry's short `create`
//!   lock, builds the domain outside it, then installs it.
//!
//! A removed domain is retired through the epoch: its memory is reclaimed only once no lookup
//! that may have seen it is still running.

use crate::abi::DomId;
use crate::design::Design;
use crate::domain::Domain;
use crate::reclaim::{self, Graveyard, Guard, Slot};
use crate::sync::{Arc, Mutex};
use std::collections::{BTreeMap, BTreeSet};

type NameIndex = BTreeMap<Box<str>, DomId>;

#[derive(Debug, Default)]
struct CreateState {
    next: u16,
    reserved_ids: BTreeSet<u16>,
    reserved_names: BTreeSet<Box<str>>,
}

/// Why a domain could not be registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateError {
    /// The name is taken.
    NameInUse,
    /// Every domain id is in use.
    NoFreeId,
    /// The machine has no memory left for the domain.
    OutOfMemory,
    /// A configuration value is out of range (the message names it).
    BadConfig(&'static str),
}

impl core::fmt::Display for CreateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CreateError::NameInUse => write!(f, "domain name already in use"),
            CreateError::NoFreeId => write!(f, "no free domain id"),
            CreateError::OutOfMemory => write!(f, "out of machine memory"),
            CreateError::BadConfig(m) => write!(f, "bad domain configuration: {m}"),
        }
    }
}

impl std::error::Error for CreateError {}

/// Every domain of one hypervisor.
#[derive(Debug)]
pub(crate) struct Registry<D: Design> {
    slots: Box<[Slot<Arc<Domain<D>>>]>,
    yard: Graveyard<Arc<Domain<D>>>,
    names: Slot<NameIndex>,
    names_yard: Graveyard<NameIndex>,
    create: Mutex<CreateState>,
}

/// An id and name reservation, turned into a registered domain by [`Registry::install`].
#[derive(Debug)]
pub(crate) struct Reservation {
    pub(crate) id: DomId,
    name: Box<str>,
}

impl<D: Design> Registry<D> {
    pub(crate) fn new(max_domains: u16) -> Self {
        let n = (max_domains as usize).min(DomId::FIRST_RESERVED.0 as usize);
        let r = Self {
            slots: (0..n).map(|_| Slot::default()).collect(),
            yard: Graveyard::default(),
            names: Slot::default(),
            names_yard: Graveyard::default(),
            create: Mutex::new(CreateState::default()),
        };
        r.names
            .install(Box::default())
            .expect("fresh name slot is empty");
        r
    }

    /// Lookup by id ("rcu_lock_domain_by_id"): valid while `g` is held.
    #[inline]
    pub(crate) fn get<'g>(&self, id: DomId, g: &'g Guard) -> Option<&'g Domain<D>> {
        self.slots.get(id.0 as usize)?.load(g).map(|d| &**d)
    }

    /// Lookup by id, taking a reference that outlives any guard.
    pub(crate) fn get_arc(&self, id: DomId) -> Option<Arc<Domain<D>>> {
        let g = reclaim::pin();
        self.slots.get(id.0 as usize)?.load(&g).cloned()
    }

    /// Lookup by name.
    pub(crate) fn by_name(&self, name: &str) -> Option<DomId> {
        let g = reclaim::pin();
        self.names.load(&g)?.get(name).copied()
    }

    /// Every registered domain id (a snapshot).
    pub(crate) fn ids(&self) -> Vec<DomId> {
        let g = reclaim::pin();
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.load(&g).is_some())
            .map(|(i, _)| DomId(i as u16))
            .collect()
    }

    /// Reserves an id and a name (seed 001: only this is done under the registry lock).
    pub(crate) fn reserve(&self, name: &str) -> Result<Reservation, CreateError> {
        let g = reclaim::pin();
        let mut st = self.create.lock();
        let taken = self.names.load(&g).is_some_and(|n| n.contains_key(name));
        if taken || st.reserved_names.contains(name) {
            return Err(CreateError::NameInUse);
        }
        let n = self.slots.len();
        if n == 0 {
            return Err(CreateError::NoFreeId);
        }
        let start = st.next as usize % n;
        let mut id = None;
        for k in 0..n {
            let i = (start + k) % n;
            if self.slots[i].load(&g).is_none() && !st.reserved_ids.contains(&(i as u16)) {
                id = Some(i as u16);
                break;
            }
        }
        let id = id.ok_or(CreateError::NoFreeId)?;
        st.next = ((id as usize + 1) % n) as u16;
        st.reserved_ids.insert(id);
        st.reserved_names.insert(name.into());
        Ok(Reservation {
            id: DomId(id),
            name: name.into(),
        })
    }

    /// Drops a reservation whose domain could not be built.
    pub(crate) fn cancel(&self, r: Reservation) {
        let mut st = self.create.lock();
        st.reserved_ids.remove(&r.id.0);
        st.reserved_names.remove(&r.name);
    }

    /// Installs a built domain under its reservation and publishes its name.
    pub(crate) fn install(&self, r: Reservation, d: Arc<Domain<D>>) {
        self.slots[r.id.0 as usize]
            .install(Box::new(d))
            .expect("reserved id slot is empty");
        let g = reclaim::pin();
        let mut st = self.create.lock();
        let mut names = self.names.load(&g).cloned().unwrap_or_default();
        names.insert(r.name.clone(), r.id);
        self.replace_names(names, &g);
        st.reserved_ids.remove(&r.id.0);
        st.reserved_names.remove(&r.name);
    }

    /// Removes a domain from the id and name indexes; its memory is reclaimed once no lookup
    /// can still hold it. Returns false if `id` is not registered.
    pub(crate) fn remove(&self, id: DomId) -> bool {
        let g = reclaim::pin();
        let Some(slot) = self.slots.get(id.0 as usize) else {
            return false;
        };
        let _st = self.create.lock();
        let Some(cur) = slot.load(&g) else {
            return false;
        };
        let name: Box<str> = cur.name().into();
        if !slot.retire(cur, &g, &self.yard) {
            return false;
        }
        let mut names = self.names.load(&g).cloned().unwrap_or_default();
        names.remove(&name);
        self.replace_names(names, &g);
        true
    }

    /// Swaps in a new name index (caller holds `create`, so index writers are serialised).
    fn replace_names(&self, names: NameIndex, g: &Guard) {
        self.names.replace(Box::new(names), g, &self.names_yard);
    }
}
