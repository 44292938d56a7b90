//! Real traffic between lab hosts: TCP and UDP echo servers and probes on real sockets
//! (in a thread that has entered the host's namespace), and `ping`.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::netns::Host;

/// Runs `f` on a fresh thread that has entered namespace `ns`, and returns its result.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        enter_netns(&path)?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("thread in {ns} panicked"))?
}

fn enter_netns(path: &str) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: a valid namespace fd; setns only affects the calling thread for CLONE_NEWNET.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// An echo server running in a host's namespace until dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Host {
    /// Starts a TCP or UDP echo server on `[::]:port` (IPv4 and IPv6).
    pub fn serve(&self, proto: Proto, port: u16) -> Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let path = format!("/run/netns/{}", self.ns);
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let setup = enter_netns(&path);
            if let Err(e) = setup {
                let _ = ready_tx.send(Err(e));
                return;
            }
            let addr: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, port).into();
            match proto {
                Proto::Tcp => match TcpListener::bind(addr) {
                    Ok(listener) => {
                        let _ = ready_tx.send(Ok(()));
                        tcp_echo_loop(listener, &flag);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("bind tcp {port}: {e}")));
                    }
                },
                Proto::Udp => match UdpSocket::bind(addr) {
                    Ok(socket) => {
                        let _ = ready_tx.send(Ok(()));
                        udp_echo_loop(socket, &flag);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("bind udp {port}: {e}")));
                    }
                },
            }
        });
        ready_rx.recv().map_err(|_| anyhow!("server thread died"))??;
        Ok(Server { stop, thread: Some(thread) })
    }

    /// Connects (TCP) or sends (UDP) to `dst:port` and waits for the echo.
    /// `Ok(())` when the echo came back within `timeout`.
    pub fn probe(&self, proto: Proto, dst: IpAddr, port: u16, timeout: Duration) -> Result<()> {
        let to = SocketAddr::new(dst, port);
        in_netns(&self.ns, move || match proto {
            Proto::Tcp => tcp_probe(to, timeout),
            Proto::Udp => udp_probe(to, timeout),
        })
    }

    /// Sends one ping to `dst` and reports whether the reply came back within a second.
    pub fn ping(&self, dst: IpAddr) -> bool {
        self.command("ping")
            .args(["-c", "1", "-W", "1", "-n", "-q", &dst.to_string()])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

fn tcp_echo_loop(listener: TcpListener, stop: &AtomicBool) {
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn udp_echo_loop(socket: UdpSocket, stop: &AtomicBool) {
    let _ = socket.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    }
}

const PAYLOAD: &[u8] = b"sgctl-probe";

fn tcp_probe(to: SocketAddr, timeout: Duration) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&to, timeout).with_context(|| format!("tcp connect {to}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(PAYLOAD)?;
    let mut buf = [0u8; PAYLOAD.len()];
    stream.read_exact(&mut buf).with_context(|| format!("tcp echo from {to}"))?;
    if buf != PAYLOAD {
        bail!("tcp echo from {to} garbled");
    }
    Ok(())
}

/// Sends a datagram of `size` bytes and waits for the same back.
pub fn udp_exchange(to: SocketAddr, size: usize, timeout: Duration) -> Result<()> {
    let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let socket = UdpSocket::bind(bind)?;
    socket.set_read_timeout(Some(timeout))?;
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    socket.send_to(&payload, to)?;
    let mut buf = vec![0u8; size.max(1) + 16];
    let (n, _) = socket.recv_from(&mut buf).with_context(|| format!("udp echo from {to}"))?;
    if buf[..n] != payload[..] {
        bail!("udp echo from {to} garbled");
    }
    Ok(())
}

fn udp_probe(to: SocketAddr, timeout: Duration) -> Result<()> {
    udp_exchange(to, PAYLOAD.len(), timeout)
}
