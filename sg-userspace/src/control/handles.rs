//! Rule handles: the numbers the kernel counts rules by (`RuleInfo::rule_id` in the
//! maps, `sg_common::RuleCounters` per handle).
//!
//! A handle stands for one rule (or pseudo-rule) of one interface and direction, named by
//! the rule's identity (`Rule::identity`): an apply that keeps a rule keeps its handle,
//! and so its counts; a changed rule gets a fresh handle whose counters start at zero.
//! Handles freed by removed rules are reused oldest first, so a session or cache entry
//! still naming a freed handle is unlikely to count for its successor before the
//! session's next packet re-checks it and takes its new rule's handle.

use std::{collections::VecDeque, sync::Arc};

// Looked up for every rule of both directions on every apply; the keys are the
// operator's own rules, so a fast non-cryptographic hash is enough.
use rustc_hash::FxHashMap as HashMap;

/// What a handle stands for.
#[derive(Clone, Debug, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandleKey {
    pub ifindex: u32,
    /// `sg_common::stats::HOOK_INGRESS` or `HOOK_EGRESS`.
    pub hook: u32,
    /// `Rule::identity`, or `pseudo:<step>` for the intra-group and default steps.
    /// Shared: an unchanged rule's key is the same string from apply to apply
    /// (`policy::config::Identities`), so comparing keys is mostly a pointer compare.
    pub identity: Arc<str>,
}

impl PartialEq for HandleKey {
    /// The identities' pointers first: an unchanged rule's identity is the same string
    /// as last time, and `Arc<str>`'s own comparison reads the strings (measured: 16,384
    /// keys compared in 0.7-1.4 ms that way, 0.08 ms by pointer).
    fn eq(&self, other: &Self) -> bool {
        self.ifindex == other.ifindex
            && self.hook == other.hook
            && (Arc::ptr_eq(&self.identity, &other.identity) || *self.identity == *other.identity)
    }
}

impl std::hash::Hash for HandleKey {
    /// Of the contents, as equality is.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.ifindex.hash(state);
        self.hook.hash(state);
        self.identity.hash(state);
    }
}

/// One handle in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandleUse {
    pub key: HandleKey,
    /// The rule's id in the rule file last applied (0 for pseudo-rules).
    pub rule_id: u32,
    /// `sg_common::step` of what it decides.
    pub step: u8,
    /// Installed rule sets using it (a live one and the one replacing it).
    refs: u32,
}

/// The handle allocator.
#[derive(Debug)]
pub struct Handles {
    by_key: HashMap<HandleKey, u32>,
    /// By handle; grown as handles are given out (the free ones go lowest first at
    /// the start, so this stays as long as the most handles ever used at once).
    used: Vec<Option<HandleUse>>,
    in_use: usize,
    free: VecDeque<u32>,
    /// The rule id and step each handle last stood for, kept after it is freed: a session
    /// or event may still name it. By handle, as `used`.
    last: Vec<(u32, u8)>,
}

impl Handles {
    /// Handles 1 to `capacity - 1` (0 means "no rule").
    pub fn new(capacity: u32) -> Self {
        Self {
            by_key: HashMap::default(),
            used: Vec::new(),
            in_use: 0,
            free: (1..capacity).collect(),
            last: Vec::new(),
        }
    }

    /// Handles in use, of those there are.
    pub fn fill(&self) -> crate::dataplane::capacity::Fill {
        let capacity = (self.in_use + self.free.len()) as u64;
        crate::dataplane::capacity::Fill { used: self.in_use as u64, capacity }
    }

    fn use_mut(&mut self, handle: u32) -> Option<&mut HandleUse> {
        self.used.get_mut(handle as usize).and_then(Option::as_mut)
    }

    fn set_last(&mut self, handle: u32, rule_id: u32, step: u8) {
        let at = handle as usize;
        if self.last.len() <= at {
            self.last.resize(at + 1, (0, 0));
        }
        self.last[at] = (rule_id, step);
    }

    /// Records `handle` in use for `key` (not in use before).
    fn put(&mut self, handle: u32, key: HandleKey, rule_id: u32, step: u8, refs: u32) {
        let at = handle as usize;
        if self.used.len() <= at {
            self.used.resize(at + 1, None);
        }
        self.set_last(handle, rule_id, step);
        self.by_key.insert(key.clone(), handle);
        self.used[at] = Some(HandleUse { key, rule_id, step, refs });
        self.in_use += 1;
    }

    /// The handle of `key`, and whether it is new (its counters must be zeroed before
    /// the kernel sees it). `None`: every handle is in use.
    pub fn acquire(&mut self, key: HandleKey, rule_id: u32, step: u8) -> Option<(u32, bool)> {
        self.acquire_hinted(&key, None, rule_id, step)
    }

    /// [`Handles::acquire`], trying `hint` first (the handle the same bit had in the rule
    /// set before, mostly the same rule): a hint whose key is `key` saves the lookup.
    pub fn acquire_hinted(
        &mut self,
        key: &HandleKey,
        hint: Option<u32>,
        rule_id: u32,
        step: u8,
    ) -> Option<(u32, bool)> {
        let hinted =
            hint.filter(|h| self.used.get(*h as usize).and_then(Option::as_ref).is_some_and(|u| u.key == *key));
        if let Some(handle) = hinted.or_else(|| self.by_key.get(key).copied()) {
            let u = self.use_mut(handle).expect("a keyed handle is in use");
            u.refs += 1;
            u.rule_id = rule_id;
            self.set_last(handle, rule_id, step);
            return Some((handle, false));
        }
        let handle = self.free.pop_front()?;
        self.put(handle, key.clone(), rule_id, step, 1);
        Some((handle, true))
    }

    /// Takes `handle` for `key` as an earlier process left it (adoption).
    pub fn adopt(&mut self, handle: u32, key: HandleKey, rule_id: u32, step: u8) {
        if let Some(u) = self.use_mut(handle) {
            u.refs += 1;
            return;
        }
        self.free.retain(|h| *h != handle);
        self.put(handle, key, rule_id, step, 1);
    }

    /// Holds `handle` for `key` without a user yet: the next [`Handles::acquire`] of `key`
    /// gets it (a new generation of the maps gives each rule the handle it had, so the
    /// counters carried over stay with their rules). [`Handles::drop_unused`] frees the
    /// ones no rule set took.
    pub fn reserve(&mut self, handle: u32, key: HandleKey, rule_id: u32, step: u8) {
        if self.get(handle).is_some() || self.by_key.contains_key(&key) {
            return;
        }
        self.free.retain(|h| *h != handle);
        self.put(handle, key, rule_id, step, 0);
    }

    /// Frees `handle`, in use.
    fn free_handle(&mut self, handle: u32) {
        let u = self.used[handle as usize].take().expect("present");
        self.by_key.remove(&u.key);
        self.in_use -= 1;
        self.free.push_back(handle);
    }

    /// Frees the reserved handles no rule set took.
    pub fn drop_unused(&mut self) {
        let unused: Vec<u32> = self.in_use().filter(|(_, u)| u.refs == 0).map(|(h, _)| h).collect();
        for handle in unused {
            self.free_handle(handle);
        }
    }

    /// One rule set stopped using `handle`.
    pub fn release(&mut self, handle: u32) {
        let Some(u) = self.use_mut(handle) else { return };
        u.refs -= 1;
        if u.refs == 0 {
            self.free_handle(handle);
        }
    }

    /// Every handle in use.
    pub fn in_use(&self) -> impl Iterator<Item = (u32, &HandleUse)> {
        self.used.iter().enumerate().filter_map(|(h, u)| Some((h as u32, u.as_ref()?)))
    }

    pub fn get(&self, handle: u32) -> Option<&HandleUse> {
        self.used.get(handle as usize).and_then(Option::as_ref)
    }

    /// The rule-file id of the rule `handle` last stood for; 0 for a pseudo-rule or a
    /// handle never given out (what the kernel reported before handles: the reference
    /// evaluator's numbering).
    pub fn rule_id_of(&self, handle: u32) -> u32 {
        match self.last.get(handle as usize) {
            Some(&(rule_id, step)) if step == sg_common::step::RULE => rule_id,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(identity: &str) -> HandleKey {
        HandleKey { ifindex: 3, hook: 0, identity: identity.into() }
    }

    #[test]
    fn a_kept_rule_keeps_its_handle_and_a_changed_one_gets_a_fresh_one() {
        let mut h = Handles::new(4);
        let (a, fresh) = h.acquire(key("a"), 1, 7).unwrap();
        assert!(fresh);
        let (b, _) = h.acquire(key("b"), 2, 7).unwrap();
        // The next apply: `a` kept (now rule 5), `b` changed into `c`.
        assert_eq!(h.acquire(key("a"), 5, 7), Some((a, false)));
        let (c, fresh) = h.acquire(key("c"), 2, 7).unwrap();
        assert!(fresh && c != a && c != b);
        // The old rule set retires.
        h.release(a);
        h.release(b);
        assert_eq!(h.get(a).map(|u| u.rule_id), Some(5), "still used by the new set");
        assert!(h.get(b).is_none(), "freed");
        assert_eq!(h.acquire(key("d"), 3, 7), Some((b, true)), "freed handles come back, oldest first");
        assert_eq!(h.acquire(key("e"), 4, 7), None, "all three in use");
        assert_eq!((h.rule_id_of(a), h.rule_id_of(b), h.rule_id_of(0)), (5, 3, 0));
        h.release(c);
        assert_eq!(h.rule_id_of(c), 2, "a freed handle still names its last rule");
    }

    /// Keys compare (and hash) by content: the pointer compare is a shortcut only.
    #[test]
    fn keys_are_equal_by_content_whether_shared_or_not() {
        use std::hash::BuildHasher as _;
        let (a, b) = (key("sg-a|tcp|22"), key("sg-a|tcp|22"));
        assert!(!Arc::ptr_eq(&a.identity, &b.identity));
        assert_eq!(a, b);
        assert_eq!(a, a.clone());
        let hash = |k: &HandleKey| rustc_hash::FxBuildHasher.hash_one(k);
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(a, key("sg-a|tcp|23"));
        assert_ne!(a, HandleKey { hook: 1, ..a.clone() });
    }

    #[test]
    fn reserved_handles_go_to_their_keys_and_unused_ones_come_back() {
        let mut h = Handles::new(8);
        h.reserve(5, key("a"), 1, 7);
        h.reserve(6, key("b"), 2, 7);
        assert_eq!(h.acquire(key("a"), 1, 7), Some((5, false)), "the reserved handle, counters kept");
        h.drop_unused();
        assert!(h.get(6).is_none(), "b was not taken");
        assert!(h.get(5).is_some());
        let taken: Vec<u32> = (0..6).filter_map(|i| h.acquire(key(&format!("n{i}")), 0, 9).map(|(x, _)| x)).collect();
        assert_eq!(taken.len(), 6, "1 to 4, 7 and 6 again: {taken:?}");
        assert!(taken.contains(&6));
    }
}
