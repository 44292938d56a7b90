//! Interfaces held through pinned links: attaching a generation's programs so they stay
//! attached with no process holding them, moving an interface to another generation in
//! one step per hook, and removing it all again.
//!
//! XDP always goes through a BPF link (kernel 5.9 and later): the link is pinned and
//! switched with `BPF_LINK_UPDATE`, which swaps the program under the interface
//! atomically. TC egress uses a TCX link where the kernel has one (6.6 and later), pinned
//! and updated the same way; on older kernels a clsact filter, which the kernel keeps
//! until it is deleted, replaced in place (same priority and handle) through netlink.

use std::path::PathBuf;

use aya::programs::{
    TcAttachType,
    links::{FdLink, LinkError, PinnedLink},
    tc::{SchedClassifierLink, TcHandle},
    xdp::XdpLink,
};
use serde::{Deserialize, Serialize};

use super::{
    attach::{TcHook, XdpModeChoice, attach_tc, attach_xdp, ifindex, remove_clsact},
    error::{DataplaneError, Doing as _, Result},
    pins::{Generation, Pins},
};

/// How one interface is held, as the state file records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldInterface {
    pub iface: String,
    pub ifindex: u32,
    /// "native" or "generic".
    pub xdp_mode: String,
    pub tc: TcRecord,
}

/// Where the egress program of a held interface sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "hook", rename_all = "snake_case")]
pub enum TcRecord {
    /// A pinned TCX link.
    Tcx,
    /// A clsact filter (`created_qdisc`: sgctl added the qdisc and removes it again).
    Clsact { priority: u16, handle: u32, created_qdisc: bool },
}

fn pinned_fd_link(path: &PathBuf) -> Result<FdLink> {
    let pinned = PinnedLink::from_pin(path).doing_with(|| format!("opening the pinned link {}", path.display()))?;
    Ok(pinned.into())
}

fn link_error(what: &str) -> impl Fn(LinkError) -> DataplaneError + '_ {
    move |e| DataplaneError::Refused(format!("{what}: {e}"))
}

/// Attaches `generation`'s programs to `iface` and pins what holds them. Nothing is
/// left attached when it fails.
pub fn attach(generation: &mut Generation, pins: &Pins, iface: &str, mode: XdpModeChoice) -> Result<HeldInterface> {
    let ifindex = ifindex(iface)?;
    let (xdp_id, xdp_mode) = attach_xdp(&mut generation.xdp, ifindex, iface, mode)?;
    let xdp_link = generation.xdp.take_link(xdp_id)?;
    let xdp_link: FdLink = xdp_link.try_into().map_err(link_error("the XDP attachment is not a BPF link"))?;
    let xdp_path = pins.link(ifindex, "xdp");
    // Dropping an unpinned link detaches it: an early return leaves nothing behind.
    let xdp_pinned = xdp_link.pin(&xdp_path).doing_with(|| format!("pinning {}", xdp_path.display()))?;
    let undo_xdp = |e: DataplaneError| {
        let _ = std::fs::remove_file(&xdp_path);
        e
    };
    let (tc_id, hook) = attach_tc(&mut generation.tc, iface).map_err(undo_xdp)?;
    let tc_link = generation.tc.take_link(tc_id).map_err(|e| undo_xdp(e.into()))?;
    let tc = match hook {
        TcHook::Tcx => {
            let fd: FdLink = tc_link.try_into().map_err(link_error("the TCX attachment is not a BPF link"))?;
            let path = pins.link(ifindex, "tcx");
            fd.pin(&path).doing_with(|| format!("pinning {}", path.display())).map_err(undo_xdp)?;
            TcRecord::Tcx
        }
        TcHook::Clsact { created } => {
            let record = TcRecord::Clsact {
                priority: tc_link.priority()?,
                handle: u32::from(tc_link.handle()?),
                created_qdisc: created,
            };
            // The kernel keeps the filter until it is deleted; dropping the handle
            // would delete it.
            std::mem::forget(tc_link);
            record
        }
    };
    drop(xdp_pinned);
    Ok(HeldInterface { iface: iface.to_string(), ifindex, xdp_mode: xdp_mode.to_string(), tc })
}

/// Moves `held` to `generation`'s programs: one atomic replacement per hook.
pub fn switch(generation: &mut Generation, pins: &Pins, held: &HeldInterface) -> Result<()> {
    let what = |hook: &str| format!("switching {} {hook} to generation {}", held.iface, generation.id);
    let xdp = XdpLink::try_from(pinned_fd_link(&pins.link(held.ifindex, "xdp"))?)
        .map_err(link_error("the pinned XDP link"))?;
    let id = generation.xdp.attach_to_link(xdp).doing_with(|| what("XDP"))?;
    // The pin keeps the link; this handle only closes its descriptor.
    drop(generation.xdp.take_link(id)?);
    match held.tc {
        TcRecord::Tcx => {
            let tcx = SchedClassifierLink::try_from(pinned_fd_link(&pins.link(held.ifindex, "tcx"))?)
                .map_err(link_error("the pinned TCX link"))?;
            let id = generation.tc.attach_to_link(tcx).doing_with(|| what("TCX"))?;
            drop(generation.tc.take_link(id)?);
        }
        TcRecord::Clsact { priority, handle, .. } => {
            let filter = SchedClassifierLink::attached(
                &held.iface,
                TcAttachType::Egress,
                priority,
                TcHandle::from(handle),
                None,
            )
            .doing_with(|| what("TC"))?;
            let id = generation.tc.attach_to_link(filter).doing_with(|| what("TC"))?;
            std::mem::forget(generation.tc.take_link(id)?);
        }
    }
    Ok(())
}

/// Detaches `held`: unpins its links (the last reference: the kernel detaches them) and
/// deletes a clsact filter, and the qdisc when sgctl created it.
pub fn detach(pins: &Pins, held: &HeldInterface) -> Result<()> {
    for hook in ["xdp", "tcx"] {
        let path = pins.link(held.ifindex, hook);
        if path.exists() {
            std::fs::remove_file(&path).doing_with(|| format!("unpinning {}", path.display()))?;
        }
    }
    if let TcRecord::Clsact { priority, handle, created_qdisc } = held.tc {
        // The interface may be gone, and its filter with it.
        if ifindex(&held.iface).is_ok_and(|i| i == held.ifindex) {
            if let Ok(filter) =
                SchedClassifierLink::attached(&held.iface, TcAttachType::Egress, priority, TcHandle::from(handle), None)
            {
                use aya::programs::Link as _;
                let _ = filter.detach();
            }
            if created_qdisc {
                remove_clsact(&held.iface);
            }
        }
    }
    Ok(())
}
