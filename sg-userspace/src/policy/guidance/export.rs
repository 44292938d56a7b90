//! `sgctl export alibaba|aws FILE`: a rule file in a provider's own response format,
//! refusing, with the rule and its line, what the provider cannot express.
//!
//! Alibaba: one `DescribeSecurityGroupAttribute` response per group (a JSON array). The
//! response has no place for a group's type, members or prefix-list entries: they are
//! named in the notes (give them back with `sgctl import alibaba --type --members`).
//!
//! AWS: `describe-security-groups` output. AWS allows only, so drop rules are refused,
//! except the drop-alls that rank below every accept of their direction, which only make
//! the direction an allow list (AWS's own egress semantics: then no allow-all egress rule
//! is written); source ports and local addresses are refused; a basic group's egress
//! default becomes the allow-all egress rules AWS groups start with, and intra-group
//! connectivity a rule allowing everything from the group itself.

use serde_json::{Value, json};

use crate::policy::config::{
    Action, Config, Direction, Family, GroupKind, Peer, PortRange, Protocol, Rule, SecurityGroup,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error("{} rule(s) cannot be exported:\n{}", .0.len(), .0.join("\n"))]
    Refused(Vec<String>),
}

/// The exported document and notes on what it leaves out.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    pub document: Value,
    pub notes: Vec<String>,
}

fn refusal(cfg: &Config, file: &str, rule: &Rule, message: &str) -> String {
    format!("{file}:{}: rule {}: {message}", rule.line, rule.label(cfg))
}

/// Alibaba's `IpProtocol` for `protocol`; `None` for a protocol by number, which
/// Alibaba's documented values (TCP, UDP, ICMP, ICMPv6, GRE, ALL) cannot express.
fn protocol_name(protocol: Protocol) -> Option<&'static str> {
    match protocol {
        Protocol::Tcp => Some("TCP"),
        Protocol::Udp => Some("UDP"),
        Protocol::Icmp => Some("ICMP"),
        Protocol::Icmpv6 => Some("ICMPv6"),
        Protocol::Gre => Some("GRE"),
        Protocol::All => Some("ALL"),
        Protocol::Number(_) => None,
    }
}

fn ports(range: PortRange) -> String {
    range.to_string()
}

/// The account to name with a reference to `target` from `own`, if any.
fn reference_account(own: &SecurityGroup, target: &SecurityGroup) -> Option<String> {
    target.owner.clone().filter(|owner| own.owner.as_ref() != Some(owner))
}

pub fn alibaba(cfg: &Config, file: &str) -> Result<Exported, ExportError> {
    let mut refused = Vec::new();
    let mut responses = Vec::new();
    for group in &cfg.groups {
        let mut permissions = Vec::new();
        for rule in &group.rules {
            let mut p = serde_json::Map::new();
            p.insert("Direction".into(), json!(rule.direction.to_string()));
            p.insert("Policy".into(), json!(if rule.action == Action::Accept { "Accept" } else { "Drop" }));
            p.insert("Priority".into(), json!(rule.priority));
            match protocol_name(rule.protocol) {
                Some(name) => {
                    p.insert("IpProtocol".into(), json!(name));
                }
                None => refused.push(refusal(
                    cfg,
                    file,
                    rule,
                    &format!(
                        "Alibaba Cloud: IpProtocol takes only TCP, UDP, ICMP, ICMPv6, GRE and ALL, not {}; \
                         exporting it as ALL would widen it",
                        rule.protocol.name()
                    ),
                )),
            }
            if let Some(icmp) = rule.icmp() {
                refused.push(refusal(
                    cfg,
                    file,
                    rule,
                    &format!(
                        "Alibaba Cloud: rules cannot match an ICMP type or code ({icmp}); exporting it for \
                         every {} message would widen it",
                        rule.protocol
                    ),
                ));
            }
            // An icmp rule's port range holds its ICMP keys, which Alibaba has no field for.
            let port_range = if rule.protocol.is_icmp() { PortRange::ANY } else { rule.port_range };
            p.insert("PortRange".into(), json!(ports(port_range)));
            if let Some(sport) = rule.source_port_range {
                p.insert("SourcePortRange".into(), json!(ports(sport)));
            }
            let (side, local_side) = match rule.direction {
                Direction::Ingress => ("Source", "Dest"),
                Direction::Egress => ("Dest", "Source"),
            };
            match &rule.peer {
                Peer::Cidr(net) => {
                    let key = match Family::of_net(net) {
                        Family::Ipv4 => format!("{side}CidrIp"),
                        Family::Ipv6 => format!("Ipv6{side}CidrIp"),
                    };
                    p.insert(key, json!(net.to_string()));
                }
                Peer::Group { group_index } => {
                    let target = &cfg.groups[*group_index];
                    if group.kind == GroupKind::Advanced || target.kind == GroupKind::Advanced {
                        refused.push(refusal(
                            cfg,
                            file,
                            rule,
                            "Alibaba Cloud: advanced groups cannot reference groups or be referenced",
                        ));
                    }
                    p.insert(format!("{side}GroupId"), json!(target.id));
                    if let Some(account) = reference_account(group, target) {
                        p.insert(format!("{side}GroupOwnerAccount"), json!(account));
                    }
                }
                Peer::PrefixList { list_index } => {
                    p.insert(format!("{side}PrefixListId"), json!(cfg.prefix_lists[*list_index].id));
                }
            }
            if let Some(local) = rule.local {
                let key = match Family::of_net(&local) {
                    Family::Ipv4 => format!("{local_side}CidrIp"),
                    Family::Ipv6 => format!("Ipv6{local_side}CidrIp"),
                };
                p.insert(key, json!(local.to_string()));
            }
            if !rule.description.is_empty() {
                p.insert("Description".into(), json!(rule.description));
            }
            p.insert("NicType".into(), json!("intranet"));
            permissions.push(Value::Object(p));
        }
        responses.push(json!({
            "SecurityGroupId": group.id,
            "InnerAccessPolicy": if group.inner_access == Action::Accept { "Accept" } else { "Drop" },
            "Permissions": { "Permission": permissions },
        }));
    }
    if !refused.is_empty() {
        return Err(ExportError::Refused(refused));
    }
    let mut notes = Vec::new();
    for group in &cfg.groups {
        let members: Vec<String> = group.members.iter().map(ToString::to_string).collect();
        if let Some(owner) = &group.owner {
            notes.push(format!("{}: owner {owner} is carried only by references to the group", group.id));
        }
        notes.push(format!(
            "{}: type {} and members [{}] are not part of the response (import with --type {} --members {}={})",
            group.id,
            group.kind,
            members.join(", "),
            group.kind,
            group.id,
            members.join(",")
        ));
    }
    for list in &cfg.prefix_lists {
        notes.push(format!("prefix list {}: its {} entries are not part of the response", list.id, list.entries.len()));
    }
    Ok(Exported { document: Value::Array(responses), notes })
}

/// Whether `rule` is a drop-all (every protocol to the whole of a family) ranked below
/// every accept of its direction in the file: it only makes the direction an allow list.
fn allow_list_marker(cfg: &Config, rule: &Rule) -> Option<Family> {
    let Peer::Cidr(net) = rule.peer else { return None };
    if rule.action != Action::Drop || rule.protocol != Protocol::All || net.prefix_len() != 0 || rule.local.is_some() {
        return None;
    }
    let below_every_accept = cfg
        .rules()
        .filter(|r| r.direction == rule.direction && r.action == Action::Accept)
        .all(|accept| accept.priority < rule.priority);
    below_every_accept.then(|| Family::of_net(&net))
}

/// The group `index` stands for, when it is the companion `sgctl import` writes for a
/// self-reference (`ID-members`: the members of `ID`, no rules of its own).
fn companion_base(cfg: &Config, index: usize) -> Option<usize> {
    let group = cfg.groups.get(index)?;
    let base_id = group.id.strip_suffix("-members")?;
    let base = cfg.groups.iter().position(|g| g.id == base_id)?;
    let same_members = {
        let (mut a, mut b) = (group.members.clone(), cfg.groups[base].members.clone());
        a.sort();
        b.sort();
        a == b
    };
    (group.rules.is_empty() && same_members).then_some(base)
}

pub fn aws(cfg: &Config, file: &str) -> Result<Exported, ExportError> {
    let mut refused = Vec::new();
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for (index, group) in cfg.groups.iter().enumerate() {
        if companion_base(cfg, index).is_some() {
            // Its references become AWS self-references; it is no group of its own there.
            continue;
        }
        let mut ingress = Vec::new();
        let mut egress = Vec::new();
        let mut egress_allow_list: Vec<Family> = Vec::new();
        for rule in &group.rules {
            if rule.action == Action::Drop {
                match allow_list_marker(cfg, rule) {
                    Some(family) if rule.direction == Direction::Egress => egress_allow_list.push(family),
                    // Ingress is an allow list already: the drop-all changes nothing.
                    Some(_) => {}
                    None => refused.push(refusal(
                        cfg,
                        file,
                        rule,
                        "AWS security groups have no drop rules (only a drop-all ranked below every accept, which \
                         makes the direction an allow list, can be expressed)",
                    )),
                }
                continue;
            }
            if rule.source_port_range.is_some() {
                refused.push(refusal(cfg, file, rule, "AWS rules cannot match source ports"));
                continue;
            }
            if rule.local.is_some() {
                refused.push(refusal(
                    cfg,
                    file,
                    rule,
                    "AWS rules cannot narrow the local address (destination on ingress, source on egress)",
                ));
                continue;
            }
            let permission = aws_permission(cfg, group, rule);
            match rule.direction {
                Direction::Ingress => ingress.push(permission),
                Direction::Egress => egress.push(permission),
            }
        }
        if group.inner_access == Action::Accept && group.kind == GroupKind::Basic {
            let pair =
                json!({ "IpProtocol": "-1", "UserIdGroupPairs": [ self_pair(group, "intra-group connectivity") ] });
            ingress.push(pair.clone());
            // Members reach each other both ways; with an egress allow list that needs
            // an egress rule too.
            if !egress_allow_list.is_empty() {
                egress.push(pair);
            }
        }
        if group.kind == GroupKind::Basic {
            for (family, world) in [(Family::Ipv4, "0.0.0.0/0"), (Family::Ipv6, "::/0")] {
                let allows_all = group.rules.iter().any(|r| {
                    r.direction == Direction::Egress
                        && r.action == Action::Accept
                        && r.protocol == Protocol::All
                        && r.local.is_none()
                        && matches!(r.peer, Peer::Cidr(net) if net.prefix_len() == 0 && Family::of_net(&net) == family)
                });
                if egress_allow_list.contains(&family) || allows_all {
                    continue;
                }
                let isolated_members =
                    group.inner_access == Action::Drop && group.members.iter().any(|m| Family::of_addr(m) == family);
                if isolated_members {
                    refused.push(format!(
                        "{file}: group {}: a basic group isolating its members drops {family} egress to them, which \
                         AWS's allow-all egress cannot except; add an {family} egress drop-all at priority 100 and \
                         allow what is needed",
                        group.id
                    ));
                }
                let range = match family {
                    Family::Ipv4 => {
                        json!({ "IpRanges": [ { "CidrIp": world, "Description": "basic group: egress allowed by default" } ] })
                    }
                    Family::Ipv6 => {
                        json!({ "Ipv6Ranges": [ { "CidrIpv6": world, "Description": "basic group: egress allowed by default" } ] })
                    }
                };
                let mut permission = json!({ "IpProtocol": "-1" });
                if let (Some(p), Some(r)) = (permission.as_object_mut(), range.as_object()) {
                    p.extend(r.clone());
                }
                egress.push(permission);
            }
        }
        let mut value = json!({
            "GroupId": group.id,
            "GroupName": group.id,
            "Description": format!("exported by sgctl ({} group)", group.kind),
            "IpPermissions": ingress,
            "IpPermissionsEgress": egress,
        });
        if let (Some(owner), Some(object)) = (&group.owner, value.as_object_mut()) {
            object.insert("OwnerId".into(), json!(owner));
        }
        out.push(value);
        let members: Vec<String> = group.members.iter().map(ToString::to_string).collect();
        if members.is_empty() {
            continue;
        }
        notes.push(format!(
            "{}: members [{}] are not part of the output (import with --members {}={})",
            group.id,
            members.join(", "),
            group.id,
            members.join(",")
        ));
    }
    refused.extend(mixed_egress(cfg, file));
    if !refused.is_empty() {
        return Err(ExportError::Refused(refused));
    }
    Ok(Exported { document: json!({ "SecurityGroups": out }), notes })
}

/// On an interface, a drop-all of one group closes egress for all of its groups, while
/// AWS admits what any group allows: a basic group without the drop-all, exported with
/// AWS's allow-all egress, would open the other's allow list.
fn mixed_egress(cfg: &Config, file: &str) -> Vec<String> {
    let mut out = Vec::new();
    for iface in &cfg.interfaces {
        for family in [Family::Ipv4, Family::Ipv6] {
            let marked = |g: &SecurityGroup| {
                g.rules.iter().any(|r| r.direction == Direction::Egress && allow_list_marker(cfg, r) == Some(family))
            };
            let allows_all = |g: &SecurityGroup| {
                g.rules.iter().any(|r| {
                    r.direction == Direction::Egress
                        && r.action == Action::Accept
                        && r.protocol == Protocol::All
                        && r.local.is_none()
                        && matches!(r.peer, Peer::Cidr(net) if net.prefix_len() == 0 && Family::of_net(&net) == family)
                })
            };
            let groups: Vec<&SecurityGroup> = iface.groups.iter().map(|&g| &cfg.groups[g]).collect();
            let Some(closing) = groups.iter().find(|g| marked(g)) else { continue };
            for open in groups.iter().filter(|g| g.kind == GroupKind::Basic && !marked(g) && !allows_all(g)) {
                out.push(format!(
                    "{file}: interface {}: {} makes {family} egress an allow list for the whole interface, but {} \
                     (basic) would be exported with AWS's allow-all {family} egress, which opens it; add the same \
                     drop-all to {}",
                    iface.name, closing.id, open.id, open.id
                ));
            }
        }
    }
    out
}

fn self_pair(group: &SecurityGroup, description: &str) -> Value {
    let mut pair = json!({ "GroupId": group.id, "Description": description });
    if let (Some(owner), Some(object)) = (&group.owner, pair.as_object_mut()) {
        object.insert("UserId".into(), json!(owner));
    }
    pair
}

fn aws_permission(cfg: &Config, group: &SecurityGroup, rule: &Rule) -> Value {
    let protocol = match rule.protocol {
        Protocol::Tcp => "tcp".to_string(),
        Protocol::Udp => "udp".to_string(),
        Protocol::Icmp => "icmp".to_string(),
        Protocol::Icmpv6 => "icmpv6".to_string(),
        Protocol::Gre => "47".to_string(),
        Protocol::All => "-1".to_string(),
        Protocol::Number(number) => number.to_string(),
    };
    let mut p = serde_json::Map::new();
    p.insert("IpProtocol".into(), json!(protocol));
    match rule.protocol {
        Protocol::Tcp | Protocol::Udp => {
            p.insert("FromPort".into(), json!(rule.port_range.first));
            p.insert("ToPort".into(), json!(rule.port_range.last));
        }
        Protocol::Icmp | Protocol::Icmpv6 => {
            // AWS: FromPort is the ICMP type, ToPort the code, -1 for all.
            let icmp = rule.icmp();
            let icmp_type = icmp.map_or(-1, |m| i32::from(m.icmp_type));
            let code = icmp.and_then(|m| m.code).map_or(-1, i32::from);
            p.insert("FromPort".into(), json!(icmp_type));
            p.insert("ToPort".into(), json!(code));
        }
        _ => {}
    }
    let mut described = serde_json::Map::new();
    if !rule.description.is_empty() {
        described.insert("Description".into(), json!(rule.description));
    }
    match &rule.peer {
        Peer::Cidr(net) => {
            let mut range = described.clone();
            match Family::of_net(net) {
                Family::Ipv4 => {
                    range.insert("CidrIp".into(), json!(net.to_string()));
                    p.insert("IpRanges".into(), json!([range]));
                }
                Family::Ipv6 => {
                    range.insert("CidrIpv6".into(), json!(net.to_string()));
                    p.insert("Ipv6Ranges".into(), json!([range]));
                }
            }
        }
        Peer::Group { group_index } => {
            let target = &cfg.groups[companion_base(cfg, *group_index).unwrap_or(*group_index)];
            let mut pair = described.clone();
            pair.insert("GroupId".into(), json!(target.id));
            if let Some(owner) = target.owner.clone().or_else(|| group.owner.clone()) {
                pair.insert("UserId".into(), json!(owner));
            }
            p.insert("UserIdGroupPairs".into(), json!([pair]));
        }
        Peer::PrefixList { list_index } => {
            let mut list = described.clone();
            list.insert("PrefixListId".into(), json!(cfg.prefix_lists[*list_index].id));
            p.insert("PrefixListIds".into(), json!([list]));
        }
    }
    Value::Object(p)
}
