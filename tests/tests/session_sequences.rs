//! Session behaviour in the kernel, packet by packet through BPF_PROG_TEST_RUN: ingress
//! packets run on XDP, egress packets on TC, as on a real interface.

use std::time::Duration;

use sg_common::{
    session::{state, table},
    stats, step, verdict,
};
use sg_tests::{
    frames::*,
    kernel::kernel_tests_enabled,
    testrun::{Hook, Outcome, TEST_RUN_IFINDEX, run},
};
use sgctl::{
    control::Enforcer,
    dataplane::{Capacity, Dataplane, LoadOptions},
    policy::config::{Config, parse_str},
};

const INST: [u8; 4] = [198, 18, 1, 1];
const CLIENT: [u8; 4] = [198, 18, 0, 9];
const ROUTER: [u8; 4] = [198, 18, 0, 254];

fn setup(rules: &str, kind: &str) -> (Dataplane, Enforcer, Config) {
    let text = format!(
        "[[security_group]]\nid = \"sg-i\"\ntype = \"{kind}\"\nmembers = [\"198.18.1.1\"]\n{rules}\n[[interface]]\nname = \"lo\"\nsecurity_groups = [\"sg-i\"]\n"
    );
    let cfg = parse_str(&text, "seq.toml").expect("config");
    let mut dp = Dataplane::load(&LoadOptions {
        trace: true,
        capacity: Capacity { sessions: 1024, ..Default::default() },
        ..LoadOptions::default()
    })
    .expect("load");
    let mut enforcer = Enforcer::new(&mut dp, &Capacity::default()).expect("maps");
    enforcer.set_grace_period(Duration::ZERO);
    enforcer.apply(&cfg, &[(TEST_RUN_IFINDEX, &cfg.interfaces[0])]).expect("apply");
    (dp, enforcer, cfg)
}

fn rule(proto: &str, ports: &str) -> String {
    format!(
        "[[security_group.rule]]\ndirection = \"ingress\"\nprotocol = \"{proto}\"\nport_range = \"{ports}\"\nsource = \"0.0.0.0/0\"\n"
    )
}

fn tcp_in(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ether(ETHERTYPE_IPV4, &[], &ipv4(6, CLIENT, INST, &[], Frag4::default(), &tcp(sport, dport, flags, &[])))
}

fn tcp_out(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ether(ETHERTYPE_IPV4, &[], &ipv4(6, INST, CLIENT, &[], Frag4::default(), &tcp(sport, dport, flags, &[])))
}

fn expect(o: Outcome, verdict: u8, step: u8, what: &str) {
    assert_eq!((o.decision.verdict, o.decision.step), (verdict, step), "{what}: {:?}", o.decision);
}

fn only_session_state(e: &mut Enforcer) -> u8 {
    let entries = e.sessions().entries().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries[0].1.state
}

#[test]
fn tcp_handshake_data_fin_and_rst() {
    if !kernel_tests_enabled("tcp_handshake_data_fin_and_rst") {
        return;
    }
    // Advanced: egress default drop, so every reply below passes only by its session.
    let (mut dp, mut e, _cfg) = setup(&rule("tcp", "80/80"), "advanced");
    let (x, t) = (Hook::Xdp, Hook::Tc);
    expect(run(&mut dp, x, &tcp_in(40000, 80, TCP_SYN)).unwrap(), verdict::PASS, step::RULE, "SYN");
    assert_eq!(only_session_state(&mut e), state::TCP_SYN_SENT);
    expect(run(&mut dp, t, &tcp_out(80, 40000, TCP_SYN | TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "SYN-ACK");
    assert_eq!(only_session_state(&mut e), state::TCP_SYN_RECEIVED);
    expect(run(&mut dp, x, &tcp_in(40000, 80, TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "ACK");
    assert_eq!(only_session_state(&mut e), state::TCP_ESTABLISHED);
    for _ in 0..3 {
        expect(run(&mut dp, x, &tcp_in(40000, 80, TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "data in");
        expect(run(&mut dp, t, &tcp_out(80, 40000, TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "data out");
    }
    expect(run(&mut dp, t, &tcp_out(80, 40000, TCP_FIN | TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "FIN out");
    assert_eq!(only_session_state(&mut e), state::TCP_FIN_FROM_RESPONDER);
    expect(run(&mut dp, x, &tcp_in(40000, 80, TCP_FIN | TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "FIN in");
    assert_eq!(only_session_state(&mut e), state::TCP_CLOSING);
    expect(run(&mut dp, x, &tcp_in(40000, 80, TCP_RST)).unwrap(), verdict::PASS, step::SESSION, "RST");
    assert_eq!(only_session_state(&mut e), state::TCP_CLOSED);
    // A reply without a session is classified: the advanced egress default drops it.
    expect(
        run(&mut dp, t, &tcp_out(80, 40001, TCP_SYN | TCP_ACK)).unwrap(),
        verdict::DROP,
        step::DEFAULT,
        "reply without session",
    );
    // And a mid-stream segment opens nothing, even where rules accept it.
    expect(run(&mut dp, x, &tcp_in(40002, 80, TCP_ACK)).unwrap(), verdict::PASS, step::RULE, "mid-stream ACK");
    assert_eq!(e.sessions().entries().unwrap().len(), 1, "no session for a mid-stream segment");
}

#[test]
fn related_icmp_errors_pass_only_for_live_sessions() {
    if !kernel_tests_enabled("related_icmp_errors_pass_only_for_live_sessions") {
        return;
    }
    let (mut dp, _e, _cfg) = setup(&rule("udp", "53/53"), "advanced");
    let query = ipv4(17, CLIENT, INST, &[], Frag4::default(), &udp(5353, 53, b"query"));
    expect(run(&mut dp, Hook::Xdp, &ether(ETHERTYPE_IPV4, &[], &query)).unwrap(), verdict::PASS, step::RULE, "query");
    // The instance reports the query's port unreachable: egress, quoting the query.
    let quoting = |quoted: &[u8]| {
        ether(ETHERTYPE_IPV4, &[], &ipv4(1, INST, CLIENT, &[], Frag4::default(), &icmp(3, 3, 0, 0, &quoted[..28])))
    };
    expect(run(&mut dp, Hook::Tc, &quoting(&query)).unwrap(), verdict::PASS, step::RELATED, "related error");
    let unknown = ipv4(17, CLIENT, INST, &[], Frag4::default(), &udp(5354, 53, b"other"));
    expect(run(&mut dp, Hook::Tc, &quoting(&unknown)).unwrap(), verdict::DROP, step::DEFAULT, "unrelated error");
    // An error from a router on the path, arriving on ingress, quoting our reply.
    let reply = ipv4(17, INST, CLIENT, &[], Frag4::default(), &udp(53, 5353, b"answer"));
    let from_router =
        ether(ETHERTYPE_IPV4, &[], &ipv4(1, ROUTER, INST, &[], Frag4::default(), &icmp(11, 0, 0, 0, &reply[..28])));
    expect(run(&mut dp, Hook::Xdp, &from_router).unwrap(), verdict::PASS, step::RELATED, "time exceeded");
}

#[test]
fn fragments_follow_their_first_fragment() {
    if !kernel_tests_enabled("fragments_follow_their_first_fragment") {
        return;
    }
    let (mut dp, _e, _cfg) = setup(&rule("udp", "9000/9000"), "basic");
    let first = |port: u16, id: u16| {
        ether(
            ETHERTYPE_IPV4,
            &[],
            &ipv4(17, CLIENT, INST, &[], Frag4 { more: true, offset_units: 0, id }, &udp(1, port, &[0; 64])),
        )
    };
    let later = |id: u16| {
        ether(ETHERTYPE_IPV4, &[], &ipv4(17, CLIENT, INST, &[], Frag4 { more: false, offset_units: 9, id }, &[0; 40]))
    };
    expect(run(&mut dp, Hook::Xdp, &first(9000, 1)).unwrap(), verdict::PASS, step::RULE, "allowed first");
    expect(run(&mut dp, Hook::Xdp, &later(1)).unwrap(), verdict::PASS, step::FRAGMENT, "its later fragment");
    expect(run(&mut dp, Hook::Xdp, &first(9001, 2)).unwrap(), verdict::DROP, step::DEFAULT, "dropped first");
    expect(run(&mut dp, Hook::Xdp, &later(2)).unwrap(), verdict::DROP, step::FRAGMENT, "its later fragment");
    expect(run(&mut dp, Hook::Xdp, &later(3)).unwrap(), verdict::DROP, step::FRAGMENT_UNKNOWN, "unknown datagram");
    // IPv6: the fragment header.
    let (c6, i6) = (v6("2001:db8::9"), v6("2001:db8::1:1"));
    let first6 = ether(ETHERTYPE_IPV6, &[], &ipv6(44, c6, i6, &ipv6_frag(17, 0, true, 77, &udp(1, 9000, &[0; 64]))));
    let later6 = ether(ETHERTYPE_IPV6, &[], &ipv6(44, c6, i6, &ipv6_frag(17, 9, false, 77, &[0; 40])));
    // The IPv6 peer is outside 0.0.0.0/0: the basic default drops the whole datagram.
    expect(run(&mut dp, Hook::Xdp, &first6).unwrap(), verdict::DROP, step::DEFAULT, "v6 first");
    expect(run(&mut dp, Hook::Xdp, &later6).unwrap(), verdict::DROP, step::FRAGMENT, "v6 later");
}

#[test]
fn a_generation_bump_cuts_revoked_flows_and_keeps_the_others() {
    if !kernel_tests_enabled("a_generation_bump_cuts_revoked_flows_and_keeps_the_others") {
        return;
    }
    let (mut dp, mut e, _cfg) = setup(&(rule("tcp", "80/80") + &rule("tcp", "443/443")), "basic");
    for port in [80, 443] {
        expect(run(&mut dp, Hook::Xdp, &tcp_in(40000, port, TCP_SYN)).unwrap(), verdict::PASS, step::RULE, "open");
        expect(
            run(&mut dp, Hook::Tc, &tcp_out(port, 40000, TCP_SYN | TCP_ACK)).unwrap(),
            verdict::PASS,
            step::SESSION,
            "reply",
        );
    }
    let narrower = parse_str(
        &format!("[[security_group]]\nid = \"sg-i\"\nmembers = [\"198.18.1.1\"]\n{}\n[[interface]]\nname = \"lo\"\nsecurity_groups = [\"sg-i\"]\n", rule("tcp", "80/80")),
        "narrower.toml",
    )
    .unwrap();
    e.apply(&narrower, &[(TEST_RUN_IFINDEX, &narrower.interfaces[0])]).unwrap();
    expect(
        run(&mut dp, Hook::Xdp, &tcp_in(40000, 443, TCP_ACK)).unwrap(),
        verdict::DROP,
        step::REVOKED,
        "revoked flow",
    );
    expect(
        run(&mut dp, Hook::Tc, &tcp_out(443, 40000, TCP_ACK)).unwrap(),
        verdict::PASS,
        step::DEFAULT,
        "no session left; egress default",
    );
    expect(
        run(&mut dp, Hook::Xdp, &tcp_in(40000, 443, TCP_ACK)).unwrap(),
        verdict::DROP,
        step::DEFAULT,
        "classified since",
    );
    expect(run(&mut dp, Hook::Xdp, &tcp_in(40000, 80, TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "kept flow");
    expect(
        run(&mut dp, Hook::Tc, &tcp_out(80, 40000, TCP_ACK)).unwrap(),
        verdict::PASS,
        step::SESSION,
        "kept flow reply",
    );
}

#[test]
fn neighbour_discovery_always_passes() {
    if !kernel_tests_enabled("neighbour_discovery_always_passes") {
        return;
    }
    let (mut dp, _e, _cfg) = setup("", "advanced");
    // Neighbour discovery (133-136) and multicast listener discovery (130-132, 143).
    for kind in [130, 131, 132, 133, 134, 135, 136, 143u8] {
        let frame = ether(ETHERTYPE_IPV6, &[], &ipv6(58, v6("fe80::1"), v6("ff02::1"), &icmp(kind, 0, 0, 0, &[0; 16])));
        for hook in [Hook::Xdp, Hook::Tc] {
            expect(run(&mut dp, hook, &frame).unwrap(), verdict::PASS, step::NEIGHBOUR_DISCOVERY, "ND");
        }
    }
    let echo = ether(ETHERTYPE_IPV6, &[], &ipv6(58, v6("2001:db8::9"), v6("2001:db8::1:1"), &icmp(128, 0, 1, 1, &[])));
    expect(run(&mut dp, Hook::Xdp, &echo).unwrap(), verdict::DROP, step::DEFAULT, "other ICMPv6 is classified");
    let redirect = ether(ETHERTYPE_IPV6, &[], &ipv6(58, v6("fe80::1"), v6("ff02::1"), &icmp(137, 0, 0, 0, &[0; 16])));
    for hook in [Hook::Xdp, Hook::Tc] {
        expect(run(&mut dp, hook, &redirect).unwrap(), verdict::DROP, step::DEFAULT, "a redirect is classified");
    }
}

#[test]
fn garbage_collection_frees_expired_sessions_but_not_refreshed_ones() {
    if !kernel_tests_enabled("garbage_collection_frees_expired_sessions_but_not_refreshed_ones") {
        return;
    }
    let rules = rule("udp", "1/65535") + "[sessions]\nudp_unreplied = 1\nudp_replied = 1\n";
    let (mut dp, mut e, _cfg) = setup(&rules, "basic");
    let datagram =
        |sport: u16| ether(ETHERTYPE_IPV4, &[], &ipv4(17, CLIENT, INST, &[], Frag4::default(), &udp(sport, 53, b"q")));
    for sport in [1000, 1001] {
        expect(run(&mut dp, Hook::Xdp, &datagram(sport)).unwrap(), verdict::PASS, step::RULE, "open");
    }
    std::thread::sleep(Duration::from_millis(700));
    // Flow 1001 is refreshed; flow 1000 goes idle.
    expect(run(&mut dp, Hook::Xdp, &datagram(1001)).unwrap(), verdict::PASS, step::SESSION, "refresh");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(e.collect_garbage().unwrap(), 1, "only the idle session expired");
    let left: Vec<u16> = e.sessions().entries().unwrap().iter().map(|(k, _)| k.low_port.max(k.high_port)).collect();
    assert_eq!(left, vec![1001], "the refreshed session stays");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(e.collect_garbage().unwrap(), 1, "and goes once idle too");
    assert!(e.sessions().entries().unwrap().is_empty());
    // Both count as expired on the interface and hook they were opened on.
    let slot = e.iface_slots()[&TEST_RUN_IFINDEX];
    let counters = e.counters().unwrap();
    let at = |hook: u32| counters[(stats::block(slot, hook) + stats::SESSIONS_EXPIRED) as usize];
    assert_eq!((at(stats::HOOK_INGRESS), at(stats::HOOK_EGRESS)), (2, 0));
}

#[test]
fn a_full_table_evicts_but_never_admits() {
    if !kernel_tests_enabled("a_full_table_evicts_but_never_admits") {
        return;
    }
    // A 256-entry table, 2,000 flows admitted on ingress; advanced egress drops replies
    // that have no session.
    let text = format!(
        "[[security_group]]\nid = \"sg-i\"\ntype = \"advanced\"\nmembers = [\"198.18.1.1\"]\n{}\n[[interface]]\nname = \"lo\"\nsecurity_groups = [\"sg-i\"]\n",
        rule("udp", "53/53")
    );
    let cfg = parse_str(&text, "lru.toml").unwrap();
    let capacity = Capacity { sessions: 256, ..Default::default() };
    let mut dp = Dataplane::load(&LoadOptions { trace: true, capacity, ..LoadOptions::default() }).expect("load");
    let mut e = Enforcer::new(&mut dp, &capacity).expect("maps");
    e.apply(&cfg, &[(TEST_RUN_IFINDEX, &cfg.interfaces[0])]).unwrap();
    let flows: Vec<u16> = (0..2000).map(|i| 10_000 + i).collect();
    for &sport in &flows {
        let q = ether(ETHERTYPE_IPV4, &[], &ipv4(17, CLIENT, INST, &[], Frag4::default(), &udp(sport, 53, b"q")));
        expect(run(&mut dp, Hook::Xdp, &q).unwrap(), verdict::PASS, step::RULE, "admitted");
    }
    assert!(e.sessions().entries().unwrap().len() <= 256, "the table holds at most its size");
    let (mut by_session, mut dropped) = (0, 0);
    for &sport in &flows {
        let reply = ether(ETHERTYPE_IPV4, &[], &ipv4(17, INST, CLIENT, &[], Frag4::default(), &udp(53, sport, b"a")));
        let o = run(&mut dp, Hook::Tc, &reply).unwrap();
        match (o.decision.verdict, o.decision.step) {
            (verdict::PASS, step::SESSION) => by_session += 1,
            (verdict::DROP, step::DEFAULT) => dropped += 1,
            other => panic!("reply of {sport}: {other:?}: an evicted flow must be classified, never admitted"),
        }
    }
    assert!(by_session > 0 && by_session <= 256, "{by_session} replies by session");
    assert_eq!(by_session + dropped, flows.len());
}

#[test]
fn a_syn_flood_evicts_opening_sessions_never_established_ones() {
    if !kernel_tests_enabled("a_syn_flood_evicts_opening_sessions_never_established_ones") {
        return;
    }
    // 256 assured entries and 64 opening ones; advanced egress drops replies that have no
    // session, so an evicted connection would be cut.
    let text = format!(
        "[[security_group]]\nid = \"sg-i\"\ntype = \"advanced\"\nmembers = [\"198.18.1.1\"]\n{}\n[[interface]]\nname = \"lo\"\nsecurity_groups = [\"sg-i\"]\n",
        rule("tcp", "80/80")
    );
    let cfg = parse_str(&text, "flood.toml").unwrap();
    let capacity = Capacity { sessions: 256, ..Default::default() };
    assert_eq!(capacity.opening_sessions(), 64);
    let mut dp = Dataplane::load(&LoadOptions { trace: true, capacity, ..LoadOptions::default() }).expect("load");
    let mut e = Enforcer::new(&mut dp, &capacity).expect("maps");
    e.apply(&cfg, &[(TEST_RUN_IFINDEX, &cfg.interfaces[0])]).unwrap();
    let (x, t) = (Hook::Xdp, Hook::Tc);
    let established: Vec<u16> = (40_000..40_100).collect();
    for &sport in &established {
        expect(run(&mut dp, x, &tcp_in(sport, 80, TCP_SYN)).unwrap(), verdict::PASS, step::RULE, "SYN");
        expect(
            run(&mut dp, t, &tcp_out(80, sport, TCP_SYN | TCP_ACK)).unwrap(),
            verdict::PASS,
            step::SESSION,
            "SYN-ACK",
        );
        expect(run(&mut dp, x, &tcp_in(sport, 80, TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "ACK");
    }
    // Spoofed SYNs to the allowed port, 80 times the opening table, each from another
    // address: every one is admitted and opens a session that is never answered.
    let flood = 5_120u32;
    for i in 0..flood {
        let src = [198, 19, (i >> 8) as u8, i as u8];
        let syn = ether(
            ETHERTYPE_IPV4,
            &[],
            &ipv4(6, src, INST, &[], Frag4::default(), &tcp(1024 + i as u16, 80, TCP_SYN, &[])),
        );
        expect(run(&mut dp, x, &syn).unwrap(), verdict::PASS, step::RULE, "a spoofed SYN");
    }
    // No established connection was cut: both directions still pass by their session.
    for &sport in &established {
        let reply = run(&mut dp, t, &tcp_out(80, sport, TCP_ACK)).unwrap();
        expect(reply, verdict::PASS, step::SESSION, &format!("data out of connection {sport} after the flood"));
        expect(run(&mut dp, x, &tcp_in(sport, 80, TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "data in");
    }
    let entries = e.sessions().entries().unwrap();
    let assured: Vec<_> = entries.iter().filter(|(_, s)| s.assured == table::ASSURED_VALUE).collect();
    assert_eq!(assured.len(), established.len(), "the established connections are the assured table");
    assert!(assured.iter().all(|(_, s)| s.state == state::TCP_ESTABLISHED));
    let opening = entries.len() - assured.len();
    assert!(opening > 0 && opening <= 64, "{opening} opening sessions in a 64-entry table");
    // The ledger: every flood session the opening table does not hold was evicted from
    // it, and none from the assured table.
    let fills = e.fills(Default::default()).unwrap();
    assert_eq!(fills.opening_sessions.used, opening as u64);
    assert_eq!(fills.evicted.assured, 0, "{fills:?}");
    assert_eq!(fills.evicted.opening, u64::from(flood) - opening as u64, "{fills:?}");
}

/// Runs the rest of the test on CPU 0: the flow cache is per CPU, and these tests look
/// at which packets it served.
fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is valid; the calls only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set), 0, "pinning to CPU 0");
    }
}

fn udp_in(sport: u16, dport: u16) -> Vec<u8> {
    ether(ETHERTYPE_IPV4, &[], &ipv4(17, CLIENT, INST, &[], Frag4::default(), &udp(sport, dport, &[])))
}

fn udp_out(sport: u16, dport: u16) -> Vec<u8> {
    ether(ETHERTYPE_IPV4, &[], &ipv4(17, INST, CLIENT, &[], Frag4::default(), &udp(sport, dport, &[])))
}

/// The one session's (stored, as it stands) packet counts.
fn counts(e: &mut Enforcer) -> (u64, u64) {
    let entries = e.sessions().entries().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let (key, merged) = entries[0];
    (e.sessions().stored(&key).expect("stored").packets, merged.packets)
}

#[test]
fn the_flow_cache_serves_established_packets_and_hands_every_count_back() {
    if !kernel_tests_enabled("the_flow_cache_serves_established_packets_and_hands_every_count_back") {
        return;
    }
    pin_to_one_cpu();
    let (mut dp, mut e, _cfg) = setup(&rule("tcp", "80/80"), "advanced");
    let (x, t) = (Hook::Xdp, Hook::Tc);
    expect(run(&mut dp, x, &tcp_in(40000, 80, TCP_SYN)).unwrap(), verdict::PASS, step::RULE, "SYN");
    expect(run(&mut dp, t, &tcp_out(80, 40000, TCP_SYN | TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "SYN-ACK");
    expect(run(&mut dp, x, &tcp_in(40000, 80, TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "ACK");
    assert_eq!(counts(&mut e), (3, 3), "nothing cached before the flow is established");
    for _ in 0..10 {
        expect(run(&mut dp, x, &tcp_in(40000, 80, TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "data in");
        expect(run(&mut dp, t, &tcp_out(80, 40000, TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "data out");
    }
    let (stored, merged) = counts(&mut e);
    assert_eq!(merged, 23, "every packet counted");
    // Only the first data packet out went by the table (folding in the one hit in before
    // it); the other 18 were cache hits.
    assert_eq!(stored, 5, "the cache served the established flow");
    // A FIN takes the slow path, collects the hits and stops the cache for the flow.
    expect(run(&mut dp, t, &tcp_out(80, 40000, TCP_FIN | TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "FIN");
    assert_eq!(only_session_state(&mut e), state::TCP_FIN_FROM_RESPONDER);
    assert_eq!(counts(&mut e), (24, 24), "the FIN folded the hits into the session");
    expect(run(&mut dp, x, &tcp_in(40000, 80, TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "ACK after FIN");
    assert_eq!(counts(&mut e), (25, 25), "a closing flow is not served from the cache");
    // A flush bumps the epoch: a cached flow loses its fast path at once.
    e.sessions().flush().unwrap();
    expect(run(&mut dp, t, &tcp_out(80, 40000, TCP_ACK)).unwrap(), verdict::DROP, step::DEFAULT, "after flush");
}

#[test]
fn a_flow_replacing_another_in_the_cache_hands_over_its_hits() {
    if !kernel_tests_enabled("a_flow_replacing_another_in_the_cache_hands_over_its_hits") {
        return;
    }
    pin_to_one_cpu();
    let (mut dp, mut e, _cfg) = setup(&rule("udp", "53/53"), "advanced");
    let (x, t) = (Hook::Xdp, Hook::Tc);
    let reply_meta = |client_port: u16| {
        let mut m = sg_common::PacketMeta {
            family: sg_common::family::IPV4,
            protocol: 17,
            src_port: 53,
            dst_port: client_port,
            ..Default::default()
        };
        m.src[..4].copy_from_slice(&INST);
        m.dst[..4].copy_from_slice(&CLIENT);
        m
    };
    let position = |port| sg_common::flow_cache::position(TEST_RUN_IFINDEX, &reply_meta(port));
    // A second client port whose replies land in the same cache entry as the first's.
    let first = 40000;
    let second = (1024..=u16::MAX).find(|&p| p != first && position(p) == position(first)).expect("a colliding port");
    expect(run(&mut dp, x, &udp_in(first, 53)).unwrap(), verdict::PASS, step::RULE, "query A");
    for _ in 0..6 {
        expect(run(&mut dp, t, &udp_out(53, first)).unwrap(), verdict::PASS, step::SESSION, "reply A");
    }
    let key_a = e.sessions().entries().unwrap()[0].0;
    assert_eq!(e.sessions().stored(&key_a).unwrap().packets, 2, "five replies pending in the cache");
    expect(run(&mut dp, x, &udp_in(second, 53)).unwrap(), verdict::PASS, step::RULE, "query B");
    expect(run(&mut dp, t, &udp_out(53, second)).unwrap(), verdict::PASS, step::SESSION, "reply B");
    let a = e.sessions().stored(&key_a).unwrap();
    assert_eq!(a.packets, 7, "B's entry replaced A's and handed A's hits to A's session");
    let all = e.sessions().entries().unwrap();
    let total: u64 = all.iter().map(|(_, s)| s.packets).sum();
    assert_eq!((all.len(), total), (2, 9));
}

#[test]
fn garbage_collection_counts_the_hits_the_flow_cache_holds() {
    if !kernel_tests_enabled("garbage_collection_counts_the_hits_the_flow_cache_holds") {
        return;
    }
    pin_to_one_cpu();
    // 1 s timeouts: cache entries are trusted for 0.5 s.
    let rules = rule("udp", "53/53") + "[sessions]\nudp_unreplied = 1\nudp_replied = 1\n";
    let (mut dp, mut e, _cfg) = setup(&rules, "advanced");
    expect(run(&mut dp, Hook::Xdp, &udp_in(5353, 53)).unwrap(), verdict::PASS, step::RULE, "query");
    expect(run(&mut dp, Hook::Tc, &udp_out(53, 5353)).unwrap(), verdict::PASS, step::SESSION, "reply");
    std::thread::sleep(Duration::from_millis(400));
    expect(run(&mut dp, Hook::Tc, &udp_out(53, 5353)).unwrap(), verdict::PASS, step::SESSION, "cached reply");
    let hit_at = sgctl::clock::monotonic_ns();
    let (key, merged) = e.sessions().entries().unwrap()[0];
    let stored = e.sessions().stored(&key).unwrap();
    assert_eq!((stored.packets, merged.packets), (2, 3), "the last reply was a cache hit");
    assert!(
        merged.last_seen_ns + 20_000_000 >= hit_at && stored.last_seen_ns + 300_000_000 < merged.last_seen_ns,
        "the hit's time converts to the sessions' clock: stored {}, merged {}, hit at {hit_at}",
        stored.last_seen_ns,
        merged.last_seen_ns
    );
    std::thread::sleep(Duration::from_millis(800));
    // 1.2 s after the table's last sight, 0.8 s after the hit: alive.
    assert_eq!(e.collect_garbage().unwrap(), 0, "the hit keeps the session alive");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(e.collect_garbage().unwrap(), 1, "idle 1.2 s after the hit: expired");
}

#[test]
fn session_hints_cover_every_session_and_collection_sheds_the_deleted() {
    if !kernel_tests_enabled("session_hints_cover_every_session_and_collection_sheds_the_deleted") {
        return;
    }
    let rules = rule("udp", "53/53") + "[sessions]\nudp_unreplied = 1\nudp_replied = 1\n";
    let (mut dp, mut e, _cfg) = setup(&rules, "advanced");
    let (x, t) = (Hook::Xdp, Hook::Tc);
    // The key of the flow between CLIENT:`port` and INST:53.
    let key_of = |port: u16| {
        let (mut client, mut inst) = ([0u8; 16], [0u8; 16]);
        client[..4].copy_from_slice(&CLIENT);
        inst[..4].copy_from_slice(&INST);
        sg_common::SessionKey::between(TEST_RUN_IFINDEX, 4, 17, (client, port), (inst, 53)).0
    };
    // A: opened by the kernel.
    expect(run(&mut dp, x, &udp_in(1111, 53)).unwrap(), verdict::PASS, step::RULE, "query A");
    expect(run(&mut dp, t, &udp_out(53, 1111)).unwrap(), verdict::PASS, step::SESSION, "reply A");
    let a = key_of(1111);
    assert_eq!(e.sessions().hinted(&a), Some(true), "the kernel noted A before inserting it");
    let never = key_of(2222);
    assert_eq!(e.sessions().hinted(&never), Some(false), "no session, no hint");
    // Egress drops by default: without a session, a reply is dropped.
    expect(run(&mut dp, t, &udp_out(53, 2222)).unwrap(), verdict::DROP, step::DEFAULT, "reply without session");
    std::thread::sleep(Duration::from_millis(700));
    // B: written by userspace, which notes it too.
    let now = sgctl::clock::monotonic_ns();
    let b = key_of(3333);
    let session = sg_common::Session {
        last_seen_ns: now,
        created_ns: now,
        packets: 1,
        generation: e.generation(TEST_RUN_IFINDEX).unwrap(),
        state: state::UDP_UNREPLIED,
        opener_is_low: u8::from(CLIENT < INST),
        opened_on: sg_common::stats::HOOK_INGRESS as u8,
        step: step::RULE,
        ..Default::default()
    };
    e.sessions().insert(&b, &session).unwrap();
    assert_eq!(e.sessions().hinted(&b), Some(true));
    expect(run(&mut dp, t, &udp_out(53, 3333)).unwrap(), verdict::PASS, step::SESSION, "reply B");
    std::thread::sleep(Duration::from_millis(500));
    // A is idle 1.2 s: collected, and the rebuild drops its hint; B keeps its own.
    assert_eq!(e.collect_garbage().unwrap(), 1);
    assert_eq!(e.sessions().hinted(&a), Some(false), "the rebuild shed A's hint");
    assert_eq!(e.sessions().hinted(&b), Some(true), "and kept B's");
    expect(run(&mut dp, t, &udp_out(53, 3333)).unwrap(), verdict::PASS, step::SESSION, "reply B after the rebuild");
    expect(run(&mut dp, t, &udp_out(53, 1111)).unwrap(), verdict::DROP, step::DEFAULT, "A is gone");
}

#[test]
fn cache_hits_carry_the_audit_flag_in_audit_mode() {
    if !kernel_tests_enabled("cache_hits_carry_the_audit_flag_in_audit_mode") {
        return;
    }
    pin_to_one_cpu();
    let text = format!(
        "[[security_group]]\nid = \"sg-i\"\ntype = \"advanced\"\nmembers = [\"198.18.1.1\"]\n{}\n\
         [[interface]]\nname = \"lo\"\nmode = \"audit\"\nsecurity_groups = [\"sg-i\"]\n",
        rule("udp", "53/53")
    );
    let cfg = parse_str(&text, "audit.toml").expect("config");
    let mut dp = Dataplane::load(&LoadOptions { trace: true, ..Default::default() }).expect("load");
    let mut e = Enforcer::new(&mut dp, &Capacity::default()).expect("maps");
    e.apply(&cfg, &[(TEST_RUN_IFINDEX, &cfg.interfaces[0])]).expect("apply");
    let (x, t) = (Hook::Xdp, Hook::Tc);
    expect(run(&mut dp, x, &udp_in(4444, 53)).unwrap(), verdict::PASS, step::RULE, "query");
    for i in 0..3 {
        let o = run(&mut dp, t, &udp_out(53, 4444)).unwrap();
        expect(o, verdict::PASS, step::SESSION, "reply");
        assert_ne!(o.decision.flags & sg_common::DECISION_AUDIT, 0, "reply {i} (the last two from the cache)");
    }
    let (key, merged) = e.sessions().entries().unwrap()[0];
    assert!(e.sessions().stored(&key).unwrap().packets < merged.packets, "the cache served some replies");
}

/// An echo packet of `family` (4 or 6) between the instance and the client, `outbound`
/// from the instance (egress, TC) or inbound (ingress, XDP); `request` or reply.
fn echo(family: u8, outbound: bool, request: bool, id: u16) -> (Hook, Vec<u8>) {
    let hook = if outbound { Hook::Tc } else { Hook::Xdp };
    let frame = if family == 4 {
        let (src, dst) = if outbound { (INST, CLIENT) } else { (CLIENT, INST) };
        let body = icmp(if request { 8 } else { 0 }, 0, id, 1, b"ping");
        ether(ETHERTYPE_IPV4, &[], &ipv4(1, src, dst, &[], Frag4::default(), &body))
    } else {
        let (inst, client) = (v6("2001:db8::1:1"), v6("2001:db8::9"));
        let (src, dst) = if outbound { (inst, client) } else { (client, inst) };
        ether(ETHERTYPE_IPV6, &[], &ipv6(58, src, dst, &icmp(if request { 128 } else { 129 }, 0, id, 1, b"ping")))
    };
    (hook, frame)
}

fn icmp_rule(direction: &str, family: u8) -> String {
    let (protocol, peer) = if family == 4 { ("icmp", "0.0.0.0/0") } else { ("icmpv6", "::/0") };
    let field = if direction == "ingress" { "source" } else { "destination" };
    format!("[[security_group.rule]]\ndirection = \"{direction}\"\nprotocol = \"{protocol}\"\n{field} = \"{peer}\"\n")
}

#[test]
fn a_request_from_the_responder_of_a_ping_is_judged_by_the_rules() {
    if !kernel_tests_enabled("a_request_from_the_responder_of_a_ping_is_judged_by_the_rules") {
        return;
    }
    const ID: u16 = 0x2a2a;
    for family in [4, 6] {
        for instance_pings in [true, false] {
            // The pinging side's direction is admitted; the other direction is not,
            // unless `admitted` adds a rule for it. Advanced: both defaults drop.
            let (opener_dir, other_dir) = if instance_pings { ("egress", "ingress") } else { ("ingress", "egress") };
            for admitted in [false, true] {
                let what = format!("IPv{family}, instance pings: {instance_pings}, reverse admitted: {admitted}");
                let mut rules = icmp_rule(opener_dir, family);
                if admitted {
                    rules += &icmp_rule(other_dir, family);
                }
                let (mut dp, mut e, _cfg) = setup(&rules, "advanced");
                let run_echo = |dp: &mut Dataplane, outbound: bool, request: bool| {
                    let (hook, frame) = echo(family, outbound, request, ID);
                    run(dp, hook, &frame).unwrap()
                };
                let out = instance_pings;
                expect(run_echo(&mut dp, out, true), verdict::PASS, step::RULE, &format!("{what}: request"));
                expect(run_echo(&mut dp, !out, false), verdict::PASS, step::SESSION, &format!("{what}: reply"));
                // The responder sends its own request with the same identifier.
                let reverse = run_echo(&mut dp, !out, true);
                if admitted {
                    expect(reverse, verdict::PASS, step::RULE, &format!("{what}: reverse request"));
                    assert_eq!(e.sessions().entries().unwrap().len(), 2, "{what}: a session of its own");
                    expect(run_echo(&mut dp, out, false), verdict::PASS, step::SESSION, &format!("{what}: its reply"));
                } else {
                    expect(reverse, verdict::DROP, step::DEFAULT, &format!("{what}: reverse request"));
                    assert_eq!(e.sessions().entries().unwrap().len(), 1, "{what}: no session opened");
                    // An answer from the opener's side is not the session's either: the
                    // opener's direction admits ICMP by its rule.
                    expect(run_echo(&mut dp, out, false), verdict::PASS, step::RULE, &format!("{what}: answer"));
                }
                // The original ping goes on either way.
                expect(run_echo(&mut dp, out, true), verdict::PASS, step::SESSION, &format!("{what}: next request"));
                expect(run_echo(&mut dp, !out, false), verdict::PASS, step::SESSION, &format!("{what}: next reply"));
            }
        }
    }
}

#[test]
fn a_syn_the_session_does_not_carry_is_judged_by_the_rules() {
    if !kernel_tests_enabled("a_syn_the_session_does_not_carry_is_judged_by_the_rules") {
        return;
    }
    let (x, t) = (Hook::Xdp, Hook::Tc);
    let handshake = |dp: &mut Dataplane| {
        expect(run(dp, x, &tcp_in(40000, 80, TCP_SYN)).unwrap(), verdict::PASS, step::RULE, "SYN");
        expect(run(dp, t, &tcp_out(80, 40000, TCP_SYN | TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "SYN-ACK");
        expect(run(dp, x, &tcp_in(40000, 80, TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "ACK");
    };
    // Advanced: egress default drop, so only the session could pass the instance's SYN.
    let (mut dp, mut e, _cfg) = setup(&rule("tcp", "80/80"), "advanced");
    handshake(&mut dp);
    expect(run(&mut dp, t, &tcp_out(80, 40000, TCP_SYN)).unwrap(), verdict::DROP, step::DEFAULT, "responder SYN");
    expect(
        run(&mut dp, t, &tcp_out(80, 40000, TCP_SYN | TCP_ACK)).unwrap(),
        verdict::DROP,
        step::DEFAULT,
        "SYN-ACK on an established connection",
    );
    assert_eq!(only_session_state(&mut e), state::TCP_ESTABLISHED, "the connection is untouched");
    expect(run(&mut dp, t, &tcp_out(80, 40000, TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "data still flows");
    // A SYN from the opener on an established connection is a new attempt: the ingress
    // rule admits it, and it restarts the session.
    expect(run(&mut dp, x, &tcp_in(40000, 80, TCP_SYN)).unwrap(), verdict::PASS, step::RULE, "opener SYN");
    assert_eq!(only_session_state(&mut e), state::TCP_SYN_SENT);
    expect(run(&mut dp, t, &tcp_out(80, 40000, TCP_SYN | TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "SYN-ACK");
    expect(run(&mut dp, x, &tcp_in(40000, 80, TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "ACK");
    assert_eq!(only_session_state(&mut e), state::TCP_ESTABLISHED);
    // Closing: both FINs; a responder SYN then is still not the session's, the opener's
    // reuses the tuple.
    expect(run(&mut dp, x, &tcp_in(40000, 80, TCP_FIN | TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "FIN in");
    expect(run(&mut dp, t, &tcp_out(80, 40000, TCP_FIN | TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "FIN out");
    assert_eq!(only_session_state(&mut e), state::TCP_CLOSING);
    expect(run(&mut dp, t, &tcp_out(80, 40000, TCP_SYN)).unwrap(), verdict::DROP, step::DEFAULT, "SYN on closing");
    expect(run(&mut dp, x, &tcp_in(40000, 80, TCP_SYN)).unwrap(), verdict::PASS, step::SESSION, "reuse");
    assert_eq!(only_session_state(&mut e), state::TCP_SYN_SENT);

    // Basic: the egress default accepts, so the responder's SYN opens a session of its
    // own (the instance now the opener) in place of the old one.
    let (mut dp, mut e, _cfg) = setup(&rule("tcp", "80/80"), "basic");
    handshake(&mut dp);
    expect(run(&mut dp, t, &tcp_out(80, 40000, TCP_SYN)).unwrap(), verdict::PASS, step::DEFAULT, "admitted SYN");
    let entries = e.sessions().entries().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let (key, s) = entries[0];
    assert_eq!(s.state, state::TCP_SYN_SENT);
    assert_eq!(u32::from(s.opened_on), sg_common::stats::HOOK_EGRESS, "opened by the instance");
    assert_eq!(key.ends(s.opener_is_low != 0).0.1, 80, "the instance's port 80 is the opener's end");
}

/// An "echo request only" rule admits pings and nothing else, and after an apply the
/// re-check rebuilds a ping session's opening packet as its echo request, whichever
/// side's packet triggers it: the session survives while the rule stays, and is revoked
/// when only another type is allowed.
#[test]
fn echo_request_only_rules_admit_pings_and_survive_a_recheck() {
    if !kernel_tests_enabled("echo_request_only_rules_admit_pings_and_survive_a_recheck") {
        return;
    }
    const ID: u16 = 0x0707;
    for family in [4u8, 6] {
        let (protocol, peer, request, other) =
            if family == 4 { ("icmp", "0.0.0.0/0", 8, 13) } else { ("icmpv6", "::/0", 128, 137) };
        let only = |icmp_type: u8| {
            format!(
                "[[security_group.rule]]\ndirection = \"ingress\"\nprotocol = \"{protocol}\"\nicmp_type = {icmp_type}\n\
                 icmp_code = 0\nsource = \"{peer}\"\n"
            )
        };
        let file = |rules: String| {
            let text = format!(
                "[[security_group]]\nid = \"sg-i\"\ntype = \"advanced\"\nmembers = [\"198.18.1.1\"]\n{rules}\n\
                 [[interface]]\nname = \"lo\"\nsecurity_groups = [\"sg-i\"]\n"
            );
            parse_str(&text, "echo.toml").expect("config")
        };
        let (mut dp, mut e, _) = setup(&only(request), "advanced");
        let what = format!("IPv{family}");
        let run_echo = |dp: &mut Dataplane, outbound: bool, is_request: bool, id: u16| {
            let (hook, frame) = echo(family, outbound, is_request, id);
            run(dp, hook, &frame).unwrap()
        };
        // An inbound reply is no request: dropped (no session, the rule names type 8/128).
        expect(run_echo(&mut dp, false, false, ID + 1), verdict::DROP, step::DEFAULT, &format!("{what}: stray reply"));
        // Another type, and the request type with another code, are not admitted.
        let icmp_frame = |icmp_type: u8, code: u8| {
            if family == 4 {
                ether(
                    ETHERTYPE_IPV4,
                    &[],
                    &ipv4(1, CLIENT, INST, &[], Frag4::default(), &icmp(icmp_type, code, 1, 1, b"x")),
                )
            } else {
                let (inst, client) = (v6("2001:db8::1:1"), v6("2001:db8::9"));
                ether(ETHERTYPE_IPV6, &[], &ipv6(58, client, inst, &icmp(icmp_type, code, 1, 1, b"x")))
            }
        };
        let got = run(&mut dp, Hook::Xdp, &icmp_frame(other, 0)).unwrap();
        expect(got, verdict::DROP, step::DEFAULT, &format!("{what}: type {other}"));
        let got = run(&mut dp, Hook::Xdp, &icmp_frame(request, 1)).unwrap();
        expect(got, verdict::DROP, step::DEFAULT, &format!("{what}: request with code 1"));
        // The ping: request admitted by the rule, reply by the session.
        expect(run_echo(&mut dp, false, true, ID), verdict::PASS, step::RULE, &format!("{what}: request"));
        expect(run_echo(&mut dp, true, false, ID), verdict::PASS, step::SESSION, &format!("{what}: reply"));
        // Re-applying the same rules bumps the generation: the reply that triggers the
        // re-check must not be judged as the opening packet.
        let same = file(only(request));
        e.apply(&same, &[(TEST_RUN_IFINDEX, &same.interfaces[0])]).unwrap();
        expect(run_echo(&mut dp, true, false, ID), verdict::PASS, step::SESSION, &format!("{what}: reply after apply"));
        expect(run_echo(&mut dp, false, true, ID), verdict::PASS, step::SESSION, &format!("{what}: next request"));
        // Only another type allowed now: the ping's session is revoked.
        let narrower = file(only(other));
        e.apply(&narrower, &[(TEST_RUN_IFINDEX, &narrower.interfaces[0])]).unwrap();
        expect(run_echo(&mut dp, true, false, ID), verdict::DROP, step::REVOKED, &format!("{what}: revoked"));
        assert!(e.sessions().entries().unwrap().is_empty(), "{what}: the session is gone");
    }
}

/// An egress rule to TCP 443 anywhere: the instance connects out, and in an advanced
/// group nothing inbound passes but as a session's.
const EGRESS_443: &str = "[[security_group.rule]]\ndirection = \"egress\"\nprotocol = \"tcp\"\nport_range = \"443/443\"\ndestination = \"0.0.0.0/0\"\n";

/// An inbound `frame` is dropped by the rules (no session's) and leaves the only session
/// in `state_after`.
fn forged(dp: &mut Dataplane, e: &mut Enforcer, frame: Vec<u8>, state_after: u8, what: &str) {
    expect(run(dp, Hook::Xdp, &frame).unwrap(), verdict::DROP, step::DEFAULT, what);
    assert_eq!(only_session_state(e), state_after, "{what} moved the state");
}

#[test]
fn forged_segments_neither_pass_as_the_session_nor_move_its_state() {
    if !kernel_tests_enabled("forged_segments_neither_pass_as_the_session_nor_move_its_state") {
        return;
    }
    // The instance connects out to the peer's 443; inbound the advanced group drops
    // everything, so an inbound segment passes only as the session's.
    let (mut dp, mut e, _cfg) = setup(EGRESS_443, "advanced");
    let (x, t) = (Hook::Xdp, Hook::Tc);
    expect(run(&mut dp, t, &tcp_out(40000, 443, TCP_SYN)).unwrap(), verdict::PASS, step::RULE, "SYN");
    // Before the SYN-ACK: the wrong ports, and a FIN or data from the peer.
    forged(&mut dp, &mut e, tcp_in(444, 40000, TCP_SYN | TCP_ACK), state::TCP_SYN_SENT, "SYN-ACK from another port");
    forged(&mut dp, &mut e, tcp_in(443, 40001, TCP_SYN | TCP_ACK), state::TCP_SYN_SENT, "SYN-ACK to another port");
    forged(&mut dp, &mut e, tcp_in(443, 40000, TCP_FIN | TCP_ACK), state::TCP_SYN_SENT, "FIN before the SYN-ACK");
    forged(&mut dp, &mut e, tcp_in(443, 40000, TCP_FIN), state::TCP_SYN_SENT, "bare FIN before the SYN-ACK");
    // A bare ACK there is a stale connection's challenge ACK (RFC 5961): it passes, and
    // moves nothing.
    expect(run(&mut dp, x, &tcp_in(443, 40000, TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "challenge ACK");
    assert_eq!(only_session_state(&mut e), state::TCP_SYN_SENT);
    // The opener's own data before the handshake is judged by its rules (they admit it)
    // and moves nothing either.
    expect(run(&mut dp, t, &tcp_out(40000, 443, TCP_ACK)).unwrap(), verdict::PASS, step::RULE, "early ACK out");
    assert_eq!(only_session_state(&mut e), state::TCP_SYN_SENT);
    expect(run(&mut dp, x, &tcp_in(443, 40000, TCP_SYN | TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "SYN-ACK");
    expect(run(&mut dp, t, &tcp_out(40000, 443, TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "ACK");
    assert_eq!(only_session_state(&mut e), state::TCP_ESTABLISHED);
    // Established: a SYN or a SYN-ACK from the peer is a new attempt, for the rules.
    forged(&mut dp, &mut e, tcp_in(443, 40000, TCP_SYN), state::TCP_ESTABLISHED, "SYN on an established session");
    forged(&mut dp, &mut e, tcp_in(443, 40000, TCP_SYN | TCP_ACK), state::TCP_ESTABLISHED, "SYN-ACK once established");
    forged(&mut dp, &mut e, tcp_in(443, 40002, TCP_ACK), state::TCP_ESTABLISHED, "data to another port");
    // A FIN from the peer half-closes; more FINs from the same side never close it.
    for i in 0..3 {
        expect(run(&mut dp, x, &tcp_in(443, 40000, TCP_FIN | TCP_ACK)).unwrap(), verdict::PASS, step::SESSION, "FIN");
        assert_eq!(only_session_state(&mut e), state::TCP_FIN_FROM_RESPONDER, "FIN {i} from the same side");
    }
    // A RST near what the instance acknowledged (every segment here carries 0) closes it.
    expect(run(&mut dp, x, &tcp_in(443, 40000, TCP_RST)).unwrap(), verdict::PASS, step::SESSION, "RST");
    assert_eq!(only_session_state(&mut e), state::TCP_CLOSED);
}

/// `frame` (from [`tcp_in`] or [`tcp_out`]) with TCP sequence and acknowledgement
/// numbers.
fn numbered(mut frame: Vec<u8>, seq: u32, ack: u32) -> Vec<u8> {
    set_tcp_numbers(&mut frame[14 + 20..], seq, ack);
    frame
}

#[test]
fn an_arriving_rst_or_fin_must_fall_near_what_the_instance_acknowledged() {
    if !kernel_tests_enabled("an_arriving_rst_or_fin_must_fall_near_what_the_instance_acknowledged") {
        return;
    }
    use sg_common::session::{RECEIVE_AHEAD, RECEIVE_BEHIND, anchor};
    let (mut dp, mut e, _cfg) = setup(EGRESS_443, "advanced");
    let (x, t) = (Hook::Xdp, Hook::Tc);
    let inbound = |flags, seq, ack| numbered(tcp_in(443, 40000, flags), seq, ack);
    let outbound = |flags, seq, ack| numbered(tcp_out(40000, 443, flags), seq, ack);
    let syn = 4_000_000_000u32;
    expect(run(&mut dp, t, &outbound(TCP_SYN, syn - 1, 0)).unwrap(), verdict::PASS, step::RULE, "SYN");
    // Before the handshake a RST must acknowledge the SYN (a closed port's RST+ACK).
    let rst_ack = TCP_RST | TCP_ACK;
    forged(&mut dp, &mut e, inbound(rst_ack, 0, syn + 1), state::TCP_SYN_SENT, "RST acknowledging another byte");
    forged(&mut dp, &mut e, inbound(TCP_RST, 0, syn), state::TCP_SYN_SENT, "RST without ACK");
    let peer = 7_000u32;
    expect(
        run(&mut dp, x, &inbound(TCP_SYN | TCP_ACK, peer - 1, syn)).unwrap(),
        verdict::PASS,
        step::SESSION,
        "SYN-ACK",
    );
    expect(run(&mut dp, t, &outbound(TCP_ACK, syn, peer)).unwrap(), verdict::PASS, step::SESSION, "ACK");
    assert_eq!(only_session_state(&mut e), state::TCP_ESTABLISHED);
    // The instance acknowledges 40 MiB of the peer's data; the fast path serves these
    // ACKs, and the session table's own copy keeps the first acknowledgement until the
    // slow path folds the cache's in.
    let mut acked = peer;
    for _ in 0..10 {
        acked = acked.wrapping_add(4 << 20);
        expect(run(&mut dp, t, &outbound(TCP_ACK, syn, acked)).unwrap(), verdict::PASS, step::SESSION, "ACK of data");
    }
    let entries = e.sessions().entries().unwrap();
    let key = entries[0].0;
    let stored = e.sessions().stored(&key).expect("stored");
    assert_eq!(stored.anchors & anchor::INSTANCE_ACK, anchor::INSTANCE_ACK);
    assert_ne!(stored.instance_ack, acked, "the ACKs were served by the flow cache, not the session table");
    // Out of the window: the old acknowledgement, just past either bound, the far side.
    for (seq, what) in [
        (peer, "RST at the first acknowledgement"),
        (acked.wrapping_add(RECEIVE_AHEAD + 1), "RST just past the window"),
        (acked.wrapping_sub(RECEIVE_BEHIND + 1), "RST just before the window"),
        (acked.wrapping_add(1 << 31), "RST across the sequence space"),
    ] {
        forged(&mut dp, &mut e, inbound(TCP_RST, seq, 0), state::TCP_ESTABLISHED, what);
        forged(&mut dp, &mut e, inbound(rst_ack, seq, syn), state::TCP_ESTABLISHED, what);
        forged(&mut dp, &mut e, inbound(TCP_FIN | TCP_ACK, seq, syn), state::TCP_ESTABLISHED, what);
    }
    // In the window: the peer's FIN with 1 MiB still in flight half-closes, then its RST
    // closes.
    let fin = inbound(TCP_FIN | TCP_ACK, acked.wrapping_add(1 << 20), syn);
    expect(run(&mut dp, x, &fin).unwrap(), verdict::PASS, step::SESSION, "FIN in the window");
    assert_eq!(only_session_state(&mut e), state::TCP_FIN_FROM_RESPONDER);
    let rst = inbound(TCP_RST, acked.wrapping_sub(100), 0);
    expect(run(&mut dp, x, &rst).unwrap(), verdict::PASS, step::SESSION, "RST in the window");
    assert_eq!(only_session_state(&mut e), state::TCP_CLOSED);
}

#[test]
fn the_instance_own_rst_is_not_checked() {
    if !kernel_tests_enabled("the_instance_own_rst_is_not_checked") {
        return;
    }
    let (mut dp, mut e, _cfg) = setup(&rule("tcp", "80/80"), "advanced");
    let (x, t) = (Hook::Xdp, Hook::Tc);
    let inbound = |flags, seq, ack| numbered(tcp_in(40000, 80, flags), seq, ack);
    let outbound = |flags, seq, ack| numbered(tcp_out(80, 40000, flags), seq, ack);
    expect(run(&mut dp, x, &inbound(TCP_SYN, 99, 0)).unwrap(), verdict::PASS, step::RULE, "SYN");
    // The peer's RST before the instance answered: nothing to check it against.
    expect(run(&mut dp, t, &outbound(TCP_SYN | TCP_ACK, 500, 100)).unwrap(), verdict::PASS, step::SESSION, "SYN-ACK");
    expect(run(&mut dp, x, &inbound(TCP_ACK, 100, 501)).unwrap(), verdict::PASS, step::SESSION, "ACK");
    assert_eq!(only_session_state(&mut e), state::TCP_ESTABLISHED);
    // A far RST from the peer is not the session's: the ingress rule admits it as it
    // would any segment to port 80, and the session does not move.
    expect(run(&mut dp, x, &inbound(TCP_RST, 100 + (1 << 30), 0)).unwrap(), verdict::PASS, step::RULE, "far RST in");
    assert_eq!(only_session_state(&mut e), state::TCP_ESTABLISHED);
    // The instance's own RST closes it, whatever its sequence number.
    expect(run(&mut dp, t, &outbound(TCP_RST, 1 << 31, 0)).unwrap(), verdict::PASS, step::SESSION, "RST out");
    assert_eq!(only_session_state(&mut e), state::TCP_CLOSED);
}

#[test]
fn a_session_costs_the_documented_bytes() {
    if !kernel_tests_enabled("a_session_costs_the_documented_bytes") {
        return;
    }
    // The default size, as documented (maps of the same size cost the same).
    let entries = 262_144u32;
    let _dp = Dataplane::load(&LoadOptions {
        capacity: Capacity { sessions: entries, ..Default::default() },
        ..LoadOptions::default()
    })
    .expect("load");
    let out = std::process::Command::new("bpftool").args(["-j", "map", "show", "name", "SG_SESSIONS"]).output();
    let out = out.expect("bpftool");
    // One object for one map of the name, an array for several.
    let maps = match serde_json::from_slice(&out.stdout).expect("bpftool's JSON") {
        serde_json::Value::Array(maps) => maps,
        one => vec![one],
    };
    let table = maps.iter().find(|m| m["max_entries"] == entries).expect("the table just loaded");
    let memlock = table["bytes_memlock"].as_u64().expect("bytes_memlock");
    let per_entry = sgctl::dataplane::sessions::BYTES_PER_SESSION as u64;
    assert_eq!(memlock / u64::from(entries), per_entry, "{memlock} bytes for {entries} entries");
}
