//! Alibaba Cloud ECS `DescribeSecurityGroupAttribute` responses.
//!
//! Each response describes one group: `SecurityGroupId`, `InnerAccessPolicy` and
//! `Permissions.Permission[]`. Responses of one group (pages) are concatenated. Empty
//! strings mean "unset"; enum values are read in any case; `Priority` may be a number or a
//! string. The response carries neither the group's type nor its members: `--type` and
//! `--members` supply them, or `--context` with `DescribeSecurityGroups` and
//! `DescribeNetworkInterfaces` responses (see [`super::context`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::{
    Draft, DraftGroup, DraftRule, ImportError, Problem, Problems, ensure_companion, ensure_placeholder_group,
    ensure_placeholder_list, render,
};
use crate::policy::config::{Action, Direction, Family, GroupKind, PRIORITY_RANGE, Protocol};

#[derive(Debug, Clone)]
pub struct Options {
    /// The type of every imported group (the response does not say; the provider's
    /// default is basic).
    pub kind: GroupKind,
    /// Per-group types overriding `kind` (from a `DescribeSecurityGroups` response).
    pub kinds: BTreeMap<String, GroupKind>,
    pub members: BTreeMap<String, Vec<IpAddr>>,
    /// Bind the imported groups to an interface of this name.
    pub interface: Option<String>,
}

const RESPONSE_FIELDS: &[&str] = &[
    "RequestId",
    "RegionId",
    "SecurityGroupId",
    "SecurityGroupName",
    "Description",
    "VpcId",
    "InnerAccessPolicy",
    "Permissions",
    "NextToken",
];

const PERMISSION_FIELDS: &[&str] = &[
    "Direction",
    "Policy",
    "Priority",
    "IpProtocol",
    "PortRange",
    "SourcePortRange",
    "SourceCidrIp",
    "Ipv6SourceCidrIp",
    "SourceGroupId",
    "SourceGroupOwnerAccount",
    "SourceGroupName",
    "SourcePrefixListId",
    "SourcePrefixListName",
    "DestCidrIp",
    "Ipv6DestCidrIp",
    "DestGroupId",
    "DestGroupOwnerAccount",
    "DestGroupName",
    "DestPrefixListId",
    "DestPrefixListName",
    "Description",
    "NicType",
    "SecurityGroupRuleId",
    "CreateTime",
    "PortRangeListId",
    "PortRangeListName",
];

/// A field's text: strings as they are, numbers in decimal; empty and null mean unset.
fn text(object: &Map<String, Value>, key: &str) -> Option<String> {
    match object.get(key)? {
        Value::String(s) if s.trim().is_empty() => None,
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

struct Group {
    id: String,
    location: String,
    inner: Option<String>,
    description: Option<String>,
    name: Option<String>,
    permissions: Vec<(String, Map<String, Value>)>,
}

/// Imports the responses of `inputs` (file name, values) into a rule file.
pub fn import(inputs: &[(String, Vec<Value>)], options: &Options) -> Result<(String, Vec<Problem>), ImportError> {
    let mut problems = Problems::default();
    let mut groups: Vec<Group> = Vec::new();
    for (file, values) in inputs {
        for (index, value) in values.iter().enumerate() {
            let location = format!("{file}: response[{}]", index + 1);
            let Some(object) = value.as_object() else {
                problems.error(location, "expected a DescribeSecurityGroupAttribute response (a JSON object)");
                continue;
            };
            problems.unknown_fields(&location, object, RESPONSE_FIELDS);
            let Some(id) = text(object, "SecurityGroupId") else {
                problems.error(format!("{location}.SecurityGroupId"), "missing: the response names no group");
                continue;
            };
            if !problems.check_id(format!("{location}.SecurityGroupId"), "group id", &id) {
                continue;
            }
            let position = match groups.iter().position(|g| g.id == id) {
                Some(position) => position,
                None => {
                    groups.push(Group {
                        id: id.clone(),
                        location: format!("{file}: {id}"),
                        inner: None,
                        description: None,
                        name: None,
                        permissions: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            let group = &mut groups[position];
            if let Some(inner) = text(object, "InnerAccessPolicy") {
                if group.inner.as_ref().is_some_and(|known| !known.eq_ignore_ascii_case(&inner)) {
                    problems.error(
                        format!("{file}: {id}: InnerAccessPolicy"),
                        format!("pages of {id} disagree: {} and {inner}", group.inner.clone().unwrap_or_default()),
                    );
                }
                group.inner = Some(inner);
            }
            group.description = group.description.take().or_else(|| text(object, "Description"));
            group.name = group.name.take().or_else(|| text(object, "SecurityGroupName"));
            let permissions = match object.get("Permissions") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Object(p)) => {
                    problems.unknown_fields(&format!("{file}: {id}: Permissions"), p, &["Permission"]);
                    match p.get("Permission") {
                        Some(Value::Array(items)) => items.clone(),
                        None | Some(Value::Null) => Vec::new(),
                        Some(_) => {
                            problems.error(format!("{file}: {id}: Permissions.Permission"), "expected an array");
                            Vec::new()
                        }
                    }
                }
                // Some SDKs flatten the list.
                Some(Value::Array(items)) => items.clone(),
                Some(_) => {
                    problems.error(format!("{file}: {id}: Permissions"), "expected an object with a Permission array");
                    Vec::new()
                }
            };
            for permission in permissions {
                let n = group.permissions.len() + 1;
                let location = format!("{file}: {id}: Permissions.Permission[{n}]");
                match permission {
                    Value::Object(p) => group.permissions.push((location, p)),
                    _ => problems.error(location, "expected an object"),
                }
            }
        }
    }
    let mut draft = Draft { interface: options.interface.clone(), ..Draft::default() };
    for group in &groups {
        let kind = options.kinds.get(&group.id).copied().unwrap_or(options.kind);
        let inner = match group.inner.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None => None,
            Some("accept") => Some(Action::Accept),
            Some("drop") => Some(Action::Drop),
            Some(other) => {
                problems.error(
                    format!("{}: InnerAccessPolicy", group.location),
                    format!("`{other}`: expected Accept or Drop"),
                );
                None
            }
        };
        if kind == GroupKind::Advanced && inner == Some(Action::Accept) {
            problems.error(
                format!("{}: InnerAccessPolicy", group.location),
                "Accept (intra-group connectivity) in an advanced group: advanced groups always isolate their members",
            );
        }
        let mut comments = Vec::new();
        if let Some(name) = &group.name {
            comments.push(format!("{} ({name})", group.id));
        }
        if let Some(description) = &group.description {
            comments.push(description.clone());
        }
        let members = options.members.get(&group.id).cloned().unwrap_or_default();
        if members.is_empty() {
            problems.warning(
                group.location.clone(),
                "no members given (--members GROUP=ADDR,...): rules referencing this group match nothing, and \
                 intra-group steps apply to no one",
            );
        }
        draft.groups.push(DraftGroup {
            id: group.id.clone(),
            kind: Some(kind),
            inner_access: inner.filter(|_| kind == GroupKind::Basic),
            owner: None,
            members,
            comments,
            rules: Vec::new(),
            bound: true,
        });
    }
    for (gi, group) in groups.iter().enumerate() {
        for (location, permission) in &group.permissions {
            problems.unknown_fields(location, permission, PERMISSION_FIELDS);
            if let Some(rule) = permission_rule(&mut draft, &group.id, location, permission, &mut problems) {
                draft.groups[gi].rules.push(rule);
            }
        }
    }
    for group in options.members.keys() {
        if draft.groups.iter().all(|g| &g.id != group) {
            problems.warning(format!("--members {group}"), "no imported or referenced group has this id");
        }
    }
    render(draft, problems)
}

/// One permission as a rule, or `None` with its problems recorded.
fn permission_rule(
    draft: &mut Draft,
    own: &str,
    location: &str,
    p: &Map<String, Value>,
    problems: &mut Problems,
) -> Option<DraftRule> {
    let at = |key: &str| format!("{location}.{key}");
    let errors_before = problems.list.len();
    let direction = match text(p, "Direction").map(|d| d.to_ascii_lowercase()).as_deref() {
        Some("ingress") => Some(Direction::Ingress),
        Some("egress") => Some(Direction::Egress),
        Some(other) => {
            problems.error(at("Direction"), format!("`{other}`: expected ingress or egress"));
            None
        }
        None => {
            problems.error(at("Direction"), "missing");
            None
        }
    };
    let action = match text(p, "Policy").map(|d| d.to_ascii_lowercase()).as_deref() {
        None | Some("accept") => Action::Accept,
        Some("drop") => Action::Drop,
        Some(other) => {
            problems.error(at("Policy"), format!("`{other}`: expected Accept or Drop"));
            Action::Accept
        }
    };
    let priority = match text(p, "Priority") {
        None => 1,
        Some(value) => match value.parse::<u8>().ok().filter(|v| PRIORITY_RANGE.contains(v)) {
            Some(v) => v,
            None => {
                problems.error(at("Priority"), format!("`{value}`: priorities run from 1 to 100"));
                1
            }
        },
    };
    let protocol = match text(p, "IpProtocol").map(|d| d.to_ascii_lowercase()).as_deref() {
        Some("tcp") => Some(Protocol::Tcp),
        Some("udp") => Some(Protocol::Udp),
        Some("icmp") => Some(Protocol::Icmp),
        Some("icmpv6") => Some(Protocol::Icmpv6),
        Some("gre") => Some(Protocol::Gre),
        Some("all") => Some(Protocol::All),
        Some(other) => {
            problems.error(
                at("IpProtocol"),
                format!(
                    "`{other}`: Alibaba Cloud's documented IpProtocol values are TCP, UDP, ICMP, ICMPv6, GRE \
                     and ALL; importing it as ALL would widen it"
                ),
            );
            None
        }
        None => {
            problems.error(at("IpProtocol"), "missing");
            None
        }
    };
    if let Some(list) = text(p, "PortRangeListId") {
        problems.error(at("PortRangeListId"), format!("`{list}`: port lists are not supported by the rule model"));
    }
    if let Some(nic) = text(p, "NicType")
        && nic.eq_ignore_ascii_case("internet")
    {
        problems.warning(
            at("NicType"),
            "a classic-network Internet rule: imported as an ordinary rule (the model does not tell public from \
             internal NICs)",
        );
    }
    let port_range = protocol.and_then(|protocol| ports(p, "PortRange", protocol, location, problems, true));
    let source_port_range =
        protocol.and_then(|protocol| ports(p, "SourcePortRange", protocol, location, problems, false));
    let (direction, protocol) = (direction?, protocol?);
    let (peer_side, local_side) = match direction {
        Direction::Ingress => ("Source", "Dest"),
        Direction::Egress => ("Dest", "Source"),
    };
    // The peer: a CIDR over a group, either over a prefix list (the provider's precedence).
    let v4 = text(p, &format!("{peer_side}CidrIp"));
    let v6 = text(p, &format!("Ipv6{peer_side}CidrIp"));
    let group = text(p, &format!("{peer_side}GroupId"));
    let account = text(p, &format!("{peer_side}GroupOwnerAccount"));
    let list = text(p, &format!("{peer_side}PrefixListId"));
    let key = |kind: &str| -> &'static str {
        match (direction, kind) {
            (Direction::Ingress, "cidr") => "source",
            (Direction::Ingress, "group") => "source_group",
            (Direction::Ingress, _) => "source_prefix_list",
            (Direction::Egress, "cidr") => "destination",
            (Direction::Egress, "group") => "destination_group",
            (Direction::Egress, _) => "destination_prefix_list",
        }
    };
    let peer = if v4.is_some() && v6.is_some() {
        problems.error(
            at(&format!("{peer_side}CidrIp")),
            format!("both {peer_side}CidrIp and Ipv6{peer_side}CidrIp are set; a rule has one address family"),
        );
        None
    } else if let Some(cidr) =
        v4.map(|c| (c, format!("{peer_side}CidrIp"))).or(v6.map(|c| (c, format!("Ipv6{peer_side}CidrIp"))))
    {
        for (ignored, name) in [(&group, "GroupId"), (&list, "PrefixListId")] {
            if ignored.is_some() {
                problems.warning(
                    at(&format!("{peer_side}{name}")),
                    format!("ignored: {} is set, and a CIDR takes precedence (the provider's rule)", cidr.1),
                );
            }
        }
        match cidr_value(&cidr.0) {
            Ok(net) => {
                check_family(protocol, Family::of_net(&net), &at(&cidr.1), problems);
                Some((key("cidr"), cidr.0.clone()))
            }
            Err(message) => {
                problems.error(at(&cidr.1), format!("`{}`: {message}", cidr.0));
                None
            }
        }
    } else if let Some(target) = group {
        // The rule model has advanced groups reference CIDRs and prefix lists only; the
        // file would not validate (found by the `import_alibaba` fuzz target).
        if draft.groups.iter().any(|g| g.id == own && g.kind == Some(GroupKind::Advanced)) {
            problems.error(
                at(&format!("{peer_side}GroupId")),
                format!("{own} is an advanced group, and advanced groups cannot reference security groups"),
            );
        }
        if list.is_some() {
            problems.warning(
                at(&format!("{peer_side}PrefixListId")),
                format!("ignored: {peer_side}GroupId is set, and a group takes precedence (the provider's rule)"),
            );
        }
        Some((
            key("group"),
            group_reference(draft, own, &target, account.as_deref(), &at(&format!("{peer_side}GroupId")), problems),
        ))
    } else if let Some(list) = list {
        problems.check_id(at(&format!("{peer_side}PrefixListId")), "prefix list id", &list);
        let family = if protocol == Protocol::Icmpv6 { Family::Ipv6 } else { Family::Ipv4 };
        if draft.prefix_lists.iter().all(|l| l.id != list) {
            problems.warning(
                at(&format!("{peer_side}PrefixListId")),
                format!("prefix list {list}: its entries are not in the response; a placeholder ({family}) is written"),
            );
        }
        ensure_placeholder_list(draft, &list, family);
        Some((key("list"), list))
    } else {
        problems.error(location.to_string(), format!("no peer: none of {peer_side}CidrIp, Ipv6{peer_side}CidrIp, {peer_side}GroupId, {peer_side}PrefixListId is set"));
        None
    };
    // The local address: ingress DestCidrIp and egress SourceCidrIp narrow it.
    let local_v4 = text(p, &format!("{local_side}CidrIp"));
    let local_v6 = text(p, &format!("Ipv6{local_side}CidrIp"));
    let mut local = None;
    // Of one family with the peer and the protocol, or the rule file would not validate
    // (found by the `import_alibaba` fuzz target).
    let peer_family = match &peer {
        Some((key, value)) if key.ends_with("_prefix_list") => {
            draft.prefix_lists.iter().find(|l| &l.id == value).map(|l| l.family)
        }
        Some((key, _)) if key.ends_with("_group") => None,
        Some((_, value)) => cidr_value(value).ok().map(|n| Family::of_net(&n)),
        None => None,
    };
    for (value, name) in [(local_v4, format!("{local_side}CidrIp")), (local_v6, format!("Ipv6{local_side}CidrIp"))] {
        let Some(value) = value else { continue };
        match cidr_value(&value) {
            Ok(_) if local.is_some() => problems.error(at(&name), "both an IPv4 and an IPv6 local address are set"),
            Ok(net) => {
                let family = Family::of_net(&net);
                if let Some(peer_family) = peer_family.filter(|&f| f != family) {
                    problems.error(
                        at(&name),
                        format!("`{value}`: the local address is {family} but the peer is {peer_family}; the rule could never match"),
                    );
                } else if let Some(required) = protocol.family().filter(|&f| f != family) {
                    problems.error(
                        at(&name),
                        format!("`{value}`: {protocol} is {required} only, but the local address is {family}"),
                    );
                } else {
                    local = Some(value);
                }
            }
            Err(message) => problems.error(at(&name), format!("`{value}`: {message}")),
        }
    }
    for (name, other_side) in [("GroupId", local_side), ("PrefixListId", local_side)] {
        if let Some(value) = text(p, &format!("{other_side}{name}")) {
            problems.error(
                at(&format!("{other_side}{name}")),
                format!("`{value}`: a {direction} rule cannot select its local address by {name}"),
            );
        }
    }
    let description = text(p, "Description").unwrap_or_default();
    if problems.list[errors_before..].iter().any(|p| p.severity == super::ProblemKind::Error) {
        return None;
    }
    Some(DraftRule {
        icmp: None,
        direction,
        action,
        priority,
        protocol,
        port_range: port_range.flatten(),
        source_port_range: source_port_range.flatten(),
        peer: peer?,
        local,
        description,
    })
}

/// `Some(Some("a/b"))`, `Some(None)` for `-1/-1` or unset, `None` after an error.
fn ports(
    p: &Map<String, Value>,
    key: &str,
    protocol: Protocol,
    location: &str,
    problems: &mut Problems,
    destination: bool,
) -> Option<Option<String>> {
    let value = text(p, key);
    let any = value.as_deref().is_none_or(|v| v.replace(' ', "") == "-1/-1");
    match (protocol.has_ports(), any) {
        (true, true) if destination => {
            problems.error(format!("{location}.{key}"), format!("{protocol} needs a port range a/b (e.g. 1/65535)"));
            None
        }
        (_, true) => Some(None),
        (false, false) => {
            problems.error(
                format!("{location}.{key}"),
                format!("`{}`: {protocol} has no ports; expected -1/-1", value.unwrap_or_default()),
            );
            None
        }
        (true, false) => {
            let value = value.unwrap_or_default().replace(' ', "");
            let ok = value.split_once('/').is_some_and(
                |(a, b)| matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a >= 1 && a <= b),
            );
            if ok {
                Some(Some(value))
            } else {
                problems
                    .error(format!("{location}.{key}"), format!("`{value}`: expected a/b with 1 <= a <= b <= 65535"));
                None
            }
        }
    }
}

fn cidr_value(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        if net != net.trunc() {
            return Err(format!("host bits are set (the network is {})", net.trunc()));
        }
        return Ok(net);
    }
    text.parse::<IpAddr>().map(IpNet::from).map_err(|_| "not a CIDR block or an address".to_string())
}

fn check_family(protocol: Protocol, family: Family, location: &str, problems: &mut Problems) {
    if let Some(required) = protocol.family()
        && required != family
    {
        problems.error(location.to_string(), format!("{protocol} is {required} only, but the peer is {family}"));
    }
}

/// The `source_group`/`destination_group` value for a reference to `target`, resolving it
/// against the imported groups; placeholders for the others, the companion group for a
/// self-reference.
pub(super) fn group_reference(
    draft: &mut Draft,
    own: &str,
    target: &str,
    account: Option<&str>,
    location: &str,
    problems: &mut Problems,
) -> String {
    problems.check_id(location, "group id", target);
    if let Some(account) = account {
        problems.check_id(location, "account id", account);
    }
    let target = if target == own {
        ensure_companion(draft, own)
    } else {
        if draft.groups.iter().all(|g| g.id != target) {
            problems.warning(
                location.to_string(),
                format!("group {target} is referenced but not imported: a placeholder without members is written"),
            );
            ensure_placeholder_group(draft, target, account);
        }
        target.to_string()
    };
    match account {
        None => target,
        Some(account) => {
            if let Some(group) = draft.group_mut(&target) {
                match &group.owner {
                    Some(owner) if owner != account => problems.error(
                        location.to_string(),
                        format!("group {target} is referenced as owned by {account} and by {owner}"),
                    ),
                    Some(_) => {}
                    None => group.owner = Some(account.to_string()),
                }
            }
            format!("{account}/{target}")
        }
    }
}
