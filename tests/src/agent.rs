//! Running the real `sgctl` binary inside a lab host's namespace.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};

use crate::{kernel::sgctl_bin, netns::Host};

/// A long-running `sgctl` (attach or run) in a namespace; stopped with SIGTERM on drop.
///
/// Started with [`Agent::start`] it runs under `ip netns exec`, whose fresh /sys carries
/// no BPF filesystem: the agent mounts a private one and its pins die with it. Started
/// with [`Agent::start_pinned`] (`sgctl --netns NS`) it keeps the host's mount namespace,
/// so what it pins outlives it and the next agent of that namespace can adopt it.
pub struct Agent {
    child: Option<Child>,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

/// Runs `sgctl ARGS` to completion inside `host`'s namespace.
pub fn sgctl(host: &Host, args: &[&str]) -> std::process::Output {
    Command::new("ip").args(["netns", "exec", &host.ns]).arg(sgctl_bin()).args(args).output().expect("spawning sgctl")
}

/// `BIN --netns NS ARGS`: sgctl enters `host`'s network namespace itself and keeps the
/// test's mount namespace, so its pins on the host's BPF filesystem outlive it (under
/// `ip netns exec` they die with the command).
pub fn pinned_command(bin: &Path, host: &Host, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["--netns", &host.ns]).args(args);
    cmd
}

/// Runs `cmd` to completion, but for at most `limit`: a command that should refuse and
/// exit and instead runs on (an agent that accepted what it should not) is killed, and
/// the test fails with what it printed, rather than hanging the run.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<std::process::Output> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let said = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            bail!("still running after {limit:?}, killed; it said: {said}");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(std::process::Output { status, stdout, stderr })
}

/// Runs `sgctl --netns NS ARGS` to completion.
pub fn sgctl_pinned(host: &Host, args: &[&str]) -> std::process::Output {
    pinned_command(&sgctl_bin(), host, args).output().expect("spawning sgctl")
}

impl Agent {
    /// Starts `sgctl ARGS` under `ip netns exec` in `host`'s namespace and waits until it
    /// prints a line containing `ready` (or fails if it exits first).
    pub fn start(host: &Host, args: &[&str], ready: &str) -> Result<Self> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &host.ns]).arg(sgctl_bin()).args(args);
        Self::spawn(cmd, ready)
    }

    /// [`Agent::start`] with extra environment variables for sgctl.
    pub fn start_with_env(host: &Host, args: &[&str], env: &[(&str, &str)], ready: &str) -> Result<Self> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &host.ns]).arg(sgctl_bin()).args(args).envs(env.iter().copied());
        Self::spawn(cmd, ready)
    }

    /// Starts `BIN --netns NS ARGS` (see [`pinned_command`]) and waits for `ready`.
    pub fn start_pinned(bin: &Path, host: &Host, args: &[&str], ready: &str) -> Result<Self> {
        Self::spawn(pinned_command(bin, host, args), ready)
    }

    fn spawn(mut cmd: Command, ready: &str) -> Result<Self> {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let (tx, lines) = mpsc::channel();
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        // Only the reader threads hold senders now, so the channel closes when sgctl exits.
        drop(tx);
        let mut agent = Self { child: Some(child), lines, seen: Vec::new() };
        agent.wait_for(ready, Duration::from_secs(60))?;
        Ok(agent)
    }

    /// Waits for an output line containing `text`; returns it.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return Ok(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    bail!("sgctl exited ({status:?}) before printing {text:?}; output:\n{}", self.seen.join("\n"));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if Instant::now() >= deadline {
                        bail!("timed out waiting for {text:?}; output:\n{}", self.seen.join("\n"));
                    }
                }
            }
        }
    }

    /// The newest line containing `text`: drains what is queued, else waits for one.
    pub fn latest(&mut self, text: &str, timeout: Duration) -> Result<String> {
        let mut newest = None;
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line.clone());
            if line.contains(text) {
                newest = Some(line);
            }
        }
        match newest {
            Some(line) => Ok(line),
            None => self.wait_for(text, timeout),
        }
    }

    /// Sends `signal` without waiting for an exit (e.g. SIGHUP to reload).
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` and waits for the process to exit; returns its output lines.
    pub fn stop_with(&mut self, signal: i32) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("already stopped"))?;
        // `ip netns exec` execs sgctl, so the child pid is sgctl's either way.
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait()? {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                    self.seen.push(line);
                }
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("sgctl did not exit after signal {signal}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop_with(libc::SIGTERM);
        }
    }
}
