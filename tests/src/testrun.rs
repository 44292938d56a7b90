//! Running frames through the loaded programs with BPF_PROG_TEST_RUN.

use anyhow::{Result, bail};
use aya::programs::{TestRun as _, TestRunOptions};
use sg_common::{Decision, PacketMeta, stats, verdict};
use sgctl::ebpf::Dataplane;

/// The two hooks; every matcher test runs on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `sg_ingress`, XDP.
    Xdp,
    /// `sg_egress`, TC.
    Tc,
}

pub const HOOKS: [Hook; 2] = [Hook::Xdp, Hook::Tc];

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
