//! The reader against a whole read: every text read after another gives exactly the
//! `Config` (or the errors) `parse_str` gives, and edits of one rule take the short way.

use proptest::prelude::*;

use super::super::parse_str;
use super::*;

const FILE: &str = "edit.toml";

/// A file of two groups (the second referring to the first) and a prefix list, with
/// `rules` TCP rules in the second group, each ending in a blank line.
fn file(rules: usize) -> String {
    let mut text = String::from(
        "# A reader test file.\n[[prefix_list]]\nid = \"pl-1\"\nfamily = \"ipv4\"\nentries = [\n  \"198.18.64.0/24\",\n]\n\n\
         [[security_group]]\nid = \"sg-db\"\nmembers = [\"198.18.1.20\"]\n\n  [[security_group.rule]]\n  \
         direction = \"ingress\"\n  protocol = \"tcp\"\n  port_range = \"3306/3306\"\n  source_group = \"sg-web\"\n\n\
         [[security_group]]\nid = \"sg-web\"\nmembers = [\"198.18.0.10\", \"2001:db8::10\"]\n\n",
    );
    for i in 0..rules {
        let peer = match i % 3 {
            0 => format!("source = \"198.18.{}.0/24\"", i % 200),
            1 => "source_prefix_list = \"pl-1\"".to_string(),
            _ => "source_group = \"sg-db\"".to_string(),
        };
        text.push_str(&format!(
            "  [[security_group.rule]] # rule {i}\n  direction = \"ingress\"\n  protocol = \"tcp\"\n  \
             port_range = \"{p}/{p}\"\n  priority = {}\n  {peer}\n  description = \"rule {i}\"\n\n",
            1 + i % 90,
            p = 1000 + i,
        ));
    }
    text.push_str(
        "[[interface]]\nname = \"web0\"\nsecurity_groups = [\"sg-web\"]\n\n[sessions]\nmax_sessions = 4096\n",
    );
    text
}

/// Reads `text` with the reader and whole, and checks they agree; returns how the
/// reader read it.
fn agree(reader: &mut Reader, text: &str) -> Option<ReadKind> {
    let whole = parse_str(text, FILE);
    let read = reader.read(text, FILE).cloned();
    assert_eq!(read, whole, "the reader and a whole read differ on:\n{text}");
    read.ok().and(reader.last_kind())
}

/// `text` with the `n`th occurrence of `from` replaced by `to`.
fn replace_nth(text: &str, from: &str, to: &str, n: usize) -> String {
    let at = text.match_indices(from).nth(n).unwrap_or_else(|| panic!("no occurrence {n} of {from:?}")).0;
    format!("{}{to}{}", &text[..at], &text[at + from.len()..])
}

#[test]
fn one_rule_edits_read_that_rule_alone_and_agree_with_a_whole_read() {
    let mut reader = Reader::default();
    let text = file(20);
    assert_eq!(agree(&mut reader, &text), Some(ReadKind::Whole));
    assert_eq!(agree(&mut reader, &text), Some(ReadKind::Same));
    let edits = [
        // A port, a priority, a peer, a description, the action.
        replace_nth(&text, "port_range = \"1004/1004\"", "port_range = \"80/90\"", 0),
        replace_nth(&text, "priority = 7", "priority = 99", 0),
        replace_nth(&text, "source = \"198.18.9.0/24\"", "source = \"198.18.9.128/25\"", 0),
        replace_nth(&text, "description = \"rule 5\"", "description = \"rule five\"", 0),
        replace_nth(&text, "description = \"rule 5\"", "description = \"rule 5\"\n  policy = \"drop\"", 0),
        // Lines added to and removed from a rule: the later rules' lines move.
        replace_nth(&text, "description = \"rule 2\"\n", "description = \"rule 2\"\n  # a\n  # b\n\n\n", 0),
        replace_nth(&text, "  description = \"rule 3\"\n", "", 0),
        // The first rule of the first group, and the last rule before `[[interface]]`.
        replace_nth(&text, "3306/3306", "3307/3307", 0),
        replace_nth(&text, "description = \"rule 19\"", "description = \"last\"", 0),
    ];
    for edit in &edits {
        // Each edit after the unedited text, so each changes one rule (and so does going
        // back to it).
        let back = agree(&mut reader, &text);
        assert!(matches!(back, Some(ReadKind::OneRule | ReadKind::Same)), "back to the start: {back:?}");
        assert_eq!(agree(&mut reader, edit), Some(ReadKind::OneRule), "edit:\n{edit}");
    }
    // A line of a rule after a moved one names its new line.
    let moved = &edits[5];
    let config = reader.read(moved, FILE).expect("valid").clone();
    let rule = config.rules().find(|r| r.description == "rule 10").expect("rule 10");
    let line = 1 + moved[..moved.find("# rule 10").expect("there")].matches('\n').count();
    assert_eq!(rule.line, line);
}

#[test]
fn edits_beyond_one_rule_are_read_whole() {
    let text = file(12);
    let cases = [
        // Two rules changed.
        replace_nth(&replace_nth(&text, "1002/1002", "2/2", 0), "1008/1008", "8/8", 0),
        // A rule added, a rule removed (a header line changes).
        replace_nth(
            &text,
            "  [[security_group.rule]] # rule 4\n",
            "  [[security_group.rule]]\n  direction = \"ingress\"\n  protocol = \"udp\"\n  port_range = \"53/53\"\n  source = \"198.18.3.3\"\n\n  [[security_group.rule]] # rule 4\n",
            0,
        ),
        replace_nth(&text, "# rule 4", "# rule four", 0),
        // A group's own field, the prefix list, the interface, the sessions.
        replace_nth(&text, "\"198.18.0.10\", ", "", 0),
        replace_nth(&text, "\"198.18.64.0/24\"", "\"198.18.65.0/24\"", 0),
        replace_nth(&text, "name = \"web0\"", "name = \"web1\"", 0),
        replace_nth(&text, "max_sessions = 4096", "max_sessions = 8192", 0),
        // A direction change (interface rule counts), a duplicate of another rule.
        replace_nth(
            &text,
            "direction = \"ingress\"\n  protocol = \"tcp\"\n  port_range = \"1000/1000\"\n  priority = 1\n  source",
            "direction = \"egress\"\n  protocol = \"tcp\"\n  port_range = \"1000/1000\"\n  priority = 1\n  destination",
            0,
        ),
        replace_nth(
            &text,
            "port_range = \"1003/1003\"\n  priority = 4\n  source = \"198.18.3.0/24\"",
            "port_range = \"1000/1000\"\n  priority = 1\n  source = \"198.18.0.0/24\"",
            0,
        ),
        // A sub-table header inside the rule.
        replace_nth(
            &text,
            "description = \"rule 6\"",
            "description = \"rule 6\"\n  [security_group.rule.extra]\n  x = 1",
            0,
        ),
        // A multi-line string.
        replace_nth(&text, "\"rule 7\"", "\"\"\"rule\n[[security_group]]\n7\"\"\"", 0),
    ];
    for (i, edit) in cases.iter().enumerate() {
        let mut reader = Reader::default();
        agree(&mut reader, &text);
        let kind = agree(&mut reader, edit);
        assert!(kind != Some(ReadKind::OneRule), "case {i} read as one rule:\n{edit}");
    }
}

#[test]
fn an_invalid_edit_reports_what_a_whole_read_reports_and_keeps_the_last_text() {
    let text = file(8);
    let mut reader = Reader::default();
    agree(&mut reader, &text);
    let bad = replace_nth(&text, "port_range = \"1003/1003\"", "port_range = \"1003/99999\"", 0);
    let errors = reader.read(&bad, FILE).expect_err("invalid");
    assert_eq!(Err(errors), parse_str(&bad, FILE));
    let syntax = replace_nth(&text, "port_range = \"1003/1003\"", "port_range = \"1003/1003", 0);
    assert_eq!(reader.read(&syntax, FILE).cloned(), parse_str(&syntax, FILE));
    // The last valid text is still the one edits are read against.
    let good = replace_nth(&text, "port_range = \"1003/1003\"", "port_range = \"3/3\"", 0);
    assert_eq!(agree(&mut reader, &good), Some(ReadKind::OneRule));
}

#[test]
fn another_file_name_is_read_whole() {
    let text = file(4);
    let mut reader = Reader::default();
    agree(&mut reader, &text);
    let edit = replace_nth(&text, "1001/1001", "1/1", 0);
    let whole = parse_str(&edit, "other.toml");
    assert_eq!(reader.read(&edit, "other.toml").cloned(), whole);
    assert_eq!(reader.last_kind(), Some(ReadKind::Whole));
}

/// One random edit of a line of a random rule: a value replaced, a line dropped,
/// duplicated or added.
fn edit(text: &str, rule: usize, line: usize, how: u8, value: u32) -> String {
    let starts: Vec<usize> = text.match_indices("  [[security_group.rule]]").map(|(i, _)| i).collect();
    let start = starts[rule % starts.len()];
    let end = starts.get(rule % starts.len() + 1).copied().unwrap_or(text.len());
    let lines: Vec<&str> = text[start..end].split_inclusive('\n').collect();
    let n = line % lines.len();
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    match how % 6 {
        0 => out[n] = format!("  port_range = \"{value}/{value}\"\n"),
        1 => out[n] = format!("  priority = {}\n", value % 120),
        2 => out[n] = String::new(),
        3 => out.insert(n, out[n].clone()),
        4 => out[n] = format!("  source = \"198.18.{}.0/{}\"\n", value % 256, 16 + value % 17),
        _ => out.insert(n, format!("  # note {value}\n\n")),
    }
    format!("{}{}{}", &text[..start], out.concat(), &text[end..])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Sequences of random edits (valid or not, inside one rule or breaking its table),
    /// each read after the one before: the reader always agrees with a whole read.
    #[test]
    fn random_edit_sequences_agree_with_whole_reads(
        steps in proptest::collection::vec((0usize..40, 0usize..10, 0u8..6, 0u32..70000), 1..12)
    ) {
        let mut text = file(16);
        let mut reader = Reader::default();
        agree(&mut reader, &text);
        for (rule, line, how, value) in steps {
            // Invalid edits are read too; the next one edits the last valid text.
            let edited = edit(&text, rule, line, how, value);
            if agree(&mut reader, &edited).is_some() {
                text = edited;
            }
        }
    }
}

/// The same over one long seeded sequence, which also shows the short way is the one
/// most such edits take (so the agreement above is not only whole reads agreeing).
#[test]
fn a_long_edit_sequence_agrees_and_mostly_reads_one_rule() {
    let mut text = file(24);
    let mut reader = Reader::default();
    agree(&mut reader, &text);
    let mut state = 0x5eed_u64;
    let mut next = |n: u64| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) % n) as u32
    };
    let (mut one_rule, mut valid) = (0, 0);
    let steps = 300;
    for _ in 0..steps {
        let (rule, line, how, value) = (next(40) as usize, next(10) as usize, next(6) as u8, next(70_000));
        // Each edit of the last valid text.
        let edited = edit(&text, rule, line, how, value);
        match agree(&mut reader, &edited) {
            Some(kind) => {
                valid += 1;
                one_rule += usize::from(kind == ReadKind::OneRule);
                text = edited;
            }
            None => continue,
        }
    }
    // Valid edits that do not read as one rule touch a header (or repeat a rule).
    assert!(valid * 4 >= steps && one_rule * 3 >= valid * 2, "{one_rule} of {valid} valid edits read as one rule");
}

#[test]
fn a_rule_left_out_as_a_duplicate_comes_back_when_the_rule_it_repeats_changes() {
    // Rule 1 repeated at the end (another description): the validator keeps the first.
    let mut text = file(6);
    let repeat = "  [[security_group.rule]] # again\n  direction = \"ingress\"\n  protocol = \"tcp\"\n  \
                  port_range = \"1001/1001\"\n  priority = 2\n  source_prefix_list = \"pl-1\"\n  description = \"again\"\n\n";
    text = replace_nth(&text, "[[interface]]", &format!("{repeat}[[interface]]"), 0);
    let mut reader = Reader::default();
    agree(&mut reader, &text);
    let rules = parse_str(&text, FILE).expect("valid").groups[1].rules.len();
    assert_eq!(rules, 6, "the repeat is left out");
    // Another rule of that group: read alone.
    let other = replace_nth(&text, "1004/1004", "4/4", 0);
    assert_eq!(agree(&mut reader, &other), Some(ReadKind::OneRule));
    // The repeated rule: the repeat comes back, which only a whole read sees.
    let changed = replace_nth(&other, "1001/1001", "1/1", 0);
    assert_eq!(agree(&mut reader, &changed), Some(ReadKind::Whole));
    assert_eq!(reader.read(&changed, FILE).expect("valid").groups[1].rules.len(), 7);
}

/// A one-rule read records the edited rule and the config it was made to; a whole read
/// and a copy record none.
#[test]
fn one_rule_reads_record_their_edit_in_the_lineage() {
    let mut reader = Reader::default();
    let text = file(20);
    let first = reader.read(&text, FILE).expect("valid").lineage.serial();
    let edited = replace_nth(&text, "port_range = \"1005/1005\"", "port_range = \"2005/2005\"", 0);
    let second = {
        let cfg = reader.read(&edited, FILE).expect("valid");
        let edit = cfg.lineage.edit_of(Some(first)).expect("an edit of the first read");
        let rule = cfg.rules().find(|r| r.port_range.first == 2005).expect("the edited rule");
        assert_eq!((edit.rule_id, edit.rank_before), (rule.id, rule.rank()));
        assert_eq!(cfg.clone().lineage.edit_of(Some(first)), None, "a copy is detached");
        cfg.lineage.serial()
    };
    assert_eq!(reader.last_kind(), Some(ReadKind::OneRule));
    let whole = reader.read(&edited.replace("max_sessions = 4096", "max_sessions = 4000"), FILE).expect("valid");
    assert_eq!(whole.lineage.edit_of(Some(second)), None);
    assert_eq!(reader.last_kind(), Some(ReadKind::Whole));
}
