//! `sgctl diff OLD NEW`: the flows whose verdict changes between two rule files.
//!
//! For every interface either file binds and each direction and address family, the rule
//! space is partitioned exactly over the matchers of both files at once (see
//! [`super::space`]); each cell is decided by both files, and the cells whose verdicts
//! differ are merged into ranges labelled with the old and the new deciding rule. An
//! interface one file does not bind is not enforced there: everything passes.

#[cfg(test)]
mod tests;

use std::fmt;

use serde_json::{Value, json};

use super::space::{
    Bounds, Decider, Matcher, Pool, ProtoSet, Region, format_icmp, format_ports, format_range, partition,
};
use crate::policy::config::{Action, Config, Direction, Family, InterfaceBinding};

/// One side's verdict for a range of flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Verdict {
    pub action: Action,
    pub decider: Decider,
}

/// The old and the new verdict of a range whose action changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Change {
    pub old: Verdict,
    pub new: Verdict,
}

/// The changes of one interface and direction.
#[derive(Debug, Clone)]
pub struct Section {
    pub interface: String,
    pub direction: Direction,
    pub regions: Vec<Region<Change>>,
}

#[derive(Debug, Clone)]
pub struct DiffReport {
    pub sections: Vec<Section>,
    /// Interfaces bound in only one file, mode changes: said in words.
    pub notes: Vec<String>,
}

impl DiffReport {
    pub fn changed(&self) -> bool {
        self.sections.iter().any(|s| !s.regions.is_empty())
    }

    pub fn change_count(&self) -> usize {
        self.sections.iter().map(|s| s.regions.len()).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiffError {
    #[error("no [[interface]] named {0} in either file")]
    UnknownInterface(String),
}

/// The verdict changes between `old` and `new`, on `only` or on every interface.
pub fn diff(old: &Config, new: &Config, only: Option<&str>) -> Result<DiffReport, DiffError> {
    let mut names: Vec<&str> = old.interfaces.iter().map(|i| i.name.as_str()).collect();
    for iface in &new.interfaces {
        if !names.contains(&iface.name.as_str()) {
            names.push(&iface.name);
        }
    }
    if let Some(only) = only {
        if !names.contains(&only) {
            return Err(DiffError::UnknownInterface(only.to_string()));
        }
        names.retain(|n| *n == only);
    }
    let mut report = DiffReport { sections: Vec::new(), notes: Vec::new() };
    for name in names {
        let (old_iface, new_iface) = (old.interface(name), new.interface(name));
        match (old_iface, new_iface) {
            (None, Some(_)) => report.notes.push(format!("interface {name} is new: nothing was enforced on it before")),
            (Some(_), None) => report.notes.push(format!("interface {name} is gone: nothing will be enforced on it")),
            (Some(a), Some(b)) if a.mode != b.mode => report.notes.push(format!(
                "interface {name} changes mode from {} to {}: in audit mode every packet passes whatever its verdict",
                a.mode, b.mode
            )),
            _ => {}
        }
        for direction in [Direction::Ingress, Direction::Egress] {
            let regions = diff_pool(old, old_iface, new, new_iface, direction);
            report.sections.push(Section { interface: name.to_string(), direction, regions });
        }
    }
    Ok(report)
}

fn diff_pool(
    old: &Config,
    old_iface: Option<&InterfaceBinding>,
    new: &Config,
    new_iface: Option<&InterfaceBinding>,
    direction: Direction,
) -> Vec<Region<Change>> {
    let old_pool = old_iface.map(|i| Pool::of_interface(old, i, direction));
    let new_pool = new_iface.map(|i| Pool::of_interface(new, i, direction));
    let mut out = Vec::new();
    for family in [Family::Ipv4, Family::Ipv6] {
        let old_matchers = old_pool.as_ref().map(|p| p.matchers(family)).unwrap_or_default();
        let new_matchers = new_pool.as_ref().map(|p| p.matchers(family)).unwrap_or_default();
        let split_at = old_matchers.len();
        let all: Vec<Matcher> = old_matchers.iter().chain(&new_matchers).cloned().collect();
        let mut leaf = |_: &super::space::Cell, alive: &[usize]| -> Option<Change> {
            let cut = alive.partition_point(|&i| i < split_at);
            let old_alive = &alive[..cut];
            let new_alive: Vec<usize> = alive[cut..].iter().map(|i| i - split_at).collect();
            let verdict = |pool: &Option<Pool<'_>>, matchers: &[Matcher], alive: &[usize]| match pool {
                Some(pool) => {
                    let (decider, action) = pool.decide(matchers, alive);
                    Verdict { action, decider }
                }
                None => Verdict { action: Action::Accept, decider: Decider::NotBound },
            };
            let old_verdict = verdict(&old_pool, &old_matchers, old_alive);
            let new_verdict = verdict(&new_pool, &new_matchers, &new_alive);
            (old_verdict.action != new_verdict.action).then_some(Change { old: old_verdict, new: new_verdict })
        };
        out.extend(partition(&all, family, &Bounds::whole(family), &mut leaf));
    }
    out
}

/// A decider in words: `sg-web#2 (line 14)`, `the default (basic, ingress)`.
fn describe(
    cfg: &Config,
    verdict: &Verdict,
    direction: Direction,
    kind: Option<crate::policy::config::GroupKind>,
) -> Value {
    let group = |index: usize| cfg.groups.get(index).map_or("?".to_string(), |g| g.id.clone());
    let (by, line, summary) = match verdict.decider {
        Decider::Rule { rule_id } => match cfg.rule(rule_id) {
            Some(rule) => (rule.label(cfg), rule.line, rule.summary(cfg)),
            None => (format!("rule id {rule_id}"), 0, String::new()),
        },
        Decider::IntraGroupAccept { group_index } => {
            (format!("intra-group connectivity of {}", group(group_index)), 0, String::new())
        }
        Decider::IntraGroupIsolation { group_index } => {
            (format!("intra-group isolation of {}", group(group_index)), 0, String::new())
        }
        Decider::Default => {
            let kind = kind.map_or("basic".to_string(), |k| k.to_string());
            (format!("the default ({kind} groups, {direction})"), 0, String::new())
        }
        Decider::NotBound => ("not bound (nothing enforced)".to_string(), 0, String::new()),
    };
    json!({ "action": verdict.action, "decided_by": by, "line": line, "summary": summary })
}

/// The JSON form of a report: every changed range with its old and new verdict.
pub fn to_json(report: &DiffReport, old: &Config, new: &Config, old_name: &str, new_name: &str) -> Value {
    let mut changes = Vec::new();
    for section in &report.sections {
        let old_kind = old.interface(&section.interface).map(|i| i.kind(old));
        let new_kind = new.interface(&section.interface).map(|i| i.kind(new));
        for region in &section.regions {
            changes.push(json!({
                "interface": section.interface,
                "direction": section.direction,
                "family": region.family,
                "protocols": region.protos,
                "peer": format_range(region.family, region.peer),
                "local": format_range(region.family, region.local),
                "port_range": region.dport.map(format_ports),
                "source_port_range": region.sport.map(format_ports),
                "old": describe(old, &region.outcome.old, section.direction, old_kind),
                "new": describe(new, &region.outcome.new, section.direction, new_kind),
            }));
        }
    }
    json!({
        "old": old_name,
        "new": new_name,
        "changed": report.changed(),
        "changes": changes,
        "notes": report.notes,
    })
}

/// Human-readable lines, one per changed range.
pub fn to_text(report: &DiffReport, old: &Config, new: &Config) -> String {
    let mut lines = Vec::new();
    for note in &report.notes {
        lines.push(format!("note: {note}"));
    }
    for section in &report.sections {
        if section.regions.is_empty() {
            continue;
        }
        lines.push(format!(
            "{} {}: {} range(s) change verdict",
            section.interface,
            section.direction,
            section.regions.len()
        ));
        let old_kind = old.interface(&section.interface).map(|i| i.kind(old));
        let new_kind = new.interface(&section.interface).map(|i| i.kind(new));
        for region in &section.regions {
            let flows = FlowRange { region, direction: section.direction };
            let side = |cfg: &Config, v: &Verdict, kind| {
                let d = describe(cfg, v, section.direction, kind);
                let line = d["line"].as_u64().unwrap_or(0);
                let by = d["decided_by"].as_str().unwrap_or("").to_string();
                if line > 0 { format!("{} by {by} (line {line})", v.action) } else { format!("{} by {by}", v.action) }
            };
            lines.push(format!(
                "  {flows}: {} -> {}",
                side(old, &region.outcome.old, old_kind),
                side(new, &region.outcome.new, new_kind)
            ));
        }
    }
    if report.changed() {
        lines.push(format!("{} range(s) of flows change verdict", report.change_count()));
    } else {
        lines.push("no flow changes verdict".to_string());
    }
    lines.join("\n")
}

struct FlowRange<'r> {
    region: &'r Region<Change>,
    direction: Direction,
}

impl fmt::Display for FlowRange<'_> {
    /// `tcp,udp port 22 from 0.0.0.0/0 to local 198.18.0.0/24`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.region;
        write!(f, "{}", r.protos.describe())?;
        // Regions of icmp and icmpv6 carry ICMP keys where tcp and udp carry ports.
        let icmp = ProtoSet::one(1).union(ProtoSet::one(58));
        if let Some(dport) = r.dport {
            if r.protos.minus(icmp).is_empty() {
                write!(f, " {}", format_icmp(dport))?;
            } else {
                write!(f, " port {}", format_ports(dport))?;
            }
        }
        if let Some(sport) = r.sport
            && sport != super::space::ALL_PORTS
        {
            write!(f, " source port {}", format_ports(sport))?;
        }
        let (peer_word, local_word) = match self.direction {
            Direction::Ingress => ("from", "to"),
            Direction::Egress => ("to", "from"),
        };
        write!(f, " {peer_word} {}", format_range(r.family, r.peer))?;
        let whole = r.local == (0, super::space::max_addr(r.family));
        if !whole {
            write!(f, " {local_word} local {}", format_range(r.family, r.local))?;
        }
        Ok(())
    }
}
