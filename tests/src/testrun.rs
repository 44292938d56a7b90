//! Running frames through the loaded programs with BPF_PROG_TEST_RUN.

use std::net::IpAddr;

use anyhow::{Result, bail};
use aya::programs::{TestRun as _, TestRunOptions};
use sg_common::{DECISION_AUDIT, Decision, PacketMeta, ip_proto, stats, verdict};
use sgctl::{
    control::Enforcer,
    dataplane::{Capacity, Dataplane, LoadOptions},
    policy::config::{Config, Direction, InterfaceBinding, Mode},
    policy::eval::{Decision as RefDecision, PacketTuple, evaluate},
};

/// The two hooks; every matcher test runs on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `sg_ingress`, XDP.
    Xdp,
    /// `sg_egress`, TC.
    Tc,
}

pub const HOOKS: [Hook; 2] = [Hook::Xdp, Hook::Tc];

/// Session-table entries for tests that flush or list the table around every probe: a
/// full-size table costs a scan of all its 262,144 buckets per flush (a fifth of the
/// differential tests' time), and a few thousand entries hold any generated case.
pub const TEST_SESSIONS: u32 = 4096;

/// Load options for BPF_PROG_TEST_RUN tests: tracing on, a [`TEST_SESSIONS`] table.
pub fn test_load_options() -> LoadOptions {
    LoadOptions { trace: true, capacity: test_capacity(), ..LoadOptions::default() }
}

/// The default capacity with a [`TEST_SESSIONS`] session table.
pub fn test_capacity() -> Capacity {
    Capacity { sessions: TEST_SESSIONS, ..Capacity::default() }
}

impl Hook {
    pub fn stats_index(self) -> u32 {
        match self {
            Hook::Xdp => stats::HOOK_INGRESS,
            Hook::Tc => stats::HOOK_EGRESS,
        }
    }
}

/// What one run produced: the program's verdict and what it traced.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub verdict: u8,
    pub decision: Decision,
    pub meta: PacketMeta,
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

/// Runs `frame` once through `hook` of a data plane loaded with tracing on.
pub fn run(dp: &mut Dataplane, hook: Hook, frame: &[u8]) -> Result<Outcome> {
    dp.clear_trace(hook.stats_index())?;
    let opts = TestRunOptions { data_in: Some(frame), repeat: 1, ..Default::default() };
    let ret = match hook {
        Hook::Xdp => dp.xdp()?.test_run(opts)?.return_value,
        Hook::Tc => dp.tc()?.test_run(opts)?.return_value,
    };
    let verdict = match (hook, ret) {
        (Hook::Xdp, XDP_PASS) | (Hook::Tc, TC_ACT_OK) => verdict::PASS,
        (Hook::Xdp, XDP_DROP) | (Hook::Tc, TC_ACT_SHOT) => verdict::DROP,
        _ => bail!("{hook:?} returned unexpected code {ret}"),
    };
    let trace = dp.last_trace(hook.stats_index())?;
    if trace.seq != 1 {
        bail!("{hook:?}: expected one fresh trace record, found seq {}", trace.seq);
    }
    Ok(Outcome { verdict, decision: trace.decision, meta: trace.meta })
}

/// Average ns per run of `frame` over `repeat` runs (BPF_PROG_TEST_RUN's own timer).
pub fn time_ns(dp: &mut Dataplane, hook: Hook, frame: &[u8], repeat: u32) -> Result<f64> {
    let opts = TestRunOptions { data_in: Some(frame), repeat, ..Default::default() };
    let result = match hook {
        Hook::Xdp => dp.xdp()?.test_run(opts)?,
        Hook::Tc => dp.tc()?.test_run(opts)?,
    };
    Ok(result.duration.as_nanos() as f64)
}

/// A frame carrying `packet` (TCP SYN, UDP, ICMP of the type and code its key holds, or
/// a bare header).
pub fn frame_for(packet: &PacketTuple) -> Vec<u8> {
    // An ICMP packet's type and code are its key (`PacketTuple::dst_port`).
    let [icmp_type, icmp_code] = packet.dst_port.to_be_bytes();
    frame_full(packet, crate::frames::TCP_SYN, (icmp_type, icmp_code), 0x4242)
}

/// A frame carrying `packet` with the given TCP flags (TCP), or ICMP/ICMPv6 type and
/// echo identifier (ICMP); other protocols get UDP, GRE or a bare 8-byte header.
pub fn frame_with(packet: &PacketTuple, tcp_flags: u8, icmp_type: u8, icmp_id: u16) -> Vec<u8> {
    frame_full(packet, tcp_flags, (icmp_type, 0), icmp_id)
}

/// [`frame_with`] with an ICMP code.
pub fn frame_full(packet: &PacketTuple, tcp_flags: u8, (icmp_type, icmp_code): (u8, u8), icmp_id: u16) -> Vec<u8> {
    use crate::frames::*;
    let transport = match packet.protocol {
        ip_proto::TCP => tcp(packet.src_port, packet.dst_port, tcp_flags, &[]),
        ip_proto::UDP => udp(packet.src_port, packet.dst_port, b"probe"),
        ip_proto::ICMP | ip_proto::ICMPV6 => icmp(icmp_type, icmp_code, icmp_id, 1, b"probe"),
        ip_proto::GRE => gre(0x0800, &[]),
        _ => vec![0; 8],
    };
    match (packet.src, packet.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ether(
            ETHERTYPE_IPV4,
            &[],
            &ipv4(packet.protocol, s.octets(), d.octets(), &[], Frag4::default(), &transport),
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            ether(ETHERTYPE_IPV6, &[], &ipv6(packet.protocol, s.octets(), d.octets(), &transport))
        }
        _ => panic!("mixed address families in {packet:?}"),
    }
}

/// The hook that sees packets of `direction` (ingress: XDP, egress: TC).
pub fn hook_for(direction: Direction) -> Hook {
    match direction {
        Direction::Ingress => Hook::Xdp,
        Direction::Egress => Hook::Tc,
    }
}

/// The ifindex BPF_PROG_TEST_RUN reports for both hooks (the loopback device).
pub const TEST_RUN_IFINDEX: u32 = 1;

/// Compares what the kernel decided with the reference evaluator; `Err` describes a
/// mismatch.
pub fn compare(
    cfg: &Config,
    iface: &InterfaceBinding,
    direction: Direction,
    packet: &PacketTuple,
    got: &Outcome,
) -> Result<(), String> {
    let want = evaluate(cfg, iface, direction, packet);
    let (want_verdict, want_step, want_rule) = expected(&want);
    // In audit mode the packet passes whatever the computed verdict.
    let audit = iface.mode == Mode::Audit;
    let returned = if audit { verdict::PASS } else { got.decision.verdict };
    if got.verdict != returned || (got.decision.flags & DECISION_AUDIT != 0) != audit {
        return Err(format!(
            "{direction:?} {packet:?}: returned {} for {:?} (audit {audit})",
            got.verdict, got.decision
        ));
    }
    let got_tuple = (got.decision.verdict, got.decision.step, got.decision.rule_id);
    if got_tuple == (want_verdict, want_step, want_rule) {
        Ok(())
    } else {
        Err(format!(
            "{direction:?} {packet:?}: kernel verdict/step/rule {got_tuple:?}, reference {:?} ({:?})",
            (want_verdict, want_step, want_rule),
            want.decided_by
        ))
    }
}

/// `got` with its rule handle turned back into the rule file's id (0 for pseudo-rules),
/// which is what the reference evaluator reports.
pub fn named(enforcer: &Enforcer, got: Outcome) -> Outcome {
    let mut named = got;
    named.decision.rule_id = enforcer.handles().rule_id_of(got.decision.rule_id);
    named
}

/// The (verdict, step, rule id) the kernel must report for a reference decision.
pub fn expected(decision: &RefDecision) -> (u8, u8, u32) {
    let o = sgctl::policy::eval::stateful::Outcome::of_decision(decision);
    (o.verdict, o.step, o.rule_id)
}
