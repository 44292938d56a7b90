//! Rule files: the rule model, its parser and validator (docs/rule-model.md,
//! docs/rule-file.md).
//!
//! [`load_file`] and [`parse_str`] turn a TOML rule file into a [`Config`] whose every
//! reference is resolved to an index, so the compiler and the evaluator never see an
//! unvalidated value. Validation collects every problem of a file (see [`ConfigErrors`]);
//! a file with any problem yields no `Config` at all, which is what makes "a rule file
//! that fails validation changes nothing" easy to keep.

mod error;
mod identities;
mod lineage;
mod reread;
mod tree;
mod validate;
mod values;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Serialize, Serializer};

pub use error::{ConfigError, ConfigErrors};
pub use identities::Identities;
pub use lineage::{Edit, Lineage};
pub use reread::{ReadKind, Reader};

/// At most this many groups on one interface (the provider's limit).
pub const MAX_GROUPS_PER_INTERFACE: usize = 10;

/// Whether `id` can name a group, prefix list or account in a rule file: non-empty,
/// without whitespace or '/' ('/' separates account and group id in references). The
/// validator and the importers (which must not write a file that does not validate)
/// share it.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && !id.contains('/') && !id.chars().any(char::is_whitespace)
}

/// At most this many entries in one prefix list.
///
/// The provider caps prefix lists at 200 entries. We allow more because our prefix lists
/// compile to LPM-trie entries whose lookup cost does not grow with the entry count, and
/// operators importing blocklists or cloud address ranges need thousands; 16384 keeps the
/// map memory bounded (a few hundred KiB per list).
pub const MAX_PREFIX_LIST_ENTRIES: usize = 16384;

/// Longest rule description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 512;

/// Priorities run from 1 (highest) to 100 (lowest).
pub const PRIORITY_RANGE: std::ops::RangeInclusive<u8> = 1..=100;

/// A validated rule file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// In file order; [`Rule::group_index`] and [`Peer::Group`] index into this.
    pub groups: Vec<SecurityGroup>,
    /// In file order; [`Peer::PrefixList`] indexes into this.
    pub prefix_lists: Vec<PrefixList>,
    pub interfaces: Vec<InterfaceBinding>,
    pub sessions: SessionSettings,
    /// Read whole, or one rule's edit of a config read before ([`Lineage`]).
    #[serde(skip)]
    pub lineage: Lineage,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecurityGroup {
    pub id: String,
    /// Account id, for `ACCOUNT/group-id` references.
    pub owner: Option<String>,
    pub kind: GroupKind,
    /// What happens between members of the group when no rule decides: `Accept` (intra-group
    /// connectivity, the default for basic groups) or `Drop` (isolation, always for advanced).
    pub inner_access: Action,
    /// Private addresses of the instances in the group, duplicates removed.
    pub members: Vec<IpAddr>,
    /// In file order, exact duplicates collapsed.
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupKind {
    /// Default: ingress drop, egress accept; members reach each other unless isolated.
    Basic,
    /// Default: drop both ways; members are always isolated from each other.
    Advanced,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Accept,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Arriving at the instance: the peer is the source.
    Ingress,
    /// Leaving the instance: the peer is the destination.
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP for IPv4 only.
    Icmp,
    /// ICMPv6, IPv6 only.
    Icmpv6,
    Gre,
    /// Any protocol.
    All,
    /// An IP protocol written by number (AWS and Neutron accept 0 to 255) that has no
    /// name above: never 1, 6, 17, 47 or 58, which [`Protocol::from_number`] turns into
    /// their names so that ports, ICMP types and family checks apply to them as well.
    Number(u8),
}

/// An inclusive range of ports.
///
/// The file's `"-1/-1"` ("any port", the only value allowed for protocols without ports)
/// is represented as [`PortRange::ANY`], `0..=65535`. Written ranges are always within
/// `1..=65535`, so `ANY` is never confused with a written range and still contains every
/// port a packet may carry, including 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// What a rule matches the peer address against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    /// A network; single addresses are host networks (/32, /128).
    Cidr(IpNet),
    /// The members of `Config::groups[group_index]`.
    Group { group_index: usize },
    /// The entries of `Config::prefix_lists[list_index]`.
    PrefixList { list_index: usize },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    /// Unique, 1-based, assigned in file order over all groups after duplicates are
    /// collapsed. Counters and verdict events carry it.
    pub id: u32,
    /// Index of the owning group in `Config::groups`.
    pub group_index: usize,
    /// 1-based position of the rule among its group's `[[security_group.rule]]` tables as
    /// written (so `sg-web#3` is the third rule written under `sg-web`, even if an earlier
    /// duplicate was collapsed).
    pub index_in_group: usize,
    pub direction: Direction,
    pub action: Action,
    /// 1..=100, smaller is higher priority.
    pub priority: u8,
    pub protocol: Protocol,
    /// Destination port range; for icmp and icmpv6 the range of ICMP keys
    /// (`type << 8 | code`, [`sg_common::icmp_key`]) the rule's `icmp_type` and `icmp_code`
    /// stand for, so the compiler and the evaluators treat both the same way;
    /// [`PortRange::ANY`] for protocols without ports and ICMP rules without a type.
    pub port_range: PortRange,
    /// Source port range (tcp/udp only).
    pub source_port_range: Option<PortRange>,
    /// Source for ingress rules, destination for egress rules.
    pub peer: Peer,
    /// The CIDR narrowing which local address the rule applies to: `destination` on
    /// ingress, `source` on egress.
    pub local: Option<IpNet>,
    pub description: String,
    /// 1-based line of the rule's `[[security_group.rule]]` header.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrefixList {
    pub id: String,
    pub family: Family,
    /// Networks of `family`, duplicates removed.
    pub entries: Vec<IpNet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterfaceBinding {
    pub name: String,
    /// Indexes into `Config::groups`, in the order written; at least one, all of one kind.
    pub groups: Vec<usize>,
    pub mode: Mode,
    /// The addresses of the instance behind the interface, duplicates removed. Each is a
    /// member of every group the interface is in (the validator adds them to
    /// [`SecurityGroup::members`]), as an instance's private addresses are in the cloud;
    /// in fleet mode the agent also registers them in the store, so other hosts see them.
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Verdicts are applied.
    Enforce,
    /// Verdicts are computed and counted, would-be drops logged, and everything passes.
    Audit,
}

/// The `[sessions]` table. Timeouts are idle timeouts in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SessionSettings {
    /// Size of the session table (entries).
    pub max_sessions: u32,
    pub tcp_established: u32,
    pub tcp_opening: u32,
    pub tcp_closing: u32,
    pub tcp_rst: u32,
    pub udp_unreplied: u32,
    pub udp_replied: u32,
    pub icmp: u32,
    pub other: u32,
}

/// The accepted range of each `[sessions]` key (entries for `max_sessions`, seconds for
/// the timeouts), as docs/rule-file.md#sessions states.
pub const SESSION_RANGES: &[(&str, u32, u32)] = &[
    ("max_sessions", 1, u32::MAX),
    ("tcp_established", 1, 432_000),
    ("tcp_opening", 1, 3_600),
    ("tcp_closing", 1, 3_600),
    ("tcp_rst", 1, 3_600),
    ("udp_unreplied", 1, 3_600),
    ("udp_replied", 1, 3_600),
    ("icmp", 1, 3_600),
    ("other", 1, 432_000),
];

impl Default for SessionSettings {
    /// The defaults of docs/rule-model.md#sessions; established TCP 910 s, closing TCP
    /// 3 s and UDP 30 s are the provider's documented connection-tracking figures.
    fn default() -> Self {
        SessionSettings {
            max_sessions: 262_144,
            tcp_established: 910,
            tcp_opening: 120,
            tcp_closing: 3,
            tcp_rst: 10,
            udp_unreplied: 30,
            udp_replied: 30,
            icmp: 30,
            other: 600,
        }
    }
}

/// Reads, parses and validates a rule file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let file_name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::whole_file(&file_name, format!("cannot read file: {e}")))?;
    parse_str(&text, &file_name)
}

/// Parses and validates rule-file text; `file_name` only labels the errors.
pub fn parse_str(text: &str, file_name: &str) -> Result<Config, ConfigErrors> {
    validate::validate(text, file_name)
}

impl Config {
    pub fn interface(&self, name: &str) -> Option<&InterfaceBinding> {
        self.interfaces.iter().find(|iface| iface.name == name)
    }

    pub fn group(&self, id: &str) -> Option<&SecurityGroup> {
        self.groups.iter().find(|group| group.id == id)
    }

    /// Every rule, in id order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.groups.iter().flat_map(|group| &group.rules)
    }

    pub fn rule(&self, id: u32) -> Option<&Rule> {
        self.rules().find(|rule| rule.id == id)
    }
}

impl Rule {
    /// What the rule is, without where it is written: its group and every field that
    /// decides what it matches and does, but not its id, line or description. Counters
    /// follow a rule across applies by this, so moving a rule in the file or rewording
    /// its description keeps its counts, and changing what it matches starts them anew.
    ///
    /// Written into one string without intermediate ones: every apply computes it for
    /// every rule of both directions (at 16,384 rules it was an eighth of an apply).
    pub fn identity(&self, cfg: &Config) -> String {
        use std::fmt::Write as _;
        let mut key = String::with_capacity(96);
        // Writing to a String cannot fail.
        let _ = write!(
            key,
            "{}|{:?}|{:?}|{}|{}|{}|",
            cfg.groups[self.group_index].id, self.direction, self.action, self.priority, self.protocol, self.port_range
        );
        if let Some(range) = self.source_port_range {
            let _ = write!(key, "{range}");
        }
        let _ = match &self.peer {
            Peer::Cidr(net) => write!(key, "|{net}|"),
            Peer::Group { group_index } => write!(key, "|group:{}|", cfg.groups[*group_index].id),
            Peer::PrefixList { list_index } => write!(key, "|prefix-list:{}|", cfg.prefix_lists[*list_index].id),
        };
        if let Some(local) = self.local {
            let _ = write!(key, "{local}");
        }
        key
    }
}

impl InterfaceBinding {
    /// The type shared by the interface's groups (validation guarantees they agree and
    /// that there is at least one); decides the default verdicts.
    pub fn kind(&self, cfg: &Config) -> GroupKind {
        self.groups.first().and_then(|&index| cfg.groups.get(index)).map_or(GroupKind::Basic, |group| group.kind)
    }
}

impl Rule {
    /// The key of the total order of [`pooled_rules`](crate::policy::order::pooled_rules):
    /// priority, then drop before accept, then id.
    pub fn rank(&self) -> (u8, u8, u32) {
        let action_rank = match self.action {
            Action::Drop => 0,
            Action::Accept => 1,
        };
        (self.priority, action_rank, self.id)
    }

    /// `sg-web#2`: the group id and the rule's 1-based position in it.
    pub fn label(&self, cfg: &Config) -> String {
        let group = cfg.groups.get(self.group_index).map_or("?", |g| &g.id);
        format!("{group}#{}", self.index_in_group)
    }

    /// One line: `ingress accept tcp 80/80 from 0.0.0.0/0, priority 1`.
    pub fn summary(&self, cfg: &Config) -> String {
        let mut out = format!("{} {} {}", self.direction, self.action, self.protocol.name());
        if self.protocol.has_ports() {
            out.push_str(&format!(" {}", self.port_range));
        }
        if let Some(icmp) = self.icmp() {
            out.push_str(&format!(" {icmp}"));
        }
        if let Some(sport) = self.source_port_range {
            out.push_str(&format!(" source port {sport}"));
        }
        let preposition = match self.direction {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        out.push_str(&format!(" {preposition} {}", self.peer.describe(cfg)));
        if let Some(local) = self.local {
            out.push_str(&format!(" to local {local}"));
        }
        out.push_str(&format!(", priority {}", self.priority));
        out
    }
}

/// An ICMP or ICMPv6 rule's type and optional code (the rule file's `icmp_type` and
/// `icmp_code`), as AWS and Neutron write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IcmpMatch {
    pub icmp_type: u8,
    /// `None`: every code of the type.
    pub code: Option<u8>,
}

impl IcmpMatch {
    /// The range of ICMP keys (`type << 8 | code`) the match stands for: one key with a
    /// code, the type's 256 keys without.
    pub fn key_range(&self) -> PortRange {
        match self.code {
            Some(code) => {
                let key = sg_common::icmp_key(self.icmp_type, code);
                PortRange { first: key, last: key }
            }
            None => PortRange {
                first: sg_common::icmp_key(self.icmp_type, 0),
                last: sg_common::icmp_key(self.icmp_type, u8::MAX),
            },
        }
    }

    /// The match a key range stands for, if it is one ([`IcmpMatch::key_range`]'s inverse).
    pub fn of_key_range(range: PortRange) -> Option<IcmpMatch> {
        let ([t1, c1], [t2, c2]) = (range.first.to_be_bytes(), range.last.to_be_bytes());
        match (t1 == t2, c1, c2) {
            (true, _, _) if c1 == c2 => Some(IcmpMatch { icmp_type: t1, code: Some(c1) }),
            (true, 0, 255) => Some(IcmpMatch { icmp_type: t1, code: None }),
            _ => None,
        }
    }
}

impl fmt::Display for IcmpMatch {
    /// `type 8` or `type 3 code 4`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "type {}", self.icmp_type)?;
        if let Some(code) = self.code {
            write!(f, " code {code}")?;
        }
        Ok(())
    }
}

impl Rule {
    /// The ICMP type and code an icmp or icmpv6 rule is narrowed to (`None`: every ICMP
    /// message, and for every other protocol).
    pub fn icmp(&self) -> Option<IcmpMatch> {
        if !self.protocol.is_icmp() || self.port_range.is_any() {
            return None;
        }
        IcmpMatch::of_key_range(self.port_range)
    }
}

impl Peer {
    /// `198.18.0.0/24`, `group sg-web`, `group 1234/sg-web`, `prefix list pl-office`.
    pub fn describe(&self, cfg: &Config) -> String {
        match self {
            Peer::Cidr(net) => net.to_string(),
            Peer::Group { group_index } => match cfg.groups.get(*group_index) {
                Some(SecurityGroup { id, owner: Some(owner), .. }) => format!("group {owner}/{id}"),
                Some(group) => format!("group {}", group.id),
                None => format!("group #{group_index}"),
            },
            Peer::PrefixList { list_index } => match cfg.prefix_lists.get(*list_index) {
                Some(list) => format!("prefix list {}", list.id),
                None => format!("prefix list #{list_index}"),
            },
        }
    }
}

impl PortRange {
    /// The file's `-1/-1`: every port.
    pub const ANY: PortRange = PortRange { first: 0, last: u16::MAX };

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn is_any(&self) -> bool {
        *self == PortRange::ANY
    }
}

impl fmt::Display for PortRange {
    /// As written in rule files: `80/443`, or `-1/-1` for [`PortRange::ANY`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_any() { f.write_str("-1/-1") } else { write!(f, "{}/{}", self.first, self.last) }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Protocol {
    /// The IP protocol number, `None` for `All`.
    pub fn ip_proto(&self) -> Option<u8> {
        match self {
            Protocol::Tcp => Some(6),
            Protocol::Udp => Some(17),
            Protocol::Icmp => Some(1),
            Protocol::Icmpv6 => Some(58),
            Protocol::Gre => Some(47),
            Protocol::All => None,
            Protocol::Number(number) => Some(*number),
        }
    }

    /// The named protocol with this IP protocol number, if any.
    pub fn from_ip_proto(number: u8) -> Option<Protocol> {
        [Protocol::Tcp, Protocol::Udp, Protocol::Icmp, Protocol::Icmpv6, Protocol::Gre]
            .into_iter()
            .find(|p| p.ip_proto() == Some(number))
    }

    /// The protocol of IP protocol `number`: its name when it has one (so `6` is `tcp`,
    /// with ports), else [`Protocol::Number`].
    pub fn from_number(number: u8) -> Protocol {
        Protocol::from_ip_proto(number).unwrap_or(Protocol::Number(number))
    }

    /// Whether rules of this protocol carry port ranges (tcp and udp).
    pub fn has_ports(&self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }

    /// icmp and icmpv6, whose rules may name an ICMP type and code.
    pub fn is_icmp(&self) -> bool {
        matches!(self, Protocol::Icmp | Protocol::Icmpv6)
    }

    /// `tcp`, ..., `all`, or `protocol 50` for one written by number (for messages; the
    /// `Display` form is what a rule file takes).
    pub fn name(&self) -> String {
        match self {
            Protocol::Number(number) => format!("protocol {number}"),
            named => named.to_string(),
        }
    }

    /// Whether a packet with IP protocol `number` is of this protocol.
    pub fn matches(&self, number: u8) -> bool {
        self.ip_proto().is_none_or(|own| own == number)
    }

    /// The only address family this protocol exists in, if it is tied to one.
    pub fn family(&self) -> Option<Family> {
        match self {
            Protocol::Icmp => Some(Family::Ipv4),
            Protocol::Icmpv6 => Some(Family::Ipv6),
            _ => None,
        }
    }
}

/// `tcp`, `udp`, ... for the named protocols, `protocol 132` for the others.
pub fn protocol_name(number: u8) -> String {
    match Protocol::from_ip_proto(number) {
        Some(protocol) => protocol.to_string(),
        None => format!("protocol {number}"),
    }
}

impl Family {
    pub fn of_addr(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    pub fn of_net(net: &IpNet) -> Family {
        Family::of_addr(&net.addr())
    }
}

/// Implements `Display` (the keyword as written in files) and case-insensitive `FromStr`
/// (accepting the aliases too) for a keyword enum.
macro_rules! keywords {
    (
        $ty:ident, $what:literal, { $($name:literal => $variant:ident),+ $(,)? }
        $(, aliases { $($alias:literal => $alias_variant:ident),+ })?
    ) => {
        impl $ty {
            /// Every accepted spelling (lowercase), canonical names first.
            pub const KEYWORDS: &'static [(&'static str, $ty)] = &[
                $(($name, $ty::$variant),)+
                $($(($alias, $ty::$alias_variant),)+)?
            ];
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self {
                    $($ty::$variant => $name,)+
                })
            }
        }

        impl FromStr for $ty {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, String> {
                values::keyword(text, $what, $ty::KEYWORDS)
            }
        }
    };
}

keywords!(Action, "policy", { "accept" => Accept, "drop" => Drop },
    aliases { "allow" => Accept, "deny" => Drop });
keywords!(Direction, "direction", { "ingress" => Ingress, "egress" => Egress });

impl Protocol {
    /// The names a rule file accepts (lowercase).
    pub const KEYWORDS: &'static [(&'static str, Protocol)] = &[
        ("tcp", Protocol::Tcp),
        ("udp", Protocol::Udp),
        ("icmp", Protocol::Icmp),
        ("icmpv6", Protocol::Icmpv6),
        ("gre", Protocol::Gre),
        ("all", Protocol::All),
    ];
}

impl fmt::Display for Protocol {
    /// As a rule file writes it: the name, or the number of a [`Protocol::Number`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Number(number) => write!(f, "{number}"),
            named => {
                let name = Protocol::KEYWORDS.iter().find(|(_, p)| p == named).map_or("?", |(name, _)| name);
                f.write_str(name)
            }
        }
    }
}

impl FromStr for Protocol {
    type Err = String;

    /// A name (case-insensitive) or an IP protocol number 0 to 255, named protocols'
    /// numbers normalised to their names.
    fn from_str(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
            return match trimmed.parse::<u8>() {
                Ok(number) => Ok(Protocol::from_number(number)),
                Err(_) => Err(format!("protocol number {trimmed} is out of range; IP protocols are 0 to 255")),
            };
        }
        values::keyword(text, "protocol", Protocol::KEYWORDS)
            .map_err(|message| format!("{message}, or an IP protocol number 0 to 255"))
    }
}

impl Serialize for Protocol {
    /// The rule-file form: `"tcp"`, ..., or `"50"`.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}
keywords!(GroupKind, "type", { "basic" => Basic, "advanced" => Advanced });
keywords!(Family, "family", { "ipv4" => Ipv4, "ipv6" => Ipv6 });
keywords!(Mode, "mode", { "enforce" => Enforce, "audit" => Audit });
