//! Where a [`Config`](super::Config) came from: read whole, or one rule's edit of a
//! config read before.
//!
//! A one-rule change of a 16,384-rule file is read, compiled and written in a few
//! milliseconds only if no stage walks every rule. The [`Reader`](super::Reader) knows
//! which rule an edit touched; it records it here, with the serial of the config the
//! edit was made to. A stage that kept what it made of that config (the compile cache,
//! the rule identities) may then redo only the edited rule's part, and must redo
//! everything otherwise.
//!
//! The claim "only this rule differs from config `parent`" must never be wrong, so only
//! the reader makes it, on the config it keeps and hands out by shared reference. Every
//! other config (read whole by [`parse_str`](super::parse_str), or copied, which a
//! caller may then change at will) is detached: it names no parent, and so is always
//! processed whole. That is why cloning a `Lineage` gives a detached one, and why two
//! lineages compare equal: the lineage is not part of what a config says.

use std::sync::atomic::{AtomicU64, Ordering};

static SERIALS: AtomicU64 = AtomicU64::new(1);

fn next_serial() -> u64 {
    SERIALS.fetch_add(1, Ordering::Relaxed)
}

/// The edit a config's lineage records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edit {
    /// The serial of the config the edit was made to.
    pub parent: u64,
    /// The edited rule's id (unchanged by the edit, as are its group and direction).
    pub rule_id: u32,
    /// Its [`Rule::rank`](super::Rule::rank) before the edit: when that changed, its bit
    /// moved among the others.
    pub rank_before: (u8, u8, u32),
}

/// See the module comment.
#[derive(Debug)]
pub struct Lineage {
    serial: u64,
    edit: Option<Edit>,
}

impl Lineage {
    /// A config read whole.
    pub(super) fn detached() -> Self {
        Self { serial: next_serial(), edit: None }
    }

    /// The config `parent` turned into another by one rule's edit.
    pub(super) fn edited(parent: &Lineage, rule_id: u32, rank_before: (u8, u8, u32)) -> Self {
        Self { serial: next_serial(), edit: Some(Edit { parent: parent.serial, rule_id, rank_before }) }
    }

    /// This config's serial: what a later edit's [`Edit::parent`] names.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The one edit that makes this config from the config of serial `last`, when it
    /// is one.
    pub fn edit_of(&self, last: Option<u64>) -> Option<Edit> {
        self.edit.filter(|e| Some(e.parent) == last)
    }
}

impl Default for Lineage {
    fn default() -> Self {
        Self::detached()
    }
}

impl Clone for Lineage {
    /// A detached lineage: the copy may be changed in ways no lineage records.
    fn clone(&self) -> Self {
        Self::detached()
    }
}

impl PartialEq for Lineage {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_edit_of_the_named_config_is_reported() {
        let read = Lineage::detached();
        let edited = Lineage::edited(&read, 7, (10, 1, 7));
        assert_eq!(edited.edit_of(Some(read.serial())).map(|e| e.rule_id), Some(7));
        assert_eq!(edited.edit_of(Some(edited.serial())), None, "not an edit of itself");
        assert_eq!(edited.edit_of(None), None);
        assert_eq!(read.edit_of(Some(read.serial())), None, "a whole read is no edit");
        let copy = edited.clone();
        assert_eq!(copy.edit_of(Some(read.serial())), None, "a copy is detached");
        assert_ne!(copy.serial(), edited.serial());
    }
}
