//! What the agent reports about what the programs did: the verdict events it reads from
//! the ring (counted as delivered, kept for `sgctl log`, streamed to followers, written
//! to the event file and to `tracing`), and the counters behind `sgctl stats`.
//!
//! Events carry rule handles and interface indexes; this module names them with the rule
//! file in force (rule id, group, description, file:line) and the held interfaces.

use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    io::{BufWriter, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use serde::{Deserialize, Serialize};
use sg_common::{Event, event_kind, family, malformed, stats, step};
use tokio::{io::unix::AsyncFd, sync::broadcast};
use tracing::debug;

use super::{EventOptions, live::Live};
use crate::{
    dataplane::{
        counters::{HookCounters, counters_of, iface_hook_counters, rule_counters},
        events::{decode_event, event_ring, set_event_limits},
    },
    policy::config::Reader,
};

/// Events kept for `sgctl log` without `--follow`.
const RECENT: usize = 1000;

/// Events [`Observer::drain_batch`] reads before the agent's loop turns to its other work.
const DRAIN_BATCH: usize = 4096;

/// What the rule file says about one rule id.
#[derive(Clone, Debug)]
struct RuleName {
    group: String,
    description: String,
    location: String,
}

/// The event reader and the names it reports with.
pub struct Observer {
    ring: Option<(u32, AsyncFd<RingBuf<MapData>>)>,
    /// The last [`Observer::drain_batch`] stopped with events left in the ring.
    backlog: bool,
    /// Events read, by (ifindex, hook, kind).
    delivered: HashMap<(u32, u8, u8), u64>,
    recent: VecDeque<Arc<str>>,
    followers: broadcast::Sender<Arc<str>>,
    log_file: Option<BufWriter<File>>,
    names: HashMap<u32, RuleName>,
    /// Rule handle -> rule id, for the rules (not pseudo-rules) in force.
    handle_rules: HashMap<u32, u32>,
    ifaces: HashMap<u32, String>,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, to date events.
    realtime_offset_ns: i128,
    options: EventOptions,
    /// When each rule handle's counters last changed (or were first seen), for
    /// `sgctl stats --unused --since`.
    last_used: HashMap<u32, (u64, SystemTime)>,
    first_seen: HashMap<u32, SystemTime>,
}

fn monotonic_ns() -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Observer {
    pub fn new(options: &EventOptions) -> anyhow::Result<Self> {
        let log_file = match &options.log_file {
            Some(path) => Some(BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| anyhow::anyhow!("opening the event file {}: {e}", path.display()))?,
            )),
            None => None,
        };
        let realtime = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i128;
        Ok(Self {
            ring: None,
            delivered: HashMap::new(),
            recent: VecDeque::with_capacity(RECENT),
            backlog: false,
            followers: broadcast::channel(65_536).0,
            log_file,
            names: HashMap::new(),
            handle_rules: HashMap::new(),
            ifaces: HashMap::new(),
            realtime_offset_ns: realtime - monotonic_ns(),
            options: options.clone(),
            last_used: HashMap::new(),
            first_seen: HashMap::new(),
        })
    }

    /// After the agent started or applied: the names of the rules and interfaces in
    /// force, the rate limit written, and the ring of the generation in force opened.
    /// `reader` reads the rule file in force (usually the text it read last).
    pub fn refresh(&mut self, live: &mut Live, reader: &mut Reader) -> anyhow::Result<()> {
        self.names.clear();
        if let Ok(cfg) = reader.read(&live.config_text, &live.config_path) {
            for rule in cfg.rules() {
                self.names.insert(
                    rule.id,
                    RuleName {
                        group: cfg.groups[rule.group_index].id.clone(),
                        description: rule.description.clone(),
                        location: format!("{}:{}", live.config_path, rule.line),
                    },
                );
            }
        }
        self.ifaces = live.now.held.iter().map(|h| (h.ifindex, h.iface.clone())).collect();
        self.handle_rules = live
            .now
            .enforcer
            .handles()
            .in_use()
            .filter(|(_, u)| u.step == step::RULE)
            .map(|(h, u)| (h, u.rule_id))
            .collect();
        let o = &self.options;
        set_event_limits(&mut live.now.generation, [o.drop_rate, o.accept_rate], [o.burst, o.burst])?;
        let id = live.now.generation.id;
        if self.ring.as_ref().is_none_or(|(g, _)| *g != id) {
            // A new generation: what the old ring still held is read first.
            self.drain();
            let ring = event_ring(&mut live.now.generation)?;
            // SAFETY: the ring owns its fd, which stays open as long as the AsyncFd holds it.
            let fd = unsafe { AsyncFd::register(ring) }
                .map_err(|e| anyhow::anyhow!("watching the event ring: {}", std::io::Error::from(e)))?;
            self.ring = Some((id, fd));
        }
        Ok(())
    }

    /// Waits until the ring has events (forever when there is none). With a backlog
    /// left by [`Observer::drain_batch`] it only yields, so the followers' tasks write
    /// what they were sent before the next batch comes.
    pub async fn readable(&mut self) {
        if self.backlog {
            tokio::task::yield_now().await;
            return;
        }
        match &self.ring {
            Some((_, fd)) => {
                if let Ok(mut guard) = fd.readable().await {
                    guard.clear_ready();
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Reads every event the ring holds.
    pub fn drain(&mut self) {
        while self.read_events(usize::MAX) {}
    }

    /// Reads at most [`DRAIN_BATCH`] events: the agent's one thread also serves the
    /// followers, and a flood read in one go would leave them behind the broadcast's
    /// capacity (they would be told of missed events instead).
    pub fn drain_batch(&mut self) {
        self.backlog = self.read_events(DRAIN_BATCH);
    }

    /// Reads up to `limit` events; whether the ring may hold more.
    fn read_events(&mut self, limit: usize) -> bool {
        let Some((_, fd)) = self.ring.as_mut() else { return false };
        let mut batch = Vec::new();
        let mut more = false;
        {
            let ring = fd.get_mut();
            while let Some(record) = ring.next() {
                if let Some(event) = decode_event(&record) {
                    batch.push(event);
                }
                if batch.len() >= limit {
                    more = true;
                    break;
                }
            }
        }
        for event in batch {
            *self.delivered.entry((event.ifindex, event.hook, event.kind)).or_default() += 1;
            let line: Arc<str> = self.event_json(&event).into();
            debug!(target: "sgctl::events", "{line}");
            if let Some(file) = self.log_file.as_mut() {
                let _ = writeln!(file, "{line}");
            }
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(line.clone());
            let _ = self.followers.send(line);
        }
        if let Some(file) = self.log_file.as_mut() {
            let _ = file.flush();
        }
        more
    }

    /// The events kept, oldest first, and a subscription to the ones to come.
    pub fn subscribe(&self) -> (Vec<Arc<str>>, broadcast::Receiver<Arc<str>>) {
        (self.recent.iter().cloned().collect(), self.followers.subscribe())
    }

    /// One event as its JSON line. Serialised from a borrowed struct, not built as a
    /// `serde_json::Value` (a map of owned strings): at 200k events/s that map was most of
    /// the agent's time.
    fn event_json(&self, e: &Event) -> String {
        let addr = |bytes: &[u8; 16]| -> IpAddr {
            if e.family == family::IPV4 {
                IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
            } else {
                IpAddr::V6(Ipv6Addr::from(*bytes))
            }
        };
        let time_ns = i128::from(e.time_ns) + self.realtime_offset_ns;
        let icmp = matches!(e.protocol, 1 | 58);
        let rule = self.rule_of(e.rule);
        let line = EventLine {
            time: time_ns as f64 / 1e9,
            iface: match self.ifaces.get(&e.ifindex) {
                Some(name) => std::borrow::Cow::Borrowed(name),
                None => std::borrow::Cow::Owned(format!("ifindex {}", e.ifindex)),
            },
            direction: if u32::from(e.hook) == stats::HOOK_INGRESS { "ingress" } else { "egress" },
            kind: event_kind::NAMES[usize::from(e.kind) % 2],
            verdict: stats::COLUMN_NAMES[usize::from(e.column) % stats::COLUMNS as usize],
            step: step::NAMES[usize::from(e.step) % step::COUNT],
            reason: (e.step == step::MALFORMED).then(|| malformed::NAMES[usize::from(e.reason) % malformed::COUNT]),
            protocol: e.protocol,
            src: addr(&e.src),
            dst: addr(&e.dst),
            src_port: (!icmp).then_some(e.src_port),
            dst_port: (!icmp).then_some(e.dst_port),
            icmp_type: icmp.then_some(e.icmp_type),
            icmp_code: icmp.then_some(e.icmp_code),
            rule_handle: e.rule,
            rule_id: rule.map(|(id, _)| id),
            group: rule.map(|(_, n)| n.group.as_str()),
            description: rule.map(|(_, n)| n.description.as_str()),
            location: rule.map(|(_, n)| n.location.as_str()),
        };
        // Serialising plain fields into a String cannot fail.
        serde_json::to_string(&line).unwrap_or_default()
    }

    fn rule_of(&self, handle: u32) -> Option<(u32, &RuleName)> {
        let rule_id = *self.handle_rules.get(&handle)?;
        Some((rule_id, self.names.get(&rule_id)?))
    }
}

/// An event's JSON line (`sgctl log --json`, `--event-log`): the fields of the kernel's
/// record named, and its rule's id, group, description and place in the rule file.
#[derive(Serialize)]
struct EventLine<'a> {
    time: f64,
    iface: std::borrow::Cow<'a, str>,
    direction: &'static str,
    kind: &'static str,
    verdict: &'static str,
    step: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    protocol: u8,
    src: IpAddr,
    dst: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_code: Option<u8>,
    rule_handle: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<&'a str>,
}

/// One kind of event on one interface and hook: every event the programs emitted is
/// delivered, suppressed by the rate limit, or lost to a full ring.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventCounts {
    pub kind: String,
    pub emitted: u64,
    pub delivered: u64,
    pub suppressed: u64,
    pub lost: u64,
}

/// One interface and direction.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct IfaceStats {
    pub iface: String,
    pub direction: String,
    pub counters: HookCounters,
    pub events: Vec<EventCounts>,
    pub sessions_opened: u64,
    /// Deleted once idle past their timeout, by the programs or the agent's collection.
    pub sessions_expired: u64,
    /// Cut because an apply's rules no longer admit their opening packet (the packets
    /// that found them revoked).
    #[serde(default)]
    pub sessions_revoked: u64,
    /// Sessions in the tables now that were opened on this interface in this direction
    /// (both tables; expired ones not yet collected included).
    #[serde(default)]
    pub sessions_live: u64,
}

/// One rule (or pseudo-rule) of one interface and direction.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RuleStats {
    /// The rule's handle: what sessions and events name it by.
    pub handle: u32,
    pub iface: String,
    pub direction: String,
    /// The rule's id in the rule file; 0 for the intra-group and default steps.
    pub rule_id: u32,
    /// What decides: `rule`, `intra-group-accept`, `intra-group-drop` or `default`.
    pub step: String,
    pub group: String,
    pub description: String,
    /// FILE:LINE of the rule.
    pub location: String,
    pub packets: u64,
    pub bytes: u64,
    pub sessions: u64,
    /// Seconds since its counters last moved (since the agent first saw it, if never).
    pub idle_s: f64,
    /// Seconds since the agent first saw the rule.
    pub seen_s: f64,
}

/// `sgctl stats`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StatsView {
    pub interfaces: Vec<IfaceStats>,
    pub rules: Vec<RuleStats>,
    /// Sessions each table's LRU evicted (the tables are shared by all interfaces).
    #[serde(default)]
    pub sessions_evicted: crate::dataplane::sessions::Evictions,
}

impl Observer {
    /// The counters now, named.
    pub fn stats(&mut self, live: &mut Live) -> anyhow::Result<StatsView> {
        self.drain();
        let slots = counters_of(&mut live.now.generation)?;
        let rules = rule_counters(&mut live.now.generation)?;
        let now = SystemTime::now();
        let mut view = StatsView {
            sessions_evicted: live.now.enforcer.fills(Default::default())?.evicted,
            ..StatsView::default()
        };
        let live_sessions = live.now.enforcer.sessions().live_by_origin()?;
        let direction = |hook: u32| if hook == stats::HOOK_INGRESS { "ingress" } else { "egress" };
        for (ifindex, slot) in live.now.enforcer.iface_slots() {
            let iface = self.ifaces.get(ifindex).cloned().unwrap_or_else(|| format!("ifindex {ifindex}"));
            for hook in [stats::HOOK_INGRESS, stats::HOOK_EGRESS] {
                let at = |i: u32| slots.get((stats::block(*slot, hook) + i) as usize).copied().unwrap_or(0);
                let events = (0..2u8)
                    .map(|kind| {
                        let e =
                            |what| slots.get(stats::event_slot(*slot, hook, kind, what) as usize).copied().unwrap_or(0);
                        EventCounts {
                            kind: event_kind::NAMES[usize::from(kind)].to_string(),
                            emitted: e(stats::EVENT_EMITTED),
                            delivered: self.delivered.get(&(*ifindex, hook as u8, kind)).copied().unwrap_or(0),
                            suppressed: e(stats::EVENT_SUPPRESSED),
                            lost: e(stats::EVENT_LOST),
                        }
                    })
                    .collect();
                view.interfaces.push(IfaceStats {
                    iface: iface.clone(),
                    direction: direction(hook).to_string(),
                    counters: iface_hook_counters(&slots, *slot, hook),
                    events,
                    sessions_opened: at(stats::SESSIONS_OPENED),
                    sessions_expired: at(stats::SESSIONS_EXPIRED),
                    sessions_revoked: (0..stats::COLUMNS)
                        .map(|column| {
                            let slot = stats::decision_slot(*slot, hook, step::REVOKED, column);
                            slots.get(slot as usize).copied().unwrap_or(0)
                        })
                        .sum(),
                    sessions_live: live_sessions.get(&(*ifindex, hook)).copied().unwrap_or(0),
                });
            }
        }
        view.interfaces.sort_by(|a, b| (&a.iface, &a.direction).cmp(&(&b.iface, &b.direction)));
        // A next-band pseudo-rule decides nothing (`step::NEXT_BAND`): no line.
        for (handle, used) in live.now.enforcer.handles().in_use().filter(|(_, u)| u.step != step::NEXT_BAND) {
            let c = rules.get(&handle).copied().unwrap_or_default();
            let first = *self.first_seen.entry(handle).or_insert(now);
            let last = self.last_used.entry(handle).or_insert((c.packets, first));
            if last.0 != c.packets {
                *last = (c.packets, now);
            }
            let age = |t: SystemTime| now.duration_since(t).unwrap_or(Duration::ZERO).as_secs_f64();
            let is_rule = used.step == step::RULE;
            let name = if is_rule { self.names.get(&used.rule_id) } else { None };
            view.rules.push(RuleStats {
                handle,
                iface: self.ifaces.get(&used.key.ifindex).cloned().unwrap_or_default(),
                direction: direction(used.key.hook).to_string(),
                rule_id: if is_rule { used.rule_id } else { 0 },
                step: step::NAMES[usize::from(used.step) % step::COUNT].to_string(),
                group: name.map(|n| n.group.clone()).unwrap_or_default(),
                description: name.map(|n| n.description.clone()).unwrap_or_default(),
                location: name.map(|n| n.location.clone()).unwrap_or_default(),
                packets: c.packets,
                bytes: c.bytes,
                sessions: c.sessions,
                idle_s: age(last.1),
                seen_s: age(first),
            });
        }
        // Handles no longer in use take their history with them.
        let in_use: std::collections::HashSet<u32> = live.now.enforcer.handles().in_use().map(|(h, _)| h).collect();
        self.first_seen.retain(|h, _| in_use.contains(h));
        self.last_used.retain(|h, _| in_use.contains(h));
        view.rules.sort_by(|a, b| {
            (&a.iface, &a.direction, a.rule_id == 0, a.rule_id, &a.step).cmp(&(
                &b.iface,
                &b.direction,
                b.rule_id == 0,
                b.rule_id,
                &b.step,
            ))
        });
        Ok(view)
    }
}
