//! TCP connections that are already open when sgctl attaches to an interface.
//!
//! A session opens only on a SYN (`sg_common::session::opening_state`), so without this a
//! connection opened before `sgctl run` (the SSH session of the person starting it) would
//! have no session: on an advanced group whose egress rules drop everything, its first
//! reply would be dropped. [`import_established`] reads the established TCP connections
//! of the interface's addresses from the kernel's socket table (netlink sock_diag, see
//! [`diag`]), and enters each as a session when the rules would have admitted its opening
//! packet; the rest are left to the rules, exactly as if sgctl had been running when they
//! opened.
//!
//! Whether the rules admit the opening packet is asked of the loaded programs themselves,
//! not of a model of them: the connection's SYN ([`frames`]) is run through the program
//! of the direction it travelled (XDP for one the peer opened, TC for one the instance
//! opened) with BPF_PROG_TEST_RUN, on the interface's ifindex. A SYN the program passes
//! has opened a session with the program's own rule attribution and generation, in
//! SYN-SENT; it is then moved to ESTABLISHED, so the connection's next segments (no SYN)
//! continue it from either side with the established timeout.

mod diag;
mod frames;

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use aya::{
    programs::{ProgramError, TestRun as _, TestRunOptions},
    sys::SyscallError,
};
use sg_common::{SessionKey, family, ip_proto, session::state, stats};

use super::{
    error::{DataplaneError, Doing as _, Result},
    pins::Generation,
    sessions::SessionTable,
};
use crate::policy::addr::addr_to_bytes;

pub use diag::{TcpSocket, TcpState};

/// What [`import_established`] did with the interface's established connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportCounts {
    /// Entered as sessions: the rules admit their opening packet.
    pub admitted: usize,
    /// Left to the rules: their opening packet is dropped (or passes without a session,
    /// where its direction is not enforced or the interface is in audit mode), so their
    /// packets are judged as any packet without a session is.
    pub left_to_rules: usize,
    /// Already had a session (one this table kept from before), left as it was.
    pub had_session: usize,
}

impl fmt::Display for ImportCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (connections, sessions) =
            if self.admitted == 1 { ("connection", "a session") } else { ("connections", "sessions") };
        write!(f, "{} established TCP {connections} entered as {sessions}", self.admitted)?;
        write!(f, ", {} left to the rules", self.left_to_rules)?;
        if self.had_session > 0 {
            write!(f, ", {} already had one", self.had_session)?;
        }
        Ok(())
    }
}

/// Which end of a connection sent its opening SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opener {
    /// The remote end: the SYN came in (ingress).
    Peer,
    /// This host: the SYN went out (egress).
    Instance,
}

/// An established connection of one of the interface's addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub opener: Opener,
}

impl Connection {
    /// The opening SYN's (source, destination) and the hook that saw it.
    pub fn opening(&self) -> (SocketAddr, SocketAddr, u32) {
        match self.opener {
            Opener::Peer => (self.remote, self.local, stats::HOOK_INGRESS),
            Opener::Instance => (self.local, self.remote, stats::HOOK_EGRESS),
        }
    }
}

/// The established connections among `sockets` whose local address is one of
/// `addresses` (the interface's), with who opened each.
///
/// A connection to another address of the interface never crosses it (the kernel routes
/// it over loopback), so it is left out. The opener is the peer when a listener holds the
/// connection's local port on its local address or on the wildcard address (`::` also
/// covers IPv4, as a dual-stack listener does): the connection was accepted. Otherwise
/// the instance connected out. A client bound by hand to a port something also listens
/// on would be taken for accepted; the kernel keeps no record of which end sent the SYN.
pub fn connections(sockets: &[TcpSocket], addresses: &[IpAddr]) -> Vec<Connection> {
    let listeners: Vec<SocketAddr> = sockets.iter().filter(|s| s.state == TcpState::Listen).map(|s| s.local).collect();
    let accepted = |local: SocketAddr| {
        listeners.iter().any(|l| {
            l.port() == local.port()
                && (l.ip() == local.ip()
                    || match l.ip() {
                        IpAddr::V4(a) => a.is_unspecified() && local.is_ipv4(),
                        IpAddr::V6(a) => a.is_unspecified(),
                    })
        })
    };
    sockets
        .iter()
        .filter(|s| s.state == TcpState::Established)
        .filter(|s| addresses.contains(&s.local.ip()) && !addresses.contains(&s.remote.ip()))
        .filter(|s| s.local.is_ipv4() == s.remote.is_ipv4())
        .map(|s| Connection {
            local: s.local,
            remote: s.remote,
            opener: if accepted(s.local) { Opener::Peer } else { Opener::Instance },
        })
        .collect()
}

/// Enters the TCP connections established on `iface` (`ifindex`) before sgctl attached
/// as sessions, where the rules in force admit their opening packet; see the module
/// documentation. Called after the rules are written and before the programs attach, so
/// no packet of these connections meets the programs without its session.
///
/// Each connection's opening SYN is counted in `SG_STATS` as a real packet would be (a
/// pass or drop of the hook that judged it): the counters are per-CPU and written by
/// every attached program, so they cannot be corrected afterwards without racing those.
pub fn import_established(
    dp: &mut Generation,
    sessions: &mut SessionTable,
    ifindex: u32,
    iface: &str,
) -> Result<ImportCounts> {
    let addresses = diag::interface_addresses(iface).doing_with(|| format!("reading the addresses of {iface}"))?;
    let sockets = diag::tcp_sockets().doing("listing TCP sockets through sock_diag")?;
    let mut counts = ImportCounts::default();
    let mut warned = false;
    for connection in connections(&sockets, &addresses) {
        let who = match connection.opener {
            Opener::Peer => "accepted",
            Opener::Instance => "opened",
        };
        let (local, remote) = (connection.local, connection.remote);
        let entered = enter(dp, sessions, ifindex, &connection).unwrap_or_else(|e| {
            // One connection that cannot be judged is left to the rules; the rest still
            // get their chance. Said once: the cause is the same for all (an old kernel).
            if !warned {
                tracing::warn!("{iface}: {local} {who} with {remote} left to the rules: {}", with_causes(&e));
                warned = true;
            }
            Entered::LeftToRules
        });
        tracing::debug!("{iface}: {local} {who} with {remote}: {entered:?}");
        match entered {
            Entered::Admitted => counts.admitted += 1,
            Entered::LeftToRules => counts.left_to_rules += 1,
            Entered::HadSession => counts.had_session += 1,
        }
    }
    Ok(counts)
}

/// `error: cause: cause ...`, as `anyhow`'s `{:#}` shows a chain.
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text = format!("{text}: {e}");
        cause = e.source();
    }
    text
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entered {
    Admitted,
    LeftToRules,
    HadSession,
}

/// Runs `connection`'s opening SYN through its hook's program and moves the session the
/// program opened for it to ESTABLISHED.
fn enter(dp: &mut Generation, sessions: &mut SessionTable, ifindex: u32, connection: &Connection) -> Result<Entered> {
    let (src, dst, hook) = connection.opening();
    let fam = if src.is_ipv4() { family::IPV4 } else { family::IPV6 };
    let (key, src_is_low) = SessionKey::between(
        ifindex,
        fam,
        ip_proto::TCP,
        (addr_to_bytes(src.ip()), src.port()),
        (addr_to_bytes(dst.ip()), dst.port()),
    );
    if sessions.stored(&key).is_some() {
        // A SYN would restart or replace it; the session carries the connection already.
        return Ok(Entered::HadSession);
    }
    let frame = frames::tcp_syn(src, dst)
        .ok_or_else(|| DataplaneError::Refused(format!("{src} and {dst} are of different families")))?;
    if !passes(dp, hook, &frame, ifindex)? {
        return Ok(Entered::LeftToRules);
    }
    let opened = sessions.stored(&key).filter(|s| {
        s.state == state::TCP_SYN_SENT && u32::from(s.opened_on) == hook && (s.opener_is_low != 0) == src_is_low
    });
    let Some(mut session) = opened else {
        // Passed without a session: the direction is not enforced, or audit mode.
        return Ok(Entered::LeftToRules);
    };
    session.state = state::TCP_ESTABLISHED;
    // The SYN was ours, not the connection's.
    session.packets = 0;
    sessions.insert(&key, &session)?;
    Ok(Entered::Admitted)
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

/// Runs `frame` once through the program of `hook` as if it crossed `ifindex`; whether
/// the program let it through.
fn passes(dp: &mut Generation, hook: u32, frame: &[u8], ifindex: u32) -> Result<bool> {
    let ingress = hook == stats::HOOK_INGRESS;
    let ctx = if ingress { xdp_md(frame.len(), ifindex) } else { sk_buff(ifindex) };
    let opts = TestRunOptions { data_in: Some(frame), ctx_in: Some(&ctx), ..TestRunOptions::default() };
    let doing = || format!("running an opening SYN through the {} program", if ingress { "XDP" } else { "TC" });
    let run = if ingress { dp.xdp.test_run(opts) } else { dp.tc.test_run(opts) };
    let ret = match run {
        Ok(result) => result.return_value,
        Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
            if ingress && io_error.raw_os_error() == Some(libc::EINVAL) =>
        {
            return Err(DataplaneError::Refused(format!(
                "{}: the kernel refused the interface's xdp_md ({io_error}); \
                 BPF_PROG_TEST_RUN takes one from Linux 5.13 on",
                doing()
            )));
        }
        Err(e) => return Err(e).doing_with(doing),
    };
    match (ingress, ret) {
        (true, XDP_PASS) | (false, TC_ACT_OK) => Ok(true),
        (true, XDP_DROP) | (false, TC_ACT_SHOT) => Ok(false),
        _ => Err(DataplaneError::Refused(format!("{}: unexpected return code {ret} for an opening SYN", doing()))),
    }
}

/// A `struct xdp_md` for BPF_PROG_TEST_RUN: the whole frame as data, received on
/// `ifindex` queue 0. `sg_ingress` reads the interface from `ingress_ifindex`, and
/// without it the kernel runs the program as if on loopback (ifindex 1), whose sessions
/// no packet of the real interface would find.
fn xdp_md(len: usize, ifindex: u32) -> Vec<u8> {
    // data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    [0, len as u32, 0, ifindex, 0, 0].iter().flat_map(|v: &u32| v.to_ne_bytes()).collect()
}

/// The start of a `struct __sk_buff` up to `ifindex` (the kernel zeroes the rest):
/// `sg_egress` reads the interface from `ifindex`, and the kernel sets the test packet's
/// device from it.
fn sk_buff(ifindex: u32) -> Vec<u8> {
    // len, pkt_type, mark, queue_mapping, protocol, vlan_present, vlan_tci, vlan_proto,
    // priority, ingress_ifindex: 0 (the kernel rejects most of them non-zero); ifindex.
    let mut words = [0u32; 11];
    words[10] = ifindex;
    words.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(state: TcpState, local: &str, remote: &str) -> TcpSocket {
        TcpSocket { state, local: local.parse().unwrap(), remote: remote.parse().unwrap() }
    }

    fn addrs() -> Vec<IpAddr> {
        vec!["198.18.1.1".parse().unwrap(), "2001:db8::1:1".parse().unwrap()]
    }

    fn openers(sockets: &[TcpSocket]) -> Vec<(String, Opener)> {
        connections(sockets, &addrs()).iter().map(|c| (c.local.to_string(), c.opener)).collect()
    }

    #[test]
    fn a_listener_on_the_local_port_means_the_peer_opened_it() {
        let sockets = [
            sock(TcpState::Listen, "0.0.0.0:22", "0.0.0.0:0"),
            sock(TcpState::Established, "198.18.1.1:22", "198.18.0.1:50000"),
            sock(TcpState::Established, "198.18.1.1:43210", "198.18.0.1:443"),
        ];
        assert_eq!(
            openers(&sockets),
            [("198.18.1.1:22".into(), Opener::Peer), ("198.18.1.1:43210".into(), Opener::Instance)]
        );
    }

    #[test]
    fn wildcard_and_specific_listeners_by_family() {
        let v6_any = [
            sock(TcpState::Listen, "[::]:8080", "[::]:0"),
            sock(TcpState::Established, "198.18.1.1:8080", "198.18.0.1:50000"),
            sock(TcpState::Established, "[2001:db8::1:1]:8080", "[2001:db8::1]:50000"),
        ];
        assert!(openers(&v6_any).iter().all(|(_, o)| *o == Opener::Peer), "`::` covers both families");
        let v4_any = [
            sock(TcpState::Listen, "0.0.0.0:8080", "0.0.0.0:0"),
            sock(TcpState::Established, "[2001:db8::1:1]:8080", "[2001:db8::1]:50000"),
        ];
        assert_eq!(openers(&v4_any)[0].1, Opener::Instance, "0.0.0.0 does not cover IPv6");
        let elsewhere = [
            sock(TcpState::Listen, "127.0.0.1:8080", "0.0.0.0:0"),
            sock(TcpState::Established, "198.18.1.1:8080", "198.18.0.1:50000"),
        ];
        assert_eq!(openers(&elsewhere)[0].1, Opener::Instance, "a listener on another address");
        let here = [
            sock(TcpState::Listen, "198.18.1.1:8080", "0.0.0.0:0"),
            sock(TcpState::Established, "198.18.1.1:8080", "198.18.0.1:50000"),
        ];
        assert_eq!(openers(&here)[0].1, Opener::Peer);
    }

    #[test]
    fn only_connections_of_the_interface_addresses_that_cross_it() {
        let sockets = [
            sock(TcpState::Established, "198.18.1.1:40000", "198.18.0.1:22"),
            sock(TcpState::Established, "10.9.9.9:40001", "198.18.0.1:22"),
            sock(TcpState::Established, "127.0.0.1:40002", "127.0.0.1:22"),
            sock(TcpState::Established, "198.18.1.1:40003", "198.18.1.1:22"),
            sock(TcpState::Established, "[2001:db8::1:1]:40004", "[2001:db8::1]:22"),
            sock(TcpState::Listen, "198.18.1.1:22", "0.0.0.0:0"),
        ];
        let locals: Vec<String> = openers(&sockets).into_iter().map(|(l, _)| l).collect();
        assert_eq!(locals, ["198.18.1.1:40000", "[2001:db8::1:1]:40004"]);
    }

    #[test]
    fn the_opening_packet_goes_the_way_the_opener_sent_it() {
        let c = Connection {
            local: "198.18.1.1:22".parse().unwrap(),
            remote: "198.18.0.1:50000".parse().unwrap(),
            opener: Opener::Peer,
        };
        assert_eq!(c.opening(), (c.remote, c.local, stats::HOOK_INGRESS));
        let c = Connection { opener: Opener::Instance, ..c };
        assert_eq!(c.opening(), (c.local, c.remote, stats::HOOK_EGRESS));
    }

    #[test]
    fn test_run_contexts_carry_the_ifindex_where_the_kernel_reads_it() {
        let xdp = xdp_md(54, 7);
        assert_eq!(xdp.len(), 24, "sizeof(struct xdp_md)");
        assert_eq!(&xdp[4..8], &54u32.to_ne_bytes(), "data_end is the frame's length");
        assert_eq!(&xdp[12..16], &7u32.to_ne_bytes(), "ingress_ifindex");
        let skb = sk_buff(7);
        assert_eq!(skb.len(), 44, "offsetofend(struct __sk_buff, ifindex)");
        assert_eq!(&skb[40..44], &7u32.to_ne_bytes());
        assert!(skb[..40].iter().all(|b| *b == 0));
    }

    #[test]
    fn warnings_name_the_cause() {
        let e = Err::<(), _>(std::io::Error::from_raw_os_error(libc::EINVAL)).doing("running a SYN").unwrap_err();
        assert_eq!(with_causes(&e), format!("running a SYN: {}", std::io::Error::from_raw_os_error(libc::EINVAL)));
    }

    #[test]
    fn summary_line() {
        let counts = ImportCounts { admitted: 3, left_to_rules: 1, had_session: 0 };
        assert_eq!(counts.to_string(), "3 established TCP connections entered as sessions, 1 left to the rules");
        let one = ImportCounts { admitted: 1, left_to_rules: 0, had_session: 2 };
        assert_eq!(
            one.to_string(),
            "1 established TCP connection entered as a session, 0 left to the rules, 2 already had one"
        );
    }
}
