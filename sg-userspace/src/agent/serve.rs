//! The running agent: signals (SIGINT/SIGTERM stop, SIGHUP reloads the rule file), the
//! control socket ([`super::api`]: apply, confirm, status), the rollback of an apply
//! nobody confirmed in time, an optional watch of the rule file, session garbage
//! collection and counter lines, until stopped.
//!
//! Every way of changing the rules goes through [`Agent::apply_text`]: validated first
//! (a file with any error changes nothing), then compiled and switched in atomically by
//! the enforcer.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{error, info, warn};

use super::{
    RunOptions, api,
    api::{API_VERSION, ApplyView, MAX_REQUEST_BYTES, Op, Reply, Request, StatusView},
    fleet::{self, StoreStatus},
    live::Live,
    metrics::{self, AgentFigures},
    observe::Observer,
};
use crate::{
    control::gc::gc_period,
    dataplane::counters::{counter_line, counters_of},
    policy::config::{ReadKind, Reader},
};

/// How long the rule file must stay unchanged before `--watch` applies it.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);
/// How often `--watch` looks at the rule file.
const WATCH_PERIOD: Duration = Duration::from_millis(200);
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The rules an unconfirmed apply replaced, and when they come back.
struct Rollback {
    deadline: Instant,
    path: String,
    text: String,
}

/// The agent's state between events.
struct Agent<'a> {
    opts: &'a RunOptions,
    live: &'a mut Live,
    /// The rule files' reader, which reads an edit of one rule alone.
    reader: Reader,
    rollback: Option<Rollback>,
    /// The fleet store's state, in fleet mode.
    store: Option<Arc<Mutex<StoreStatus>>>,
}

/// A rule file that failed validation, or an apply the enforcer refused.
enum ApplyError {
    Invalid(Vec<String>),
    Refused(String),
}

impl ApplyError {
    fn reply(self) -> Reply {
        match self {
            ApplyError::Invalid(errors) => Reply {
                errors,
                ..Reply::failed("invalid rule file, nothing applied; the previous rules stay in force")
            },
            ApplyError::Refused(e) => Reply::failed(format!("{e}; the previous rules stay in force")),
        }
    }

    fn describe(&self) -> String {
        match self {
            ApplyError::Invalid(errors) => format!("{}\ninvalid, nothing applied", errors.join("\n")),
            ApplyError::Refused(e) => e.clone(),
        }
    }
}

impl Agent<'_> {
    /// Validates `text` and applies it: the rules, and the interfaces it names.
    fn apply_text(&mut self, path: &str, text: &str) -> Result<ApplyView, ApplyError> {
        let parse_started = std::time::Instant::now();
        let cfg = self
            .reader
            .read(text, path)
            .map_err(|errors| ApplyError::Invalid(errors.errors.iter().map(ToString::to_string).collect()))?;
        let parse_time = parse_started.elapsed();
        let rules_before = self.live.now.rules;
        let applied = self.live.apply(cfg, path, text).map_err(|e| ApplyError::Refused(one_line(&e)))?;
        let report = &applied.report;
        let view = ApplyView {
            config: path.to_string(),
            generation: self.generation(),
            interfaces: self.live.names(),
            rules_before,
            rules_after: report.rules,
            rule_sets: report.rule_sets,
            unchanged: report.unchanged,
            parse_ms: parse_time.as_secs_f64() * 1e3,
            read: self.reader.last_kind().map(ReadKind::describe).unwrap_or_default().to_string(),
            compile_ms: report.compile_time.as_secs_f64() * 1e3,
            switch_ms: report.write_time.as_secs_f64() * 1e3,
            entries_written: report.entries_written,
            retire_ms: applied.retire.as_secs_f64() * 1e3,
            confirm_within_s: None,
            programs_generation: self.live.now.generation.id,
            regenerated: applied.regenerated.is_some(),
            attached: applied.attached.clone(),
            detached: applied.detached.clone(),
        };
        info!(
            "applied {path}: generation {}, {} rules (was {}; {} of {} rule sets unchanged; read {:.1} ms ({}), \
             compile {:.1} ms, write and switch {:.1} ms ({} entries written); old rules removed in {:.1} ms after \
             the switch)",
            view.generation,
            view.rules_after,
            view.rules_before,
            view.unchanged,
            view.rule_sets,
            view.parse_ms,
            view.read,
            view.compile_ms,
            view.switch_ms,
            view.entries_written,
            view.retire_ms
        );
        for name in &applied.attached {
            info!("attached to {name}");
            let _ = crate::paths::write_pid_file(name);
        }
        for name in &applied.detached {
            info!("detached from {name}");
            let _ = std::fs::remove_file(crate::paths::pid_file(name));
        }
        Ok(view)
    }

    /// The rule-set generation of the first interface.
    fn generation(&self) -> u32 {
        let first = self.live.now.held.first().map(|h| h.ifindex);
        first.and_then(|i| self.live.now.enforcer.generation(i)).unwrap_or(0)
    }

    /// Re-reads the rule file given to `sgctl run` and applies it (SIGHUP, `--watch`).
    fn reload(&mut self, why: &str) {
        if self.opts.store.is_some() {
            info!("{why}: the rules come from the store, which is watched; nothing to reload");
            return;
        }
        let path = self.opts.config.display().to_string();
        let outcome = std::fs::read_to_string(&self.opts.config)
            .map_err(|e| ApplyError::Refused(format!("reading {path}: {e}")))
            .and_then(|text| self.apply_text(&path, &text));
        match outcome {
            Ok(_) => {
                if self.rollback.take().is_some() {
                    info!("the unconfirmed apply is superseded by the {why}; nothing to roll back");
                }
            }
            Err(e) => error!("{why} rejected, the previous rules stay in force: {}", e.describe()),
        }
    }

    fn handle(&mut self, request: Request) -> Reply {
        if request.version != API_VERSION {
            return Reply::failed(format!(
                "API version {} is not spoken here (this agent: {API_VERSION})",
                request.version
            ));
        }
        match request.op {
            Op::Apply { .. } if self.opts.store.is_some() => Reply::failed(format!(
                "this agent's rules come from the store ({}); change them with `sgctl fleet push`",
                self.opts.store.as_ref().map(|s| s.url.to_string()).unwrap_or_default()
            )),
            Op::Apply { path, text, confirm_s } => {
                let (before_path, before_text) = (self.live.config_path.clone(), self.live.config_text.clone());
                match self.apply_text(&path, &text) {
                    Err(e) => e.reply(),
                    Ok(mut view) => {
                        match confirm_s.filter(|s| *s > 0.0) {
                            Some(seconds) => {
                                // An earlier unconfirmed apply keeps its own rollback target:
                                // the rules that were in force before anything unconfirmed.
                                let rollback = self.rollback.take().unwrap_or(Rollback {
                                    deadline: Instant::now(),
                                    path: before_path,
                                    text: before_text,
                                });
                                let deadline = Instant::now() + Duration::from_secs_f64(seconds.min(86_400.0));
                                self.rollback = Some(Rollback { deadline, ..rollback });
                                view.confirm_within_s = Some(seconds);
                                info!(
                                    "{path} must be confirmed within {seconds} s (`sgctl confirm`), or it is rolled back"
                                );
                            }
                            None => self.rollback = None,
                        }
                        Reply { applied: Some(view), ..Reply::ok() }
                    }
                }
            }
            Op::Confirm => match self.rollback.take() {
                Some(_) => {
                    info!("confirmed {}: its rules stay", self.live.config_path);
                    Reply { message: Some(format!("confirmed {}", self.live.config_path)), ..Reply::ok() }
                }
                None => Reply::failed("nothing awaits confirmation"),
            },
            Op::Status => Reply { status: Some(self.status()), ..Reply::ok() },
            Op::Stats | Op::Log { .. } => Reply::failed("handled by the observer"),
        }
    }

    fn status(&mut self) -> StatusView {
        let maps = self.live.fills().inspect_err(|e| warn!("reading how full the maps are: {e:#}")).ok();
        let now = &self.live.now;
        StatusView {
            config: self.live.config_path.clone(),
            generation: self.generation(),
            interfaces: self.live.names(),
            rules: now.rules,
            confirm_within_s: self
                .rollback
                .as_ref()
                .map(|r| r.deadline.saturating_duration_since(Instant::now()).as_secs_f64()),
            programs_generation: now.generation.id,
            pin_dir: self.live.pin_dir().display().to_string(),
            object: now.object.clone(),
            held: now
                .held
                .iter()
                .map(|h| api::HeldView {
                    iface: h.iface.clone(),
                    ifindex: h.ifindex,
                    xdp_mode: h.xdp_mode.clone(),
                    tc: format!("{:?}", h.tc),
                })
                .collect(),
            session_capacity: now.capacity.sessions,
            vector_capacity: now.capacity.vectors,
            uptime_s: self.live.started.elapsed().as_secs_f64(),
            maps,
            fallbacks: fallbacks(&now.features),
            store: self.store.as_ref().map(|s| s.lock().expect("not poisoned").clone()),
        }
    }

    /// The confirmation window ran out: back to the rules before the unconfirmed apply.
    fn roll_back(&mut self) {
        let Some(Rollback { path, text, .. }) = self.rollback.take() else { return };
        warn!("no `sgctl confirm` in time: rolling back to the rules of {path}");
        if let Err(e) = self.apply_text(&path, &text) {
            error!("rollback failed, the unconfirmed rules stay in force: {}", e.describe());
        }
    }
}

/// An error and its causes on one line, as `{:#}` writes them, without a cause whose
/// text the one before already ends with: an error that prints its source inside its
/// own message and also returns it as `source()` (aya's `map error: {0}` around
/// `failed to create map X`) would otherwise say it twice.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.last().is_some_and(|last| last.ends_with(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// What `sgctl status` lists under fallbacks.
fn fallbacks(features: &crate::dataplane::object::KernelFeatures) -> Vec<String> {
    let mut taken = Vec::new();
    if !features.coarse_clock {
        taken.push("sessions' clock: bpf_ktime_get_ns (no bpf_ktime_get_coarse_ns)".to_string());
    }
    if crate::dataplane::batch::per_element_used() {
        taken.push("map writes: one syscall per element where batches are missing".to_string());
    }
    if crate::dataplane::object::fallbacks_forced() {
        taken.push("SGCTL_FALLBACKS=1: every fallback forced".to_string());
    }
    taken
}

/// Binds the control socket: root's alone (mode 0600), replacing a stale one.
pub(super) fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another sgctl agent serves {}", path.display());
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding the control socket {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Reads one request (bounded in size and time) from a root client.
async fn read_request(stream: &mut UnixStream) -> Result<Request, Reply> {
    let uid = stream.peer_cred().map_err(|e| Reply::failed(format!("peer credentials: {e}")))?.uid();
    if uid != 0 {
        return Err(Reply::failed(format!("permission denied: the control socket is root's (uid {uid})")));
    }
    let mut line = Vec::new();
    let limit = MAX_REQUEST_BYTES as u64 + 1;
    let mut reader = BufReader::new(&mut *stream).take(limit);
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => return Err(Reply::failed("no complete request within 5 s")),
        Ok(Err(e)) => return Err(Reply::failed(format!("reading the request: {e}"))),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST_BYTES {
        return Err(Reply::failed(format!("request larger than {MAX_REQUEST_BYTES} bytes")));
    }
    serde_json::from_slice(&line).map_err(|e| Reply::failed(format!("malformed request: {e}")))
}

async fn write_reply(stream: &mut UnixStream, reply: &Reply) {
    let mut text = serde_json::to_vec(reply).unwrap_or_else(|_| b"{}".to_vec());
    text.push(b'\n');
    let _ = stream.write_all(&text).await;
}

/// Bytes of event lines a follower is sent in one write at most.
const FOLLOW_BATCH_BYTES: usize = 256 * 1024;

/// Appends what a follower's subscription yielded to `batch`: an event line, or a
/// `{"missed":N}` line when it fell behind by N events. False when nothing more is
/// queued (a `try_recv`) or the subscription ended.
fn follow_line<E: FollowError>(received: Result<std::sync::Arc<str>, E>, batch: &mut String) -> bool {
    match received {
        Ok(line) => batch.push_str(&line),
        Err(e) => match e.missed() {
            Some(n) => batch.push_str(&format!("{{\"missed\":{n}}}")),
            None => return false,
        },
    }
    batch.push('\n');
    true
}

/// The two receive errors of a broadcast subscription, alike for [`follow_line`].
trait FollowError {
    /// Events missed by a follower that fell behind; `None` for any other error.
    fn missed(&self) -> Option<u64>;
}

impl FollowError for tokio::sync::broadcast::error::RecvError {
    fn missed(&self) -> Option<u64> {
        match self {
            Self::Lagged(n) => Some(*n),
            Self::Closed => None,
        }
    }
}

impl FollowError for tokio::sync::broadcast::error::TryRecvError {
    fn missed(&self) -> Option<u64> {
        match self {
            Self::Lagged(n) => Some(*n),
            Self::Empty | Self::Closed => None,
        }
    }
}

async fn write_line(stream: &mut UnixStream, line: &str) -> std::io::Result<()> {
    stream.write_all(line.as_bytes()).await?;
    stream.write_all(b"\n").await
}

/// After the rules may have changed: the observer names events with the rules in force.
fn refresh(observer: &mut Observer, live: &mut Live, reader: &mut Reader) {
    if let Err(e) = observer.refresh(live, reader) {
        warn!("the verdict events: {e:#}");
    }
}

/// The rule file's identity for `--watch`: modification time and length.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Waits for events until SIGINT/SIGTERM.
pub(super) async fn serve(
    opts: &RunOptions,
    live: &mut Live,
    listener: UnixListener,
    mut observer: Observer,
    reader: Reader,
    applied_text: String,
) -> Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let period = Duration::from_secs(opts.interval.max(1));
    let mut gc = tokio::time::interval(gc_period(live.now.enforcer.timeouts()));
    let mut watch = tokio::time::interval(WATCH_PERIOD);
    // In fleet mode, a task follows the store and hands over each new rule file.
    let (mut from_store, store) = match &opts.store {
        Some(store_opts) => {
            let (tx, rx) = mpsc::channel(4);
            let status = Arc::new(Mutex::new(StoreStatus::default()));
            tokio::spawn(fleet::follow(store_opts.clone(), Some(applied_text), tx, status.clone()));
            (Some(rx), Some(status))
        }
        None => (None, None),
    };
    let mut agent = Agent { opts, live, reader, rollback: None, store };
    let metrics_listener = match opts.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {addr}"))?;
            info!("metrics on http://{addr}/metrics");
            Some(listener)
        }
        None => None,
    };
    let mut figures = AgentFigures::default();
    // Keeps each rule's "last moved" time current for `sgctl stats --unused --since`.
    let mut usage = tokio::time::interval(Duration::from_secs(60));
    let config: PathBuf = opts.config.clone();
    let mut applied_stamp = stamp(&config);
    // A change seen by `--watch`, and since when the file has looked like this.
    let mut pending: Option<((SystemTime, u64), Instant)> = None;
    loop {
        let rollback_at = agent.rollback.as_ref().map(|r| tokio::time::Instant::from_std(r.deadline));
        tokio::select! {
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
            _ = sighup.recv() => {
                agent.reload("reload on SIGHUP");
                refresh(&mut observer, agent.live, &mut agent.reader);
                applied_stamp = stamp(&config);
                gc = tokio::time::interval(gc_period(agent.live.now.enforcer.timeouts()));
            }
            accepted = listener.accept() => {
                let Ok((mut stream, _)) = accepted else { continue };
                let reply = match read_request(&mut stream).await {
                    Ok(Request { op: Op::Stats, version: API_VERSION }) => match observer.stats(agent.live) {
                        Ok(stats) => Reply { stats: Some(stats), ..Reply::ok() },
                        Err(e) => Reply::failed(format!("reading the counters: {e:#}")),
                    },
                    Ok(Request { op: Op::Log { follow }, version: API_VERSION }) => {
                        observer.drain();
                        let (recent, mut rx) = observer.subscribe();
                        tokio::spawn(async move {
                            write_reply(&mut stream, &Reply::ok()).await;
                            for line in recent {
                                if write_line(&mut stream, &line).await.is_err() {
                                    return;
                                }
                            }
                            if !follow {
                                return;
                            }
                            let mut batch = String::new();
                            loop {
                                let first = rx.recv().await;
                                if !follow_line(first, &mut batch) {
                                    return;
                                }
                                // Whatever else is queued goes in the same write: one
                                // syscall a batch, not one a line, at 200k events/s.
                                while batch.len() < FOLLOW_BATCH_BYTES && follow_line(rx.try_recv(), &mut batch) {}
                                if stream.write_all(batch.as_bytes()).await.is_err() {
                                    return;
                                }
                                batch.clear();
                            }
                        });
                        continue;
                    }
                    Ok(request) => {
                        let reply = agent.handle(request);
                        if let Some(view) = &reply.applied {
                            figures.applies += 1;
                            figures.last_apply_s = view.duration_s();
                        }
                        refresh(&mut observer, agent.live, &mut agent.reader);
                        reply
                    }
                    Err(reply) => reply,
                };
                write_reply(&mut stream, &reply).await;
                gc = tokio::time::interval(gc_period(agent.live.now.enforcer.timeouts()));
            }
            _ = tokio::time::sleep_until(rollback_at.unwrap_or_else(tokio::time::Instant::now)), if rollback_at.is_some() => {
                agent.roll_back();
                refresh(&mut observer, agent.live, &mut agent.reader);
            }
            _ = watch.tick(), if opts.watch => {
                let now = stamp(&config);
                match (now, pending) {
                    (Some(s), _) if Some(s) == applied_stamp => pending = None,
                    (Some(s), Some((seen, since))) if s == seen => {
                        if since.elapsed() >= WATCH_DEBOUNCE {
                            pending = None;
                            applied_stamp = Some(s);
                            agent.reload("change of the rule file");
                            refresh(&mut observer, agent.live, &mut agent.reader);
                        }
                    }
                    (Some(s), _) => pending = Some((s, Instant::now())),
                    (None, _) => pending = None,
                }
            }
            composed = async { from_store.as_mut().expect("guarded").recv().await }, if from_store.is_some() => {
                let Some(composed) = composed else { from_store = None; continue };
                match agent.apply_text(&composed.label, &composed.text) {
                    Ok(view) => {
                        figures.applies += 1;
                        figures.last_apply_s = view.duration_s();
                        agent.rollback = None;
                    }
                    Err(e) => {
                        let why = e.describe();
                        error!("rules from {} rejected, the previous rules stay in force: {why}", composed.label);
                        if let Some(status) = &agent.store {
                            status.lock().expect("not poisoned").last_error = Some(why);
                        }
                    }
                }
                refresh(&mut observer, agent.live, &mut agent.reader);
                gc = tokio::time::interval(gc_period(agent.live.now.enforcer.timeouts()));
            }
            _ = gc.tick() => {
                if let Err(e) = agent.live.now.enforcer.collect_garbage() {
                    error!("session garbage collection: {e:#}");
                }
            }
            _ = observer.readable() => observer.drain_batch(),
            scraped = async { metrics_listener.as_ref().expect("guarded").accept().await }, if metrics_listener.is_some() => {
                let Ok((stream, _)) = scraped else { continue };
                let now = &agent.live.now;
                figures.rules = now.rules as u64;
                figures.session_capacity = u64::from(now.capacity.sessions);
                figures.vector_capacity = u64::from(now.capacity.vectors);
                figures.programs_generation = u64::from(now.generation.id);
                figures.uptime_s = agent.live.started.elapsed().as_secs_f64();
                figures.store = agent.store.as_ref().map(|s| s.lock().expect("not poisoned").clone());
                figures.maps = agent.live.fills().inspect_err(|e| warn!("reading how full the maps are: {e:#}")).ok();
                let body = match observer.stats(agent.live) {
                    Ok(view) => metrics::render(&view, &figures),
                    Err(e) => {
                        warn!("reading the counters for a scrape: {e:#}");
                        metrics::render(&Default::default(), &figures)
                    }
                };
                tokio::spawn(metrics::answer(stream, body));
            }
            _ = usage.tick() => {
                if let Err(e) = observer.stats(agent.live) {
                    warn!("reading the rule counters: {e:#}");
                }
            }
            _ = tokio::time::sleep(period), if opts.interval > 0 => {
                println!("{}", counter_line(&counters_of(&mut agent.live.now.generation)?, opts.json));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    /// Prints its source inside its own message and returns it as `source()` too, as a
    /// thiserror `#[error("map error: {0}")]` around a `#[from]` field does.
    #[derive(Debug)]
    struct Wrapping(std::io::Error);

    impl std::fmt::Display for Wrapping {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "map error: {}", self.0)
        }
    }

    impl std::error::Error for Wrapping {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn one_line_drops_a_cause_that_repeats_the_one_before() {
        let io = std::io::Error::from_raw_os_error(12);
        let e = anyhow::Error::new(io).context("failed to create map `X`").context("failed to create map `X`");
        let e = e.context("loading the eBPF object");
        assert_eq!(
            one_line(&e),
            "loading the eBPF object: failed to create map `X`: Cannot allocate memory (os error 12)"
        );
        let e = anyhow::Error::new(Wrapping(std::io::Error::from_raw_os_error(12))).context("loading");
        assert_eq!(one_line(&e), "loading: map error: Cannot allocate memory (os error 12)");
    }
}
