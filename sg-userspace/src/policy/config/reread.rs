//! Reading a rule file again after an edit of one rule, without parsing all of it.
//!
//! A 16,384-rule file is 3 MiB of TOML, and parsing and validating it takes most of what
//! applying a one-rule change costs. [`Reader`] keeps the last text it read with the
//! [`Config`] it validated to. When the next text differs from it only inside one
//! `[[security_group.rule]]` table, that table alone is read (as a document of its own)
//! and replaces the rule in the kept `Config`; every other text is read whole.
//!
//! Why that is the same as reading the whole new file: the kept text is valid TOML, so
//! the table's header line is a real header (a `[[...]]` line of bare keys is never a
//! value, and the kept text has no multi-line strings a header could hide in), and so is
//! the header after it, which must open a new array element or a top-level table: the
//! TOML parser is outside every value at both, and nothing after the second one can add
//! to the rule's table (a rule has no table-valued fields, so a valid file has no
//! `[security_group.rule.x]` headers). The text between them is then a table of its own.
//! What validating that table depends on besides itself (the groups' and prefix lists'
//! ids and kinds) is kept from the whole read ([`Scope`]), and the checks spanning
//! rules are made again here or refused: a rule made equal to another of its group (the
//! validator keeps only the first), one that had a duplicate left out, and one that
//! changes direction (the interfaces' rule counts) go back to a whole read. Anything the
//! one-table read does not accept (an error, a header in the changed text, a multi-line
//! string) is read whole too, so errors are always reported as a whole read reports them.
//!
//! A config read this way records the edit in its [`Lineage`]: the rule and the config
//! it was made to, so the compile and the apply can redo that rule's part alone.

use super::validate::{self, Scope};
use super::{Config, ConfigErrors, Lineage};

/// How [`Reader::read`] read the latest text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    /// Parsed and validated whole.
    Whole,
    /// The same text as last time: the kept `Config`.
    Same,
    /// One rule's table read again (the rest as last time).
    OneRule,
}

impl ReadKind {
    /// As `sgctl apply` prints it.
    pub fn describe(self) -> &'static str {
        match self {
            ReadKind::Whole => "whole",
            ReadKind::Same => "same",
            ReadKind::OneRule => "one rule",
        }
    }
}

/// Reads rule-file texts, each after the one before (see the module comment).
#[derive(Default)]
pub struct Reader {
    last: Option<Last>,
    kind: Option<ReadKind>,
}

struct Last {
    file: String,
    text: String,
    config: Config,
    scope: Scope,
    /// The text has no multi-line strings, so every line starting with `[` is a table
    /// header or inside an array.
    plain: bool,
}

impl Reader {
    /// The `Config` of `text` (named `file` in errors): the same as
    /// [`super::parse_str`] returns, read in part when the text is the last one read
    /// with one rule edited. On an error the last text stays the one kept.
    pub fn read(&mut self, text: &str, file: &str) -> Result<&Config, ConfigErrors> {
        let kind = match self.last.as_mut() {
            Some(last) if last.file == file && last.text == text => Some(ReadKind::Same),
            Some(last) if last.file == file && last.plain => read_one_rule(last, text).then_some(ReadKind::OneRule),
            _ => None,
        };
        let kind = match kind {
            Some(kind) => kind,
            None => {
                let (config, scope) = validate::validate_with_scope(text, file)?;
                let plain = is_plain(text);
                self.last = Some(Last { file: file.to_string(), text: text.to_string(), config, scope, plain });
                ReadKind::Whole
            }
        };
        self.kind = Some(kind);
        Ok(&self.last.as_ref().expect("a text was kept").config)
    }

    /// How the latest successful read went.
    pub fn last_kind(&self) -> Option<ReadKind> {
        self.kind
    }
}

fn is_plain(text: &str) -> bool {
    !text.contains("\"\"\"") && !text.contains("'''")
}

/// The header of a rule's table.
const RULE_HEADER: &str = "[[security_group.rule]]";
/// Headers that start a table no earlier header's table continues into.
const FRESH_HEADERS: [&str; 5] = [RULE_HEADER, "[[security_group]]", "[[prefix_list]]", "[[interface]]", "[sessions]"];

/// A line's content without indentation, line end and trailing comment.
fn content(line: &[u8]) -> &[u8] {
    let end = line.iter().position(|&b| b == b'#').unwrap_or(line.len());
    line[..end].trim_ascii()
}

fn starts_with_bracket(line: &[u8]) -> bool {
    line.trim_ascii_start().first() == Some(&b'[')
}

/// Replaces `last` by `text` when they differ inside one rule's table only and that
/// table reads as a valid rule; false, leaving `last` as it was, otherwise.
fn read_one_rule(last: &mut Last, text: &str) -> bool {
    let (old, new) = (last.text.as_bytes(), text.as_bytes());
    let prefix = common_prefix(old, new);
    let suffix = common_suffix(old, new, old.len().min(new.len()) - prefix);
    let old_end = old.len() - suffix;
    // The header: the nearest line starting with `[` wholly before the change. The
    // next one: the first after the change's last line (all of it common to both texts),
    // which must open a fresh table; or the end. The lines between, changed ones among
    // them, are checked below to hold no other header.
    let Some(header) = header_before(old, line_start(old, prefix)) else { return false };
    let last_changed = line_start(old, old_end);
    let after_change = if last_changed == old_end { old_end } else { last_changed + line_at(old, last_changed).len() };
    let old_next = next_header(old, after_change);
    if old_next < old.len() && !FRESH_HEADERS.iter().any(|h| h.as_bytes() == content(line_at(old, old_next))) {
        return false;
    }
    let new_next = new.len() - (old.len() - old_next);
    let (old_table, new_table) = (&old[header..old_next], &new[header..new_next]);
    // Exactly one header in each, the first line; no multi-line strings in the new one.
    let header_len = line_at(old, header).len();
    if has_header_line(&old_table[header_len..]) || has_header_line(&new_table[header_len..]) {
        return false;
    }
    let new_table = &text[header..new_next];
    if !is_plain(new_table) {
        return false;
    }
    let line = 1 + count_newlines(&old[..header]);
    let Some((group, index)) = find_rule(&last.config, line) else { return false };
    let previous = &last.config.groups[group].rules[index];
    let Some(dropped) = last.scope.dropped.get(group) else { return false };
    if dropped.iter().any(|d| validate::same_rule(d, previous)) {
        return false;
    }
    let position = previous.index_in_group;
    let Some(mut rule) =
        validate::revalidate_rule(&mut last.scope, &mut last.config, &last.file, new_table, group, position)
    else {
        return false;
    };
    let previous = &last.config.groups[group].rules[index];
    let group_rules = &last.config.groups[group].rules;
    if rule.direction != previous.direction
        || group_rules.iter().enumerate().any(|(i, other)| i != index && validate::same_rule(other, &rule))
    {
        return false;
    }
    rule.id = previous.id;
    rule.line = line;
    let rank_before = previous.rank();
    let shift = count_newlines(new_table.as_bytes()) as isize - count_newlines(old_table) as isize;
    let rule_id = rule.id;
    last.config.groups[group].rules[index] = rule;
    if shift != 0 {
        for later in last.config.groups.iter_mut().flat_map(|g| &mut g.rules).filter(|r| r.line > line) {
            later.line = later.line.saturating_add_signed(shift);
        }
    }
    last.config.lineage = Lineage::edited(&last.config.lineage, rule_id, rank_before);
    last.text = text.to_string();
    true
}

/// The group and index of the rule whose header is on `line`.
fn find_rule(config: &Config, line: usize) -> Option<(usize, usize)> {
    config
        .groups
        .iter()
        .enumerate()
        .find_map(|(g, group)| group.rules.iter().position(|r| r.line == line).map(|i| (g, i)))
}

/// Where the line holding byte `at` starts.
fn line_start(text: &[u8], at: usize) -> usize {
    text[..at].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
}

/// The line starting at `start`, with its line end.
fn line_at(text: &[u8], start: usize) -> &[u8] {
    let end = text[start..].iter().position(|&b| b == b'\n').map_or(text.len(), |i| start + i + 1);
    &text[start..end]
}

/// The start of the rule header nearest before the line starting at `line`, when the
/// nearest line starting with `[` before it is one. Gives up after a table's worth of
/// lines.
fn header_before(text: &[u8], mut line: usize) -> Option<usize> {
    const MAX_LINES: usize = 256;
    for _ in 0..MAX_LINES {
        if line == 0 {
            return None;
        }
        line = line_start(text, line - 1);
        let l = line_at(text, line);
        if starts_with_bracket(l) {
            return (content(l) == RULE_HEADER.as_bytes()).then_some(line);
        }
    }
    None
}

/// The start of the first line at or after `from` (a line start) that starts with `[`,
/// or the end of the text.
fn next_header(text: &[u8], mut from: usize) -> usize {
    while from < text.len() {
        let l = line_at(text, from);
        if starts_with_bracket(l) {
            return from;
        }
        from += l.len();
    }
    text.len()
}

fn has_header_line(text: &[u8]) -> bool {
    text.split(|&b| b == b'\n').any(starts_with_bracket)
}

fn count_newlines(text: &[u8]) -> usize {
    text.iter().filter(|&&b| b == b'\n').count()
}

/// Bytes at the start `a` and `b` share; compared a page at a time first.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const STEP: usize = 4096;
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + STEP <= n && a[i..i + STEP] == b[i..i + STEP] {
        i += STEP;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// Bytes at the end `a` and `b` share, at most `max`.
fn common_suffix(a: &[u8], b: &[u8], max: usize) -> usize {
    const STEP: usize = 4096;
    let (la, lb) = (a.len(), b.len());
    let mut i = 0;
    while i + STEP <= max && a[la - i - STEP..la - i] == b[lb - i - STEP..lb - i] {
        i += STEP;
    }
    while i < max && a[la - i - 1] == b[lb - i - 1] {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests;
