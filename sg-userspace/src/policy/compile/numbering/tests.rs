use super::*;
use crate::policy::compile::{
    CompileCache, compile,
    incremental::tests::{Lcg, assert_same_decisions, rules_file},
};
use crate::policy::config::{Config, Direction, Peer, parse_str};

#[test]
fn equal_items_stay_where_they_are_and_new_ones_take_free_places() {
    let slots = [Some('a'), Some('b'), None, Some('c'), Some('b')];
    // 'b' twice in the slots: one item takes one of them.
    assert_eq!(place(&['c', 'b', 'x'], &slots), Some(vec![3, 1, 2]));
    // A new item's own index first when it is free, else the lowest free one.
    assert_eq!(place(&['x', 'y', 'a'], &slots), Some(vec![1, 2, 0]));
    assert_eq!(place(&['a'; 6], &slots), None, "a range shorter than the items");
}

#[test]
fn children_come_before_their_parents() {
    // 0 -> {2, 3}, 3 -> {1}
    let children = |i: usize| match i {
        0 => vec![2, 3],
        3 => vec![1],
        _ => vec![],
    };
    let order = children_first(4, children);
    let at = |n: usize| order.iter().position(|&x| x == n).unwrap();
    assert_eq!(order.len(), 4);
    assert!(at(2) < at(0) && at(3) < at(0) && at(1) < at(3));
}

/// How many pooled entries of `new` are equal to `old`'s at the same number.
fn kept(new: &Compiled, old: &Compiled) -> usize {
    fn same<T: PartialEq>(a: &[T], b: &[T]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x == y).count()
    }
    same(&new.vectors, &old.vectors) + same(&new.chunks, &old.chunks) + same(&new.port_blocks, &old.port_blocks)
}

fn pooled(c: &Compiled) -> usize {
    c.vectors.len() + c.chunks.len() + c.port_blocks.len()
}

/// `cfg` with the `nth` CIDR peer narrowed to its first quarter: a change the
/// incremental compile does not take, compiled whole.
fn narrowed(cfg: &Config, nth: usize) -> Config {
    let mut next = cfg.clone();
    let rule = next.groups[0].rules.iter_mut().filter(|r| matches!(r.peer, Peer::Cidr(_))).nth(nth).expect("a rule");
    if let Peer::Cidr(net) = rule.peer {
        let longer = net.prefix_len().saturating_add(2).min(net.max_prefix_len());
        rule.peer = Peer::Cidr(net.subnets(longer).expect("longer").next().expect("a subnet"));
    }
    next
}

/// A set compiled whole after a peer changed decides as a plain compile, yet keeps most
/// entries at the numbers the set before had them at, where the plain compile's
/// numbering has shifted them; and a chain of such changes stays within the garbage
/// bound and keeps deciding right.
#[test]
fn a_set_compiled_whole_keeps_the_numbers_of_the_set_before() {
    let mut rng = Lcg(0xbead);
    let base = parse_str(&rules_file(600, &mut rng), "n.toml").unwrap_or_else(|e| panic!("{}", e.errors[0]));
    let iface = base.interfaces[0].clone();
    let mut cache = CompileCache::default();
    let before = cache.compile(&base, &iface, Direction::Ingress).expect("compiles");
    let mut cfg = narrowed(&base, 3);
    let plain = compile(&cfg, &iface, Direction::Ingress).expect("compiles");
    let renumbered = cache.compile(&cfg, &iface, Direction::Ingress).expect("compiles");
    assert_eq!(cache.recompiled, 0, "a peer change compiles whole");
    assert_same_decisions(&renumbered, &plain, &cfg);
    let (kept_plain, kept_renumbered) = (kept(&plain, &before), kept(&renumbered, &before));
    assert!(kept_renumbered * 10 > pooled(&renumbered) * 9, "{kept_renumbered} of {} kept", pooled(&renumbered));
    assert!(kept_plain < kept_renumbered, "the plain compile kept {kept_plain}, renumbered {kept_renumbered}");
    for nth in [40, 7, 150, 90, 12, 300, 41, 5] {
        cfg = narrowed(&cfg, nth);
        let next = cache.compile(&cfg, &iface, Direction::Ingress).expect("compiles");
        assert_same_decisions(&next, &compile(&cfg, &iface, Direction::Ingress).expect("compiles"), &cfg);
    }
}
