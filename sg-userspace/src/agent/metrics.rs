//! Prometheus metrics (`sgctl run --metrics ADDR`, off by default): the figures of
//! `sgctl stats` and the agent's own, in the OpenMetrics text format, encoded by
//! `prometheus-client` from a registry built afresh for each scrape (the values are the
//! kernel's totals, read at the scrape).
//!
//! The HTTP side is one `GET /metrics` answered per connection: a scraper needs no more.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::observe::StatsView;

type Labels = Vec<(String, String)>;

/// What the agent knows besides the counters.
#[derive(Clone, Debug, Default)]
pub struct AgentFigures {
    pub applies: u64,
    pub last_apply_s: f64,
    pub rules: u64,
    pub session_capacity: u64,
    pub vector_capacity: u64,
    pub programs_generation: u64,
    pub uptime_s: f64,
    /// How full the maps are (`None`: they could not be read for this scrape).
    pub maps: Option<crate::control::enforcer::MapFills>,
    /// The fleet's store, in fleet mode.
    pub store: Option<super::fleet::StoreStatus>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
}

/// The exposition text of `view` and `agent`.
pub fn render(view: &StatsView, agent: &AgentFigures) -> String {
    let mut registry = Registry::with_prefix("sgctl");
    let counter = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Counter>::default();
        registry.register(name, help, family.clone());
        family
    };
    let rule_packets = counter(&mut registry, "rule_packets", "Packets each rule decided, with its sessions' packets");
    let rule_bytes = counter(&mut registry, "rule_bytes", "Bytes of those packets");
    let rule_sessions = counter(&mut registry, "rule_sessions", "Sessions each rule opened");
    for r in &view.rules {
        let id = r.rule_id.to_string();
        let l = labels(&[
            ("iface", &r.iface),
            ("direction", &r.direction),
            ("group", &r.group),
            ("rule", &id),
            ("step", &r.step),
        ]);
        rule_packets.get_or_create(&l).inc_by(r.packets);
        rule_bytes.get_or_create(&l).inc_by(r.bytes);
        rule_sessions.get_or_create(&l).inc_by(r.sessions);
    }
    let packets = counter(&mut registry, "packets", "Packets by verdict: pass, drop, audit-drop");
    let drops = counter(&mut registry, "drops", "Drops by reason: the deciding step, or the malformed reason");
    let events = counter(&mut registry, "events", "Verdict events: emitted = delivered + suppressed + lost");
    let opened = counter(&mut registry, "sessions_opened", "Sessions the programs opened");
    let expired = counter(&mut registry, "sessions_expired", "Sessions deleted once idle past their timeout");
    let revoked = counter(&mut registry, "sessions_revoked", "Sessions an apply's rules no longer admit, cut");
    let live_sessions = Family::<Labels, Gauge>::default();
    for i in &view.interfaces {
        let at = |extra: &[(&str, &str)]| {
            let mut l = labels(&[("iface", &i.iface), ("direction", &i.direction)]);
            l.extend(labels(extra));
            l
        };
        let c = &i.counters;
        packets.get_or_create(&at(&[("verdict", "pass")])).inc_by(c.passed);
        packets.get_or_create(&at(&[("verdict", "drop")])).inc_by(c.dropped);
        packets.get_or_create(&at(&[("verdict", "audit-drop")])).inc_by(c.audit_dropped);
        for (step, n) in c.by_step.iter().filter(|(s, _)| s.ends_with("/drop") && !s.starts_with("malformed/")) {
            let reason = step.trim_end_matches("/drop");
            drops.get_or_create(&at(&[("reason", reason)])).inc_by(*n);
        }
        for (reason, n) in &c.malformed {
            drops.get_or_create(&at(&[("reason", &format!("malformed-{reason}"))])).inc_by(*n);
        }
        for e in &i.events {
            for (outcome, n) in
                [("emitted", e.emitted), ("delivered", e.delivered), ("suppressed", e.suppressed), ("lost", e.lost)]
            {
                events.get_or_create(&at(&[("kind", &e.kind), ("outcome", outcome)])).inc_by(n);
            }
        }
        opened.get_or_create(&at(&[])).inc_by(i.sessions_opened);
        expired.get_or_create(&at(&[])).inc_by(i.sessions_expired);
        revoked.get_or_create(&at(&[])).inc_by(i.sessions_revoked);
        live_sessions.get_or_create(&at(&[])).set(i64::try_from(i.sessions_live).unwrap_or(i64::MAX));
    }
    registry.register(
        "sessions_live",
        "Sessions in the tables, by the interface and direction that opened them",
        live_sessions,
    );
    let applies = Counter::<u64>::default();
    applies.inc_by(agent.applies);
    registry.register("applies", "Rule files applied since the agent started", applies);
    let last = Gauge::<f64, AtomicU64>::default();
    last.set(agent.last_apply_s);
    registry.register(
        "last_apply_seconds",
        "How long the last apply took (read the file, compile, write and switch)",
        last,
    );
    for (name, help, value) in [
        ("rules", "Rules in force", agent.rules),
        ("session_capacity", "Entries of the session table", agent.session_capacity),
        ("vector_capacity", "Rule vectors the maps hold", agent.vector_capacity),
        ("programs_generation", "The pinned generation of programs and maps in force", agent.programs_generation),
    ] {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(value).unwrap_or(i64::MAX));
        registry.register(name, help, g);
    }
    let uptime = Gauge::<f64, AtomicU64>::default();
    uptime.set(agent.uptime_s);
    registry.register("uptime_seconds", "Seconds since the agent started", uptime);
    if let Some(store) = &agent.store {
        for (name, help, value) in [
            (
                "store_connected",
                "1 while the fleet's store is reachable, 0 while the last rules stay in force without it",
                i64::from(store.connected),
            ),
            ("store_revision", "The last store revision the agent has seen", store.revision),
            (
                "store_composed_revision",
                "The store revision of the rules last handed to the agent",
                store.composed_revision,
            ),
            (
                "store_members",
                "Member addresses this agent registers under its lease",
                i64::try_from(store.members).unwrap_or(i64::MAX),
            ),
        ] {
            let g = Gauge::<i64>::default();
            g.set(value);
            registry.register(name, help, g);
        }
        let connects = Counter::<u64>::default();
        connects.inc_by(store.connects);
        registry.register("store_connects", "Connections made to the store", connects);
    }
    if let Some(m) = &agent.maps {
        let used = Family::<Labels, Gauge>::default();
        let capacity = Family::<Labels, Gauge>::default();
        for (name, fill) in m.named() {
            let at = labels(&[("map", name)]);
            used.get_or_create(&at).set(i64::try_from(fill.used).unwrap_or(i64::MAX));
            capacity.get_or_create(&at).set(i64::try_from(fill.capacity).unwrap_or(i64::MAX));
        }
        registry.register("map_entries", "Entries in use of each fixed-size map", used);
        registry.register("map_capacity", "Entries each fixed-size map holds", capacity);
        let evicted = Family::<Labels, Counter>::default();
        evicted.get_or_create(&labels(&[("table", "assured")])).inc_by(m.evicted.assured);
        evicted.get_or_create(&labels(&[("table", "opening")])).inc_by(m.evicted.opening);
        registry.register(
            "sessions_evicted",
            "Sessions a full table's LRU evicted: opening (not assured yet) or assured",
            evicted,
        );
    }
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

/// Answers one scrape on `stream` with `body` (404 for anything but `GET /metrics`).
pub async fn answer(mut stream: TcpStream, body: String) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    if tokio::time::timeout(std::time::Duration::from_secs(5), read).await.is_err() {
        return;
    }
    let wanted = head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?");
    let (status, body) = if wanted { ("200 OK", body) } else { ("404 Not Found", "see /metrics\n".to_string()) };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::observe::{EventCounts, IfaceStats, RuleStats};

    #[test]
    fn renders_rules_interfaces_events_and_the_agent() {
        let mut view = StatsView::default();
        view.rules.push(RuleStats {
            iface: "inst0".into(),
            direction: "ingress".into(),
            rule_id: 4,
            step: "rule".into(),
            group: "sg-web".into(),
            packets: 10,
            bytes: 980,
            sessions: 5,
            ..RuleStats::default()
        });
        let mut iface = IfaceStats { iface: "inst0".into(), direction: "ingress".into(), ..IfaceStats::default() };
        iface.counters.dropped = 3;
        iface.counters.by_step.push(("default/drop".into(), 3));
        iface.events.push(EventCounts { kind: "drop".into(), emitted: 3, delivered: 2, suppressed: 1, lost: 0 });
        view.interfaces.push(iface);
        let text = render(&view, &AgentFigures { applies: 2, rules: 7, ..AgentFigures::default() });
        for line in [
            r#"sgctl_rule_packets_total{iface="inst0",direction="ingress",group="sg-web",rule="4",step="rule"} 10"#,
            r#"sgctl_rule_bytes_total{iface="inst0",direction="ingress",group="sg-web",rule="4",step="rule"} 980"#,
            r#"sgctl_packets_total{iface="inst0",direction="ingress",verdict="drop"} 3"#,
            r#"sgctl_drops_total{iface="inst0",direction="ingress",reason="default"} 3"#,
            r#"sgctl_events_total{iface="inst0",direction="ingress",kind="drop",outcome="suppressed"} 1"#,
            "sgctl_applies_total 2",
            "sgctl_rules 7",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }
}
