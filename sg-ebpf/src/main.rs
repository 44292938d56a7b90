//! sgctl kernel side: `sg_ingress` (XDP) and `sg_egress` (TC) evaluate each packet
//! against the security groups of the interface it crosses.
//!
//! Both hooks share one pipeline ([`evaluate`]): parse, then decide. The programs are thin
//! wrappers that map the decision to their hook's return code.
#![no_std]
#![no_main]

mod parse;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use sg_common::{Decision, PacketMeta, family, stats as slots, step, verdict};

use crate::parse::{Frame, parse};

/// How much of a TC packet is made linear before parsing, so headers that sit in
/// paged data are visible.
const TC_PULL_LEN: u32 = 512;

#[xdp]
pub fn sg_ingress(ctx: XdpContext) -> u32 {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    match evaluate(&frame, slots::HOOK_INGRESS).verdict {
        verdict::PASS => xdp_action::XDP_PASS,
        _ => xdp_action::XDP_DROP,
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
    match evaluate(&frame, slots::HOOK_EGRESS).verdict {
        verdict::PASS => TC_ACT_OK,
        _ => TC_ACT_SHOT,
    }
}

/// Parses and decides one frame, then counts (and, if enabled, traces) the decision.
#[inline(always)]
fn evaluate(frame: &Frame, hook: u32) -> Decision {
    let (meta, decision) = match parse(frame) {
        Err(reason) => (PacketMeta::default(), Decision::malformed(reason)),
        Ok(meta) if meta.family == family::NONE => (meta, Decision::new(verdict::PASS, step::NOT_IP)),
        Ok(meta) => {
            let decision = Decision::new(verdict::PASS, step::UNCONFIGURED);
            (meta, decision)
        }
    };
    stats::record(hook, &meta, &decision);
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
