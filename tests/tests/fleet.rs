//! The fleet on a real etcd: three hosts as namespaces, each with its agent following the
//! store (`sgctl run --store`), and the store in a namespace of its own on a management
//! network. Group membership crosses hosts: host A's web instance joins `sg-web` and
//! reaches host B's database through B's rule naming `sg-web`; it leaves and is cut;
//! A's agent dies and its lease takes its members away everywhere. etcd stops and comes
//! back without enforcement changing meanwhile (an agent restarted then carries on with
//! its recorded rules, one that lived through it resumes its watch), an invalid push
//! changes nothing, and an agent cut off while etcd compacts its history resyncs from a
//! snapshot.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    process::Output,
    time::{Duration, Instant},
};

use sg_tests::{
    agent::{Agent, sgctl, sgctl_pinned},
    deploy::DownOnDrop,
    fleet::Etcd,
    kernel::{kernel_tests_enabled, sgctl_bin},
    netns::{Host, Lab, ip},
    traffic::{Proto, echo_over, in_netns},
};

const T: Duration = Duration::from_millis(800);
const DB_PORT: u16 = 5432;
const WEB: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const DB: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 1);
/// Seconds of the agents' leases: how long a dead host's members linger.
const LEASE_TTL: &str = "2";

/// The fleet's groups: the database admits `sg-web` (and, with `ops`, the operators'
/// address); `sg-other` holds whatever is in neither.
fn groups(ops: bool) -> String {
    let ops_rule = if ops {
        format!(
            "[[security_group.rule]]\ndirection = \"ingress\"\nprotocol = \"tcp\"\nport_range = \"{DB_PORT}/{DB_PORT}\"\n\
             source = \"{OTHER}/32\"\ndescription = \"ops\"\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"
[[security_group]]
id = "sg-web"

[[security_group]]
id = "sg-db"
[[security_group.rule]]
direction = "ingress"
protocol = "tcp"
port_range = "{DB_PORT}/{DB_PORT}"
source_group = "sg-web"
description = "web to db"
{ops_rule}
[[security_group]]
id = "sg-other"
"#
    )
}

fn host_file(iface: &str, group: &str, addr: Ipv4Addr, ops: bool) -> String {
    format!(
        "{}\n[[interface]]\nname = \"{iface}\"\nsecurity_groups = [\"{group}\"]\naddresses = [\"{addr}\"]\n",
        groups(ops)
    )
}

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sgctl-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `sgctl fleet push FILE --store URL [--host NAME]`, run on `from`'s management network.
fn push(from: &Host, url: &str, name: &str, file_text: &str, host: Option<&str>) -> Output {
    let path = write(name, file_text);
    let path = path.to_str().unwrap();
    let mut args = vec!["fleet", "push", path, "--store", url];
    if let Some(host) = host {
        args.extend(["--host", host]);
    }
    sgctl(from, &args)
}

fn pushed(from: &Host, url: &str, name: &str, file_text: &str, host: Option<&str>) {
    let out = push(from, url, name, file_text, host);
    assert!(out.status.success(), "push {name}: {}", text(&out));
}

fn revision(from: &Host, url: &str) -> i64 {
    let out = sgctl(from, &["fleet", "show", "--json", "--store", url]);
    assert!(out.status.success(), "fleet show: {}", text(&out));
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    view["revision"].as_i64().unwrap()
}

fn members(from: &Host, url: &str, group: &str) -> Vec<String> {
    let out = sgctl(from, &["fleet", "members", group, "--json", "--store", url]);
    assert!(out.status.success(), "fleet members: {}", text(&out));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    list.iter().map(|m| format!("{}@{}", m["address"].as_str().unwrap(), m["host"].as_str().unwrap())).collect()
}

fn db_open(from: &Host) -> bool {
    from.reaches(Proto::Tcp, IpAddr::V4(DB), DB_PORT, T)
}

/// A quicker probe for waiting until the database opens (a dropped SYN is retried only
/// after a second, so a failed probe says nothing more by waiting longer).
fn db_opens(from: &Host) -> bool {
    from.reaches(Proto::Tcp, IpAddr::V4(DB), DB_PORT, Duration::from_millis(150))
}

/// Waits up to `within` for `check` to hold; returns how long it took.
fn converges(within: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Compacts etcd's history up to its current revision, from `host`'s namespace.
fn compact(host: &Host, url: &str) {
    let endpoint = url.replace("etcd://", "http://");
    in_netns(&host.ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let mut client = etcd_client::Client::connect([endpoint], None).await?;
            let revision = client.get("/", None).await?.header().map_or(0, |h| h.revision());
            client.compact(revision, None).await?;
            anyhow::Ok(())
        })
    })
    .unwrap();
}

fn run_agent(host: &Host, url: &str, name: &str) -> Agent {
    Agent::start(host, &["run", "--store", url, "--host", name, "--lease-ttl", LEASE_TTL], "rules in force on")
        .unwrap_or_else(|e| panic!("agent of {name}: {e:#}"))
}

/// The agent through `sgctl --netns`, so its pins and state outlive it and the next one
/// can adopt them.
fn run_pinned_agent(host: &Host, url: &str, name: &str) -> Agent {
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    let args = ["run", "--store", url, "--host", name, "--lease-ttl", LEASE_TTL, "--metrics", &metrics];
    Agent::start_pinned(&sgctl_bin(), host, &args, "rules in force on")
        .unwrap_or_else(|e| panic!("agent of {name}: {e:#}"))
}

fn status(host: &Host) -> String {
    text(&sgctl_pinned(host, &["status"]))
}

/// The metrics port of the pinned agent (in its own namespace).
const METRICS_PORT: u16 = 9464;

/// The value of metric `name` in the agent's scrape.
fn metric(host: &Host, name: &str) -> Option<f64> {
    let url = format!("http://127.0.0.1:{METRICS_PORT}/metrics");
    let out = host.run("curl", &["-sf", "--max-time", "5", &url]).ok()?;
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn membership_crosses_hosts_through_the_store() {
    if !kernel_tests_enabled("membership_crosses_hosts_through_the_store") {
        return;
    }
    let mut lab = Lab::new("fleet").unwrap();
    let web = lab.add_host_on("a", "web0", WEB, "2001:db8::1:1".parse().unwrap()).unwrap();
    let db = lab.add_host_on("b", "db0", DB, "2001:db8::2:1".parse().unwrap()).unwrap();
    let other = lab.add_host_on("c", "c0", OTHER, "2001:db8::3:1".parse().unwrap()).unwrap();
    lab.resolve_neighbours().unwrap();
    let mut etcd = Etcd::start(&mut lab).unwrap();
    for host in [&web, &db, &other] {
        etcd.join(host).unwrap();
    }
    let url = etcd.url();
    let _down = DownOnDrop(vec![db.clone()]);
    let _server = db.serve(Proto::Tcp, DB_PORT).unwrap();

    // Host A's instance starts outside sg-web.
    pushed(&db, &url, "b.toml", &host_file("db0", "sg-db", DB, false), Some("b"));
    pushed(&db, &url, "c.toml", &host_file("c0", "sg-other", OTHER, false), Some("c"));
    pushed(&db, &url, "a.toml", &host_file("web0", "sg-other", WEB, false), Some("a"));
    let mut agent_a = run_agent(&web, &url, "a");
    let mut agent_b = run_pinned_agent(&db, &url, "b");
    let mut agent_c = run_agent(&other, &url, "c");
    assert!(!db_open(&web), "web reaches the database before it is in sg-web");
    // The store decides this agent's rules: a local apply is refused, naming the way.
    let local = write("local.toml", &host_file("db0", "sg-db", DB, true));
    let refused = sgctl_pinned(&db, &["apply", local.to_str().unwrap()]);
    assert!(!refused.status.success() && text(&refused).contains("sgctl fleet push"), "{}", text(&refused));
    assert!(!db_open(&other), "host C reaches the database");

    // Joining sg-web on host A: A's agent registers the address, B's rules follow.
    let start = Instant::now();
    pushed(&db, &url, "a-web.toml", &host_file("web0", "sg-web", WEB, false), Some("a"));
    let joined = converges(Duration::from_secs(10), || db_opens(&web)).map(|_| start.elapsed());
    assert!(joined.is_some(), "web never reached the database after joining sg-web");
    assert_eq!(members(&db, &url, "sg-web"), [format!("{WEB}@a")]);
    assert!(!db_open(&other), "host C reaches the database");
    let mut stream = web.connect(IpAddr::V4(DB), DB_PORT, T).unwrap();
    stream.set_read_timeout(Some(T)).unwrap();
    assert!(echo_over(&mut stream, b"before leaving"));

    // Leaving: the open connection is cut and new ones fail.
    pushed(&db, &url, "a-left.toml", &host_file("web0", "sg-other", WEB, false), Some("a"));
    let left = converges(Duration::from_secs(10), || !db_open(&web));
    assert!(left.is_some(), "web still reaches the database after leaving sg-web");
    assert!(!echo_over(&mut stream, b"after leaving"), "the connection survived leaving sg-web");
    assert!(members(&db, &url, "sg-web").is_empty());

    // Back in, then host A's agent dies: its lease expires and its members go everywhere.
    pushed(&db, &url, "a-web.toml", &host_file("web0", "sg-web", WEB, false), Some("a"));
    assert!(converges(Duration::from_secs(10), || db_opens(&web)).is_some(), "web did not rejoin");
    agent_a.stop_with(libc::SIGKILL).unwrap();
    let expired = converges(Duration::from_secs(15), || members(&db, &url, "sg-web").is_empty());
    assert!(expired.is_some(), "host A's members outlived its lease: {:?}", members(&db, &url, "sg-web"));
    assert!(converges(Duration::from_secs(10), || !db_open(&web)).is_some(), "B still admits A's dead member");

    // An invalid push changes nothing; nor does one that would break a host's rules.
    let before = revision(&db, &url);
    let broken = host_file("db0", "sg-db", DB, false).replace("5432/5432", "5432/80");
    let out = push(&db, &url, "broken.toml", &broken, Some("b"));
    assert!(!out.status.success(), "an invalid file was pushed");
    assert!(text(&out).contains("broken.toml:") && text(&out).contains("port_range"), "{}", text(&out));
    let renamed = groups(false).replace("\"sg-other\"", "\"sg-misc\"");
    let out = push(&db, &url, "renamed.toml", &renamed, None);
    assert!(!out.status.success(), "a push removing a bound group was accepted");
    assert!(text(&out).contains("host c") || text(&out).contains("host a"), "{}", text(&out));
    assert_eq!(revision(&db, &url), before, "a refused push changed the store");

    // etcd down: B keeps enforcing what it had, and says so.
    etcd.stop();
    std::thread::sleep(Duration::from_secs(1));
    assert!(!db_open(&other), "host C reaches the database while etcd is down");
    assert!(!db_open(&web), "web reaches the database while etcd is down");
    let unreachable = converges(Duration::from_secs(10), || status(&db).contains("UNREACHABLE"));
    assert!(unreachable.is_some(), "status does not say the store is unreachable: {}", status(&db));
    assert_eq!(metric(&db, "sgctl_store_connected"), Some(0.0), "the metrics do not say so");
    // B's agent crashes and restarts during the outage: it carries on with what it had.
    agent_b.stop_with(libc::SIGKILL).unwrap();
    let mut agent_b = run_pinned_agent(&db, &url, "b");
    for said in ["enforcing the rules last applied here", "adopted generation"] {
        assert!(agent_b.seen.iter().any(|l| l.contains(said)), "no {said:?} in {:?}", agent_b.seen);
    }
    assert!(!db_open(&other), "host C reaches the database after B's restart during the outage");
    assert!(!db_open(&web), "web reaches the database after B's restart during the outage");
    // It comes back; a change made then converges.
    etcd.resume().unwrap();
    let reconnected = converges(Duration::from_secs(15), || status(&db).contains(": connected;"));
    assert!(reconnected.is_some(), "B did not reconnect: {}", status(&db));
    assert_eq!(metric(&db, "sgctl_store_connected"), Some(1.0));
    assert!(metric(&db, "sgctl_store_revision").is_some_and(|r| r > 0.0));
    // C's agent lived through the outage: it resumed its watch rather than reading again.
    agent_c.wait_for("resuming the watch after revision", Duration::from_secs(15)).unwrap();
    let start = Instant::now();
    pushed(&db, &url, "b-ops.toml", &host_file("db0", "sg-db", DB, true), Some("b"));
    let ops = converges(Duration::from_secs(10), || db_opens(&other)).map(|_| start.elapsed());
    assert!(ops.is_some(), "the change made after etcd returned never reached B");
    assert!(!db_open(&web), "web reaches the database");

    // B cut off from the store while a change lands and etcd compacts its history: B
    // keeps its rules meanwhile, and back on the network its watch cannot resume from
    // where it was, so it reads a fresh snapshot and converges.
    ip(&["-n", &db.ns, "link", "set", "mgmt0", "down"]).unwrap();
    let cut_off = converges(Duration::from_secs(20), || status(&db).contains("UNREACHABLE"));
    assert!(cut_off.is_some(), "B does not notice it is cut off: {}", status(&db));
    pushed(&other, &url, "b-no-ops.toml", &host_file("db0", "sg-db", DB, false), Some("b"));
    compact(&other, &url);
    std::thread::sleep(Duration::from_secs(1));
    assert!(db_open(&other), "B changed its rules while cut off from the store");
    ip(&["-n", &db.ns, "link", "set", "mgmt0", "up"]).unwrap();
    agent_b.wait_for("reading a fresh snapshot", Duration::from_secs(30)).unwrap();
    let resynced = converges(Duration::from_secs(20), || !db_open(&other));
    assert!(resynced.is_some(), "B never applied the change made while it was cut off");
    println!(
        "fleet: push to reachable {:?} (join), leave seen within {:?} (one refused probe is 800 ms), members gone \
         {:?} after the kill (TTL {LEASE_TTL} s), push to reachable after the outage {:?}, cut off noticed in {:?}, \
         resynced {:?} after reconnecting",
        joined.unwrap(),
        left.unwrap(),
        expired.unwrap(),
        ops.unwrap(),
        cut_off.unwrap(),
        resynced.unwrap()
    );
}
