use sg_common::CHUNK_WORDS;

use super::*;
use crate::policy::{
    compile::{CompileCache, compile},
    config::{Config, Direction, parse_str},
};

/// `n` ingress rules over varied ports and sources; `moved` moves that rule's port up by
/// one, `extra` adds one rule from a network no other rule names.
fn rules(n: usize, moved: Option<usize>, extra: bool) -> Compiled {
    let cfg = rules_file(n, moved, extra);
    compile(&cfg, &cfg.interfaces[0], Direction::Ingress).unwrap()
}

/// [`rules`] compiled through `cache`, as the agent compiles each rule file after the
/// one before.
fn rules_after(cache: &mut CompileCache, n: usize, moved: Option<usize>, extra: bool) -> Compiled {
    let cfg = rules_file(n, moved, extra);
    (*cache.compile(&cfg, &cfg.interfaces[0], Direction::Ingress).unwrap()).clone()
}

fn rules_file(n: usize, moved: Option<usize>, extra: bool) -> Config {
    let mut text = String::from("[[security_group]]\nid = \"sg-a\"\nmembers = [\"198.18.0.10\", \"2001:db8::10\"]\n");
    for i in 0..n {
        let port = 1000 + (i * 37) % 3000 + usize::from(moved == Some(i));
        let (proto, range) = match i % 3 {
            0 => ("tcp", format!("  port_range = \"{port}/{port}\"\n")),
            1 => ("udp", format!("  port_range = \"{port}/{}\"\n", port + i % 300)),
            _ => ("icmp", String::new()),
        };
        let source = match i % 6 {
            0 => format!("198.{}.0.0/16", 18 + i % 2),
            1 | 2 => format!("198.18.{}.0/24", (i / 7) % 256),
            3 => format!("2001:db8:{:x}::/48", i % 4096),
            _ => format!("198.19.{}.{}", (i / 5) % 256, i % 256),
        };
        text += &format!(
            "\n  [[security_group.rule]]\n  direction = \"ingress\"\n  protocol = \"{proto}\"\n{range}  source = \
             \"{source}\"\n"
        );
    }
    if extra {
        text += "\n  [[security_group.rule]]\n  direction = \"ingress\"\n  protocol = \"tcp\"\n  port_range = \
                 \"61000/61010\"\n  source = \"203.0.113.0/25\"\n";
    }
    text += "\n[[interface]]\nname = \"eth0\"\nsecurity_groups = [\"sg-a\"]\n";
    parse_str(&text, "a.toml").unwrap()
}

const BASES: Bases = Bases { vectors: 1000, chunks: 2000, blocks: 3000 };

/// Ranges a little longer than `c` needs, contents unknown.
fn fresh(c: &Compiled) -> Contents {
    let lens =
        [c.vectors.len(), c.chunks.len(), c.peer_v6.len(), c.rules.len(), c.port_tables.len(), c.port_blocks.len()];
    Contents::unknown(lens.map(|n| n + n / 8 + 4))
}

fn handles(c: &Compiled) -> Vec<u32> {
    (0..c.rules.len() as u32).map(|i| 7 + i).collect()
}

/// The words of the vector the maps number `at`, read from `image`.
fn image_words(image: &Contents, at: u32, words: usize) -> Vec<u64> {
    let v = image.vectors[(at - BASES.vectors) as usize].expect("a written vector");
    (0..words)
        .map(|w| {
            image.chunks[(v.chunks[w / CHUNK_WORDS] - BASES.chunks) as usize].expect("a written chunk").words
                [w % CHUNK_WORDS]
        })
        .collect()
}

/// Entry `compiled` of `c` and entry `image` of the maps answer alike: the same vector
/// words, or blocks answering alike entry by entry.
fn same_answer(c: &Compiled, image: &Contents, compiled: u32, written: u32) {
    if compiled & PORT_BLOCK_REF != 0 {
        assert_ne!(written & PORT_BLOCK_REF, 0, "a block stays a block");
        let a = c.port_blocks[(compiled & !PORT_BLOCK_REF) as usize];
        let b = image.blocks[((written & !PORT_BLOCK_REF) - BASES.blocks) as usize].expect("a written block");
        for (x, y) in a.entries.iter().zip(&b.entries) {
            same_answer(c, image, *x, *y);
        }
    } else if compiled & PEER_V6_BOUNDS != 0 {
        assert_eq!(compiled, written);
    } else {
        assert_eq!(c.vector_words(compiled), image_words(image, written, c.words()));
    }
}

/// Everything `c` decides, read back through `image` as the kernel would.
fn check_image(c: &Compiled, image: &Contents, plan: &Plan) {
    for (t, table) in c.port_tables.iter().enumerate() {
        let written = image.tables[t].expect("a written table");
        for (x, y) in table.entries.iter().zip(&written.entries) {
            same_answer(c, image, *x, *y);
        }
    }
    for (i, bound) in c.peer_v6.iter().enumerate() {
        let written = image.peer_v6[i].expect("a written bound");
        assert_eq!(written.start, bound.start);
        assert_eq!(c.vector_words(bound.vector), image_words(image, written.vector, c.words()));
    }
    for (band, root) in c.bands.iter().zip(&plan.peer_v6_roots) {
        same_answer(c, image, band.peer_v6_root, *root);
    }
    for (i, info) in c.rules.iter().enumerate() {
        assert_eq!(image.rules[i], Some(RuleInfo { rule_id: handles(c)[i], ..*info }));
    }
    for i in 0..c.vectors.len() as u32 {
        assert_eq!(c.vector_words(i), image_words(image, BASES.vectors + i, c.words()));
    }
}

/// Plans `c` over `image` and records the writes in it.
fn write(c: &Compiled, image: &mut Contents) -> Plan {
    let plan = plan_at_own_index(c, &handles(c), image, BASES).expect("fits");
    image.record(&plan);
    check_image(c, image, &plan);
    plan
}

#[test]
fn unknown_contents_are_written_whole_and_known_ones_not_again() {
    let c = rules(1500, None, false);
    let mut image = fresh(&c);
    let first = write(&c, &mut image);
    let whole =
        c.vectors.len() + c.chunks.len() + c.peer_v6.len() + c.rules.len() + c.port_tables.len() + c.port_blocks.len();
    assert_eq!(first.entries(), whole);
    assert!(c.words() > 2 * CHUNK_WORDS, "several chunks a vector");
    let again = write(&c, &mut image);
    assert_eq!(again.entries(), 0, "{again:?}");
}

/// Fresh ranges take the whole plan (`plan_whole`): the same writes as a content plan
/// over unknown contents, each entry at its own index, and the image answers as the set.
#[test]
fn fresh_ranges_are_planned_whole_at_each_index() {
    let c = rules(1500, None, false);
    let image = fresh(&c);
    assert!(image.nothing_known);
    let whole = plan_whole(&c, &handles(&c), &image, BASES).expect("fits");
    let placed = plan_at_own_index(&c, &handles(&c), &image, BASES).expect("fits");
    assert_eq!(whole.entries(), placed.entries());
    assert_eq!((&whole.chunks, &whole.vectors, &whole.blocks), (&placed.chunks, &placed.vectors, &placed.blocks));
    assert_eq!(
        (&whole.tables, &whole.rules, &whole.peer_v6_roots),
        (&placed.tables, &placed.rules, &placed.peer_v6_roots)
    );
    let mut written = image.clone();
    written.record(&whole);
    assert!(!written.nothing_known, "recorded contents are known");
    check_image(&c, &written, &whole);
    let small = fresh(&rules(200, None, false));
    assert!(plan_whole(&c, &handles(&c), &small, BASES).is_none(), "ranges too short");
}

/// Compiled after the set before (through the compile cache, as the agent compiles), a
/// one-rule change writes a few entries over that set's contents, and so does a change
/// compiled whole (a rule added); a sequence of changes, each over the contents two sets
/// back (as the enforcer alternates ranges), always reads back as the set compiled.
#[test]
fn a_one_rule_change_writes_only_what_changed() {
    let mut cache = CompileCache::default();
    let base = rules_after(&mut cache, 1500, None, false);
    let mut image = fresh(&base);
    let whole = write(&base, &mut image).entries();
    let moved = rules_after(&mut cache, 1500, Some(3), false);
    let changed = write(&moved, &mut image);
    assert!(changed.entries() > 0);
    assert!(changed.entries() * 20 < whole, "{} of {whole} entries", changed.entries());
    // A rule added at the end, from a network no other rule names: new peer-table
    // blocks, and the pseudo-rules after the user rules move one bit, which changes
    // every vector's last chunk; most port and peer blocks stay where they were.
    let grown = rules_after(&mut cache, 1500, Some(3), true);
    let added = write(&grown, &mut image);
    assert!(
        added.blocks.len() * 4 < grown.port_blocks.len(),
        "{} of {} blocks",
        added.blocks.len(),
        grown.port_blocks.len()
    );
    assert!(added.entries() < whole);

    let mut cache = CompileCache::default();
    let sets = [(1500, None, false), (1500, Some(3), false), (1500, Some(3), true), (1500, Some(700), true)]
        .into_iter()
        .chain([(1499, None, false), (1500, Some(9), false)])
        .map(|(n, moved, extra)| rules_after(&mut cache, n, moved, extra))
        .collect::<Vec<_>>();
    let mut ranges = [fresh(&sets[0]), fresh(&sets[0])];
    for (i, c) in sets.iter().enumerate() {
        write(c, &mut ranges[i % 2]);
    }
}

#[test]
fn a_set_larger_than_its_ranges_does_not_fit() {
    let small = rules(200, None, false);
    let large = rules(1500, None, false);
    let image = fresh(&small);
    assert!(plan_at_own_index(&large, &handles(&large), &image, BASES).is_none());
}

/// Plans `c` over `image` holding `was` at its numbering, records the writes and checks
/// the image answers as `c`.
fn write_in_place(c: &Compiled, was: &Compiled, image: &mut Contents) -> Plan {
    let plan = plan_in_place(c, &handles(c), was, &handles(was), image, BASES).expect("fits");
    image.record(&plan);
    check_image(c, image, &plan);
    plan
}

/// Over ranges holding a set at its numbering, the next set is compared entry by entry:
/// equal entries are not written, and the image answers as the new set, also for sets
/// numbered otherwise (a rule added) and in alternating ranges.
#[test]
fn in_place_plans_write_what_differs_from_the_set_the_ranges_hold() {
    let base = rules(1500, None, false);
    let mut image = fresh(&base);
    write(&base, &mut image);
    let none = write_in_place(&base, &base, &mut image);
    assert_eq!(none.entries(), 0, "the same set writes nothing");
    // The same set with one vector's chunk and one block changed in place.
    let mut edited = base.clone();
    edited.vectors[5].chunks[0] = edited.vectors[6].chunks[0];
    let block = &mut edited.port_blocks[0].entries;
    let other = block.iter().position(|&e| e != block[0]).expect("a block of two entries at least");
    block[0] = block[other];
    let plan = write_in_place(&edited, &base, &mut image);
    assert_eq!((plan.vectors.len(), plan.blocks.len(), plan.entries()), (1, 1, 2));
    // Sets numbered otherwise, over the set two back, as the enforcer alternates.
    let sets = [base.clone(), rules(1500, Some(3), true), rules(1499, None, false), rules(1500, Some(9), false)];
    let mut ranges = [fresh(&sets[0]), fresh(&sets[0])];
    for (i, c) in sets.iter().enumerate() {
        if i < 2 {
            write(c, &mut ranges[i % 2]);
        } else {
            write_in_place(c, &sets[i - 2], &mut ranges[i % 2]);
        }
    }
}
