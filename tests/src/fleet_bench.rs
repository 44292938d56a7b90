//! Part 6 of `cargo xtask bench`: a fleet simulated on this machine. One real etcd, and
//! N agents: each is the agent's own store code ([`sgctl::agent::fleet::follow`]: its
//! lease, member registration, snapshot, watch and composing), with what `sgctl run`
//! does next up to the data plane (validating the composed file and compiling it for the
//! host's interface) but no kernel. Hosts are bound to 100 groups round-robin, each with
//! its addresses as members; group `g`'s rule admits group `g-1`, so a member joining
//! group `g` concerns the hosts bound to `g` and `g+1`. Measured: from just before a
//! membership change is written to each concerned agent having compiled its new rules,
//! p50 and p99, and that no other agent composed anything; etcd's and the agents' memory.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use sgctl::{
    agent::fleet::{Composed, StoreOptions, StoreStatus, follow},
    policy::{
        compile::compile,
        config::{Direction, parse_str},
        fleet::{self, Key, PREFIX},
    },
    store::{Store, StoreUrl},
};
use tokio::sync::mpsc;

use crate::{
    fleet::Etcd,
    netns::Lab,
    procfs::{cpu_and_rss, ticks_per_second},
};

/// The fleet's size.
struct Size {
    agents: usize,
    groups: usize,
    members_per_agent: usize,
    changes: usize,
}

fn group_id(g: usize) -> String {
    format!("sg-{g:03}")
}

fn host_name(h: usize) -> String {
    format!("h{h:05}")
}

/// Address number `n` of the fleet, from 198.18.0.0/15.
fn address(n: usize) -> String {
    let n = n + 1;
    format!("198.{}.{}.{}", 18 + (n >> 16), (n >> 8) & 255, n & 255)
}

/// The groups, as one rule file for `fleet push`.
fn groups_file(groups: usize) -> String {
    let mut text = String::new();
    for g in 0..groups {
        let peer = group_id((g + groups - 1) % groups);
        let _ = write!(
            text,
            "[[security_group]]\nid = \"{}\"\n[[security_group.rule]]\ndirection = \"ingress\"\nprotocol = \"tcp\"\n\
             port_range = \"443/443\"\nsource_group = \"{peer}\"\n[[security_group.rule]]\ndirection = \"ingress\"\n\
             protocol = \"tcp\"\nport_range = \"22/22\"\nsource = \"198.18.0.0/16\"\n\n",
            group_id(g)
        );
    }
    text
}

/// One agent's compiled rules: which agent, at which store revision, when.
#[derive(Clone, Copy)]
struct Compiled {
    agent: usize,
    revision: i64,
    at: Instant,
}

fn rss_kib(pid: u32) -> u64 {
    cpu_and_rss(pid).1
}

/// CPU seconds (user and system) process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    cpu_and_rss(pid).0 as f64 / ticks_per_second() as f64
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn allow_every_cpu() {
    // SAFETY: a zeroed cpu_set_t is valid; the calls only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..std::thread::available_parallelism().map_or(1, |n| n.get()).max(2) {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The section of the report.
pub fn fleet_section(quick: bool) -> Result<String> {
    let size = if quick {
        Size { agents: 50, groups: 10, members_per_agent: 4, changes: 5 }
    } else {
        Size { agents: 1000, groups: 100, members_per_agent: 10, changes: 30 }
    };
    raise_fd_limit();
    let mut lab = Lab::new("fleetbench")?;
    let etcd = Etcd::start(&mut lab)?;
    let ns = etcd.namespace().to_string();
    let etcd_pid = etcd.pid().context("etcd's pid")?;
    let url: StoreUrl = etcd.url().parse()?;
    // Everything runs inside the store's namespace, on a runtime of two worker threads
    // (the machine's cores), which its threads inherit.
    let result = crate::traffic::in_netns(&ns, move || {
        // The benchmark pins its main thread to one CPU for the per-packet parts; the
        // agents get both.
        allow_every_cpu();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        runtime.block_on(simulate(url, size, etcd_pid))
    });
    drop(etcd);
    result
}

async fn simulate(url: StoreUrl, size: Size, etcd_pid: u32) -> Result<String> {
    let mut out = String::new();
    let mut store = Store::connect(&url).await?;
    let items =
        fleet::split(&groups_file(size.groups), "fleet-bench groups", None).map_err(|e| anyhow::anyhow!("{e}"))?;
    store.push(&items, None, "fleet-bench").await?;
    for h in 0..size.agents {
        let addresses: Vec<String> =
            (0..size.members_per_agent).map(|k| format!("\"{}\"", address(h * size.members_per_agent + k))).collect();
        let binding = format!(
            "name = \"eth0\"\nsecurity_groups = [\"{}\"]\naddresses = [{}]\n",
            group_id(h % size.groups),
            addresses.join(", ")
        );
        let key = Key::Binding { host: host_name(h), iface: "eth0".into() }.path();
        store.client().put(format!("{PREFIX}{key}"), binding, None).await?;
    }
    let rss_before = rss_kib(std::process::id());
    let records: Arc<Mutex<Vec<Compiled>>> = Arc::default();
    let started = Instant::now();
    let mut statuses = Vec::new();
    for agent in 0..size.agents {
        let (tx, mut rx) = mpsc::channel::<Composed>(4);
        let status = Arc::new(Mutex::new(StoreStatus::default()));
        statuses.push(status.clone());
        let opts = StoreOptions { url: url.clone(), host: host_name(agent), lease_ttl: 30 };
        tokio::spawn(follow(opts, None, tx, status));
        let records = records.clone();
        tokio::spawn(async move {
            while let Some(composed) = rx.recv().await {
                // What `sgctl run` does with it short of the kernel.
                let Ok(cfg) = parse_str(&composed.text, &composed.label) else { continue };
                for binding in &cfg.interfaces {
                    for direction in [Direction::Ingress, Direction::Egress] {
                        let _ = compile(&cfg, binding, direction);
                    }
                }
                let at = Instant::now();
                records.lock().expect("not poisoned").push(Compiled { agent, revision: composed.revision, at });
            }
        });
    }
    // Settled: every member registered, and no agent compiling for a second.
    let members = size.agents * size.members_per_agent;
    let deadline = Instant::now() + Duration::from_secs(if size.agents > 100 { 600 } else { 120 });
    loop {
        let count = store
            .client()
            .get(format!("{PREFIX}members/"), Some(etcd_client::GetOptions::new().with_prefix().with_count_only()))
            .await?
            .count();
        let quiet =
            records.lock().expect("not poisoned").last().is_none_or(|r| r.at.elapsed() > Duration::from_secs(1));
        let connected = statuses.iter().all(|s| s.lock().expect("not poisoned").connected);
        if usize::try_from(count).unwrap_or(0) >= members && quiet && connected {
            break;
        }
        if Instant::now() > deadline {
            bail!("the simulated fleet did not settle: {count} of {members} members registered");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settle = started.elapsed();
    let start_composes = records.lock().expect("not poisoned").len();
    let rss_agents = rss_kib(std::process::id()).saturating_sub(rss_before);
    let rss_etcd = rss_kib(etcd_pid);
    let snapshot_bytes: usize =
        store.read().await?.snapshot.iter().map(|(k, v)| PREFIX.len() + k.len() + v.len()).sum();
    let etcd_cpu_before = cpu_seconds(etcd_pid);
    let agents_cpu_before = cpu_seconds(std::process::id());

    // Membership changes, one at a time: a member joins group g (registered by a host
    // that runs no agent), each concerned agent must compile it.
    let mut latencies_ms: Vec<f64> = Vec::new();
    let mut unconcerned = 0usize;
    for change in 0..size.changes {
        let g = (change * 37) % size.groups;
        let concerned: Vec<usize> =
            (0..size.agents).filter(|h| h % size.groups == g || h % size.groups == (g + 1) % size.groups).collect();
        let mark = records.lock().expect("not poisoned").len();
        let key = Key::Member { group: group_id(g), host: "bench".into(), address: address(members + change).parse()? }
            .path();
        let t0 = Instant::now();
        let revision =
            store.client().put(format!("{PREFIX}{key}"), "", None).await?.header().map_or(0, |h| h.revision());
        let deadline = t0 + Duration::from_secs(20);
        loop {
            let done = {
                let r = records.lock().expect("not poisoned");
                let seen: Vec<&Compiled> = r[mark..].iter().filter(|c| c.revision >= revision).collect();
                concerned.iter().all(|a| seen.iter().any(|c| c.agent == *a))
            };
            if done {
                break;
            }
            if Instant::now() > deadline {
                bail!("change {change}: not every concerned agent compiled within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // A little longer, to see whether anyone else composes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = records.lock().expect("not poisoned");
        for c in &r[mark..] {
            if concerned.contains(&c.agent) {
                if c.revision >= revision {
                    latencies_ms.push(c.at.duration_since(t0).as_secs_f64() * 1e3);
                }
            } else {
                unconcerned += 1;
            }
        }
    }
    // Less the 200 ms waits, which cost nothing.
    let etcd_cpu_ms = (cpu_seconds(etcd_pid) - etcd_cpu_before) * 1e3 / size.changes.max(1) as f64;
    let agents_cpu_ms = (cpu_seconds(std::process::id()) - agents_cpu_before) * 1e3 / size.changes.max(1) as f64;
    latencies_ms.sort_by(f64::total_cmp);
    let per_change = latencies_ms.len() / size.changes.max(1);
    writeln!(out, "## 6. A fleet on etcd (simulated agents, real etcd)\n")?;
    writeln!(
        out,
        "{} agents (the agent's store code and the rule compiler, no kernel) on one etcd {} in a namespace, \
         {members} members in {} groups ({} per agent), on a runtime of 2 threads. {} membership changes, one \
         at a time, each concerning {per_change} agents (those bound to the group and to the group whose rule names \
         it). Latency: from just before the change is written to each concerned agent having validated and compiled \
         its new rules.\n",
        size.agents,
        etcd_version(),
        size.groups,
        size.members_per_agent,
        size.changes
    )?;
    writeln!(out, "| figure | value |\n|---|---|")?;
    writeln!(out, "| p50 change to compiled | {:.1} ms |", percentile(&latencies_ms, 50.0))?;
    writeln!(out, "| p99 change to compiled | {:.1} ms |", percentile(&latencies_ms, 99.0))?;
    writeln!(out, "| max | {:.1} ms |", latencies_ms.last().copied().unwrap_or(f64::NAN))?;
    writeln!(out, "| compiles by agents the changes did not concern | {unconcerned} |")?;
    writeln!(
        out,
        "| start: all agents connected, {members} members registered, settled | {:.1} s ({start_composes} composes) |",
        settle.as_secs_f64()
    )?;
    writeln!(out, "| etcd memory (RSS) | {:.0} MiB |", rss_etcd as f64 / 1024.0)?;
    writeln!(out, "| etcd CPU per change (one event to {} watchers) | {etcd_cpu_ms:.1} ms |", size.agents)?;
    writeln!(
        out,
        "| agents' CPU per change (all of them, mostly deciding it is not theirs) | {agents_cpu_ms:.1} ms |"
    )?;
    writeln!(
        out,
        "| a snapshot of the keyspace (read at start and after compaction) | {:.0} KiB |",
        snapshot_bytes as f64 / 1024.0
    )?;
    writeln!(
        out,
        "| agents' memory (RSS growth of this process) | {:.0} MiB, {:.0} KiB per agent |",
        rss_agents as f64 / 1024.0,
        rss_agents as f64 / size.agents as f64
    )?;
    writeln!(out)?;
    let target = if percentile(&latencies_ms, 99.0) < 1000.0 { "met" } else { "MISSED" };
    writeln!(out, "Target p99 under 1 s at 1,000 agents: {target} (this run: {} agents).\n", size.agents)?;
    Ok(out)
}

fn etcd_version() -> String {
    std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim_start_matches("etcd Version: ").to_string())
        })
        .unwrap_or_else(|| "?".into())
}
