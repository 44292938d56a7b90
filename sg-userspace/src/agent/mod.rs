//! `sgctl run`: enforce a rule file on the interfaces it names until stopped, serving the
//! control socket ([`api`]) through which `sgctl apply` and `sgctl confirm` change the
//! rules; reload the file on SIGHUP, or when it changes with `--watch` (all or nothing:
//! a file that fails validation changes nothing).
//!
//! What it does is logged through `tracing` (the binary sets the subscriber up); the
//! counter lines it was asked for (`--interval`, `--json`) are its output, on stdout.

pub mod api;
pub mod fleet;
pub mod live;
pub mod metrics;
pub mod observe;
mod serve;
pub mod state;

use std::path::PathBuf;

use anyhow::{Result, bail};
use tracing::{info, warn};

use crate::{
    dataplane::{
        attach::{self, XdpModeChoice},
        sessions,
    },
    paths,
    policy::config::{Config, InterfaceBinding},
};
use live::{Live, Start};

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
    /// The pin directory (default: [`paths::pin_dir`]).
    pub pin_dir: Option<PathBuf>,
    /// Switch to this build's programs even when the sessions cannot be carried over.
    pub replace: bool,
    pub events: EventOptions,
    /// Serve Prometheus metrics on this address (`GET /metrics`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Build the rules from the fleet's store instead of `config` (which is then empty).
    pub store: Option<fleet::StoreOptions>,
}

/// The verdict events: their rate limit per interface and hook, the ring, and where
/// they go besides `sgctl log`.
#[derive(Clone, Debug)]
pub struct EventOptions {
    /// Drop (and audit-drop) events a second; 0 turns them off, `u32::MAX` removes the limit.
    pub drop_rate: u32,
    /// New-session events a second; 0 (the default) turns them off.
    pub accept_rate: u32,
    /// Bucket depth, both kinds.
    pub burst: u32,
    /// Bytes of the ring (new generations only).
    pub ring_bytes: u32,
    /// Append every event as a JSON line to this file.
    pub log_file: Option<PathBuf>,
}

impl Default for EventOptions {
    fn default() -> Self {
        Self { drop_rate: 1000, accept_rate: 0, burst: 1000, ring_bytes: 1 << 20, log_file: None }
    }
}

/// The interfaces of `cfg` to enforce on here, with their ifindex.
pub(crate) fn targets<'c>(cfg: &'c Config, only: &[String]) -> Result<Vec<(u32, &'c InterfaceBinding)>> {
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

/// How long the agent's start waits for the store before it falls back to the rules it
/// last applied here.
const STORE_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The rule file to start with: the file given, or in fleet mode this host's rules
/// composed from the store; with the store unreachable, the rules this namespace's agent
/// last applied (so a restart during an outage carries on with them).
fn starting_rules(opts: &RunOptions, runtime: &tokio::runtime::Runtime) -> Result<(String, String)> {
    let Some(store) = &opts.store else {
        let text = std::fs::read_to_string(&opts.config)
            .map_err(|e| anyhow::anyhow!("{}: cannot read file: {e}", opts.config.display()))?;
        return Ok((opts.config.display().to_string(), text));
    };
    let read = runtime.block_on(async { tokio::time::timeout(STORE_START_TIMEOUT, fleet::initial(store)).await });
    let error = match read {
        Ok(Ok((composed, _))) => return Ok((composed.label, composed.text)),
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => format!("no answer within {} s", STORE_START_TIMEOUT.as_secs()),
    };
    match live::recorded_state(&paths::state_file()) {
        Some(state) if !state.config_text.is_empty() => {
            warn!("store {}: {error}; enforcing the rules last applied here ({})", store.url, state.config_path);
            Ok((state.config_path, state.config_text))
        }
        _ => bail!("store {}: {error}; and no rules were applied here before to carry on with", store.url),
    }
}

pub fn run(opts: &RunOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (path, text) = starting_rules(opts, &runtime)?;
    // Kept for every later apply: an edit of one rule is then read alone.
    let mut reader = crate::policy::config::Reader::default();
    let cfg =
        reader.read(&text, &path).map_err(|errors| anyhow::anyhow!("{errors}\n{path}: invalid, nothing applied"))?;
    // The socket first: a second agent in this namespace stops here, before touching
    // anything the first one runs.
    let socket = opts.socket.clone().unwrap_or_else(api::default_socket);
    let listener = {
        let _context = runtime.enter();
        serve::bind_socket(&socket)?
    };
    let mut bound = SocketGuard(socket.clone());
    let (mut live, start) = Live::start(opts, cfg, &path, &text)?;
    paths::write_pid_file_at(&paths::agent_pid_file())?;
    for name in live.names() {
        paths::write_pid_file(&name)?;
    }
    match &start {
        Start::Fresh => info!("loaded generation {} under {}", live.now.generation.id, live.pin_dir().display()),
        Start::Adopted { generation, applied: false } => {
            info!("adopted generation {generation} as it was: same programs, same rules, nothing rewritten")
        }
        Start::Adopted { generation, applied: true } => {
            info!("adopted generation {generation}, then applied the new rule file like any apply")
        }
        Start::Regenerated { from, to, why } => {
            info!("moved from generation {from} to {to} ({why})")
        }
    }
    if !live.now.features.coarse_clock {
        warn!("no bpf_ktime_get_coarse_ns (kernel before 5.11): sessions use bpf_ktime_get_ns");
    }
    for h in &live.now.held {
        info!("enforcing on {} (ingress XDP {}, egress TC {:?})", h.iface, h.xdp_mode, h.tc);
    }
    let capacity = live.now.capacity;
    let entries = capacity.sessions + capacity.opening_sessions();
    info!(
        "session tables: {} assured and {} opening entries, {:.1} MiB",
        capacity.sessions,
        capacity.opening_sessions(),
        f64::from(entries) * sessions::BYTES_PER_SESSION as f64 / (1024.0 * 1024.0)
    );
    // The event limits are in place before anyone is told the rules are.
    let observer = {
        let _in_runtime = runtime.enter();
        let mut observer = observe::Observer::new(&opts.events)?;
        observer.refresh(&mut live, &mut reader)?;
        observer
    };
    info!(
        "applied {path}: {} rules in force on {} (generation {}); control socket {}",
        live.now.rules,
        live.names().join(", "),
        live.now.generation.id,
        socket.display()
    );
    let result = runtime.block_on(serve::serve(opts, &mut live, listener, observer, reader, text));
    bound.remove();
    let saved = live.save();
    for name in live.names() {
        let _ = std::fs::remove_file(paths::pid_file(&name));
    }
    let _ = std::fs::remove_file(paths::agent_pid_file());
    result?;
    saved?;
    if live.pins_die_with_agent() {
        // The mount namespace of `ip netns exec` goes with this process, and its BPF
        // filesystem with it: nothing could adopt the pins. Remove everything now, so no
        // half of it lingers (a clsact filter outlives the BPF filesystem).
        let names = live.names().join(", ");
        let pin_dir = live.pin_dir().to_path_buf();
        drop(live);
        live::down(&paths::state_file(), &pin_dir)?;
        info!("stopped and detached from {names}: the pins were on this command's own BPF filesystem");
    } else {
        info!(
            "stopped; enforcement stays on {} (pinned under {}): `sgctl down` removes it",
            live.names().join(", "),
            live.pin_dir().display()
        );
    }
    Ok(())
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
