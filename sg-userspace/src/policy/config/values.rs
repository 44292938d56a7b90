//! Parsers for the scalar values of a rule file: keywords, port ranges, addresses.
//! Each returns a message suitable for a [`super::ConfigError`] on failure.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use super::PortRange;

/// Case-insensitive keyword lookup (`TCP`, `Accept`), with a message listing the
/// accepted spellings on failure.
pub(crate) fn keyword<T: Copy>(text: &str, what: &str, table: &[(&str, T)]) -> Result<T, String> {
    let lower = text.trim().to_ascii_lowercase();
    table.iter().find(|(name, _)| *name == lower).map(|(_, value)| *value).ok_or_else(|| {
        let names: Vec<&str> = table.iter().map(|(name, _)| *name).collect();
        format!("unknown {what} `{text}`; expected one of: {}", names.join(", "))
    })
}

/// A port range as written, before it is checked against the rule's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortSpec {
    /// `-1/-1`.
    Any,
    /// `a/b` with `1 <= a <= b <= 65535`.
    Range(PortRange),
}

const PORT_GRAMMAR: &str = "expected a/b with 1 <= a <= b <= 65535 (e.g. \"80/80\"), or -1/-1";

/// Parses `"a/b"` or `"-1/-1"`.
pub(crate) fn port_spec(text: &str) -> Result<PortSpec, String> {
    let Some((first, last)) = text.trim().split_once('/') else {
        return Err(format!("not a port range; {PORT_GRAMMAR} (a single port p is written p/p)"));
    };
    let (first, last) = (first.trim(), last.trim());
    match (first == "-1", last == "-1") {
        (true, true) => return Ok(PortSpec::Any),
        (true, false) | (false, true) => {
            return Err("-1 is only valid as -1/-1 (any port)".to_string());
        }
        (false, false) => {}
    }
    let first = port_number(first)?;
    let last = port_number(last)?;
    if first > last {
        return Err(format!("first port {first} is greater than last port {last}"));
    }
    Ok(PortSpec::Range(PortRange { first, last }))
}

fn port_number(text: &str) -> Result<u16, String> {
    let value: i64 = text.parse().map_err(|_| format!("`{text}` is not a port number; {PORT_GRAMMAR}"))?;
    u16::try_from(value)
        .ok()
        .filter(|&port| port != 0)
        .ok_or_else(|| format!("port {value} is out of range; ports are 1..=65535"))
}

/// Parses a CIDR block or a single address (which becomes a host network, /32 or /128).
///
/// A block with host bits set (`198.18.0.1/24`) is rejected rather than silently
/// truncated: it usually means the author meant either the single address or a different
/// network, and guessing wrong opens or closes the wrong hosts.
pub(crate) fn cidr(text: &str) -> Result<IpNet, String> {
    if text.contains('/') {
        let net = IpNet::from_str(text)
            .map_err(|_| "not a valid CIDR block (expected e.g. 198.18.0.0/24 or 2001:db8::/32)".to_string())?;
        if net != net.trunc() {
            return Err(format!(
                "host bits are set: {net} is not a network address; write {} for the \
                 network, or {} alone for the single address",
                net.trunc(),
                net.addr()
            ));
        }
        return Ok(net);
    }
    IpAddr::from_str(text).map(IpNet::from).map_err(|_| "not an IP address or CIDR block".to_string())
}

/// Parses a group member: one address, or a full-length prefix (/32, /128) naming one.
pub(crate) fn member(text: &str) -> Result<IpAddr, String> {
    if let Ok(addr) = IpAddr::from_str(text) {
        return Ok(addr);
    }
    match IpNet::from_str(text) {
        Ok(net) if net.prefix_len() == net.max_prefix_len() => Ok(net.addr()),
        Ok(net) => {
            Err(format!("members must be single addresses (one per instance), not networks like /{}", net.prefix_len()))
        }
        Err(_) => Err("not an IP address; members must be single addresses".to_string()),
    }
}

/// A `source_group`/`destination_group` value: `group-id` or `account/group-id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupRef<'a> {
    pub(crate) account: Option<&'a str>,
    pub(crate) id: &'a str,
}

pub(crate) fn group_ref(text: &str) -> Result<GroupRef<'_>, String> {
    let (account, id) = match text.split_once('/') {
        Some((account, id)) => (Some(account), id),
        None => (None, text),
    };
    let malformed = id.is_empty()
        || id.contains('/')
        || account.is_some_and(str::is_empty)
        || text.chars().any(char::is_whitespace);
    if malformed {
        return Err("expected a group id (sg-web) or account/group-id (1234/sg-web)".to_string());
    }
    Ok(GroupRef { account, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        assert_eq!(port_spec("-1/-1"), Ok(PortSpec::Any));
        assert_eq!(port_spec("80/443"), Ok(PortSpec::Range(PortRange { first: 80, last: 443 })));
        assert!(port_spec("80").unwrap_err().contains("p/p"));
        assert!(port_spec("0/80").unwrap_err().contains("out of range"));
        assert!(port_spec("1/65536").unwrap_err().contains("out of range"));
        assert!(port_spec("-1/80").unwrap_err().contains("-1/-1"));
        assert!(port_spec("a/b").unwrap_err().contains("not a port number"));
        assert!(port_spec("90/80").unwrap_err().contains("greater"));
    }

    #[test]
    fn cidrs() {
        assert_eq!(cidr("198.18.0.1").map(|n| n.to_string()), Ok("198.18.0.1/32".into()));
        assert!(cidr("198.18.0.1/32").is_ok());
        assert!(cidr("198.18.0.1/24").unwrap_err().contains("198.18.0.0/24"));
        assert!(cidr("2001:db8::/32").is_ok());
        assert!(cidr("2001:db8::1/64").unwrap_err().contains("host bits"));
        assert!(cidr("nonsense").is_err());
    }

    #[test]
    fn group_refs() {
        assert_eq!(group_ref("1234/sg-a"), Ok(GroupRef { account: Some("1234"), id: "sg-a" }));
        assert_eq!(group_ref("sg-a"), Ok(GroupRef { account: None, id: "sg-a" }));
        assert!(group_ref("/sg-a").is_err());
        assert!(group_ref("a/b/c").is_err());
        assert!(group_ref("").is_err());
    }
}
