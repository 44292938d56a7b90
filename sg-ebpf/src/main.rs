//! sgctl kernel side: `sg_ingress` (XDP) and `sg_egress` (TC) evaluate each packet
//! against the security groups of the interface it crosses.
//!
//! Both hooks share one pipeline ([`evaluate`]): parse, then decide. The programs are thin
//! wrappers that map the decision to their hook's return code.
#![no_std]
#![no_main]

mod classify;
mod parse;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use sg_common::{DECISION_AUDIT, Decision, IFACE_AUDIT, PacketMeta, family, stats as slots, step, verdict};

use crate::parse::{Frame, parse};

/// How much of a TC packet is made linear before parsing, so headers that sit in
/// paged data are visible.
const TC_PULL_LEN: u32 = 512;

#[xdp]
pub fn sg_ingress(ctx: XdpContext) -> u32 {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    if passes(&evaluate(&frame, slots::HOOK_INGRESS, ctx.ingress_ifindex() as u32)) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[classifier]
pub fn sg_egress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    let wanted = if len < TC_PULL_LEN { len } else { TC_PULL_LEN };
    if ctx.data_end() - ctx.data() < wanted as usize {
        // A failed pull leaves the frame as it was; the parser then sees it as short.
        let _ = ctx.pull_data(wanted);
    }
    let frame = Frame::new(ctx.data(), ctx.data_end());
    // SAFETY: `skb` is the context the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if passes(&evaluate(&frame, slots::HOOK_EGRESS, ifindex)) { TC_ACT_OK } else { TC_ACT_SHOT }
}

/// Baseline for benchmarks: the same parse and counting as `sg_ingress`, no decision.
/// Not loaded by sgctl itself.
#[xdp]
pub fn sg_baseline_xdp(ctx: XdpContext) -> u32 {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let _ = baseline(&frame, slots::HOOK_INGRESS);
    xdp_action::XDP_PASS
}

/// Baseline for benchmarks on the TC hook (see `sg_baseline_xdp`).
#[classifier]
pub fn sg_baseline_tc(ctx: TcContext) -> i32 {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let _ = baseline(&frame, slots::HOOK_EGRESS);
    TC_ACT_OK
}

#[inline(always)]
fn baseline(frame: &Frame, hook: u32) -> Decision {
    let (meta, decision) = match parse(frame) {
        Err(reason) => (PacketMeta::default(), Decision::malformed(reason)),
        Ok(meta) => (meta, Decision::new(verdict::PASS, step::UNCONFIGURED)),
    };
    stats::record(hook, &meta, &decision);
    decision
}

/// Whether the hook lets the packet through: its verdict, unless in audit mode.
#[inline(always)]
fn passes(decision: &Decision) -> bool {
    decision.verdict == verdict::PASS || decision.flags & DECISION_AUDIT != 0
}

/// Parses and decides one frame crossing `ifindex`, then counts (and, if enabled,
/// traces) the decision.
#[inline(always)]
fn evaluate(frame: &Frame, hook: u32, ifindex: u32) -> Decision {
    let (meta, decision) = match parse(frame) {
        Err(reason) => (PacketMeta::default(), Decision::malformed(reason)),
        Ok(meta) if meta.family == family::NONE => (meta, Decision::new(verdict::PASS, step::NOT_IP)),
        Ok(meta) => {
            let decision = decide(&meta, hook, ifindex);
            (meta, decision)
        }
    };
    stats::record(hook, &meta, &decision);
    decision
}

/// SPEC section 3 from step 2 on, for a well-formed IP packet. Sessions will slot in
/// here, before classification.
#[inline(always)]
fn decide(meta: &PacketMeta, hook: u32, ifindex: u32) -> Decision {
    let Some(iface) = classify::interface(ifindex) else {
        return Decision::new(verdict::PASS, step::UNCONFIGURED);
    };
    let ingress = hook == slots::HOOK_INGRESS;
    let slot = if ingress { iface.ingress } else { iface.egress };
    if slot == 0 {
        return Decision::new(verdict::PASS, step::UNCONFIGURED);
    }
    let mut decision = classify::classify(slot, meta, ingress);
    if iface.flags & IFACE_AUDIT != 0 {
        decision.flags |= DECISION_AUDIT;
    }
    decision
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
