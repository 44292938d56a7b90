//! The embedded kernel object and loading it into the kernel.

use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, SchedClassifier, Xdp},
};
use sg_common::{global, map, program};

use super::{
    MapSource,
    capacity::Capacity,
    error::{DataplaneError, Doing as _, Result},
};
use crate::{clock, privilege::check_privileges};

/// The kernel-side object, built by `build.rs` from the `sg-ebpf` crate.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sg-ebpf"));

/// A stable fingerprint of the embedded object and what the programs were specialised
/// with at load time: two agents with the same identity run the same programs, so one can
/// adopt the other's pinned generation as it is; otherwise it loads its own (an upgrade).
pub fn identity(options: &LoadOptions, features: &KernelFeatures) -> String {
    // FNV-1a: stable across builds and Rust versions, unlike `DefaultHasher`.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let flags = [u8::from(options.trace), u8::from(features.coarse_clock)];
    for byte in OBJECT.iter().chain(&flags) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}-{}", OBJECT.len())
}

/// What to set before the programs are verified.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Record every packet's parse result and decision in the trace map (tests).
    pub trace: bool,
    /// Sizes of the classification maps.
    pub capacity: Capacity,
    /// Bytes of the verdict-event ring (a power of two, at least a page; 0: 1 MiB).
    pub event_ring_bytes: u32,
}

/// The verdict-event ring's size when `LoadOptions::event_ring_bytes` is 0.
pub const DEFAULT_EVENT_RING_BYTES: u32 = 1 << 20;

/// The loaded (verified, not yet attached) programs and their maps.
pub struct Dataplane {
    pub ebpf: Ebpf,
    /// [`identity`] of what was loaded.
    pub identity: String,
    /// What the kernel offered at load time (and so which fallbacks the programs took).
    pub features: KernelFeatures,
}

impl Dataplane {
    /// Loads and verifies both programs. A verifier rejection becomes a one-line error
    /// carrying the last lines of the verifier log.
    pub fn load(options: &LoadOptions) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        check_privileges()?;
        let trace = u8::from(options.trace);
        let ns_per_jiffy = clock::ns_per_jiffy();
        let features = KernelFeatures::probe();
        let coarse_clock = u8::from(features.coarse_clock);
        let c = &options.capacity;
        let mut ebpf = EbpfLoader::new()
            .override_global(global::TRACE_ENABLED, &trace, true)
            .override_global(global::NS_PER_JIFFY, &ns_per_jiffy, true)
            .override_global(global::COARSE_CLOCK, &coarse_clock, true)
            .map_max_entries(map::SESSIONS, c.sessions)
            .map_max_entries(map::OPENING_SESSIONS, c.opening_sessions())
            .map_max_entries(map::VECTORS, c.vectors)
            .map_max_entries(map::CHUNKS, c.chunks)
            .map_max_entries(map::PEER_V6, c.peer_v6)
            .map_max_entries(map::RULE_INFO, c.rule_info)
            .map_max_entries(map::ADDR_TRIE, c.addr_entries)
            .map_max_entries(map::PORT_TRIE, c.port_entries)
            .map_max_entries(map::PORT_TABLES, c.port_tables)
            .map_max_entries(map::PORT_BLOCKS, c.port_blocks)
            // One counter entry per rule handle; a handle per rule-info entry at most.
            .map_max_entries(map::RULE_STATS, c.rule_info + 1)
            .map_max_entries(map::EVENTS, ring_bytes(options.event_ring_bytes))
            .load(OBJECT)
            .doing("loading the eBPF object")?;
        let xdp: &mut Xdp = program_mut(&mut ebpf, program::INGRESS_XDP)?;
        xdp.load().map_err(|e| verifier_error(program::INGRESS_XDP, e))?;
        let tc: &mut SchedClassifier = program_mut(&mut ebpf, program::EGRESS_TC)?;
        tc.load().map_err(|e| verifier_error(program::EGRESS_TC, e))?;
        Ok(Self { ebpf, identity: identity(options, &features), features })
    }

    pub fn xdp(&mut self) -> Result<&mut Xdp> {
        program_mut(&mut self.ebpf, program::INGRESS_XDP)
    }

    pub fn tc(&mut self) -> Result<&mut SchedClassifier> {
        program_mut(&mut self.ebpf, program::EGRESS_TC)
    }
}

impl MapSource for Dataplane {
    /// Takes map `name` out of the object; each map can be taken once.
    fn take_raw_map(&mut self, name: &str) -> Result<aya::maps::Map> {
        self.ebpf.take_map(name).ok_or_else(|| DataplaneError::MissingMap(name.to_string()))
    }
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or_else(|| DataplaneError::MissingProgram(name.to_string()))?;
    Ok(program.try_into()?)
}

/// A ring size the kernel accepts: a power of two of at least a page.
fn ring_bytes(asked: u32) -> u32 {
    let asked = if asked == 0 { DEFAULT_EVENT_RING_BYTES } else { asked };
    asked.max(4096).next_power_of_two()
}

/// Turns a load failure into one line; for verifier rejections, the log's last lines.
fn verifier_error(name: &str, error: ProgramError) -> DataplaneError {
    match error {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            if std::env::var_os("SGCTL_VERIFIER_LOG").is_some() {
                tracing::error!("the verifier's log of {name}:\n{log}");
            }
            let tail: Vec<&str> = log.lines().rev().take(4).collect::<Vec<_>>();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            DataplaneError::Rejected { program: name.to_string(), io_error, tail: tail.join(" | ") }
        }
        other => DataplaneError::Refused(format!("loading {name}: {other}")),
    }
}

/// What the running kernel offers that the programs may use, probed before loading
/// (the programs take a fallback that keeps their semantics where a feature is missing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelFeatures {
    /// `bpf_ktime_get_coarse_ns` (Linux 5.11+); without it the sessions' clock is
    /// `bpf_ktime_get_ns`.
    pub coarse_clock: bool,
}

/// `SGCTL_FALLBACKS=1`: take every fallback an older kernel or a driver without native
/// XDP would make sgctl take, on a kernel that has it all, so the tests run those paths
/// here: the sessions' clock without `bpf_ktime_get_coarse_ns`, a clsact filter instead
/// of TCX, generic XDP where `--xdp-mode auto` would get native, and one syscall per
/// map element instead of batched writes. Read once per process.
pub fn fallbacks_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| {
        let forced = std::env::var("SGCTL_FALLBACKS").is_ok_and(|v| v == "1");
        if forced {
            tracing::warn!(
                "SGCTL_FALLBACKS=1: taking every fallback (ktime clock, clsact, generic XDP in auto mode, \
                 per-element map writes)"
            );
        }
        forced
    })
}

impl KernelFeatures {
    /// Probes the kernel; with [`fallbacks_forced`] every feature counts as missing.
    pub fn probe() -> Self {
        if fallbacks_forced() {
            return Self { coarse_clock: false };
        }
        Self { coarse_clock: helper_exists(BPF_FUNC_KTIME_GET_COARSE_NS) }
    }
}

/// `bpf_ktime_get_coarse_ns`'s helper id (include/uapi/linux/bpf.h).
const BPF_FUNC_KTIME_GET_COARSE_NS: i32 = 160;

/// Whether the kernel accepts an XDP program calling helper `id`: a three-instruction
/// program (`call id; r0 = XDP_PASS; exit`) loaded and closed at once, as libbpf probes.
fn helper_exists(id: i32) -> bool {
    let insn = |code: u8, imm: i32| -> u64 { u64::from(code) | (u64::from(imm as u32) << 32) };
    let insns: [u64; 3] = [insn(0x85, id), insn(0xb7, 2), insn(0x95, 0)];
    let license = c"GPL";
    // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license; the rest 0.
    let mut attr = [0u64; 16];
    attr[0] = 6 | (insns.len() as u64) << 32; // BPF_PROG_TYPE_XDP
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    // SAFETY: `attr` outlives the call and points at live buffers; BPF_PROG_LOAD is 5.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 5, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` is the program fd just returned to us.
    unsafe { libc::close(fd as i32) };
    true
}

#[cfg(test)]
#[path = "object_stack_tests.rs"]
mod stack_tests;
