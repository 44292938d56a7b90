//! `cargo xtask bench`: measures side by side in one run and writes `bench/RESULTS.md`
//! (and a PNG plot of per-packet cost against rule count when gnuplot is present).
//!
//! Part 1, per-packet cost: BPF_PROG_TEST_RUN with `repeat`, 5 runs, medians and min-max,
//! on both hooks, IPv4 and IPv6, at several rule counts, beside the parse-and-count
//! baseline program loaded in the same run. Part 2, throughput on a veth pair with
//! trafgen, side by side with a minimal XDP program, nftables, iptables, ipset and
//! xdp-filter (`sg_tests::throughput`). Part 3, control plane: compile and apply time
//! and map memory. Part 4, sessions: memory and the fast path with the table filling up.
//! Part 5, verdict events a second to `sgctl log --follow --json`, accounted. Part 6, a
//! fleet of simulated agents on one etcd: membership change to compiled rules. `--quick` runs a small version in seconds (part of `cargo xtask test`,
//! so the benchmark cannot rot).

use std::{
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp};
use sg_common::program;
use sg_tests::{
    frames::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, Frag4, TCP_SYN, ether, ipv4, ipv6, tcp},
    r#gen::{RealisticOptions, as_egress, realistic_ruleset_with},
    testrun::TEST_RUN_IFINDEX,
};
use sgctl::{
    control::Enforcer,
    dataplane::{Capacity, Dataplane, LoadOptions},
    policy::compile::compile,
    policy::config::{Config, Direction, parse_str},
};

/// Traffic from here is dropped by the last-ranked rule of the benchmark rule sets.
const DROP_ALL_FROM: &str = "198.19.255.0/24";
/// The IPv6 network only the last-ranked rule matches (the IPv6 SYN's source is in it),
/// so the IPv6 figures measure the same work as the IPv4 ones: a drop by the last rule.
const DROP_ALL_FROM_V6: &str = "2001:db8:ffff:ff00::/56";
const SRC_V4: [u8; 4] = [198, 19, 255, 7];
const DST_V4: [u8; 4] = [198, 18, 0, 10];
const SEED: u64 = 0x5eed;

struct Settings {
    quick: bool,
    /// Parts to run (1-6); all unless `--only 1,3` narrows them.
    parts: Vec<u8>,
    sizes: Vec<usize>,
    repeat: u32,
    runs: usize,
    out: PathBuf,
}

/// Pins this thread to `cpu`.
fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; the calls only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            anyhow::bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Median and range of several runs, in ns per packet.
#[derive(Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        Self { median: samples[samples.len() / 2], min: samples[0], max: samples[samples.len() - 1] }
    }
    fn cell(&self) -> String {
        format!("{:.1} ({:.1}-{:.1})", self.median, self.min, self.max)
    }
}

/// A 64-byte frame (with FCS; 60 here): TCP SYN from the drop-all network.
fn syn(v6: bool) -> Vec<u8> {
    let transport = tcp(40000, 443, TCP_SYN, &[]);
    let mut frame = if v6 {
        let src = "2001:db8:ffff:ffff::7".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let dst = "2001:db8::10".parse::<std::net::Ipv6Addr>().unwrap().octets();
        ether(ETHERTYPE_IPV6, &[], &ipv6(6, src, dst, &transport))
    } else {
        ether(ETHERTYPE_IPV4, &[], &ipv4(6, SRC_V4, DST_V4, &[], Frag4::default(), &transport))
    };
    frame.resize(frame.len().max(60), 0);
    frame
}

fn time_program(run: &dyn Fn(TestRunOptions) -> Result<Duration>, frame: &[u8], s: &Settings) -> Result<Stat> {
    let mut samples = Vec::with_capacity(s.runs);
    for _ in 0..s.runs {
        let opts = TestRunOptions { data_in: Some(frame), repeat: s.repeat, ..Default::default() };
        samples.push(run(opts)?.as_nanos() as f64);
    }
    Ok(Stat::of(samples))
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

/// One run of `program` (XDP or TC) on `frame`: its return value.
fn one_verdict(program: &aya::programs::Program, frame: &[u8]) -> Result<u32> {
    Ok(match program {
        aya::programs::Program::Xdp(x) => x.test_run(one_run(frame))?.return_value,
        aya::programs::Program::SchedClassifier(c) => c.test_run(one_run(frame))?.return_value,
        _ => anyhow::bail!("not an XDP or TC program"),
    })
}

fn one_run(frame: &[u8]) -> TestRunOptions<'_> {
    TestRunOptions { data_in: Some(frame), repeat: 1, ..Default::default() }
}

/// The new-flow SYN must be dropped (by the last-ranked rule of its family): an accepted
/// one opens a session, other work than the row claims to measure.
fn expect_dropped(got: u32, drop: u32, n: usize, v6: bool, hook: &str) -> Result<()> {
    anyhow::ensure!(
        got == drop,
        "{hook} {} SYN at {n} rules: return value {got}, not a drop",
        if v6 { "IPv6" } else { "IPv4" }
    );
    Ok(())
}

/// Runs a program through BPF_PROG_TEST_RUN; returns the kernel's time per run.
type Runner<'a> = dyn Fn(TestRunOptions) -> Result<Duration> + 'a;

/// Runs each `(program, frame)` once per round, four times the usual number of rounds,
/// so drift and noise on the machine hit all of them alike; returns each one's statistics
/// and the median of its per-round ratios to the first (each round ran back to back, so a
/// shift in the machine's speed between rounds cancels out).
fn time_rounds<const N: usize>(runs: [(&Runner, &[u8]); N], s: &Settings) -> Result<([Stat; N], [f64; N])> {
    let rounds = 4 * s.runs;
    let mut samples: [Vec<f64>; N] = std::array::from_fn(|_| Vec::with_capacity(rounds));
    for _ in 0..rounds {
        for ((run, frame), out) in runs.iter().zip(samples.iter_mut()) {
            let opts = TestRunOptions { data_in: Some(frame), repeat: s.repeat, ..Default::default() };
            out.push(run(opts)?.as_nanos() as f64);
        }
    }
    let ratios =
        std::array::from_fn(|i| Stat::of(samples[0].iter().zip(&samples[i]).map(|(a, x)| x / a).collect()).median);
    Ok((samples.map(Stat::of), ratios))
}

/// [`time_rounds`] of three programs on one frame: `(b, c)`'s stats and their ratios to `a`.
fn time_three(a: &Runner, b: &Runner, c: &Runner, frame: &[u8], s: &Settings) -> Result<([Stat; 2], [f64; 2])> {
    let ([_, sb, sc], [_, rb, rc]) = time_rounds([(a, frame), (b, frame), (c, frame)], s)?;
    Ok(([sb, sc], [rb, rc]))
}

fn xdp_runner<'a>(p: &'a Xdp) -> impl Fn(TestRunOptions) -> Result<Duration> + 'a {
    move |o| Ok(p.test_run(o)?.duration)
}

fn tc_runner<'a>(p: &'a SchedClassifier) -> impl Fn(TestRunOptions) -> Result<Duration> + 'a {
    move |o| Ok(p.test_run(o)?.duration)
}

/// The benchmark rule file for `n` rules on the test-run interface, in `direction`.
fn ruleset(n: usize, direction: Direction) -> Result<Config> {
    parse_str(&ruleset_text(n, direction), "bench.toml").map_err(|e| anyhow::anyhow!("{e}"))
}

/// The options of every benchmark rule set: on `lo`, ending in the drops of the
/// last-ranked networks the new-flow SYNs come from.
fn ruleset_options() -> RealisticOptions {
    RealisticOptions {
        iface: "lo".into(),
        drop_all_from: Some(DROP_ALL_FROM.into()),
        drop_all_from_v6: Some(DROP_ALL_FROM_V6.into()),
    }
}

/// The text of the rule file [`ruleset`] reads.
fn ruleset_text(n: usize, direction: Direction) -> String {
    let text = realistic_ruleset_with(SEED + n as u64, n, &ruleset_options());
    if direction == Direction::Egress { as_egress(&text) } else { text }
}

fn machine_facts() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("- CPU: {cpu} ({cores} cores)\n- kernel: {}\n", kernel.trim())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Option<Vec<u8>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').filter_map(|p| p.trim().parse().ok()).collect());
    let out =
        args.iter().position(|a| a == "--out").and_then(|i| args.get(i + 1)).map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(if quick {
                "../target/bench-quick/RESULTS.md"
            } else if only.is_some() {
                // A partial run never replaces the full results.
                "../target/bench-partial/RESULTS.md"
            } else {
                "../bench/RESULTS.md"
            })
        });
    let s = if quick {
        Settings { quick, parts: vec![], sizes: vec![10, 1000], repeat: 10_000, runs: 3, out }
    } else {
        Settings {
            quick,
            parts: vec![],
            sizes: vec![10, 100, 1000, 10_000, 16_384, 65_536],
            repeat: 100_000,
            runs: 5,
            out,
        }
    };
    let s = Settings { parts: only.unwrap_or_else(|| vec![1, 2, 3, 4, 5, 6]), ..s };
    // Before any part runs: part 1 writes its plot data beside the report.
    if let Some(dir) = s.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if !sg_tests::kernel::kernel_tests_enabled("sg-bench") {
        return Ok(());
    }
    let started = Instant::now();
    // BPF_PROG_TEST_RUN runs on the calling thread's CPU: one CPU for the whole run, so
    // a migration does not land some repeats on a cold cache (and the flow cache, which
    // is per CPU, stays warm). Traffic tools (part 2) start their own processes.
    pin_to_cpu(0)?;
    let mut report = String::new();
    writeln!(report, "# sgctl benchmark results\n")?;
    writeln!(
        report,
        "Produced by `cargo xtask bench{}` in one run; compare within the run (ratios), not across machines.\n",
        if s.quick { " --quick" } else { "" }
    )?;
    writeln!(report, "{}", machine_facts())?;

    // Size the maps for the largest rule set, twice (a new set is built beside the old).
    let largest = *s.sizes.iter().max().unwrap_or(&10);
    let big = ruleset(largest, Direction::Ingress)?;
    let compiled = compile(&big, &big.interfaces[0], Direction::Ingress)?;
    let capacity = Capacity::for_rule_sets([&compiled, &compiled]);
    // A ring that holds every event of a part-1 measurement with nobody reading it.
    let ring = EVENT_RING_BYTES;
    let mut dp = Dataplane::load(&LoadOptions { trace: false, capacity, event_ring_bytes: ring })?;
    // Counters are always on; events as `sgctl run` enables them by default.
    dp.set_event_limits(DEFAULT_EVENTS.0, DEFAULT_EVENTS.1)?;
    for name in [
        program::BASELINE_XDP,
        program::BASELINE_TC,
        program::PROBE_XDP,
        program::PROBE_TC,
        program::CLASSIFY_XDP,
        program::CLASSIFY_TC,
    ] {
        let p = dp.ebpf.program_mut(name).with_context(|| format!("program {name}"))?;
        match p {
            aya::programs::Program::Xdp(x) => x.load()?,
            aya::programs::Program::SchedClassifier(c) => c.load()?,
            _ => anyhow::bail!("unexpected program type for {name}"),
        }
    }
    let mut enforcer = Enforcer::new(&mut dp, &capacity)?;

    let mut per_size: Vec<(usize, [Stat; 4])> = Vec::new();
    let mut established: Vec<(usize, [Stat; 4])> = Vec::new();
    let mut established_ratios: Vec<(usize, [f64; 4])> = Vec::new();
    let mut probe_ratios: Vec<(usize, [f64; 4])> = Vec::new();
    // Per size and cell: (classification alone, new flow), each against the baseline.
    let mut new_flow_floor: Vec<(usize, [(f64, f64); 4])> = Vec::new();
    // By size: the IPv6 SYN's cost over the IPv4 one's, alternating (XDP, TC).
    let mut v6_vs_v4: Vec<(usize, [f64; 2])> = Vec::new();
    if s.parts.contains(&1) {
        // ---- Part 1 ----
        writeln!(report, "## 1. Per-packet cost (BPF_PROG_TEST_RUN)\n")?;
        writeln!(
            report,
            "ns per packet, median (min-max) of {} runs of {} repeats. The packet is a 64-byte TCP SYN (a new flow) from a \
             network only one of the two last-ranked rules (priority-100 drops, one of IPv4 and one of IPv6 sources) \
             matches, checked to be dropped: the worst case for the bit search. Rule sets \
             are `r#gen::realistic_ruleset` (CIDRs of varied lengths, v4 and v6, single ports and ranges, group and \
             prefix-list references); the egress sets are the same rules turned into egress rules. Baseline: a program \
             that parses and counts exactly like sgctl's and decides nothing. Counters are always on, and verdict \
             events at `sgctl run`'s default rate (1,000 drop events/s, burst 1,000): the new-flow SYN is dropped, so \
             it meets the event path (mostly suppressed by the rate limit); section 1b has the cost with events off \
             and with every drop an event.\n",
            s.runs, s.repeat
        )?;
        let mut rows: Vec<(String, [Stat; 4])> = Vec::new();
        let baseline = {
            let xdp: &Xdp = dp.ebpf.program(program::BASELINE_XDP).context("baseline")?.try_into()?;
            let tc: &SchedClassifier = dp.ebpf.program(program::BASELINE_TC).context("baseline")?.try_into()?;
            [
                time_program(&xdp_runner(xdp), &syn(false), &s)?,
                time_program(&xdp_runner(xdp), &syn(true), &s)?,
                time_program(&tc_runner(tc), &syn(false), &s)?,
                time_program(&tc_runner(tc), &syn(true), &s)?,
            ]
        };
        rows.push(("parse-and-count baseline".into(), baseline));
        // What IPv6 costs over IPv4 before any classification (a longer header to parse).
        let baseline_v6 = {
            let xdp: &Xdp = dp.ebpf.program(program::BASELINE_XDP).context("baseline")?.try_into()?;
            let tc: &SchedClassifier = dp.ebpf.program(program::BASELINE_TC).context("baseline")?.try_into()?;
            let (xdp, tc) = (xdp_runner(xdp), tc_runner(tc));
            [
                time_rounds([(&xdp, &syn(false)), (&xdp, &syn(true))], &s)?.1[1],
                time_rounds([(&tc, &syn(false)), (&tc, &syn(true))], &s)?.1[1],
            ]
        };
        for &n in &s.sizes {
            let ingress = ruleset(n, Direction::Ingress)?;
            enforcer.apply(&ingress, &[(TEST_RUN_IFINDEX, &ingress.interfaces[0])])?;
            for v6 in [false, true] {
                expect_dropped(dp.xdp()?.test_run(one_run(&syn(v6)))?.return_value, XDP_DROP, n, v6, "XDP")?;
            }
            let xdp4 = time_program(&xdp_runner(dp.xdp()?), &syn(false), &s)?;
            let xdp6 = time_program(&xdp_runner(dp.xdp()?), &syn(true), &s)?;
            // IPv6 against IPv4 through the same program, the two SYNs alternating.
            let (_, [_, xdp_v6]) = {
                let xdp = xdp_runner(dp.xdp()?);
                time_rounds([(&xdp, &syn(false)), (&xdp, &syn(true))], &s)?
            };
            let mut floor = [(0.0, 0.0); 4];
            {
                let base: &Xdp = dp.ebpf.program(program::BASELINE_XDP).context("baseline")?.try_into()?;
                let only: &Xdp = dp.ebpf.program(program::CLASSIFY_XDP).context("classify")?.try_into()?;
                let sg: &Xdp = dp.ebpf.program(program::INGRESS_XDP).context("ingress")?.try_into()?;
                for v6 in [false, true] {
                    expect_dropped(only.test_run(one_run(&syn(v6)))?.return_value, XDP_DROP, n, v6, "XDP classify")?;
                    let (_, [c, f]) = time_three(&xdp_runner(base), &xdp_runner(only), &xdp_runner(sg), &syn(v6), &s)?;
                    floor[usize::from(v6)] = (c, f);
                }
            }
            let egress = ruleset(n, Direction::Egress)?;
            enforcer.apply(&egress, &[(TEST_RUN_IFINDEX, &egress.interfaces[0])])?;
            // On egress the peer is the destination: swap the addresses of the same frames.
            for v6 in [false, true] {
                expect_dropped(dp.tc()?.test_run(one_run(&swap(&syn(v6))))?.return_value, TC_ACT_SHOT, n, v6, "TC")?;
            }
            let tc4 = time_program(&tc_runner(dp.tc()?), &swap(&syn(false)), &s)?;
            let tc6 = time_program(&tc_runner(dp.tc()?), &swap(&syn(true)), &s)?;
            let (_, [_, tc_v6]) = {
                let tc = tc_runner(dp.tc()?);
                time_rounds([(&tc, &swap(&syn(false))), (&tc, &swap(&syn(true)))], &s)?
            };
            v6_vs_v4.push((n, [xdp_v6, tc_v6]));
            {
                let base: &SchedClassifier = dp.ebpf.program(program::BASELINE_TC).context("baseline")?.try_into()?;
                let only: &SchedClassifier = dp.ebpf.program(program::CLASSIFY_TC).context("classify")?.try_into()?;
                let sg: &SchedClassifier = dp.ebpf.program(program::EGRESS_TC).context("egress")?.try_into()?;
                for v6 in [false, true] {
                    let frame = swap(&syn(v6));
                    expect_dropped(only.test_run(one_run(&frame))?.return_value, TC_ACT_SHOT, n, v6, "TC classify")?;
                    let (_, [c, f]) = time_three(&tc_runner(base), &tc_runner(only), &tc_runner(sg), &frame, &s)?;
                    floor[2 + usize::from(v6)] = (c, f);
                }
            }
            new_flow_floor.push((n, floor));
            per_size.push((n, [xdp4, xdp6, tc4, tc6]));
            rows.push((format!("sgctl, {n} rules, new flow"), [xdp4, xdp6, tc4, tc6]));
            // Established: the same flows with a live session (the fast path).
            let generation = enforcer.generation(TEST_RUN_IFINDEX).context("generation")?;
            for frame in [ack(false), ack(true)] {
                establish(&mut enforcer, &frame, generation)?;
            }
            // Each against the baseline in alternating runs on the same frame.
            let program = |name: &str| dp.ebpf.program(name).with_context(|| format!("program {name}"));
            let (sg_xdp, base_xdp): (&Xdp, &Xdp) =
                (program(program::INGRESS_XDP)?.try_into()?, program(program::BASELINE_XDP)?.try_into()?);
            let (sg_tc, base_tc): (&SchedClassifier, &SchedClassifier) =
                (program(program::EGRESS_TC)?.try_into()?, program(program::BASELINE_TC)?.try_into()?);
            let (probe_xdp, probe_tc): (&Xdp, &SchedClassifier) =
                (program(program::PROBE_XDP)?.try_into()?, program(program::PROBE_TC)?.try_into()?);
            let (xdp, tc, base_xdp, base_tc) =
                (xdp_runner(sg_xdp), tc_runner(sg_tc), xdp_runner(base_xdp), tc_runner(base_tc));
            let (probe_xdp, probe_tc) = (xdp_runner(probe_xdp), tc_runner(probe_tc));
            let mut est = [baseline[0]; 4];
            let mut ratio = [0.0; 4];
            let mut probe_ratio = [0.0; 4];
            let combos: [(&Runner, &Runner, &Runner, Vec<u8>); 4] = [
                (&xdp, &probe_xdp, &base_xdp, ack(false)),
                (&xdp, &probe_xdp, &base_xdp, ack(true)),
                (&tc, &probe_tc, &base_tc, swap(&ack(false))),
                (&tc, &probe_tc, &base_tc, swap(&ack(true))),
            ];
            for (i, (sg, probe, base, frame)) in combos.into_iter().enumerate() {
                // The probe must find the entry the fast path serves the frame from: one
                // frame through sgctl makes it, and the probe passes only what it found.
                let pass = if i < 2 { XDP_PASS } else { TC_ACT_OK };
                let (sg_program, probe_program) = if i < 2 {
                    (program(program::INGRESS_XDP)?, program(program::PROBE_XDP)?)
                } else {
                    (program(program::EGRESS_TC)?, program(program::PROBE_TC)?)
                };
                anyhow::ensure!(one_verdict(sg_program, &frame)? == pass, "the established flow was not passed");
                anyhow::ensure!(
                    one_verdict(probe_program, &frame)? == pass,
                    "the probe program did not find the established flow's cache entry (established {i})"
                );
                let ([_, e], [p, r]) = time_three(base, probe, sg, &frame, &s)?;
                est[i] = e;
                ratio[i] = r;
                probe_ratio[i] = p;
            }
            probe_ratios.push((n, probe_ratio));
            // Flushed and the hints rebuilt: the next size's SYN must meet no stale hint of
            // this flow's session (it would cost a session lookup a new flow never makes).
            enforcer.sessions().flush()?;
            enforcer.sessions().rebuild_hints(Duration::ZERO)?;
            established.push((n, est));
            established_ratios.push((n, ratio));
            rows.push((format!("sgctl, {n} rules, established flow"), est));
        }
        writeln!(report, "| program | XDP IPv4 | XDP IPv6 | TC IPv4 | TC IPv6 |\n|---|---|---|---|---|")?;
        for (label, stats) in &rows {
            writeln!(
                report,
                "| {label} | {} | {} | {} | {} |",
                stats[0].cell(),
                stats[1].cell(),
                stats[2].cell(),
                stats[3].cell()
            )?;
        }
        let (small, first) = per_size.first().copied().context("no sizes")?;
        let cells =
            |row: &[Stat; 4], to: &[Stat; 4]| -> [f64; 4] { std::array::from_fn(|i| row[i].median / to[i].median) };
        let listed =
            |r: [f64; 4]| format!("XDP v4 {:.2}x, XDP v6 {:.2}x, TC v4 {:.2}x, TC v6 {:.2}x", r[0], r[1], r[2], r[3]);
        let worst = |r: [f64; 4]| r.into_iter().fold(0.0, f64::max);
        let judged = |r: [f64; 4], limit: f64| {
            if worst(r) <= limit { "met".to_string() } else { format!("missed ({:.2}x)", worst(r)) }
        };
        // The old target at 16,384 rules, and this one at 65,536 (four bands).
        for n in [16_384, sg_common::MAX_USER_RULES] {
            let Some((_, row)) = per_size.iter().find(|p| p.0 == n) else {
                writeln!(report, "\nNew flow at {n} rules: not measured in --quick.")?;
                continue;
            };
            let r = cells(row, &first);
            writeln!(
                report,
                "\nRatios, {n} rules vs {small} rules (medians): {}. Target: at most 2x: {}.",
                listed(r),
                judged(r, 2.0)
            )?;
            let b = cells(row, &baseline);
            writeln!(
                report,
                "Against the baseline at {n} rules: {} (target: at most 2x: {}).",
                listed(b),
                judged(b, 2.0)
            )?;
        }
        // IPv6 against IPv4, per hook and size: both peer tables are multibit, the IPv6
        // one deeper (a level per address byte down to where its bounds thin out). The target is judged on the
        // alternating rounds: the two medians of the table above were taken seconds apart,
        // and this VM's speed drifts by more than the difference sought.
        let v6_ratios: Vec<String> =
            v6_vs_v4.iter().map(|(n, r)| format!("{n}: {:.2}x / {:.2}x", r[0], r[1])).collect();
        let v6_from_medians: Vec<String> = per_size
            .iter()
            .map(|(n, st)| format!("{n}: {:.2}x / {:.2}x", st[1].median / st[0].median, st[3].median / st[2].median))
            .collect();
        let v6_worst = v6_vs_v4.iter().flat_map(|(_, r)| r.iter().copied()).fold(0.0, f64::max);
        writeln!(
            report,
            "IPv6 new flow against IPv4 (XDP / TC), the two SYNs through the same program in {} alternating rounds \
             (median of the per-round ratios), by rule count: {}; the baselines alone: {:.2}x / {:.2}x. Target: at \
             most 1.2x at every count: {} ({v6_worst:.2}x). The same ratio from the medians of the table above \
             (measured apart, so the machine's drift between them is in it): {}.\n",
            4 * s.runs,
            v6_ratios.join(", "),
            baseline_v6[0],
            baseline_v6[1],
            if v6_worst <= 1.2 { "met" } else { "missed" },
            v6_from_medians.join(", "),
        )?;
        writeln!(
            report,
            "The new flow's floor: a program that looks the interface up and classifies the packet with its rule set, \
             counting it and emitting its event like sgctl, without the flow cache or sessions; both against the \
             baseline in {} alternating rounds of the three programs on the same SYN (median of the per-round \
             ratios):\n\n| rules | XDP IPv4 | XDP IPv6 | TC IPv4 | TC IPv6 |\n|---|---|---|---|---|",
            4 * s.runs
        )?;
        for (n, f) in &new_flow_floor {
            let cell = |i: usize| format!("{:.2}x (new flow {:.2}x)", f[i].0, f[i].1);
            writeln!(report, "| {n} | {} | {} | {} | {} |", cell(0), cell(1), cell(2), cell(3))?;
        }
        if let Some((n, f)) = new_flow_floor.last() {
            let share = (0..4).map(|i| (f[i].0 - 1.0) / (f[i].1 - 1.0).max(f64::EPSILON)).fold(f64::INFINITY, f64::min);
            writeln!(
                report,
                "\nAt {n} rules the classification alone costs {:.2}-{:.2}x the baseline, at least {:.0}% of what the \
                 new flow costs beyond it.\n",
                (0..4).map(|i| f[i].0).fold(f64::INFINITY, f64::min),
                (0..4).map(|i| f[i].0).fold(0.0, f64::max),
                100.0 * share.min(1.0)
            )?;
        }
        writeln!(
            report,
            "Established flow against the baseline, in {} alternating pairs of runs on the same frame (median of \
             the per-pair ratios):\n\n| rules | XDP IPv4 | XDP IPv6 | TC IPv4 | TC IPv6 |\n|---|---|---|---|---|",
            4 * s.runs
        )?;
        for (n, r) in &established_ratios {
            writeln!(report, "| {n} | {:.2}x | {:.2}x | {:.2}x | {:.2}x |", r[0], r[1], r[2], r[3])?;
        }
        writeln!(report)?;
        let worst_est = established_ratios.iter().flat_map(|(_, r)| r.iter().copied()).fold(0.0, f64::max);
        writeln!(
            report,
            "Established flow (a packet of a live session, the fast path) against the baseline, worst over sizes and \
             hooks: {worst_est:.2}x. Target: at most 1.3x: {}.\n",
            if worst_est <= 1.3 { "met".to_string() } else { format!("missed ({worst_est:.2}x)") }
        )?;
        writeln!(
            report,
            "The fast path's floor: a program that does what finding the flow's cached verdict takes (the interface \
             lookup, the flow hash, one probe of the CPU's flow cache and the tuple compared) and decides nothing, \
             against the baseline in the same rounds; the rest of the established flow's cost is the verdict itself \
             (the slot's used bit, the entry's trust checks and its hit counts):\n\n| rules | XDP IPv4 | XDP IPv6 | \
             TC IPv4 | TC IPv6 |\n|---|---|---|---|---|"
        )?;
        for ((n, p), (_, r)) in probe_ratios.iter().zip(&established_ratios) {
            let cell = |i: usize| format!("{:.2}x (established {:.2}x)", p[i], r[i]);
            writeln!(report, "| {n} | {} | {} | {} | {} |", cell(0), cell(1), cell(2), cell(3))?;
        }
        let worst_probe = probe_ratios.iter().flat_map(|(_, r)| r.iter().copied()).fold(0.0, f64::max);
        let worst_probe_share = probe_ratios
            .iter()
            .zip(&established_ratios)
            .flat_map(|((_, p), (_, r))| (0..4).map(move |i| (p[i] - 1.0) / (r[i] - 1.0).max(f64::EPSILON)))
            .fold(f64::INFINITY, f64::min);
        writeln!(
            report,
            "\nThe floor alone, worst cell: {worst_probe:.2}x the baseline; in every cell it is at least {:.0}% of \
             what the established flow costs beyond the baseline.\n",
            100.0 * worst_probe_share.min(1.0)
        )?;
        events_section(&mut report, &s, &mut dp, &mut enforcer)?;
    }

    // ---- Part 2 ----
    if s.parts.contains(&2) {
        report.push_str(&sg_tests::throughput::throughput_section(s.quick)?);
        report.push('\n');
    }

    // ---- Part 3 ----
    if s.parts.contains(&3) {
        writeln!(report, "## 3. Control plane\n")?;
        writeln!(
            report,
            "Parse (read and validate the rule file's text, what `sgctl apply` does first), compile (both directions) \
         and apply (compile both directions, write the maps beside the live set, switch), median of 3; retire = deleting the replaced set after the switch. Map memory: what the ingress set \
         writes (vectors of {} bytes, each a row of chunk numbers; the distinct {}-byte chunks of words they share; \
         rule info, 1 KiB table blocks (port tables and both peer tables), the IPv6 peer intervals' {}-byte \
         bounds, trie entries at ~64 bytes).\n",
            size_of::<sg_common::RuleVector>(),
            size_of::<sg_common::RuleChunk>(),
            size_of::<sg_common::PeerV6Bound>()
        )?;
        writeln!(
            report,
            "| rules | file | parse ms | compile ms | apply ms | of which compile / write+switch / retire | vectors | chunks | trie entries | table blocks | IPv6 bounds | map memory | per rule |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        )?;
        let cp_sizes: Vec<usize> =
            if s.quick { vec![1000] } else { vec![1000, 10_000, 16_384, sg_common::MAX_USER_RULES] };
        let mut memory_16k = None;
        // By size: (apply, compile, write and switch) medians in ms, and the bands.
        let mut applies: Vec<(usize, [f64; 3], usize)> = Vec::new();
        let mut parse_median = None;
        for n in cp_sizes {
            let text = ruleset_text(n, Direction::Ingress);
            let mut parse_ms = Vec::new();
            for _ in 0..3 {
                let t = Instant::now();
                let parsed = parse_str(&text, "bench.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
                parse_ms.push(t.elapsed().as_secs_f64() * 1e3);
                drop(parsed);
            }
            let parse = Stat::of(parse_ms).median;
            // The one-rule change below edits the 16,384-rule file (1,000 in --quick).
            if n <= 16_384 {
                parse_median = Some(parse);
            }
            let cfg = ruleset(n, Direction::Ingress)?;
            let binding = &cfg.interfaces[0];
            let mut compile_ms = Vec::new();
            let mut apply_ms = Vec::new();
            let mut parts_ms: Vec<[f64; 3]> = Vec::new();
            let mut last_report = None;
            for _ in 0..3 {
                let t = Instant::now();
                let a = compile(&cfg, binding, Direction::Ingress)?;
                let _b = compile(&cfg, binding, Direction::Egress)?;
                compile_ms.push(t.elapsed().as_secs_f64() * 1e3);
                // A full apply: without clearing, the same rules again would be kept as
                // they are, writing nothing; and compiled without the enforcer's cache,
                // which would hand back the sets compiled last round.
                enforcer.clear(TEST_RUN_IFINDEX)?;
                let t = Instant::now();
                let targets = [(TEST_RUN_IFINDEX, binding)];
                let compiled = sgctl::control::compile_targets(&cfg, &targets)?;
                let compile_time = t.elapsed();
                let mut r = enforcer.apply_compiled(&cfg, &compiled)?;
                r.compile_time = compile_time;
                apply_ms.push(t.elapsed().as_secs_f64() * 1e3);
                if r.unchanged != 0 {
                    anyhow::bail!("a full apply kept {} rule sets", r.unchanged);
                }
                let retire_time = enforcer.retire_pending();
                parts_ms.push([r.compile_time, r.write_time, retire_time].map(|d| d.as_secs_f64() * 1e3));
                // Bytes the ingress set writes: vectors, rule info, port and IPv4 peer
                // table blocks; trie entries at the kernel's node size (a 24-byte key
                // and a 4-byte value after a 24-byte node header, rounded: ~64 B).
                let bytes = a.vectors.len() * size_of::<sg_common::RuleVector>()
                    + a.chunks.len() * size_of::<sg_common::RuleChunk>()
                    + a.peer_v6.len() * size_of::<sg_common::PeerV6Bound>()
                    + a.rules.len() * size_of::<sg_common::RuleInfo>()
                    + (a.port_tables.len() + a.port_blocks.len()) * size_of::<sg_common::PortBlock>()
                    + (a.addr_entries.len() + a.port_entries.len()) * 64;
                let v6_bounds = a.peer_v6.len();
                let blocks = a.port_tables.len() + a.port_blocks.len();
                last_report = Some((r, a.chunks.len(), blocks, v6_bounds, bytes, a.bands.len()));
            }
            let (r, chunks, blocks, v6_bounds, bytes, bands) = last_report.context("no runs")?;
            let c = Stat::of(compile_ms);
            let a = Stat::of(apply_ms);
            let part = |i: usize| Stat::of(parts_ms.iter().map(|p| p[i]).collect()).median;
            writeln!(
                report,
                "| {n} | {:.1} MiB | {parse:.1} | {:.1} | {:.1} | {:.1} / {:.1} / {:.1} | {} | {chunks} | {} | {blocks} | {v6_bounds} | {:.1} MiB | {} B |",
                text.len() as f64 / (1024.0 * 1024.0),
                c.median,
                a.median,
                part(0),
                part(1),
                part(2),
                r.vectors,
                r.trie_entries,
                bytes as f64 / (1024.0 * 1024.0),
                bytes / n
            )?;
            if n == 16_384 {
                memory_16k = Some(bytes);
            }
            applies.push((n, [a.median, part(0), part(1)], bands));
        }
        for (n, [apply, compiled, written], bands) in &applies {
            if [16_384, sg_common::MAX_USER_RULES].contains(n) {
                writeln!(
                    report,
                    "\n{n} rules ({bands} band{}): applied in {apply:.1} ms (compile {compiled:.1}, write and switch \
                     {written:.1}). Target: at most 200 ms: {}.",
                    if *bands == 1 { "" } else { "s" },
                    if *apply <= 200.0 { "met".to_string() } else { format!("missed ({apply:.0} ms)") }
                )?;
            }
        }
        writeln!(report)?;
        if let Some(bytes) = memory_16k {
            let mib = bytes as f64 / (1024.0 * 1024.0);
            let verdict = if mib <= 11.0 { "met" } else { "missed" };
            writeln!(report, "Map memory of the 16,384-rule set: {mib:.1} MiB. Target: at most 11 MiB: {verdict}.\n")?;
        }
        // One-rule changes of the largest set: each file is the one before with one more
        // rule's port moved, as an operator would edit it. The agent's reader reads each
        // after the one before (the edited rule alone), and the enforcer writes each set
        // over the ranges of the set before last (its spare), two changes apart; the
        // first two changes go to fresh ranges and are not counted.
        let n = if s.quick { 1000 } else { 16_384 };
        let text = ruleset_text(n, Direction::Ingress);
        let cfg = parse_str(&text, "bench.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
        let ported: Vec<usize> = cfg
            .rules()
            .filter(|r| {
                matches!(r.protocol, sgctl::policy::config::Protocol::Tcp | sgctl::policy::config::Protocol::Udp)
            })
            .map(|r| r.line)
            .take(if s.quick { 10 } else { 40 })
            .collect();
        let mut sequence = Vec::new();
        let mut next = text.clone();
        // Each to a port of its own, so no edit makes its rule a duplicate of another.
        for (round, line) in ported.iter().enumerate() {
            next = with_port_moved(&next, *line, 61_000 + round as u16)?;
            sequence.push(next.clone());
        }
        let mut reader = sgctl::policy::config::Reader::default();
        let first = reader.read(&text, "bench.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
        enforcer.clear(TEST_RUN_IFINDEX)?;
        enforcer.apply(first, &[(TEST_RUN_IFINDEX, &first.interfaces[0])])?;
        enforcer.retire_pending();
        let mut one_ms = Vec::new();
        let mut one_parts: Vec<[f64; 3]> = Vec::new();
        let mut written = Vec::new();
        for (round, next) in sequence.iter().enumerate() {
            let t = Instant::now();
            let cfg = reader.read(next, "bench.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
            let read = t.elapsed();
            let r = enforcer.apply(cfg, &[(TEST_RUN_IFINDEX, &cfg.interfaces[0])])?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            enforcer.retire_pending();
            if reader.last_kind() != Some(sgctl::policy::config::ReadKind::OneRule) {
                anyhow::bail!("a one-rule edit was read as {:?}", reader.last_kind());
            }
            if r.unchanged != 1 {
                anyhow::bail!("a one-rule ingress change kept {} of 2 rule sets, not the egress one", r.unchanged);
            }
            if round >= 2 {
                one_ms.push(ms);
                one_parts.push([read, r.compile_time, r.write_time].map(|d| d.as_secs_f64() * 1e3));
                written.push(r.entries_written as f64);
            }
        }
        let one = Stat::of(one_ms);
        let one_part = |i: usize| Stat::of(one_parts.iter().map(|p| p[i]).collect()).median;
        let written = Stat::of(written);
        let parse = parse_median.context("no parse figure")?;
        let whole = ruleset_entries(&compile(&cfg, &cfg.interfaces[0], Direction::Ingress)?);
        writeln!(
            report,
            "One-rule change at {n} rules (each file the one before with one more rule's port moved to a port of \
             its own, median of {}), \
             end to end from the file's text to the new rules in force: {:.1} ms (min-max {:.1}-{:.1}; read {:.2}, \
             compile {:.1}, write and switch {:.1}), {:.0} array entries written (of {whole} in the set; min-max \
             {:.0}-{:.0}). The agent reads a text that differs from the one before inside one rule's table by reading \
             that table alone (a whole read of this file: {parse:.1} ms), compiles the changed direction from its \
             rule set before, making the edited rule's matcher alone (the reader says which rule it edited; a \
             port, protocol or action edit flips the rule's bit in the port tables it touches), and writes the \
             new set over the ranges of the set before last, only the entries that differ, each at its own index; \
             unchanged rules keep their identities and handles without formatting or hashing them (target for 16,384 rules: at most 5 ms end to end: {}).\n",
            sequence.len() - 2,
            one.median,
            one.min,
            one.max,
            one_part(0),
            one_part(1),
            one_part(2),
            written.median,
            written.min,
            written.max,
            if one.median <= 5.0 {
                "met".to_string()
            } else {
                format!(
                    "missed ({:.1} ms); what remains is work over the whole text or set: the read's compare of \
                     the two texts, the compile's copy of the set before, every bit's handle key, and the \
                     in-place comparison of the set with the ranges' contents",
                    one.median
                )
            },
        )?;
        if !s.quick {
            writeln!(
                report,
                "A rule set of more bits than one vector holds ({} with the pseudo-rules) is compiled in bands of up \
                 to that many, each with its own tables and vectors, compiled as a set of its own: compile time \
                 and memory grow with the number of bands rather than faster than the rule count, and every band \
                 but the last ends in a pseudo-rule that sends the search on to the next band, so a packet that \
                 no rule of the first bands matches costs a lookup round per band (part 1's {} row).\n",
                sg_common::MAX_RULE_BITS,
                sg_common::MAX_USER_RULES
            )?;
        }
    }

    // ---- Part 4 ----
    drop(enforcer);
    drop(dp);
    if s.parts.contains(&4) {
        sessions_section(&mut report, &s)?;
    }
    if s.parts.contains(&5) {
        report.push_str(&sg_tests::event_rate::event_rate_section(s.quick)?);
    }
    if s.parts.contains(&6) {
        report.push_str(&sg_tests::fleet_bench::fleet_section(s.quick)?);
    }
    if !s.quick && s.parts.contains(&1) {
        plot(&per_size, &established, &s.out)?;
        writeln!(
            report,
            "Plot: `per-packet-cost.png` beside this file (XDP IPv4, ns per packet against rule count).\n"
        )?;
    }
    writeln!(report, "Total benchmark time: {:.0} s.", started.elapsed().as_secs_f64())?;

    std::fs::write(&s.out, &report)?;
    print!("{report}");
    println!("\nwritten to {}", s.out.display());
    Ok(())
}

/// `text` with the destination port of the rule whose header is on `line` moved to 1,
/// or to 2 when it is 1.
fn with_port_moved(text: &str, line: usize, port: u16) -> Result<String> {
    let header = text.split_inclusive('\n').take(line - 1).map(str::len).sum::<usize>();
    let key = "port_range = \"";
    let at = header + text[header..].find(key).context("a ported rule has a port_range")? + key.len();
    let end = at + text[at..].find('"').context("a closing quote")?;
    Ok(format!("{}{port}/{port}{}", &text[..at], &text[end..]))
}

/// The array entries (vectors, chunks, bounds, rule info, tables and blocks) a compiled
/// rule set fills: what writing it whole writes.
fn ruleset_entries(c: &sgctl::policy::compile::Compiled) -> usize {
    c.vectors.len() + c.chunks.len() + c.peer_v6.len() + c.rules.len() + c.port_tables.len() + c.port_blocks.len()
}

/// `sgctl run`'s default event limits: (rate, burst) per kind (drop, accept).
const DEFAULT_EVENTS: ([u32; 2], [u32; 2]) = ([1000, 0], [1000, 1000]);
/// 64 MiB: 500,000 events of 80 bytes (record and header) fit.
const EVENT_RING_BYTES: u32 = 1 << 26;

/// Part 1b: what verdict events cost. The new-flow SYN of part 1 (dropped by the
/// last-ranked rule, so every packet is an event candidate) on XDP IPv4 with events off,
/// at the default rate, and unlimited into a ring large enough that none is lost; the
/// cost of one event is the difference between the last and the first. Then the ring is
/// read and the accounting checked: emitted = delivered + suppressed + lost.
fn events_section(report: &mut String, s: &Settings, dp: &mut Dataplane, enforcer: &mut Enforcer) -> Result<()> {
    use sg_common::{EVENTS_UNLIMITED, event_kind, stats};
    writeln!(
        report,
        "### 1b. Verdict events
"
    )?;
    writeln!(
        report,
        "XDP IPv4, the new-flow SYN of the table above (a drop, so every packet is an event candidate), ns per packet, \
         median (min-max) of {} runs of {} repeats. Established flows pass without an event: their cost is the same \
         in every column. Cost per event = the unlimited median minus the events-off median.\n",
        s.runs, s.repeat
    )?;
    writeln!(
        report,
        "| rules | events off | default rate (1,000/s) | unlimited, every drop an event | cost per event | accounting \
         (emitted = delivered + suppressed + lost) |\n|---|---|---|---|---|---|"
    )?;
    let largest = *s.sizes.iter().max().unwrap_or(&10);
    let smallest = *s.sizes.iter().min().unwrap_or(&10);
    let mut new_flow_off = Vec::new();
    for n in [smallest, largest] {
        let ingress = ruleset(n, Direction::Ingress)?;
        enforcer.apply(&ingress, &[(TEST_RUN_IFINDEX, &ingress.interfaces[0])])?;
        let iface = *enforcer.iface_slots().get(&TEST_RUN_IFINDEX).context("interface counter slot")?;
        let slot = |what| stats::event_slot(iface, stats::HOOK_INGRESS, event_kind::DROP, what) as usize;
        // Whatever earlier runs left in the ring is read and not counted.
        let mut ring = dp.event_ring()?;
        while ring.next().is_some() {}
        drop(ring);
        let before = enforcer.counters()?;
        let mut cells = Vec::new();
        for (rate, burst) in [([0, 0], [1, 1]), DEFAULT_EVENTS, ([EVENTS_UNLIMITED, 0], [1, 1])] {
            dp.set_event_limits(rate, burst)?;
            cells.push(time_program(&xdp_runner(dp.xdp()?), &syn(false), s)?);
        }
        dp.set_event_limits(DEFAULT_EVENTS.0, DEFAULT_EVENTS.1)?;
        let mut delivered = 0u64;
        let mut ring = dp.event_ring()?;
        while ring.next().is_some() {
            delivered += 1;
        }
        drop(ring);
        let after = enforcer.counters()?;
        let delta = |what| after[slot(what)] - before[slot(what)];
        let (emitted, suppressed, lost) =
            (delta(stats::EVENT_EMITTED), delta(stats::EVENT_SUPPRESSED), delta(stats::EVENT_LOST));
        let exact = emitted == delivered + suppressed + lost;
        writeln!(
            report,
            "| {n} | {} | {} | {} | {:.1} ns | {emitted} = {delivered} + {suppressed} + {lost}: {} |",
            cells[0].cell(),
            cells[1].cell(),
            cells[2].cell(),
            cells[2].median - cells[0].median,
            if exact { "exact" } else { "MISMATCH" }
        )?;
        new_flow_off.push((n, cells[0].median, cells[1].median));
        anyhow::ensure!(
            exact,
            "event accounting: {emitted} emitted, {delivered} delivered, {suppressed} suppressed, {lost} lost"
        );
    }
    if let [(n0, off0, def0), (n1, off1, def1)] = new_flow_off[..] {
        writeln!(
            report,
            "\nNew flow, {n1} rules vs {n0}: {:.2}x with events off, {:.2}x at the default rate (target: at most 2x).\n",
            off1 / off0,
            def1 / def0
        )?;
    }
    Ok(())
}

/// Part 4: memory per session and the fast path's cost with the table 10% and 100% full.
fn sessions_section(report: &mut String, s: &Settings) -> Result<()> {
    let size: u32 = if s.quick { 16_384 } else { 1_048_576 };
    writeln!(report, "## 4. Sessions\n")?;
    writeln!(
        report,
        "Memory: {} bytes per entry (key 44 + value 48 + the LRU hash element; bpftool's memlock for the table), \
         {:.0} MiB for {size} entries, preallocated. Cost of a packet of a live session (XDP, IPv4 ACK) with the table \
         filled to a share of {size} entries by other flows; same rule set (1,000 rules).\n",
        sgctl::dataplane::sessions::BYTES_PER_SESSION,
        f64::from(size) * sgctl::dataplane::sessions::BYTES_PER_SESSION as f64 / 1048576.0
    )?;
    writeln!(report, "| table fill | ns per packet | vs baseline (alternating runs, same frame) |\n|---|---|---|")?;
    let cfg = ruleset(1000, Direction::Ingress)?;
    let compiled = compile(&cfg, &cfg.interfaces[0], Direction::Ingress)?;
    let capacity = Capacity { sessions: size, ..Capacity::for_rule_sets([&compiled, &compiled]) };
    let mut dp = Dataplane::load(&LoadOptions { trace: false, capacity, ..LoadOptions::default() })?;
    let p = dp.ebpf.program_mut(program::BASELINE_XDP).context("baseline")?;
    let aya::programs::Program::Xdp(x) = p else { anyhow::bail!("baseline is not XDP") };
    x.load()?;
    let mut enforcer = Enforcer::new(&mut dp, &capacity)?;
    enforcer.apply(&cfg, &[(TEST_RUN_IFINDEX, &cfg.interfaces[0])])?;
    let generation = enforcer.generation(TEST_RUN_IFINDEX).context("generation")?;
    let mut filled = 0u32;
    for share in [10u32, 100] {
        // Leave room for the measured flow itself.
        let target = (u64::from(size) * u64::from(share) / 100) as u32 - 1;
        fill_sessions(&mut enforcer, filled, target, generation)?;
        filled = target;
        establish(&mut enforcer, &ack(false), generation)?;
        let base: &Xdp = dp.ebpf.program(program::BASELINE_XDP).context("baseline")?.try_into()?;
        let sg: &Xdp = dp.ebpf.program(program::INGRESS_XDP).context("sg_ingress")?.try_into()?;
        let frame = ack(false);
        let ([_, cost], [_, ratio]) = time_rounds([(&xdp_runner(base), &frame), (&xdp_runner(sg), &frame)], s)?;
        writeln!(report, "| {share}% ({target} others) | {} | {ratio:.2}x |", cost.cell())?;
    }
    writeln!(report)?;
    Ok(())
}

/// Writes live UDP sessions `from..to` (distinct client ports and addresses).
fn fill_sessions(enforcer: &mut Enforcer, from: u32, to: u32, generation: u32) -> Result<()> {
    use sg_common::{Session, SessionKey, session::state, stats};
    let now = sgctl::clock::monotonic_ns();
    let session = Session {
        last_seen_ns: now,
        created_ns: now,
        packets: 1,
        rule_id: 0,
        generation,
        state: state::UDP_REPLIED,
        opener_is_low: 1,
        opened_on: stats::HOOK_INGRESS as u8,
        step: sg_common::step::DEFAULT,
        assured: sg_common::session::table::ASSURED_VALUE,
        anchors: 0,
        _pad: [0; 2],
        instance_ack: 0,
        instance_syn: 0,
    };
    let table = enforcer.sessions();
    for i in from..to {
        let mut client = [0u8; 16];
        client[..4].copy_from_slice(&[198, 18, 128 + (i >> 16) as u8, (i >> 8) as u8]);
        let mut inst = [0u8; 16];
        inst[..4].copy_from_slice(&DST_V4);
        let (key, _) = SessionKey::between(TEST_RUN_IFINDEX, 4, 17, (client, i as u16), (inst, 53));
        table.insert(&key, &session)?;
    }
    Ok(())
}

/// A PNG of per-packet cost against rule count, with gnuplot (installed if missing).
fn plot(new_flow: &[(usize, [Stat; 4])], established: &[(usize, [Stat; 4])], out: &std::path::Path) -> Result<()> {
    let have = |c: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("gnuplot") {
        let _ = std::process::Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "gnuplot-nox"])
            .status();
    }
    let dir = out.parent().context("output directory")?;
    let data = dir.join("per-packet-cost.dat");
    let mut text = String::from("# rules new_xdp4 new_tc4 established_xdp4\n");
    for ((n, a), (_, b)) in new_flow.iter().zip(established) {
        writeln!(text, "{n} {} {} {}", a[0].median, a[2].median, b[0].median)?;
    }
    std::fs::write(&data, text)?;
    let png = dir.join("per-packet-cost.png");
    let script = format!(
        "set terminal png size 900,540; set output '{}'; set logscale x; set xlabel 'rules'; \
         set ylabel 'ns per packet (median)'; set yrange [0:*]; set key top left; set grid; \
         plot '{d}' using 1:2 with linespoints title 'new flow, XDP', '{d}' using 1:3 with linespoints title 'new flow, TC', \
         '{d}' using 1:4 with linespoints title 'established flow, XDP'",
        png.display(),
        d = data.display()
    );
    let status = std::process::Command::new("gnuplot").args(["-e", &script]).status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("sg-bench: gnuplot unavailable; no plot (data in {})", data.display());
    }
    Ok(())
}

/// An ACK of the benchmark flow (what a live session sees).
fn ack(v6: bool) -> Vec<u8> {
    let mut frame = syn(v6);
    let tcp_at = 14 + if v6 { 40 } else { 20 };
    frame[tcp_at + 13] = sg_tests::frames::TCP_ACK;
    frame
}

/// Writes the live session the frame belongs to (opened on ingress, established).
fn establish(enforcer: &mut Enforcer, frame: &[u8], generation: u32) -> Result<()> {
    use sg_common::{Session, SessionKey, session::state, stats};
    let v6 = u16::from_be_bytes([frame[12], frame[13]]) == ETHERTYPE_IPV6;
    let (at, len) = if v6 { (14 + 8, 16) } else { (14 + 12, 4) };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..len].copy_from_slice(&frame[at..at + len]);
    dst[..len].copy_from_slice(&frame[at + len..at + 2 * len]);
    let (key, src_is_low) = SessionKey::between(TEST_RUN_IFINDEX, if v6 { 6 } else { 4 }, 6, (src, 40000), (dst, 443));
    let now = sgctl::clock::monotonic_ns();
    let session = Session {
        last_seen_ns: now,
        created_ns: now,
        packets: 3,
        rule_id: 0,
        generation,
        state: state::TCP_ESTABLISHED,
        opener_is_low: u8::from(src_is_low),
        opened_on: stats::HOOK_INGRESS as u8,
        step: sg_common::step::DEFAULT,
        assured: sg_common::session::table::ASSURED_VALUE,
        anchors: 0,
        _pad: [0; 2],
        instance_ack: 0,
        instance_syn: 0,
    };
    Ok(enforcer.sessions().insert(&key, &session)?)
}

/// The same TCP frame in the other direction: addresses and ports swapped (for the
/// egress hook, and the reply direction of a session).
fn swap(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    let v4 = u16::from_be_bytes([f[12], f[13]]) == ETHERTYPE_IPV4;
    let (at, len, tcp_at) = if v4 { (14 + 12, 4, 14 + 20) } else { (14 + 8, 16, 14 + 40) };
    let (src, dst) = f[at..at + 2 * len].split_at_mut(len);
    src.swap_with_slice(dst);
    let (sport, dport) = f[tcp_at..tcp_at + 4].split_at_mut(2);
    sport.swap_with_slice(dport);
    f
}
