//! Connection slots for the portal: a bound on connections at once, overall and per
//! client address, so that one workstation (a compromised one, trickling requests)
//! cannot take every slot and lock the others, and the admins, out of the portal and
//! the control API.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// Every slot is taken.
    All,
    /// This client has its share.
    Client,
}

pub(crate) struct Slots {
    total: usize,
    per_client: usize,
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A connection's slot, given back when dropped.
pub(crate) struct Slot {
    slots: Arc<Slots>,
    client: IpAddr,
}

impl Slots {
    pub(crate) fn new(total: usize, per_client: usize) -> Arc<Slots> {
        Arc::new(Slots {
            total,
            per_client,
            held: Mutex::new((0, HashMap::new())),
        })
    }

    pub(crate) fn take(self: &Arc<Self>, client: IpAddr) -> Result<Slot, Full> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.0 >= self.total {
            return Err(Full::All);
        }
        let mine = held.1.entry(client).or_insert(0);
        if *mine >= self.per_client {
            return Err(Full::Client);
        }
        *mine += 1;
        held.0 += 1;
        Ok(Slot {
            slots: self.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        held.0 = held.0.saturating_sub(1);
        if let Some(n) = held.1.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.1.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_cannot_take_every_slot() {
        let slots = Slots::new(5, 2);
        let a: IpAddr = "10.77.0.2".parse().unwrap();
        let b: IpAddr = "10.77.0.3".parse().unwrap();
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(a).unwrap();
        assert_eq!(slots.take(a).err(), Some(Full::Client));
        // Others still get in.
        let held: Vec<Slot> = (0..2).map(|_| slots.take(b).unwrap()).collect();
        let c: IpAddr = "10.77.0.4".parse().unwrap();
        let _c1 = slots.take(c).unwrap();
        assert_eq!(slots.take("10.77.0.5".parse().unwrap()).err(), Some(Full::All));
        // Slots come back when their connections end.
        drop(a1);
        let _a3 = slots.take(a).unwrap();
        drop(held);
        assert!(!slots.held.lock().unwrap().1.contains_key(&b));
        let _b = slots.take(b).unwrap();
    }
}
