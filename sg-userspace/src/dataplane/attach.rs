//! Attaching the programs to an interface (XDP on ingress, TC on egress) and removing
//! them again, including what a killed agent may have left behind.

use std::{
    ffi::CString,
    io,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, XdpMode,
    tc::SchedClassifierLinkId,
    tc::{self, NlOptions, TcAttachOptions},
    xdp::XdpLinkId,
};
use sg_common::program;

use super::{
    error::{DataplaneError, Doing as _, Result},
    object::Dataplane,
};
use crate::paths::pid_file;

/// How the XDP program is attached (`--xdp-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeChoice {
    /// Native (driver) mode, falling back to generic with a message.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode: works on every interface.
    Generic,
}

/// Where the egress program sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcHook {
    /// A TCX link (kernel 6.6 and later).
    Tcx,
    /// A filter on a clsact qdisc; `created` when sgctl added the qdisc.
    Clsact { created: bool },
}

/// The programs attached to one interface; [`Attachment::detach`] undoes it.
#[derive(Debug)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    /// "native" or "generic".
    pub xdp_mode: &'static str,
    pub tc_hook: TcHook,
    xdp_link: XdpLinkId,
    tc_link: SchedClassifierLinkId,
}

/// The interface index of `iface`, or a one-line error.
pub fn ifindex(iface: &str) -> Result<u32> {
    let name = CString::new(iface).map_err(|_| DataplaneError::BadInterfaceName(iface.to_string()))?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(DataplaneError::NoSuchInterface(iface.to_string()));
    }
    Ok(index)
}

/// True when `error` (or its sources) is an OS error of one of `codes`.
fn has_os_error(error: &(dyn std::error::Error + 'static), codes: &[i32]) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && io.raw_os_error().is_some_and(|c| codes.contains(&c))
        {
            return true;
        }
        if let Some(aya::sys::SyscallError { io_error, .. }) = e.downcast_ref::<aya::sys::SyscallError>()
            && io_error.raw_os_error().is_some_and(|c| codes.contains(&c))
        {
            return true;
        }
        current = e.source();
    }
    false
}

fn occupied(iface: &str) -> DataplaneError {
    DataplaneError::Occupied(iface.to_string())
}

impl Attachment {
    /// Attaches `sg_ingress` (XDP) and `sg_egress` (TC egress) to `iface`.
    pub fn attach(dp: &mut Dataplane, iface: &str, mode: XdpModeChoice) -> Result<Self> {
        let ifindex = ifindex(iface)?;
        let (xdp_link, xdp_mode) = attach_xdp(dp.xdp()?, ifindex, iface, mode)?;
        let tc = dp.tc()?;
        let (tc_link, tc_hook) = match attach_tc(tc, iface) {
            Ok(attached) => attached,
            Err(e) => {
                // Leave nothing half attached.
                let _ = dp.xdp()?.detach(xdp_link);
                return Err(e);
            }
        };
        Ok(Self { iface: iface.to_string(), ifindex, xdp_mode, tc_hook, xdp_link, tc_link })
    }

    /// Detaches both programs and removes a clsact qdisc sgctl added.
    pub fn detach(self, dp: &mut Dataplane) -> Result<()> {
        dp.xdp()?.detach(self.xdp_link).doing_with(|| format!("detaching XDP from {}", self.iface))?;
        dp.tc()?.detach(self.tc_link).doing_with(|| format!("detaching TC from {}", self.iface))?;
        if self.tc_hook == (TcHook::Clsact { created: true }) {
            remove_clsact(&self.iface);
        }
        Ok(())
    }
}

/// Attaches `xdp` to `iface` in `mode` (auto: native, else generic with a warning);
/// returns the link and the mode taken.
pub(super) fn attach_xdp(
    xdp: &mut aya::programs::Xdp,
    ifindex: u32,
    iface: &str,
    mode: XdpModeChoice,
) -> Result<(XdpLinkId, &'static str)> {
    let attach = |xdp: &mut aya::programs::Xdp, mode: XdpMode| {
        xdp.attach_to_if_index(ifindex, mode).map_err(|e| {
            if has_os_error(&e, &[libc::EBUSY, libc::EEXIST]) {
                occupied(iface)
            } else {
                DataplaneError::Refused(format!("attaching XDP to {iface}: {e}"))
            }
        })
    };
    Ok(match mode {
        XdpModeChoice::Native => (attach(xdp, XdpMode::Driver)?, "native"),
        XdpModeChoice::Generic => (attach(xdp, XdpMode::Skb)?, "generic"),
        XdpModeChoice::Auto if super::object::fallbacks_forced() => {
            tracing::warn!("{iface}: generic XDP (SGCTL_FALLBACKS=1 forces the fallback)");
            (attach(xdp, XdpMode::Skb)?, "generic")
        }
        XdpModeChoice::Auto => match xdp.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(link) => (link, "native"),
            Err(e) if has_os_error(&e, &[libc::EBUSY, libc::EEXIST]) => return Err(occupied(iface)),
            Err(e) => {
                tracing::warn!("native XDP unavailable on {iface} ({e}); falling back to generic XDP");
                (attach(xdp, XdpMode::Skb)?, "generic")
            }
        },
    })
}

/// TCX where the kernel has it, a clsact filter otherwise (also with
/// [`super::object::fallbacks_forced`]).
pub(super) fn attach_tc(tc: &mut SchedClassifier, iface: &str) -> Result<(SchedClassifierLinkId, TcHook)> {
    let tcx = TcAttachOptions::TcxOrder(LinkOrder::default());
    let attempt = if super::object::fallbacks_forced() {
        Err("SGCTL_FALLBACKS=1 forces the fallback".to_string())
    } else {
        tc.attach_with_options(iface, TcAttachType::Egress, tcx).map_err(|e| e.to_string())
    };
    match attempt {
        Ok(link) => Ok((link, TcHook::Tcx)),
        Err(tcx_error) => {
            let created = match tc::qdisc_add_clsact(iface) {
                Ok(()) => true,
                Err(e) if has_os_error(&e, &[libc::EEXIST]) => false,
                Err(e) => {
                    return Err(DataplaneError::Refused(format!(
                        "attaching TC egress to {iface}: TCX failed ({tcx_error}), clsact failed ({e})"
                    )));
                }
            };
            tracing::warn!("TCX unavailable on {iface} ({tcx_error}); using a clsact filter");
            let link = tc
                .attach_with_options(iface, TcAttachType::Egress, TcAttachOptions::Netlink(NlOptions::default()))
                .map_err(|e| {
                    if created {
                        remove_clsact(iface);
                    }
                    DataplaneError::Refused(format!("attaching TC egress to {iface}: {e}"))
                })?;
            Ok((link, TcHook::Clsact { created }))
        }
    }
}

pub(super) fn remove_clsact(iface: &str) {
    let _ = Command::new("tc").args(["qdisc", "del", "dev", iface, "clsact"]).status();
}

/// What is of ours on an interface right now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Presence {
    /// Id of the XDP program when it is `sg_ingress`.
    pub xdp_program: Option<u32>,
    /// Ids of `sg_egress` programs on the TCX egress hook.
    pub tcx_programs: Vec<u32>,
    /// True when a clsact filter named `sg_egress` is present.
    pub clsact_filter: bool,
}

impl Presence {
    pub fn is_empty(&self) -> bool {
        self.xdp_program.is_none() && self.tcx_programs.is_empty() && !self.clsact_filter
    }
}

/// Looks at `iface` through netlink (`ip`, `tc`) and the TCX query API.
pub fn presence(iface: &str) -> Result<Presence> {
    ifindex(iface)?;
    let mut found = Presence::default();
    let link = Command::new("ip").args(["-j", "-d", "link", "show", "dev", iface]).output()?;
    let link: serde_json::Value = serde_json::from_slice(&link.stdout).unwrap_or_default();
    let xdp_prog = &link[0]["xdp"]["prog"];
    if xdp_prog["name"].as_str() == Some(program::INGRESS_XDP) {
        found.xdp_program = xdp_prog["id"].as_u64().map(|id| id as u32);
    }
    if let Ok((_, programs)) = SchedClassifier::query_tcx(iface, TcAttachType::Egress) {
        found.tcx_programs =
            programs.iter().filter(|p| p.name_as_str() == Some(program::EGRESS_TC)).map(|p| p.id()).collect();
    }
    let filters = Command::new("tc").args(["filter", "show", "dev", iface, "egress"]).output()?;
    found.clsact_filter = String::from_utf8_lossy(&filters.stdout).contains(program::EGRESS_TC);
    Ok(found)
}

/// Stops the `sgctl` holding `iface` (if any) and removes whatever of ours is left on it.
/// Returns what was removed, one line each.
pub fn detach_interface(iface: &str) -> Result<Vec<String>> {
    let index = ifindex(iface)?;
    let mut done = Vec::new();
    let pid_path = pid_file(iface);
    if let Ok(text) = std::fs::read_to_string(&pid_path)
        && let Ok(pid) = text.trim().parse::<i32>()
    {
        // SAFETY: kill has no memory preconditions.
        if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
            let deadline = Instant::now() + Duration::from_secs(10);
            // SAFETY: as above; signal 0 only probes.
            while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            done.push(format!("stopped sgctl (pid {pid}) holding {iface}"));
        }
        let _ = std::fs::remove_file(&pid_path);
    }
    // Links an agent pinned hold the programs with no process: unpinning releases them.
    if let Some(pins) = super::pins::Pins::existing(&crate::paths::pin_dir()) {
        for hook in ["xdp", "tcx"] {
            let link = pins.link(index, hook);
            if link.exists() {
                std::fs::remove_file(&link).doing_with(|| format!("unpinning {}", link.display()))?;
                done.push(format!("unpinned {}", link.display()));
            }
        }
    }
    let left = presence(iface)?;
    if let Some(id) = left.xdp_program {
        for kind in ["xdp", "xdpgeneric", "xdpdrv"] {
            let _ = Command::new("ip").args(["link", "set", "dev", iface, kind, "off"]).status();
        }
        done.push(format!("removed XDP program {id} from {iface}"));
    }
    if left.clsact_filter {
        tc::qdisc_detach_program(iface, TcAttachType::Egress, program::EGRESS_TC)
            .doing_with(|| format!("removing the clsact filter from {iface}"))?;
        done.push(format!("removed clsact filter {} from {iface}", program::EGRESS_TC));
    }
    let after = presence(iface)?;
    if !after.tcx_programs.is_empty() {
        return Err(DataplaneError::Refused(format!(
            "{iface} still has {} on its TCX egress hook (ids {:?}), held by another process",
            program::EGRESS_TC,
            after.tcx_programs
        )));
    }
    if !after.is_empty() {
        return Err(DataplaneError::Refused(format!("could not remove everything from {iface}: {after:?}")));
    }
    Ok(done)
}
