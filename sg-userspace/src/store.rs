//! The fleet's store: etcd, through the `etcd-client` crate (gRPC).
//!
//! Reads the keyspace of [`crate::policy::fleet`] as a snapshot at one revision, pushes a
//! rule file in one transaction, and lists members. The agent's side (lease, registration,
//! watch) is `crate::agent::fleet`; both use this module's connection and snapshot.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Txn, TxnOp};

use crate::policy::fleet::{self, FleetError, Items, Key, PREFIX, Snapshot};

/// How long a connection attempt and each request may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0:?}: not a store address; write etcd://HOST:PORT[,HOST:PORT...]")]
    Url(String),
    /// The cause is in the message rather than a `source`, so that one line says it all
    /// both where errors are printed plainly and where their chain is.
    #[error("etcd at {endpoints}: {cause}")]
    Etcd { endpoints: String, cause: etcd_client::Error },
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(
        "the store changed while this push was prepared (another push at revision {0}); nothing was written, push again"
    )]
    Raced(i64),
}

/// Where the store is: `etcd://HOST:PORT[,HOST:PORT...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    endpoints: Vec<String>,
}

impl std::str::FromStr for StoreUrl {
    type Err = StoreError;

    fn from_str(text: &str) -> Result<Self, StoreError> {
        let rest = text.strip_prefix("etcd://").ok_or_else(|| StoreError::Url(text.to_string()))?;
        let endpoints: Vec<String> = rest.trim_end_matches('/').split(',').map(|e| format!("http://{e}")).collect();
        let valid = |e: &str| {
            let host_port = e.trim_start_matches("http://");
            host_port.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        };
        if endpoints.is_empty() || !endpoints.iter().all(|e| valid(e)) {
            return Err(StoreError::Url(text.to_string()));
        }
        Ok(Self { endpoints })
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<&str> = self.endpoints.iter().map(|e| e.trim_start_matches("http://")).collect();
        write!(f, "etcd://{}", hosts.join(","))
    }
}

/// A connection to the store.
pub struct Store {
    url: StoreUrl,
    client: Client,
}

/// The keyspace at one revision.
#[derive(Debug, Clone, Default)]
pub struct Read {
    pub snapshot: Snapshot,
    pub revision: i64,
    /// The revision the `pushed` key was last written at (0: never pushed).
    pub pushed_at: i64,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub revision: i64,
    pub written: usize,
    pub deleted: usize,
    pub unchanged: usize,
}

impl Store {
    pub async fn connect(url: &StoreUrl) -> Result<Self, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let client = Client::connect(&url.endpoints, Some(options)).await.map_err(|e| url.error(e))?;
        Ok(Self { url: url.clone(), client })
    }

    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// The client, for the agent's lease and watch.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// An etcd error, with where the store is.
    pub fn error(&self, source: etcd_client::Error) -> StoreError {
        self.url.error(source)
    }

    /// Every key under [`PREFIX`] at the current revision.
    pub async fn read(&mut self) -> Result<Read, StoreError> {
        let response =
            self.client.get(PREFIX, Some(GetOptions::new().with_prefix())).await.map_err(|e| self.url.error(e))?;
        let revision = response.header().map_or(0, |h| h.revision());
        let mut read = Read { revision, ..Read::default() };
        for kv in response.kvs() {
            let (Ok(key), Ok(value)) = (kv.key_str(), kv.value_str()) else { continue };
            let Some(relative) = key.strip_prefix(PREFIX) else { continue };
            if relative == Key::Pushed.path() {
                read.pushed_at = kv.mod_revision();
            }
            read.snapshot.insert(relative.to_string(), value.to_string());
        }
        Ok(read)
    }

    /// Writes `items` in one transaction: the shared definitions replaced, and with `host`
    /// that host's bindings. Refused before anything is written when any host's composed
    /// rules would not validate, or when another push lands in between.
    pub async fn push(&mut self, items: &Items, host: Option<&str>, source: &str) -> Result<Pushed, StoreError> {
        let read = self.read().await?;
        let after = fleet::after_push(&read.snapshot, items, host);
        for each in fleet::hosts(&after) {
            fleet::compose(&after, &each)?;
        }
        let mut ops = Vec::new();
        let (mut written, mut deleted, mut unchanged) = (0, 0, 0);
        for key in read.snapshot.keys().filter(|k| !after.contains_key(*k)) {
            ops.push(TxnOp::delete(format!("{PREFIX}{key}"), None::<DeleteOptions>));
            deleted += 1;
        }
        for (key, value) in &after {
            if read.snapshot.get(key) == Some(value) {
                unchanged += usize::from(!matches!(Key::parse(key), Some(Key::Member { .. })));
                continue;
            }
            ops.push(TxnOp::put(format!("{PREFIX}{key}"), value.as_str(), None));
            written += 1;
        }
        let record = serde_json::json!({ "source": source, "host": host }).to_string();
        ops.push(TxnOp::put(format!("{PREFIX}{}", Key::Pushed.path()), record, None));
        let guard = Compare::mod_revision(format!("{PREFIX}{}", Key::Pushed.path()), CompareOp::Equal, read.pushed_at);
        let response = self.client.txn(Txn::new().when([guard]).and_then(ops)).await.map_err(|e| self.url.error(e))?;
        if !response.succeeded() {
            return Err(StoreError::Raced(read.pushed_at));
        }
        let revision = response.header().map_or(0, |h| h.revision());
        Ok(Pushed { revision, written, deleted, unchanged })
    }
}

impl StoreUrl {
    fn error(&self, source: etcd_client::Error) -> StoreError {
        StoreError::Etcd { endpoints: self.to_string(), cause: source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        let url: StoreUrl = "etcd://198.18.250.1:2379".parse().unwrap();
        assert_eq!(url.endpoints, ["http://198.18.250.1:2379"]);
        assert_eq!(url.to_string(), "etcd://198.18.250.1:2379");
        let two: StoreUrl = "etcd://a:1,b:2".parse().unwrap();
        assert_eq!(two.endpoints.len(), 2);
        for bad in ["http://a:1", "etcd://", "etcd://a", "etcd://a:x", "etcd://:1"] {
            assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
        }
    }
}
