use super::*;
use crate::{PacketMeta, Session, SessionKey, Timeouts, family, ip_proto, session::state, session::tcp_flag};

fn meta(protocol: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> PacketMeta {
    let mut m = PacketMeta { family: family::IPV4, protocol, src_port: sport, dst_port: dport, ..Default::default() };
    m.src[..4].copy_from_slice(&src);
    m.dst[..4].copy_from_slice(&dst);
    m
}

fn reversed(m: &PacketMeta) -> PacketMeta {
    PacketMeta { src: m.dst, dst: m.src, src_port: m.dst_port, dst_port: m.src_port, ..*m }
}

fn session(created_ns: u64) -> Session {
    Session {
        last_seen_ns: created_ns,
        created_ns,
        packets: 3,
        rule_id: 7,
        generation: 2,
        state: state::TCP_ESTABLISHED,
        ..Default::default()
    }
}

#[test]
fn layouts_have_no_implicit_padding() {
    assert_eq!(size_of::<FlowCacheEntry>(), 16 + 16 + 2 + 2 + 4 + 4 + 4 + 2 + 2 + 4 + 8 * 8 + 4 + 4);
    // Two cache lines.
    assert_eq!(size_of::<FlowCacheEntry>(), 128);
    assert_eq!(size_of::<FlowCacheSlot>(), 2 * size_of::<FlowCacheEntry>());
}

#[test]
fn both_directions_and_the_session_key_share_a_slot_with_one_entry_each() {
    let m = meta(ip_proto::TCP, [198, 18, 0, 1], 40000, [198, 18, 0, 2], 80);
    let (slot, dir) = position(3, &m);
    let (back_slot, back_dir) = position(3, &reversed(&m));
    assert_eq!(slot, back_slot);
    assert_ne!(dir, back_dir);
    let (key, _) = SessionKey::of(3, &m);
    assert_eq!(slot_of_key(&key), slot);
    assert!(slot < FLOW_CACHE_SLOTS);
}

#[test]
fn slots_spread_flows() {
    let mut used = std::collections::HashSet::new();
    for port in 0..4096u16 {
        let m = meta(ip_proto::UDP, [198, 19, (port >> 8) as u8, port as u8], 40000 + port, [198, 18, 0, 2], 53);
        used.insert(position(1, &m).0);
    }
    // 4,096 flows over 8,192 slots: a good spread fills most of the expected ~3,200.
    assert!(used.len() > 2_800, "{} distinct slots", used.len());
}

#[test]
fn slots_spread_ipv6_flows_that_differ_in_the_address_or_the_port() {
    let v6 = |i: u16, port: u16| {
        let mut m = PacketMeta { family: family::IPV6, protocol: ip_proto::TCP, ..Default::default() };
        m.src[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        m.src[14..].copy_from_slice(&i.to_be_bytes());
        m.dst[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        m.dst[15] = 1;
        (m.src_port, m.dst_port) = (port, 443);
        m
    };
    let by_address: std::collections::HashSet<_> = (0..4096).map(|i| position(1, &v6(i, 40000)).0).collect();
    let by_port: std::collections::HashSet<_> = (0..4096).map(|p| position(1, &v6(7, 30000 + p)).0).collect();
    assert!(by_address.len() > 2_800, "{} distinct slots by address", by_address.len());
    assert!(by_port.len() > 2_800, "{} distinct slots by port", by_port.len());
}

#[test]
fn only_packets_that_cannot_change_a_stable_state_may_hit() {
    let mut m = meta(ip_proto::TCP, [198, 18, 0, 1], 40000, [198, 18, 0, 2], 80);
    m.tcp_flags = tcp_flag::ACK;
    assert!(packet_may_hit(&m));
    for flag in [tcp_flag::SYN, tcp_flag::FIN, tcp_flag::RST] {
        m.tcp_flags = tcp_flag::ACK | flag;
        assert!(!packet_may_hit(&m), "flags {:#x}", m.tcp_flags);
    }
    m.tcp_flags = tcp_flag::ACK;
    m.fragment = crate::fragment::FIRST;
    assert!(!packet_may_hit(&m), "fragments take the slow path");
    let mut icmp = meta(ip_proto::ICMP, [198, 18, 0, 1], 0, [198, 18, 0, 2], 0);
    icmp.icmp_type = 3;
    assert!(!packet_may_hit(&icmp), "ICMP errors are not session packets");
    icmp.icmp_type = 0;
    assert!(packet_may_hit(&icmp));
    for s in [state::TCP_ESTABLISHED, state::UDP_REPLIED, state::ICMP, state::OTHER] {
        assert!(state_is_stable(s));
    }
    for s in [
        state::TCP_SYN_SENT,
        state::TCP_SYN_RECEIVED,
        state::TCP_FIN_FROM_OPENER,
        state::TCP_FIN_FROM_RESPONDER,
        state::TCP_CLOSING,
        state::TCP_CLOSED,
        state::UDP_UNREPLIED,
    ] {
        assert!(!state_is_stable(s), "state {s}");
    }
    // A packet that may hit leaves every stable state as it is (checked against the
    // state machine both ways).
    for s in [state::TCP_ESTABLISHED, state::UDP_REPLIED, state::ICMP, state::OTHER] {
        for from_opener in [false, true] {
            let proto = match s {
                state::TCP_ESTABLISHED => ip_proto::TCP,
                state::UDP_REPLIED => ip_proto::UDP,
                state::ICMP => ip_proto::ICMP,
                _ => ip_proto::GRE,
            };
            for flags in [0, tcp_flag::ACK, tcp_flag::ACK | 0x08] {
                let mut p = meta(proto, [198, 18, 0, 1], 1, [198, 18, 0, 2], 2);
                p.tcp_flags = if proto == ip_proto::TCP { flags } else { 0 };
                assert!(packet_may_hit(&p));
                assert_eq!(crate::session::next_state(s, from_opener, &p), s);
            }
        }
    }
}

#[test]
fn validity_is_half_the_shortest_timeout_and_at_most_a_second() {
    assert_eq!(validity(&Timeouts::default()), MAX_VALIDITY_NS);
    let short = Timeouts { tcp_rst: 1_000_000_000, ..Timeouts::default() };
    assert_eq!(validity(&short), 500_000_000);
    assert_eq!(validity_jiffies(&short, 4_000_000), 125, "HZ=250");
    assert_eq!(validity_jiffies(&short, 0), 500_000_000, "no division by zero");
}

#[test]
fn an_entry_is_trusted_only_for_its_tuple_generation_epoch_and_time() {
    let m = meta(ip_proto::TCP, [198, 18, 0, 1], 40000, [198, 18, 0, 2], 80);
    let tuple = Tuple::of(3, 1, &m);
    let s = session(1_000);
    let mut e = FlowCacheEntry::default();
    e.confirm((&m, &tuple, &s), (2, 0, 1), (5, (2_000, 20)), 100);
    assert!(e.is_for(&tuple, &m));
    assert!(!e.is_for(&Tuple::of(3, 2, &m), &m), "the other hook");
    assert!(!e.is_for(&Tuple::of(4, 1, &m), &m), "another interface");
    let other_port = meta(ip_proto::TCP, [198, 18, 0, 1], 40001, [198, 18, 0, 2], 80);
    assert!(!e.is_for(&Tuple::of(3, 1, &other_port), &other_port));
    let back = reversed(&m);
    assert!(!e.is_for(&Tuple::of(3, 2, &back), &back), "the reverse direction has its own entry");
    assert!(e.same_flow(&Tuple::of(3, 2, &back), &back));
    assert!(!e.same_flow(&Tuple::of(3, 2, &other_port), &other_port));
    assert!(e.trusted(2, 5, 119));
    assert!(!e.trusted(2, 5, 120), "validity over");
    assert!(!e.trusted(3, 5, 50), "configuration changed");
    assert!(!e.trusted(2, 6, 50), "sessions flushed");
    e.hit(25, 100, 0);
    e.hit(26, 100, 0);
    assert_eq!((e.packets, e.last_hit_jiffies, e.rule_id), (2, 26, 7));
    assert_eq!(e.last_hit_ns(10), 2_000 + 6 * 10, "jiffies since the entry was made, in ns");
    assert_eq!(e.drain(), (2, 200), "hits and their bytes, for the rule's counters");
    assert_eq!(e.drain(), (0, 0), "taken once");
    assert_eq!(e.packets, 2, "the session's count is folded separately");
}

#[test]
fn hits_fold_into_their_own_session_once() {
    let m = meta(ip_proto::UDP, [198, 18, 0, 1], 5000, [198, 18, 0, 2], 53);
    let tuple = Tuple::of(3, 1, &m);
    let (key, _) = SessionKey::of(3, &m);
    let mut s = session(1_000);
    let mut e = FlowCacheEntry::default();
    e.confirm((&m, &tuple, &s), (2, 0, 1), (5, (2_000, 20)), 100);
    e.hit(21, 100, 0);
    e.hit(22, 100, 0);
    assert_eq!(e.pending_for(&key, &s, 5, 10), Some((2, 2_020)));
    assert_eq!(e.pending_for(&key, &s, 6, 10), None, "older epoch");
    assert_eq!(e.pending_for(&key, &session(999), 5, 10), None, "another incarnation");
    let (other_key, _) = SessionKey::of(4, &m);
    assert_eq!(e.pending_for(&other_key, &s, 5, 10), None, "another flow");
    e.fold_into(&mut s, 5, 10);
    assert_eq!((s.packets, s.last_seen_ns), (5, 2_020));
    e.fold_into(&mut s, 5, 10);
    assert_eq!(s.packets, 5, "folded once");
    assert_eq!(e.pending_for(&key, &s, 5, 10), None);
    let mut other = session(999);
    e.hit(23, 100, 0);
    e.fold_into(&mut other, 5, 10);
    assert_eq!(other.packets, 3, "another incarnation gets nothing");
}
