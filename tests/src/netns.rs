//! Labs of test hosts in network namespaces, joined by a bridge in a namespace of its own.
//!
//! Every namespace a lab creates is named `sgt-<pid>-<lab>-<role>`, so tests run in
//! parallel without clashing, and is deleted when the lab is dropped (also while a test
//! panics). Namespaces left by a killed test process (its pid gone) are removed when the
//! next lab starts. Hosts get addresses from 198.18.0.0/15 and 2001:db8::/64, static
//! neighbour entries for each other, and no default route: nothing leaves the lab.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};

const PREFIX: &str = "sgt";
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS` and fails with its stderr.
pub fn ip(args: &[&str]) -> Result<Output> {
    run("ip", args)
}

/// Runs a command and fails with its stderr when it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("`{program} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// One test host: a namespace with one or more interfaces on the lab's bridge.
#[derive(Clone, Debug)]
pub struct Host {
    pub role: String,
    pub ns: String,
    pub iface: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub mac: String,
}

impl Host {
    /// Runs `program args` inside this host's namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, program]);
        cmd
    }

    /// Runs `program args` inside the namespace, failing on a non-zero exit.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        let mut all = vec!["netns", "exec", &self.ns, program];
        all.extend_from_slice(args);
        ip(&all)
    }

    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 { IpAddr::V6(self.ipv6) } else { IpAddr::V4(self.ipv4) }
    }
}

/// Makes the lab's bridge a plain switch: where `br_netfilter` is loaded (Docker loads
/// it), every bridged frame otherwise goes through the switch namespace's iptables
/// hooks, which no test configures and which cost the sender more than the filter
/// under test (a fifth of a veth-to-veth frame's time in the event-rate benchmark).
/// The sysctls are per namespace; where the module is absent they do not exist and
/// there is nothing to turn off.
fn switch_without_netfilter(switch_ns: &str) {
    let script = "for f in /proc/sys/net/bridge/bridge-nf-call-*; do [ ! -e \"$f\" ] || echo 0 > \"$f\"; done";
    let _ = Command::new("ip").args(["netns", "exec", switch_ns, "sh", "-c", script]).output();
}

/// A set of hosts on one bridge; dropping it deletes every namespace it made.
pub struct Lab {
    id: String,
    switch_ns: String,
    namespaces: Vec<String>,
    hosts: Vec<Host>,
    ports: u32,
}

impl Lab {
    /// Creates the bridge namespace. `tag` only makes names easier to read.
    pub fn new(tag: &str) -> Result<Self> {
        remove_stale_namespaces();
        let pid = std::process::id();
        let lab = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}-{pid}-{lab}");
        let switch_ns = format!("{id}-{tag}-sw");
        let mut this = Self { id, switch_ns: switch_ns.clone(), namespaces: Vec::new(), hosts: Vec::new(), ports: 0 };
        ip(&["netns", "add", &switch_ns])?;
        this.namespaces.push(switch_ns.clone());
        ip(&["-n", &switch_ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch_ns, "link", "set", "br0", "up"])?;
        switch_without_netfilter(&switch_ns);
        Ok(this)
    }

    /// Adds a host `role` with one interface `eth0` on the bridge.
    pub fn add_host(&mut self, role: &str, ipv4: Ipv4Addr, ipv6: Ipv6Addr) -> Result<Host> {
        self.add_host_on(role, "eth0", ipv4, ipv6)
    }

    /// Adds a host `role` whose interface on the bridge is named `iface`.
    pub fn add_host_on(&mut self, role: &str, iface: &str, ipv4: Ipv4Addr, ipv6: Ipv6Addr) -> Result<Host> {
        let ns = format!("{}-{role}", self.id);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let host = self.add_interface_to(role, &ns, iface, ipv4, ipv6)?;
        self.hosts.push(host.clone());
        Ok(host)
    }

    /// Adds an empty namespace `role` off the bridge (deleted with the lab), for what
    /// must not sit on the tested network, such as the fleet's store.
    pub fn add_namespace(&mut self, role: &str) -> Result<String> {
        let ns = format!("{}-{role}", self.id);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Adds another interface `iface` to an existing host's namespace, on the same bridge.
    pub fn add_interface(&mut self, host: &Host, iface: &str, ipv4: Ipv4Addr, ipv6: Ipv6Addr) -> Result<Host> {
        let extra = self.add_interface_to(&host.role, &host.ns, iface, ipv4, ipv6)?;
        self.hosts.push(extra.clone());
        Ok(extra)
    }

    fn add_interface_to(&mut self, role: &str, ns: &str, iface: &str, ipv4: Ipv4Addr, ipv6: Ipv6Addr) -> Result<Host> {
        self.ports += 1;
        let port = format!("p{}", self.ports);
        let mac = format!(
            "02:5e:{:02x}:{:02x}:00:{:02x}",
            std::process::id() % 256,
            NEXT_LAB.load(Ordering::Relaxed) % 256,
            self.ports
        );
        let sw = &self.switch_ns;
        ip(&["-n", sw, "link", "add", &port, "type", "veth", "peer", "name", iface, "netns", ns])?;
        ip(&["-n", sw, "link", "set", &port, "master", "br0", "up"])?;
        ip(&["-n", ns, "link", "set", iface, "address", &mac])?;
        ip(&["-n", ns, "addr", "add", &format!("{ipv4}/15"), "dev", iface])?;
        ip(&["-n", ns, "addr", "add", &format!("{ipv6}/64"), "dev", iface, "nodad"])?;
        ip(&["-n", ns, "link", "set", iface, "up"])?;
        Ok(Host { role: role.to_string(), ns: ns.to_string(), iface: iface.to_string(), ipv4, ipv6, mac })
    }

    /// Installs static neighbour entries so no ARP/ND is needed between hosts.
    pub fn resolve_neighbours(&self) -> Result<()> {
        for host in &self.hosts {
            for other in self.hosts.iter().filter(|o| o.ns != host.ns) {
                for addr in [other.ipv4.to_string(), other.ipv6.to_string()] {
                    ip(&[
                        "-n",
                        &host.ns,
                        "neigh",
                        "replace",
                        &addr,
                        "lladdr",
                        &other.mac,
                        "dev",
                        &host.iface,
                        "nud",
                        "permanent",
                    ])?;
                }
            }
        }
        Ok(())
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// The namespaces this process's labs created (`sgt-<own pid>-...`), for cleaning up
/// from a signal handler that holds no [`Lab`].
pub fn own_namespaces() -> Vec<String> {
    let mine = format!("{PREFIX}-{}-", std::process::id());
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(&mine))
        .map(str::to_string)
        .collect()
}

/// Deletes `sgt-<pid>-...` namespaces whose process no longer exists.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let mut parts = name.splitn(3, '-');
        if parts.next() != Some(PREFIX) {
            continue;
        }
        let Some(pid) = parts.next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        // SAFETY: signal 0 only probes whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// The two-host lab most session tests use: an instance `inst` (NIC `inst0`,
/// 198.18.1.1 and 2001:db8::1:1) and an outside host `out` (198.18.0.1, 2001:db8::1),
/// neighbours resolved.
pub fn instance_and_outside(tag: &str) -> Result<(Lab, Host, Host)> {
    let mut lab = Lab::new(tag)?;
    let inst = lab.add_host_on("inst", "inst0", Ipv4Addr::new(198, 18, 1, 1), "2001:db8::1:1".parse()?)?;
    let out = lab.add_host("out", Ipv4Addr::new(198, 18, 0, 1), "2001:db8::1".parse()?)?;
    lab.resolve_neighbours()?;
    Ok((lab, inst, out))
}
