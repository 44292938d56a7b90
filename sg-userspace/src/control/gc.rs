//! Session garbage collection: freeing entries idle past their timeout (the kernel
//! already ignores them on lookup; this gives their room back).

use std::time::Duration;

use sg_common::{Session, SessionKey, Timeouts};

use super::error::Result;
use crate::{clock::monotonic_ns, dataplane::sessions::SessionTable};

/// Deletes sessions idle past their timeout (counting the flow cache's hits). Each
/// candidate is read again right before it is deleted, so a session a packet refreshed
/// meanwhile stays. Then the hints of deleted sessions go (see
/// [`SessionTable::rebuild_hints`]), waiting out `grace`. Returns the deleted sessions'
/// interfaces and hooks (ifindex, hook the session was opened on), one entry a session,
/// so their expiry is counted.
pub fn collect_garbage(table: &mut SessionTable, timeouts: &Timeouts, grace: Duration) -> Result<Vec<(u32, u32)>> {
    let expired = |s: &Session| sg_common::session::expired(s.state, s.last_seen_ns, monotonic_ns(), timeouts);
    let candidates: Vec<SessionKey> =
        table.entries()?.into_iter().filter(|(_, s)| expired(s)).map(|(k, _)| k).collect();
    let mut removed = Vec::new();
    for key in candidates {
        let Some(s) = table.effective(&key).filter(|s| expired(s)) else { continue };
        if table.remove(&key) {
            removed.push((key.ifindex, u32::from(s.opened_on)));
        }
    }
    if !removed.is_empty() || table.hints_stale() {
        table.rebuild_hints(grace)?;
    }
    Ok(removed)
}

/// How often expired sessions are freed: half the shortest timeout, within 1 to 10 s.
pub fn gc_period(t: &Timeouts) -> Duration {
    let shortest =
        [t.tcp_established, t.tcp_opening, t.tcp_closing, t.tcp_rst, t.udp_unreplied, t.udp_replied, t.icmp, t.other]
            .into_iter()
            .min()
            .unwrap_or(0);
    Duration::from_nanos(shortest / 2).clamp(Duration::from_secs(1), Duration::from_secs(10))
}
