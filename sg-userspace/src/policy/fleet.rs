//! A fleet's rules in a shared store (etcd): the keyspace, how a rule file is split into
//! it, and how each host's rule file is composed back from it.
//!
//! Pure: everything here works on a [`Snapshot`] (keys relative to [`PREFIX`], and their
//! values); `crate::store` reads and writes etcd. Every value is a fragment of the rule-file
//! format (TOML), so what an agent builds from the store is an ordinary rule file that it
//! validates and applies exactly like a file reload, and `etcdctl get` shows readable
//! rules. The layout, under `/sgctl/v1/`:
//!
//! | key | value | written by |
//! |---|---|---|
//! | `groups/<id>` | one `[[security_group]]` table with its rules | `sgctl fleet push` |
//! | `prefix-lists/<id>` | one `[[prefix_list]]` table | `sgctl fleet push` |
//! | `sessions` | the `[sessions]` table | `sgctl fleet push` |
//! | `bindings/<host>/<iface>` | one `[[interface]]` table of that host | `sgctl fleet push --host` |
//! | `members/<group>/<host>/<address>` | empty | the host's agent, under its lease |
//! | `pushed` | what the last push came from | `sgctl fleet push` |
//!
//! Groups, prefix lists and sessions are the fleet's shared definitions: a push replaces
//! all of them. Members are registered by the agent of the host whose bindings list the
//! addresses, under an etcd lease, so a host that dies drops out of every group when its
//! lease runs out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::config::{ConfigErrors, parse_str};

/// The versioned root of the keyspace.
pub const PREFIX: &str = "/sgctl/v1/";

/// Keys relative to [`PREFIX`] and their values, sorted (so composing is deterministic).
pub type Snapshot = BTreeMap<String, String>;

/// One key of the keyspace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Group(String),
    PrefixList(String),
    Sessions,
    Binding { host: String, iface: String },
    Member { group: String, host: String, address: IpAddr },
    Pushed,
}

impl Key {
    /// Reads a key relative to [`PREFIX`]; `None` for anything this version does not know.
    pub fn parse(relative: &str) -> Option<Key> {
        let parts: Vec<&str> = relative.split('/').collect();
        match parts.as_slice() {
            ["groups", id] if !id.is_empty() => Some(Key::Group(id.to_string())),
            ["prefix-lists", id] if !id.is_empty() => Some(Key::PrefixList(id.to_string())),
            ["sessions"] => Some(Key::Sessions),
            ["pushed"] => Some(Key::Pushed),
            ["bindings", host, iface] if !host.is_empty() && !iface.is_empty() => {
                Some(Key::Binding { host: host.to_string(), iface: iface.to_string() })
            }
            ["members", group, host, address] if !group.is_empty() && !host.is_empty() => {
                Some(Key::Member { group: group.to_string(), host: host.to_string(), address: address.parse().ok()? })
            }
            _ => None,
        }
    }

    /// The key relative to [`PREFIX`].
    pub fn path(&self) -> String {
        match self {
            Key::Group(id) => format!("groups/{id}"),
            Key::PrefixList(id) => format!("prefix-lists/{id}"),
            Key::Sessions => "sessions".to_string(),
            Key::Pushed => "pushed".to_string(),
            Key::Binding { host, iface } => format!("bindings/{host}/{iface}"),
            Key::Member { group, host, address } => format!("members/{group}/{host}/{address}"),
        }
    }

    /// Whether a push replaces this key (the shared definitions).
    fn is_shared(&self) -> bool {
        matches!(self, Key::Group(_) | Key::PrefixList(_) | Key::Sessions)
    }
}

/// Whether `name` can be a host name in the keyspace (it is a key segment).
pub fn is_valid_host(name: &str) -> bool {
    super::config::is_valid_id(name) && name.len() <= 253
}

/// Why the store's contents do not make a rule file.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A stored value is not the TOML table it should be (written by something else).
    #[error("{PREFIX}{key}: not a rule-file table: {message}")]
    Value { key: String, message: String },
    /// The host's composed rule file does not validate (e.g. a binding names a group the
    /// last push removed).
    #[error("host {host}: the rules composed from the store do not validate:\n{errors}")]
    Host { host: String, errors: ConfigErrors },
}

/// What a push writes, each value a TOML table as it stands in the rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Items {
    /// Groups, prefix lists and sessions.
    pub shared: BTreeMap<Key, String>,
    /// The file's interfaces, as bindings of the host given to the push (none without one).
    pub bindings: BTreeMap<Key, String>,
}

/// Why a rule file cannot be pushed.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("{0}\ninvalid, nothing pushed")]
    Invalid(ConfigErrors),
    #[error("--host {0:?}: not a valid host name (non-empty, no '/' or whitespace)")]
    Host(String),
}

/// Validates a rule file and splits it into the store's items; its interfaces become the
/// bindings of `host` (and are left out without one).
pub fn split(text: &str, path: &str, host: Option<&str>) -> Result<Items, SplitError> {
    parse_str(text, path).map_err(SplitError::Invalid)?;
    if let Some(host) = host.filter(|h| !is_valid_host(h)) {
        return Err(SplitError::Host(host.to_string()));
    }
    // It validated, so it is TOML and every table has the id or name it needs.
    let root: toml::Table = toml::from_str(text).expect("a validated rule file is TOML");
    let mut items = Items { shared: BTreeMap::new(), bindings: BTreeMap::new() };
    for (field, id_key) in [("security_group", "id"), ("prefix_list", "id"), ("interface", "name")] {
        for table in root.get(field).and_then(toml::Value::as_array).into_iter().flatten() {
            let Some(table) = table.as_table() else { continue };
            let id = table.get(id_key).and_then(toml::Value::as_str).unwrap_or_default().to_string();
            let value = toml::to_string(table).expect("a TOML table serializes");
            match field {
                "security_group" => {
                    items.shared.insert(Key::Group(id), value);
                }
                "prefix_list" => {
                    items.shared.insert(Key::PrefixList(id), value);
                }
                _ => {
                    if let Some(host) = host {
                        items.bindings.insert(Key::Binding { host: host.to_string(), iface: id }, value);
                    }
                }
            }
        }
    }
    if let Some(sessions) = root.get("sessions").and_then(toml::Value::as_table) {
        items.shared.insert(Key::Sessions, toml::to_string(sessions).expect("a TOML table serializes"));
    }
    Ok(items)
}

/// The snapshot a push of `items` leaves: every shared definition replaced by the file's,
/// and with `host`, that host's bindings replaced by the file's interfaces. Members and
/// other hosts' bindings are kept.
pub fn after_push(snapshot: &Snapshot, items: &Items, host: Option<&str>) -> Snapshot {
    let mut after: Snapshot = snapshot
        .iter()
        .filter(|(key, _)| match Key::parse(key) {
            Some(key) if key.is_shared() => false,
            Some(Key::Binding { host: of, .. }) => Some(of.as_str()) != host,
            _ => true,
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, value) in items.shared.iter().chain(&items.bindings) {
        after.insert(key.path(), value.clone());
    }
    after
}

/// The hosts that have bindings.
pub fn hosts(snapshot: &Snapshot) -> BTreeSet<String> {
    snapshot
        .keys()
        .filter_map(|key| match Key::parse(key) {
            Some(Key::Binding { host, .. }) => Some(host),
            _ => None,
        })
        .collect()
}

fn table_of(key: &str, value: &str) -> Result<toml::Table, FleetError> {
    toml::from_str(value).map_err(|e| FleetError::Value { key: key.to_string(), message: e.message().to_string() })
}

/// The entries whose keys start with `prefix`, in order.
fn prefixed<'s>(snapshot: &'s Snapshot, prefix: &'s str) -> impl Iterator<Item = (&'s String, &'s String)> + 's {
    snapshot
        .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
        .take_while(move |(key, _)| key.starts_with(prefix))
}

/// The strings of array `field` of `table`.
fn strings(table: &toml::Table, field: &str) -> Vec<String> {
    table
        .get(field)
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// The group ids a group's rules name as peers (`ACCOUNT/id` references by their id).
fn peer_groups(group: &toml::Table) -> BTreeSet<String> {
    let rules = group.get("rule").and_then(toml::Value::as_array).into_iter().flatten();
    rules
        .filter_map(toml::Value::as_table)
        .flat_map(|rule| ["source_group", "destination_group"].map(|f| rule.get(f).and_then(toml::Value::as_str)))
        .flatten()
        .map(|reference| reference.rsplit('/').next().unwrap_or(reference).to_string())
        .collect()
}

/// What of the store one host's rules depend on: its bindings, the groups they name, the
/// groups those groups' rules name as peers (for their members), every prefix list and
/// the session settings. A change elsewhere cannot change the host's rules, so its agent
/// need not compose them again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interest {
    host: String,
    /// Bound groups and their peer groups, present in the store or not (a group that
    /// appears later is of interest too).
    groups: BTreeSet<String>,
}

impl Interest {
    /// Whether a change of `key` (relative to [`PREFIX`]) can change the host's rules.
    pub fn touches(&self, key: &str) -> bool {
        match Key::parse(key) {
            Some(Key::Group(id)) => self.groups.contains(&id),
            Some(Key::Member { group, .. }) => self.groups.contains(&group),
            Some(Key::Binding { host, .. }) => host == self.host,
            Some(Key::PrefixList(_) | Key::Sessions) => true,
            Some(Key::Pushed) | None => false,
        }
    }
}

/// `host`'s rule file: its bindings; the groups they name, whole, with the members
/// registered for them by any host; the groups those groups' rules name as peers, with
/// their members but without their rules (which apply only where they are bound); every
/// prefix list; the session settings. Validated, so an agent can apply it.
pub fn compose(snapshot: &Snapshot, host: &str) -> Result<String, FleetError> {
    compose_with_interest(snapshot, host).map(|(text, _)| text)
}

/// [`compose`], and what the result depends on.
pub fn compose_with_interest(snapshot: &Snapshot, host: &str) -> Result<(String, Interest), FleetError> {
    let mut interfaces = Vec::new();
    let mut bound = BTreeSet::new();
    let binding_prefix = format!("bindings/{host}/");
    for (key, value) in prefixed(snapshot, &binding_prefix) {
        let table = table_of(key, value)?;
        bound.extend(strings(&table, "security_groups"));
        interfaces.push(toml::Value::Table(table));
    }
    let mut groups: BTreeMap<String, toml::Table> = BTreeMap::new();
    let mut interest = Interest { host: host.to_string(), groups: bound.clone() };
    for id in &bound {
        let key = Key::Group(id.clone()).path();
        if let Some(value) = snapshot.get(&key) {
            let table = table_of(&key, value)?;
            interest.groups.extend(peer_groups(&table));
            groups.insert(id.clone(), table);
        }
    }
    for id in &interest.groups {
        let key = Key::Group(id.clone()).path();
        if let (false, Some(value)) = (groups.contains_key(id), snapshot.get(&key)) {
            let mut table = table_of(&key, value)?;
            table.remove("rule");
            groups.insert(id.clone(), table);
        }
    }
    for (id, table) in &mut groups {
        let member_prefix = format!("members/{id}/");
        // This host's own registrations are left out: its bindings' addresses are members
        // of its groups anyway (the validator adds them), and a stale registration of an
        // earlier binding must not count.
        let registered: BTreeSet<IpAddr> = prefixed(snapshot, &member_prefix)
            .filter_map(|(key, _)| match Key::parse(key) {
                Some(Key::Member { address, host: of, .. }) if of != host => Some(address),
                _ => None,
            })
            .collect();
        if registered.is_empty() {
            continue;
        }
        let members = table.entry("members").or_insert_with(|| toml::Value::Array(Vec::new()));
        if let toml::Value::Array(members) = members {
            members.extend(registered.iter().map(|a| toml::Value::String(a.to_string())));
        }
    }
    let mut lists = Vec::new();
    for (key, value) in prefixed(snapshot, "prefix-lists/") {
        lists.push(toml::Value::Table(table_of(key, value)?));
    }
    let mut root = toml::Table::new();
    let groups: Vec<toml::Value> = groups.into_values().map(toml::Value::Table).collect();
    for (field, values) in [("security_group", groups), ("prefix_list", lists), ("interface", interfaces)] {
        if !values.is_empty() {
            root.insert(field.to_string(), toml::Value::Array(values));
        }
    }
    if let Some(value) = snapshot.get(&Key::Sessions.path()) {
        root.insert("sessions".to_string(), toml::Value::Table(table_of(&Key::Sessions.path(), value)?));
    }
    let text = toml::to_string(&root).expect("a TOML table serializes");
    parse_str(&text, &format!("{PREFIX} (host {host})"))
        .map_err(|errors| FleetError::Host { host: host.to_string(), errors })?;
    Ok((text, interest))
}

/// The member keys `host`'s agent holds: each address of each of its bindings, in each of
/// the binding's groups.
pub fn own_members(snapshot: &Snapshot, host: &str) -> Result<BTreeSet<String>, FleetError> {
    let mut keys = BTreeSet::new();
    let binding_prefix = format!("bindings/{host}/");
    for (key, value) in prefixed(snapshot, &binding_prefix) {
        let table = table_of(key, value)?;
        for group in strings(&table, "security_groups") {
            for address in strings(&table, "addresses") {
                let Ok(address) = address.parse::<IpAddr>() else { continue };
                keys.insert(Key::Member { group: group.clone(), host: host.to_string(), address }.path());
            }
        }
    }
    Ok(keys)
}

/// The member keys currently registered for `host` (by its agent, now or before).
pub fn registered_by(snapshot: &Snapshot, host: &str) -> BTreeSet<String> {
    snapshot
        .keys()
        .filter(|key| matches!(Key::parse(key), Some(Key::Member { host: of, .. }) if of == host))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[security_group]]
id = "sg-web"
[[security_group.rule]]
direction = "ingress"
protocol = "tcp"
port_range = "80/80"
source = "0.0.0.0/0"

[[security_group]]
id = "sg-db"
[[security_group.rule]]
direction = "ingress"
protocol = "tcp"
port_range = "5432/5432"
source_group = "sg-web"
description = "web to db"

[[prefix_list]]
id = "pl-ops"
family = "ipv4"
entries = ["198.18.9.0/24"]

[[interface]]
name = "db0"
security_groups = ["sg-db"]
addresses = ["198.18.2.1"]

[sessions]
tcp_established = 600
"#;

    #[test]
    fn keys_round_trip_and_unknown_keys_are_ignored() {
        for key in [
            Key::Group("sg-web".into()),
            Key::PrefixList("pl".into()),
            Key::Sessions,
            Key::Pushed,
            Key::Binding { host: "a".into(), iface: "eth0".into() },
            Key::Member { group: "sg-web".into(), host: "a".into(), address: "2001:db8::1".parse().unwrap() },
        ] {
            assert_eq!(Key::parse(&key.path()), Some(key));
        }
        assert_eq!(Key::parse("groups/"), None);
        assert_eq!(Key::parse("members/g/h/not-an-address"), None);
        assert_eq!(Key::parse("v2/thing"), None);
    }

    #[test]
    fn a_file_splits_into_shared_items_and_the_hosts_bindings() {
        let items = split(FILE, "f.toml", Some("host-b")).unwrap();
        let keys: Vec<String> = items.shared.keys().map(Key::path).collect();
        assert_eq!(keys, ["groups/sg-db", "groups/sg-web", "prefix-lists/pl-ops", "sessions"]);
        let bindings: Vec<String> = items.bindings.keys().map(Key::path).collect();
        assert_eq!(bindings, ["bindings/host-b/db0"]);
        assert!(split(FILE, "f.toml", None).unwrap().bindings.is_empty());
        assert!(matches!(split(FILE, "f.toml", Some("a/b")), Err(SplitError::Host(_))));
        let broken = FILE.replace("5432/5432", "5432/1");
        let Err(SplitError::Invalid(errors)) = split(&broken, "f.toml", None) else { panic!("accepted") };
        assert!(errors.to_string().contains("port_range"), "{errors}");
    }

    #[test]
    fn the_composed_file_is_the_original_rules_with_registered_members() {
        let items = split(FILE, "f.toml", Some("host-b")).unwrap();
        let mut snapshot = after_push(&Snapshot::new(), &items, Some("host-b"));
        let web = Key::Member { group: "sg-web".into(), host: "host-a".into(), address: "198.18.1.1".parse().unwrap() };
        snapshot.insert(web.path(), String::new());
        let text = compose(&snapshot, "host-b").unwrap();
        let cfg = parse_str(&text, "composed").unwrap();
        let original = parse_str(FILE, "f.toml").unwrap();
        assert_eq!(cfg.interfaces.len(), 1);
        assert_eq!(cfg.sessions, original.sessions);
        assert_eq!(cfg.group("sg-web").unwrap().members, vec!["198.18.1.1".parse::<IpAddr>().unwrap()]);
        // The host's own address is a member of its interface's group.
        assert_eq!(cfg.group("sg-db").unwrap().members, vec!["198.18.2.1".parse::<IpAddr>().unwrap()]);
        // The bound group whole; its peer group for its members only.
        let identities = |g: &crate::policy::config::SecurityGroup, c: &crate::policy::config::Config| {
            let mut keys: Vec<String> = g.rules.iter().map(|r| r.identity(c)).collect();
            keys.sort();
            keys
        };
        let db = original.group("sg-db").unwrap();
        assert_eq!(identities(cfg.group("sg-db").unwrap(), &cfg), identities(db, &original));
        assert!(cfg.group("sg-web").unwrap().rules.is_empty(), "a peer group's rules do not apply here");
        assert_eq!(cfg.prefix_lists.len(), 1);
        // Registering its own address changes nothing of the host's file.
        let own = Key::Member { group: "sg-db".into(), host: "host-b".into(), address: "198.18.2.1".parse().unwrap() };
        let mut registered = snapshot.clone();
        registered.insert(own.path(), String::new());
        assert_eq!(compose(&registered, "host-b").unwrap(), text);
        // Another host has no bindings: nothing of the groups concerns it.
        let c = parse_str(&compose(&snapshot, "host-c").unwrap(), "c").unwrap();
        assert!(c.interfaces.is_empty() && c.groups.is_empty());
    }

    #[test]
    fn a_host_is_interested_in_its_groups_their_peers_and_nothing_else() {
        let items = split(FILE, "f.toml", Some("host-b")).unwrap();
        let mut snapshot = after_push(&Snapshot::new(), &items, Some("host-b"));
        snapshot.insert("groups/sg-unrelated".into(), "id = \"sg-unrelated\"\n".into());
        let (_, interest) = compose_with_interest(&snapshot, "host-b").unwrap();
        for key in [
            "groups/sg-db",
            "groups/sg-web",
            "members/sg-web/host-a/198.18.1.1",
            "members/sg-db/host-z/198.18.2.9",
            "bindings/host-b/db1",
            "prefix-lists/pl-new",
            "sessions",
        ] {
            assert!(interest.touches(key), "{key}");
        }
        for key in ["groups/sg-unrelated", "members/sg-unrelated/h/198.18.0.1", "bindings/host-a/web0", "pushed", "x"] {
            assert!(!interest.touches(key), "{key}");
        }
    }

    #[test]
    fn a_push_replaces_shared_definitions_and_only_its_hosts_bindings() {
        let first = split(FILE, "f.toml", Some("host-b")).unwrap();
        let mut snapshot = after_push(&Snapshot::new(), &first, Some("host-b"));
        let member =
            Key::Member { group: "sg-db".into(), host: "host-b".into(), address: "198.18.2.1".parse().unwrap() };
        snapshot.insert(member.path(), String::new());
        snapshot.insert("bindings/host-c/c0".into(), "name = \"c0\"\nsecurity_groups = [\"sg-web\"]\n".into());
        let smaller =
            FILE.replace("[[prefix_list]]\nid = \"pl-ops\"\nfamily = \"ipv4\"\nentries = [\"198.18.9.0/24\"]\n", "");
        let second = split(&smaller, "f.toml", None).unwrap();
        let after = after_push(&snapshot, &second, None);
        assert!(!after.contains_key("prefix-lists/pl-ops"));
        assert!(after.contains_key(&member.path()), "members are the agents'");
        assert!(after.contains_key("bindings/host-b/db0") && after.contains_key("bindings/host-c/c0"));
        assert_eq!(hosts(&after), BTreeSet::from(["host-b".to_string(), "host-c".to_string()]));
        assert_eq!(own_members(&after, "host-b").unwrap(), BTreeSet::from([member.path()]));
        assert_eq!(registered_by(&after, "host-b"), BTreeSet::from([member.path()]));
        assert!(own_members(&after, "host-c").unwrap().is_empty());
        // A push that renames a group still bound on host-c breaks host-c's file.
        let renamed = split(&smaller.replace("sg-web", "sg-www"), "f.toml", None).unwrap();
        let broken = after_push(&snapshot, &renamed, None);
        assert!(broken.contains_key("groups/sg-www") && !broken.contains_key("groups/sg-web"));
        assert!(compose(&broken, "host-b").is_ok());
        let Err(FleetError::Host { host, errors }) = compose(&broken, "host-c") else { panic!("composed") };
        assert_eq!(host, "host-c");
        assert!(errors.to_string().contains("sg-web"), "{errors}");
    }

    #[test]
    fn a_corrupt_value_is_named() {
        let mut snapshot = Snapshot::new();
        snapshot.insert("groups/sg-x".into(), "not = [toml".into());
        snapshot.insert("bindings/h/eth0".into(), "name = \"eth0\"\nsecurity_groups = [\"sg-x\"]\n".into());
        let Err(FleetError::Value { key, .. }) = compose(&snapshot, "h") else { panic!("composed") };
        assert_eq!(key, "groups/sg-x");
    }
}
