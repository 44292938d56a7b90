//! What the kernel knows about this network namespace's TCP sockets (netlink
//! sock_diag) and about an interface's addresses (`getifaddrs`).

use std::{
    ffi::CStr,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, TCP_ESTABLISHED, TCP_LISTEN},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

/// The TCP states read: established connections, and listeners (to tell which end
/// opened a connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    Established,
    Listen,
}

/// One TCP socket: its state and its two ends (the remote end of a listener is
/// unspecified). IPv4-mapped IPv6 addresses (a dual-stack socket's IPv4 peers) are given
/// as IPv4, as they are on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub state: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Every established and listening TCP socket, IPv4 and IPv6, of the calling thread's
/// network namespace.
pub fn tcp_sockets() -> io::Result<Vec<TcpSocket>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    let mut found = Vec::new();
    for family in [AF_INET, AF_INET6] {
        dump(&socket, family, &mut found)?;
    }
    Ok(found)
}

/// One `SOCK_DIAG_BY_FAMILY` dump of `family`'s TCP sockets in the two states.
fn dump(socket: &Socket, family: u8, found: &mut Vec<TcpSocket>) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::ESTABLISHED | StateFlags::LISTEN,
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;
    loop {
        let (datagram, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < datagram.len() {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&datagram[offset..])
                .map_err(|e| invalid(format!("sock_diag reply: {e}")))?;
            let length = message.header.length as usize;
            if length == 0 {
                return Err(invalid("sock_diag reply with a zero-length message".into()));
            }
            // Netlink aligns messages to 4 bytes.
            offset += length.div_ceil(4) * 4;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    let h = &response.header;
                    let state = match h.state {
                        TCP_ESTABLISHED => TcpState::Established,
                        TCP_LISTEN => TcpState::Listen,
                        _ => continue,
                    };
                    let id = &h.socket_id;
                    found.push(TcpSocket {
                        state,
                        local: SocketAddr::new(id.source_address.to_canonical(), id.source_port),
                        remote: SocketAddr::new(id.destination_address.to_canonical(), id.destination_port),
                    });
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                _ => {}
            }
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The IPv4 and IPv6 addresses configured on interface `iface`.
pub fn interface_addresses(iface: &str) -> io::Result<Vec<IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `list` receives a list that is freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*entry };
        entry = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name owned by the list.
        if unsafe { CStr::from_ptr(ifa.ifa_name) }.to_bytes() != iface.as_bytes() {
            continue;
        }
        // SAFETY: `ifa_addr` points at a sockaddr of the family it names.
        match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                // SAFETY: an AF_INET sockaddr is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                found.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                found.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
            _ => {}
        }
    }
    // SAFETY: the list getifaddrs returned, not used after this.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    /// The kernel's own socket table: a dual-stack listener and a connection to it over
    /// IPv4 loopback, seen from both ends, the accepted end's IPv4-mapped addresses as
    /// IPv4.
    #[test]
    fn lists_listeners_and_both_ends_of_a_connection() {
        let listener = TcpListener::bind("[::]:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_accepted, _) = listener.accept().unwrap();
        let client_end = client.local_addr().unwrap();
        let server_end: SocketAddr = ([127, 0, 0, 1], port).into();
        let sockets = tcp_sockets().unwrap();
        let has = |state, local, remote| sockets.contains(&TcpSocket { state, local, remote });
        let any: SocketAddr = (Ipv6Addr::UNSPECIFIED, 0).into();
        assert!(has(TcpState::Listen, (Ipv6Addr::UNSPECIFIED, port).into(), any), "{sockets:#?}");
        assert!(has(TcpState::Established, client_end, server_end), "the client's end: {sockets:#?}");
        assert!(has(TcpState::Established, server_end, client_end), "the accepted end: {sockets:#?}");
    }

    #[test]
    fn loopback_has_its_address() {
        let addrs = interface_addresses("lo").unwrap();
        assert!(addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{addrs:?}");
        assert!(interface_addresses("no-such-if0").unwrap().is_empty());
    }
}
