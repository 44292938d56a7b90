//! `sgctl run --config FILE` (or `--store URL --host NAME`): hand over to the agent.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use sgctl::{
    agent::{self, EventOptions, RunOptions, fleet::StoreOptions},
    store::StoreUrl,
};

use super::args::AttachOptions;

#[derive(clap::Args)]
pub struct Args {
    /// The rule file.
    #[arg(long, required_unless_present = "store", conflicts_with = "store")]
    config: Option<PathBuf>,
    /// Build the rules from a fleet's store instead (etcd://HOST:PORT[,...]): this
    /// host's bindings, their groups, the members of the groups their rules name (as
    /// every host registers them) and the prefix lists; watched, and applied on every
    /// change.
    #[arg(long, value_name = "URL", requires = "host", conflicts_with = "watch")]
    store: Option<StoreUrl>,
    /// This host's name in the store (with --store).
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// Seconds of the lease under which this host's members are registered (with
    /// --store): how long after this agent dies its addresses leave their groups.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i64).range(2..=3600))]
    lease_ttl: i64,
    /// Only this interface of the file (repeatable).
    #[arg(long = "iface")]
    only: Vec<String>,
    /// Apply the rule file again whenever it changes (debounced), as SIGHUP does.
    #[arg(long)]
    watch: bool,
    /// The control socket (default: /run/sgctl/<netns>/control.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Where the programs, maps and links are pinned (default:
    /// /sys/fs/bpf/sgctl/<netns>/).
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Take over pinned programs of another build even when their sessions cannot be
    /// carried over (connections then depend on the rules alone).
    #[arg(long)]
    replace: bool,
    /// Drop (and audit-drop) events a second per interface and direction; 0 turns them
    /// off, "unlimited" removes the limit.
    #[arg(long, default_value = "1000", value_parser = parse_rate)]
    drop_events: u32,
    /// New-session events a second per interface and direction (0: none).
    #[arg(long, default_value = "0", value_parser = parse_rate)]
    accept_events: u32,
    /// How many events may come at once before the rate applies.
    #[arg(long, default_value_t = 1000)]
    event_burst: u32,
    /// KiB of the verdict-event ring (a power of two; new programs only).
    #[arg(long, default_value_t = 1024)]
    event_ring_kib: u32,
    /// Also append every verdict event to this file, one JSON object a line.
    #[arg(long)]
    event_log: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464), at /metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    options: AttachOptions,
}

fn parse_rate(text: &str) -> Result<u32, String> {
    match text {
        "unlimited" => Ok(u32::MAX),
        n => n.parse().map_err(|_| format!("{n:?}: a number of events a second, or \"unlimited\"")),
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let Args {
        config,
        store,
        host,
        lease_ttl,
        only,
        watch,
        socket,
        pin_dir,
        replace,
        drop_events,
        accept_events,
        event_burst,
        event_ring_kib,
        event_log,
        metrics,
        options: AttachOptions { xdp_mode, interval, json },
    } = args;
    let events = EventOptions {
        drop_rate: drop_events,
        accept_rate: accept_events,
        burst: event_burst,
        ring_bytes: event_ring_kib.saturating_mul(1024),
        log_file: event_log,
    };
    let store = match (store, host) {
        (Some(url), Some(host)) => {
            if !sgctl::policy::fleet::is_valid_host(&host) {
                anyhow::bail!("--host {host:?}: not a valid host name (non-empty, no '/' or whitespace)");
            }
            Some(StoreOptions { url, host, lease_ttl })
        }
        _ => None,
    };
    agent::run(&RunOptions {
        config: config.unwrap_or_default(),
        store,
        only,
        xdp_mode,
        interval,
        json,
        watch,
        socket,
        pin_dir,
        replace,
        events,
        metrics,
    })?;
    Ok(ExitCode::SUCCESS)
}
