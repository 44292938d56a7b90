//! `sgctl run`: enforce a rule file on the interfaces it names until stopped; reload it
//! on SIGHUP (all or nothing: a file that fails validation changes nothing).

use std::{path::PathBuf, time::Duration};

use anyhow::{Result, bail};
use sg_common::stats;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    attach::{self, Attachment, XdpModeChoice},
    config::{Config, InterfaceBinding, load_file},
    counters::hook_counters,
    ebpf::{Dataplane, LoadOptions},
    enforce::{ApplyReport, Capacity, Enforcer, compile_targets},
    sessions,
};

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config: PathBuf,
    /// Only these interfaces of the file (default: every one that exists here).
    pub only: Vec<String>,
    pub xdp_mode: XdpModeChoice,
    /// Seconds between counter lines; 0 for none.
    pub interval: u64,
    pub json: bool,
}

/// The interfaces of `cfg` to enforce on here, with their ifindex.
fn targets<'c>(cfg: &'c Config, only: &[String]) -> Result<Vec<(u32, &'c InterfaceBinding)>> {
    for name in only {
        if cfg.interface(name).is_none() {
            bail!("--iface {name}: the rule file has no [[interface]] of that name");
        }
    }
    let mut found = Vec::new();
    for binding in &cfg.interfaces {
        if !only.is_empty() && !only.contains(&binding.name) {
            continue;
        }
        match attach::ifindex(&binding.name) {
            Ok(index) => found.push((index, binding)),
            Err(_) if only.is_empty() => println!("sgctl: {} is not on this host; skipped", binding.name),
            Err(e) => return Err(e),
        }
    }
    if found.is_empty() {
        bail!("none of the rule file's interfaces exist here");
    }
    Ok(found)
}

fn load_config(path: &std::path::Path) -> Result<Config> {
    load_file(path).map_err(|errors| anyhow::anyhow!("{errors}\n{}: invalid, nothing applied", path.display()))
}

pub fn run(opts: &RunOptions) -> Result<()> {
    let cfg = load_config(&opts.config)?;
    let here = targets(&cfg, &opts.only)?;
    let names: Vec<String> = here.iter().map(|(_, b)| b.name.clone()).collect();
    let started = std::time::Instant::now();
    let compiled = compile_targets(&cfg, &here)?;
    let compile_time = started.elapsed();
    let rule_sets = compiled.iter().flat_map(|c| [&c.ingress, &c.egress]);
    let capacity = Capacity { sessions: cfg.sessions.max_sessions, ..Capacity::for_rule_sets(rule_sets) };
    let mut dp = Dataplane::load(&LoadOptions { trace: false, capacity })?;
    let mut enforcer = Enforcer::new(&mut dp, &capacity)?;
    let id_file = sessions::map_id_file();
    if let Some(dir) = id_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&id_file, enforcer.sessions().ids()?)?;
    // Rules go in before the programs attach: there is no moment without them.
    let report = ApplyReport { compile_time, ..enforcer.apply_compiled(&cfg, &compiled)? };
    let mut attachments = Vec::new();
    for name in &names {
        match Attachment::attach(&mut dp, name, opts.xdp_mode) {
            Ok(a) => attachments.push(a),
            Err(e) => {
                detach_all(&mut dp, attachments);
                return Err(e);
            }
        }
        attach::write_pid_file(name)?;
    }
    if !dp.features.coarse_clock {
        println!("sgctl: no bpf_ktime_get_coarse_ns (kernel before 5.11): sessions use bpf_ktime_get_ns");
    }
    for a in &attachments {
        println!("enforcing on {} (ingress XDP {}, egress TC {:?})", a.iface, a.xdp_mode, a.tc_hook);
    }
    println!(
        "session table: {} entries, {:.1} MiB",
        capacity.sessions,
        f64::from(capacity.sessions) * sessions::BYTES_PER_SESSION as f64 / (1024.0 * 1024.0)
    );
    println!(
        "applied {}: {} rule sets, {} rules, {} vectors, {} trie entries (compile {:.1} ms, write {:.1} ms)",
        opts.config.display(),
        report.rule_sets,
        report.rules,
        report.vectors,
        report.trie_entries,
        report.compile_time.as_secs_f64() * 1e3,
        report.write_time.as_secs_f64() * 1e3,
    );
    let result = tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(serve(
        opts,
        &dp,
        &mut enforcer,
        &names,
    ));
    detach_all(&mut dp, attachments);
    for name in &names {
        let _ = std::fs::remove_file(attach::pid_file(name));
    }
    let _ = std::fs::remove_file(&id_file);
    result?;
    println!("stopped; detached from {}", names.join(", "));
    Ok(())
}

fn detach_all(dp: &mut Dataplane, attachments: Vec<Attachment>) {
    for a in attachments {
        let iface = a.iface.clone();
        if let Err(e) = a.detach(dp) {
            eprintln!("sgctl: detaching {iface}: {e:#}");
        }
    }
}

/// Waits for signals: SIGINT/SIGTERM stop, SIGHUP reloads; prints counters meanwhile.
async fn serve(opts: &RunOptions, dp: &Dataplane, enforcer: &mut Enforcer, names: &[String]) -> Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let period = Duration::from_secs(opts.interval.max(1));
    let mut gc = tokio::time::interval(gc_period(enforcer.timeouts()));
    loop {
        tokio::select! {
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
            _ = sighup.recv() => {
                reload(opts, enforcer, names);
                gc = tokio::time::interval(gc_period(enforcer.timeouts()));
            }
            _ = gc.tick() => {
                if let Err(e) = enforcer.collect_garbage() {
                    eprintln!("sgctl: session garbage collection: {e:#}");
                }
            }
            _ = tokio::time::sleep(period), if opts.interval > 0 => {
                let slots = dp.counters()?;
                let ingress = hook_counters(&slots, stats::HOOK_INGRESS);
                let egress = hook_counters(&slots, stats::HOOK_EGRESS);
                if opts.json {
                    println!("{}", serde_json::json!({ "ingress": ingress, "egress": egress }));
                } else {
                    println!("ingress: {ingress} | egress: {egress}");
                }
            }
        }
    }
}

/// How often expired sessions are freed: half the shortest timeout, within 1 to 10 s.
fn gc_period(t: &sg_common::Timeouts) -> Duration {
    let shortest =
        [t.tcp_established, t.tcp_opening, t.tcp_closing, t.tcp_rst, t.udp_unreplied, t.udp_replied, t.icmp, t.other]
            .into_iter()
            .min()
            .unwrap_or(0);
    Duration::from_nanos(shortest / 2).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// Re-reads the rule file and applies it to the interfaces enforced since start.
fn reload(opts: &RunOptions, enforcer: &mut Enforcer, names: &[String]) {
    let outcome = load_config(&opts.config).and_then(|cfg| {
        let mut targets = Vec::new();
        for name in names {
            match cfg.interface(name) {
                Some(binding) => targets.push((attach::ifindex(name)?, binding)),
                None => bail!("the new file drops interface {name}; restart sgctl to change the interface set"),
            }
        }
        let report = enforcer.apply(&cfg, &targets)?;
        // The new rules are in force; now delete the ones they replaced.
        let retire_time = enforcer.retire_pending();
        Ok((report, enforcer.generation(targets[0].0).unwrap_or(0), retire_time))
    });
    match outcome {
        Ok((report, generation, retire_time)) => println!(
            "reloaded {}: generation {generation}, {} rules (compile {:.1} ms, write {:.1} ms; old rules removed in \
             {:.1} ms after the switch)",
            opts.config.display(),
            report.rules,
            report.compile_time.as_secs_f64() * 1e3,
            report.write_time.as_secs_f64() * 1e3,
            retire_time.as_secs_f64() * 1e3
        ),
        Err(e) => eprintln!("sgctl: reload rejected, the previous rules stay in force: {e:#}"),
    }
}
