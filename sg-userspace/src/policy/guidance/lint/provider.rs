//! `sgctl lint --provider`: what a cloud provider would refuse or limit in a rule file.
//!
//! Alibaba Cloud ECS: protocols TCP, UDP, ICMP, ICMPv6, GRE and ALL only, no ICMP types
//! or codes; at most 1,000 rules over all groups of one NIC; at most 20 rules
//! referencing groups in one basic group; at most 200 entries in a prefix list. (That
//! advanced groups neither reference groups nor can be referenced is the validator's
//! error, for every file.) AWS EC2: security groups only
//! allow (no drop rules) and have no priorities; rules match destination ports and the
//! peer only (no source ports, no local address); by default at most 60 inbound and 60
//! outbound rules per group and 5 groups per network interface (quotas that can be raised).

use serde::Serialize;

use super::{Finding, Severity};
use crate::policy::config::{Action, Config, Direction, GroupKind, Peer, Protocol};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Alibaba,
    Aws,
}

pub const ALIBABA_RULES_PER_NIC: usize = 1000;
pub const ALIBABA_GROUP_RULES_PER_BASIC_GROUP: usize = 20;
pub const ALIBABA_PREFIX_LIST_ENTRIES: usize = 200;
pub const AWS_RULES_PER_DIRECTION: usize = 60;
pub const AWS_GROUPS_PER_INTERFACE: usize = 5;

pub(super) fn check(cfg: &Config, file: &str, provider: Provider) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut push = |severity,
                    check,
                    line,
                    group: Option<&str>,
                    rule: Option<String>,
                    iface: Option<&str>,
                    message: String,
                    fix: &str| {
        out.push(Finding {
            severity,
            check,
            file: file.to_string(),
            line,
            group: group.map(str::to_string),
            rule,
            interface: iface.map(str::to_string),
            message,
            fix: fix.to_string(),
            related: Vec::new(),
        });
    };
    match provider {
        Provider::Alibaba => {
            for iface in &cfg.interfaces {
                let count: usize = iface.groups.iter().map(|&g| cfg.groups[g].rules.len()).sum();
                if count > ALIBABA_RULES_PER_NIC {
                    push(
                        Severity::Error,
                        "provider-limit",
                        0,
                        None,
                        None,
                        Some(&iface.name),
                        format!(
                            "alibaba: interface {} has {count} rules over its groups; a NIC allows at most \
                             {ALIBABA_RULES_PER_NIC}",
                            iface.name
                        ),
                        "merge rules (prefix lists, port ranges) or move groups to another NIC",
                    );
                }
            }
            for group in &cfg.groups {
                let referencing: Vec<_> = group.rules.iter().filter(|r| matches!(r.peer, Peer::Group { .. })).collect();
                if group.kind == GroupKind::Basic && referencing.len() > ALIBABA_GROUP_RULES_PER_BASIC_GROUP {
                    push(
                        Severity::Error,
                        "provider-limit",
                        referencing[ALIBABA_GROUP_RULES_PER_BASIC_GROUP].line,
                        Some(&group.id),
                        None,
                        None,
                        format!(
                            "alibaba: basic group {} has {} rules referencing groups; at most \
                             {ALIBABA_GROUP_RULES_PER_BASIC_GROUP} are allowed",
                            group.id,
                            referencing.len()
                        ),
                        "reference fewer groups (merge the peers into one group, or use prefix lists of their addresses)",
                    );
                }
            }
            // Alibaba's IpProtocol is TCP, UDP, ICMP, ICMPv6, GRE or ALL, and its rules
            // match no ICMP type or code: `sgctl export alibaba` refuses these rules.
            for rule in cfg.rules() {
                let what = match (rule.protocol, rule.icmp()) {
                    (Protocol::Number(number), _) => format!("protocol {number}"),
                    (_, Some(icmp)) => format!("ICMP {icmp}"),
                    _ => continue,
                };
                push(
                    Severity::Error,
                    "provider-refuses",
                    rule.line,
                    cfg.groups.get(rule.group_index).map(|g| g.id.as_str()),
                    Some(rule.label(cfg)),
                    None,
                    format!(
                        "alibaba: rules take only the protocols TCP, UDP, ICMP, ICMPv6, GRE and ALL, and match no \
                         ICMP type or code; this rule matches {what}"
                    ),
                    "keep the rule off Alibaba Cloud, or widen it knowingly (protocol all, or every ICMP message)",
                );
            }
            for list in &cfg.prefix_lists {
                if list.entries.len() > ALIBABA_PREFIX_LIST_ENTRIES {
                    push(
                        Severity::Error,
                        "provider-limit",
                        0,
                        None,
                        None,
                        None,
                        format!(
                            "alibaba: prefix list {} has {} entries; at most {ALIBABA_PREFIX_LIST_ENTRIES} are allowed",
                            list.id,
                            list.entries.len()
                        ),
                        "split the list, or aggregate entries into shorter prefixes",
                    );
                }
            }
        }
        Provider::Aws => {
            for iface in &cfg.interfaces {
                if iface.groups.len() > AWS_GROUPS_PER_INTERFACE {
                    push(
                        Severity::Warning,
                        "provider-limit",
                        0,
                        None,
                        None,
                        Some(&iface.name),
                        format!(
                            "aws: interface {} has {} groups; the default quota is {AWS_GROUPS_PER_INTERFACE} per \
                             network interface",
                            iface.name,
                            iface.groups.len()
                        ),
                        "merge groups, or raise the quota",
                    );
                }
            }
            for group in &cfg.groups {
                if group.kind == GroupKind::Advanced {
                    push(
                        Severity::Warning,
                        "provider-refuses",
                        group.rules.first().map_or(0, |r| r.line),
                        Some(&group.id),
                        None,
                        None,
                        format!(
                            "aws: there are no advanced groups; {} isolates its members and drops egress by default, \
                             which an AWS group expresses only by having no self-reference and no egress rules",
                            group.id
                        ),
                        "check that export's reading (no self-reference, only the written egress rules) is what you \
                         mean",
                    );
                }
                for direction in [Direction::Ingress, Direction::Egress] {
                    let count = group.rules.iter().filter(|r| r.direction == direction).count();
                    if count > AWS_RULES_PER_DIRECTION {
                        push(
                            Severity::Warning,
                            "provider-limit",
                            group
                                .rules
                                .iter()
                                .filter(|r| r.direction == direction)
                                .nth(AWS_RULES_PER_DIRECTION)
                                .map_or(0, |r| r.line),
                            Some(&group.id),
                            None,
                            None,
                            format!(
                                "aws: group {} has {count} {direction} rules; the default quota is \
                                 {AWS_RULES_PER_DIRECTION} per direction",
                                group.id
                            ),
                            "merge rules (port ranges, prefix lists), or raise the quota",
                        );
                    }
                }
                let mut priorities: Vec<u8> = group.rules.iter().map(|r| r.priority).collect();
                priorities.sort_unstable();
                priorities.dedup();
                if priorities.len() > 1 {
                    push(
                        Severity::Info,
                        "provider-refuses",
                        group.rules.first().map_or(0, |r| r.line),
                        Some(&group.id),
                        None,
                        None,
                        format!("aws: rules have no priorities; {}'s priorities {priorities:?} are dropped", group.id),
                        "with accept rules only, priorities change nothing; with drops they cannot be exported",
                    );
                }
                for rule in &group.rules {
                    let label = Some(rule.label(cfg));
                    if rule.action == Action::Drop {
                        push(
                            Severity::Error,
                            "provider-refuses",
                            rule.line,
                            Some(&group.id),
                            label.clone(),
                            None,
                            "aws: security groups have no drop rules".to_string(),
                            "express the intent by narrowing the accepts (AWS admits only what some rule allows), or \
                             use a network ACL for the drop",
                        );
                    }
                    if rule.source_port_range.is_some() {
                        push(
                            Severity::Error,
                            "provider-refuses",
                            rule.line,
                            Some(&group.id),
                            label.clone(),
                            None,
                            "aws: rules cannot match source ports".to_string(),
                            "remove source_port_range",
                        );
                    }
                    if rule.local.is_some() {
                        push(
                            Severity::Error,
                            "provider-refuses",
                            rule.line,
                            Some(&group.id),
                            label.clone(),
                            None,
                            "aws: rules cannot narrow the local address (destination on ingress, source on egress)"
                                .to_string(),
                            "remove the local narrowing, or move the instances it selects to their own group",
                        );
                    }
                }
            }
        }
    }
    out
}
