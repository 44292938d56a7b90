//! `sgctl lint`: the guide's advice as checks over a validated rule file.
//!
//! Each [`Finding`] names its severity, the check, the group and rule (with the file's
//! line), what is wrong and how to fix it. The checks that reason about which packets a
//! rule decides (shadowing, exposure, whitelists) use the exact partition of
//! [`super::space`]: "never decides" means no packet at all, proven over the rule space.

pub mod ports;
mod provider;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use ipnet::IpNet;
use serde::Serialize;

use super::space::{Bounds, Decider, Matcher, Pool, PortSpan, partition};
use crate::policy::config::{Action, Config, Direction, Family, GroupKind, Peer, Protocol, Rule};
use ports::{Category, SENSITIVE_PORTS, SensitivePort};

pub use provider::Provider;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// A rule mentioned by a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    /// `sg-web#2`, or a pseudo-rule such as `intra-group connectivity of sg-web`.
    pub label: String,
    /// 0 for pseudo-rules.
    pub line: usize,
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// A stable id of the check, e.g. `shadowed-rule`.
    pub check: &'static str,
    pub file: String,
    /// 1-based line of the rule (or group) concerned; 0 when the finding concerns the file.
    pub line: usize,
    pub group: Option<String>,
    /// The rule's label (`sg-web#2`), when the finding concerns one rule.
    pub rule: Option<String>,
    /// The interface the finding was found on, when it depends on the interface's pool.
    pub interface: Option<String>,
    pub message: String,
    pub fix: String,
    /// Other rules involved (the shadowing rules, the conflicting drop, ...).
    pub related: Vec<RuleRef>,
}

#[derive(Debug, Clone)]
pub struct LintOptions {
    pub provider: Option<Provider>,
    /// A group with more rules than this gets a finding.
    pub max_rules: usize,
}

impl Default for LintOptions {
    fn default() -> Self {
        LintOptions { provider: None, max_rules: DEFAULT_MAX_RULES }
    }
}

/// Rules per group above which `over-large-group` fires: the guide warns that "adding a
/// large number of rules to a single security group increases management complexity".
pub const DEFAULT_MAX_RULES: usize = 50;

/// Every finding for a validated file, ordered by line. `text` is the file's source (used
/// to find exact duplicates, which validation collapses).
pub fn lint(cfg: &Config, text: &str, file: &str, options: &LintOptions) -> Vec<Finding> {
    let mut linter = Linter { cfg, file, findings: Vec::new() };
    let analyses = analyse_pools(cfg);
    linter.world_exposure(&analyses);
    linter.shadowed(&analyses);
    linter.same_priority_conflicts(&analyses);
    linter.duplicates_in_group(text);
    linter.duplicates_across_groups(&analyses);
    linter.database_and_internet(&analyses);
    linter.egress_whitelists(&analyses);
    linter.over_large_groups(options.max_rules);
    linter.rules_in_bands();
    linter.unreachable_protocols();
    if let Some(provider) = options.provider {
        linter.findings.extend(provider::check(cfg, file, provider));
    }
    let mut findings = linter.findings;
    findings.sort_by(|a, b| (a.line, b.severity, a.check).cmp(&(b.line, a.severity, b.check)));
    findings.dedup();
    findings
}

/// What the exact partition of one pool says about its rules.
pub(crate) struct PoolAnalysis<'c> {
    pub(crate) pool: Pool<'c>,
    /// For each rule that decides some packet: the protocol numbers (a cell's
    /// representative) and destination-port pieces it decides.
    pub(crate) decided: HashMap<u32, Vec<(u8, Option<PortSpan>)>>,
    /// For each rule: the deciders of the packets it matches but does not decide.
    pub(crate) shadowers: HashMap<u32, BTreeSet<Decider>>,
}

impl PoolAnalysis<'_> {
    fn decides(&self, rule_id: u32) -> bool {
        self.decided.contains_key(&rule_id)
    }

    /// Whether the rule decides some packet of `class` to a port in `first..=last`.
    fn decides_port(&self, rule_id: u32, class: u8, first: u16, last: u16) -> bool {
        self.decided.get(&rule_id).is_some_and(|cells| {
            cells.iter().any(|(c, dport)| *c == class && dport.is_none_or(|(a, b)| a <= last && first <= b))
        })
    }
}

/// One pool per interface and direction, and one per direction for each group bound to
/// no interface (as if it were alone on one).
pub(crate) fn analyse_pools(cfg: &Config) -> Vec<PoolAnalysis<'_>> {
    let mut pools = Vec::new();
    for direction in [Direction::Ingress, Direction::Egress] {
        for iface in &cfg.interfaces {
            pools.push(Pool::of_interface(cfg, iface, direction));
        }
        for (index, _) in cfg.groups.iter().enumerate() {
            if !cfg.interfaces.iter().any(|i| i.groups.contains(&index)) {
                pools.push(Pool::of_group(cfg, index, direction));
            }
        }
    }
    pools.into_iter().map(analyse).collect()
}

fn analyse(pool: Pool<'_>) -> PoolAnalysis<'_> {
    let mut decided: HashMap<u32, Vec<(u8, Option<PortSpan>)>> = HashMap::new();
    let mut shadowers: HashMap<u32, BTreeSet<Decider>> = HashMap::new();
    for family in [Family::Ipv4, Family::Ipv6] {
        let matchers = pool.matchers(family);
        let mut leaf = |cell: &super::space::Cell, alive: &[usize]| -> Option<()> {
            let (decider, _) = pool.decide(&matchers, alive);
            if let Decider::Rule { rule_id } = decider {
                decided.entry(rule_id).or_default().push((cell.proto, cell.dport));
            }
            for &i in alive {
                if let super::space::Source::Rule { rule_id } = matchers[i].source
                    && decider != (Decider::Rule { rule_id })
                {
                    shadowers.entry(rule_id).or_default().insert(decider);
                }
            }
            None
        };
        partition::<()>(&matchers, family, &Bounds::whole(family), &mut leaf);
    }
    PoolAnalysis { pool, decided, shadowers }
}

struct Linter<'c> {
    cfg: &'c Config,
    file: &'c str,
    findings: Vec<Finding>,
}

/// Whether a peer is the whole Internet of some family: `0.0.0.0/0`, `::/0`, or a prefix
/// list holding one of them.
fn world_peer(cfg: &Config, peer: &Peer) -> Option<String> {
    match peer {
        Peer::Cidr(net) if net.prefix_len() == 0 => Some(net.to_string()),
        Peer::PrefixList { list_index } => {
            let list = cfg.prefix_lists.get(*list_index)?;
            list.entries.iter().find(|n| n.prefix_len() == 0).map(|n| format!("{n} (in prefix list {})", list.id))
        }
        _ => None,
    }
}

fn is_drop_all(rule: &Rule) -> Option<Family> {
    match (&rule.peer, rule.protocol, rule.action, rule.local) {
        (Peer::Cidr(net), Protocol::All, Action::Drop, None) if net.prefix_len() == 0 => Some(Family::of_net(net)),
        _ => None,
    }
}

/// The protocol number of a tcp or udp rule (the only ones with sensitive ports).
fn class_of(protocol: Protocol) -> Option<u8> {
    protocol.has_ports().then(|| protocol.ip_proto()).flatten()
}

impl<'c> Linter<'c> {
    fn rule_ref(&self, rule: &Rule) -> RuleRef {
        RuleRef { label: rule.label(self.cfg), line: rule.line, summary: rule.summary(self.cfg) }
    }

    fn decider_ref(&self, decider: &Decider) -> RuleRef {
        let group = |index: usize| self.cfg.groups.get(index).map_or("?", |g| g.id.as_str());
        match decider {
            Decider::Rule { rule_id } => match self.cfg.rule(*rule_id) {
                Some(rule) => self.rule_ref(rule),
                None => RuleRef { label: format!("rule id {rule_id}"), line: 0, summary: String::new() },
            },
            Decider::IntraGroupAccept { group_index } => RuleRef {
                label: format!("intra-group connectivity of {}", group(*group_index)),
                line: 0,
                summary: format!("members of {} reach each other before any rule", group(*group_index)),
            },
            Decider::IntraGroupIsolation { group_index } => RuleRef {
                label: format!("intra-group isolation of {}", group(*group_index)),
                line: 0,
                summary: String::new(),
            },
            Decider::Default | Decider::NotBound => {
                RuleRef { label: "the default".to_string(), line: 0, summary: String::new() }
            }
        }
    }

    #[expect(clippy::too_many_arguments, reason = "a finding has this many parts")]
    fn push(
        &mut self,
        severity: Severity,
        check: &'static str,
        rule: Option<&Rule>,
        group: Option<usize>,
        interface: Option<&str>,
        message: String,
        fix: String,
        related: Vec<RuleRef>,
    ) {
        let group_index = rule.map(|r| r.group_index).or(group);
        self.findings.push(Finding {
            severity,
            check,
            file: self.file.to_string(),
            line: rule.map_or(0, |r| r.line),
            group: group_index.and_then(|g| self.cfg.groups.get(g)).map(|g| g.id.clone()),
            rule: rule.map(|r| r.label(self.cfg)),
            interface: interface.map(str::to_string),
            message,
            fix,
            related,
        });
    }

    /// The analyses of pools holding `rule`.
    fn pools_of<'a>(analyses: &'a [PoolAnalysis<'c>], rule: &Rule) -> impl Iterator<Item = &'a PoolAnalysis<'c>> {
        let (id, direction) = (rule.id, rule.direction);
        analyses.iter().filter(move |a| a.pool.direction == direction && a.pool.rules.iter().any(|r| r.id == id))
    }

    // ----- world exposure -----

    fn world_exposure(&mut self, analyses: &[PoolAnalysis<'c>]) {
        for rule in self.cfg.rules() {
            if rule.direction != Direction::Ingress || rule.action != Action::Accept {
                continue;
            }
            let Some(world) = world_peer(self.cfg, &rule.peer) else { continue };
            let decides = Self::pools_of(analyses, rule).any(|a| a.decides(rule.id));
            if !decides {
                continue; // never decides anything: `shadowed-rule` says so.
            }
            let fix_world = "allow only the addresses that need the service (a /32 for an administrator, \
                             an office prefix list) or a security group (source_group), and close the rest";
            if rule.protocol == Protocol::All {
                self.push(
                    Severity::Error,
                    "world-all-protocols",
                    Some(rule),
                    None,
                    None,
                    format!("every protocol and port is open to {world}"),
                    format!("{fix_world}; the guide: open only the ports and protocols your services need"),
                    Vec::new(),
                );
                continue;
            }
            if rule.protocol.has_ports() && rule.port_range.first <= 1 && rule.port_range.last == u16::MAX {
                self.push(
                    Severity::Error,
                    "world-all-ports",
                    Some(rule),
                    None,
                    None,
                    format!("every {} port is open to {world}", rule.protocol),
                    format!("{fix_world}; open single ports (e.g. 80/80 and 443/443 for a web server)"),
                    Vec::new(),
                );
                continue;
            }
            let Some(class) = class_of(rule.protocol) else { continue };
            let exposed: Vec<&SensitivePort> = SENSITIVE_PORTS
                .iter()
                .filter(|p| p.protocols.contains(&rule.protocol))
                .filter(|p| rule.port_range.first <= p.last && p.first <= rule.port_range.last)
                .filter(|p| Self::pools_of(analyses, rule).any(|a| a.decides_port(rule.id, class, p.first, p.last)))
                .collect();
            if exposed.is_empty() {
                continue;
            }
            let severity = exposed.iter().map(|p| p.severity).max().unwrap_or(Severity::Warning);
            let labels: Vec<String> = exposed.iter().map(|p| p.label()).collect();
            let database = exposed.iter().any(|p| p.category == Category::Database);
            let fix = if database {
                "databases should not face the Internet: allow the port only from the application's \
                 security group (source_group), and add a drop for the port from 0.0.0.0/0 at priority 100"
                    .to_string()
            } else {
                format!("{fix_world}; for remote access prefer a jump host or a /32 source")
            };
            self.push(
                severity,
                "sensitive-port-world",
                Some(rule),
                None,
                None,
                format!("sensitive {} {} open to {world}", rule.protocol, labels.join(", ")),
                fix,
                Vec::new(),
            );
        }
    }

    // ----- shadowing -----

    fn shadowed(&mut self, analyses: &[PoolAnalysis<'c>]) {
        for analysis in analyses {
            for rule in &analysis.pool.rules {
                if analysis.decides(rule.id) {
                    continue;
                }
                let shadowers: Vec<RuleRef> = analysis
                    .shadowers
                    .get(&rule.id)
                    .map(|set| set.iter().map(|d| self.decider_ref(d)).collect())
                    .unwrap_or_default();
                let place = match analysis.pool.iface {
                    Some(name) => format!(" on interface {name}"),
                    None => String::new(),
                };
                if shadowers.is_empty() {
                    self.push(
                        Severity::Warning,
                        "rule-matches-nothing",
                        Some(rule),
                        None,
                        analysis.pool.iface,
                        format!("the rule can match no packet{place}: {}", self.empty_reason(rule)),
                        "remove the rule, or fix its peer (add members to the group, entries to the prefix list)"
                            .to_string(),
                        Vec::new(),
                    );
                    continue;
                }
                let names: Vec<String> = shadowers.iter().map(|r| r.label.clone()).collect();
                let same_action = analysis.shadowers.get(&rule.id).is_some_and(|set| {
                    set.iter().all(|d| match d {
                        Decider::Rule { rule_id } => self.cfg.rule(*rule_id).is_some_and(|r| r.action == rule.action),
                        Decider::IntraGroupAccept { .. } => rule.action == Action::Accept,
                        _ => false,
                    })
                });
                let (message, fix) = if same_action {
                    (
                        format!(
                            "redundant: the rule never decides a packet{place}; every packet it matches is \
                             already decided, the same way, by {}",
                            names.join(", ")
                        ),
                        "remove the rule".to_string(),
                    )
                } else {
                    (
                        format!(
                            "shadowed: the rule never decides a packet{place}; every packet it matches is decided \
                             first by {}",
                            names.join(", ")
                        ),
                        "if the rule should win, give it a smaller priority value than the rules above (at equal \
                         priority drop wins over accept); otherwise remove it"
                            .to_string(),
                    )
                };
                self.push(
                    Severity::Warning,
                    "shadowed-rule",
                    Some(rule),
                    None,
                    analysis.pool.iface,
                    message,
                    fix,
                    shadowers,
                );
            }
        }
    }

    fn empty_reason(&self, rule: &Rule) -> String {
        match &rule.peer {
            Peer::Group { group_index } => {
                let group = &self.cfg.groups[*group_index];
                if group.members.is_empty() {
                    format!("its peer group {} has no members", group.id)
                } else {
                    format!("its peer group {} has no member of the family the rule can match", group.id)
                }
            }
            Peer::PrefixList { list_index } => {
                format!("prefix list {} holds no entry the rule can match", self.cfg.prefix_lists[*list_index].id)
            }
            Peer::Cidr(_) => "its peer and local address can never occur together".to_string(),
        }
    }

    // ----- accept and drop at one priority -----

    fn same_priority_conflicts(&mut self, analyses: &[PoolAnalysis<'c>]) {
        let mut seen: BTreeMap<(u32, u32), Vec<String>> = BTreeMap::new();
        for analysis in analyses {
            let rules = &analysis.pool.rules;
            for drop in rules.iter().filter(|r| r.action == Action::Drop) {
                for accept in rules.iter().filter(|r| r.action == Action::Accept && r.priority == drop.priority) {
                    let overlap = [Family::Ipv4, Family::Ipv6].into_iter().any(|f| {
                        Matcher::of_rule(self.cfg, drop, f).intersects(&Matcher::of_rule(self.cfg, accept, f))
                    });
                    if overlap {
                        let place = analysis.pool.iface.map(str::to_string).unwrap_or_default();
                        seen.entry((accept.id, drop.id)).or_default().push(place);
                    }
                }
            }
        }
        for ((accept_id, drop_id), places) in seen {
            let (Some(accept), Some(drop)) = (self.cfg.rule(accept_id), self.cfg.rule(drop_id)) else { continue };
            let places: Vec<String> = places.into_iter().filter(|p| !p.is_empty()).collect();
            let place =
                if places.is_empty() { String::new() } else { format!(" (on interface {})", places.join(", ")) };
            self.push(
                Severity::Warning,
                "same-priority-conflict",
                Some(accept),
                None,
                None,
                format!(
                    "accept and drop at priority {} overlap{place}: where both match, the drop {} wins",
                    accept.priority,
                    drop.label(self.cfg)
                ),
                "if the accept is an exception to the drop, give it a smaller priority value than the drop \
                 (the guide's case 6); otherwise narrow one of the two so they no longer overlap"
                    .to_string(),
                vec![self.rule_ref(drop)],
            );
        }
    }

    // ----- duplicates -----

    /// Exact duplicates within a group are collapsed by validation; the file still says
    /// them twice.
    fn duplicates_in_group(&mut self, text: &str) {
        let Some(raw) = raw_rules(text) else { return };
        for (group_index, group) in self.cfg.groups.iter().enumerate() {
            let Some(tables) = raw.get(group_index) else { continue };
            let kept: Vec<usize> = group.rules.iter().map(|r| r.index_in_group).collect();
            for (position, (line, table)) in tables.iter().enumerate() {
                let index = position + 1;
                if kept.contains(&index) {
                    continue;
                }
                let original = group.rules.iter().find(|r| {
                    r.index_in_group < index
                        && tables.get(r.index_in_group - 1).is_some_and(|(_, t)| same_raw_rule(t, table))
                });
                let Some(original) = original else { continue };
                self.findings.push(Finding {
                    severity: Severity::Warning,
                    check: "duplicate-rule",
                    file: self.file.to_string(),
                    line: *line,
                    group: Some(group.id.clone()),
                    rule: Some(format!("{}#{index}", group.id)),
                    interface: None,
                    message: format!(
                        "exact duplicate of {} (line {}); it is collapsed into that rule and has no effect",
                        original.label(self.cfg),
                        original.line
                    ),
                    fix: "remove the duplicate".to_string(),
                    related: vec![self.rule_ref(original)],
                });
            }
        }
    }

    /// The same rule in two groups of one interface: one of them is redundant there.
    fn duplicates_across_groups(&mut self, analyses: &[PoolAnalysis<'c>]) {
        let mut reported: BTreeSet<(u32, u32)> = BTreeSet::new();
        for analysis in analyses {
            let Some(iface) = analysis.pool.iface else { continue };
            let rules = &analysis.pool.rules;
            for (i, a) in rules.iter().enumerate() {
                for b in &rules[i + 1..] {
                    let (first, second) = if a.id < b.id { (a, b) } else { (b, a) };
                    if first.group_index != second.group_index
                        && same_match(first, second)
                        && reported.insert((first.id, second.id))
                    {
                        self.push(
                            Severity::Info,
                            "duplicate-rule",
                            Some(second),
                            None,
                            Some(iface),
                            format!(
                                "same rule as {} (line {}); both groups are on interface {iface}, where one of the \
                                 two is redundant",
                                first.label(self.cfg),
                                first.line
                            ),
                            "keep the rule in one group if the groups are always applied together".to_string(),
                            vec![self.rule_ref(first)],
                        );
                    }
                }
            }
        }
    }

    // ----- a database group that also faces the Internet -----

    fn database_and_internet(&mut self, analyses: &[PoolAnalysis<'c>]) {
        for (group_index, group) in self.cfg.groups.iter().enumerate() {
            let ingress_accepts =
                group.rules.iter().filter(|r| r.direction == Direction::Ingress && r.action == Action::Accept);
            let mut database: Option<(&Rule, Vec<String>)> = None;
            let mut internet: Option<&Rule> = None;
            for rule in ingress_accepts {
                if internet.is_none()
                    && world_peer(self.cfg, &rule.peer).is_some()
                    && Self::pools_of(analyses, rule).any(|a| a.decides(rule.id))
                {
                    internet = Some(rule);
                }
                // A rule for every port (reported on its own when it faces the world) is not
                // read as serving a database.
                let every_port = rule.port_range.first <= 1 && rule.port_range.last == u16::MAX;
                if database.is_none()
                    && !every_port
                    && let Some(class) = class_of(rule.protocol)
                {
                    let served: Vec<String> = SENSITIVE_PORTS
                        .iter()
                        .filter(|p| p.category == Category::Database)
                        .filter(|p| p.protocols.contains(&rule.protocol))
                        .filter(|p| {
                            Self::pools_of(analyses, rule).any(|a| a.decides_port(rule.id, class, p.first, p.last))
                        })
                        .map(SensitivePort::label)
                        .collect();
                    if !served.is_empty() {
                        database = Some((rule, served));
                    }
                }
            }
            if let (Some((db_rule, served)), Some(net_rule)) = (database, internet) {
                self.push(
                    Severity::Warning,
                    "database-group-faces-internet",
                    Some(db_rule),
                    Some(group_index),
                    None,
                    format!(
                        "group {} serves database ports ({}) and also admits the Internet ({}, line {})",
                        group.id,
                        served.join(", "),
                        net_rule.summary(self.cfg),
                        net_rule.line
                    ),
                    "keep Internet-facing and internal services in separate groups: put the database instances in a \
                     group reachable only from the application's group (source_group), with no 0.0.0.0/0 rules"
                        .to_string(),
                    vec![self.rule_ref(net_rule)],
                );
            }
        }
    }

    // ----- egress whitelists (the guide's case 6) -----

    fn egress_whitelists(&mut self, analyses: &[PoolAnalysis<'c>]) {
        for analysis in analyses.iter().filter(|a| a.pool.direction == Direction::Egress) {
            let rules = &analysis.pool.rules;
            // A drop-all ranked above accepts of its family: the whitelist admits nothing.
            for (position, drop) in rules.iter().enumerate() {
                let Some(family) = is_drop_all(drop) else { continue };
                let starved: Vec<RuleRef> = rules[position + 1..]
                    .iter()
                    .filter(|r| r.action == Action::Accept && !Matcher::of_rule(self.cfg, r, family).is_empty())
                    .map(|r| self.rule_ref(r))
                    .collect();
                if starved.is_empty() {
                    continue;
                }
                self.push(
                    Severity::Error,
                    "drop-all-above-allows",
                    Some(drop),
                    None,
                    analysis.pool.iface,
                    format!(
                        "the egress drop-all (priority {}) ranks above {} accept rule(s) meant to make exceptions \
                         to it ({}); those accepts never apply (at equal priority drop wins)",
                        drop.priority,
                        starved.len(),
                        starved.iter().map(|r| r.label.clone()).collect::<Vec<_>>().join(", ")
                    ),
                    "give the drop-all a larger priority value than every accept it serves (priority = 100, the \
                     lowest, and the accepts 1 to 99): the guide's case 6"
                        .to_string(),
                    starved,
                );
            }
            // Accepts in a basic group with nothing dropped below them change nothing.
            if analysis.pool.kind != GroupKind::Basic {
                continue;
            }
            let mut pointless: BTreeMap<usize, Vec<&Rule>> = BTreeMap::new();
            for (position, accept) in rules.iter().enumerate() {
                if accept.action != Action::Accept || !analysis.decides(accept.id) {
                    continue;
                }
                let dropped_below = rules[position + 1..].iter().filter(|r| r.action == Action::Drop).any(|drop| {
                    [Family::Ipv4, Family::Ipv6]
                        .into_iter()
                        .any(|f| Matcher::of_rule(self.cfg, accept, f).intersects(&Matcher::of_rule(self.cfg, drop, f)))
                });
                let isolated_peer = matches!(accept.peer, Peer::Group { .. })
                    && analysis.pool.groups.iter().any(|&g| self.cfg.groups[g].inner_access == Action::Drop);
                if !dropped_below && !isolated_peer {
                    pointless.entry(accept.group_index).or_default().push(accept);
                }
            }
            for (group_index, accepts) in pointless {
                let labels: Vec<String> = accepts.iter().map(|r| r.label(self.cfg)).collect();
                self.push(
                    Severity::Warning,
                    "egress-whitelist-without-drop",
                    Some(accepts[0]),
                    Some(group_index),
                    analysis.pool.iface,
                    format!(
                        "egress accept rule(s) {} have no drop below them: a basic group allows all egress by \
                         default, so they change nothing",
                        labels.join(", ")
                    ),
                    "to allow only these destinations, add a drop-all below them: direction = \"egress\", policy = \
                     \"drop\", priority = 100, protocol = \"all\", destination = \"0.0.0.0/0\" (and \"::/0\" for IPv6)"
                        .to_string(),
                    accepts.iter().skip(1).map(|r| self.rule_ref(r)).collect(),
                );
            }
        }
    }

    // ----- size -----

    /// Rules naming packets that never reach the rules: ICMPv6 neighbour discovery and
    /// MLD types (they pass at step 3, docs/rule-model.md#evaluation-order), and, for
    /// IPv6-only peers, protocol numbers of IPv6 extension headers (the data plane
    /// matches the transport header behind them).
    fn unreachable_protocols(&mut self) {
        for rule in self.cfg.rules() {
            let (message, fix) = match (rule.protocol, rule.icmp()) {
                (Protocol::Icmpv6, Some(icmp))
                    if sg_common::is_neighbour_discovery(sg_common::ip_proto::ICMPV6, icmp.icmp_type) =>
                {
                    (
                        format!(
                            "ICMPv6 {icmp} is neighbour discovery or MLD, which always passes before any rule is \
                             consulted: the rule never decides a packet"
                        ),
                        "remove the rule: IPv6 does not work without neighbour discovery and MLD",
                    )
                }
                (Protocol::Number(number @ (0 | 43 | 44 | 51 | 60)), _) if self.ipv6_only(rule) => (
                    format!(
                        "protocol {number} is an IPv6 extension header, which the data plane steps over to the \
                         transport header: with an IPv6 peer the rule never matches"
                    ),
                    "match the transport protocol behind the extension header, or give the rule an IPv4 peer",
                ),
                _ => continue,
            };
            self.push(
                Severity::Warning,
                "rule-matches-nothing",
                Some(rule),
                None,
                None,
                message,
                fix.to_string(),
                Vec::new(),
            );
        }
    }

    /// Whether every peer address the rule can match is IPv6.
    fn ipv6_only(&self, rule: &Rule) -> bool {
        super::space::peer_ranges(self.cfg, &rule.peer, Family::Ipv4).is_empty()
    }

    fn over_large_groups(&mut self, max_rules: usize) {
        for (group_index, group) in self.cfg.groups.iter().enumerate() {
            if group.rules.len() > max_rules {
                let line = group.rules.first().map_or(0, |r| r.line);
                self.findings.push(Finding {
                    severity: Severity::Warning,
                    check: "over-large-group",
                    file: self.file.to_string(),
                    line,
                    group: Some(group.id.clone()),
                    rule: None,
                    interface: None,
                    message: format!(
                        "group {} has {} rules (threshold {max_rules}); large groups are hard to review",
                        group.id,
                        group.rules.len()
                    ),
                    fix: "split the group by purpose (one per service or tier), or merge rules into prefix lists"
                        .to_string(),
                    related: Vec::new(),
                });
                let _ = group_index;
            }
        }
    }

    /// An interface and direction whose rules take more than one band in the kernel
    /// (`policy::compile::bands`): each band a packet passes through costs another round
    /// of lookups, so a new flow that only a late rule decides pays for every band.
    fn rules_in_bands(&mut self) {
        for iface in &self.cfg.interfaces {
            for dir in [Direction::Ingress, Direction::Egress] {
                let Ok(bands) = crate::policy::compile::bands(self.cfg, iface, dir) else { continue };
                if bands < 2 {
                    continue;
                }
                let rules = crate::policy::order::pooled_rules(self.cfg, iface, dir).len();
                self.findings.push(Finding {
                    severity: Severity::Info,
                    check: "rules-in-bands",
                    file: self.file.to_string(),
                    line: 0,
                    group: None,
                    rule: None,
                    interface: Some(iface.name.clone()),
                    message: format!(
                        "{rules} {dir} rules: the kernel searches them in {bands} bands, and a new flow that no \
                         rule of the first bands matches costs another round of lookups for each band"
                    ),
                    fix: format!(
                        "keep an interface at most {} rules a direction for one band: merge rules that differ only \
                         in their peers into a prefix list, or in adjacent ports into a range",
                        sg_common::MAX_RULE_BITS - 3
                    ),
                    related: Vec::new(),
                });
            }
        }
    }
}

/// Same direction, policy, priority, protocol, ports, peer and local address.
fn same_match(a: &Rule, b: &Rule) -> bool {
    a.direction == b.direction
        && a.action == b.action
        && a.priority == b.priority
        && a.protocol == b.protocol
        && a.port_range == b.port_range
        && a.source_port_range == b.source_port_range
        && a.peer == b.peer
        && a.local == b.local
}

// ----- the file as written, for duplicates -----

#[derive(serde::Deserialize)]
struct RawFile {
    #[serde(default)]
    security_group: Vec<RawGroup>,
}

#[derive(serde::Deserialize)]
struct RawGroup {
    #[serde(default)]
    rule: Vec<toml::Spanned<toml::Table>>,
}

/// Per group, each written rule table with its line.
fn raw_rules(text: &str) -> Option<Vec<Vec<(usize, toml::Table)>>> {
    let raw: RawFile = toml::from_str(text).ok()?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    Some(
        raw.security_group
            .into_iter()
            .map(|g| {
                g.rule
                    .into_iter()
                    .map(|spanned| {
                        // The span starts at the `[[security_group.rule]]` header, the line the
                        // validator gives rules.
                        let line = line_of(spanned.span().start);
                        (line, spanned.into_inner())
                    })
                    .collect()
            })
            .collect(),
    )
}

/// Whether two written rule tables say the same rule (the description aside), by the
/// validator's reading: keywords in any case and with aliases, defaults filled in.
fn same_raw_rule(a: &toml::Table, b: &toml::Table) -> bool {
    normalized(a) == normalized(b)
}

fn normalized(t: &toml::Table) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (key, value) in t {
        if key == "description" {
            continue;
        }
        let text = match value {
            toml::Value::String(s) => s.trim().to_string(),
            other => other.to_string(),
        };
        let text = match key.as_str() {
            "direction" | "protocol" => text.to_ascii_lowercase(),
            "policy" => match text.to_ascii_lowercase().as_str() {
                "allow" => "accept".to_string(),
                "deny" => "drop".to_string(),
                other => other.to_string(),
            },
            "port_range" | "source_port_range" => text.replace(' ', ""),
            k if !k.ends_with("_group") && !k.ends_with("_prefix_list") => match text.parse::<IpNet>() {
                Ok(net) => net.to_string(),
                Err(_) => text.parse::<std::net::IpAddr>().map(|a| IpNet::from(a).to_string()).unwrap_or(text),
            },
            _ => text,
        };
        out.insert(key.clone(), text);
    }
    out.entry("policy".to_string()).or_insert_with(|| "accept".to_string());
    out.entry("priority".to_string()).or_insert_with(|| "1".to_string());
    if out.get("port_range").is_some_and(|p| p == "-1/-1") {
        out.remove("port_range");
    }
    out
}

impl fmt::Display for Finding {
    /// `FILE:LINE: severity[check] group sg-web, rule sg-web#2: message` and the fix on
    /// the next line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: ", self.file, self.line)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        write!(f, "{}[{}]", self.severity, self.check)?;
        let mut place = Vec::new();
        if let Some(rule) = &self.rule {
            place.push(format!("rule {rule}"));
        } else if let Some(group) = &self.group {
            place.push(format!("group {group}"));
        }
        if let Some(iface) = &self.interface {
            place.push(format!("interface {iface}"));
        }
        if !place.is_empty() {
            write!(f, " {}", place.join(", "))?;
        }
        write!(f, ": {}", self.message)?;
        for related in &self.related {
            if related.line > 0 {
                write!(f, "\n    {} (line {}): {}", related.label, related.line, related.summary)?;
            } else if !related.summary.is_empty() {
                write!(f, "\n    {}: {}", related.label, related.summary)?;
            }
        }
        write!(f, "\n    fix: {}", self.fix)
    }
}
