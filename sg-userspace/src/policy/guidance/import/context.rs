//! What an Alibaba Cloud `DescribeSecurityGroupAttribute` response leaves out, from other
//! responses: the members of groups (`DescribeNetworkInterfaces`: every private IPv4 and
//! IPv6 address of each NIC joins each of its groups) and their types
//! (`DescribeSecurityGroups`: `SecurityGroupType` `normal` is basic, `enterprise` advanced).
//! Only these fields are read; the rest of these responses is context, not imported.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;

use super::Problems;
use crate::policy::config::GroupKind;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    pub members: BTreeMap<String, Vec<IpAddr>>,
    pub kinds: BTreeMap<String, GroupKind>,
}

/// `{"X": {"Y": [...]}}` or `{"X": [...]}`: the list either way.
fn list<'v>(value: &'v Value, outer: &str, inner: &str) -> Option<&'v Vec<Value>> {
    match value.get(outer)? {
        Value::Array(items) => Some(items),
        other => other.get(inner)?.as_array(),
    }
}

fn strings<'v>(value: &'v Value, outer: &str, inner: &str) -> Vec<&'v str> {
    list(value, outer, inner).map(|items| items.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// Reads the responses of one file into `context`.
pub fn read(file: &str, values: &[Value], context: &mut Context, problems: &mut Problems) {
    for (index, value) in values.iter().enumerate() {
        let location = format!("{file}: response[{}]", index + 1);
        let mut understood = false;
        if let Some(nics) = list(value, "NetworkInterfaceSets", "NetworkInterfaceSet") {
            understood = true;
            for (n, nic) in nics.iter().enumerate() {
                let here = format!("{location}.NetworkInterfaceSets.NetworkInterfaceSet[{}]", n + 1);
                let mut addrs: Vec<&str> = nic.get("PrivateIpAddress").and_then(Value::as_str).into_iter().collect();
                for set in list(nic, "PrivateIpSets", "PrivateIpSet").into_iter().flatten() {
                    addrs.extend(set.get("PrivateIpAddress").and_then(Value::as_str));
                }
                for set in list(nic, "Ipv6Sets", "Ipv6Set").into_iter().flatten() {
                    addrs.extend(set.get("Ipv6Address").and_then(Value::as_str));
                }
                let groups = strings(nic, "SecurityGroupIds", "SecurityGroupId");
                if groups.is_empty() {
                    problems.warning(
                        here.clone(),
                        "a network interface without SecurityGroupIds: its addresses join no group",
                    );
                }
                for addr in addrs.into_iter().filter(|a| !a.trim().is_empty()) {
                    let Ok(addr) = addr.trim().parse::<IpAddr>() else {
                        problems.error(here.clone(), format!("`{addr}` is not an IP address"));
                        continue;
                    };
                    for group in &groups {
                        let entry = context.members.entry((*group).to_string()).or_default();
                        if !entry.contains(&addr) {
                            entry.push(addr);
                        }
                    }
                }
            }
        }
        if let Some(groups) = list(value, "SecurityGroups", "SecurityGroup") {
            understood = true;
            for (n, group) in groups.iter().enumerate() {
                let here = format!("{location}.SecurityGroups.SecurityGroup[{}]", n + 1);
                let Some(id) = group.get("SecurityGroupId").and_then(Value::as_str) else {
                    problems.error(here, "no SecurityGroupId");
                    continue;
                };
                match group.get("SecurityGroupType").and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() {
                    Some("normal") => {
                        context.kinds.insert(id.to_string(), GroupKind::Basic);
                    }
                    Some("enterprise") => {
                        context.kinds.insert(id.to_string(), GroupKind::Advanced);
                    }
                    None => {}
                    Some(other) => problems.error(
                        format!("{here}.SecurityGroupType"),
                        format!("`{other}`: expected normal (basic) or enterprise (advanced)"),
                    ),
                }
            }
        }
        if !understood {
            problems.error(
                location,
                "neither a DescribeNetworkInterfaces (NetworkInterfaceSets) nor a DescribeSecurityGroups \
                 (SecurityGroups) response",
            );
        }
    }
}
