//! AWS EC2 `describe-security-groups` output (`{"SecurityGroups": [...]}`).
//!
//! AWS groups only allow, have no priorities, and admit a packet when any rule of any
//! group on the interface allows it. Imported, every rule is an accept at priority 1; no
//! member reaches another unless a rule says so (`inner_access_policy = "drop"`); egress is
//! an allow list as in AWS: each group gets an egress drop-all at priority 100 for every
//! family its egress rules do not already allow entirely (no egress rules: no egress).
//! Since every accept ranks above every drop, pooling groups keeps AWS's union semantics.
//! A group referencing itself (legal in AWS, refused by the validator) references a
//! companion group holding the same members. Protocols by number (`"50"`) import as
//! numbered protocols (the named ones' numbers as their names), and ICMP rules' FromPort
//! (type) and ToPort (code) as `icmp_type` and `icmp_code`, -1 meaning all: nothing is
//! widened.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Map, Value};

use super::alibaba::group_reference;
use super::{Draft, DraftGroup, DraftRule, ImportError, Problem, Problems, ensure_placeholder_list, render};
use crate::policy::config::{Action, Direction, Family, IcmpMatch, Protocol};

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub members: BTreeMap<String, Vec<IpAddr>>,
    pub interface: Option<String>,
}

const OUTPUT_FIELDS: &[&str] = &["SecurityGroups", "NextToken"];
const GROUP_FIELDS: &[&str] = &[
    "Description",
    "GroupName",
    "IpPermissions",
    "OwnerId",
    "GroupId",
    "IpPermissionsEgress",
    "Tags",
    "VpcId",
    "SecurityGroupArn",
];
const PERMISSION_FIELDS: &[&str] =
    &["IpProtocol", "FromPort", "ToPort", "IpRanges", "Ipv6Ranges", "PrefixListIds", "UserIdGroupPairs"];
const PAIR_FIELDS: &[&str] =
    &["Description", "GroupId", "GroupName", "UserId", "VpcId", "VpcPeeringConnectionId", "PeeringStatus"];

fn string(object: &Map<String, Value>, key: &str) -> Option<String> {
    match object.get(key)? {
        Value::String(s) if s.trim().is_empty() => None,
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn integer(object: &Map<String, Value>, key: &str) -> Option<i64> {
    match object.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn array<'v>(object: &'v Map<String, Value>, key: &str) -> &'v [Value] {
    object.get(key).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

pub fn import(inputs: &[(String, Vec<Value>)], options: &Options) -> Result<(String, Vec<Problem>), ImportError> {
    let mut problems = Problems::default();
    let mut groups: Vec<(String, Map<String, Value>)> = Vec::new();
    for (file, values) in inputs {
        for (index, value) in values.iter().enumerate() {
            let location = format!("{file}: output[{}]", index + 1);
            let Some(object) = value.as_object() else {
                problems.error(location, "expected describe-security-groups output (a JSON object)");
                continue;
            };
            // A bare group object is accepted too.
            if object.contains_key("GroupId") && !object.contains_key("SecurityGroups") {
                groups.push((format!("{file}: {}", string(object, "GroupId").unwrap_or_default()), object.clone()));
                continue;
            }
            problems.unknown_fields(&location, object, OUTPUT_FIELDS);
            for (n, group) in array(object, "SecurityGroups").iter().enumerate() {
                match group.as_object() {
                    Some(g) => {
                        let id = string(g, "GroupId").unwrap_or_else(|| format!("SecurityGroups[{}]", n + 1));
                        groups.push((format!("{file}: {id}"), g.clone()));
                    }
                    None => problems.error(format!("{location}.SecurityGroups[{}]", n + 1), "expected an object"),
                }
            }
        }
    }
    let mut draft = Draft { interface: options.interface.clone(), ..Draft::default() };
    for (location, group) in &groups {
        problems.unknown_fields(location, group, GROUP_FIELDS);
        let Some(id) = string(group, "GroupId") else {
            problems.error(format!("{location}.GroupId"), "missing");
            continue;
        };
        if !problems.check_id(format!("{location}.GroupId"), "group id", &id) {
            continue;
        }
        if let Some(owner) = string(group, "OwnerId") {
            problems.check_id(format!("{location}.OwnerId"), "account id", &owner);
        }
        if draft.groups.iter().any(|g| g.id == id) {
            problems.error(format!("{location}.GroupId"), format!("group {id} appears twice"));
            continue;
        }
        let mut comments = Vec::new();
        if let Some(name) = string(group, "GroupName") {
            comments.push(format!("{id} ({name})"));
        }
        if let Some(description) = string(group, "Description") {
            comments.push(description);
        }
        let members = options.members.get(&id).cloned().unwrap_or_default();
        if members.is_empty() {
            problems.warning(
                location.clone(),
                "no members given (--members GROUP=ADDR,...): rules referencing this group match nothing",
            );
        }
        draft.groups.push(DraftGroup {
            id,
            kind: None,
            // AWS has no implicit intra-group connectivity.
            inner_access: Some(Action::Drop),
            owner: string(group, "OwnerId"),
            members,
            comments,
            rules: Vec::new(),
            bound: true,
        });
    }
    for (location, group) in &groups {
        let Some(id) = string(group, "GroupId") else { continue };
        let mut rules = Vec::new();
        for (key, direction) in [("IpPermissions", Direction::Ingress), ("IpPermissionsEgress", Direction::Egress)] {
            for (n, permission) in array(group, key).iter().enumerate() {
                let at = format!("{location}: {key}[{}]", n + 1);
                match permission.as_object() {
                    Some(p) => rules.extend(permission_rules(&mut draft, &id, &at, direction, p, &mut problems)),
                    None => problems.error(at, "expected an object"),
                }
            }
        }
        // Egress as an allow list: drop what no egress rule allows, per family.
        for (family, world) in [(Family::Ipv4, "0.0.0.0/0"), (Family::Ipv6, "::/0")] {
            let allowed_all = rules.iter().any(|r| {
                r.direction == Direction::Egress
                    && r.protocol == Protocol::All
                    && r.peer == ("destination", world.to_string())
            });
            if !allowed_all {
                rules.push(DraftRule {
                    icmp: None,
                    direction: Direction::Egress,
                    action: Action::Drop,
                    priority: 100,
                    protocol: Protocol::All,
                    port_range: None,
                    source_port_range: None,
                    peer: ("destination", world.to_string()),
                    local: None,
                    description: format!("AWS egress: only what an egress rule allows ({family})"),
                });
            }
        }
        if let Some(g) = draft.group_mut(&id) {
            g.rules = rules;
        }
    }
    // Placeholders and companions follow AWS too: no implicit intra-group connectivity.
    for group in &mut draft.groups {
        group.inner_access.get_or_insert(Action::Drop);
    }
    render(draft, problems)
}

/// One permission: one accept rule per peer (range, prefix list, group pair).
fn permission_rules(
    draft: &mut Draft,
    own: &str,
    location: &str,
    direction: Direction,
    p: &Map<String, Value>,
    problems: &mut Problems,
) -> Vec<DraftRule> {
    problems.unknown_fields(location, p, PERMISSION_FIELDS);
    let at = |key: &str| format!("{location}.{key}");
    let protocol_text = string(p, "IpProtocol").map(|s| s.to_ascii_lowercase());
    let from = integer(p, "FromPort");
    let to = integer(p, "ToPort");
    let protocol = match protocol_text.as_deref() {
        Some("-1" | "all") => Protocol::All,
        Some("tcp") => Protocol::Tcp,
        Some("udp") => Protocol::Udp,
        Some("icmp") => Protocol::Icmp,
        Some("icmpv6") => Protocol::Icmpv6,
        Some("gre") => Protocol::Gre,
        Some(other) => match other.parse::<u8>() {
            // AWS accepts any protocol number; one with a name is that protocol.
            Ok(number) => Protocol::from_number(number),
            Err(_) => {
                problems.error(
                    at("IpProtocol"),
                    format!(
                        "protocol `{other}`: expected tcp, udp, icmp, icmpv6, gre, -1 or a protocol number 0 to \
                         255; importing it as `all` would widen it"
                    ),
                );
                return Vec::new();
            }
        },
        None => {
            problems.error(at("IpProtocol"), "missing");
            return Vec::new();
        }
    };
    let mut icmp = None;
    let port_range = match protocol {
        Protocol::Tcp | Protocol::Udp => match (from, to) {
            (Some(0), Some(65535)) | (Some(-1), Some(-1)) | (None, None) => {
                problems.warning(
                    at("FromPort"),
                    "every port: imported as 1/65535 (port 0, which no real service uses, is not matched)",
                );
                Some("1/65535".to_string())
            }
            (Some(a), Some(b)) if (1..=65535).contains(&a) && a <= b && b <= 65535 => Some(format!("{a}/{b}")),
            (a, b) => {
                problems
                    .error(at("FromPort"), format!("ports {a:?}..{b:?}: expected 1 <= FromPort <= ToPort <= 65535"));
                return Vec::new();
            }
        },
        Protocol::Icmp | Protocol::Icmpv6 => {
            // AWS: FromPort is the ICMP type and ToPort the code, -1 (or absent) for all.
            let value = |v: Option<i64>| match v {
                None | Some(-1) => Ok(None),
                Some(v) => u8::try_from(v).map(Some).map_err(|_| v),
            };
            match (value(from), value(to)) {
                (Ok(None), Ok(None)) => {}
                (Ok(Some(icmp_type)), Ok(code)) => icmp = Some(IcmpMatch { icmp_type, code }),
                (Ok(None), Ok(Some(code))) => {
                    problems.error(
                        at("ToPort"),
                        format!("ICMP code {code} with every type (FromPort -1): a code needs a type"),
                    );
                    return Vec::new();
                }
                (Err(v), _) => {
                    problems.error(at("FromPort"), format!("ICMP type {v}: expected 0 to 255, or -1 for all"));
                    return Vec::new();
                }
                (_, Err(v)) => {
                    problems.error(at("ToPort"), format!("ICMP code {v}: expected 0 to 255, or -1 for all"));
                    return Vec::new();
                }
            }
            None
        }
        // AWS ignores ports for -1 and protocols other than tcp/udp/icmp(v6).
        _ => None,
    };
    let mut rules = Vec::new();
    let mut push = |peer: (&'static str, String), description: String| {
        rules.push(DraftRule {
            direction,
            action: Action::Accept,
            priority: 1,
            protocol,
            port_range: port_range.clone(),
            source_port_range: None,
            icmp,
            peer,
            local: None,
            description,
        });
    };
    let (cidr_key, group_key, list_key) = match direction {
        Direction::Ingress => ("source", "source_group", "source_prefix_list"),
        Direction::Egress => ("destination", "destination_group", "destination_prefix_list"),
    };
    let mut peers = 0;
    for (ranges, field, family) in [("IpRanges", "CidrIp", Family::Ipv4), ("Ipv6Ranges", "CidrIpv6", Family::Ipv6)] {
        for (n, range) in array(p, ranges).iter().enumerate() {
            let here = format!("{location}.{ranges}[{}]", n + 1);
            let Some(range) = range.as_object() else {
                problems.error(here, "expected an object");
                continue;
            };
            problems.unknown_fields(&here, range, &[field, "Description"]);
            let Some(cidr) = string(range, field) else {
                problems.error(format!("{here}.{field}"), "missing");
                continue;
            };
            match cidr.parse::<ipnet::IpNet>() {
                Ok(net) if net == net.trunc() && Family::of_net(&net) == family => {
                    if protocol.family().is_some_and(|f| f != family) {
                        problems.error(format!("{here}.{field}"), format!("{protocol} with an {family} range"));
                        continue;
                    }
                    peers += 1;
                    push((cidr_key, cidr), string(range, "Description").unwrap_or_default());
                }
                _ => problems.error(format!("{here}.{field}"), format!("`{cidr}`: not an {family} network")),
            }
        }
    }
    for (n, list) in array(p, "PrefixListIds").iter().enumerate() {
        let here = format!("{location}.PrefixListIds[{}]", n + 1);
        let Some(list) = list.as_object() else {
            problems.error(here, "expected an object");
            continue;
        };
        problems.unknown_fields(&here, list, &["PrefixListId", "Description"]);
        let Some(id) = string(list, "PrefixListId") else {
            problems.error(format!("{here}.PrefixListId"), "missing");
            continue;
        };
        if !problems.check_id(format!("{here}.PrefixListId"), "prefix list id", &id) {
            continue;
        }
        let family = if protocol == Protocol::Icmpv6 { Family::Ipv6 } else { Family::Ipv4 };
        if draft.prefix_lists.iter().all(|l| l.id != id) {
            problems.warning(
                format!("{here}.PrefixListId"),
                format!("prefix list {id}: its entries are not in the output; a placeholder ({family}) is written"),
            );
        }
        ensure_placeholder_list(draft, &id, family);
        peers += 1;
        push((list_key, id), string(list, "Description").unwrap_or_default());
    }
    let owner = draft.groups.iter().find(|g| g.id == own).and_then(|g| g.owner.clone());
    for (n, pair) in array(p, "UserIdGroupPairs").iter().enumerate() {
        let here = format!("{location}.UserIdGroupPairs[{}]", n + 1);
        let Some(pair) = pair.as_object() else {
            problems.error(here, "expected an object");
            continue;
        };
        problems.unknown_fields(&here, pair, PAIR_FIELDS);
        if let Some(peering) = string(pair, "VpcPeeringConnectionId") {
            problems.warning(
                format!("{here}.VpcPeeringConnectionId"),
                format!("{peering}: imported as a plain group reference"),
            );
        }
        let Some(target) = string(pair, "GroupId") else {
            problems.error(format!("{here}.GroupId"), "missing (references by group name are not supported)");
            continue;
        };
        if matches!(protocol, Protocol::Icmp | Protocol::Icmpv6) {
            // A group may hold members of both families; the validator accepts it, the
            // evaluator matches by protocol number. Nothing to check here.
        }
        // Another account's group is written ACCOUNT/GROUP; one's own account needs no prefix.
        let account = string(pair, "UserId").filter(|user| Some(user) != owner.as_ref());
        let reference = group_reference(draft, own, &target, account.as_deref(), &format!("{here}.GroupId"), problems);
        peers += 1;
        push((group_key, reference), string(pair, "Description").unwrap_or_default());
    }
    if peers == 0 && !problems.has_errors() {
        problems.warning(
            location.to_string(),
            "a permission without IpRanges, Ipv6Ranges, PrefixListIds or UserIdGroupPairs allows nothing",
        );
    }
    rules
}
