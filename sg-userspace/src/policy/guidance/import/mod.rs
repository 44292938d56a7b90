//! `sgctl import`: provider security groups (Alibaba Cloud ECS
//! `DescribeSecurityGroupAttribute` responses, AWS EC2 `describe-security-groups` output)
//! turned into a rule file of the format of `examples/`.
//!
//! Nothing is dropped or widened silently: every field is either translated, knowingly
//! ignored because it carries no matching meaning (request ids, names, timestamps), or
//! reported. A [`Problem`] of severity `Error` (something the rule model cannot express
//! exactly, a malformed value) means no file is written; `Warning`s (placeholders for
//! groups and prefix lists the input does not describe, unknown fields) are printed and
//! also written as comments at the top of the file. The result always passes the
//! validator: [`render`] checks it.

pub mod alibaba;
pub mod aws;
pub mod context;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Serialize;
use serde_json::Value;

use crate::policy::config::{self, Action, Direction, GroupKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProblemKind {
    Warning,
    Error,
}

/// Something of the input that could not be carried over as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub severity: ProblemKind,
    /// `FILE: sg-web: Permissions.Permission[2].IpProtocol`.
    pub location: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            ProblemKind::Warning => "warning",
            ProblemKind::Error => "error",
        };
        write!(f, "{}: {severity}: {}", self.location, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}: not JSON: {source}")]
    Json { file: String, source: serde_json::Error },
    #[error("{} problem(s) prevent the import:\n{}", .0.iter().filter(|p| p.severity == ProblemKind::Error).count(), join(.0))]
    Refused(Vec<Problem>),
    /// The generated file did not validate: a bug of the importer, reported with the
    /// validator's messages.
    #[error("the generated rule file does not validate (a bug of sgctl import):\n{0}")]
    Invalid(String),
}

fn join(problems: &[Problem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// A rule file being built, close to the TOML it renders to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Draft {
    pub groups: Vec<DraftGroup>,
    pub prefix_lists: Vec<DraftList>,
    /// `name` bound to every group of the draft, when asked for.
    pub interface: Option<String>,
    /// Written as comments at the top.
    pub header: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DraftGroup {
    pub id: String,
    pub kind: Option<GroupKind>,
    pub inner_access: Option<Action>,
    pub owner: Option<String>,
    pub members: Vec<IpAddr>,
    /// Comment lines above the group.
    pub comments: Vec<String>,
    pub rules: Vec<DraftRule>,
    /// Whether the group is bound to the draft's interface (companions and placeholders
    /// are not).
    pub bound: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DraftList {
    pub id: String,
    pub family: config::Family,
    pub entries: Vec<String>,
    pub comments: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DraftRule {
    pub direction: Direction,
    pub action: Action,
    pub priority: u8,
    /// As the rule file writes it: `tcp`, `all`, ...
    pub protocol: config::Protocol,
    /// `a/b`, or `None` for `-1/-1`.
    pub port_range: Option<String>,
    pub source_port_range: Option<String>,
    /// An icmp or icmpv6 rule's `icmp_type` and optional `icmp_code`.
    pub icmp: Option<config::IcmpMatch>,
    /// `(key, value)`: `("source", "0.0.0.0/0")`, `("destination_group", "1234/sg-a")`.
    pub peer: (&'static str, String),
    /// The local-address narrowing: `destination` on ingress, `source` on egress.
    pub local: Option<String>,
    pub description: String,
}

/// Collects problems while an input is read.
#[derive(Debug, Default)]
pub struct Problems {
    pub list: Vec<Problem>,
}

impl Problems {
    pub fn error(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem { severity: ProblemKind::Error, location: location.into(), message: message.into() });
    }

    /// Reports `id` (a group, prefix-list or account id of the input) as an error unless
    /// the rule file can hold it ([`crate::policy::config::is_valid_id`], the validator's
    /// rule). False when
    /// reported. Without it an odd id in the input became a file that does not validate
    /// (found by the `import_aws` fuzz target).
    pub fn check_id(&mut self, location: impl Into<String>, what: &str, id: &str) -> bool {
        if !crate::policy::config::is_valid_id(id) {
            self.error(location, format!("{what} {id:?} cannot be a rule-file id (empty, whitespace or '/')"));
            return false;
        }
        true
    }

    pub fn warning(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem { severity: ProblemKind::Warning, location: location.into(), message: message.into() });
    }

    pub fn has_errors(&self) -> bool {
        self.list.iter().any(|p| p.severity == ProblemKind::Error)
    }

    /// Reports every key of `object` not in `known`.
    pub fn unknown_fields(&mut self, location: &str, object: &serde_json::Map<String, Value>, known: &[&str]) {
        for key in object.keys() {
            if !known.contains(&key.as_str()) {
                self.warning(format!("{location}.{key}"), "unknown field, not imported");
            }
        }
    }
}

/// Reads every JSON value of a file: one object, an array of objects, or several values
/// one after another (pages saved one after the other).
pub fn read_values(file: &str) -> Result<Vec<Value>, ImportError> {
    let text = std::fs::read_to_string(file).map_err(|source| ImportError::Read { file: file.to_string(), source })?;
    parse_values(&text, file)
}

pub fn parse_values(text: &str, file: &str) -> Result<Vec<Value>, ImportError> {
    let mut out = Vec::new();
    for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        match value.map_err(|source| ImportError::Json { file: file.to_string(), source })? {
            Value::Array(items) => out.extend(items),
            other => out.push(other),
        }
    }
    Ok(out)
}

/// `--members sg-web=198.18.0.10,198.18.0.11`: group id to its members.
pub fn parse_members(args: &[String]) -> Result<BTreeMap<String, Vec<IpAddr>>, String> {
    let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for arg in args {
        let Some((group, addrs)) = arg.split_once('=') else {
            return Err(format!("--members {arg}: expected GROUP=ADDR[,ADDR...]"));
        };
        let entry = out.entry(group.trim().to_string()).or_default();
        for addr in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let addr: IpAddr = addr.parse().map_err(|_| format!("--members {arg}: `{addr}` is not an IP address"))?;
            if !entry.contains(&addr) {
                entry.push(addr);
            }
        }
    }
    Ok(out)
}

/// A TOML string literal.
fn quote(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// Appends `line` as a TOML comment. Names, descriptions and field names of the input end
/// up in comments, and TOML allows no control character there but tab: a newline would
/// end the comment and let the input write rule-file lines of its own, a DEL or NUL
/// makes the file unparsable (found by the `import_alibaba` fuzz target). Those are
/// written escaped, as `\u{7f}`.
fn push_comment(out: &mut String, line: &str) {
    out.push_str("# ");
    for c in line.chars() {
        if c.is_control() && c != '\t' {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out.push('\n');
}

impl Draft {
    pub fn group_mut(&mut self, id: &str) -> Option<&mut DraftGroup> {
        self.groups.iter_mut().find(|g| g.id == id)
    }

    /// The TOML text of the draft.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for line in &self.header {
            push_comment(&mut out, line);
        }
        for group in &self.groups {
            out.push('\n');
            for line in &group.comments {
                push_comment(&mut out, line);
            }
            out.push_str(&format!("[[security_group]]\nid = {}\n", quote(&group.id)));
            if let Some(kind) = group.kind {
                out.push_str(&format!("type = \"{kind}\"\n"));
            }
            if let Some(inner) = group.inner_access {
                out.push_str(&format!("inner_access_policy = \"{inner}\"\n"));
            }
            if let Some(owner) = &group.owner {
                out.push_str(&format!("owner = {}\n", quote(owner)));
            }
            let members: Vec<String> = group.members.iter().map(|m| quote(&m.to_string())).collect();
            out.push_str(&format!("members = [{}]\n", members.join(", ")));
            for rule in &group.rules {
                out.push_str("\n  [[security_group.rule]]\n");
                out.push_str(&format!("  direction = \"{}\"\n", rule.direction));
                out.push_str(&format!("  policy = \"{}\"\n", rule.action));
                out.push_str(&format!("  priority = {}\n", rule.priority));
                out.push_str(&format!("  protocol = \"{}\"\n", rule.protocol));
                if let Some(ports) = &rule.port_range {
                    out.push_str(&format!("  port_range = {}\n", quote(ports)));
                }
                if let Some(ports) = &rule.source_port_range {
                    out.push_str(&format!("  source_port_range = {}\n", quote(ports)));
                }
                if let Some(icmp) = rule.icmp {
                    out.push_str(&format!("  icmp_type = {}\n", icmp.icmp_type));
                    if let Some(code) = icmp.code {
                        out.push_str(&format!("  icmp_code = {code}\n"));
                    }
                }
                out.push_str(&format!("  {} = {}\n", rule.peer.0, quote(&rule.peer.1)));
                if let Some(local) = &rule.local {
                    let key = match rule.direction {
                        Direction::Ingress => "destination",
                        Direction::Egress => "source",
                    };
                    out.push_str(&format!("  {key} = {}\n", quote(local)));
                }
                if !rule.description.is_empty() {
                    out.push_str(&format!("  description = {}\n", quote(&rule.description)));
                }
            }
        }
        for list in &self.prefix_lists {
            out.push('\n');
            for line in &list.comments {
                push_comment(&mut out, line);
            }
            let entries: Vec<String> = list.entries.iter().map(|e| quote(e)).collect();
            out.push_str(&format!(
                "[[prefix_list]]\nid = {}\nfamily = \"{}\"\nentries = [{}]\n",
                quote(&list.id),
                list.family,
                entries.join(", ")
            ));
        }
        if let Some(name) = &self.interface {
            let bound: Vec<String> = self.groups.iter().filter(|g| g.bound).map(|g| quote(&g.id)).collect();
            if !bound.is_empty() {
                out.push_str(&format!(
                    "\n[[interface]]\nname = {}\nsecurity_groups = [{}]\n",
                    quote(name),
                    bound.join(", ")
                ));
            }
        }
        out
    }
}

/// Renders a draft, checks it with the validator and returns its text; refuses when
/// `problems` holds an error.
pub fn render(mut draft: Draft, problems: Problems) -> Result<(String, Vec<Problem>), ImportError> {
    if problems.has_errors() {
        return Err(ImportError::Refused(problems.list));
    }
    for problem in &problems.list {
        draft.header.push(format!("{}: {}", problem.location, problem.message));
    }
    let text = draft.to_toml();
    config::parse_str(&text, "imported.toml").map_err(|errors| ImportError::Invalid(format!("{errors}\n{text}")))?;
    Ok((text, problems.list))
}

/// Rule ids are unique per file; a companion group standing for "the members of `id`"
/// (for self-references, which the validator refuses) is named so.
pub fn companion_id(id: &str) -> String {
    format!("{id}-members")
}

/// Adds, once, a group with `id`'s members and no rules, so that a rule of `id` can
/// reference its own members: exactly what a provider's self-reference means.
pub fn ensure_companion(draft: &mut Draft, id: &str) -> String {
    let companion = companion_id(id);
    if draft.groups.iter().all(|g| g.id != companion) {
        let members = draft.groups.iter().find(|g| g.id == id).map(|g| g.members.clone()).unwrap_or_default();
        let owner = draft.groups.iter().find(|g| g.id == id).and_then(|g| g.owner.clone());
        let kind = draft.groups.iter().find(|g| g.id == id).and_then(|g| g.kind);
        draft.groups.push(DraftGroup {
            id: companion.clone(),
            kind,
            owner,
            members,
            comments: vec![format!(
                "The members of {id}, for its rules that reference {id} itself (a rule file cannot \
                 reference a group from inside it). Keep the two member lists equal."
            )],
            ..DraftGroup::default()
        });
    }
    companion
}

/// Adds, once, a placeholder for a group the input references but does not describe.
pub fn ensure_placeholder_group(draft: &mut Draft, id: &str, owner: Option<&str>) {
    if draft.groups.iter().any(|g| g.id == id) {
        return;
    }
    draft.groups.push(DraftGroup {
        id: id.to_string(),
        owner: owner.map(str::to_string),
        comments: vec![format!(
            "Placeholder: {id} is referenced but was not imported; its members are unknown, so rules \
             referencing it match nothing until they are filled in."
        )],
        ..DraftGroup::default()
    });
}

/// Adds, once, a placeholder for a prefix list whose entries the input does not carry.
pub fn ensure_placeholder_list(draft: &mut Draft, id: &str, family: config::Family) {
    if draft.prefix_lists.iter().any(|l| l.id == id) {
        return;
    }
    draft.prefix_lists.push(DraftList {
        id: id.to_string(),
        family,
        entries: Vec::new(),
        comments: vec![format!(
            "Placeholder: the entries of {id} are not part of the input; rules using it match nothing until \
             they are filled in."
        )],
    });
}
