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
use etcd_client::{DeleteOptions, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    policy::fleet::{self, Interest, PREFIX, Snapshot},
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
    /// The store revision it was composed at.
    pub revision: i64,
}

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// At most this many watch messages are folded into one compose.
const WATCH_BATCH: usize = 256;

/// Reads the store once and composes this host's rule file, for the agent's start.
pub async fn initial(opts: &StoreOptions) -> Result<(Composed, i64)> {
    let mut store = Store::connect(&opts.url).await?;
    let read = store.read().await?;
    let text = fleet::compose(&read.snapshot, &opts.host)?;
    Ok((Composed { label: label(opts, read.revision), text, revision: read.revision }, read.revision))
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
    // The mirror and its revision outlive a connection: after an outage the watch resumes
    // from where it was, and only a compacted revision costs a new snapshot.
    let mut kept: Option<(Snapshot, i64)> = None;
    {
        let mut s = status.lock().expect("not poisoned");
        s.url = opts.url.to_string();
        s.host = opts.host.clone();
    }
    loop {
        let outcome = session(&opts, &mut kept, &mut last, &updates, &status, &mut backoff).await;
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

/// The watch cannot go on from its revision: the next connection reads a snapshot.
#[derive(Debug, thiserror::Error)]
#[error("the watch was cancelled ({reason}; compacted at {compacted}): reading a fresh snapshot")]
struct Resync {
    reason: String,
    compacted: i64,
}

/// One connection: lease, snapshot (unless resuming), registration, then the watch until
/// something fails.
async fn session(
    opts: &StoreOptions,
    kept: &mut Option<(Snapshot, i64)>,
    last: &mut Option<String>,
    updates: &mpsc::Sender<Composed>,
    status: &Arc<Mutex<StoreStatus>>,
    backoff: &mut Duration,
) -> Result<()> {
    let mut store = Store::connect(&opts.url).await?;
    let lease = store.client().lease_grant(opts.lease_ttl, None).await.map_err(|e| store.error(e))?.id();
    let resumed = kept.is_some();
    if kept.is_none() {
        let read = store.read().await?;
        *kept = Some((read.snapshot, read.revision));
    }
    let (mirror, revision) = kept.as_mut().expect("set above");
    let outcome =
        follow_connected(opts, &mut store, lease, resumed, mirror, revision, last, updates, status, backoff).await;
    if outcome.as_ref().err().is_some_and(|e| e.is::<Resync>()) {
        *kept = None;
    }
    outcome
}

#[expect(clippy::too_many_arguments, reason = "one connection's state, passed down once")]
async fn follow_connected(
    opts: &StoreOptions,
    store: &mut Store,
    lease: i64,
    resumed: bool,
    mirror: &mut Snapshot,
    revision: &mut i64,
    last: &mut Option<String>,
    updates: &mpsc::Sender<Composed>,
    status: &Arc<Mutex<StoreStatus>>,
    backoff: &mut Duration,
) -> Result<()> {
    let (mut keeper, mut renewals) = store.client().lease_keep_alive(lease).await.map_err(|e| store.error(e))?;
    *backoff = FIRST_BACKOFF;
    {
        let mut s = status.lock().expect("not poisoned");
        s.connected = true;
        s.revision = *revision;
        s.connects += 1;
        s.last_error = None;
    }
    let how = if resumed { "resuming the watch after" } else { "snapshot at" };
    info!("store {}: connected, {how} revision {revision} (lease {lease:x}, {} s)", opts.url, opts.lease_ttl);
    // Every member key is written again under this connection's lease: an earlier
    // agent's lease may still hold them and would take them along when it expires.
    let mut held: BTreeSet<String> = BTreeSet::new();
    register(store, opts, mirror, lease, &mut held).await?;
    let mut interest = offer(opts, mirror, *revision, last, updates, status).await;
    let watch_options = WatchOptions::new().with_prefix().with_start_revision(*revision + 1);
    let mut watch = store.client().watch(PREFIX, Some(watch_options)).await.map_err(|e| store.error(e))?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64((opts.lease_ttl as f64 / 3.0).max(0.5)));
    loop {
        tokio::select! {
            _ = tick.tick() => keeper.keep_alive().await.map_err(|e| store.error(e))?,
            answer = renewals.message() => {
                let answer = answer.map_err(|e| store.error(e))?.context("the lease's keep-alive stream ended")?;
                if answer.ttl() <= 0 {
                    bail!("lease {lease:x} expired");
                }
            }
            message = watch.message() => {
                let Some(first) = message.map_err(|e| store.error(e))? else { bail!("the watch stream ended") };
                // What else has arrived is taken in the same round: a burst of changes
                // (many hosts registering at once) costs one compose, not one each.
                let mut batch = vec![first];
                while batch.len() < WATCH_BATCH {
                    // A zero timeout polls once: only what is already there.
                    match tokio::time::timeout(Duration::ZERO, watch.message()).await {
                        Ok(Ok(Some(more))) => batch.push(more),
                        Ok(Ok(None)) => bail!("the watch stream ended"),
                        Ok(Err(e)) => return Err(store.error(e).into()),
                        Err(_) => break,
                    }
                }
                let relevant = fold(&batch, mirror, revision, interest.as_ref())?;
                status.lock().expect("not poisoned").revision = *revision;
                if !relevant {
                    continue;
                }
                register(store, opts, mirror, lease, &mut held).await?;
                interest = offer(opts, mirror, *revision, last, updates, status).await;
            }
            () = updates.closed() => return Ok(()),
        }
    }
}

/// Applies watched changes to the mirror and the revision; says whether any of them can
/// change this host's rules (any at all while nothing is known of what they depend on).
fn fold(
    batch: &[etcd_client::WatchResponse],
    mirror: &mut Snapshot,
    revision: &mut i64,
    interest: Option<&Interest>,
) -> Result<bool> {
    let mut relevant = false;
    for message in batch {
        if message.canceled() || message.compact_revision() > 0 {
            let reason = message.cancel_reason().to_string();
            return Err(Resync { reason, compacted: message.compact_revision() }.into());
        }
        for event in message.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(relative) = kv.key_str().ok().and_then(|k| k.strip_prefix(PREFIX)) else { continue };
            // Most changes of a large fleet concern other hosts: only those that can
            // change this host's rules (or its registrations) are worth a compose.
            relevant |= interest.is_none_or(|i| i.touches(relative));
            match event.event_type() {
                EventType::Put => {
                    mirror.insert(relative.to_string(), kv.value_str().unwrap_or_default().to_string());
                }
                EventType::Delete => {
                    mirror.remove(relative);
                }
            }
            *revision = (*revision).max(kv.mod_revision());
        }
        if let Some(header) = message.header() {
            *revision = (*revision).max(header.revision());
        }
    }
    Ok(relevant)
}

/// Brings this host's member keys in line with its bindings: puts those not yet held
/// under `lease`, deletes those no binding lists any more.
async fn register(
    store: &mut Store,
    opts: &StoreOptions,
    mirror: &Snapshot,
    lease: i64,
    held: &mut BTreeSet<String>,
) -> Result<()> {
    let wanted = match fleet::own_members(mirror, &opts.host) {
        Ok(wanted) => wanted,
        Err(e) => {
            warn!("store {}: {e}; members left as they are", opts.url);
            return Ok(());
        }
    };
    let present = fleet::registered_by(mirror, &opts.host);
    // One transaction, so the other hosts see this host's members change at one revision
    // and compose once.
    let mut ops = Vec::new();
    for key in &wanted {
        // Missing from the store, or there under another (earlier) lease: `held` starts
        // empty with each connection's lease, so its first call writes every key.
        if !(present.contains(key) && held.contains(key)) {
            ops.push(TxnOp::put(format!("{PREFIX}{key}"), "", Some(PutOptions::new().with_lease(lease))));
        }
    }
    for key in present.difference(&wanted) {
        ops.push(TxnOp::delete(format!("{PREFIX}{key}"), None::<DeleteOptions>));
    }
    if !ops.is_empty() {
        store.client().txn(Txn::new().and_then(ops)).await.map_err(|e| store.error(e))?;
    }
    held.extend(wanted.iter().cloned());
    held.retain(|k| wanted.contains(k));
    Ok(())
}

/// Composes this host's rules and hands them over when they changed; returns what they
/// depend on (`None` after a failure: then every change is worth another try).
async fn offer(
    opts: &StoreOptions,
    mirror: &Snapshot,
    revision: i64,
    last: &mut Option<String>,
    updates: &mpsc::Sender<Composed>,
    status: &Arc<Mutex<StoreStatus>>,
) -> Option<Interest> {
    let members = fleet::registered_by(mirror, &opts.host).len();
    status.lock().expect("not poisoned").members = members;
    match fleet::compose_with_interest(mirror, &opts.host) {
        Ok((text, interest)) if last.as_deref() == Some(text.as_str()) => Some(interest),
        Ok((text, interest)) => {
            *last = Some(text.clone());
            status.lock().expect("not poisoned").composed_revision = revision;
            let _ = updates.send(Composed { label: label(opts, revision), text, revision }).await;
            Some(interest)
        }
        Err(e) => {
            warn!("store {} at revision {revision}: {e}; the rules last applied stay in force", opts.url);
            status.lock().expect("not poisoned").last_error = Some(e.to_string());
            None
        }
    }
}
