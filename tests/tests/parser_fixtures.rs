//! The parser's fixture table, run through BPF_PROG_TEST_RUN on both hooks: each frame
//! with its expected verdict, deciding step, malformed reason, parsed fields and counter
//! effect.

use sg_common::{PacketMeta, family, fragment, ip_proto, malformed as m, stats, step, verdict};
use sg_tests::{
    frames::*,
    kernel::kernel_tests_enabled,
    testrun::{HOOKS, Hook, run},
};
use sgctl::dataplane::{Dataplane, LoadOptions};

type Check = Box<dyn Fn(&PacketMeta)>;

struct Fixture {
    name: &'static str,
    frame: Vec<u8>,
    /// `None`: a well-formed frame (passes, no rule set loaded); `Some(reason)`: malformed.
    malformed: Option<u8>,
    check: Check,
    /// BPF_PROG_TEST_RUN for TC refuses (EINVAL) a frame whose Ethernet type is IPv4 or
    /// IPv6 but that holds less than a whole IP header; the stack never emits one on
    /// egress. Such frames run on XDP only, and the refusal itself is asserted.
    tc_refuses: bool,
}

const A4: [u8; 4] = [198, 18, 0, 1];
const B4: [u8; 4] = [198, 18, 0, 2];

fn a6() -> [u8; 16] {
    v6("2001:db8::1")
}
fn b6() -> [u8; 16] {
    v6("2001:db8::2")
}

fn ok(name: &'static str, frame: Vec<u8>, check: impl Fn(&PacketMeta) + 'static) -> Fixture {
    Fixture { name, frame, malformed: None, check: Box::new(check), tc_refuses: false }
}

fn bad(name: &'static str, frame: Vec<u8>, reason: u8) -> Fixture {
    Fixture { name, frame, malformed: Some(reason), check: Box::new(|_| {}), tc_refuses: false }
}

/// A malformed frame too short for TC's test-run (see [`Fixture::tc_refuses`]).
fn bad_xdp_only(name: &'static str, frame: Vec<u8>, reason: u8) -> Fixture {
    Fixture { tc_refuses: true, ..bad(name, frame, reason) }
}

fn v4frame(proto: u8, payload: &[u8]) -> Vec<u8> {
    ether(ETHERTYPE_IPV4, &[], &ipv4(proto, A4, B4, &[], Frag4::default(), payload))
}

fn v6frame(next: u8, payload: &[u8]) -> Vec<u8> {
    ether(ETHERTYPE_IPV6, &[], &ipv6(next, a6(), b6(), payload))
}

fn ports(meta: &PacketMeta, protocol: u8, src: u16, dst: u16) {
    assert_eq!((meta.protocol, meta.src_port, meta.dst_port), (protocol, src, dst));
}

fn fixtures() -> Vec<Fixture> {
    let tcp_syn = tcp(40000, 80, TCP_SYN, &[]);
    let udp_dns = udp(5353, 53, b"query");
    let mut f = vec![
        ok("ipv4 tcp syn", v4frame(ip_proto::TCP, &tcp_syn), |m| {
            ports(m, ip_proto::TCP, 40000, 80);
            assert_eq!(m.family, family::IPV4);
            assert_eq!(m.tcp_flags, TCP_SYN);
            assert_eq!(&m.src[..4], &A4);
            assert_eq!(&m.dst[..4], &B4);
            assert_eq!(m.src[4..], [0; 12]);
        }),
        ok("ipv4 udp", v4frame(ip_proto::UDP, &udp_dns), |m| ports(m, ip_proto::UDP, 5353, 53)),
        ok("ipv4 icmp echo request", v4frame(ip_proto::ICMP, &icmp(8, 0, 0x1234, 1, b"x")), |m| {
            assert_eq!((m.icmp_type, m.icmp_code, m.icmp_id), (8, 0, 0x1234));
        }),
        ok("ipv4 icmp unreachable", v4frame(ip_proto::ICMP, &icmp(3, 1, 0x1234, 0, &[0; 28])), |m| {
            assert_eq!((m.icmp_type, m.icmp_code, m.icmp_id), (3, 1, 0));
        }),
        ok("ipv4 gre", v4frame(ip_proto::GRE, &gre(0x6558, &[0; 14])), |m| {
            assert_eq!((m.protocol, m.gre_proto), (ip_proto::GRE, 0x6558));
        }),
        ok(
            "ipv4 with 4 bytes of options",
            ether(
                ETHERTYPE_IPV4,
                &[],
                &ipv4(ip_proto::TCP, A4, B4, &[0x94, 4, 0, 0], Frag4::default(), &tcp(1234, 443, TCP_ACK, &[])),
            ),
            |m| ports(m, ip_proto::TCP, 1234, 443),
        ),
        ok(
            "ipv4 with 40 bytes of options (IHL 15)",
            ether(ETHERTYPE_IPV4, &[], &ipv4(ip_proto::UDP, A4, B4, &[1; 40], Frag4::default(), &udp(7, 9, &[]))),
            |m| ports(m, ip_proto::UDP, 7, 9),
        ),
        ok("ipv4 padded to 60 bytes", padded(v4frame(ip_proto::UDP, &udp(1, 2, &[]))), |m| {
            ports(m, ip_proto::UDP, 1, 2)
        }),
        ok("ipv4 unknown protocol (sctp)", v4frame(132, &[0; 12]), |m| ports(m, 132, 0, 0)),
        ok("ipv6 tcp", v6frame(ip_proto::TCP, &tcp(40001, 22, TCP_SYN, &[])), |m| {
            ports(m, ip_proto::TCP, 40001, 22);
            assert_eq!(m.family, family::IPV6);
            assert_eq!(m.src, a6());
            assert_eq!(m.dst, b6());
        }),
        ok("ipv6 udp", v6frame(ip_proto::UDP, &udp_dns), |m| ports(m, ip_proto::UDP, 5353, 53)),
        ok("ipv6 icmpv6 echo request", v6frame(ip_proto::ICMPV6, &icmp(128, 0, 0xbeef, 1, b"x")), |m| {
            assert_eq!((m.icmp_type, m.icmp_id), (128, 0xbeef));
        }),
        ok("ipv6 neighbour solicitation", v6frame(ip_proto::ICMPV6, &icmp(135, 0, 0, 0, &[0; 16])), |m| {
            assert_eq!((m.icmp_type, m.icmp_id), (135, 0));
        }),
        ok("ipv6 gre", v6frame(ip_proto::GRE, &gre(0x86dd, &[])), |m| assert_eq!(m.gre_proto, 0x86dd)),
        ok("ipv6 hop-by-hop then tcp", v6frame(0, &ipv6_ext(ip_proto::TCP, 0, &tcp(5, 6, TCP_SYN, &[]))), |m| {
            ports(m, ip_proto::TCP, 5, 6);
            assert_eq!(m.ext_headers, 1);
        }),
        ok(
            "ipv6 hop-by-hop, routing, destination options then udp",
            v6frame(0, &ipv6_ext(43, 0, &ipv6_ext(60, 1, &ipv6_ext(ip_proto::UDP, 0, &udp(11, 12, &[]))))),
            |m| {
                ports(m, ip_proto::UDP, 11, 12);
                assert_eq!(m.ext_headers, 3);
            },
        ),
        ok(
            "ipv6 authentication header then tcp",
            {
                // AH length is in 4-byte units minus 2: 4 -> 24 bytes.
                let mut ah = vec![ip_proto::TCP, 4];
                ah.resize(24, 0);
                ah.extend_from_slice(&tcp(8080, 8443, TCP_ACK, &[]));
                v6frame(51, &ah)
            },
            |m| ports(m, ip_proto::TCP, 8080, 8443),
        ),
        ok(
            "802.1Q ipv4 tcp",
            ether(ETHERTYPE_IPV4, &[TPID_8021Q], &ipv4(ip_proto::TCP, A4, B4, &[], Frag4::default(), &tcp_syn)),
            |m| {
                ports(m, ip_proto::TCP, 40000, 80);
                assert_eq!(m.vlan_depth, 1);
            },
        ),
        ok(
            "802.1ad + 802.1Q ipv6 udp",
            ether(ETHERTYPE_IPV6, &[TPID_8021AD, TPID_8021Q], &ipv6(ip_proto::UDP, a6(), b6(), &udp_dns)),
            |m| {
                ports(m, ip_proto::UDP, 5353, 53);
                assert_eq!(m.vlan_depth, 2);
            },
        ),
        ok(
            "ipv4 first fragment",
            ether(
                ETHERTYPE_IPV4,
                &[],
                &ipv4(
                    ip_proto::UDP,
                    A4,
                    B4,
                    &[],
                    Frag4 { more: true, offset_units: 0, id: 77 },
                    &udp(1000, 2000, &[0; 32]),
                ),
            ),
            |m| {
                ports(m, ip_proto::UDP, 1000, 2000);
                assert_eq!((m.fragment, m.frag_id), (fragment::FIRST, 77));
            },
        ),
        ok(
            "ipv4 later fragment",
            ether(
                ETHERTYPE_IPV4,
                &[],
                &ipv4(ip_proto::UDP, A4, B4, &[], Frag4 { more: false, offset_units: 185, id: 77 }, &[0xaa; 40]),
            ),
            |m| {
                ports(m, ip_proto::UDP, 0, 0);
                assert_eq!((m.fragment, m.frag_id), (fragment::LATER, 77));
            },
        ),
        ok(
            "ipv6 first fragment",
            v6frame(44, &ipv6_frag(ip_proto::UDP, 0, true, 0xdead_beef, &udp(1000, 2000, &[0; 32]))),
            |m| {
                ports(m, ip_proto::UDP, 1000, 2000);
                assert_eq!((m.fragment, m.frag_id), (fragment::FIRST, 0xdead_beef));
            },
        ),
        ok("ipv6 later fragment", v6frame(44, &ipv6_frag(ip_proto::UDP, 181, false, 9, &[0xbb; 40])), |m| {
            ports(m, ip_proto::UDP, 0, 0);
            assert_eq!((m.fragment, m.frag_id), (fragment::LATER, 9));
        }),
        ok("arp is not ip", ether(ETHERTYPE_ARP, &[], &[0; 28]), |m| assert_eq!(m.family, family::NONE)),
        ok("802.1Q arp is not ip", ether(ETHERTYPE_ARP, &[TPID_8021Q], &[0; 28]), |m| {
            assert_eq!((m.family, m.vlan_depth), (family::NONE, 1));
        }),
    ];

    // Malformed frames: each layer cut short or inconsistent.
    let mut truncated_vlan = ether(ETHERTYPE_IPV4, &[TPID_8021Q], &[]);
    truncated_vlan.truncate(16);
    let ipv4_full = ipv4(ip_proto::TCP, A4, B4, &[], Frag4::default(), &tcp_syn);
    let with_ip = |ip: Vec<u8>| ether(ETHERTYPE_IPV4, &[], &ip);
    let patch = |mut ip: Vec<u8>, at: usize, value: u8| {
        ip[at] = value;
        ip
    };
    let mut total_beyond = ipv4_full.clone();
    total_beyond[2..4].copy_from_slice(&100u16.to_be_bytes());
    let mut total_short = ipv4_full.clone();
    total_short[2..4].copy_from_slice(&16u16.to_be_bytes());
    let mut ipv6_long_payload = ipv6(ip_proto::UDP, a6(), b6(), &udp_dns);
    ipv6_long_payload[4..6].copy_from_slice(&500u16.to_be_bytes());
    // Seven destination-options headers, the innermost pointing at UDP.
    let mut long_chain = udp(1, 2, &[]);
    let mut next = ip_proto::UDP;
    for _ in 0..7 {
        long_chain = ipv6_ext(next, 0, &long_chain);
        next = 60;
    }
    let mut hop_cut = ipv6_ext(ip_proto::TCP, 2, &[]);
    hop_cut.truncate(8);
    let mut tcp_long_doff = tcp_syn.clone();
    tcp_long_doff[12] = 15 << 4;
    let mut tcp_short_doff = tcp_syn.clone();
    tcp_short_doff[12] = 4 << 4;
    f.extend([
        bad("truncated 802.1Q tag", truncated_vlan, m::TRUNCATED_VLAN),
        bad(
            "three vlan tags",
            ether(ETHERTYPE_IPV4, &[TPID_8021AD, TPID_8021Q, TPID_8021Q], &ipv4_full),
            m::VLAN_TOO_DEEP,
        ),
        bad_xdp_only("ipv4 header cut at 10 bytes", with_ip(ipv4_full[..10].to_vec()), m::TRUNCATED_IPV4),
        bad("ipv4 ihl 4", with_ip(patch(ipv4_full.clone(), 0, 0x44)), m::IPV4_BAD_IHL),
        bad("ipv4 ihl 6 with options cut", with_ip(patch(ipv4_full[..22].to_vec(), 0, 0x46)), m::TRUNCATED_IPV4),
        bad("ipv4 version 5", with_ip(patch(ipv4_full.clone(), 0, 0x55)), m::IPV4_BAD_VERSION),
        bad("ipv4 total length beyond frame", with_ip(total_beyond), m::IPV4_BAD_TOTAL_LENGTH),
        bad("ipv4 total length below header", with_ip(total_short), m::IPV4_BAD_TOTAL_LENGTH),
        bad("ipv4 tcp cut at 10 bytes", v4frame(ip_proto::TCP, &tcp_syn[..10]), m::TRUNCATED_TCP),
        bad("ipv4 tcp data offset 4", v4frame(ip_proto::TCP, &tcp_short_doff), m::TCP_BAD_DATA_OFFSET),
        bad("ipv4 tcp data offset 15 without options", v4frame(ip_proto::TCP, &tcp_long_doff), m::TRUNCATED_TCP),
        bad("ipv4 udp cut at 4 bytes", v4frame(ip_proto::UDP, &udp_dns[..4]), m::TRUNCATED_UDP),
        bad("ipv4 icmp cut at 4 bytes", v4frame(ip_proto::ICMP, &icmp(8, 0, 1, 1, &[])[..4]), m::TRUNCATED_ICMP),
        bad("ipv4 gre cut at 2 bytes", v4frame(ip_proto::GRE, &gre(0x0800, &[])[..2]), m::TRUNCATED_GRE),
        bad(
            "ipv4 first fragment too short for tcp",
            with_ip(ipv4(ip_proto::TCP, A4, B4, &[], Frag4 { more: true, offset_units: 0, id: 5 }, &tcp_syn[..8])),
            m::TRUNCATED_TCP,
        ),
        bad_xdp_only(
            "ipv6 header cut at 20 bytes",
            ether(ETHERTYPE_IPV6, &[], &ipv6(ip_proto::UDP, a6(), b6(), &[])[..20]),
            m::TRUNCATED_IPV6,
        ),
        bad(
            "ipv6 version 4",
            ether(ETHERTYPE_IPV6, &[], &patch(ipv6(ip_proto::UDP, a6(), b6(), &udp_dns), 0, 0x40)),
            m::IPV6_BAD_VERSION,
        ),
        bad(
            "ipv6 payload length beyond frame",
            ether(ETHERTYPE_IPV6, &[], &ipv6_long_payload),
            m::IPV6_BAD_PAYLOAD_LENGTH,
        ),
        bad("ipv6 hop-by-hop cut short", v6frame(0, &hop_cut), m::TRUNCATED_IPV6_EXTENSION),
        bad("ipv6 seven destination options headers", v6frame(60, &long_chain), m::IPV6_EXTENSION_CHAIN_TOO_LONG),
        bad("ipv6 udp cut at 6 bytes", v6frame(ip_proto::UDP, &udp_dns[..6]), m::TRUNCATED_UDP),
        bad("ipv6 icmpv6 cut at 2 bytes", v6frame(ip_proto::ICMPV6, &[128, 0]), m::TRUNCATED_ICMP),
    ]);
    f
}

#[test]
fn parser_fixture_table_on_both_hooks() {
    if !kernel_tests_enabled("parser_fixture_table_on_both_hooks") {
        return;
    }
    let mut dp = Dataplane::load(&LoadOptions { trace: true, ..Default::default() }).expect("load programs");
    let table = fixtures();
    assert!(table.len() >= 30, "the table must hold at least 30 frames");
    let mut failures = Vec::new();
    for hook in HOOKS {
        let h = hook.stats_index();
        for fx in &table {
            if hook == Hook::Tc && fx.tc_refuses {
                let refused = run(&mut dp, hook, &fx.frame);
                assert!(refused.is_err(), "{}: TC test-run accepted a frame shorter than an IP header", fx.name);
                continue;
            }
            let before = dp.counters().expect("counters");
            let outcome = run(&mut dp, hook, &fx.frame).unwrap_or_else(|e| panic!("{}: {e:#}", fx.name));
            let after = dp.counters().expect("counters");
            let (want_verdict, want_step, want_reason) = match fx.malformed {
                Some(reason) => (verdict::DROP, step::MALFORMED, reason),
                None if outcome.meta.family == family::NONE => (verdict::PASS, step::NOT_IP, 0),
                None => (verdict::PASS, step::UNCONFIGURED, 0),
            };
            let got = (outcome.verdict, outcome.decision.step, outcome.decision.reason);
            if got != (want_verdict, want_step, want_reason) {
                failures.push(format!(
                    "{hook:?} {}: got verdict/step/reason {got:?} ({}), want {:?} ({})",
                    fx.name,
                    m::NAMES[usize::from(got.2)],
                    (want_verdict, want_step, want_reason),
                    m::NAMES[usize::from(want_reason)],
                ));
                continue;
            }
            // Counter effect: exactly the decision slot, plus the reason slot when malformed.
            let mut want_delta = vec![0u64; after.len()];
            // No interface is enforced here: everything counts in interface slot 0.
            want_delta[stats::decision_slot(0, h, want_step, u32::from(want_verdict)) as usize] = 1;
            if let Some(reason) = fx.malformed {
                want_delta[stats::malformed_slot(0, h, reason) as usize] = 1;
            }
            let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            if delta != want_delta {
                failures.push(format!("{hook:?} {}: counters moved wrongly: {delta:?}", fx.name));
            }
            if fx.malformed.is_none() {
                let check = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (fx.check)(&outcome.meta)));
                if check.is_err() {
                    failures.push(format!("{hook:?} {}: parsed fields wrong: {:?}", fx.name, outcome.meta));
                }
            } else {
                assert_eq!(outcome.meta, PacketMeta::default(), "{}: malformed frames carry no fields", fx.name);
            }
        }
    }
    assert!(failures.is_empty(), "{} fixture failures:\n{}", failures.len(), failures.join("\n"));
    eprintln!("parser fixtures: {} frames x 2 hooks passed", table.len());
}
