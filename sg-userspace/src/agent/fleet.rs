//! `sgctl run --store`: the agent's side of the fleet (docs/fleet.md).
//!
//! A task beside the agent's loop keeps a mirror of the keyspace: it reads a snapshot,
//! registers this host's addresses as members of their groups under a lease it keeps
//! alive, and watches from the snapshot's revision. After every change it composes this
//! host's rule file ([`fleet::compose`]) and, when the text differs from what was last
//! handed over, sends it to the loop, which applies it like a file reload (validated,
//! atomic, sessions kept, revocation as usual).
//!
//! When etcd is unreachable nothing is sent, so the rules last applied stay in force; the
//! task retries with backoff and starts over with a fresh snapshot (which also covers a
//! watch whose revision was compacted). Its state is in [`StoreStatus`] for `sgctl status`
//! and the metrics.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use etcd_client::{DeleteOptions, EventType, PutOptions, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    policy::fleet::{self, PREFIX, Snapshot},
    store::{Store, StoreUrl},
};

/// Where the agent's rules come from in fleet mode.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub url: StoreUrl,
    /// This host's name in the keyspace (its bindings, its members).
    pub host: String,
    /// Seconds of the lease under which this host's members are registered: how long
    /// after the agent dies its addresses leave their groups.
    pub lease_ttl: i64,
}

/// The store as the agent sees it, for `sgctl status` and the metrics.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StoreStatus {
    pub url: String,
    pub host: String,
    pub connected: bool,
    /// The last revision seen (read or watched).
    pub revision: i64,
    /// The revision whose rules were last handed to the agent.
    pub composed_revision: i64,
    /// Member keys this agent holds under its lease.
    pub members: usize,
    /// Why the last attempt or the last composed rule file failed.
    pub last_error: Option<String>,
    /// Connections made (1 after a clean start; more after outages).
    pub connects: u64,
}

/// A rule file composed from the store: its label (for messages) and text.
pub struct Composed {
    pub label: String,
    pub text: String,
}

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Reads the store once and composes this host's rule file, for the agent's start.
pub async fn initial(opts: &StoreOptions) -> Result<(Composed, i64)> {
    let mut store = Store::connect(&opts.url).await?;
    let read = store.read().await?;
    let text = fleet::compose(&read.snapshot, &opts.host)?;
    Ok((Composed { label: label(opts, read.revision), text }, read.revision))
}

fn label(opts: &StoreOptions, revision: i64) -> String {
    format!("{} (host {}, revision {revision})", opts.url, opts.host)
}

/// Runs the mirror until the agent drops the receiver. `applied` is the text the agent
/// started with.
pub async fn follow(
    opts: StoreOptions,
    applied: Option<String>,
    updates: mpsc::Sender<Composed>,
    status: Arc<Mutex<StoreStatus>>,
) {
    let mut last = applied;
    let mut backoff = FIRST_BACKOFF;
    {
        let mut s = status.lock().expect("not poisoned");
        s.url = opts.url.to_string();
        s.host = opts.host.clone();
    }
    loop {
        let outcome = session(&opts, &mut last, &updates, &status, &mut backoff).await;
        if updates.is_closed() {
            return;
        }
        let why = match outcome {
            Ok(()) => "the watch ended".to_string(),
            Err(e) => format!("{e:#}"),
        };
        let was_connected = {
            let mut s = status.lock().expect("not poisoned");
            let was = s.connected;
            s.connected = false;
            s.last_error = Some(why.clone());
            was
        };
        if was_connected {
            warn!("store {}: {why}; the rules last applied stay in force, reconnecting", opts.url);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: lease, snapshot, registration, then the watch until something fails.
async fn session(
    opts: &StoreOptions,
    last: &mut Option<String>,
    updates: &mpsc::Sender<Composed>,
    status: &Arc<Mutex<StoreStatus>>,
    backoff: &mut Duration,
) -> Result<()> {
    let mut store = Store::connect(&opts.url).await?;
    let lease = store.client().lease_grant(opts.lease_ttl, None).await.map_err(|e| store.error(e))?.id();
    let (mut keeper, mut kept) = store.client().lease_keep_alive(lease).await.map_err(|e| store.error(e))?;
    let read = store.read().await?;
    let mut mirror = read.snapshot;
    let mut revision = read.revision;
    *backoff = FIRST_BACKOFF;
    {
        let mut s = status.lock().expect("not poisoned");
        s.connected = true;
        s.revision = revision;
        s.connects += 1;
        s.last_error = None;
    }
    info!("store {}: connected at revision {revision} (lease {lease:x}, {} s)", opts.url, opts.lease_ttl);
    // Every member key is written again under this connection's lease: an earlier
    // agent's lease may still hold them and would take them along when it expires.
    let mut held: BTreeSet<String> = BTreeSet::new();
    register(&mut store, opts, &mirror, lease, &mut held, true).await?;
    offer(opts, &mirror, revision, last, updates, status).await;
    let watch_options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
    let mut watch = store.client().watch(PREFIX, Some(watch_options)).await.map_err(|e| store.error(e))?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64((opts.lease_ttl as f64 / 3.0).max(0.5)));
    loop {
        tokio::select! {
            _ = tick.tick() => keeper.keep_alive().await.map_err(|e| store.error(e))?,
            answer = kept.message() => {
                let answer = answer.map_err(|e| store.error(e))?.context("the lease's keep-alive stream ended")?;
                if answer.ttl() <= 0 {
                    bail!("lease {lease:x} expired");
                }
            }
            message = watch.message() => {
                let Some(message) = message.map_err(|e| store.error(e))? else { bail!("the watch stream ended") };
                if message.canceled() || message.compact_revision() > 0 {
                    bail!("the watch was cancelled ({}; compacted at {}): reading a fresh snapshot",
                        message.cancel_reason(), message.compact_revision());
                }
                for event in message.events() {
                    let Some(kv) = event.kv() else { continue };
                    let Some(relative) = kv.key_str().ok().and_then(|k| k.strip_prefix(PREFIX)) else { continue };
                    match event.event_type() {
                        EventType::Put => {
                            mirror.insert(relative.to_string(), kv.value_str().unwrap_or_default().to_string());
                        }
                        EventType::Delete => {
                            mirror.remove(relative);
                        }
                    }
                    revision = revision.max(kv.mod_revision());
                }
                if let Some(header) = message.header() {
                    revision = revision.max(header.revision());
                }
                status.lock().expect("not poisoned").revision = revision;
                if message.events().is_empty() {
                    continue;
                }
                register(&mut store, opts, &mirror, lease, &mut held, false).await?;
                offer(opts, &mirror, revision, last, updates, status).await;
            }
            () = updates.closed() => return Ok(()),
        }
    }
}

/// Brings this host's member keys in line with its bindings: puts the missing ones under
/// `lease` (all of them when `all`), deletes those no binding lists any more.
async fn register(
    store: &mut Store,
    opts: &StoreOptions,
    mirror: &Snapshot,
    lease: i64,
    held: &mut BTreeSet<String>,
    all: bool,
) -> Result<()> {
    let wanted = match fleet::own_members(mirror, &opts.host) {
        Ok(wanted) => wanted,
        Err(e) => {
            warn!("store {}: {e}; members left as they are", opts.url);
            return Ok(());
        }
    };
    let present = fleet::registered_by(mirror, &opts.host);
    for key in &wanted {
        if all || !present.contains(key) || !held.contains(key) {
            let put = PutOptions::new().with_lease(lease);
            store.client().put(format!("{PREFIX}{key}"), "", Some(put)).await.map_err(|e| store.error(e))?;
            held.insert(key.clone());
        }
    }
    for key in present.difference(&wanted) {
        store.client().delete(format!("{PREFIX}{key}"), None::<DeleteOptions>).await.map_err(|e| store.error(e))?;
        held.remove(key);
    }
    held.retain(|k| wanted.contains(k));
    Ok(())
}

/// Composes this host's rules and hands them over when they changed.
async fn offer(
    opts: &StoreOptions,
    mirror: &Snapshot,
    revision: i64,
    last: &mut Option<String>,
    updates: &mpsc::Sender<Composed>,
    status: &Arc<Mutex<StoreStatus>>,
) {
    let members = fleet::registered_by(mirror, &opts.host).len();
    status.lock().expect("not poisoned").members = members;
    match fleet::compose(mirror, &opts.host) {
        Ok(text) if last.as_deref() == Some(text.as_str()) => {}
        Ok(text) => {
            *last = Some(text.clone());
            status.lock().expect("not poisoned").composed_revision = revision;
            let _ = updates.send(Composed { label: label(opts, revision), text }).await;
        }
        Err(e) => {
            warn!("store {} at revision {revision}: {e}; the rules last applied stay in force", opts.url);
            status.lock().expect("not poisoned").last_error = Some(e.to_string());
        }
    }
}
