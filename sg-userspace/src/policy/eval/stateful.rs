//! Stateful reference model: the evaluation order (docs/rule-model.md#evaluation-order,
//! steps 2 to 7) with the sessions of docs/rule-model.md#sessions,
//! layered in front of the stateless [`evaluate`].
//!
//! A [`Tracker`] holds a rule file, the idle timeouts and a session table keyed like the
//! kernel's ([`SessionKey`]), and decides packets one at a time with an injected clock,
//! reporting what the kernel must trace for each: verdict, step and rule id (the
//! `sg_common` codes). Differential tests drive it and the kernel programs with the same
//! packet sequences.
//!
//! Per packet on an interface whose rule set has generation G, in direction D:
//!
//! 1. ICMPv6 neighbour discovery (types 133-136): pass.
//! 2. A live session of the packet's flow: if G changed since the session was admitted or
//!    last re-checked, its opening packet is evaluated again under the current rules, in
//!    the direction it was opened; a drop deletes the session and drops the packet
//!    (`REVOKED`). Otherwise the session takes G and the deciding rule, its state
//!    advances, and the packet passes (`SESSION`). An expired session is deleted and the
//!    packet goes on as if there were none. So does a packet that does not continue the
//!    session in its direction ([`continues_session`]: an echo request or a SYN from the
//!    responder, a SYN from the opener on an established connection); the session is
//!    kept, unless step 5 replaces it with a session the packet opens.
//! 3. An ICMP/ICMPv6 error quoting a packet of a live session: pass (`RELATED`).
//! 4. Classification by [`evaluate`] (steps 4 to 7 of the evaluation order).
//! 5. An accepted packet that opens a flow ([`opening_state`]), other than an ICMP error,
//!    creates a session.
//!
//! Audit mode changes nothing here: the kernel passes the packet anyway and reports the
//! computed outcome, which is what the model returns.

use std::collections::HashMap;

use sg_common::session::{
    assures, continues_session, expired, next_state, opening_anchors, opening_state, table, take_anchors, tcp_plausible,
};
use sg_common::{
    PacketMeta, Session, SessionKey, Timeouts, echo_request_type, icmp_key, ip_proto, stats, step, verdict,
};

use super::{DecidedBy, Decision, PacketTuple, evaluate};
use crate::policy::addr::addr_from_bytes;
use crate::policy::config::{Action, Config, Direction, InterfaceBinding};

/// What the data plane reports for one packet: `sg_common` verdict and step codes, and
/// the deciding rule's id (0 when no rule decided).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Outcome {
    pub verdict: u8,
    pub step: u8,
    pub rule_id: u32,
}

impl Outcome {
    pub const fn new(verdict: u8, step: u8, rule_id: u32) -> Self {
        Self { verdict, step, rule_id }
    }

    /// The outcome of a stateless decision (steps 4 to 7).
    pub fn of_decision(decision: &Decision) -> Self {
        let v = match decision.action {
            Action::Accept => verdict::PASS,
            Action::Drop => verdict::DROP,
        };
        match decision.decided_by {
            DecidedBy::IntraGroupAccept { .. } => Self::new(v, step::INTRA_GROUP_ACCEPT, 0),
            DecidedBy::Rule { rule_id } => Self::new(v, step::RULE, rule_id),
            DecidedBy::IntraGroupIsolation { .. } => Self::new(v, step::INTRA_GROUP_DROP, 0),
            DecidedBy::Default { .. } => Self::new(v, step::DEFAULT, 0),
        }
    }
}

impl std::fmt::Display for Outcome {
    /// `pass by session (rule 3)`, `drop by default`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = match self.verdict {
            verdict::PASS => "pass",
            verdict::DROP => "drop",
            _ => "verdict?",
        };
        let s = step::NAMES.get(usize::from(self.step)).copied().unwrap_or("step?");
        write!(f, "{v} by {s}")?;
        if self.rule_id != 0 { write!(f, " (rule {})", self.rule_id) } else { Ok(()) }
    }
}

/// The session table and rules of the model.
#[derive(Debug, Clone)]
pub struct Tracker<'c> {
    cfg: &'c Config,
    timeouts: Timeouts,
    sessions: HashMap<SessionKey, Session>,
    /// The rule-set generation of every interface. The kernel keeps one per interface,
    /// but here every interface starts at 1 and every [`Tracker::replace_config`] that
    /// changes the configuration bumps them all, so they are always equal.
    generation: u32,
}

impl<'c> Tracker<'c> {
    /// An empty session table under `cfg`; every interface at generation 1.
    pub fn new(cfg: &'c Config, timeouts: Timeouts) -> Self {
        Self { cfg, timeouts, sessions: HashMap::new(), generation: 1 }
    }

    /// Switches to `cfg`, bumping every interface's generation; sessions are kept and
    /// re-checked at their next packet. The configuration in force again changes
    /// nothing, as an apply that compiles every rule set as installed leaves the
    /// interfaces unswitched (a different file that happens to compile the same for an
    /// interface is not told apart here: its generation count is the only difference).
    pub fn replace_config(&mut self, cfg: &'c Config) {
        if *cfg == *self.cfg {
            return;
        }
        self.cfg = cfg;
        self.generation = self.generation.wrapping_add(1);
    }

    pub fn config(&self) -> &'c Config {
        self.cfg
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// The current rule-set generation (of every interface).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn sessions(&self) -> &HashMap<SessionKey, Session> {
        &self.sessions
    }

    /// Decides `meta` (a whole IP packet or first fragment) crossing `iface` (with
    /// interface index `ifindex`) in `dir` at `now_ns`, updating the session table.
    pub fn packet(
        &mut self,
        iface: &InterfaceBinding,
        ifindex: u32,
        dir: Direction,
        meta: &PacketMeta,
        now_ns: u64,
    ) -> Outcome {
        self.packet_with_embedded(iface, ifindex, dir, meta, None, now_ns)
    }

    /// [`Tracker::packet`], with the packet an ICMP error quotes (`embedded`, parsed as
    /// the kernel parses a quote); `embedded` is ignored unless `meta` is an ICMP error.
    pub fn packet_with_embedded(
        &mut self,
        iface: &InterfaceBinding,
        ifindex: u32,
        dir: Direction,
        meta: &PacketMeta,
        embedded: Option<&PacketMeta>,
        now_ns: u64,
    ) -> Outcome {
        // 1. Neighbour discovery.
        if is_neighbour_discovery(meta) {
            return Outcome::new(verdict::PASS, step::NEIGHBOUR_DISCOVERY, 0);
        }

        // 2. The flow's session (ICMP only for echo).
        let (key, src_is_low) = SessionKey::of(ifindex, meta);
        let found = if sg_common::session::belongs_to_session(meta) { self.sessions.get(&key).copied() } else { None };
        if let Some(mut session) = found {
            let from_opener = src_is_low == (session.opener_is_low == 1);
            if expired(session.state, session.last_seen_ns, now_ns, &self.timeouts) {
                self.sessions.remove(&key);
            } else if continues_session(session.state, from_opener, meta)
                && tcp_plausible(&session, dir == Direction::Ingress, meta)
            {
                if session.generation != self.generation {
                    let opening = opening_tuple(&key, &session);
                    let decision = evaluate(self.cfg, iface, direction_of_hook(session.opened_on), &opening);
                    let rule_id = decided_rule(&decision);
                    if decision.action == Action::Drop {
                        self.sessions.remove(&key);
                        return Outcome::new(verdict::DROP, step::REVOKED, rule_id);
                    }
                    session.generation = self.generation;
                    session.rule_id = rule_id;
                }
                session.state = next_state(session.state, from_opener, meta);
                take_anchors(&mut session, dir == Direction::Ingress, meta);
                // The kernel moves it to the assured table on this packet.
                if session.assured == table::OPENING_VALUE && assures(session.state, !from_opener) {
                    session.assured = table::ASSURED_VALUE;
                }
                session.last_seen_ns = now_ns;
                session.packets = session.packets.saturating_add(1);
                self.sessions.insert(key, session);
                return Outcome::new(verdict::PASS, step::SESSION, session.rule_id);
            }
        }

        // 3. An ICMP error about a live session.
        let icmp_error = is_icmp_error(meta);
        if icmp_error && let Some(quoted) = embedded {
            let (quoted_key, _) = SessionKey::of(ifindex, quoted);
            if let Some(session) = self.sessions.get(&quoted_key)
                && !expired(session.state, session.last_seen_ns, now_ns, &self.timeouts)
            {
                return Outcome::new(verdict::PASS, step::RELATED, 0);
            }
        }

        // 4. Classification.
        let decision = evaluate(self.cfg, iface, dir, &tuple_of(meta));
        let outcome = Outcome::of_decision(&decision);

        // 5. A new session for an accepted opening packet.
        if outcome.verdict == verdict::PASS
            && !icmp_error
            && let Some(state) = opening_state(meta)
        {
            let (anchors, instance_ack, instance_syn) = opening_anchors(dir == Direction::Ingress, meta);
            let session = Session {
                last_seen_ns: now_ns,
                created_ns: now_ns,
                packets: 1,
                rule_id: outcome.rule_id,
                generation: self.generation,
                state,
                opener_is_low: u8::from(src_is_low),
                opened_on: hook_of(dir),
                step: outcome.step,
                assured: table::OPENING_VALUE,
                anchors,
                _pad: [0; 2],
                instance_ack,
                instance_syn,
            };
            self.sessions.insert(key, session);
        }
        outcome
    }
}

/// The id of the rule that decided, 0 when another step did.
fn decided_rule(decision: &Decision) -> u32 {
    match decision.decided_by {
        DecidedBy::Rule { rule_id } => rule_id,
        _ => 0,
    }
}

/// The packet that opened the session's flow: from the opener's end to the other one.
/// An ICMP session is opened only by an echo request, so that is its opening packet
/// (type 8 or 128, code 0), as the kernel rebuilds it (`opening_packet` in sg-ebpf).
fn opening_tuple(key: &SessionKey, session: &Session) -> PacketTuple {
    let ((src, src_port), (dst, dst_port)) = key.ends(session.opener_is_low == 1);
    let (src_port, dst_port) = match key.protocol {
        ip_proto::TCP | ip_proto::UDP => (src_port, dst_port),
        ip_proto::ICMP | ip_proto::ICMPV6 => (0, icmp_key(echo_request_type(key.protocol), 0)),
        _ => (0, 0),
    };
    PacketTuple {
        src: addr_from_bytes(key.family, &src),
        dst: addr_from_bytes(key.family, &dst),
        protocol: key.protocol,
        src_port,
        dst_port,
    }
}

/// ICMP destination unreachable, time exceeded and parameter problem; ICMPv6 destination
/// unreachable, packet too big, time exceeded and parameter problem: the errors that
/// quote the packet that caused them.
pub fn is_icmp_error(meta: &PacketMeta) -> bool {
    match meta.protocol {
        ip_proto::ICMP => matches!(meta.icmp_type, 3 | 11 | 12),
        ip_proto::ICMPV6 => matches!(meta.icmp_type, 1..=4),
        _ => false,
    }
}

/// ICMPv6 neighbour discovery (types 133 to 136) and multicast listener discovery (130
/// to 132, 143): `sg_common::is_neighbour_discovery`, which says why.
pub fn is_neighbour_discovery(meta: &PacketMeta) -> bool {
    sg_common::is_neighbour_discovery(meta.protocol, meta.icmp_type)
}

/// The fields of `meta` the rules look at: ports for TCP and UDP, the ICMP key (type
/// and code) for ICMP and ICMPv6.
pub fn tuple_of(meta: &PacketMeta) -> PacketTuple {
    let (src_port, dst_port) = match meta.protocol {
        ip_proto::TCP | ip_proto::UDP => (meta.src_port, meta.dst_port),
        ip_proto::ICMP | ip_proto::ICMPV6 => (0, icmp_key(meta.icmp_type, meta.icmp_code)),
        _ => (0, 0),
    };
    PacketTuple {
        src: addr_from_bytes(meta.family, &meta.src),
        dst: addr_from_bytes(meta.family, &meta.dst),
        protocol: meta.protocol,
        src_port,
        dst_port,
    }
}

/// `stats::HOOK_INGRESS` or `stats::HOOK_EGRESS` as `Session::opened_on` holds it.
pub fn hook_of(dir: Direction) -> u8 {
    let hook = match dir {
        Direction::Ingress => stats::HOOK_INGRESS,
        Direction::Egress => stats::HOOK_EGRESS,
    };
    hook as u8
}

/// The direction of `Session::opened_on`.
pub fn direction_of_hook(hook: u8) -> Direction {
    if u32::from(hook) == stats::HOOK_INGRESS { Direction::Ingress } else { Direction::Egress }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use sg_common::family;
    use sg_common::session::state;

    use super::*;
    use crate::policy::addr::addr_to_bytes;
    use crate::policy::config::parse_str;

    const IFINDEX: u32 = 3;
    const SECOND: u64 = 1_000_000_000;
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const FIN: u8 = 0x01;
    const RST: u8 = 0x04;
    const HOST: &str = "10.0.0.10";
    const SERVER: &str = "203.0.113.5";

    /// A basic group: ingress tcp 80 from anywhere (rule 1), ingress icmp from
    /// 198.51.100.0/24 (rule 2), ingress tcp 22 from 198.51.100.0/24 (rule 3); no egress
    /// rules, so egress passes by default and ingress drops by default.
    const WEB: &str = r#"
[[security_group]]
id = "sg-web"
members = ["10.0.0.10"]

  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "80/80"
  source = "0.0.0.0/0"

  [[security_group.rule]]
  direction = "ingress"
  protocol = "icmp"
  source = "198.51.100.0/24"

  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "22/22"
  source = "198.51.100.0/24"

[[interface]]
name = "eth0"
security_groups = ["sg-web"]
"#;

    fn config(text: &str) -> Config {
        parse_str(text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn meta(protocol: u8, src: &str, src_port: u16, dst: &str, dst_port: u16) -> PacketMeta {
        let src: IpAddr = src.parse().expect("address");
        let dst: IpAddr = dst.parse().expect("address");
        PacketMeta {
            family: if src.is_ipv4() { family::IPV4 } else { family::IPV6 },
            protocol,
            src: addr_to_bytes(src),
            dst: addr_to_bytes(dst),
            src_port,
            dst_port,
            ..PacketMeta::default()
        }
    }

    fn tcp(src: &str, src_port: u16, dst: &str, dst_port: u16, flags: u8) -> PacketMeta {
        PacketMeta { tcp_flags: flags, ..meta(ip_proto::TCP, src, src_port, dst, dst_port) }
    }

    fn icmp(src: &str, dst: &str, icmp_type: u8, icmp_id: u16) -> PacketMeta {
        let protocol = if src.contains(':') { ip_proto::ICMPV6 } else { ip_proto::ICMP };
        PacketMeta { icmp_type, icmp_id, ..meta(protocol, src, 0, dst, 0) }
    }

    fn pass(step: u8, rule_id: u32) -> Outcome {
        Outcome::new(verdict::PASS, step, rule_id)
    }

    fn drop(step: u8, rule_id: u32) -> Outcome {
        Outcome::new(verdict::DROP, step, rule_id)
    }

    /// Runs `meta` on eth0 at `now` seconds.
    fn run(t: &mut Tracker, dir: Direction, meta: &PacketMeta, now: u64) -> Outcome {
        let iface = t.config().interface("eth0").expect("eth0");
        t.packet(iface, IFINDEX, dir, meta, now * SECOND)
    }

    fn session_of(t: &Tracker, meta: &PacketMeta) -> Option<Session> {
        t.sessions().get(&SessionKey::of(IFINDEX, meta).0).copied()
    }

    use Direction::{Egress, Ingress};

    #[test]
    fn outbound_handshake_then_replies_pass_by_session() {
        let cfg = config(WEB);
        let mut t = Tracker::new(&cfg, Timeouts::default());
        let syn = tcp(HOST, 40000, SERVER, 443, SYN);
        assert_eq!(run(&mut t, Egress, &syn, 0), pass(step::DEFAULT, 0));
        let s = session_of(&t, &syn).expect("a session");
        assert_eq!(s.state, state::TCP_SYN_SENT);
        assert_eq!(s.opened_on, hook_of(Egress));
        assert_eq!((s.rule_id, s.step, s.generation, s.packets), (0, step::DEFAULT, 1, 1));

        // Ingress drops by default, but the replies belong to the session.
        let syn_ack = tcp(SERVER, 443, HOST, 40000, SYN | ACK);
        assert_eq!(run(&mut t, Ingress, &syn_ack, 1), pass(step::SESSION, 0));
        assert_eq!(session_of(&t, &syn).expect("kept").state, state::TCP_SYN_RECEIVED);
        assert_eq!(run(&mut t, Egress, &tcp(HOST, 40000, SERVER, 443, ACK), 1), pass(step::SESSION, 0));
        assert_eq!(run(&mut t, Ingress, &tcp(SERVER, 443, HOST, 40000, ACK | 0x08), 2), pass(step::SESSION, 0));
        let s = session_of(&t, &syn).expect("kept");
        assert_eq!(s.state, state::TCP_ESTABLISHED);
        assert_eq!((s.packets, s.created_ns, s.last_seen_ns), (4, 0, 2 * SECOND));

        // Close from the server's side, then from the host's.
        assert_eq!(run(&mut t, Ingress, &tcp(SERVER, 443, HOST, 40000, FIN | ACK), 3), pass(step::SESSION, 0));
        assert_eq!(run(&mut t, Egress, &tcp(HOST, 40000, SERVER, 443, FIN | ACK), 3), pass(step::SESSION, 0));
        assert_eq!(session_of(&t, &syn).expect("kept").state, state::TCP_CLOSING);
        assert_eq!(t.sessions().len(), 1);
        // Closing: 3 s (the provider's default). The last ACK at exactly 3 s still belongs;
        // a packet one nanosecond after 3 s more is classified afresh (ingress default: drop).
        assert_eq!(run(&mut t, Ingress, &tcp(SERVER, 443, HOST, 40000, ACK), 6), pass(step::SESSION, 0));
        let iface = cfg.interface("eth0").expect("eth0");
        let late = tcp(SERVER, 443, HOST, 40000, ACK);
        assert_eq!(t.packet(iface, IFINDEX, Ingress, &late, 9 * SECOND + 1), drop(step::DEFAULT, 0));
        assert!(t.sessions().is_empty(), "the closed session is gone");
    }

    #[test]
    fn inbound_flow_admitted_by_a_rule_remembers_it() {
        let cfg = config(WEB);
        let mut t = Tracker::new(&cfg, Timeouts::default());
        let syn = tcp(SERVER, 51000, HOST, 80, SYN);
        assert_eq!(run(&mut t, Ingress, &syn, 0), pass(step::RULE, 1));
        let s = session_of(&t, &syn).expect("a session");
        assert_eq!((s.rule_id, s.step, s.opened_on), (1, step::RULE, hook_of(Ingress)));
        assert_eq!(run(&mut t, Egress, &tcp(HOST, 80, SERVER, 51000, SYN | ACK), 0), pass(step::SESSION, 1));
    }

    #[test]
    fn a_reply_without_a_session_is_classified() {
        let cfg = config(WEB);
        let mut t = Tracker::new(&cfg, Timeouts::default());
        assert_eq!(run(&mut t, Ingress, &tcp(SERVER, 443, HOST, 40000, SYN | ACK), 0), drop(step::DEFAULT, 0));
        assert_eq!(run(&mut t, Ingress, &tcp(SERVER, 443, HOST, 40000, ACK), 0), drop(step::DEFAULT, 0));
        let udp_reply = meta(ip_proto::UDP, SERVER, 53, HOST, 5353);
        assert_eq!(run(&mut t, Ingress, &udp_reply, 0), drop(step::DEFAULT, 0));
        assert!(t.sessions().is_empty(), "dropped packets open nothing");

        // An accepted packet that does not open a flow creates no session either.
        assert_eq!(run(&mut t, Ingress, &tcp(SERVER, 443, HOST, 80, SYN | ACK), 0), pass(step::RULE, 1));
        assert_eq!(run(&mut t, Ingress, &tcp(SERVER, 443, HOST, 80, RST), 0), pass(step::RULE, 1));
        assert_eq!(run(&mut t, Ingress, &tcp(SERVER, 443, HOST, 80, FIN | ACK), 0), pass(step::RULE, 1));
        assert!(t.sessions().is_empty());

        // Nor does a mid-stream segment: only a SYN starts a TCP flow.
        let ack = tcp(SERVER, 443, HOST, 80, ACK | 0x08);
        assert_eq!(run(&mut t, Ingress, &ack, 0), pass(step::RULE, 1));
        assert!(t.sessions().is_empty());
        // Once the opening SYN is accepted and answered, the same segment belongs to the
        // session (before the SYN-ACK, the opener's data is the rules' again).
        assert_eq!(run(&mut t, Ingress, &tcp(SERVER, 443, HOST, 80, SYN), 0), pass(step::RULE, 1));
        assert_eq!(run(&mut t, Ingress, &ack, 0), pass(step::RULE, 1));
        assert_eq!(run(&mut t, Egress, &tcp(HOST, 80, SERVER, 443, SYN | ACK), 0), pass(step::SESSION, 1));
        assert_eq!(run(&mut t, Ingress, &ack, 0), pass(step::SESSION, 1));
    }

    #[test]
    fn icmp_echo_replies_return_by_identifier() {
        let cfg = config(WEB);
        let mut t = Tracker::new(&cfg, Timeouts::default());
        assert_eq!(run(&mut t, Egress, &icmp(HOST, SERVER, 8, 77), 0), pass(step::DEFAULT, 0));
        assert_eq!(run(&mut t, Ingress, &icmp(SERVER, HOST, 0, 77), 0), pass(step::SESSION, 0));
        // Another identifier is not the same flow.
        assert_eq!(run(&mut t, Ingress, &icmp(SERVER, HOST, 0, 78), 0), drop(step::DEFAULT, 0));
        // Inbound pings admitted by rule 2 get their replies out.
        let peer = "198.51.100.7";
        assert_eq!(run(&mut t, Ingress, &icmp(peer, HOST, 8, 5), 0), pass(step::RULE, 2));
        assert_eq!(run(&mut t, Egress, &icmp(HOST, peer, 0, 5), 0), pass(step::SESSION, 2));
        let s = session_of(&t, &icmp(peer, HOST, 8, 5)).expect("a session");
        assert_eq!((s.state, s.packets), (state::ICMP, 2));
        // An echo reply opens nothing.
        assert_eq!(run(&mut t, Egress, &icmp(HOST, "192.0.2.1", 0, 9), 0), pass(step::DEFAULT, 0));
        assert_eq!(t.sessions().len(), 2);
        // ICMPv6 the same way.
        let (host6, server6) = ("2001:db8::10", "2001:db8::99");
        assert_eq!(run(&mut t, Egress, &icmp(host6, server6, 128, 1), 0), pass(step::DEFAULT, 0));
        assert_eq!(run(&mut t, Ingress, &icmp(server6, host6, 129, 1), 0), pass(step::SESSION, 0));
    }

    /// WEB after an edit: rule 3 (ssh from 198.51.100.0/24) is gone, a drop of tcp 23
    /// from 198.51.100.0/24 is first (new id 1), and the http rule is now id 2.
    const WEB_EDITED: &str = r#"
[[security_group]]
id = "sg-web"
members = ["10.0.0.10"]

  [[security_group.rule]]
  direction = "ingress"
  policy = "drop"
  protocol = "tcp"
  port_range = "23/23"
  source = "198.51.100.0/24"

  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "80/80"
  source = "0.0.0.0/0"

[[interface]]
name = "eth0"
security_groups = ["sg-web"]
"#;

    /// WEB with telnet admitted too (rule 4).
    const WEB_TELNET: &str = r#"
[[security_group]]
id = "sg-web"
members = ["10.0.0.10"]

  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "80/80"
  source = "0.0.0.0/0"

  [[security_group.rule]]
  direction = "ingress"
  protocol = "icmp"
  source = "198.51.100.0/24"

  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "22/22"
  source = "198.51.100.0/24"

  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "23/23"
  source = "198.51.100.0/24"

[[interface]]
name = "eth0"
security_groups = ["sg-web"]
"#;

    #[test]
    fn a_rule_change_keeps_admitted_flows_and_revokes_the_others() {
        let before = config(WEB_TELNET);
        let after = config(WEB_EDITED);
        let mut t = Tracker::new(&before, Timeouts::default());
        let peer = "198.51.100.7";
        let http = tcp(peer, 50001, HOST, 80, SYN);
        let ssh = tcp(peer, 50002, HOST, 22, SYN);
        let telnet = tcp(peer, 50003, HOST, 23, SYN);
        let outbound = tcp(HOST, 50004, SERVER, 443, SYN);
        assert_eq!(run(&mut t, Ingress, &http, 0), pass(step::RULE, 1));
        assert_eq!(run(&mut t, Ingress, &ssh, 0), pass(step::RULE, 3));
        assert_eq!(run(&mut t, Ingress, &telnet, 0), pass(step::RULE, 4));
        assert_eq!(run(&mut t, Egress, &outbound, 0), pass(step::DEFAULT, 0));
        assert_eq!(t.sessions().len(), 4);

        t.replace_config(&after);
        assert_eq!(t.generation(), 2);
        assert_eq!(t.sessions().len(), 4, "sessions survive the switch");

        // The http rule still admits its flow (under its new id); the reply passes and the
        // session takes the new generation and rule.
        assert_eq!(run(&mut t, Egress, &tcp(HOST, 80, peer, 50001, SYN | ACK), 1), pass(step::SESSION, 2));
        let s = session_of(&t, &http).expect("kept");
        assert_eq!((s.generation, s.rule_id, s.state), (2, 2, state::TCP_SYN_RECEIVED));
        assert_eq!(run(&mut t, Ingress, &tcp(peer, 50001, HOST, 80, ACK), 1), pass(step::SESSION, 2));

        // The ssh rule is gone: the default drops the opening packet now. Revoked at the
        // next packet, whichever side sends it.
        assert_eq!(run(&mut t, Egress, &tcp(HOST, 22, peer, 50002, SYN | ACK), 1), drop(step::REVOKED, 0));
        assert!(session_of(&t, &ssh).is_none());
        // The next packet is classified as if the flow had never been seen.
        assert_eq!(run(&mut t, Ingress, &tcp(peer, 50002, HOST, 22, ACK), 1), drop(step::DEFAULT, 0));
        assert!(session_of(&t, &ssh).is_none());
        // The host's own segments pass egress by default, but reopen nothing: the flow stays cut.
        assert_eq!(run(&mut t, Egress, &tcp(HOST, 22, peer, 50002, ACK), 1), pass(step::DEFAULT, 0));
        assert_eq!(run(&mut t, Ingress, &tcp(peer, 50002, HOST, 22, ACK), 1), drop(step::DEFAULT, 0));
        assert!(session_of(&t, &ssh).is_none());

        // Telnet is now dropped by a rule: its id is reported (a retransmitted SYN: in
        // SYN-SENT the opener's other segments are the rules' anyway).
        assert_eq!(run(&mut t, Ingress, &tcp(peer, 50003, HOST, 23, SYN), 1), drop(step::REVOKED, 1));
        assert!(session_of(&t, &telnet).is_none());

        // An outbound flow admitted by the default is re-checked in its own direction.
        assert_eq!(run(&mut t, Ingress, &tcp(SERVER, 443, HOST, 50004, SYN | ACK), 1), pass(step::SESSION, 0));
        assert_eq!(session_of(&t, &outbound).expect("kept").generation, 2);
        assert_eq!(t.sessions().len(), 2);
    }

    #[test]
    fn sessions_expire_with_the_injected_clock() {
        let cfg = config(WEB);
        let mut t = Tracker::new(&cfg, Timeouts::default());
        let query = meta(ip_proto::UDP, HOST, 5353, SERVER, 53);
        let answer = meta(ip_proto::UDP, SERVER, 53, HOST, 5353);
        assert_eq!(run(&mut t, Egress, &query, 100), pass(step::DEFAULT, 0));
        // Exactly at the unreplied timeout (30 s) the session still stands.
        assert_eq!(run(&mut t, Ingress, &answer, 130), pass(step::SESSION, 0));
        assert_eq!(session_of(&t, &query).expect("kept").state, state::UDP_REPLIED);
        // Replied: 30 s. One nanosecond later than that it is gone.
        let iface = cfg.interface("eth0").expect("eth0");
        assert_eq!(run(&mut t, Ingress, &answer, 160), pass(step::SESSION, 0), "exactly 30 s: kept");
        let late = 190 * SECOND + 1;
        assert_eq!(t.packet(iface, IFINDEX, Ingress, &answer, late), drop(step::DEFAULT, 0));
        assert!(t.sessions().is_empty(), "the expired session is deleted");
        // The host's next query opens a fresh one.
        assert_eq!(t.packet(iface, IFINDEX, Egress, &query, late), pass(step::DEFAULT, 0));
        let s = session_of(&t, &query).expect("fresh");
        assert_eq!((s.state, s.created_ns, s.packets), (state::UDP_UNREPLIED, late, 1));

        // An unreplied flow dies after 30 s.
        let other = meta(ip_proto::UDP, HOST, 5354, SERVER, 53);
        assert_eq!(run(&mut t, Egress, &other, 1000), pass(step::DEFAULT, 0));
        let reply = meta(ip_proto::UDP, SERVER, 53, HOST, 5354);
        assert_eq!(t.packet(iface, IFINDEX, Ingress, &reply, 1030 * SECOND + 1), drop(step::DEFAULT, 0));

        // Custom timeouts are honoured.
        let mut t = Tracker::new(&cfg, Timeouts { udp_unreplied: SECOND, ..Timeouts::default() });
        assert_eq!(run(&mut t, Egress, &query, 0), pass(step::DEFAULT, 0));
        assert_eq!(run(&mut t, Ingress, &answer, 2), drop(step::DEFAULT, 0));
    }

    /// Destination unreachable (port unreachable) from `src` to `dst`, quoting `quoted`.
    fn unreachable(src: &str, dst: &str) -> PacketMeta {
        PacketMeta { icmp_code: 3, ..icmp(src, dst, 3, 0) }
    }

    #[test]
    fn icmp_errors_about_a_live_session_are_related() {
        let cfg = config(WEB);
        let mut t = Tracker::new(&cfg, Timeouts::default());
        let iface = cfg.interface("eth0").expect("eth0");
        let query = meta(ip_proto::UDP, HOST, 5353, SERVER, 53);
        assert_eq!(run(&mut t, Egress, &query, 0), pass(step::DEFAULT, 0));
        let router = "192.0.2.1";
        let error = unreachable(router, HOST);
        let at = |t: &mut Tracker, quoted: Option<&PacketMeta>, now: u64| {
            t.packet_with_embedded(iface, IFINDEX, Ingress, &error, quoted, now)
        };
        assert_eq!(at(&mut t, Some(&query), SECOND), pass(step::RELATED, 0));
        assert_eq!(session_of(&t, &query).expect("kept").packets, 1, "a related error changes nothing");
        // Quoting an unknown flow, or nothing: classified (ingress default drop).
        let unknown = meta(ip_proto::UDP, HOST, 5999, SERVER, 53);
        assert_eq!(at(&mut t, Some(&unknown), SECOND), drop(step::DEFAULT, 0));
        assert_eq!(at(&mut t, None, SECOND), drop(step::DEFAULT, 0));
        // Quoting a session that has expired: classified too.
        assert_eq!(at(&mut t, Some(&query), 31 * SECOND), drop(step::DEFAULT, 0));
        // An error that a rule accepts opens no session.
        let error = unreachable("198.51.100.1", HOST);
        assert_eq!(t.packet_with_embedded(iface, IFINDEX, Ingress, &error, Some(&unknown), 0), pass(step::RULE, 2));
        assert_eq!(t.sessions().len(), 1);
        // Not an error (an echo request quoting nothing real): embedded is ignored.
        let ping = icmp("198.51.100.1", HOST, 8, 1);
        assert_eq!(t.packet_with_embedded(iface, IFINDEX, Ingress, &ping, Some(&query), 0), pass(step::RULE, 2));
    }

    #[test]
    fn icmpv6_errors_about_a_live_session_are_related() {
        let cfg = config(WEB);
        let mut t = Tracker::new(&cfg, Timeouts::default());
        let iface = cfg.interface("eth0").expect("eth0");
        let (host6, server6) = ("2001:db8::10", "2001:db8::99");
        let syn = tcp(host6, 40000, server6, 443, SYN);
        assert_eq!(run(&mut t, Egress, &syn, 0), pass(step::DEFAULT, 0));
        for icmp_type in 1..=4 {
            let error = icmp("2001:db8::1", host6, icmp_type, 0);
            assert_eq!(
                t.packet_with_embedded(iface, IFINDEX, Ingress, &error, Some(&syn), 0),
                pass(step::RELATED, 0),
                "ICMPv6 type {icmp_type}"
            );
        }
        // Type 5 and up are not errors that quote a packet.
        let other = icmp("2001:db8::1", host6, 137, 0);
        assert_eq!(t.packet_with_embedded(iface, IFINDEX, Ingress, &other, Some(&syn), 0), drop(step::DEFAULT, 0));
    }

    #[test]
    fn neighbour_discovery_always_passes() {
        let cfg = config(
            r#"
[[security_group]]
id = "sg-locked"
type = "advanced"

  [[security_group.rule]]
  direction = "ingress"
  policy = "drop"
  protocol = "icmpv6"
  source = "::/0"

[[interface]]
name = "eth0"
security_groups = ["sg-locked"]
mode = "audit"
"#,
        );
        let mut t = Tracker::new(&cfg, Timeouts::default());
        for icmp_type in [130, 131, 132, 133, 134, 135, 136, 143] {
            for dir in [Ingress, Egress] {
                let nd = icmp("fe80::1", "fe80::2", icmp_type, 0);
                assert_eq!(run(&mut t, dir, &nd, 0), pass(step::NEIGHBOUR_DISCOVERY, 0), "type {icmp_type}");
            }
        }
        // Redirects (137), home agent discovery (144, next to MLDv2's 143) and echo are
        // classified: rule 1 on ingress, the default on egress.
        assert_eq!(run(&mut t, Ingress, &icmp("fe80::1", "fe80::2", 144, 0), 0), drop(step::RULE, 1));
        assert_eq!(run(&mut t, Ingress, &icmp("fe80::1", "fe80::2", 137, 0), 0), drop(step::RULE, 1));
        assert_eq!(run(&mut t, Egress, &icmp("fe80::2", "fe80::1", 128, 3), 0), drop(step::DEFAULT, 0));
        // Audit mode reports the computed verdict, and computed drops open nothing.
        assert!(t.sessions().is_empty());
    }

    #[test]
    fn outcomes_display_their_codes() {
        assert_eq!(pass(step::SESSION, 3).to_string(), "pass by session (rule 3)");
        assert_eq!(drop(step::REVOKED, 0).to_string(), "drop by revoked");
        assert_eq!(drop(step::RULE, 12).to_string(), "drop by rule (rule 12)");
    }

    #[test]
    fn helpers_round_trip() {
        for text in ["198.18.0.1", "2001:db8::1", "::ffff:1.2.3.4", "0.0.0.0"] {
            let addr: IpAddr = text.parse().expect("address");
            let fam = if addr.is_ipv4() { family::IPV4 } else { family::IPV6 };
            assert_eq!(addr_from_bytes(fam, &addr_to_bytes(addr)), addr);
        }
        for dir in [Ingress, Egress] {
            assert_eq!(direction_of_hook(hook_of(dir)), dir);
        }
        let gre = PacketMeta { src_port: 1, dst_port: 2, ..meta(ip_proto::GRE, HOST, 0, SERVER, 0) };
        assert_eq!((tuple_of(&gre).src_port, tuple_of(&gre).dst_port), (0, 0));
        let opener = tcp(SERVER, 50000, HOST, 80, SYN);
        let (key, src_is_low) = SessionKey::of(IFINDEX, &opener);
        let session = Session { opener_is_low: u8::from(src_is_low), ..Session::default() };
        assert_eq!(opening_tuple(&key, &session), tuple_of(&opener));
        let session = Session { opener_is_low: u8::from(!src_is_low), ..Session::default() };
        assert_eq!(opening_tuple(&key, &session), tuple_of(&tcp(HOST, 80, SERVER, 50000, SYN)));
    }
}
