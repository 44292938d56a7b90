//! A real etcd for fleet tests, in a namespace of its own, with a management network to
//! the lab's hosts that stays off the tested interfaces.
//!
//! The store's namespace holds a bridge `mbr0` at [`STORE_ADDR`]; each host joined with
//! [`Etcd::join`] gets a veth `mgmt0` on it (198.19.255.N/24, off the lab's /15 by a more
//! specific route). etcd is Debian's `etcd-server`, with its data in a directory removed
//! on drop; it can be stopped and started again on the same data.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::netns::{Host, Lab, ip};

/// The store's address on the management network.
pub const STORE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);
const CLIENT_PORT: u16 = 2379;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One etcd member, stopped (SIGKILL) and its data removed on drop.
pub struct Etcd {
    ns: String,
    data: PathBuf,
    child: Option<Child>,
    joined: u32,
}

impl Etcd {
    /// Creates the store's namespace and management bridge in `lab`, and starts etcd.
    pub fn start(lab: &mut Lab) -> Result<Self> {
        let ns = lab.add_namespace("etcd")?;
        ip(&["-n", &ns, "link", "add", "mbr0", "type", "bridge"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{STORE_ADDR}/24"), "dev", "mbr0"])?;
        ip(&["-n", &ns, "link", "set", "mbr0", "up"])?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let data = std::env::temp_dir().join(format!("sgt-etcd-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let mut etcd = Self { ns, data, child: None, joined: 0 };
        etcd.resume()?;
        Ok(etcd)
    }

    /// `etcd://198.19.255.1:2379`
    pub fn url(&self) -> String {
        format!("etcd://{STORE_ADDR}:{CLIENT_PORT}")
    }

    /// The store's namespace.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// etcd's process id while it runs (`ip netns exec` execs it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Gives `host` a management interface on the store's bridge.
    pub fn join(&mut self, host: &Host) -> Result<()> {
        self.joined += 1;
        let n = self.joined;
        let port = format!("m{n}");
        ip(&["-n", &self.ns, "link", "add", &port, "type", "veth", "peer", "name", "mgmt0", "netns", &host.ns])?;
        ip(&["-n", &self.ns, "link", "set", &port, "master", "mbr0", "up"])?;
        ip(&["-n", &host.ns, "addr", "add", &format!("198.19.255.{}/24", n + 1), "dev", "mgmt0"])?;
        ip(&["-n", &host.ns, "link", "set", "mgmt0", "up"])?;
        Ok(())
    }

    /// Starts etcd (again) on its data directory and waits until it accepts connections.
    pub fn resume(&mut self) -> Result<()> {
        let client = format!("http://{STORE_ADDR}:{CLIENT_PORT}");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "etcd", "--name", "sgt", "--data-dir"])
            .arg(&self.data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "sgt=http://127.0.0.1:2380",
                // A push writes every changed group in one transaction.
                "--max-txn-ops",
                "4096",
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let target = SocketAddr::from((STORE_ADDR, CLIENT_PORT));
        while Instant::now() < deadline {
            let up = crate::traffic::in_netns(&self.ns, move || {
                Ok(TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok())
            })?;
            if up {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("etcd exited at start ({status})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("etcd did not accept connections within 20 s")
    }

    /// Stops etcd (SIGKILL, as a crash), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` execs etcd, so the child is etcd itself.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
