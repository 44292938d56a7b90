//! `sgctl run`: enforce a rule file on the interfaces it names until stopped, serving the
//! control socket ([`api`]) through which `sgctl apply` and `sgctl confirm` change the
//! rules; reload the file on SIGHUP, or when it changes with `--watch` (all or nothing:
//! a file that fails validation changes nothing).
//!
//! What it does is logged through `tracing` (the binary sets the subscriber up); the
//! counter lines it was asked for (`--interval`, `--json`) are its output, on stdout.

pub mod api;
mod serve;

use std::path::PathBuf;

use anyhow::{Result, bail};
use tracing::{error, info, warn};

use crate::{
    control::{ApplyReport, Enforcer, compile_targets},
    dataplane::{
        Capacity, Dataplane, LoadOptions,
        attach::{self, Attachment, XdpModeChoice},
        established, sessions,
    },
    paths,
    policy::config::{Config, InterfaceBinding},
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
    /// Apply the rule file whenever it changes (debounced).
    pub watch: bool,
    /// The control socket (default: [`api::default_socket`]).
    pub socket: Option<PathBuf>,
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
            Err(_) if only.is_empty() => warn!("{} is not on this host; skipped", binding.name),
            Err(e) => return Err(e.into()),
        }
    }
    if found.is_empty() {
        bail!("none of the rule file's interfaces exist here");
    }
    Ok(found)
}

pub fn run(opts: &RunOptions) -> Result<()> {
    let text = std::fs::read_to_string(&opts.config)
        .map_err(|e| anyhow::anyhow!("{}: cannot read file: {e}", opts.config.display()))?;
    let cfg = crate::policy::config::parse_str(&text, &opts.config.display().to_string())
        .map_err(|errors| anyhow::anyhow!("{errors}\n{}: invalid, nothing applied", opts.config.display()))?;
    let here = targets(&cfg, &opts.only)?;
    // The socket first: a second agent in this namespace stops here, before touching
    // anything the first one runs.
    let socket = opts.socket.clone().unwrap_or_else(api::default_socket);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let listener = {
        let _context = runtime.enter();
        serve::bind_socket(&socket)?
    };
    let mut bound = SocketGuard(socket.clone());
    let names: Vec<String> = here.iter().map(|(_, b)| b.name.clone()).collect();
    let started = std::time::Instant::now();
    let compiled = compile_targets(&cfg, &here)?;
    let compile_time = started.elapsed();
    let rule_sets = compiled.iter().flat_map(|c| [&c.ingress, &c.egress]);
    let capacity = Capacity { sessions: cfg.sessions.max_sessions, ..Capacity::for_rule_sets(rule_sets) };
    let mut dp = Dataplane::load(&LoadOptions { trace: false, capacity })?;
    let mut enforcer = Enforcer::new(&mut dp, &capacity)?;
    let id_file = paths::map_id_file();
    if let Some(dir) = id_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&id_file, enforcer.sessions().ids()?)?;
    // Rules go in before the programs attach: there is no moment without them.
    let report = ApplyReport { compile_time, ..enforcer.apply_compiled(&cfg, &compiled)? };
    import_established(&mut dp, &mut enforcer, &here);
    let mut attachments = Vec::new();
    for name in &names {
        match Attachment::attach(&mut dp, name, opts.xdp_mode) {
            Ok(a) => attachments.push(a),
            Err(e) => {
                detach_all(&mut dp, attachments);
                return Err(e.into());
            }
        }
        paths::write_pid_file(name)?;
    }
    if !dp.features.coarse_clock {
        warn!("no bpf_ktime_get_coarse_ns (kernel before 5.11): sessions use bpf_ktime_get_ns");
    }
    for a in &attachments {
        info!("enforcing on {} (ingress XDP {}, egress TC {:?})", a.iface, a.xdp_mode, a.tc_hook);
    }
    info!(
        "session table: {} entries, {:.1} MiB",
        capacity.sessions,
        f64::from(capacity.sessions) * sessions::BYTES_PER_SESSION as f64 / (1024.0 * 1024.0)
    );
    info!(
        "applied {}: {} rule sets, {} rules, {} vectors, {} trie entries (compile {:.1} ms, write {:.1} ms)",
        opts.config.display(),
        report.rule_sets,
        report.rules,
        report.vectors,
        report.trie_entries,
        report.compile_time.as_secs_f64() * 1e3,
        report.write_time.as_secs_f64() * 1e3,
    );
    info!("control socket {}", socket.display());
    let result = runtime.block_on(serve::serve(opts, &dp, &mut enforcer, &names, (listener, (text, report.rules))));
    bound.remove();
    detach_all(&mut dp, attachments);
    for name in &names {
        let _ = std::fs::remove_file(paths::pid_file(name));
    }
    let _ = std::fs::remove_file(&id_file);
    result?;
    info!("stopped; detached from {}", names.join(", "));
    Ok(())
}

/// Enters the TCP connections already established on each interface as sessions where
/// the rules admit them (`dataplane::established`), so attaching does not cut the
/// session of whoever started the agent. Between applying the rules and attaching: the
/// programs then judge the connections with the rules in force, and no packet of theirs
/// meets the programs before their session exists. A failure only warns: enforcing
/// matters more than sparing the connections, which are then left to the rules.
fn import_established(dp: &mut Dataplane, enforcer: &mut Enforcer, here: &[(u32, &InterfaceBinding)]) {
    for (ifindex, binding) in here {
        match established::import_established(dp, enforcer.sessions(), *ifindex, &binding.name) {
            Ok(counts) => info!("{}: {counts}", binding.name),
            Err(e) => {
                warn!("{}: established TCP connections left to the rules: {:#}", binding.name, anyhow::Error::from(e))
            }
        }
    }
}

/// Removes the control socket this agent bound when it stops, also on an early error.
struct SocketGuard(PathBuf);

impl SocketGuard {
    fn remove(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.0);
            self.0 = PathBuf::new();
        }
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.remove();
    }
}

fn detach_all(dp: &mut Dataplane, attachments: Vec<Attachment>) {
    for a in attachments {
        let iface = a.iface.clone();
        if let Err(e) = a.detach(dp) {
            error!("detaching {iface}: {e:#}");
        }
    }
}
