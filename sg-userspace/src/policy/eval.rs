//! Reference evaluator: the executable form of docs/rule-model.md#evaluation-order,
//! steps 4 to 7.
//!
//! It is pure and host-side: given a validated [`Config`], an interface, a direction and a
//! packet's addresses, protocol and ports, it says which verdict the data plane must
//! reach and why. The eBPF side is tested against it, and `sgctl trace` prints it.
//!
//! Steps 1 to 3 (parsing, sessions, related ICMP errors) come before these and are out of
//! scope here; they can be layered in front of [`evaluate`], which only needs the
//! stateless verdict of a packet that opens a flow. Each step is its own public function
//! so such a layer can reuse them.

pub mod stateful;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use serde::Serialize;
use serde_json::{Value, json};

use super::config::{Action, Config, Direction, GroupKind, InterfaceBinding, Peer, Protocol, Rule, protocol_name};
use super::order::{default_action, pooled_rules};

/// The fields of a packet that rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketTuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 tcp, 17 udp, 1 icmp, 58 icmpv6, 47 gre, ...).
    pub protocol: u8,
    /// 0 (and ignored) for protocols without ports.
    pub src_port: u16,
    /// The destination port of TCP and UDP; for ICMP and ICMPv6 the message's key
    /// `type << 8 | code` ([`sg_common::icmp_key`]), which rules naming an ICMP type and
    /// code match as TCP rules match ports; 0 (and ignored) for other protocols.
    pub dst_port: u16,
}

impl PacketTuple {
    /// The address rules match against: the source on ingress, the destination on egress.
    pub fn peer(&self, dir: Direction) -> IpAddr {
        match dir {
            Direction::Ingress => self.src,
            Direction::Egress => self.dst,
        }
    }

    /// The instance's own address: the other one.
    pub fn local(&self, dir: Direction) -> IpAddr {
        match dir {
            Direction::Ingress => self.dst,
            Direction::Egress => self.src,
        }
    }

    fn has_ports(&self) -> bool {
        Protocol::from_ip_proto(self.protocol).is_some_and(|p| p.has_ports())
    }

    /// An ICMP or ICMPv6 message of `icmp_type` and `icmp_code` (no ports).
    pub fn icmp(src: IpAddr, dst: IpAddr, icmp_type: u8, icmp_code: u8) -> Self {
        let protocol = if src.is_ipv6() { sg_common::ip_proto::ICMPV6 } else { sg_common::ip_proto::ICMP };
        PacketTuple { src, dst, protocol, src_port: 0, dst_port: sg_common::icmp_key(icmp_type, icmp_code) }
    }
}

/// The verdict for a packet and what reached it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub action: Action,
    pub decided_by: DecidedBy,
    /// The rules ranked above the deciding one (all rules of the direction when none
    /// matched), in rank order, with why each missed. Empty when step 4 decided, since no
    /// rule was consulted.
    pub skipped: Vec<Miss>,
}

/// Which step of docs/rule-model.md#evaluation-order decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum DecidedBy {
    /// Step 4: the peer is a member of this basic group with intra-group connectivity.
    IntraGroupAccept { group_index: usize },
    /// Step 5: the first matching rule in the total order.
    Rule { rule_id: u32 },
    /// Step 6: no rule matched and the peer is a member of this isolated group.
    IntraGroupIsolation { group_index: usize },
    /// Step 7: the default of the interface's group type.
    Default { kind: GroupKind, direction: Direction },
}

/// A rule that did not match, and every reason why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Miss {
    pub rule_id: u32,
    pub reasons: Vec<String>,
}

/// Runs steps 4 to 7 for a packet on `iface` in direction `dir`.
pub fn evaluate(cfg: &Config, iface: &InterfaceBinding, dir: Direction, pkt: &PacketTuple) -> Decision {
    let peer = pkt.peer(dir);
    if let Some(group_index) = intra_group_accept(cfg, iface, peer) {
        return Decision {
            action: Action::Accept,
            decided_by: DecidedBy::IntraGroupAccept { group_index },
            skipped: Vec::new(),
        };
    }
    let mut skipped = Vec::new();
    for rule in pooled_rules(cfg, iface, dir) {
        let reasons = miss_reasons(cfg, rule, dir, pkt);
        if reasons.is_empty() {
            return Decision { action: rule.action, decided_by: DecidedBy::Rule { rule_id: rule.id }, skipped };
        }
        skipped.push(Miss { rule_id: rule.id, reasons });
    }
    if let Some(group_index) = isolating_group(cfg, iface, peer) {
        return Decision { action: Action::Drop, decided_by: DecidedBy::IntraGroupIsolation { group_index }, skipped };
    }
    let kind = iface.kind(cfg);
    Decision { action: default_action(kind, dir), decided_by: DecidedBy::Default { kind, direction: dir }, skipped }
}

/// Step 4: the first group on the interface (in binding order) that is basic, lets its
/// members reach each other, and has `peer` as a member.
pub fn intra_group_accept(cfg: &Config, iface: &InterfaceBinding, peer: IpAddr) -> Option<usize> {
    first_group_with_member(cfg, iface, peer, |kind, inner| kind == GroupKind::Basic && inner == Action::Accept)
}

/// Step 6: the first group on the interface that isolates its members and has `peer` as
/// a member. Consulted only after every rule missed, so rules can still admit members.
pub fn isolating_group(cfg: &Config, iface: &InterfaceBinding, peer: IpAddr) -> Option<usize> {
    first_group_with_member(cfg, iface, peer, |_, inner| inner == Action::Drop)
}

fn first_group_with_member(
    cfg: &Config,
    iface: &InterfaceBinding,
    peer: IpAddr,
    wanted: impl Fn(GroupKind, Action) -> bool,
) -> Option<usize> {
    iface.groups.iter().copied().find(|&index| {
        cfg.groups
            .get(index)
            .is_some_and(|group| wanted(group.kind, group.inner_access) && group.members.contains(&peer))
    })
}

/// Why `rule` does not match `pkt` travelling in `dir`; empty when it matches.
///
/// Every reason is listed, not just the first, so `sgctl trace` can show all that would
/// have to change for the rule to apply.
pub fn miss_reasons(cfg: &Config, rule: &Rule, dir: Direction, pkt: &PacketTuple) -> Vec<String> {
    let mut reasons = Vec::new();
    if !rule.protocol.matches(pkt.protocol) {
        reasons.push(format!("protocol {} does not match {}", protocol_name(pkt.protocol), rule.protocol.name()));
    }
    // An icmp rule's type and code are a range of ICMP keys, which the packet carries
    // in `dst_port` (the protocol check above makes it an ICMP message of the family).
    if let Some(icmp) = rule.icmp()
        && rule.protocol.matches(pkt.protocol)
        && !rule.port_range.contains(pkt.dst_port)
    {
        let [icmp_type, code] = pkt.dst_port.to_be_bytes();
        reasons.push(format!("ICMP type {icmp_type} code {code} is not {icmp}"));
    }
    // Ports mean something only when both the rule and the packet have them.
    if rule.protocol.has_ports() && pkt.has_ports() {
        if !rule.port_range.contains(pkt.dst_port) {
            reasons.push(format!("port {} not in {}", pkt.dst_port, rule.port_range));
        }
        if let Some(sport) = rule.source_port_range
            && !sport.contains(pkt.src_port)
        {
            reasons.push(format!("source port {} not in {sport}", pkt.src_port));
        }
    }
    if let Some(reason) = peer_miss(cfg, &rule.peer, pkt.peer(dir)) {
        reasons.push(reason);
    }
    let local = pkt.local(dir);
    if let Some(net) = rule.local
        && !net.contains(&local)
    {
        reasons.push(format!("local {local} not in {net}"));
    }
    reasons
}

/// Why `addr` is not matched by `peer`, if it is not. Containment never crosses address
/// families: an IPv4 network holds no IPv6 address and vice versa.
fn peer_miss(cfg: &Config, peer: &Peer, addr: IpAddr) -> Option<String> {
    match peer {
        Peer::Cidr(net) => (!net.contains(&addr)).then(|| format!("peer {addr} not in {net}")),
        Peer::Group { group_index } => {
            let group = cfg.groups.get(*group_index)?;
            (!group.members.contains(&addr)).then(|| format!("peer {addr} is not a member of {}", group.id))
        }
        Peer::PrefixList { list_index } => {
            let list = cfg.prefix_lists.get(*list_index)?;
            (!list.entries.iter().any(|net| net.contains(&addr)))
                .then(|| format!("peer {addr} not in prefix list {}", list.id))
        }
    }
}

impl Decision {
    /// Machine-readable form for `sgctl trace --json`: ids resolved to labels.
    pub fn to_json(&self, cfg: &Config) -> Value {
        let skipped: Vec<Value> = self
            .skipped
            .iter()
            .map(|miss| {
                let mut entry = rule_json(cfg, miss.rule_id);
                entry["reasons"] = json!(miss.reasons);
                entry
            })
            .collect();
        json!({
            "action": self.action,
            "decided_by": self.decided_by_json(cfg),
            "skipped": skipped,
        })
    }

    fn decided_by_json(&self, cfg: &Config) -> Value {
        match &self.decided_by {
            DecidedBy::IntraGroupAccept { group_index } => json!({
                "step": "intra_group_accept",
                "group": group_id(cfg, *group_index),
            }),
            DecidedBy::Rule { rule_id } => {
                let mut value = rule_json(cfg, *rule_id);
                value["step"] = json!("rule");
                value
            }
            DecidedBy::IntraGroupIsolation { group_index } => json!({
                "step": "intra_group_isolation",
                "group": group_id(cfg, *group_index),
            }),
            DecidedBy::Default { kind, direction } => json!({
                "step": "default",
                "kind": kind,
                "direction": direction,
            }),
        }
    }

    /// A human explanation: the verdict, what decided it, then the higher-ranked rules
    /// that did not match and why.
    pub fn explain(&self, cfg: &Config) -> String {
        let mut lines = vec![format!("verdict: {}", self.action)];
        lines.push(format!("decided by: {}", self.describe_decider(cfg)));
        if !self.skipped.is_empty() {
            lines.push(match self.decided_by {
                DecidedBy::Rule { .. } => "higher-ranked rules that did not match:".to_string(),
                _ => "rules that did not match:".to_string(),
            });
            for miss in &self.skipped {
                lines.push(format!("  {}: {}", rule_heading(cfg, miss.rule_id), miss.reasons.join("; ")));
            }
        }
        lines.join("\n")
    }

    fn describe_decider(&self, cfg: &Config) -> String {
        match &self.decided_by {
            DecidedBy::IntraGroupAccept { group_index } => format!(
                "intra-group connectivity of {} (the peer is a member of this basic group)",
                group_id(cfg, *group_index)
            ),
            DecidedBy::Rule { rule_id } => {
                let Some(rule) = cfg.rule(*rule_id) else {
                    return format!("rule id {rule_id}");
                };
                let mut text =
                    format!("rule {} (id {}, line {}): {}", rule.label(cfg), rule.id, rule.line, rule.summary(cfg));
                if !rule.description.is_empty() {
                    text.push_str(&format!(" -- {:?}", rule.description));
                }
                text
            }
            DecidedBy::IntraGroupIsolation { group_index } => format!(
                "intra-group isolation of {} (no rule matched and the peer is a member)",
                group_id(cfg, *group_index)
            ),
            DecidedBy::Default { kind, direction } => {
                format!("default of {kind} groups for {direction} (no rule matched)")
            }
        }
    }
}

fn group_id(cfg: &Config, index: usize) -> String {
    cfg.groups.get(index).map_or_else(|| format!("#{index}"), |group| group.id.clone())
}

/// `sg-web#2 (id 3, priority 1, drop)`.
fn rule_heading(cfg: &Config, rule_id: u32) -> String {
    match cfg.rule(rule_id) {
        Some(rule) => format!("{} (id {}, priority {}, {})", rule.label(cfg), rule.id, rule.priority, rule.action),
        None => format!("rule id {rule_id}"),
    }
}

fn rule_json(cfg: &Config, rule_id: u32) -> Value {
    match cfg.rule(rule_id) {
        Some(rule) => json!({
            "rule_id": rule.id,
            "label": rule.label(cfg),
            "group": group_id(cfg, rule.group_index),
            "priority": rule.priority,
            "policy": rule.action,
            "summary": rule.summary(cfg),
            "description": rule.description,
            "line": rule.line,
        }),
        None => json!({ "rule_id": rule_id }),
    }
}
