use super::*;
use crate::family;
use state::*;
use tcp_flag::{ACK, FIN, RST, SYN};

const PSH: u8 = 0x08;
const SYN_ACK: u8 = SYN | ACK;
const FIN_ACK: u8 = FIN | ACK;
const RST_ACK: u8 = RST | ACK;
const PSH_ACK: u8 = PSH | ACK;

/// The flag combinations the transition table covers, in its column order.
const FLAGS: [u8; 7] = [SYN, SYN_ACK, ACK, FIN, FIN_ACK, RST, RST_ACK];
const TCP_STATES: [u8; 7] = [
    TCP_SYN_SENT,
    TCP_SYN_RECEIVED,
    TCP_ESTABLISHED,
    TCP_FIN_FROM_OPENER,
    TCP_FIN_FROM_RESPONDER,
    TCP_CLOSING,
    TCP_CLOSED,
];

fn flags_name(flags: u8) -> String {
    let names = [(SYN, "SYN"), (ACK, "ACK"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH")];
    let parts: Vec<&str> = names.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, name)| *name).collect();
    if parts.is_empty() { "none".to_string() } else { parts.join("+") }
}

fn side(from_opener: bool) -> &'static str {
    if from_opener { "opener" } else { "responder" }
}

fn v4(octets: [u8; 4]) -> [u8; 16] {
    let mut addr = [0; 16];
    addr[..4].copy_from_slice(&octets);
    addr
}

fn v6(last: u16) -> [u8; 16] {
    let mut addr = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    addr[14..].copy_from_slice(&last.to_be_bytes());
    addr
}

const A4: [u8; 4] = [198, 18, 0, 1];
const B4: [u8; 4] = [198, 18, 0, 2];

fn ip_meta(fam: u8, protocol: u8, src: [u8; 16], dst: [u8; 16]) -> PacketMeta {
    PacketMeta { family: fam, protocol, src, dst, ..PacketMeta::default() }
}

fn tcp_meta(flags: u8) -> PacketMeta {
    PacketMeta {
        src_port: 40000,
        dst_port: 80,
        tcp_flags: flags,
        ..ip_meta(family::IPV4, ip_proto::TCP, v4(A4), v4(B4))
    }
}

fn icmp_meta(protocol: u8, icmp_type: u8, icmp_id: u16) -> PacketMeta {
    let (fam, src, dst) =
        if protocol == ip_proto::ICMPV6 { (family::IPV6, v6(1), v6(2)) } else { (family::IPV4, v4(A4), v4(B4)) };
    PacketMeta { icmp_type, icmp_id, ..ip_meta(fam, protocol, src, dst) }
}

/// The same packet travelling the other way.
fn reversed(meta: &PacketMeta) -> PacketMeta {
    PacketMeta { src: meta.dst, dst: meta.src, src_port: meta.dst_port, dst_port: meta.src_port, ..*meta }
}

// ----- tcp_next -----

#[test]
fn tcp_next_covers_every_state_side_and_flag_combination() {
    // Rows: state; columns: FLAGS (SYN, SYN+ACK, ACK, FIN, FIN+ACK, RST, RST+ACK).
    let (s1, s2, s3, s4, s5, s6, s7) = (
        TCP_SYN_SENT,
        TCP_SYN_RECEIVED,
        TCP_ESTABLISHED,
        TCP_FIN_FROM_OPENER,
        TCP_FIN_FROM_RESPONDER,
        TCP_CLOSING,
        TCP_CLOSED,
    );
    let table: [(u8, [u8; 7], [u8; 7]); 7] = [
        //  state  from the opener                  from the responder
        (s1, [s1, s1, s1, s4, s4, s7, s7], [s1, s2, s1, s5, s5, s7, s7]),
        (s2, [s2, s2, s3, s4, s4, s7, s7], [s2, s2, s2, s5, s5, s7, s7]),
        (s3, [s3, s3, s3, s4, s4, s7, s7], [s3, s3, s3, s5, s5, s7, s7]),
        (s4, [s4, s4, s4, s4, s4, s7, s7], [s4, s4, s4, s6, s6, s7, s7]),
        (s5, [s5, s5, s5, s6, s6, s7, s7], [s5, s5, s5, s5, s5, s7, s7]),
        (s6, [s1, s6, s6, s6, s6, s7, s7], [s6, s6, s6, s6, s6, s7, s7]),
        (s7, [s1, s7, s7, s7, s7, s7, s7], [s7, s7, s7, s7, s7, s7, s7]),
    ];
    let mut checked = 0;
    for (current, by_opener, by_responder) in table {
        for (from_opener, row) in [(true, by_opener), (false, by_responder)] {
            for (flags, want) in FLAGS.into_iter().zip(row) {
                let got = tcp_next(current, from_opener, flags);
                assert_eq!(
                    got,
                    want,
                    "{} + {} from the {}: got {}, want {}",
                    NAMES[usize::from(current)],
                    flags_name(flags),
                    side(from_opener),
                    NAMES[usize::from(got)],
                    NAMES[usize::from(want)]
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, TCP_STATES.len() * 2 * FLAGS.len());
}

#[test]
fn psh_does_not_change_tcp_transitions() {
    for current in TCP_STATES {
        for from_opener in [true, false] {
            for flags in FLAGS {
                assert_eq!(
                    tcp_next(current, from_opener, flags | PSH),
                    tcp_next(current, from_opener, flags),
                    "{} + {} from the {}",
                    NAMES[usize::from(current)],
                    flags_name(flags | PSH),
                    side(from_opener)
                );
            }
        }
    }
}

/// Feeds `(from_opener, flags)` segments from `start`; returns every state reached.
fn walk(start: u8, segments: &[(bool, u8)]) -> Vec<u8> {
    let mut current = start;
    segments
        .iter()
        .map(|&(from_opener, flags)| {
            current = tcp_next(current, from_opener, flags);
            current
        })
        .collect()
}

const OPENER: bool = true;
const RESPONDER: bool = false;

#[test]
fn handshake_data_and_close_by_the_opener() {
    let start = opening_state(&tcp_meta(SYN)).expect("a SYN opens");
    assert_eq!(start, TCP_SYN_SENT);
    let states = walk(
        start,
        &[
            (RESPONDER, SYN_ACK),
            (OPENER, ACK),
            (OPENER, PSH_ACK),
            (RESPONDER, ACK),
            (RESPONDER, PSH_ACK),
            (OPENER, ACK),
            (OPENER, FIN_ACK),
            (RESPONDER, ACK),
            (RESPONDER, FIN_ACK),
            (OPENER, ACK),
        ],
    );
    assert_eq!(
        states,
        [
            TCP_SYN_RECEIVED,
            TCP_ESTABLISHED,
            TCP_ESTABLISHED,
            TCP_ESTABLISHED,
            TCP_ESTABLISHED,
            TCP_ESTABLISHED,
            TCP_FIN_FROM_OPENER,
            TCP_FIN_FROM_OPENER,
            TCP_CLOSING,
            TCP_CLOSING,
        ]
    );
}

#[test]
fn close_by_the_responder() {
    let states = walk(
        TCP_ESTABLISHED,
        &[(RESPONDER, FIN_ACK), (OPENER, ACK), (OPENER, PSH_ACK), (OPENER, FIN_ACK), (RESPONDER, ACK)],
    );
    assert_eq!(
        states,
        [TCP_FIN_FROM_RESPONDER, TCP_FIN_FROM_RESPONDER, TCP_FIN_FROM_RESPONDER, TCP_CLOSING, TCP_CLOSING]
    );
}

#[test]
fn simultaneous_close_reaches_closing_in_either_order() {
    assert_eq!(walk(TCP_ESTABLISHED, &[(OPENER, FIN_ACK), (RESPONDER, FIN_ACK)]), [TCP_FIN_FROM_OPENER, TCP_CLOSING]);
    assert_eq!(
        walk(TCP_ESTABLISHED, &[(RESPONDER, FIN_ACK), (OPENER, FIN_ACK)]),
        [TCP_FIN_FROM_RESPONDER, TCP_CLOSING]
    );
    // Retransmitted FINs change nothing.
    assert_eq!(
        walk(TCP_ESTABLISHED, &[(OPENER, FIN_ACK), (OPENER, FIN_ACK), (RESPONDER, FIN_ACK), (RESPONDER, FIN_ACK)]),
        [TCP_FIN_FROM_OPENER, TCP_FIN_FROM_OPENER, TCP_CLOSING, TCP_CLOSING]
    );
}

#[test]
fn a_fin_during_the_handshake_half_closes() {
    assert_eq!(walk(TCP_SYN_SENT, &[(OPENER, FIN)]), [TCP_FIN_FROM_OPENER]);
    assert_eq!(walk(TCP_SYN_SENT, &[(RESPONDER, FIN_ACK)]), [TCP_FIN_FROM_RESPONDER]);
    // The opener's ACK of the SYN-ACK may carry its FIN.
    assert_eq!(walk(TCP_SYN_SENT, &[(RESPONDER, SYN_ACK), (OPENER, FIN_ACK)]), [TCP_SYN_RECEIVED, TCP_FIN_FROM_OPENER]);
}

#[test]
fn rst_from_either_side_closes_every_state() {
    for current in TCP_STATES {
        for from_opener in [true, false] {
            for flags in [RST, RST_ACK, RST | SYN, RST | FIN_ACK, RST | PSH_ACK] {
                assert_eq!(
                    tcp_next(current, from_opener, flags),
                    TCP_CLOSED,
                    "{} + {} from the {}",
                    NAMES[usize::from(current)],
                    flags_name(flags),
                    side(from_opener)
                );
            }
        }
    }
    // Mid-handshake and mid-stream.
    assert_eq!(walk(TCP_SYN_SENT, &[(RESPONDER, RST_ACK)]), [TCP_CLOSED]);
    assert_eq!(walk(TCP_ESTABLISHED, &[(OPENER, RST)]), [TCP_CLOSED]);
}

#[test]
fn the_opener_reuses_a_closed_tuple_with_a_new_syn() {
    for finished in [TCP_CLOSING, TCP_CLOSED] {
        let states = walk(finished, &[(OPENER, SYN), (RESPONDER, SYN_ACK), (OPENER, ACK), (OPENER, PSH_ACK)]);
        assert_eq!(
            states,
            [TCP_SYN_SENT, TCP_SYN_RECEIVED, TCP_ESTABLISHED, TCP_ESTABLISHED],
            "reuse from {}",
            NAMES[usize::from(finished)]
        );
        // A SYN from the responder, or a SYN-ACK, does not reopen.
        assert_eq!(tcp_next(finished, RESPONDER, SYN), finished);
        assert_eq!(tcp_next(finished, OPENER, SYN_ACK), finished);
    }
    // A half-closed connection is not reused: the SYN is just another segment.
    for half in [TCP_FIN_FROM_OPENER, TCP_FIN_FROM_RESPONDER] {
        assert_eq!(tcp_next(half, OPENER, SYN), half);
    }
    // Nor is a live one.
    assert_eq!(tcp_next(TCP_ESTABLISHED, OPENER, SYN), TCP_ESTABLISHED);
}

#[test]
fn next_state_delegates_tcp_to_tcp_next() {
    for current in TCP_STATES {
        for from_opener in [true, false] {
            for flags in FLAGS {
                assert_eq!(next_state(current, from_opener, &tcp_meta(flags)), tcp_next(current, from_opener, flags));
            }
        }
    }
}

#[test]
fn udp_becomes_replied_when_the_responder_answers() {
    let request = PacketMeta { src_port: 5353, dst_port: 53, ..ip_meta(family::IPV4, ip_proto::UDP, v4(A4), v4(B4)) };
    let reply = reversed(&request);
    assert_eq!(opening_state(&request), Some(UDP_UNREPLIED));
    assert_eq!(next_state(UDP_UNREPLIED, OPENER, &request), UDP_UNREPLIED);
    assert_eq!(next_state(UDP_UNREPLIED, RESPONDER, &reply), UDP_REPLIED);
    assert_eq!(next_state(UDP_REPLIED, OPENER, &request), UDP_REPLIED);
    assert_eq!(next_state(UDP_REPLIED, RESPONDER, &reply), UDP_REPLIED);
}

#[test]
fn icmp_and_other_sessions_keep_their_state() {
    for from_opener in [true, false] {
        assert_eq!(next_state(ICMP, from_opener, &icmp_meta(ip_proto::ICMP, 0, 9)), ICMP);
        assert_eq!(next_state(ICMP, from_opener, &icmp_meta(ip_proto::ICMPV6, 129, 9)), ICMP);
        let gre = ip_meta(family::IPV4, ip_proto::GRE, v4(A4), v4(B4));
        assert_eq!(next_state(OTHER, from_opener, &gre), OTHER);
    }
}

// ----- opening_state -----

#[test]
fn opening_state_for_tcp_flags() {
    const URG: u8 = 0x20;
    let cases: [(u8, Option<u8>); 15] = [
        (SYN, Some(TCP_SYN_SENT)),
        (SYN | PSH, Some(TCP_SYN_SENT)),
        (SYN | URG, Some(TCP_SYN_SENT)),
        // No mid-stream pickup: only a SYN starts a TCP flow, so a revoked flow stays cut.
        (ACK, None),
        (PSH_ACK, None),
        (SYN_ACK, None),
        (RST, None),
        (RST_ACK, None),
        (FIN, None),
        (FIN_ACK, None),
        (SYN | FIN, None),
        (SYN | RST, None),
        // Segments without SYN, ACK, RST or FIN (null scans, PSH or URG alone) open nothing.
        (0, None),
        (PSH, None),
        (URG | PSH, None),
    ];
    for (flags, want) in cases {
        assert_eq!(opening_state(&tcp_meta(flags)), want, "{}", flags_name(flags));
    }
}

#[test]
fn opening_state_for_udp_icmp_and_other_protocols() {
    let udp = ip_meta(family::IPV6, ip_proto::UDP, v6(1), v6(2));
    assert_eq!(opening_state(&udp), Some(UDP_UNREPLIED));

    // Echo requests open; echo replies, errors and everything else ICMP do not.
    assert_eq!(opening_state(&icmp_meta(ip_proto::ICMP, 8, 1)), Some(ICMP));
    assert_eq!(opening_state(&icmp_meta(ip_proto::ICMPV6, 128, 1)), Some(ICMP));
    for icmp_type in [0, 3, 4, 5, 11, 12, 13, 14, 128] {
        assert_eq!(opening_state(&icmp_meta(ip_proto::ICMP, icmp_type, 1)), None, "ICMP type {icmp_type}");
    }
    for icmp_type in [1, 2, 3, 4, 8, 129, 130, 133, 134, 135, 136, 137] {
        assert_eq!(opening_state(&icmp_meta(ip_proto::ICMPV6, icmp_type, 1)), None, "ICMPv6 type {icmp_type}");
    }

    for protocol in [ip_proto::GRE, 0, 4, 41, 50, 132, 255] {
        let meta = ip_meta(family::IPV4, protocol, v4(A4), v4(B4));
        assert_eq!(opening_state(&meta), Some(OTHER), "protocol {protocol}");
    }
}

// ----- timeouts -----

#[test]
fn default_timeouts_are_the_documented_figures() {
    let t = Timeouts::default();
    let s = 1_000_000_000;
    assert_eq!(t.for_state(TCP_ESTABLISHED), 910 * s);
    assert_eq!(t.for_state(TCP_SYN_SENT), 120 * s);
    assert_eq!(t.for_state(TCP_SYN_RECEIVED), 120 * s);
    // The provider's connection-tracking defaults: closing and time-wait 3 s.
    for closing in [TCP_FIN_FROM_OPENER, TCP_FIN_FROM_RESPONDER, TCP_CLOSING] {
        assert_eq!(t.for_state(closing), 3 * s);
    }
    assert_eq!(t.for_state(TCP_CLOSED), 10 * s);
    assert_eq!(t.for_state(UDP_UNREPLIED), 30 * s);
    assert_eq!(t.for_state(UDP_REPLIED), 30 * s);
    assert_eq!(t.for_state(ICMP), 30 * s);
    assert_eq!(t.for_state(OTHER), 600 * s);
}

/// Every field distinct, so a state mapped to the wrong field shows.
fn distinct_timeouts() -> Timeouts {
    Timeouts {
        tcp_established: 11,
        tcp_opening: 22,
        tcp_closing: 33,
        tcp_rst: 44,
        udp_unreplied: 55,
        udp_replied: 66,
        icmp: 77,
        other: 88,
    }
}

#[test]
fn for_state_maps_every_state_to_its_field() {
    let t = distinct_timeouts();
    let want: [(u8, u64); COUNT] = [
        (0, 88),
        (TCP_SYN_SENT, 22),
        (TCP_SYN_RECEIVED, 22),
        (TCP_ESTABLISHED, 11),
        (TCP_FIN_FROM_OPENER, 33),
        (TCP_FIN_FROM_RESPONDER, 33),
        (TCP_CLOSING, 33),
        (TCP_CLOSED, 44),
        (UDP_UNREPLIED, 55),
        (UDP_REPLIED, 66),
        (ICMP, 77),
        (OTHER, 88),
    ];
    for (state, timeout) in want {
        assert_eq!(t.for_state(state), timeout, "{}", NAMES[usize::from(state)]);
    }
    // Unknown states fall back to the catch-all timeout.
    assert_eq!(t.for_state(COUNT as u8), 88);
    assert_eq!(t.for_state(u8::MAX), 88);
}

#[test]
fn expiry_is_strictly_after_the_timeout() {
    let t = distinct_timeouts();
    let last_seen = 1_000_000;
    for state in 0..COUNT as u8 {
        let timeout = t.for_state(state);
        let name = NAMES[usize::from(state)];
        assert!(!expired(state, last_seen, last_seen, &t), "{name}: just seen");
        assert!(!expired(state, last_seen, last_seen + timeout - 1, &t), "{name}: 1 ns before");
        assert!(!expired(state, last_seen, last_seen + timeout, &t), "{name}: exactly at the timeout");
        assert!(expired(state, last_seen, last_seen + timeout + 1, &t), "{name}: 1 ns after");
        // A clock behind the last packet (another CPU's timestamp) never expires.
        assert!(!expired(state, last_seen, last_seen - 1, &t), "{name}: now before last_seen");
        assert!(!expired(state, u64::MAX, 0, &t), "{name}: saturating");
    }
    assert!(expired(TCP_ESTABLISHED, 0, u64::MAX, &Timeouts::default()));
    assert!(!expired(TCP_ESTABLISHED, 0, u64::MAX, &Timeouts { tcp_established: u64::MAX, ..t }));
}

#[test]
fn expiry_follows_the_current_state() {
    let t = Timeouts::default();
    let s = 1_000_000_000;
    // 60 s idle: an established connection lives, a reset one and UDP are gone; 5 s idle:
    // a closing connection is gone, replied UDP lives.
    assert!(!expired(TCP_ESTABLISHED, 0, 60 * s, &t));
    assert!(expired(TCP_CLOSED, 0, 60 * s, &t));
    assert!(expired(UDP_UNREPLIED, 0, 60 * s, &t));
    assert!(expired(UDP_REPLIED, 0, 60 * s, &t));
    assert!(expired(TCP_CLOSING, 0, 5 * s, &t));
    assert!(!expired(UDP_REPLIED, 0, 5 * s, &t));
    assert!(expired(ICMP, 0, 60 * s, &t));
    assert!(!expired(OTHER, 0, 60 * s, &t));
}

// ----- keys -----

#[test]
fn both_directions_of_a_tcp_flow_share_a_key() {
    let out = tcp_meta(SYN);
    let back = reversed(&tcp_meta(SYN_ACK));
    let (key_out, out_low) = SessionKey::of(7, &out);
    let (key_back, back_low) = SessionKey::of(7, &back);
    assert_eq!(key_out, key_back);
    assert_ne!(out_low, back_low);
    // 198.18.0.1 < 198.18.0.2: the opener is the low end.
    assert!(out_low);
    assert_eq!(key_out.ifindex, 7);
    assert_eq!(key_out.family, family::IPV4);
    assert_eq!(key_out.protocol, ip_proto::TCP);
    assert_eq!(key_out._pad, [0; 2]);
    assert_eq!((key_out.low_addr, key_out.low_port), (v4(A4), 40000));
    assert_eq!((key_out.high_addr, key_out.high_port), (v4(B4), 80));
    // The interface is part of the key.
    assert_ne!(SessionKey::of(8, &out).0, key_out);
}

#[test]
fn both_directions_of_a_udp_flow_share_a_key_in_ipv6() {
    let request = PacketMeta { src_port: 53, dst_port: 5353, ..ip_meta(family::IPV6, ip_proto::UDP, v6(9), v6(3)) };
    let (key, request_low) = SessionKey::of(1, &request);
    let (key_back, reply_low) = SessionKey::of(1, &reversed(&request));
    assert_eq!(key, key_back);
    assert!(!request_low, "2001:db8::9 is above 2001:db8::3");
    assert!(reply_low);
    assert_eq!(key.family, family::IPV6);
    assert_eq!((key.low_addr, key.low_port), (v6(3), 5353));
    assert_eq!((key.high_addr, key.high_port), (v6(9), 53));
}

#[test]
fn ends_are_ordered_by_address_then_port() {
    // The same address at both ends (a host talking to itself): the port decides.
    let meta = PacketMeta { src_port: 9000, dst_port: 80, ..ip_meta(family::IPV4, ip_proto::TCP, v4(A4), v4(A4)) };
    let (key, src_low) = SessionKey::of(1, &meta);
    assert!(!src_low);
    assert_eq!((key.low_port, key.high_port), (80, 9000));
    let (key_back, back_low) = SessionKey::of(1, &reversed(&meta));
    assert_eq!(key, key_back);
    assert!(back_low);
    // The address outranks the port.
    let meta = PacketMeta { src_port: 1, dst_port: 65535, ..ip_meta(family::IPV4, ip_proto::UDP, v4(B4), v4(A4)) };
    let (key, src_low) = SessionKey::of(1, &meta);
    assert!(!src_low);
    assert_eq!((key.low_addr, key.low_port), (v4(A4), 65535));
}

#[test]
fn icmp_echo_request_and_reply_share_a_key_by_identifier() {
    for (protocol, request, reply) in [(ip_proto::ICMP, 8, 0), (ip_proto::ICMPV6, 128, 129)] {
        let out = icmp_meta(protocol, request, 0x1234);
        let back = reversed(&icmp_meta(protocol, reply, 0x1234));
        let (key, out_low) = SessionKey::of(1, &out);
        let (key_back, back_low) = SessionKey::of(1, &back);
        assert_eq!(key, key_back, "protocol {protocol}");
        assert_ne!(out_low, back_low);
        // The requester's end holds the identifier, the responder's its complement.
        assert_eq!(key.ends(out_low), ((out.src, 0x1234), (out.dst, !0x1234)));
        assert_eq!(echo_identifier(&key, out_low), 0x1234);
        // Another identifier is another flow.
        let other = icmp_meta(protocol, request, 0x1235);
        assert_ne!(SessionKey::of(1, &other).0, key);
    }
    // ICMP and ICMPv6 flows never meet.
    assert_ne!(
        SessionKey::of(1, &icmp_meta(ip_proto::ICMP, 8, 1)).0.protocol,
        SessionKey::of(1, &icmp_meta(ip_proto::ICMPV6, 128, 1)).0.protocol
    );
}

#[test]
fn a_ping_each_way_with_one_identifier_is_two_flows() {
    for (protocol, request, reply) in [(ip_proto::ICMP, 8, 0), (ip_proto::ICMPV6, 128, 129)] {
        for id in [0, 1, 0x1234, 0x7fff, 0x8000, 0xffff] {
            let a_pings_b = icmp_meta(protocol, request, id);
            let b_pings_a = reversed(&a_pings_b);
            let (a_flow, _) = SessionKey::of(1, &a_pings_b);
            let (b_flow, _) = SessionKey::of(1, &b_pings_a);
            assert_ne!(a_flow, b_flow, "protocol {protocol} id {id}");
            // Each request's reply finds its own request's flow, and only that one.
            let b_answers = reversed(&icmp_meta(protocol, reply, id));
            let a_answers = icmp_meta(protocol, reply, id);
            assert_eq!(SessionKey::of(1, &b_answers).0, a_flow);
            assert_eq!(SessionKey::of(1, &a_answers).0, b_flow);
        }
    }
}

#[test]
fn echo_continues_a_session_only_in_its_direction() {
    for (protocol, request, reply) in [(ip_proto::ICMP, 8, 0), (ip_proto::ICMPV6, 128, 129)] {
        let req = icmp_meta(protocol, request, 7);
        let rep = icmp_meta(protocol, reply, 7);
        assert!(continues_session(ICMP, OPENER, &req));
        assert!(!continues_session(ICMP, RESPONDER, &req), "a request from the responder is a new flow");
        assert!(continues_session(ICMP, RESPONDER, &rep));
        assert!(!continues_session(ICMP, OPENER, &rep), "a reply from the opener is not the session's");
        // Other ICMP messages never continue an echo session.
        assert!(!continues_session(ICMP, OPENER, &icmp_meta(protocol, 3, 7)));
    }
}

#[test]
fn udp_and_other_protocols_continue_from_either_end() {
    let udp = PacketMeta { src_port: 5353, dst_port: 53, ..ip_meta(family::IPV4, ip_proto::UDP, v4(A4), v4(B4)) };
    let gre = ip_meta(family::IPV6, ip_proto::GRE, v6(1), v6(2));
    for from_opener in [OPENER, RESPONDER] {
        for s in [UDP_UNREPLIED, UDP_REPLIED] {
            assert!(continues_session(s, from_opener, &udp));
        }
        assert!(continues_session(OTHER, from_opener, &gre));
    }
}

#[test]
fn tcp_continues_covers_every_state_side_and_flag_combination() {
    // For each state: which of FLAGS (SYN, SYN+ACK, ACK, FIN, FIN+ACK, RST, RST+ACK)
    // continue the session from the opener, then from the responder.
    let (y, n) = (true, false);
    let table: [(u8, [bool; 7], [bool; 7]); 7] = [
        (TCP_SYN_SENT, [y, n, n, n, n, y, y], [n, y, y, n, n, y, y]),
        (TCP_SYN_RECEIVED, [y, n, y, y, y, y, y], [n, y, y, y, y, y, y]),
        (TCP_ESTABLISHED, [n, n, y, y, y, y, y], [n, n, y, y, y, y, y]),
        (TCP_FIN_FROM_OPENER, [n, n, y, y, y, y, y], [n, n, y, y, y, y, y]),
        (TCP_FIN_FROM_RESPONDER, [n, n, y, y, y, y, y], [n, n, y, y, y, y, y]),
        (TCP_CLOSING, [y, n, y, y, y, y, y], [n, n, y, y, y, y, y]),
        (TCP_CLOSED, [y, n, y, y, y, y, y], [n, n, y, y, y, y, y]),
    ];
    for (current, from_opener_row, from_responder_row) in table {
        for (from_opener, row) in [(OPENER, from_opener_row), (RESPONDER, from_responder_row)] {
            for (flags, want) in FLAGS.iter().zip(row) {
                let got = continues_session(current, from_opener, &tcp_meta(*flags));
                assert_eq!(
                    got,
                    want,
                    "{} from the {} in {}",
                    flags_name(*flags),
                    side(from_opener),
                    NAMES[usize::from(current)]
                );
                // PSH never matters.
                assert_eq!(tcp_continues(current, from_opener, flags | PSH), got);
            }
        }
    }
}

#[test]
fn protocols_without_ports_are_keyed_by_address_pair() {
    for (fam, src, dst) in [(family::IPV4, v4(A4), v4(B4)), (family::IPV6, v6(1), v6(2))] {
        for protocol in [ip_proto::GRE, 132, 0] {
            // Stray port or identifier values in the meta are ignored.
            let meta = PacketMeta { src_port: 1, dst_port: 2, icmp_id: 3, ..ip_meta(fam, protocol, src, dst) };
            let plain = ip_meta(fam, protocol, src, dst);
            let (key, _) = SessionKey::of(1, &meta);
            assert_eq!(key, SessionKey::of(1, &plain).0);
            assert_eq!((key.low_port, key.high_port), (0, 0));
            assert_eq!(flow_ports(&meta), (0, 0));
            assert_eq!(SessionKey::of(1, &reversed(&meta)).0, key);
        }
    }
}

#[test]
fn flow_ports_by_protocol() {
    let tcp = tcp_meta(SYN);
    assert_eq!(flow_ports(&tcp), (40000, 80));
    let icmp = PacketMeta { src_port: 1, dst_port: 2, ..icmp_meta(ip_proto::ICMP, 8, 77) };
    assert_eq!(flow_ports(&icmp), (77, !77));
    assert_eq!(flow_ports(&icmp_meta(ip_proto::ICMPV6, 129, 77)), (!77, 77));
    // ICMP messages other than echo have no ports.
    assert_eq!(flow_ports(&icmp_meta(ip_proto::ICMP, 3, 77)), (0, 0));
    let udp =
        PacketMeta { icmp_id: 5, src_port: 6, dst_port: 7, ..ip_meta(family::IPV4, ip_proto::UDP, v4(A4), v4(B4)) };
    assert_eq!(flow_ports(&udp), (6, 7));
}

#[test]
fn ends_round_trip_to_the_packet_and_the_key() {
    let metas = [
        tcp_meta(SYN),
        reversed(&tcp_meta(SYN)),
        icmp_meta(ip_proto::ICMPV6, 128, 42),
        PacketMeta { src_port: 53, dst_port: 53, ..ip_meta(family::IPV6, ip_proto::UDP, v6(0xffff), v6(0)) },
        ip_meta(family::IPV4, ip_proto::GRE, v4(B4), v4(A4)),
    ];
    for meta in metas {
        let (key, src_is_low) = SessionKey::of(3, &meta);
        let (sport, dport) = flow_ports(&meta);
        let (opener, other) = key.ends(src_is_low);
        assert_eq!(opener, (meta.src, sport), "{meta:?}");
        assert_eq!(other, (meta.dst, dport), "{meta:?}");
        assert_eq!(key.ends(!src_is_low), (other, opener));
        // Rebuilding the key from either end order gives it back, with the side flag.
        assert_eq!(SessionKey::between(3, key.family, key.protocol, opener, other), (key, src_is_low));
        assert_eq!(SessionKey::between(3, key.family, key.protocol, other, opener), (key, !src_is_low));
    }
}

// ----- fragments -----

#[test]
fn fragment_key_and_first_fragment() {
    let meta = PacketMeta {
        frag_id: 0xdead_beef,
        fragment: fragment::FIRST,
        src_port: 1,
        ..ip_meta(family::IPV6, ip_proto::UDP, v6(1), v6(2))
    };
    let key = FragmentKey::of(4, &meta);
    assert_eq!(
        key,
        FragmentKey {
            ifindex: 4,
            family: family::IPV6,
            protocol: ip_proto::UDP,
            _pad: [0; 2],
            src: v6(1),
            dst: v6(2),
            id: 0xdead_beef
        }
    );
    assert!(is_first_fragment(&meta));
    assert!(!is_first_fragment(&PacketMeta { fragment: fragment::LATER, ..meta }));
    assert!(!is_first_fragment(&PacketMeta { fragment: fragment::NONE, ..meta }));
    assert_eq!(FRAGMENT_TIMEOUT_NS, 30_000_000_000);
}

// ----- layouts and names -----

#[test]
fn map_types_have_no_implicit_padding() {
    use core::mem::{align_of, size_of};
    // 4 + 1 + 1 + 2 + 16 + 16 + 2 + 2.
    assert_eq!(size_of::<SessionKey>(), 44);
    assert_eq!(align_of::<SessionKey>(), 4);
    // 3 * 8 + 2 * 4 + 6 * 1 + 2 + 2 * 4.
    assert_eq!(size_of::<Session>(), 48);
    assert_eq!(align_of::<Session>(), 8);
    assert_eq!(size_of::<Timeouts>(), 64);
    // 4 + 1 + 1 + 2 + 16 + 16 + 4.
    assert_eq!(size_of::<FragmentKey>(), 44);
    assert_eq!(align_of::<FragmentKey>(), 4);
    // 8 + 4 + 1 + 1 + 2.
    assert_eq!(size_of::<FragmentVerdict>(), 16);
    assert_eq!(align_of::<FragmentVerdict>(), 8);
}

#[test]
fn state_names_cover_every_state() {
    assert_eq!(NAMES.len(), COUNT);
    let named = [
        (TCP_SYN_SENT, "syn-sent"),
        (TCP_SYN_RECEIVED, "syn-received"),
        (TCP_ESTABLISHED, "established"),
        (TCP_FIN_FROM_OPENER, "fin-from-opener"),
        (TCP_FIN_FROM_RESPONDER, "fin-from-responder"),
        (TCP_CLOSING, "closing"),
        (TCP_CLOSED, "closed"),
        (UDP_UNREPLIED, "udp-unreplied"),
        (UDP_REPLIED, "udp-replied"),
        (ICMP, "icmp"),
        (OTHER, "other"),
    ];
    for (state, name) in named {
        assert_eq!(NAMES[usize::from(state)], name);
    }
    assert_eq!(usize::from(OTHER) + 1, COUNT);
}

#[test]
fn a_spoofed_syn_and_its_syn_ack_assure_nothing_the_handshake_does() {
    // The SYN-ACK a host sends to a spoofed SYN is a reply, but the flow is not assured
    // until the opener completes the handshake: a SYN flood stays in the opening table.
    let states = walk(TCP_SYN_SENT, &[(RESPONDER, SYN_ACK), (OPENER, ACK)]);
    assert!(!assures(TCP_SYN_SENT, false));
    assert!(!assures(states[0], true), "SYN-ACK: {}", NAMES[states[0] as usize]);
    assert!(assures(states[1], false), "the opener's ACK establishes");
    // A RST closes: a closed flow is never moved to the assured table.
    assert!(!assures(TCP_CLOSED, true));
    for s in [TCP_FIN_FROM_OPENER, TCP_FIN_FROM_RESPONDER, TCP_CLOSING] {
        assert!(assures(s, false), "{} (reached only through established)", NAMES[s as usize]);
    }
}

#[test]
fn udp_echo_and_other_protocols_are_assured_by_a_reply() {
    assert!(!assures(UDP_UNREPLIED, false));
    assert!(!assures(UDP_UNREPLIED, true), "the state moves first: UDP_REPLIED assures");
    assert!(assures(UDP_REPLIED, false));
    for s in [ICMP, OTHER] {
        assert!(!assures(s, false), "{}: the opener's packets do not assure", NAMES[s as usize]);
        assert!(assures(s, true), "{}: a reply does", NAMES[s as usize]);
    }
}

#[test]
fn the_opening_table_is_a_quarter_of_the_assured_one() {
    assert_eq!(table::opening_entries(262_144), 65_536);
    assert_eq!(table::opening_entries(4096), 1024);
    assert_eq!(table::opening_entries(100), 64, "never below 64");
}

fn segment(flags: u8, seq: u32, ack: u32) -> PacketMeta {
    PacketMeta { tcp_seq: seq, tcp_ack: ack, ..tcp_meta(flags) }
}

const INGRESS: bool = true;
const EGRESS: bool = false;

/// A session the instance answered: the peer's SYN, then the instance's SYN-ACK.
fn answered(instance_ack: u32) -> Session {
    let mut s = Session { state: TCP_SYN_SENT, ..Session::default() };
    take_anchors(&mut s, INGRESS, &segment(SYN, instance_ack.wrapping_sub(1), 0));
    assert_eq!(s.anchors, 0, "an arriving SYN sets no anchor");
    assert!(tcp_plausible(&s, INGRESS, &segment(RST, 12345, 0)), "nothing known yet: any RST");
    take_anchors(&mut s, EGRESS, &segment(SYN_ACK, 777, instance_ack));
    assert_eq!((s.anchors, s.instance_ack), (anchor::INSTANCE_ACK, instance_ack));
    s
}

#[test]
fn an_arriving_rst_or_fin_must_fall_near_the_instance_acknowledgement() {
    // Near the wrap, so both bounds wrap too.
    let ack = u32::MAX - 1000;
    let s = answered(ack);
    for flags in [RST, RST_ACK, FIN, FIN_ACK] {
        let plausible = |seq: u32| tcp_plausible(&s, INGRESS, &segment(flags, seq, 0));
        assert!(plausible(ack), "{}: exactly the acknowledgement", flags_name(flags));
        assert!(plausible(ack.wrapping_add(RECEIVE_AHEAD)), "{}: the last byte ahead", flags_name(flags));
        assert!(!plausible(ack.wrapping_add(RECEIVE_AHEAD + 1)), "{}: one past", flags_name(flags));
        assert!(plausible(ack.wrapping_sub(RECEIVE_BEHIND)), "{}: the last byte behind", flags_name(flags));
        assert!(!plausible(ack.wrapping_sub(RECEIVE_BEHIND + 1)), "{}: one before", flags_name(flags));
        assert!(!plausible(ack.wrapping_add(1 << 31)), "{}: the far side of the space", flags_name(flags));
        // What the instance sends is its own: never checked.
        assert!(tcp_plausible(&s, EGRESS, &segment(flags, ack.wrapping_add(1 << 31), 0)));
    }
    // Segments without RST or FIN are not checked.
    for flags in [ACK, PSH_ACK, SYN, SYN_ACK] {
        assert!(tcp_plausible(&s, INGRESS, &segment(flags, ack.wrapping_add(1 << 31), 0)), "{}", flags_name(flags));
    }
    // Nor other protocols.
    let udp = PacketMeta { protocol: ip_proto::UDP, ..segment(RST, 1, 0) };
    assert!(tcp_plausible(&s, INGRESS, &udp));
}

#[test]
fn the_anchor_follows_the_instance_latest_acknowledgement() {
    let mut s = answered(1000);
    take_anchors(&mut s, EGRESS, &segment(PSH_ACK, 5, 90_000_000));
    assert_eq!(s.instance_ack, 90_000_000);
    assert!(!tcp_plausible(&s, INGRESS, &segment(RST, 1000, 0)), "the old acknowledgement is far behind now");
    assert!(tcp_plausible(&s, INGRESS, &segment(RST, 90_000_000, 0)));
    // Arriving segments move nothing, whatever they acknowledge or carry.
    take_anchors(&mut s, INGRESS, &segment(PSH_ACK, 1, 2));
    take_anchors(&mut s, INGRESS, &segment(RST_ACK, 1, 2));
    assert_eq!((s.anchors, s.instance_ack), (anchor::INSTANCE_ACK, 90_000_000));
    // Nor does the instance's own RST (it acknowledges nothing that matters any more).
    take_anchors(&mut s, EGRESS, &segment(RST_ACK, 5, 7));
    assert_eq!(s.instance_ack, 90_000_000);
}

#[test]
fn before_its_first_acknowledgement_an_opening_instance_takes_only_a_rst_acknowledging_its_syn() {
    let mut s = Session { state: TCP_SYN_SENT, ..Session::default() };
    take_anchors(&mut s, EGRESS, &segment(SYN, 41, 0));
    assert_eq!((s.anchors, s.instance_syn), (anchor::INSTANCE_SYN, 42));
    // A closed port's answer: RST+ACK acknowledging the SYN.
    assert!(tcp_plausible(&s, INGRESS, &segment(RST_ACK, 0, 42)));
    assert!(!tcp_plausible(&s, INGRESS, &segment(RST_ACK, 0, 43)), "acknowledges something else");
    assert!(!tcp_plausible(&s, INGRESS, &segment(RST, 0, 42)), "no ACK bit: acknowledges nothing");
    // The handshake completes: from then on the acknowledgement is the anchor.
    take_anchors(&mut s, EGRESS, &segment(ACK, 42, 5001));
    assert_eq!(s.anchors, anchor::INSTANCE_SYN | anchor::INSTANCE_ACK);
    assert!(tcp_plausible(&s, INGRESS, &segment(RST, 5001, 0)));
    assert!(!tcp_plausible(&s, INGRESS, &segment(RST_ACK, 1 << 31, 42)), "acknowledging the SYN is not enough now");
}

#[test]
fn a_new_syn_on_the_tuple_forgets_the_old_connection_anchors() {
    let mut s = answered(1000);
    // The instance reuses the tuple: only its new SYN is known.
    take_anchors(&mut s, EGRESS, &segment(SYN, 9, 0));
    assert_eq!((s.anchors, s.instance_syn), (anchor::INSTANCE_SYN, 10));
    // The peer reuses it: nothing is known.
    let mut s = answered(1000);
    take_anchors(&mut s, INGRESS, &segment(SYN, 9, 0));
    assert_eq!(s.anchors, 0);
    assert!(tcp_plausible(&s, INGRESS, &segment(RST, 1 << 31, 0)));
}

/// The instance's acknowledgement only moves ahead, across the wrap too: an older one
/// folded in late (another CPU's, or a delayed slow-path segment) leaves it where it is.
#[test]
fn the_instance_ack_only_moves_ahead() {
    assert_eq!(later_ack(1000, 2000), 2000);
    assert_eq!(later_ack(2000, 1000), 2000);
    assert_eq!(later_ack(u32::MAX - 5, 10), 10, "across the wrap");
    assert_eq!(later_ack(10, u32::MAX - 5), 10);
    let mut s = answered(5000);
    take_anchors(&mut s, EGRESS, &segment(ACK, 777, 4000));
    assert_eq!(s.instance_ack, 5000, "an older acknowledgement does not move it back");
    take_anchors(&mut s, EGRESS, &segment(ACK, 777, 6000));
    assert_eq!(s.instance_ack, 6000);
}
