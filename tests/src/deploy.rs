//! The demo deployment of `examples/demo.toml`: hosts in namespaces, `sgctl run`
//! enforcing on the instances' NICs, and flows whose observed verdict (real sockets)
//! is compared with the expected one and with what `sgctl trace` predicts.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    agent::{Agent, sgctl, sgctl_pinned},
    netns::{Host, Lab},
    traffic::{Proto, Server},
};

/// `examples/demo.toml`.
pub fn demo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo.toml")
}

/// The hosts of the demo topology.
pub struct Demo {
    pub lab: Lab,
    pub client: Host,
    pub admin: Host,
    pub web: Host,
    /// Another sg-web member, not enforced.
    pub app: Host,
    pub db: Host,
    pub files_a: Host,
    pub files_b: Host,
    pub ext_http: Host,
    pub ext_tls: Host,
    pub office: Host,
}

fn addrs(v4: [u8; 4], v6: &str) -> (Ipv4Addr, Ipv6Addr) {
    (Ipv4Addr::from(v4), v6.parse().expect("valid IPv6"))
}

impl Demo {
    /// Builds the topology (no sgctl yet).
    pub fn build(tag: &str) -> Result<Self> {
        let mut lab = Lab::new(tag)?;
        let mut host = |role: &str, iface: &str, v4: [u8; 4], v6: &str| {
            let (a4, a6) = addrs(v4, v6);
            lab.add_host_on(role, iface, a4, a6)
        };
        let client = host("client", "eth0", [198, 18, 0, 10], "2001:db8::10")?;
        let admin = host("admin", "eth0", [198, 18, 0, 20], "2001:db8::20")?;
        let web = host("web", "web0", [198, 18, 1, 10], "2001:db8::1:10")?;
        let app = host("app", "eth0", [198, 18, 1, 11], "2001:db8::1:11")?;
        let db = host("db", "db0", [198, 18, 2, 20], "2001:db8::2:20")?;
        let files_a = host("files-a", "eth0", [198, 18, 3, 10], "2001:db8::3:10")?;
        let files_b = host("files-b", "files0", [198, 18, 4, 10], "2001:db8::4:10")?;
        let ext_http = host("ext-http", "eth0", [198, 18, 5, 80], "2001:db8::5:80")?;
        let ext_tls = host("ext-tls", "eth0", [198, 18, 5, 43], "2001:db8::5:43")?;
        let office = host("office", "office0", [198, 18, 6, 10], "2001:db8::6:10")?;
        lab.resolve_neighbours()?;
        Ok(Self { lab, client, admin, web, app, db, files_a, files_b, ext_http, ext_tls, office })
    }

    /// The instances that run sgctl.
    pub fn instances(&self) -> [&Host; 4] {
        [&self.web, &self.db, &self.files_b, &self.office]
    }
}

/// Starts `sgctl run --config CONFIG` in `host`'s namespace (generic XDP: the fast mode
/// on veth) and waits until the rules are applied.
pub fn enforce(host: &Host, config: &Path, extra: &[&str]) -> Result<Agent> {
    Agent::start(host, &run_args(config, extra)?, "applied")
}

/// The same through `sgctl --netns`: the agent pins what it attaches, so enforcement
/// outlives it and the next agent adopts it. [`DownOnDrop`] removes it again.
pub fn enforce_pinned(host: &Host, config: &Path, extra: &[&str]) -> Result<Agent> {
    Agent::start_pinned(&crate::kernel::sgctl_bin(), host, &run_args(config, extra)?, "applied")
}

fn run_args<'a>(config: &'a Path, extra: &[&'a str]) -> Result<Vec<&'a str>> {
    let config = config.to_str().context("config path is not UTF-8")?;
    let mut args = vec!["run", "--config", config, "--xdp-mode", "generic"];
    args.extend_from_slice(extra);
    Ok(args)
}

/// Runs `sgctl --netns NS down` in every namespace it was given when dropped, also while
/// an early error or a panic unwinds. Pinned enforcement outlives its agent by design, so
/// without this a failed demo would leave programs and maps (tens of MiB of kernel
/// memory for the session tables) pinned for a namespace that no longer exists. Declare
/// it after the [`Demo`] (dropped first, while the namespaces still exist) and before
/// the agents (dropped before it: `down` then finds no live child to wait for).
pub struct DownOnDrop(pub Vec<Host>);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        for host in &self.0 {
            let _ = sgctl_pinned(host, &["down"]);
        }
    }
}

/// Removes everything this process set up, for a SIGINT/SIGTERM that would otherwise end
/// it without running any destructor: in each of its namespaces, stops the pinned agent
/// (and reaps it, so `sgctl down` does not wait on a zombie), runs `sgctl --netns NS
/// down`, then deletes the namespace.
pub fn tear_down_own_namespaces() {
    use std::os::unix::fs::MetadataExt as _;
    let namespaces = crate::netns::own_namespaces();
    for ns in &namespaces {
        let Ok(meta) = std::fs::metadata(format!("/run/netns/{ns}")) else { continue };
        let pid_file = format!("/run/sgctl/{}/agent.pid", meta.ino());
        if let Some(pid) = std::fs::read_to_string(pid_file).ok().and_then(|t| t.trim().parse::<i32>().ok()) {
            // SAFETY: kill and waitpid have no memory preconditions; a pid that is not
            // our child makes waitpid fail at once, and `sgctl down` waits for it.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        let _ = std::process::Command::new(crate::kernel::sgctl_bin()).args(["--netns", ns, "down"]).output();
    }
    for ns in namespaces.iter().rev() {
        let _ = std::process::Command::new("ip").args(["netns", "del", ns]).output();
    }
}

/// Runs `sgctl --netns NS down`, returning its output lines; fails when it fails.
pub fn down(host: &Host) -> Result<Vec<String>> {
    let out = sgctl_pinned(host, &["down"]);
    anyhow::ensure!(out.status.success(), "sgctl down failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
}

/// What of sgctl's is left for `host`'s namespace after `sgctl down`: programs on its
/// NIC (`sgctl status`), a pin directory, a state directory. Empty when nothing is.
pub fn leftovers(host: &Host) -> Result<Vec<String>> {
    use std::os::unix::fs::MetadataExt as _;
    let mut left = Vec::new();
    let out = sgctl_pinned(host, &["status", &host.iface, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).context("sgctl status --json")?;
    if status["attached"] != false {
        left.push(format!("{}: {status}", host.iface));
    }
    // The inode of the namespace names its directories (`sgctl::paths`).
    let inode = std::fs::metadata(format!("/run/netns/{}", host.ns))?.ino();
    for dir in [format!("/sys/fs/bpf/sgctl/{inode}"), format!("/run/sgctl/{inode}")] {
        if Path::new(&dir).exists() {
            left.push(dir);
        }
    }
    Ok(left)
}

/// What a flow sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tcp(u16),
    Udp(u16),
    Ping,
}

/// One flow of the scenario table.
pub struct Flow<'h> {
    pub label: &'static str,
    pub from: &'h Host,
    pub to: &'h Host,
    pub v6: bool,
    pub kind: Kind,
    pub expect_pass: bool,
    /// Whose rules decide: the receiver's ingress (false) or the sender's egress (true).
    pub decided_on_egress: bool,
}

/// What `sgctl trace` says of a flow's first packet at the receiving instance.
#[derive(Debug, Clone)]
pub struct Prediction {
    pub pass: bool,
    pub decided_by: String,
}

/// Asks `sgctl trace` (the reference evaluator) about the flow's opening packet, on the
/// ingress of the receiving instance's NIC.
pub fn predict(runner: &Host, config: &Path, flow: &Flow) -> Result<Prediction> {
    let (proto, dport) = match flow.kind {
        Kind::Tcp(p) => ("tcp", p),
        Kind::Udp(p) => ("udp", p),
        Kind::Ping if flow.v6 => ("icmpv6", 0),
        Kind::Ping => ("icmp", 0),
    };
    let src = flow.from.addr(flow.v6).to_string();
    let dst = flow.to.addr(flow.v6).to_string();
    let dport = dport.to_string();
    let config = config.to_str().context("config path")?;
    let (iface, direction) =
        if flow.decided_on_egress { (&flow.from.iface, "egress") } else { (&flow.to.iface, "ingress") };
    let out = sgctl(
        runner,
        &[
            "trace",
            config,
            "--iface",
            iface,
            "--direction",
            direction,
            "--proto",
            proto,
            "--src",
            &src,
            "--dst",
            &dst,
            "--sport",
            "40000",
            "--dport",
            &dport,
            "--json",
        ],
    );
    anyhow::ensure!(out.status.success(), "sgctl trace failed: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("trace json")?;
    let decided = &json["decided_by"];
    let decided_by = match decided["step"].as_str() {
        Some("rule") => decided["label"].as_str().or(decided["rule"].as_str()).unwrap_or("rule").to_string(),
        Some(other) => other.to_string(),
        None => json.to_string(),
    };
    Ok(Prediction { pass: json["action"] == "accept", decided_by })
}

/// Sends the flow's traffic with real sockets or ping; true when it got through.
pub fn observe(flow: &Flow) -> bool {
    let dst: IpAddr = flow.to.addr(flow.v6);
    let timeout = Duration::from_millis(1500);
    match flow.kind {
        Kind::Tcp(port) => flow.from.reaches(Proto::Tcp, dst, port, timeout),
        Kind::Udp(port) => flow.from.reaches(Proto::Udp, dst, port, timeout),
        Kind::Ping => flow.from.ping(dst),
    }
}

/// Listeners for every TCP/UDP flow, so a pass is a completed exchange.
pub fn serve_flows(flows: &[Flow]) -> Result<Vec<Server>> {
    let mut servers = Vec::new();
    let mut started: Vec<(String, Kind)> = Vec::new();
    for f in flows {
        if f.kind == Kind::Ping || started.contains(&(f.to.ns.clone(), f.kind)) {
            continue;
        }
        started.push((f.to.ns.clone(), f.kind));
        servers.push(match f.kind {
            Kind::Tcp(p) => f.to.serve(Proto::Tcp, p)?,
            Kind::Udp(p) => f.to.serve(Proto::Udp, p)?,
            Kind::Ping => unreachable!(),
        });
    }
    Ok(servers)
}

/// The use-case flows of `examples/demo.toml`, each with its expected verdict.
pub fn use_case_flows(d: &Demo) -> Vec<Flow<'_>> {
    let flow = |label, from, to, v6, kind, expect_pass| Flow {
        label,
        from,
        to,
        v6,
        kind,
        expect_pass,
        decided_on_egress: false,
    };
    let egress = |label, from, to, kind, expect_pass| Flow {
        label,
        from,
        to,
        v6: false,
        kind,
        expect_pass,
        decided_on_egress: true,
    };
    vec![
        flow("1 web: client -> web tcp/80", &d.client, &d.web, false, Kind::Tcp(80), true),
        flow("1 web: client -> web tcp/443", &d.client, &d.web, false, Kind::Tcp(443), true),
        flow("1 web: client -> web tcp/80 (IPv6)", &d.client, &d.web, true, Kind::Tcp(80), true),
        flow("1 web: client -> web tcp/8080", &d.client, &d.web, false, Kind::Tcp(8080), false),
        flow("1 web: client -> web udp/53", &d.client, &d.web, false, Kind::Udp(53), false),
        flow("2 ssh: admin -> web tcp/22", &d.admin, &d.web, false, Kind::Tcp(22), true),
        flow("2 ssh: client -> web tcp/22", &d.client, &d.web, false, Kind::Tcp(22), false),
        flow("3 mysql: web -> db tcp/3306", &d.web, &d.db, false, Kind::Tcp(3306), true),
        flow("3 mysql: app (sg-web) -> db tcp/3306", &d.app, &d.db, false, Kind::Tcp(3306), true),
        flow("3 mysql: app -> db tcp/3306 (IPv6)", &d.app, &d.db, true, Kind::Tcp(3306), true),
        flow("3 mysql: admin -> db tcp/3306", &d.admin, &d.db, false, Kind::Tcp(3306), false),
        flow("4 icmp: client -> web ping", &d.client, &d.web, false, Kind::Ping, true),
        flow("4 icmp: admin -> web ping", &d.admin, &d.web, false, Kind::Ping, false),
        flow("5 ftp: files-a -> files-b tcp/21", &d.files_a, &d.files_b, false, Kind::Tcp(21), true),
        flow("5 ftp: client -> files-b tcp/21", &d.client, &d.files_b, false, Kind::Tcp(21), false),
        egress("6 egress: office -> ext-http tcp/80", &d.office, &d.ext_http, Kind::Tcp(80), true),
        egress("6 egress: office -> ext-tls tcp/443", &d.office, &d.ext_tls, Kind::Tcp(443), true),
        egress("6 egress: office -> ext-http tcp/443", &d.office, &d.ext_http, Kind::Tcp(443), false),
        egress("6 egress: office -> ext-tls tcp/80", &d.office, &d.ext_tls, Kind::Tcp(80), false),
        egress("6 egress: office -> client ping", &d.office, &d.client, Kind::Ping, false),
    ]
}
