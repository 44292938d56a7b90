//! An agent's successor takes over the maps it filled, from nothing but the state it
//! recorded (BPF_PROG_TEST_RUN, random rule files): the adoption rewrites nothing, the
//! applies that follow go into free space beside the live rules and retire them without
//! leaving trie entries behind, the kernel keeps agreeing with the reference evaluator
//! throughout, and a record the maps no longer match is refused.
//!
//! `SG_ADOPT_CASES` (default 40) pairs of rule files.

use std::{path::PathBuf, time::Duration};

use sg_tests::{
    r#gen::{self as generator, Case, GenOptions},
    kernel::kernel_tests_enabled,
    testrun::{TEST_RUN_IFINDEX, compare, frame_for, hook_for, named, run, test_capacity},
};
use sgctl::{
    control::{
        Enforcer, compile_targets,
        enforcer::{AdoptError, CompiledInterface, EnforcerState},
    },
    dataplane::{
        Dataplane, LoadOptions,
        pins::{Generation, Pins, pin_objects},
        sessions,
    },
};

/// Removes the test's pin directory, also when the test panics.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every probe of `case` on its first interface, judged alone, against the reference.
fn agrees(dp: &mut Dataplane, enforcer: &mut Enforcer, case: &Case, when: &str) {
    let binding = &case.config.interfaces[0];
    for probe in case.packets.iter().filter(|p| p.iface == binding.name) {
        enforcer.sessions().flush().unwrap();
        let got = run(dp, hook_for(probe.direction), &frame_for(&probe.packet)).unwrap();
        if let Err(e) = compare(&case.config, binding, probe.direction, &probe.packet, &named(enforcer, got)) {
            panic!("seed {} {when}: {e}\n{}", case.seed, case.toml);
        }
    }
}

fn compiled(case: &Case) -> Vec<CompiledInterface> {
    compile_targets(&case.config, &[(TEST_RUN_IFINDEX, &case.config.interfaces[0])]).unwrap()
}

/// Trie entries the rule sets of `compiled` write.
fn trie_entries(compiled: &[CompiledInterface]) -> usize {
    compiled.iter().flat_map(|c| [&c.ingress, &c.egress]).map(|r| r.addr_entries.len() + r.port_entries.len()).sum()
}

/// Every rule set of `after` lies outside those of `live`: its slot and every index range.
fn beside(live: &EnforcerState, after: &EnforcerState, seed: u64) {
    let disjoint = |a: &std::ops::Range<u32>, b: &std::ops::Range<u32>| {
        a.is_empty() || b.is_empty() || a.end <= b.start || b.end <= a.start
    };
    for old in live.interfaces.iter().flat_map(|i| [&i.ingress, &i.egress]) {
        for new in after.interfaces.iter().flat_map(|i| [&i.ingress, &i.egress]) {
            assert!(
                old.slot != new.slot
                    && disjoint(&old.vectors, &new.vectors)
                    && disjoint(&old.rules, &new.rules)
                    && disjoint(&old.tables, &new.tables)
                    && disjoint(&old.blocks, &new.blocks),
                "seed {seed}: the new rule set {new:?} was written over the live one {old:?}"
            );
        }
    }
}

#[test]
fn a_successor_adopts_without_rewriting_and_applies_beside_the_live_rules() {
    if !kernel_tests_enabled("a_successor_adopts_without_rewriting") {
        return;
    }
    let cases: u64 = std::env::var("SG_ADOPT_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let dir = PathBuf::from(format!("/sys/fs/bpf/sgt-adopt-{}", std::process::id()));
    let _remove = RemoveDir(dir.clone());
    let (pins, _) = Pins::open(&dir).expect("a pin directory on the BPF filesystem");
    // A small session table: every probe flushes it, and flushing scans every bucket.
    let capacity = test_capacity();
    // One load for every case (verifying the programs is most of a case's cost): each
    // case starts from maps its predecessor cleared.
    let id = 1;
    let mut dp = Dataplane::load(&LoadOptions { trace: true, capacity, ..LoadOptions::default() }).expect("load");
    pin_objects(&mut dp, &pins, id).expect("pin");
    for seed in 0..cases {
        let (a, b) = (
            generator::case(2 * seed + 1, &GenOptions::default(), 20),
            generator::case(2 * seed + 2, &GenOptions::default(), 20),
        );
        let (ca, cb) = (compiled(&a), compiled(&b));
        // The first agent fills the maps, records where, and goes.
        let handles_of = |e: &Enforcer| {
            let mut all: Vec<_> = e.handles().in_use().map(|(h, u)| (h, u.key.clone(), u.rule_id)).collect();
            all.sort_by_key(|(h, ..)| *h);
            all
        };
        let (recorded, handles) = {
            let mut first = Generation::open(&pins, id).unwrap();
            let mut enforcer = Enforcer::new(&mut first, &capacity).unwrap();
            enforcer.set_grace_period(Duration::ZERO);
            enforcer.apply_compiled(&a.config, &ca).unwrap();
            enforcer.retire_pending();
            (enforcer.state(), handles_of(&enforcer))
        };
        // Its successor knows only the record and the rule file.
        let mut second = Generation::open(&pins, id).unwrap();
        let timeouts = sessions::timeouts(&a.config.sessions);
        let mut enforcer =
            Enforcer::adopt(&mut second, &capacity, &recorded, (&a.config, &ca), timeouts).expect("adopt");
        enforcer.set_grace_period(Duration::ZERO);
        assert_eq!(enforcer.state(), recorded, "seed {seed}: adopting changed nothing");
        assert_eq!(handles_of(&enforcer), handles, "seed {seed}: every rule keeps its counters' handle");
        assert_eq!(enforcer.trie_entries().unwrap(), trie_entries(&ca), "seed {seed}: the live entries only");
        agrees(&mut dp, &mut enforcer, &a, "after the adoption");
        // Applies after it land beside the live rules (written while those were still in
        // force: no range may overlap them), and retire them completely.
        enforcer.apply_compiled(&b.config, &cb).unwrap();
        beside(&recorded, &enforcer.state(), seed);
        enforcer.retire_pending();
        assert_eq!(enforcer.trie_entries().unwrap(), trie_entries(&cb), "seed {seed}: a's entries retired");
        agrees(&mut dp, &mut enforcer, &b, "after the successor's first apply");
        enforcer.apply_compiled(&a.config, &ca).unwrap();
        enforcer.retire_pending();
        assert_eq!(enforcer.trie_entries().unwrap(), trie_entries(&ca), "seed {seed}: b's entries retired");
        agrees(&mut dp, &mut enforcer, &a, "after the successor's second apply");
        // The first record no longer describes the maps: another adoption is refused.
        let mut third = Generation::open(&pins, id).unwrap();
        let stale = Enforcer::adopt(&mut third, &capacity, &recorded, (&a.config, &ca), timeouts);
        assert!(matches!(stale, Err(AdoptError::Stale(_))), "seed {seed}: a stale record is refused");
        // Nothing of this case stays for the next.
        enforcer.clear(TEST_RUN_IFINDEX).unwrap();
        assert_eq!(enforcer.trie_entries().unwrap(), 0, "seed {seed}: cleared");
        drop((enforcer, second, third));
    }
    drop(dp);
    pins.remove_generation(id).unwrap();
    eprintln!("adoption: {cases} pairs of rule files, adopted, applied twice, 0 mismatches");
}
