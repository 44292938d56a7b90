//! The sensitive ports `sgctl lint` looks for, in one place.
//!
//! A port is listed when exposing it to the whole Internet (`0.0.0.0/0`, `::/0`) is a
//! known way in: remote administration (the guide's SSH and RDP examples, which it says to
//! open "only from specific IP addresses"), clear-text or file-sharing protocols, and the
//! databases and caches the guide says to keep on instances without Internet access,
//! reachable only from application groups. `Database` entries also drive the "database
//! group that admits the Internet" check.
//!
//! | service | protocol | ports | category | severity |
//! |---|---|---|---|---|
//! | FTP | tcp | 20-21 | file sharing | error |
//! | SSH | tcp | 22 | remote access | warning |
//! | Telnet | tcp | 23 | remote access | error |
//! | TFTP | udp | 69 | file sharing | error |
//! | rpcbind | tcp, udp | 111 | infrastructure | error |
//! | MS RPC | tcp | 135 | infrastructure | error |
//! | NetBIOS | tcp, udp | 137-139 | file sharing | error |
//! | SNMP | udp | 161 | infrastructure | error |
//! | LDAP | tcp, udp | 389 | infrastructure | error |
//! | SMB | tcp | 445 | file sharing | error |
//! | MS SQL Server | tcp | 1433 | database | error |
//! | Oracle | tcp | 1521 | database | error |
//! | NFS | tcp, udp | 2049 | file sharing | error |
//! | ZooKeeper | tcp | 2181 | infrastructure | error |
//! | Docker API | tcp | 2375-2376 | infrastructure | error |
//! | etcd | tcp | 2379-2380 | infrastructure | error |
//! | MySQL / MariaDB | tcp | 3306 | database | error |
//! | RDP | tcp, udp | 3389 | remote access | warning |
//! | PostgreSQL | tcp | 5432 | database | error |
//! | VNC | tcp | 5900 | remote access | warning |
//! | CouchDB | tcp | 5984 | database | error |
//! | Redis | tcp | 6379 | database | error |
//! | Cassandra | tcp | 9042 | database | error |
//! | Elasticsearch | tcp | 9200, 9300 | database | error |
//! | kubelet | tcp | 10250 | infrastructure | error |
//! | Memcached | tcp, udp | 11211 | database | error |
//! | MongoDB | tcp | 27017-27018 | database | error |

use serde::Serialize;

use super::Severity;
use crate::policy::config::Protocol;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    RemoteAccess,
    FileSharing,
    Database,
    Infrastructure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SensitivePort {
    pub service: &'static str,
    pub protocols: &'static [Protocol],
    pub first: u16,
    pub last: u16,
    pub category: Category,
    pub severity: Severity,
}

const TCP: &[Protocol] = &[Protocol::Tcp];
const UDP: &[Protocol] = &[Protocol::Udp];
const BOTH: &[Protocol] = &[Protocol::Tcp, Protocol::Udp];

const fn entry(
    service: &'static str,
    protocols: &'static [Protocol],
    first: u16,
    last: u16,
    category: Category,
    severity: Severity,
) -> SensitivePort {
    SensitivePort { service, protocols, first, last, category, severity }
}

use Category::{Database, FileSharing, Infrastructure, RemoteAccess};
use Severity::{Error, Warning};

/// The table above, in port order.
pub const SENSITIVE_PORTS: &[SensitivePort] = &[
    entry("FTP", TCP, 20, 21, FileSharing, Error),
    entry("SSH", TCP, 22, 22, RemoteAccess, Warning),
    entry("Telnet", TCP, 23, 23, RemoteAccess, Error),
    entry("TFTP", UDP, 69, 69, FileSharing, Error),
    entry("rpcbind", BOTH, 111, 111, Infrastructure, Error),
    entry("MS RPC", TCP, 135, 135, Infrastructure, Error),
    entry("NetBIOS", BOTH, 137, 139, FileSharing, Error),
    entry("SNMP", UDP, 161, 161, Infrastructure, Error),
    entry("LDAP", BOTH, 389, 389, Infrastructure, Error),
    entry("SMB", TCP, 445, 445, FileSharing, Error),
    entry("MS SQL Server", TCP, 1433, 1433, Database, Error),
    entry("Oracle", TCP, 1521, 1521, Database, Error),
    entry("NFS", BOTH, 2049, 2049, FileSharing, Error),
    entry("ZooKeeper", TCP, 2181, 2181, Infrastructure, Error),
    entry("Docker API", TCP, 2375, 2376, Infrastructure, Error),
    entry("etcd", TCP, 2379, 2380, Infrastructure, Error),
    entry("MySQL", TCP, 3306, 3306, Database, Error),
    entry("RDP", BOTH, 3389, 3389, RemoteAccess, Warning),
    entry("PostgreSQL", TCP, 5432, 5432, Database, Error),
    entry("VNC", TCP, 5900, 5900, RemoteAccess, Warning),
    entry("CouchDB", TCP, 5984, 5984, Database, Error),
    entry("Redis", TCP, 6379, 6379, Database, Error),
    entry("Cassandra", TCP, 9042, 9042, Database, Error),
    entry("Elasticsearch", TCP, 9200, 9200, Database, Error),
    entry("Elasticsearch transport", TCP, 9300, 9300, Database, Error),
    entry("kubelet", TCP, 10250, 10250, Infrastructure, Error),
    entry("Memcached", BOTH, 11211, 11211, Database, Error),
    entry("MongoDB", TCP, 27017, 27018, Database, Error),
];

impl SensitivePort {
    /// `SSH 22`, `FTP 20-21`.
    pub fn label(&self) -> String {
        if self.first == self.last {
            format!("{} {}", self.service, self.first)
        } else {
            format!("{} {}-{}", self.service, self.first, self.last)
        }
    }
}
