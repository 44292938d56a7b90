//! Turns the TOML tree into a [`Config`], checking every point of docs/rule-file.md.
//!
//! Each check reports into [`Diagnostics`] and carries on, so one run lists every problem
//! of a file. Values that failed a check are [`Reported`]; a rule or binding with any such
//! value is left out, and [`validate`] returns the errors instead of a `Config`.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use sg_common::maps::MAX_USER_RULES;

use super::error::{Checked, ConfigErrors, Diagnostics, Reported};
use super::tree::{self, Field, Located, Node, Span, Table};
use super::values::{self, PortSpec};
use super::{
    Action, Config, Direction, Family, GroupKind, IcmpMatch, InterfaceBinding, Lineage, MAX_DESCRIPTION_CHARS,
    MAX_GROUPS_PER_INTERFACE, MAX_PREFIX_LIST_ENTRIES, Mode, PRIORITY_RANGE, Peer, PortRange, PrefixList, Protocol,
    Rule, SESSION_RANGES, SecurityGroup, SessionSettings,
};

const ROOT_FIELDS: &[&str] = &["security_group", "prefix_list", "interface", "sessions"];
const GROUP_FIELDS: &[&str] = &["id", "type", "inner_access_policy", "members", "owner", "rule"];
const RULE_FIELDS: &[&str] = &[
    "direction",
    "policy",
    "priority",
    "protocol",
    "port_range",
    "source_port_range",
    "icmp_type",
    "icmp_code",
    "source",
    "source_group",
    "source_prefix_list",
    "destination",
    "destination_group",
    "destination_prefix_list",
    "description",
];
const LIST_FIELDS: &[&str] = &["id", "family", "entries"];
const INTERFACE_FIELDS: &[&str] = &["name", "security_groups", "mode", "addresses"];
const SESSION_FIELDS: &[&str] = &[
    "max_sessions",
    "tcp_established",
    "tcp_opening",
    "tcp_closing",
    "tcp_rst",
    "udp_unreplied",
    "udp_replied",
    "icmp",
    "other",
];

/// The fields naming the peer of an ingress rule; on egress only `source` (the local
/// address) is allowed.
const SOURCE_FIELDS: [&str; 3] = ["source", "source_group", "source_prefix_list"];
/// The fields naming the peer of an egress rule; on ingress only `destination` (the local
/// address) is allowed.
const DESTINATION_FIELDS: [&str; 3] = ["destination", "destination_group", "destination_prefix_list"];

/// Longest Linux interface name (IFNAMSIZ - 1).
const MAX_INTERFACE_NAME_BYTES: usize = 15;

pub(crate) fn validate(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    validate_with_scope(text, file).map(|(config, _)| config)
}

/// [`validate`], also returning what resolving the file's rules needed (its groups' and
/// prefix lists' ids and kinds), so one rule can later be read again on its own
/// ([`revalidate_rule`]).
pub(crate) fn validate_with_scope(text: &str, file: &str) -> Result<(Config, Scope), ConfigErrors> {
    let mut diag = Diagnostics::new(file, text);
    let root = match tree::parse(text) {
        Ok(root) => root,
        Err(error) => {
            diag.report_syntax(error.span.map(|span| span.start), &error.message);
            return Err(diag.into_errors());
        }
    };
    let mut builder = Builder::new(&mut diag);
    let config = builder.build(&root, &(0..text.len()));
    let scope = builder.scope;
    match config {
        Ok(config) if !diag.has_errors() => Ok((config, scope)),
        _ => Err(diag.into_errors()),
    }
}

/// The ids and kinds of a valid file's groups and prefix lists: what reading one of its
/// rules consults besides the groups themselves.
#[derive(Debug, Default)]
pub(crate) struct Scope {
    /// `None` when the group's `type` was invalid, so checks depending on it are skipped
    /// instead of producing follow-on errors.
    group_kinds: Vec<Option<GroupKind>>,
    /// Group id to its first definition.
    group_ids: HashMap<String, Definition>,
    list_families: Vec<Option<Family>>,
    list_ids: HashMap<String, Definition>,
    /// Per group: the rules left out as exact duplicates of earlier ones. Changing the
    /// rule one duplicates would bring it back, so such a change is read whole again.
    pub(crate) dropped: Vec<Vec<Rule>>,
}

/// Reads `text`, a TOML document holding exactly one `[[security_group.rule]]` table, as
/// rule `position` of group `group_index` of `config` (the file `scope` came from).
/// `None` when the rule is invalid or the text holds anything else: the caller then
/// reads the whole file, which reports the problems with their positions.
pub(crate) fn revalidate_rule(
    scope: &mut Scope,
    config: &mut Config,
    file: &str,
    text: &str,
    group_index: usize,
    position: usize,
) -> Option<Rule> {
    let mut diag = Diagnostics::new(file, text);
    let root = tree::parse(text).ok()?;
    // The builder borrows the file's groups, lists and scope for the read, and gives
    // them back.
    let mut builder = Builder::new(&mut diag);
    builder.groups = std::mem::take(&mut config.groups);
    builder.lists = std::mem::take(&mut config.prefix_lists);
    builder.scope = std::mem::take(scope);
    let rule = builder.lone_rule(&root, text.len(), group_index, position);
    (config.groups, config.prefix_lists, *scope) = (builder.groups, builder.lists, builder.scope);
    rule.filter(|_| !diag.has_errors())
}

/// Validation state: what has been read so far, for resolving references.
struct Builder<'d, 't> {
    diag: &'d mut Diagnostics<'t>,
    groups: Vec<SecurityGroup>,
    lists: Vec<PrefixList>,
    scope: Scope,
}

/// Where an id was first defined.
#[derive(Debug, Clone, Copy)]
struct Definition {
    index: usize,
    line: usize,
}

impl<'d, 't> Builder<'d, 't> {
    fn new(diag: &'d mut Diagnostics<'t>) -> Self {
        Builder { diag, groups: Vec::new(), lists: Vec::new(), scope: Scope::default() }
    }

    /// The one rule of a document written as `[[security_group.rule]]` and its fields
    /// only; `None` when the document holds anything else, or the rule is invalid.
    fn lone_rule(&mut self, root: &Located, len: usize, group_index: usize, position: usize) -> Option<Rule> {
        let root = Table::open(self.diag, root, String::new(), &(0..len), &["security_group"]).ok()?;
        // Alone, `[[security_group.rule]]` makes `security_group` a table, not an array.
        let field = root.get("security_group")?;
        let group = Table::open(self.diag, field.value, field.path, &field.span, &["rule"]).ok()?;
        let rules = group.tables(self.diag, "rule", RULE_FIELDS);
        let [rule] = rules.as_slice() else { return None };
        if self.diag.has_errors() {
            return None;
        }
        self.read_rule(group_index, position, rule).ok()
    }

    /// Reads the whole document; the groups, lists and interfaces move into the
    /// `Config`, the rest stays in the builder's scope.
    fn build(&mut self, root: &Located, whole_file: &Span) -> Checked<Config> {
        let root = Table::open(self.diag, root, String::new(), whole_file, ROOT_FIELDS)?;
        let group_tables = root.tables(self.diag, "security_group", GROUP_FIELDS);
        let list_tables = root.tables(self.diag, "prefix_list", LIST_FIELDS);
        let interface_tables = root.tables(self.diag, "interface", INTERFACE_FIELDS);

        // Groups and lists first: rules reference them, in any order in the file.
        for table in &group_tables {
            self.read_group(table);
        }
        for table in &list_tables {
            self.read_prefix_list(table);
        }
        for (group_index, table) in group_tables.iter().enumerate() {
            let rule_tables = table.tables(self.diag, "rule", RULE_FIELDS);
            self.groups[group_index].rules = self.read_rules(group_index, &rule_tables);
        }
        assign_rule_ids(&mut self.groups);
        self.scope.dropped.resize(self.groups.len(), Vec::new());
        let interfaces = self.read_interfaces(&interface_tables);
        // An instance's addresses are members of its interface's groups.
        for binding in &interfaces {
            for &group in &binding.groups {
                for addr in &binding.addresses {
                    if !self.groups[group].members.contains(addr) {
                        self.groups[group].members.push(*addr);
                    }
                }
            }
        }
        let sessions = match root.get("sessions") {
            Some(field) => self.read_sessions(field)?,
            None => SessionSettings::default(),
        };
        let groups = std::mem::take(&mut self.groups);
        let prefix_lists = std::mem::take(&mut self.lists);
        Ok(Config { groups, prefix_lists, interfaces, sessions, lineage: Lineage::default() })
    }

    // ----- generic field readers -----

    /// An optional keyword field (case-insensitive).
    fn keyword<T: FromStr<Err = String>>(&mut self, t: &Table, key: &str) -> Checked<Option<T>> {
        if !t.has(key) {
            return Ok(None);
        }
        let field = t.string(self.diag, key).ok_or(Reported)?;
        match field.value.parse() {
            Ok(value) => Ok(Some(value)),
            Err(message) => Err(self.diag.report(&field.span, field.path, message)),
        }
    }

    fn required_keyword<T: FromStr<Err = String>>(&mut self, t: &Table, key: &str, hint: &str) -> Checked<T> {
        match self.keyword(t, key)? {
            Some(value) => Ok(value),
            None => Err(self.missing(t, key, format!("`{key}` is required ({hint})"))),
        }
    }

    fn missing(&mut self, t: &Table, key: &str, message: String) -> Reported {
        self.diag.report_missing(t.span(), t.field_path(key), message)
    }

    fn fail<T>(&mut self, field: &Field<T>, message: impl Into<String>) -> Reported {
        self.diag.report(&field.span, field.path.clone(), message)
    }

    // ----- security groups -----

    /// Reads a group's own fields; its rules are read once every group is known.
    fn read_group(&mut self, t: &Table) {
        let index = self.groups.len();
        let (id, new_at_line) = read_id(self.diag, t, "security group", &self.scope.group_ids);
        if let Some(line) = new_at_line {
            self.scope.group_ids.insert(id.clone(), Definition { index, line });
        }
        // Groups are basic unless written otherwise (the provider's default type).
        let kind = self.keyword::<GroupKind>(t, "type").map(|kind| kind.unwrap_or(GroupKind::Basic));
        let inner_access = self.inner_access(t, kind);
        let owner = self.owner(t);
        let members = self.members(t);
        self.scope.group_kinds.push(kind.ok());
        self.groups.push(SecurityGroup {
            id,
            owner,
            kind: kind.unwrap_or(GroupKind::Basic),
            inner_access,
            members,
            rules: Vec::new(),
        });
    }

    /// Basic groups default to intra-group connectivity; advanced groups always isolate.
    fn inner_access(&mut self, t: &Table, kind: Checked<GroupKind>) -> Action {
        let written = self.keyword::<Action>(t, "inner_access_policy");
        match (kind, written) {
            (Ok(GroupKind::Advanced), Ok(Some(Action::Accept))) => {
                if let Some(field) = t.get("inner_access_policy") {
                    self.fail(
                        &field,
                        "advanced groups always isolate their members; inner_access_policy \
                         must be drop or omitted",
                    );
                }
                Action::Drop
            }
            (_, Ok(Some(action))) => action,
            (Ok(GroupKind::Advanced), _) => Action::Drop,
            _ => Action::Accept,
        }
    }

    fn owner(&mut self, t: &Table) -> Option<String> {
        let field = t.string(self.diag, "owner")?;
        if field.value.is_empty() || field.value.contains('/') {
            self.fail(&field, "owner must be a non-empty account id without '/'");
        }
        Some(field.value.to_string())
    }

    fn members(&mut self, t: &Table) -> Vec<IpAddr> {
        self.addresses(t, "members")
    }

    /// A list of single addresses (a group's `members`, an interface's `addresses`).
    fn addresses(&mut self, t: &Table, key: &str) -> Vec<IpAddr> {
        let Some(array) = t.string_array(self.diag, key) else {
            return Vec::new();
        };
        let mut members: Vec<IpAddr> = Vec::new();
        for item in array.value {
            match values::member(item.value) {
                Ok(addr) if !members.contains(&addr) => members.push(addr),
                Ok(_) => {}
                Err(message) => {
                    self.fail(&item, message);
                }
            }
        }
        members
    }

    // ----- prefix lists -----

    fn read_prefix_list(&mut self, t: &Table) {
        let index = self.lists.len();
        let (id, new_at_line) = read_id(self.diag, t, "prefix list", &self.scope.list_ids);
        if let Some(line) = new_at_line {
            self.scope.list_ids.insert(id.clone(), Definition { index, line });
        }
        let family = self.required_keyword::<Family>(t, "family", "ipv4 or ipv6");
        let entries = self.list_entries(t, family.ok());
        self.scope.list_families.push(family.ok());
        self.lists.push(PrefixList { id, family: family.unwrap_or(Family::Ipv4), entries });
    }

    fn list_entries(&mut self, t: &Table, family: Option<Family>) -> Vec<IpNet> {
        let Some(array) = t.string_array(self.diag, "entries") else {
            return Vec::new();
        };
        if array.value.len() > MAX_PREFIX_LIST_ENTRIES {
            let message =
                format!("{} entries; a prefix list holds at most {MAX_PREFIX_LIST_ENTRIES}", array.value.len());
            self.fail(&array, message);
        }
        let mut entries: Vec<IpNet> = Vec::new();
        let mut seen = HashSet::new();
        for item in &array.value {
            let net = match values::cidr(item.value) {
                Ok(net) => net,
                Err(message) => {
                    self.fail(item, message);
                    continue;
                }
            };
            if let Some(family) = family
                && Family::of_net(&net) != family
            {
                let message = format!("{net} is not an {family} network, the family of this prefix list");
                self.fail(item, message);
            } else if seen.insert(net) {
                entries.push(net);
            }
        }
        entries
    }

    // ----- rules -----

    /// Reads a group's rules, leaving out invalid ones (reported) and collapsing exact
    /// duplicates (as the provider does).
    fn read_rules(&mut self, group_index: usize, tables: &[Table]) -> Vec<Rule> {
        let mut rules = Vec::new();
        let mut seen = HashSet::new();
        for (position, table) in tables.iter().enumerate() {
            if let Ok(rule) = self.read_rule(group_index, position + 1, table) {
                if seen.insert(RuleKey::of(&rule)) {
                    rules.push(rule);
                } else {
                    self.scope.dropped.resize(self.groups.len(), Vec::new());
                    self.scope.dropped[group_index].push(rule);
                }
            }
        }
        rules
    }

    fn read_rule(&mut self, group_index: usize, position: usize, t: &Table) -> Checked<Rule> {
        let direction = self.required_keyword::<Direction>(t, "direction", "ingress or egress");
        let action = self.keyword::<Action>(t, "policy");
        let priority = self.priority(t);
        let protocol = self.protocol(t);
        let port_range = self.port_range(t, protocol);
        let source_port_range = self.source_port_range(t, protocol);
        let icmp = self.icmp_match(t, protocol);
        let (peer, local) = self.peer_and_local(t, group_index, direction, protocol);
        let description = self.description(t);
        let (
            Ok(direction),
            Ok(action),
            Ok(priority),
            Ok(protocol),
            Ok(port_range),
            Ok(source_port_range),
            Ok(icmp),
            Ok(peer),
            Ok(local),
            Ok(description),
        ) = (direction, action, priority, protocol, port_range, source_port_range, icmp, peer, local, description)
        else {
            return Err(Reported);
        };
        Ok(Rule {
            id: 0,
            group_index,
            index_in_group: position,
            direction,
            action: action.unwrap_or(Action::Accept),
            priority,
            protocol,
            // An icmp rule's type and code are kept as the range of ICMP keys they
            // stand for (`Rule::port_range`, read back by `Rule::icmp`).
            port_range: icmp.map_or(port_range, |icmp| icmp.key_range()),
            source_port_range,
            peer,
            local,
            description,
            line: self.diag.line_of(t.span().start),
        })
    }

    fn priority(&mut self, t: &Table) -> Checked<u8> {
        if !t.has("priority") {
            return Ok(1);
        }
        let field = t.integer(self.diag, "priority").ok_or(Reported)?;
        u8::try_from(field.value).ok().filter(|p| PRIORITY_RANGE.contains(p)).ok_or_else(|| {
            let message = format!(
                "priority {} is out of range; priorities run from 1 (highest) to 100 \
                     (lowest)",
                field.value
            );
            self.fail(&field, message)
        })
    }

    /// The protocol: a name, or an IP protocol number 0 to 255 written as an integer or
    /// a string (`50`, `"50"`); a number with a name (`6`) is that protocol.
    fn protocol(&mut self, t: &Table) -> Checked<Protocol> {
        if let Some(field) = t.get("protocol")
            && let Node::Integer(number) = field.value.node
        {
            return u8::try_from(number).map(Protocol::from_number).map_err(|_| {
                let message = format!("protocol number {number} is out of range; IP protocols are 0 to 255");
                self.fail(&field, message)
            });
        }
        self.required_keyword::<Protocol>(t, "protocol", "tcp, udp, icmp, icmpv6, gre, all or a number 0 to 255")
    }

    /// The optional `icmp_type` and `icmp_code` of an icmp or icmpv6 rule: integers 0 to
    /// 255, a code only with a type.
    fn icmp_match(&mut self, t: &Table, protocol: Checked<Protocol>) -> Checked<Option<IcmpMatch>> {
        let icmp_type = self.icmp_number(t, "icmp_type", "types");
        let code = self.icmp_number(t, "icmp_code", "codes");
        let (icmp_type, code, protocol) = (icmp_type?, code?, protocol?);
        if !protocol.is_icmp() {
            let mut failed = None;
            for field in [&icmp_type, &code].into_iter().flatten() {
                let name = field.path.rsplit('.').next().unwrap_or("icmp_type").to_string();
                let message = format!("{name} is only allowed for icmp and icmpv6 rules, not {}", protocol.name());
                failed = Some(self.fail(field, message));
            }
            return failed.map_or(Ok(None), Err);
        }
        match (icmp_type, code) {
            (None, None) => Ok(None),
            (None, Some(code)) => Err(self.fail(
                &code,
                "icmp_code needs an icmp_type (a code means something only within its type); \
                 add icmp_type, or omit both to match every message",
            )),
            (Some(icmp_type), code) => {
                Ok(Some(IcmpMatch { icmp_type: icmp_type.value, code: code.map(|code| code.value) }))
            }
        }
    }

    /// An `icmp_type` or `icmp_code`: absent, or an integer 0 to 255.
    fn icmp_number(&mut self, t: &Table, key: &str, what: &str) -> Checked<Option<Field<u8>>> {
        if !t.has(key) {
            return Ok(None);
        }
        let field = t.integer(self.diag, key).ok_or(Reported)?;
        match u8::try_from(field.value) {
            Ok(number) => Ok(Some(field.map(|_| number))),
            Err(_) => {
                let message = format!(
                    "{key} {} is out of range; ICMP {what} are 0 to 255 (omit {key} to match every one)",
                    field.value
                );
                Err(self.fail(&field, message))
            }
        }
    }

    /// A port-range field's syntax, before it is checked against the protocol.
    fn port_spec(&mut self, t: &Table, key: &str) -> Checked<Option<Field<PortSpec>>> {
        if !t.has(key) {
            return Ok(None);
        }
        let field = t.string(self.diag, key).ok_or(Reported)?;
        match values::port_spec(field.value) {
            Ok(spec) => Ok(Some(field.map(|_| spec))),
            Err(message) => Err(self.fail(&field, message)),
        }
    }

    /// The destination port range: required `a/b` for tcp/udp, `-1/-1` (or nothing) for
    /// the others.
    fn port_range(&mut self, t: &Table, protocol: Checked<Protocol>) -> Checked<PortRange> {
        let spec = self.port_spec(t, "port_range")?;
        let protocol = protocol?;
        match (spec, protocol.has_ports()) {
            (None, true) => Err(self.missing(
                t,
                "port_range",
                format!(
                    "`port_range` is required for {protocol} (e.g. \"80/80\", or \"1/65535\" \
                     for every port)"
                ),
            )),
            (Some(field), true) => match field.value {
                PortSpec::Range(range) => Ok(range),
                PortSpec::Any => Err(self.fail(
                    &field,
                    format!(
                        "protocol/port mismatch: {protocol} needs a port range a/b; -1/-1 is \
                         only for icmp, icmpv6, gre and all (write 1/65535 for every port)"
                    ),
                )),
            },
            (None, false) => Ok(PortRange::ANY),
            (Some(field), false) => match field.value {
                PortSpec::Any => Ok(PortRange::ANY),
                PortSpec::Range(_) => Err(self.fail(
                    &field,
                    format!(
                        "protocol/port mismatch: {protocol} has no ports; port_range must be \
                         -1/-1 or omitted"
                    ),
                )),
            },
        }
    }

    /// The optional source port range ("quintuple" rules), tcp/udp only.
    fn source_port_range(&mut self, t: &Table, protocol: Checked<Protocol>) -> Checked<Option<PortRange>> {
        let Some(field) = self.port_spec(t, "source_port_range")? else {
            return Ok(None);
        };
        let protocol = protocol?;
        if !protocol.has_ports() {
            let message = format!("source_port_range is only allowed for tcp and udp rules, not {protocol}");
            return Err(self.fail(&field, message));
        }
        match field.value {
            PortSpec::Range(range) => Ok(Some(range)),
            PortSpec::Any => {
                Err(self.fail(&field, "source_port_range takes a range a/b; omit it to match every source port"))
            }
        }
    }

    fn description(&mut self, t: &Table) -> Checked<String> {
        if !t.has("description") {
            return Ok(String::new());
        }
        let field = t.string(self.diag, "description").ok_or(Reported)?;
        let length = field.value.chars().count();
        if length > MAX_DESCRIPTION_CHARS {
            let message = format!(
                "description is {length} characters long; at most {MAX_DESCRIPTION_CHARS} are \
                 allowed"
            );
            return Err(self.fail(&field, message));
        }
        Ok(field.value.to_string())
    }

    // ----- peers -----

    /// The rule's peer (exactly one of the peer-side fields) and the optional local-address
    /// narrowing (`destination` on ingress, `source` on egress).
    fn peer_and_local(
        &mut self,
        t: &Table,
        group_index: usize,
        direction: Checked<Direction>,
        protocol: Checked<Protocol>,
    ) -> (Checked<Peer>, Checked<Option<IpNet>>) {
        // Every written peer field is parsed, whatever the direction, so that its own
        // problems are reported too.
        let written: Vec<(&str, Checked<Field<Peer>>)> = SOURCE_FIELDS
            .iter()
            .chain(&DESTINATION_FIELDS)
            .filter(|key| t.has(key))
            .map(|&key| (key, self.peer_field(t, key, group_index)))
            .collect();
        let Ok(direction) = direction else {
            return (Err(Reported), Err(Reported));
        };
        let (peer_keys, other_keys) = match direction {
            Direction::Ingress => (SOURCE_FIELDS, DESTINATION_FIELDS),
            Direction::Egress => (DESTINATION_FIELDS, SOURCE_FIELDS),
        };
        let peer = self.single_peer(t, direction, &peer_keys, &written);
        let local = self.local(direction, &other_keys, &written);
        if let (Ok(peer), Ok(protocol)) = (&peer, protocol) {
            self.check_families(protocol, peer, local.as_ref().ok().and_then(Option::as_ref));
        }
        let local = local.map(|field| field.map(|f| f.value));
        let peer = peer.map(|field| field.value);
        (peer, local)
    }

    /// Parses one peer field according to its kind (CIDR, group or prefix list).
    fn peer_field(&mut self, t: &Table, key: &str, group_index: usize) -> Checked<Field<Peer>> {
        let field = t.string(self.diag, key).ok_or(Reported)?;
        let peer = if key.ends_with("_group") {
            Peer::Group { group_index: self.resolve_group(&field, group_index)? }
        } else if key.ends_with("_prefix_list") {
            Peer::PrefixList { list_index: self.resolve_prefix_list(&field)? }
        } else {
            match values::cidr(field.value) {
                Ok(net) => Peer::Cidr(net),
                Err(message) => return Err(self.fail(&field, message)),
            }
        };
        Ok(field.map(|_| peer))
    }

    /// `sg-a` names group sg-a; `ACCOUNT/sg-a` names it only if its owner is ACCOUNT.
    fn resolve_group(&mut self, field: &Field<&str>, group_index: usize) -> Checked<usize> {
        let reference = values::group_ref(field.value).map_err(|m| self.fail(field, m))?;
        let Some(target) = self.scope.group_ids.get(reference.id).map(|d| d.index) else {
            let message = format!("unknown security group `{}`", reference.id);
            return Err(self.fail(field, message));
        };
        let owner = self.groups[target].owner.clone();
        if let Some(account) = reference.account
            && owner.as_deref() != Some(account)
        {
            let message = match owner {
                Some(owner) => format!(
                    "unknown group reference: security group `{}` belongs to account {owner}, \
                     not {account}",
                    reference.id
                ),
                None => format!(
                    "unknown group reference: security group `{}` has no owner; set owner = \
                     \"{account}\" on it or drop the account prefix",
                    reference.id
                ),
            };
            return Err(self.fail(field, message));
        }
        // The provider's rule: advanced groups neither reference groups nor are referenced.
        let key = field.path.rsplit('.').next().unwrap_or("source_group").to_string();
        if self.scope.group_kinds[group_index] == Some(GroupKind::Advanced) {
            let message = format!(
                "{key} = \"{}\": `{}` is an advanced group, and advanced groups cannot \
                 reference security groups; use a CIDR or a prefix list of the peers' addresses",
                field.value, self.groups[group_index].id
            );
            return Err(self.fail(field, message));
        }
        if self.scope.group_kinds[target] == Some(GroupKind::Advanced) {
            let message = format!(
                "{key} = \"{}\": `{}` is an advanced group, and advanced groups cannot be \
                 referenced; use a CIDR or a prefix list of its members' addresses",
                field.value, self.groups[target].id
            );
            return Err(self.fail(field, message));
        }
        if target == group_index {
            return Err(self.fail(
                field,
                "a group cannot reference itself; traffic between its members is governed by \
                 inner_access_policy",
            ));
        }
        Ok(target)
    }

    fn resolve_prefix_list(&mut self, field: &Field<&str>) -> Checked<usize> {
        match self.scope.list_ids.get(field.value) {
            Some(definition) => Ok(definition.index),
            None => {
                let message = format!("unknown prefix list `{}`", field.value);
                Err(self.fail(field, message))
            }
        }
    }

    /// Exactly one of the peer-side fields must be written.
    fn single_peer(
        &mut self,
        t: &Table,
        direction: Direction,
        peer_keys: &[&str; 3],
        written: &[(&str, Checked<Field<Peer>>)],
    ) -> Checked<Field<Peer>> {
        let mut on_side = written.iter().filter(|(key, _)| peer_keys.contains(key));
        let choices = peer_keys.join(", ");
        let Some((first_key, first)) = on_side.next() else {
            return Err(self.missing(
                t,
                peer_keys[0],
                format!("missing peer: an {direction} rule needs exactly one of {choices}"),
            ));
        };
        let mut result = first.clone();
        for (key, _) in on_side {
            let message = format!(
                "more than one peer: `{first_key}` and `{key}` are both set; an {direction} \
                 rule takes exactly one of {choices}"
            );
            if let Some(field) = t.get(key) {
                self.fail(&field, message);
            }
            result = Err(Reported);
        }
        result
    }

    /// On ingress `destination`, on egress `source` (a CIDR) narrows the local address; the
    /// other fields of the non-peer side are errors.
    fn local(
        &mut self,
        direction: Direction,
        other_keys: &[&str; 3],
        written: &[(&str, Checked<Field<Peer>>)],
    ) -> Checked<Option<Field<IpNet>>> {
        let mut local = Ok(None);
        for (key, parsed) in written.iter().filter(|(key, _)| other_keys.contains(key)) {
            let Ok(field) = parsed else {
                local = Err(Reported);
                continue;
            };
            match (direction, &field.value) {
                (Direction::Ingress, Peer::Cidr(net)) if *key == "destination" => {
                    if local.is_ok() {
                        local = Ok(Some(field.clone().map(|_| *net)));
                    }
                }
                (Direction::Egress, Peer::Cidr(net)) if *key == "source" => {
                    if local.is_ok() {
                        local = Ok(Some(field.clone().map(|_| *net)));
                    }
                }
                (Direction::Ingress, _) => {
                    let message = format!(
                        "ingress rules take only `destination` (a CIDR narrowing the local \
                         address) on the destination side, not `{key}`"
                    );
                    local = Err(self.fail(field, message));
                }
                (Direction::Egress, _) => {
                    let message = format!(
                        "egress rules take only `source` (a CIDR narrowing the local address) \
                         on the source side, not `{key}`"
                    );
                    local = Err(self.fail(field, message));
                }
            }
        }
        local
    }

    /// `icmp` is IPv4 only and `icmpv6` IPv6 only; a rule whose peer and local address are
    /// of different families could never match either.
    fn check_families(&mut self, protocol: Protocol, peer: &Field<Peer>, local: Option<&Field<IpNet>>) {
        let peer_family = self.peer_family(&peer.value);
        let local_family = local.map(|field| Family::of_net(&field.value));
        if let Some(required) = protocol.family() {
            if let Some(found) = peer_family.filter(|&f| f != required) {
                self.family_mismatch(protocol, required, found, "the peer", peer);
            }
            if let Some(local) = local
                && let Some(found) = local_family.filter(|&f| f != required)
            {
                self.family_mismatch(protocol, required, found, "the local address", local);
            }
        }
        if let (Some(peer_family), Some(local_family), Some(local)) = (peer_family, local_family, local)
            && peer_family != local_family
        {
            let message = format!(
                "the local address is {local_family} but the peer is {peer_family}; the rule \
                 could never match"
            );
            self.fail(local, message);
        }
    }

    fn family_mismatch<T>(
        &mut self,
        protocol: Protocol,
        required: Family,
        found: Family,
        what: &str,
        field: &Field<T>,
    ) {
        let other = match protocol {
            Protocol::Icmp => "icmpv6",
            _ => "icmp",
        };
        let message = format!("{protocol} is {required} only, but {what} is {found} (use protocol {other})");
        self.fail(field, message);
    }

    /// The family a peer is tied to; groups may hold members of both.
    fn peer_family(&self, peer: &Peer) -> Option<Family> {
        match peer {
            Peer::Cidr(net) => Some(Family::of_net(net)),
            Peer::PrefixList { list_index } => self.scope.list_families.get(*list_index).copied().flatten(),
            Peer::Group { .. } => None,
        }
    }

    // ----- interfaces -----

    fn read_interfaces(&mut self, tables: &[Table]) -> Vec<InterfaceBinding> {
        let mut names: HashMap<String, usize> = HashMap::new();
        tables.iter().filter_map(|table| self.read_interface(table, &mut names).ok()).collect()
    }

    fn read_interface(&mut self, t: &Table, names: &mut HashMap<String, usize>) -> Checked<InterfaceBinding> {
        let name = self.interface_name(t, names);
        let groups = self.interface_groups(t);
        let mode = self.keyword::<Mode>(t, "mode");
        let addresses = self.addresses(t, "addresses");
        Ok(InterfaceBinding { name: name?, groups: groups?, mode: mode?.unwrap_or(Mode::Enforce), addresses })
    }

    fn interface_name(&mut self, t: &Table, names: &mut HashMap<String, usize>) -> Checked<String> {
        let Some(field) = t.string(self.diag, "name") else {
            if t.has("name") {
                return Err(Reported);
            }
            return Err(self.missing(t, "name", "an interface needs a `name`".to_string()));
        };
        let name = field.value;
        let valid = !name.is_empty()
            && name.len() <= MAX_INTERFACE_NAME_BYTES
            && name != "."
            && name != ".."
            && !name.contains(['/', ':'])
            && !name.chars().any(char::is_whitespace);
        if !valid {
            return Err(self.fail(&field, "not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)"));
        }
        if let Some(first) = names.get(name) {
            let message = format!("duplicate interface `{name}`; it is first bound at line {first}");
            return Err(self.fail(&field, message));
        }
        names.insert(name.to_string(), self.diag.line_of(field.span.start));
        Ok(name.to_string())
    }

    /// The interface's groups: 1 to 10 known groups, each once, all of one type.
    fn interface_groups(&mut self, t: &Table) -> Checked<Vec<usize>> {
        let Some(array) = t.string_array(self.diag, "security_groups") else {
            if t.has("security_groups") {
                return Err(Reported);
            }
            return Err(self.missing(
                t,
                "security_groups",
                "an interface needs `security_groups`, a list of 1 to 10 group ids".to_string(),
            ));
        };
        let mut result = Ok(());
        if array.value.is_empty() {
            result = Err(self.fail(&array, "an interface needs at least one security group"));
        } else if array.value.len() > MAX_GROUPS_PER_INTERFACE {
            let message = format!(
                "{} groups; at most {MAX_GROUPS_PER_INTERFACE} groups can be applied to one \
                 interface",
                array.value.len()
            );
            result = Err(self.fail(&array, message));
        }
        let mut groups: Vec<usize> = Vec::new();
        for item in &array.value {
            match self.scope.group_ids.get(item.value).map(|d| d.index) {
                None => {
                    let message = format!("unknown security group `{}`", item.value);
                    result = Err(self.fail(item, message));
                }
                Some(index) if groups.contains(&index) => {
                    let message = format!("security group `{}` is listed twice", item.value);
                    result = Err(self.fail(item, message));
                }
                Some(index) => {
                    if let Err(reported) = self.check_same_kind(&groups, index, item) {
                        result = Err(reported);
                    }
                    groups.push(index);
                }
            }
        }
        // The maps hold so many rules per interface and direction: say so here, at the
        // interface, rather than let `validate` pass a file no apply can load.
        for direction in [Direction::Ingress, Direction::Egress] {
            let count: usize =
                groups.iter().map(|&g| self.groups[g].rules.iter().filter(|r| r.direction == direction).count()).sum();
            if count > MAX_USER_RULES {
                let message = format!(
                    "{count} {} rules in these groups; one interface holds at most {MAX_USER_RULES} per direction",
                    if direction == Direction::Ingress { "ingress" } else { "egress" }
                );
                result = Err(self.fail(&array, message));
            }
        }
        result.map(|()| groups)
    }

    /// All groups on one interface must have one type: the type decides the defaults.
    fn check_same_kind(&mut self, earlier: &[usize], index: usize, item: &Field<&str>) -> Checked<()> {
        let Some(kind) = self.scope.group_kinds[index] else {
            return Ok(());
        };
        let conflicting = earlier.iter().find(|&&other| self.scope.group_kinds[other].is_some_and(|k| k != kind));
        match conflicting {
            Some(&other) => {
                let message = format!(
                    "mixing basic and advanced groups on one interface: `{}` is {kind} but \
                     `{}` is {}",
                    self.groups[index].id, self.groups[other].id, self.groups[other].kind
                );
                Err(self.fail(item, message))
            }
            None => Ok(()),
        }
    }

    // ----- sessions -----

    fn read_sessions(&mut self, field: Field<&Located>) -> Checked<SessionSettings> {
        let t = Table::open(self.diag, field.value, field.path, &field.span, SESSION_FIELDS)?;
        let mut settings = SessionSettings::default();
        let mut result = Ok(());
        for &key in SESSION_FIELDS {
            if !t.has(key) {
                continue;
            }
            let Some(value) = t.integer(self.diag, key) else {
                result = Err(Reported);
                continue;
            };
            let (_, low, high) =
                SESSION_RANGES.iter().copied().find(|(k, _, _)| *k == key).unwrap_or((key, 1, u32::MAX));
            match u32::try_from(value.value).ok().filter(|v| (low..=high).contains(v)) {
                Some(v) => *session_slot(&mut settings, key) = v,
                None => {
                    let unit = if key == "max_sessions" { "entries" } else { "seconds" };
                    let message = format!("{key} = {} is out of range: it takes {low} to {high} {unit}", value.value);
                    result = Err(self.fail(&value, message));
                }
            }
        }
        result.map(|()| settings)
    }
}

/// Reads an `id` field, checking presence, form and uniqueness among `known`. Returns the
/// id (empty when missing) and, when it is valid and new, the line to register it at.
fn read_id(
    diag: &mut Diagnostics<'_>,
    t: &Table,
    what: &str,
    known: &HashMap<String, Definition>,
) -> (String, Option<usize>) {
    let Some(field) = t.string(diag, "id") else {
        if !t.has("id") {
            diag.report_missing(t.span(), t.field_path("id"), format!("a {what} needs an `id`"));
        }
        return (String::new(), None);
    };
    let id = field.value.to_string();
    if !super::is_valid_id(&id) {
        diag.report(
            &field.span,
            field.path,
            "ids must be non-empty, without whitespace or '/' ('/' separates account and group \
             id in references)",
        );
        return (id, None);
    }
    if let Some(first) = known.get(&id) {
        let message = format!("duplicate {what} id `{id}`; it is first defined at line {}", first.line);
        diag.report(&field.span, field.path, message);
        return (id, None);
    }
    let line = diag.line_of(field.span.start);
    (id, Some(line))
}

/// The setting a `[sessions]` key sets; keys are those of `SESSION_FIELDS`.
fn session_slot<'s>(settings: &'s mut SessionSettings, key: &str) -> &'s mut u32 {
    match key {
        "max_sessions" => &mut settings.max_sessions,
        "tcp_established" => &mut settings.tcp_established,
        "tcp_opening" => &mut settings.tcp_opening,
        "tcp_closing" => &mut settings.tcp_closing,
        "tcp_rst" => &mut settings.tcp_rst,
        "udp_unreplied" => &mut settings.udp_unreplied,
        "udp_replied" => &mut settings.udp_replied,
        "icmp" => &mut settings.icmp,
        _ => &mut settings.other,
    }
}

/// Numbers rules 1, 2, ... in file order over all groups.
fn assign_rule_ids(groups: &mut [SecurityGroup]) {
    let rules = groups.iter_mut().flat_map(|group| &mut group.rules);
    for (id, rule) in (1..).zip(rules) {
        rule.id = id;
    }
}

/// Whether two rules of one group are the same rule, so that the validator keeps only the
/// first of them.
pub(crate) fn same_rule(a: &Rule, b: &Rule) -> bool {
    RuleKey::of(a) == RuleKey::of(b)
}

/// What makes two rules of one group the same rule: everything but the description
/// (and position). With its group, what a rule's identity is made of
/// (`super::identities`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct RuleKey {
    direction: Direction,
    action: Action,
    priority: u8,
    protocol: Protocol,
    port_range: PortRange,
    source_port_range: Option<PortRange>,
    peer: Peer,
    local: Option<IpNet>,
}

impl RuleKey {
    pub(super) fn of(rule: &Rule) -> Self {
        RuleKey {
            direction: rule.direction,
            action: rule.action,
            priority: rule.priority,
            protocol: rule.protocol,
            port_range: rule.port_range,
            source_port_range: rule.source_port_range,
            peer: rule.peer,
            local: rule.local,
        }
    }
}
