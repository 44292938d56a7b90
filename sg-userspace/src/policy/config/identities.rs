//! Rule identities ([`Rule::identity`]) remembered from one apply to the next.
//!
//! Every apply names every rule of both directions by its identity, and formatting
//! 16,384 of them took longer than the rest of a one-rule change. An unchanged rule has
//! the same fields as before, so its identity is looked up by them (a hash of a few
//! integers and an address) and handed out as the same shared string, which also makes
//! comparing it with the last apply's key a pointer compare. A config the reader made
//! by editing one rule of the config named last ([`super::Lineage`]) renames that rule
//! alone.

use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use super::{Config, Rule, validate::RuleKey};

/// Everything [`Rule::identity`] is made of: the rule's group, by index (the cache is
/// emptied when the names behind the indexes change), and what makes it the rule it is.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Parts {
    group_index: usize,
    rule: RuleKey,
}

impl Parts {
    fn of(rule: &Rule) -> Self {
        Self { group_index: rule.group_index, rule: RuleKey::of(rule) }
    }
}

/// The identities of the rules of the last rule file applied.
#[derive(Default)]
pub struct Identities {
    /// The group and prefix-list ids the indexes in the keys stand for.
    names: (Vec<String>, Vec<String>),
    /// The round before's rules, by rule id: an unchanged rule mostly keeps its id, and
    /// then comparing its parts is all it takes.
    before: Vec<Option<(Parts, Arc<str>)>>,
    /// `before` by parts, built when a rule is not where it was (rules added or removed
    /// above it renumber it).
    by_parts: Option<HashMap<Parts, Arc<str>>>,
    /// Rules this round not found where they were.
    misses: usize,
    /// This round's rules, by rule id.
    now: Vec<Option<(Parts, Arc<str>)>>,
    /// `now`'s identities alone, by rule id: what [`Identities::get`] reads for every bit
    /// of a rule set, in rank order (a sixth of `now`'s size, so it stays in cache).
    by_id: Vec<Option<Arc<str>>>,
    /// The serial of the config `now` names, when it names every rule of one
    /// ([`Identities::name`]).
    named: Option<u64>,
}

impl Identities {
    /// Names every rule of `cfg` ([`Identities::get`]): from the round before's names,
    /// and only the edited rule when `cfg` is one rule's edit of the config named last.
    pub fn name(&mut self, cfg: &Config) {
        let edited = cfg.lineage.edit_of(self.named).and_then(|edit| cfg.rule(edit.rule_id));
        if let Some(rule) = edited {
            let parts = Parts::of(rule);
            let at = rule.id as usize;
            if !self.now.get(at).and_then(Option::as_ref).is_some_and(|(was, _)| *was == parts) {
                self.put(at, parts, rule.identity(cfg).into());
            }
        } else {
            self.begin(cfg);
            self.now.reserve(self.before.len());
            self.by_id.reserve(self.before.len());
            for rule in cfg.rules() {
                self.of(cfg, rule);
            }
        }
        self.named = Some(cfg.lineage.serial());
    }

    /// The identity of rule `id` of the config [`Identities::name`] named last.
    pub fn get(&self, id: u32) -> Option<&Arc<str>> {
        self.by_id.get(id as usize).and_then(Option::as_ref)
    }

    /// Records `identity` (of `parts`) for rule id `at` this round.
    fn put(&mut self, at: usize, parts: Parts, identity: Arc<str>) {
        if self.now.len() <= at {
            self.now.resize(at + 1, None);
            self.by_id.resize(at + 1, None);
        }
        self.by_id[at] = Some(Arc::clone(&identity));
        self.now[at] = Some((parts, identity));
    }

    /// Starts naming the rules of `cfg`: identities the round before did not ask for are
    /// forgotten.
    pub fn begin(&mut self, cfg: &Config) {
        self.named = None;
        self.by_id.clear();
        self.before = std::mem::take(&mut self.now);
        self.by_parts = None;
        self.misses = 0;
        let groups = cfg.groups.iter().map(|g| &g.id);
        let lists = cfg.prefix_lists.iter().map(|l| &l.id);
        if !groups.clone().eq(&self.names.0) || !lists.clone().eq(&self.names.1) {
            self.before.clear();
            self.names = (groups.cloned().collect(), lists.cloned().collect());
        }
    }

    /// `rule.identity(cfg)`, the same shared string as the round before's for a rule made
    /// the same way ([`Identities::begin`] was called for `cfg`).
    pub fn of(&mut self, cfg: &Config, rule: &Rule) -> Arc<str> {
        let parts = Parts::of(rule);
        let at = rule.id as usize;
        let kept = match self.before.get_mut(at) {
            // Moved, not copied: a rule found where it was is not looked for again.
            Some(slot) if slot.as_ref().is_some_and(|(was, _)| *was == parts) => slot.take().map(|(_, i)| i),
            _ => None,
        };
        let identity = match kept {
            Some(identity) => identity,
            None => {
                // An edited rule is formatted anew; the index of the round before pays
                // only once rules were renumbered (building it costs about as much as
                // formatting a few thousand).
                self.misses += 1;
                let before = &self.before;
                let by_parts = match self.by_parts.as_mut() {
                    Some(by_parts) => Some(by_parts),
                    None if self.misses > 256 => {
                        Some(self.by_parts.insert(before.iter().flatten().map(|(p, i)| (*p, Arc::clone(i))).collect()))
                    }
                    None => None,
                };
                match by_parts.and_then(|m| m.get(&parts)) {
                    Some(identity) => Arc::clone(identity),
                    None => rule.identity(cfg).into(),
                }
            }
        };
        self.put(at, parts, Arc::clone(&identity));
        identity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::config::parse_str;

    const FILE: &str = r#"
[[prefix_list]]
id = "pl-a"
family = "ipv4"
entries = ["198.18.0.0/24"]

[[security_group]]
id = "sg-peer"
members = ["198.18.0.20"]

[[security_group]]
id = "sg-a"
members = ["198.18.0.10"]
[[security_group.rule]]
direction = "ingress"
protocol = "tcp"
port_range = "22/22"
source = "198.18.0.0/15"
[[security_group.rule]]
direction = "ingress"
protocol = "udp"
port_range = "53/53"
source_prefix_list = "pl-a"
[[security_group.rule]]
direction = "ingress"
protocol = "tcp"
port_range = "80/80"
source_group = "sg-peer"

[[interface]]
name = "eth0"
security_groups = ["sg-a"]
"#;

    fn names(ids: &mut Identities, text: &str) -> Vec<Arc<str>> {
        let cfg = parse_str(text, "t.toml").expect("valid");
        ids.begin(&cfg);
        cfg.rules().map(|r| ids.of(&cfg, r)).collect()
    }

    #[test]
    fn remembered_identities_are_the_rules_own_and_shared_while_they_stay() {
        let mut ids = Identities::default();
        let cfg = parse_str(FILE, "t.toml").expect("valid");
        let first = names(&mut ids, FILE);
        let fresh: Vec<String> = cfg.rules().map(|r| r.identity(&cfg)).collect();
        assert_eq!(first.iter().map(|s| s.to_string()).collect::<Vec<_>>(), fresh);
        // The same file again: the very same strings.
        let again = names(&mut ids, FILE);
        assert!(first.iter().zip(&again).all(|(a, b)| Arc::ptr_eq(a, b)));
        // One rule's port changed: its identity changes, the others stay shared.
        let edited = names(&mut ids, &FILE.replace("22/22", "2222/2222"));
        assert!(edited[0].contains("2222") && !Arc::ptr_eq(&edited[0], &first[0]));
        assert!(Arc::ptr_eq(&edited[1], &first[1]) && Arc::ptr_eq(&edited[2], &first[2]));
    }

    #[test]
    fn renumbered_rules_keep_their_identities() {
        let mut ids = Identities::default();
        let first = names(&mut ids, FILE);
        // A rule written first renumbers the others.
        let rule =
            "[[security_group.rule]]\ndirection = \"ingress\"\nprotocol = \"icmp\"\nsource = \"198.18.0.0/15\"\n";
        let text = FILE.replacen("[[security_group.rule]]", &format!("{rule}[[security_group.rule]]"), 1);
        let shifted = names(&mut ids, &text);
        assert_eq!(shifted.len(), 4);
        assert_eq!(first[..], shifted[1..]);
        // Past a few hundred renumbered rules, they are looked up rather than formatted.
        let many: String = (1..=400)
            .map(|p| format!("[[security_group.rule]]\ndirection = \"ingress\"\nprotocol = \"tcp\"\nport_range = \"{p}/{p}\"\nsource = \"198.18.0.0/15\"\n"))
            .collect();
        let text = FILE.replacen("[[security_group.rule]]", &format!("{many}[[security_group.rule]]"), 1);
        let before = names(&mut ids, &text);
        let shifted =
            names(&mut ids, &text.replacen("[[security_group.rule]]", &format!("{rule}[[security_group.rule]]"), 1));
        assert_eq!(before[..], shifted[1..]);
        let shared = before.iter().zip(&shifted[1..]).filter(|(a, b)| Arc::ptr_eq(a, b)).count();
        assert!(shared >= 100, "{shared} of {} shared", before.len());
    }

    #[test]
    fn renamed_groups_and_lists_rename_the_identities() {
        let mut ids = Identities::default();
        let first = names(&mut ids, FILE);
        let text = FILE.replace("sg-a", "sg-b").replace("pl-a", "pl-b");
        let cfg = parse_str(&text, "t.toml").expect("valid");
        let renamed = names(&mut ids, &text);
        let fresh: Vec<String> = cfg.rules().map(|r| r.identity(&cfg)).collect();
        assert_eq!(renamed.iter().map(|s| s.to_string()).collect::<Vec<_>>(), fresh);
        assert!(renamed.iter().zip(&first).all(|(a, b)| a != b), "{renamed:?}");
    }

    #[test]
    fn identities_no_rule_asks_for_are_forgotten() {
        let mut ids = Identities::default();
        names(&mut ids, FILE);
        names(&mut ids, &FILE.replace("22/22", "2222/2222"));
        names(&mut ids, &FILE.replace("22/22", "3333/3333"));
        assert_eq!(ids.now.iter().flatten().count(), 3, "this round's rules");
        assert!(ids.before.iter().flatten().any(|(_, i)| i.contains("2222")), "the round before's");
        names(&mut ids, &FILE.replace("22/22", "3333/3333"));
        assert!(!ids.before.iter().flatten().any(|(_, i)| i.contains("2222")), "forgotten");
    }

    /// The names of every rule of `cfg` after naming it.
    fn named(ids: &mut Identities, cfg: &Config) -> Vec<Arc<str>> {
        ids.name(cfg);
        cfg.rules().map(|r| Arc::clone(ids.get(r.id).expect("named"))).collect()
    }

    /// A one-rule edit the reader made is renamed alone and still names every rule as a
    /// whole naming would; a config that is no edit of the one named is named whole.
    #[test]
    fn an_edited_rule_is_renamed_alone() {
        let mut reader = crate::policy::config::Reader::default();
        let mut ids = Identities::default();
        let first = named(&mut ids, reader.read(FILE, "t.toml").expect("valid"));
        let text = FILE.replace("22/22", "2222/2222");
        let cfg = reader.read(&text, "t.toml").expect("valid");
        assert!(cfg.lineage.edit_of(ids.named).is_some(), "one rule's edit of the config named");
        let edited = named(&mut ids, cfg);
        let fresh: Vec<String> = cfg.rules().map(|r| r.identity(cfg)).collect();
        assert_eq!(edited.iter().map(|s| s.to_string()).collect::<Vec<_>>(), fresh);
        assert!(Arc::ptr_eq(&edited[1], &first[1]) && Arc::ptr_eq(&edited[2], &first[2]));
        assert!(ids.before.is_empty(), "no whole naming ran");
        // A copy is not an edit: named whole, to the same names.
        let copy = cfg.clone();
        assert_eq!(named(&mut ids, &copy), edited);
        assert!(!ids.before.is_empty(), "named whole");
    }
}
