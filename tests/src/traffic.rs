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

    /// Whether a TCP connection or UDP exchange with `dst:port` gets through: a refused
    /// connection counts as through (the packets crossed), only silence counts as dropped.
    pub fn reaches(&self, proto: Proto, dst: IpAddr, port: u16, timeout: Duration) -> bool {
        let to = SocketAddr::new(dst, port);
        in_netns(&self.ns, move || {
            Ok(match proto {
                Proto::Tcp => match TcpStream::connect_timeout(&to, timeout) {
                    Ok(_) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
                },
                Proto::Udp => udp_probe(to, timeout).is_ok(),
            })
        })
        .unwrap_or(false)
    }

    /// Sends one ping to `dst` and reports whether the reply came back within a second.
    pub fn ping(&self, dst: IpAddr) -> bool {
        self.command("ping")
            .args(["-c", "1", "-W", "1", "-n", "-q", &dst.to_string()])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

/// Counts UDP datagrams arriving on a port: observes one-way traffic, which needs no
/// reply to come back.
pub struct Sink {
    received: Arc<std::sync::atomic::AtomicUsize>,
    _server: Server,
}

impl Sink {
    pub fn count(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` for the count to exceed `before`.
    pub fn grew_from(&self, before: usize, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.count() > before {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Host {
    /// Sends each of `frames` as it is (Ethernet header included, the source and
    /// destination MACs overwritten with this host's and `to_mac`) out of this host's
    /// interface through an `AF_PACKET` socket: crafted packets, spoofed addresses and
    /// all, that no socket of the host's stack would send.
    pub fn send_frames(&self, to_mac: &str, frames: &[Vec<u8>]) -> Result<()> {
        let mac = |text: &str| -> Result<[u8; 6]> {
            let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>()?;
            bytes.try_into().map_err(|_| anyhow!("not a MAC address: {text}"))
        };
        let (dst, src) = (mac(to_mac)?, mac(&self.mac)?);
        let frames: Vec<Vec<u8>> = frames
            .iter()
            .map(|f| {
                let mut f = f.clone();
                f[0..6].copy_from_slice(&dst);
                f[6..12].copy_from_slice(&src);
                f
            })
            .collect();
        let iface = std::ffi::CString::new(self.iface.clone())?;
        in_netns(&self.ns, move || {
            // SAFETY: plain socket calls on a socket this closure owns; the address and
            // buffers outlive each call.
            unsafe {
                let ifindex = libc::if_nametoindex(iface.as_ptr());
                if ifindex == 0 {
                    bail!("no interface {iface:?}: {}", std::io::Error::last_os_error());
                }
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                if fd < 0 {
                    bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
                }
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_ifindex = ifindex as i32;
                addr.sll_halen = 6;
                addr.sll_addr[..6].copy_from_slice(&dst);
                let mut result = Ok(());
                for f in &frames {
                    let sent = libc::sendto(
                        fd,
                        f.as_ptr().cast(),
                        f.len(),
                        0,
                        (&raw const addr).cast(),
                        size_of::<libc::sockaddr_ll>() as u32,
                    );
                    if sent < 0 {
                        result = Err(anyhow!("sendto: {}", std::io::Error::last_os_error()));
                        break;
                    }
                }
                libc::close(fd);
                result
            }
        })
    }

    /// Opens a TCP connection to `dst:port` (an echo server) that stays open.
    pub fn connect(&self, dst: IpAddr, port: u16, timeout: Duration) -> Result<TcpStream> {
        let to = SocketAddr::new(dst, port);
        in_netns(&self.ns, move || {
            let stream = TcpStream::connect_timeout(&to, timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            Ok(stream)
        })
    }

    /// Starts a UDP sink on `[::]:port`.
    pub fn sink(&self, port: u16) -> Result<Sink> {
        let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let path = format!("/run/netns/{}", self.ns);
        let (flag, count) = (stop.clone(), received.clone());
        let thread = thread::spawn(move || {
            let socket = enter_netns(&path).and_then(|()| bind_udp_retrying(port));
            match socket {
                Ok(socket) => {
                    let _ = ready_tx.send(Ok(()));
                    let _ = socket.set_read_timeout(Some(Duration::from_millis(50)));
                    let mut buf = [0u8; 2048];
                    while !flag.load(Ordering::Relaxed) {
                        if socket.recv_from(&mut buf).is_ok() {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        ready_rx.recv().map_err(|_| anyhow!("sink thread died"))??;
        Ok(Sink { received, _server: Server { stop, thread: Some(thread) } })
    }

    /// Sends one UDP datagram to `dst:port` (no reply expected).
    pub fn send_udp(&self, dst: IpAddr, port: u16) -> Result<()> {
        in_netns(&self.ns, move || {
            let bind: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
            UdpSocket::bind(bind)?.send_to(b"one-way", SocketAddr::new(dst, port))?;
            Ok(())
        })
    }

    /// Sends one UDP datagram of `size` bytes from local port `src_port` (no reply
    /// expected).
    pub fn send_udp_from(&self, src_port: u16, dst: IpAddr, port: u16, size: usize) -> Result<()> {
        in_netns(&self.ns, move || {
            let bind: SocketAddr = if dst.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, src_port).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, src_port).into()
            };
            let payload = vec![0x5a; size];
            UdpSocket::bind(bind)?.send_to(&payload, SocketAddr::new(dst, port))?;
            Ok(())
        })
    }

    /// Sends one echo request with identifier `id` to `dst` from a raw ICMP or ICMPv6
    /// socket (so the identifier is the caller's, not the kernel's) and reports whether
    /// `dst`'s reply with that identifier and sequence came back within a second.
    pub fn ping_with_id(&self, dst: IpAddr, id: u16) -> Result<bool> {
        in_netns(&self.ns, move || raw_ping(dst, id, Duration::from_secs(1)))
    }

    /// Whether a one-way datagram from this host reaches `sink` on `to`.
    pub fn delivers(&self, sink: &Sink, dst: IpAddr, port: u16) -> bool {
        let before = sink.count();
        self.send_udp(dst, port).is_ok() && sink.grew_from(before, Duration::from_millis(800))
    }
}

/// Binds `[::]:port`, retrying for a second while the port is reported in use: right
/// after `send_udp_from` closed its socket on the port, a bind failed once with
/// EADDRINUSE on the loaded CI machine (cause not found).
fn bind_udp_retrying(port: u16) -> Result<UdpSocket> {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        match UdpSocket::bind(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            other => return other.with_context(|| format!("binding UDP port {port}")),
        }
    }
}

/// Sends `message` on an open stream and waits for its echo; false on silence.
pub fn echo_over(stream: &mut TcpStream, message: &[u8]) -> bool {
    if stream.write_all(message).is_err() {
        return false;
    }
    let mut buf = vec![0u8; message.len()];
    stream.read_exact(&mut buf).is_ok() && buf == message
}

fn tcp_echo_loop(listener: TcpListener, stop: &AtomicBool) {
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    // Long enough for an idle connection to outlive an apply that loads new programs
                    // (verifying both takes seconds on a busy machine).
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
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

/// The Internet checksum of `data` (RFC 1071).
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// See [`Host::ping_with_id`]; runs in the caller's namespace.
fn raw_ping(dst: IpAddr, id: u16, timeout: Duration) -> Result<bool> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let (domain, protocol, request, reply) = match dst {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128, 129),
    };
    // SAFETY: plain socket(2); the fd is owned below.
    let raw = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
    if raw < 0 {
        bail!("raw ICMP socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let sequence = (std::process::id() as u16) ^ (clock.subsec_nanos() >> 10) as u16;
    let mut packet = vec![request, 0, 0, 0];
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(b"sgctl raw ping");
    if dst.is_ipv4() {
        // ICMPv6 raw sockets checksum for us (they know the pseudo-header); ICMP's
        // checksum covers the message alone.
        let sum = internet_checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    // SAFETY: zeroed sockaddr_storage is a valid value; filled per family below.
    let mut to: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match dst {
        IpAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut to).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut to).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    let tick = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    // SAFETY: valid fd, option and pointers with their sizes.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tick).cast(),
            size_of::<libc::timeval>() as u32,
        );
        if libc::sendto(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len(), 0, (&raw const to).cast(), len as u32) < 0
        {
            let error = std::io::Error::last_os_error();
            // A TC egress drop reaches a raw socket's sender as ENOBUFS: the request did
            // not leave, so no reply can come.
            if error.raw_os_error() == Some(libc::ENOBUFS) {
                return Ok(false);
            }
            bail!("sendto {dst}: {error}");
        }
    }
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while std::time::Instant::now() < deadline {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else { continue };
        // IPv4 raw sockets deliver the IP header too; IPv6 ones only the ICMPv6 message.
        let (from, message) = if dst.is_ipv4() {
            let header = usize::from(buf[0] & 0x0f) * 4;
            if n < header + 8 {
                continue;
            }
            (IpAddr::from([buf[12], buf[13], buf[14], buf[15]]), &buf[header..n])
        } else {
            if n < 8 {
                continue;
            }
            // An ICMPv6 socket reports no source here; the identifier and a fresh
            // sequence number tie the reply to this request.
            (dst, &buf[..n])
        };
        let answers = message[0] == reply
            && message[4..6] == id.to_be_bytes()
            && message[6..8] == sequence.to_be_bytes()
            && from == dst;
        if answers {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Numbered UDP datagrams sent at a steady rate from a host to an echo server, with
/// every echo counted: what a change must neither lose nor delay past the end.
pub struct EchoStream {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<StreamCount>>>,
}

/// What an [`EchoStream`] or a [`Flood`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCount {
    pub sent: u64,
    pub echoed: u64,
}

impl EchoStream {
    /// Stops sending, waits a moment for the last echoes, and returns the counts.
    pub fn finish(mut self) -> Result<StreamCount> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().expect("joined once").join().map_err(|_| anyhow!("stream thread panicked"))?
    }
}

impl Drop for EchoStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One-way datagrams at a steady rate (what a receiver's sink must never count when
/// the rules drop them).
pub struct Flood(EchoStream);

impl Flood {
    pub fn finish(self) -> Result<u64> {
        Ok(self.0.finish()?.sent)
    }
}

impl Host {
    /// Starts sending numbered datagrams to the echo server at `to`, `rate` a second.
    pub fn echo_stream(&self, to: SocketAddr, rate: u32) -> Result<EchoStream> {
        self.udp_stream(to, rate, true)
    }

    /// Starts sending datagrams to `to`, `rate` a second, expecting nothing back.
    pub fn flood(&self, to: SocketAddr, rate: u32) -> Result<Flood> {
        self.udp_stream(to, rate, false).map(Flood)
    }

    fn udp_stream(&self, to: SocketAddr, rate: u32, echoes: bool) -> Result<EchoStream> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let path = format!("/run/netns/{}", self.ns);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let thread = thread::spawn(move || -> Result<StreamCount> {
            let socket = enter_netns(&path).and_then(|()| {
                let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
                Ok(UdpSocket::bind(bind)?)
            });
            let socket = match socket {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            socket.set_nonblocking(true)?;
            let period = Duration::from_secs(1) / rate.max(1);
            let mut seen = std::collections::HashSet::new();
            let mut sent = 0u64;
            let mut buf = [0u8; 128];
            let mut next = std::time::Instant::now();
            let mut drain = |seen: &mut std::collections::HashSet<u64>| {
                while let Ok((n, _)) = socket.recv_from(&mut buf) {
                    if n >= 8 {
                        seen.insert(u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")));
                    }
                }
            };
            while !flag.load(Ordering::Relaxed) {
                let mut payload = [0u8; 64];
                payload[..8].copy_from_slice(&sent.to_le_bytes());
                // A full socket buffer is the sender's loss, not the network's: retry.
                while socket.send_to(&payload, to).is_err() && !flag.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(1));
                }
                sent += 1;
                if echoes {
                    drain(&mut seen);
                }
                next += period;
                thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
            }
            let end = std::time::Instant::now() + Duration::from_millis(if echoes { 800 } else { 0 });
            while echoes && std::time::Instant::now() < end {
                drain(&mut seen);
                thread::sleep(Duration::from_millis(5));
            }
            Ok(StreamCount { sent, echoed: seen.len() as u64 })
        });
        ready_rx.recv().map_err(|_| anyhow!("stream thread died"))??;
        Ok(EchoStream { stop, thread: Some(thread) })
    }
}
