//! Part 2 of the benchmark, throughput side by side: `trafgen` in one namespace sends
//! 64-byte UDP over a veth pair to a filter in another namespace, every packet dropped by
//! the filter's last-ranked rule, and the receiving side counts what it processed.
//!
//! Filters: a minimal XDP program (one LPM lookup, then drop; built here from raw BPF
//! instructions, so it needs no eBPF toolchain), sgctl (the real binary, generic XDP),
//! nftables one rule per line and with a concatenated interval set, iptables one rule per
//! line and with an ipset, and xdp-filter. Each filter gets a fresh pair of namespaces, so
//! tearing one down cannot leave anything behind for the next.

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    agent::Agent,
    r#gen::{RealisticOptions, realistic_ruleset_with},
    netns::Host,
};

/// The traffic's sources: the last-ranked rule of every rule set drops this network.
const DROP_NET: &str = "198.19.0.0/16";
const SEED: u64 = 0x5eed;
const GEN_MAC: &str = "02:5e:00:00:01:01";
const SINK_MAC: [u8; 6] = [0x02, 0x5e, 0x00, 0x00, 0x01, 0x02];
const GEN_IP: &str = "198.18.0.1";
const SINK_IP: [u8; 4] = [198, 18, 0, 2];
/// Destination ports: 0x2300 + 0..=255 (8960-9215).
const DPORT_HI: u16 = 0x23;
const SINK_IF: &str = "sink0";
const GEN_IF: &str = "gen0";
/// Packets flowing before the counters are read the first time.
const WARMUP: Duration = Duration::from_millis(700);
const PACKAGES: [&str; 5] = ["netsniff-ng", "nftables", "iptables", "ipset", "xdp-tools"];

struct Plan {
    runs: usize,
    secs: Duration,
}

/// Median and range of the runs, in packets per second.
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
}

/// One row of the table: measured, or why not.
struct Row {
    filter: String,
    rules: String,
    result: Result<Stat, String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Filter {
    MinimalXdp,
    Sgctl(usize),
    NftRules(usize),
    NftSet(usize),
    Iptables(usize),
    Ipset(usize),
    XdpFilterPorts,
}

impl Filter {
    fn name(self) -> &'static str {
        match self {
            Filter::MinimalXdp => "minimal XDP (one LPM lookup, drop), generic",
            Filter::Sgctl(_) => "**sgctl**, generic XDP",
            Filter::NftRules(_) => "nftables, one rule per line (prerouting, priority raw)",
            Filter::NftSet(_) => "nftables, one rule over a concatenated interval set, then the drop",
            Filter::Iptables(_) => "iptables, one rule per line (raw PREROUTING)",
            Filter::Ipset(_) => "iptables + ipset (hash:net,port), then the drop (raw PREROUTING)",
            Filter::XdpFilterPorts => "xdp-filter, skb mode, udp feature only",
        }
    }

    fn rules(self) -> String {
        match self {
            Filter::MinimalXdp => "1 prefix".to_string(),
            Filter::Sgctl(n) | Filter::NftRules(n) | Filter::NftSet(n) | Filter::Iptables(n) | Filter::Ipset(n) => {
                thousands(n)
            }
            Filter::XdpFilterPorts => "256 ports (deny list)".to_string(),
        }
    }

    /// The command-line tools the filter needs, with the package holding them.
    fn tools(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Filter::MinimalXdp | Filter::Sgctl(_) => &[],
            Filter::NftRules(_) | Filter::NftSet(_) => &[("nft", "nftables")],
            Filter::Iptables(_) => &[("iptables-restore", "iptables")],
            Filter::Ipset(_) => &[("iptables-restore", "iptables"), ("ipset", "ipset")],
            Filter::XdpFilterPorts => &[("xdp-filter", "xdp-tools")],
        }
    }
}

/// Runs the throughput comparison and returns a markdown section (a table: filter, rules,
/// pps median, min-max, ratio) plus notes.
///
/// `quick`: the minimal XDP program and sgctl at 100 rules, one run of 1 s each (seconds
/// in all). Otherwise every filter, 3 runs of 4 s, median. Needs root; installs missing
/// tools with apt-get. A peer that cannot be installed or set up is reported as skipped.
pub fn throughput_section(quick: bool) -> Result<String> {
    let plan = if quick {
        Plan { runs: 1, secs: Duration::from_secs(1) }
    } else {
        Plan { runs: 3, secs: Duration::from_secs(4) }
    };
    let filters: Vec<Filter> = if quick {
        vec![Filter::MinimalXdp, Filter::Sgctl(100)]
    } else {
        vec![
            Filter::MinimalXdp,
            Filter::Sgctl(1_000),
            Filter::Sgctl(16_384),
            Filter::Sgctl(65_536),
            Filter::NftRules(1_000),
            Filter::NftSet(1_000),
            Filter::NftSet(16_384),
            Filter::Iptables(1_000),
            Filter::Ipset(1_000),
            Filter::Ipset(16_384),
            Filter::XdpFilterPorts,
        ]
    };
    let mut out = String::from("## 2. Throughput\n\n");
    let missing = ensure_tools(if quick { &PACKAGES[..1] } else { &PACKAGES });
    if !have("trafgen") {
        let why = missing.get("netsniff-ng").cloned().unwrap_or_else(|| "not found".to_string());
        writeln!(out, "Not measured: `trafgen` (netsniff-ng) is unavailable ({why}).\n")?;
        return Ok(out);
    }
    let work = TempDir::new()?;
    let traffic = work.path.join("udp64.trafgen");
    fs::write(&traffic, trafgen_config())?;

    let started = Instant::now();
    // Rounds: each filter runs once per round, in turn, so a drift in the machine's speed
    // (this is a VM) falls on every filter alike instead of on whichever ran then.
    let mut samples: Vec<Result<Vec<f64>, String>> = filters
        .iter()
        .map(|filter| match filter.tools().iter().find(|(tool, _)| !have(tool)) {
            Some((tool, package)) => {
                let why = missing.get(*package).cloned().unwrap_or_else(|| "not found".to_string());
                Err(format!("skipped: `{tool}` unavailable ({why})"))
            }
            None => Ok(Vec::new()),
        })
        .collect();
    let one_run = Plan { runs: 1, secs: plan.secs };
    for _ in 0..plan.runs {
        for (filter, acc) in filters.iter().zip(&mut samples) {
            let Ok(list) = acc else { continue };
            match measure(*filter, &one_run, &work.path, &traffic) {
                Ok(stat) => list.push(stat.median),
                Err(e) => *acc = Err(format!("skipped: {e:#}")),
            }
        }
    }
    let mut rows = Vec::new();
    for (filter, acc) in filters.iter().zip(samples) {
        if let Err(why) = &acc {
            eprintln!("throughput: {}: {why}", filter.name());
        }
        rows.push(Row { filter: filter.name().to_string(), rules: filter.rules(), result: acc.map(Stat::of) });
    }
    let elapsed = started.elapsed();

    let ceiling = rows
        .iter()
        .find(|r| r.filter == Filter::MinimalXdp.name())
        .and_then(|r| r.result.as_ref().ok())
        .map(|s| (s.median, "the minimal XDP program"))
        .or_else(|| {
            rows.iter()
                .filter(|r| !r.filter.contains("sgctl"))
                .filter_map(|r| r.result.as_ref().ok())
                .map(|s| s.median)
                .max_by(f64::total_cmp)
                .map(|m| (m, "the best peer"))
        });
    let header = match ceiling {
        Some((_, "the minimal XDP program")) => "vs ceiling",
        _ => "vs best peer",
    };
    writeln!(out, "| filter | rules | packets/s (median, min-max) | {header} |")?;
    writeln!(out, "|---|---:|---:|---:|")?;
    for row in &rows {
        match &row.result {
            Ok(s) => {
                let ratio = ceiling.map_or("-".to_string(), |(c, _)| format!("{:.2}x", s.median / c));
                writeln!(
                    out,
                    "| {} | {} | {} ({}-{}) | {ratio} |",
                    row.filter,
                    row.rules,
                    kpps(s.median),
                    kpps(s.min),
                    kpps(s.max)
                )?;
            }
            Err(why) => writeln!(out, "| {} | {} | {} | - |", row.filter, row.rules, why.replace('|', "/"))?,
        }
    }
    writeln!(out)?;
    if let Some((ceiling, "the minimal XDP program")) = ceiling {
        writeln!(out, "{}", targets(&filters, &rows, ceiling))?;
    }
    writeln!(
        out,
        "Setup: two network namespaces joined by one veth pair (`{GEN_IF}` - `{SINK_IF}`), a fresh pair \
         for each filter so each runs alone. `trafgen` (all CPUs, qdisc bypassed) sends 64-byte frames \
         (60 without the FCS: Ethernet, IPv4, UDP, 18 bytes of payload) to the sink's MAC and \
         {}, sources random over {DROP_NET}, source ports random over 39936-40191, destination ports \
         cycling over 8960-9215. Every rule set ends with a drop of {DROP_NET} ranked last; no \
         other rule matches that network, so each packet is checked against every rule (sgctl: \
         `realistic_ruleset_with`, a realistic mix; nftables and iptables: `ip saddr 198.18.x.y/28 udp \
         dport P accept` lines, or the same pairs as set elements). packets/s = packets the sink \
         interface received (`rx_packets`; veth runs the receiver on the sender's CPU, so the sender \
         is throttled by the filter) over {} s after a {} ms warm-up; {} round(s), each filter once \
         per round in turn (a fresh pair and a fresh install each time), median and range; ratio = \
         median / the median of {}. Total time {:.0} s.",
        ip4(SINK_IP),
        plan.secs.as_secs(),
        WARMUP.as_millis(),
        plan.runs,
        ceiling.map_or("nothing (no ceiling measured)", |(_, what)| what),
        elapsed.as_secs_f64()
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "Notes: generic (skb) XDP throughout, the fast mode on veth (native XDP on veth stalls the \
         sender). The minimal XDP program is loaded from raw BPF instructions by this benchmark \
         (`tests/src/throughput.rs`): Ethernet and IPv4 bounds checks, one LPM-trie lookup of the \
         source address (trie holds {DROP_NET}), drop on a hit. Netfilter rules sit in \
         prerouting at raw priority, the earliest netfilter hook and no conntrack. xdp-filter cannot \
         express prefixes or accept rules (it holds single addresses, ports and MACs, all deny), so \
         it drops the 256 destination ports the traffic uses: a deny list, not the rule set the \
         others hold."
    )?;
    writeln!(out)?;
    out.push_str(&profile_section(&filters, &one_run, &work.path, &traffic)?);
    if quick {
        writeln!(out, "\nQuick mode: the minimal XDP program and sgctl at 100 rules only, one 1-s run each.")?;
    }
    Ok(out)
}

fn kpps(pps: f64) -> String {
    format!("{:.0}k", pps / 1000.0)
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ip4(a: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

/// The trafgen packet: Ethernet, IPv4 (checksum recomputed per packet), UDP without a
/// checksum, 18 bytes of payload: 60 bytes, a 64-byte frame on the wire.
fn trafgen_config() -> String {
    let mac = SINK_MAC.iter().map(|b| format!("0x{b:02x}")).collect::<Vec<_>>().join(", ");
    let gen_mac = GEN_MAC.split(':').map(|b| format!("0x{b}")).collect::<Vec<_>>().join(", ");
    let [d0, d1, d2, d3] = SINK_IP;
    format!(
        "{{\n  {mac},\n  {gen_mac},\n  c16(0x0800),\n  0x45, 0x00, c16(46), drnd(2), c16(0x4000), 64, 17, \
         csumip(14, 33),\n  198, 19, drnd(2),\n  {d0}, {d1}, {d2}, {d3},\n  0x9c, drnd(1), {DPORT_HI}, \
         dinc(0, 255),\n  c16(26), c16(0),\n  fill(0x5a, 18),\n}}\n"
    )
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the packages whose tools are missing; returns why each failed package failed.
fn ensure_tools(packages: &[&str]) -> std::collections::HashMap<String, String> {
    let tool_of = |p: &str| match p {
        "netsniff-ng" => "trafgen",
        "nftables" => "nft",
        "iptables" => "iptables-restore",
        "ipset" => "ipset",
        _ => "xdp-filter",
    };
    let wanted: Vec<&str> = packages.iter().copied().filter(|p| !have(tool_of(p))).collect();
    let mut failed = std::collections::HashMap::new();
    if wanted.is_empty() {
        return failed;
    }
    if !have("apt-get") {
        for p in wanted {
            failed.insert(p.to_string(), "no apt-get to install it".to_string());
        }
        return failed;
    }
    let install = |p: &str| {
        let mut cmd = Command::new("timeout");
        cmd.args(["300", "apt-get", "install", "-y", "--no-install-recommends", p])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        cmd.output()
    };
    let mut updated = false;
    for p in wanted {
        eprintln!("throughput: installing {p}");
        let mut out = install(p);
        if !out.as_ref().is_ok_and(|o| o.status.success()) && !updated {
            updated = true;
            let _ = Command::new("timeout").args(["300", "apt-get", "update"]).stdin(Stdio::null()).output();
            out = install(p);
        }
        match out {
            Ok(o) if o.status.success() && have(tool_of(p)) => {}
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("apt-get failed").trim();
                failed.insert(p.to_string(), format!("apt-get install {p}: {last}"));
            }
            Err(e) => {
                failed.insert(p.to_string(), format!("apt-get: {e}"));
            }
        }
    }
    failed
}

/// A scratch directory, removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("sgt-{}-tput", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Runs a command with a time limit, failing with its stderr.
fn run_limited(secs: u32, program: &str, args: &[&str]) -> Result<String> {
    let mut all = vec![secs.to_string(), program.to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let out = Command::new("timeout")
        .args(&all)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim();
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" ").chars().take(200).collect::<String>(),
            out.status,
            err.chars().take(400).collect::<String>()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Two namespaces joined by one veth pair; deleted on drop.
struct Pair {
    gen_ns: String,
    sink: Host,
}

impl Pair {
    fn new(tag: &str) -> Result<Self> {
        let base = format!("sgt-{}-tput{tag}", std::process::id());
        let gen_ns = format!("{base}-gen");
        let sink_ns = format!("{base}-sink");
        for ns in [&gen_ns, &sink_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        run_limited(10, "ip", &["netns", "add", &gen_ns])?;
        let mut pair = Self {
            gen_ns: gen_ns.clone(),
            sink: Host {
                role: "sink".to_string(),
                ns: String::new(),
                iface: SINK_IF.to_string(),
                ipv4: SINK_IP.into(),
                ipv6: "2001:db8::2".parse()?,
                mac: SINK_MAC.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
            },
        };
        run_limited(10, "ip", &["netns", "add", &sink_ns])?;
        pair.sink.ns = sink_ns.clone();
        let sink_mac = pair.sink.mac.clone();
        let sink_cidr = format!("{}/15", ip4(SINK_IP));
        let gen_cidr = format!("{GEN_IP}/15");
        let steps: [&[&str]; 9] = [
            &["-n", &gen_ns, "link", "add", GEN_IF, "type", "veth", "peer", "name", SINK_IF, "netns", &sink_ns],
            &["-n", &gen_ns, "link", "set", GEN_IF, "address", GEN_MAC],
            &["-n", &sink_ns, "link", "set", SINK_IF, "address", &sink_mac],
            &["-n", &gen_ns, "addr", "add", &gen_cidr, "dev", GEN_IF],
            &["-n", &sink_ns, "addr", "add", &sink_cidr, "dev", SINK_IF],
            &["-n", &gen_ns, "link", "set", "lo", "up"],
            &["-n", &sink_ns, "link", "set", "lo", "up"],
            &["-n", &gen_ns, "link", "set", GEN_IF, "up"],
            &["-n", &sink_ns, "link", "set", SINK_IF, "up"],
        ];
        for step in steps {
            run_limited(10, "ip", step)?;
        }
        Ok(pair)
    }

    /// Runs `program args` in the sink namespace.
    fn sink_run(&self, secs: u32, program: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", &self.sink.ns, program];
        all.extend_from_slice(args);
        run_limited(secs, "ip", &all)
    }

    fn counter(&self, ns: &str, iface: &str, name: &str) -> Result<u64> {
        let path = format!("/sys/class/net/{iface}/statistics/{name}");
        let text = run_limited(5, "ip", &["netns", "exec", ns, "cat", &path])?;
        text.trim().parse().with_context(|| format!("parsing {path}: {text:?}"))
    }

    /// Datagrams that reached the sink's UDP layer (delivered or to a closed port).
    fn udp_delivered(&self) -> Result<u64> {
        let snmp = run_limited(5, "ip", &["netns", "exec", &self.sink.ns, "cat", "/proc/net/snmp"])?;
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(names), Some(values)) = (udp.next(), udp.next()) else { bail!("no Udp lines in /proc/net/snmp") };
        let field = |name: &str| -> Result<u64> {
            let i = names.split_whitespace().position(|n| n == name).context("Udp field missing")?;
            Ok(values.split_whitespace().nth(i).context("Udp value missing")?.parse()?)
        };
        Ok(field("InDatagrams")? + field("NoPorts")? + field("InErrors")?)
    }

    /// One run: starts trafgen, lets it warm up, counts for `secs`, kills it. Returns the
    /// sink's received packets per second.
    fn run_traffic(&self, traffic: &Path, secs: Duration) -> Result<f64> {
        Ok(self.run_traffic_sampled(traffic, secs, || Ok(()))?.0)
    }

    /// [`Pair::run_traffic`], also calling `sample` where the received packets are
    /// counted, at the start and at the end of the measured window.
    fn run_traffic_sampled<T>(
        &self,
        traffic: &Path,
        secs: Duration,
        mut sample: impl FnMut() -> Result<T>,
    ) -> Result<(f64, T, T)> {
        let limit = (WARMUP + secs + Duration::from_secs(3)).as_secs().to_string();
        let mut child = Command::new("timeout");
        child
            .args(["-s", "KILL", &limit, "ip", "netns", "exec", &self.gen_ns, "trafgen", "--dev", GEN_IF, "--conf"])
            .arg(traffic)
            // No socket-memory or IRQ-affinity tuning: trafgen would not undo it when killed.
            .args(["--no-sock-mem", "--notouch-irq", "--no-cpu-stats"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = KillGroup(Some(child.spawn().context("starting trafgen")?));
        thread::sleep(WARMUP);
        if let Some(status) = child.0.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            let mut err = String::new();
            if let Some(mut e) = child.0.as_mut().and_then(|c| c.stderr.take()) {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!("trafgen exited early ({status}): {}", err.trim().chars().take(400).collect::<String>());
        }
        let s0 = sample()?;
        let rx0 = self.counter(&self.sink.ns, SINK_IF, "rx_packets")?;
        let t0 = Instant::now();
        thread::sleep(secs);
        let rx1 = self.counter(&self.sink.ns, SINK_IF, "rx_packets")?;
        let elapsed = t0.elapsed();
        let s1 = sample()?;
        drop(child);
        Ok(((rx1 - rx0) as f64 / elapsed.as_secs_f64(), s0, s1))
    }

    /// The id of the XDP program attached to the sink's interface (`ip -j -d link`).
    fn attached_xdp(&self) -> Result<u32> {
        let text = run_limited(5, "ip", &["-n", &self.sink.ns, "-j", "-d", "link", "show", "dev", SINK_IF])?;
        let links: serde_json::Value = serde_json::from_str(&text).context("parsing ip -j link")?;
        links[0]["xdp"]["prog"]["id"]
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .with_context(|| format!("no XDP program attached to {SINK_IF}"))
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.sink.ns, &self.gen_ns] {
            if !ns.is_empty() {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
    }
}

/// A process group started by us, killed (the whole group) on drop.
struct KillGroup(Option<Child>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SAFETY: kill has no memory preconditions; the group is the one this child leads.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

/// What holds a filter in place while traffic runs (dropped to tear it down; the
/// namespaces' deletion removes the rest).
enum Installed {
    Nothing,
    Agent(Agent),
    Link(#[expect(dead_code, reason = "held only so the program stays attached; closing it detaches")] OwnedFd),
}

fn measure(filter: Filter, plan: &Plan, work: &Path, traffic: &Path) -> Result<Stat> {
    let tag = match filter {
        Filter::MinimalXdp => "x",
        Filter::Sgctl(_) => "s",
        Filter::NftRules(_) | Filter::NftSet(_) => "n",
        Filter::Iptables(_) | Filter::Ipset(_) => "i",
        Filter::XdpFilterPorts => "f",
    };
    let pair = Pair::new(tag)?;
    let installed = install(filter, &pair, work)?;
    let udp0 = pair.udp_delivered()?;
    let rx0 = pair.counter(&pair.sink.ns, SINK_IF, "rx_packets")?;
    let mut samples = Vec::with_capacity(plan.runs);
    for _ in 0..plan.runs {
        samples.push(pair.run_traffic(traffic, plan.secs)?);
    }
    // Every packet must have been dropped: none may have reached UDP (a datagram to a
    // closed port counts as NoPorts).
    let passed = pair.udp_delivered()? - udp0;
    let received = pair.counter(&pair.sink.ns, SINK_IF, "rx_packets")? - rx0;
    if passed * 100 > received {
        bail!("{passed} of {received} packets passed the filter and reached UDP: the rule set does not drop them");
    }
    if let Installed::Agent(agent) = &installed {
        // The agent must still be running, or the numbers measured nothing.
        // SAFETY: signal 0 only probes whether the process exists.
        if unsafe { libc::kill(agent.pid() as i32, 0) } != 0 {
            bail!("sgctl exited during the measurement: {}", agent.seen.join(" / "));
        }
    }
    drop(installed);
    drop(pair);
    Ok(Stat::of(samples))
}

/// Where a packet's time goes in one filter's run: the sender's CPU per packet (the
/// receiver runs on it), and the part of it inside the filter's XDP program.
struct Profile {
    pps: f64,
    program_ns: f64,
}

/// One more run of an XDP filter with the kernel's BPF run-time statistics on
/// (`BPF_ENABLE_STATS`, only for that run: they add two clock reads to every program
/// run, so the throughput runs are made without them): packets per second, and the
/// program's run time over its run count in the measured window.
fn profile(filter: Filter, plan: &Plan, work: &Path, traffic: &Path) -> Result<Profile> {
    let pair = Pair::new("p")?;
    let installed = install(filter, &pair, work)?;
    let id = pair.attached_xdp()?;
    let stats_on = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let program = || -> Result<(Duration, u64)> {
        let info = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == id)
            .with_context(|| format!("program {id} is gone"))?;
        Ok((info.run_time(), info.run_count()))
    };
    let (pps, (t0, n0), (t1, n1)) = pair.run_traffic_sampled(traffic, plan.secs, program)?;
    drop(stats_on);
    drop(installed);
    drop(pair);
    if n1 <= n0 {
        bail!("program {id} did not run");
    }
    Ok(Profile { pps, program_ns: (t1 - t0).as_nanos() as f64 / (n1 - n0) as f64 })
}

/// The profile runs as a markdown table and what they show.
fn profile_section(filters: &[Filter], plan: &Plan, work: &Path, traffic: &Path) -> Result<String> {
    let mut out = String::new();
    let mut measured = Vec::new();
    for filter in filters.iter().filter(|f| matches!(f, Filter::MinimalXdp | Filter::Sgctl(_))) {
        match profile(*filter, plan, work, traffic) {
            Ok(p) => measured.push((*filter, p)),
            Err(e) => eprintln!("throughput profile: {}: {e:#}", filter.name()),
        }
    }
    let Some((_, minimal)) = measured.iter().find(|(f, _)| *f == Filter::MinimalXdp) else {
        writeln!(out, "Where the time goes: not measured (the minimal program's profile run failed).")?;
        return Ok(out);
    };
    writeln!(
        out,
        "Where the time goes: one more run of each XDP filter with the kernel's BPF run-time statistics on \
         (`BPF_ENABLE_STATS`, on for these runs only: they add two clock reads to every run of a program, \
         which the figures include). The sender's CPU runs the whole receive path, so its time per packet is \
         1 / packets/s; the program's part is its run time over its run count in the same window; the rest \
         (the sender's socket, veth, the skb and generic XDP's handling of it) is the same work for every XDP \
         filter, and its spread between the rows is the run-to-run noise. Every packet here comes from a new \
         source, where part 1 runs one frame again and again in warm caches.\n"
    )?;
    writeln!(out, "| filter | rules | packets/s | ns per packet | in the XDP program | the rest |")?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
    for (filter, p) in &measured {
        let per_packet = 1e9 / p.pps;
        writeln!(
            out,
            "| {} | {} | {} | {per_packet:.0} | {:.0} ({:.0}%) | {:.0} |",
            filter.name(),
            filter.rules(),
            kpps(p.pps),
            p.program_ns,
            100.0 * p.program_ns / per_packet,
            per_packet - p.program_ns
        )?;
    }
    let rest = 1e9 / minimal.pps - minimal.program_ns;
    // At a fixed rest R, a program of P ns against the minimal one's M gives a ratio of
    // (R + M) / (R + P); 0.95x allows P up to M + (R + M) / 19.
    let allowed = minimal.program_ns + (rest + minimal.program_ns) / 19.0;
    writeln!(
        out,
        "\nveth is the limit in this setup: {rest:.0} ns of every packet is spent outside the filter, so the \
         throughput ratio is (rest + the minimal program) / (rest + sgctl's program), and 0.95x would need \
         sgctl's program to cost at most {allowed:.0} ns a packet here. A native-XDP NIC runs the program in \
         its driver before any skb exists, so the rest shrinks to the driver's receive work: packets per \
         second rise for every filter, and the same difference in program time weighs more in the ratio, \
         not less."
    )?;
    Ok(out)
}

/// The throughput targets judged from the table: sgctl at least 0.95x the minimal XDP
/// program at every size, and ahead of the nftables interval set and ipset of the same
/// size by at least 5% with the two ranges apart (sgctl's slowest run faster than the
/// peer's fastest), so the margin is not the run-to-run spread.
fn targets(filters: &[Filter], rows: &[Row], ceiling: f64) -> String {
    let stat = |f: Filter| filters.iter().zip(rows).find(|(g, _)| **g == f).and_then(|(_, r)| r.result.as_ref().ok());
    let mut ratios = Vec::new();
    let mut ratio_ok = true;
    let mut margins = Vec::new();
    let mut margin_ok = true;
    for f in filters {
        let Filter::Sgctl(n) = *f else { continue };
        let Some(sg) = stat(*f) else { continue };
        let r = sg.median / ceiling;
        ratio_ok &= r >= 0.95;
        ratios.push(format!("{}: {r:.2}x", thousands(n)));
        for peer in [Filter::NftSet(n), Filter::Ipset(n)] {
            let Some(p) = stat(peer) else { continue };
            let ahead = sg.median / p.median;
            let clear = ahead >= 1.05 && sg.min > p.max;
            margin_ok &= clear;
            let what = if matches!(peer, Filter::NftSet(_)) { "nftables set" } else { "ipset" };
            margins.push(format!(
                "{} {what} {ahead:.2}x (sgctl {}-{}, {what} {}-{})",
                thousands(n),
                kpps(sg.min),
                kpps(sg.max),
                kpps(p.min),
                kpps(p.max)
            ));
        }
    }
    let verdict = |ok: bool, measured: bool| match (measured, ok) {
        (false, _) => "not measured in this run",
        (true, true) => "met",
        (true, false) => "missed",
    };
    format!(
        "Targets: sgctl at least 0.95x the minimal XDP program at every size ({}): {}. Ahead of the nftables \
         interval set and ipset of the same size by at least 5%, with sgctl's slowest run faster than the peer's \
         fastest{}: {}.\n",
        ratios.join(", "),
        verdict(ratio_ok, !ratios.is_empty()),
        if margins.is_empty() { String::new() } else { format!(" ({})", margins.join("; ")) },
        verdict(margin_ok, !margins.is_empty()),
    )
}

/// The `i`-th of the non-matching rules: a /28 inside 198.18.0.0/16 and a destination port,
/// distinct for every `i` below 16,384, never matching the traffic (from 198.19.0.0/16).
fn filler(i: usize) -> (String, u16) {
    let net = format!("198.18.{}.{}/28", (i >> 4) & 0xff, (i & 15) << 4);
    (net, 1000 + i as u16)
}

fn install(filter: Filter, pair: &Pair, work: &Path) -> Result<Installed> {
    match filter {
        Filter::MinimalXdp => {
            let link = minimal_xdp::attach(&pair.sink.ns, SINK_IF)?;
            Ok(Installed::Link(link))
        }
        Filter::Sgctl(n) => {
            let opts = RealisticOptions {
                iface: SINK_IF.into(),
                drop_all_from: Some(DROP_NET.into()),
                drop_all_from_v6: None,
            };
            let path = work.join(format!("sgctl-{n}.toml"));
            fs::write(&path, realistic_ruleset_with(SEED, n, &opts))?;
            let config = path.to_str().context("temp path is not UTF-8")?;
            let args = ["run", "--config", config, "--xdp-mode", "generic", "--interval", "0"];
            Ok(Installed::Agent(Agent::start(&pair.sink, &args, "applied")?))
        }
        Filter::NftRules(n) => {
            let mut text = String::from(
                "table ip sgbench {\n  chain pre {\n    type filter hook prerouting priority raw; policy accept;\n",
            );
            for i in 0..n - 1 {
                let (net, port) = filler(i);
                writeln!(text, "    ip saddr {net} udp dport {port} accept")?;
            }
            writeln!(text, "    ip saddr {DROP_NET} drop\n  }}\n}}")?;
            load_file(pair, work, "rules.nft", &text, "nft", &["-f"])
        }
        Filter::NftSet(n) => {
            let elements: Vec<String> = (0..n - 1)
                .map(|i| {
                    let (net, port) = filler(i);
                    format!("{net} . {port}")
                })
                .collect();
            let text = format!(
                "table ip sgbench {{\n  set allow {{\n    type ipv4_addr . inet_service\n    flags interval\n    \
                 elements = {{ {} }}\n  }}\n  chain pre {{\n    type filter hook prerouting priority raw; policy \
                 accept;\n    ip saddr . udp dport @allow accept\n    ip saddr {DROP_NET} drop\n  }}\n}}\n",
                elements.join(",\n      ")
            );
            load_file(pair, work, "set.nft", &text, "nft", &["-f"])
        }
        Filter::Iptables(n) => {
            let mut text = String::from("*raw\n:PREROUTING ACCEPT [0:0]\n");
            for i in 0..n - 1 {
                let (net, port) = filler(i);
                writeln!(text, "-A PREROUTING -s {net} -p udp -m udp --dport {port} -j ACCEPT")?;
            }
            writeln!(text, "-A PREROUTING -s {DROP_NET} -j DROP\nCOMMIT")?;
            load_file(pair, work, "rules.iptables", &text, "iptables-restore", &[])
        }
        Filter::Ipset(n) => {
            let mut set = String::from("create sgallow hash:net,port family inet hashsize 4096 maxelem 65536\n");
            for i in 0..n - 1 {
                let (net, port) = filler(i);
                writeln!(set, "add sgallow {net},udp:{port}")?;
            }
            load_file(pair, work, "allow.ipset", &set, "ipset", &["restore", "-file"])?;
            let rules = format!(
                "*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m set --match-set sgallow src,dst -j ACCEPT\n\
                 -A PREROUTING -s {DROP_NET} -j DROP\nCOMMIT\n"
            );
            load_file(pair, work, "ipset.iptables", &rules, "iptables-restore", &[])
        }
        Filter::XdpFilterPorts => {
            // `ip netns exec` mounts a fresh /sys; xdp-filter pins its maps under
            // /sys/fs/bpf, so load and fill it in one shell that mounts a bpffs first. The
            // program stays attached after that mount is gone; deleting the namespace
            // removes it.
            let ports: Vec<String> = (0..=255u16).map(|p| ((DPORT_HI << 8) | p).to_string()).collect();
            let script = format!(
                "set -e\nmount -t bpf bpf /sys/fs/bpf\nxdp-filter load --mode skb --features udp {SINK_IF}\n\
                 for p in {}; do xdp-filter port --proto udp --mode dst $p; done\n",
                ports.join(" ")
            );
            pair.sink_run(120, "sh", &["-c", &script])?;
            Ok(Installed::Nothing)
        }
    }
}

/// Writes `text` to a file and runs `program ARGS FILE` in the sink namespace.
fn load_file(pair: &Pair, work: &Path, name: &str, text: &str, program: &str, args: &[&str]) -> Result<Installed> {
    let path = work.join(name);
    fs::File::create(&path)?.write_all(text.as_bytes())?;
    let file = path.to_str().context("temp path is not UTF-8")?;
    let mut all = args.to_vec();
    all.push(file);
    if program == "iptables-restore" {
        // iptables-restore reads the rules from stdin only.
        let script = format!("iptables-restore < {file}");
        pair.sink_run(120, "sh", &["-c", &script])?;
    } else {
        pair.sink_run(120, program, &all)?;
    }
    Ok(Installed::Nothing)
}

/// The ceiling: a minimal XDP program built from raw BPF instructions (no ELF, no eBPF
/// toolchain), attached in generic mode with a BPF link.
mod minimal_xdp {
    use super::*;

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
    const BPF_F_NO_PREALLOC: u32 = 1;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    const BPF_XDP: u32 = 37;
    const XDP_FLAGS_SKB_MODE: u32 = 2;

    /// `union bpf_attr`, big enough for the commands used here (the kernel accepts a
    /// shorter one and treats the rest as zero).
    #[repr(C, align(8))]
    struct Attr([u8; 128]);

    impl Attr {
        fn new() -> Self {
            Self([0; 128])
        }
        fn u32(&mut self, off: usize, v: u32) -> &mut Self {
            self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
            self
        }
        fn u64(&mut self, off: usize, v: u64) -> &mut Self {
            self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
            self
        }
    }

    fn bpf(cmd: libc::c_long, attr: &mut Attr) -> Result<i32> {
        // SAFETY: attr is a valid, writable buffer of the size passed.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len() as u32) };
        if rc < 0 {
            bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
        }
        Ok(rc as i32)
    }

    fn owned(fd: i32) -> OwnedFd {
        // SAFETY: fd was just returned by the kernel and is owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    /// One instruction: opcode, dst and src registers, offset, immediate.
    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
        let mut b = [0u8; 8];
        b[0] = code;
        b[1] = (src << 4) | (dst & 0xf);
        b[2..4].copy_from_slice(&off.to_ne_bytes());
        b[4..8].copy_from_slice(&imm.to_ne_bytes());
        u64::from_ne_bytes(b)
    }

    fn program(map_fd: i32) -> Vec<u64> {
        vec![
            insn(0x61, 2, 1, 0, 0),       // 0: r2 = ctx->data
            insn(0x61, 3, 1, 4, 0),       // 1: r3 = ctx->data_end
            insn(0xbf, 4, 2, 0, 0),       // 2: r4 = r2
            insn(0x07, 4, 0, 0, 34),      // 3: r4 += 34 (Ethernet + IPv4 header)
            insn(0x2d, 4, 3, 13, 0),      // 4: if r4 > r3 goto pass
            insn(0x69, 5, 2, 12, 0),      // 5: r5 = ethertype (u16)
            insn(0x55, 5, 0, 11, 0x0008), // 6: if r5 != htons(0x0800) goto pass
            insn(0x61, 5, 2, 26, 0),      // 7: r5 = source address
            insn(0x62, 10, 0, -8, 32),    // 8: key.prefixlen = 32
            insn(0x63, 10, 5, -4, 0),     // 9: key.addr = r5
            insn(0x18, 1, 1, 0, map_fd),  // 10: r1 = map (pseudo map fd)
            insn(0, 0, 0, 0, 0),          // 11
            insn(0xbf, 2, 10, 0, 0),      // 12: r2 = r10
            insn(0x07, 2, 0, 0, -8),      // 13: r2 += -8
            insn(0x85, 0, 0, 0, 1),       // 14: call bpf_map_lookup_elem
            insn(0x15, 0, 0, 2, 0),       // 15: if r0 == 0 goto pass
            insn(0xb7, 0, 0, 0, 1),       // 16: r0 = XDP_DROP
            insn(0x95, 0, 0, 0, 0),       // 17: exit
            insn(0xb7, 0, 0, 0, 2),       // 18: pass: r0 = XDP_PASS
            insn(0x95, 0, 0, 0, 0),       // 19: exit
        ]
    }

    /// Loads the program with a trie holding 198.19.0.0/16 and attaches it (generic XDP)
    /// to `iface` in namespace `ns`; the returned link detaches when closed.
    pub(super) fn attach(ns: &str, iface: &str) -> Result<OwnedFd> {
        let mut attr = Attr::new();
        attr.u32(0, BPF_MAP_TYPE_LPM_TRIE).u32(4, 8).u32(8, 4).u32(12, 16).u32(16, BPF_F_NO_PREALLOC);
        let map = owned(bpf(BPF_MAP_CREATE, &mut attr).context("creating the LPM trie")?);
        let key: [u8; 8] = {
            let mut k = [0u8; 8];
            k[..4].copy_from_slice(&16u32.to_ne_bytes());
            k[4..].copy_from_slice(&[198, 19, 0, 0]);
            k
        };
        let value = 1u32;
        let mut attr = Attr::new();
        attr.u32(0, map.as_raw_fd() as u32).u64(8, key.as_ptr() as u64).u64(16, (&raw const value) as u64).u64(24, 0);
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).context("filling the LPM trie")?;

        let insns = program(map.as_raw_fd());
        let license = c"GPL";
        let mut log = vec![0u8; 64 * 1024];
        let mut attr = Attr::new();
        attr.u32(0, BPF_PROG_TYPE_XDP)
            .u32(4, insns.len() as u32)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .u32(24, 1)
            .u32(28, log.len() as u32)
            .u64(32, log.as_mut_ptr() as u64)
            .u32(68, BPF_XDP);
        attr.0[48..56].copy_from_slice(b"sg_tput\0");
        let prog = match bpf(BPF_PROG_LOAD, &mut attr) {
            Ok(fd) => owned(fd),
            Err(e) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                bail!("{e}: {}", String::from_utf8_lossy(&log[..end]).trim());
            }
        };

        // Interface indexes are per namespace: resolve and attach from a thread that has
        // entered the sink's namespace (setns changes only the calling thread).
        let ns_path = format!("/run/netns/{ns}");
        let iface = std::ffi::CString::new(iface)?;
        let prog_fd = prog.as_raw_fd();
        let link = thread::scope(|s| {
            s.spawn(|| -> Result<OwnedFd> {
                let ns_file = fs::File::open(&ns_path).with_context(|| format!("opening {ns_path}"))?;
                // SAFETY: a valid namespace fd; affects only this thread.
                if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns {ns_path}: {}", std::io::Error::last_os_error());
                }
                // SAFETY: a valid NUL-terminated name.
                let ifindex = unsafe { libc::if_nametoindex(iface.as_ptr()) };
                if ifindex == 0 {
                    bail!("no interface {iface:?} in {ns_path}");
                }
                let mut attr = Attr::new();
                attr.u32(0, prog_fd as u32).u32(4, ifindex).u32(8, BPF_XDP).u32(12, XDP_FLAGS_SKB_MODE);
                Ok(owned(bpf(BPF_LINK_CREATE, &mut attr).context("attaching (BPF_LINK_CREATE, generic XDP)")?))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("attach thread panicked"))?
        })?;
        drop(prog);
        drop(map);
        Ok(link)
    }
}
