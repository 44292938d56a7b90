//! The agent's control API: one JSON request per connection on a Unix socket, one JSON
//! reply, each a single line. Every message carries [`API_VERSION`]; the agent refuses
//! a request of another version rather than guess what it means.
//!
//! The socket is root's alone (mode 0600, and the peer's uid is checked), one per
//! network namespace ([`default_socket`]). Every other subcommand that talks to a
//! running agent (`sgctl apply`, `sgctl confirm`) goes through it.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{control::enforcer::MapFills, paths};

/// The version of the request and reply shapes below.
pub const API_VERSION: u32 = 1;

/// The largest request the agent reads (a rule file travels inside it): 16 MiB.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// The control socket of this network namespace's agent.
pub fn default_socket() -> PathBuf {
    paths::state_dir().join("control.sock")
}

/// What a client asks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Validate and apply a rule file's text (`path` names it in errors and logs). With
    /// `confirm_s`, the agent rolls back to the rules before this apply unless a
    /// [`Op::Confirm`] arrives within that many seconds.
    Apply { path: String, text: String, confirm_s: Option<f64> },
    /// Keep the rules of the apply awaiting confirmation.
    Confirm,
    /// The agent's rule file, generation and pending confirmation.
    Status,
    /// Counters by interface, direction and rule ([`Reply::stats`]).
    Stats,
    /// The verdict events kept, one JSON object a line after the reply line; with
    /// `follow`, the connection stays open and every new event follows.
    Log { follow: bool },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Request {
    pub version: u32,
    #[serde(flatten)]
    pub op: Op,
}

/// What an apply did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ApplyView {
    /// The file the rules came from.
    pub config: String,
    /// The rule-set generation now in force (of the first interface).
    pub generation: u32,
    pub interfaces: Vec<String>,
    pub rules_before: usize,
    pub rules_after: usize,
    pub rule_sets: usize,
    /// Rule sets compiled exactly as the ones in force, left as they were (not written).
    #[serde(default)]
    pub unchanged: usize,
    /// Reading and validating the rule file (the agent's own pass; `sgctl apply` also
    /// validates before sending it). On a large file this is the biggest part.
    #[serde(default)]
    pub parse_ms: f64,
    /// How the file was read: `whole`, `one rule` (the text differs from the one read
    /// before only inside one rule's table, which alone was read again) or `same`.
    #[serde(default)]
    pub read: String,
    pub compile_ms: f64,
    /// Writing the new rule sets beside the old ones and switching to them.
    pub switch_ms: f64,
    /// Map array entries the apply wrote: a rule set written over the ranges of the one
    /// it replaced the time before writes only the entries that differ.
    #[serde(default)]
    pub entries_written: usize,
    /// Deleting the replaced rule sets after the switch.
    pub retire_ms: f64,
    /// Seconds left to `sgctl confirm` before the agent rolls back, for a confirmed apply.
    pub confirm_within_s: Option<f64>,
    /// The pinned generation of programs and maps in force.
    #[serde(default)]
    pub programs_generation: u32,
    /// The rule file outgrew the maps: a new generation with larger ones took over.
    #[serde(default)]
    pub regenerated: bool,
    /// Interfaces this apply attached to, and detached from.
    #[serde(default)]
    pub attached: Vec<String>,
    #[serde(default)]
    pub detached: Vec<String>,
}

impl ApplyView {
    /// The apply from the file's text to the new rules in force: read, compile, write
    /// and switch (not the deletion of the old sets, which happens after).
    pub fn duration_s(&self) -> f64 {
        (self.parse_ms + self.compile_ms + self.switch_ms) / 1000.0
    }
}

/// One held interface, for `Op::Status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HeldView {
    pub iface: String,
    pub ifindex: u32,
    pub xdp_mode: String,
    pub tc: String,
}

/// The agent's state, for `Op::Status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StatusView {
    pub config: String,
    pub generation: u32,
    pub interfaces: Vec<String>,
    pub rules: usize,
    /// Seconds left before an unconfirmed apply is rolled back.
    pub confirm_within_s: Option<f64>,
    /// The pinned generation in force, where it is pinned, and its object.
    #[serde(default)]
    pub programs_generation: u32,
    #[serde(default)]
    pub pin_dir: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub held: Vec<HeldView>,
    #[serde(default)]
    pub session_capacity: u32,
    #[serde(default)]
    pub vector_capacity: u32,
    /// Seconds since the agent started.
    #[serde(default)]
    pub uptime_s: f64,
    /// How full each fixed-size map is (absent when they could not be read).
    #[serde(default)]
    pub maps: Option<MapFills>,
    /// The fallbacks this agent took for what the kernel (or `SGCTL_FALLBACKS=1`) lacks,
    /// one line each; the hooks' own are in `held`.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// The fleet's store, when the rules come from one (`sgctl run --store`).
    #[serde(default)]
    pub store: Option<super::fleet::StoreStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    pub version: u32,
    pub ok: bool,
    /// Why the request failed, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every problem of a rule file that failed validation, as `FILE:LINE:COL: FIELD =
    /// VALUE: MESSAGE`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<ApplyView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<super::observe::StatsView>,
    /// What else happened, for people (e.g. "confirmed", "nothing awaits confirmation").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Reply {
    pub fn failed(error: impl Into<String>) -> Self {
        Self { version: API_VERSION, ok: false, error: Some(error.into()), ..Self::default() }
    }

    pub fn ok() -> Self {
        Self { version: API_VERSION, ok: true, ..Self::default() }
    }
}

/// Why a request did not get a reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no sgctl agent answers on {socket} ({source}); is `sgctl run` running in this network namespace?")]
    Unreachable { socket: String, source: std::io::Error },
    #[error("talking to the agent on {socket}: {source}")]
    Io { socket: String, source: std::io::Error },
    #[error("the agent's reply is not understood: {0}")]
    BadReply(String),
    #[error("the agent speaks API version {0}, this sgctl {API_VERSION}")]
    Version(u32),
}

/// Sends `op` to the agent on `socket` and waits up to `timeout` for its reply.
pub fn call(socket: &Path, op: Op, timeout: Duration) -> Result<Reply, ClientError> {
    Ok(open(socket, op, Some(timeout))?.0)
}

/// Sends `op` and reads the reply line, leaving the rest of the stream (the event lines
/// of [`Op::Log`]) to the caller; `timeout` bounds every read (`None`: none).
pub fn open(socket: &Path, op: Op, timeout: Option<Duration>) -> Result<(Reply, BufReader<UnixStream>), ClientError> {
    let name = socket.display().to_string();
    let io = |source| ClientError::Io { socket: name.clone(), source };
    let mut stream =
        UnixStream::connect(socket).map_err(|source| ClientError::Unreachable { socket: name.clone(), source })?;
    stream.set_read_timeout(timeout).map_err(io)?;
    let mut line =
        serde_json::to_vec(&Request { version: API_VERSION, op }).map_err(|e| ClientError::BadReply(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    stream.shutdown(std::net::Shutdown::Write).map_err(io)?;
    let mut reply = String::new();
    let mut reader = BufReader::new(stream);
    reader.read_line(&mut reply).map_err(io)?;
    let reply: Reply = serde_json::from_str(&reply).map_err(|e| ClientError::BadReply(format!("{e}: {reply:?}")))?;
    if reply.version != API_VERSION {
        return Err(ClientError::Version(reply.version));
    }
    Ok((reply, reader))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_their_version_and_operation_in_one_object() {
        let request = Request {
            version: API_VERSION,
            op: Op::Apply { path: "a.toml".into(), text: "x".into(), confirm_s: Some(60.0) },
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(text, r#"{"version":1,"op":"apply","path":"a.toml","text":"x","confirm_s":60.0}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        let confirm: Request = serde_json::from_str(r#"{"version":1,"op":"confirm"}"#).unwrap();
        assert_eq!(confirm.op, Op::Confirm);
        assert!(serde_json::from_str::<Request>(r#"{"version":1,"op":"format_disk"}"#).is_err());
    }

    #[test]
    fn replies_leave_out_what_they_do_not_carry() {
        assert_eq!(serde_json::to_string(&Reply::failed("no")).unwrap(), r#"{"version":1,"ok":false,"error":"no"}"#);
        let back: Reply = serde_json::from_str(r#"{"version":1,"ok":true}"#).unwrap();
        assert_eq!(back, Reply::ok());
    }
}
