//! `cargo xtask demo`: the use cases of the security-group guide on a namespace
//! topology. Four instances run `sgctl --netns NS run` with `examples/demo.toml`; real
//! TCP and ICMP traffic is sent; each flow's expected, observed and predicted (`sgctl
//! trace`) verdict is printed with the rule that decides it. Then the agent's life
//! cycle, live: a changed rule file applied through the control socket, an agent killed
//! with SIGKILL while its rules keep being enforced, a new agent adopting them, and
//! `sgctl down` removing everything.
//!
//! The agents run with `--netns` (not `ip netns exec`) so that their pins are on the
//! host's BPF filesystem and outlive them, which is what the restart shows. That also
//! means nothing goes away by itself: [`DownOnDrop`] runs `sgctl down` on an error or a
//! panic, and a SIGINT/SIGTERM handler does the same before the process ends.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicI32, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result};
use sg_tests::{
    agent::Agent,
    deploy::{
        Demo, DownOnDrop, Flow, demo_config, down, enforce_pinned, leftovers, observe, predict, serve_flows,
        tear_down_own_namespaces, use_case_flows,
    },
    netns::Host,
};

fn main() -> ExitCode {
    clean_up_on_signal();
    match demo() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("demo: some flows did not behave as expected");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The write end of the pipe [`on_signal`] reports signals through.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// Only async-signal-safe work here: the signal number goes down the pipe.
extern "C" fn on_signal(signal: libc::c_int) {
    let byte = signal as u8;
    // SAFETY: write(2) is async-signal-safe; the buffer is a local byte.
    unsafe { libc::write(SIGNAL_PIPE.load(Ordering::Relaxed), (&raw const byte).cast(), 1) };
}

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP would end the process without unwinding, so no
/// destructor would remove the namespaces or the pinned enforcement. A handler passes
/// them to a thread that tears everything down, then exits. Not a blocked mask and
/// `sigwait`: the children (the agents) would inherit the mask and never see SIGTERM.
fn clean_up_on_signal() {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!("demo: no pipe for signals ({}); Ctrl-C will leave things behind", std::io::Error::last_os_error());
        return;
    }
    SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only calls write(2).
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    std::thread::spawn(move || {
        let mut byte = 0u8;
        // SAFETY: reads one byte into a local.
        while unsafe { libc::read(fds[0], (&raw mut byte).cast(), 1) } != 1 {}
        eprintln!("\ndemo: signal {byte}: stopping the agents, `sgctl down` and deleting the namespaces");
        tear_down_own_namespaces();
        std::process::exit(128 + i32::from(byte));
    });
}

fn verdict(pass: bool) -> &'static str {
    if pass { "pass" } else { "drop" }
}

/// The part of an agent's log line from `word` on (without the level).
fn from<'l>(line: &'l str, word: &str) -> &'l str {
    line.find(word).map_or(line, |at| &line[at..])
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `examples/demo.toml` with one more sg-web rule: TCP 8080 open to everyone.
fn with_port_8080(config: &Path) -> Result<TempFile> {
    let text = std::fs::read_to_string(config)?;
    let anchor = "description = \"case 4: ping from one client only\"\n";
    anyhow::ensure!(text.contains(anchor), "{}: the sg-web ping rule is gone", config.display());
    let added = "\n  [[security_group.rule]]\n  direction = \"ingress\"\n  protocol = \"tcp\"\n  port_range = \
                 \"8080/8080\"\n  source = \"0.0.0.0/0\"\n  description = \"demo: 8080 opened by sgctl apply\"\n";
    let path = std::env::temp_dir().join(format!("sgctl-demo-{}-8080.toml", std::process::id()));
    let file = TempFile(path);
    std::fs::File::create(&file.0)?.write_all(text.replacen(anchor, &format!("{anchor}{added}"), 1).as_bytes())?;
    Ok(file)
}

/// Sends `flow`'s traffic and prints one line; true when it behaved as expected.
fn check(flow: &Flow, note: &str) -> bool {
    let observed = observe(flow);
    let ok = observed == flow.expect_pass;
    println!(
        "  {:<36} {:<9} {:<9}{note}{}",
        flow.label,
        verdict(flow.expect_pass),
        verdict(observed),
        if ok { "" } else { "  <-- MISMATCH" }
    );
    ok
}

/// The same flow with another expected verdict.
fn expecting<'h>(flow: &Flow<'h>, expect_pass: bool) -> Flow<'h> {
    Flow { expect_pass, ..*flow }
}

fn find<'f, 'h>(flows: &'f [Flow<'h>], label: &str) -> Result<&'f Flow<'h>> {
    flows.iter().find(|f| f.label == label).with_context(|| format!("no flow {label:?}"))
}

fn demo() -> Result<bool> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("the demo creates namespaces and loads eBPF: run it as root");
    }
    let config = demo_config();
    let demo = Demo::build("demo")?;
    // Dropped before `demo` (the namespaces must still exist) and after the agents.
    let _down = DownOnDrop(demo.instances().into_iter().cloned().collect());
    println!("topology (one bridge, no route out):");
    for h in demo.lab.hosts() {
        println!("  {:<8} {:<7} {:<12} {}", h.role, h.iface, h.ipv4, h.ipv6);
    }
    println!("\nrule file: {}", config.display());
    let ns = demo.web.ns.trim_end_matches(&demo.web.role);
    println!("`sgctl --netns {ns}ROLE run --config FILE` on each instance (pinned: outlives the agent):");
    let mut agents = Vec::new();
    for host in demo.instances() {
        let agent = enforce_pinned(host, &config, &["--json", "--interval", "1"])?;
        let enforcing = agent.seen.iter().find(|l| l.contains("enforcing")).map_or("", |s| from(s, "enforcing"));
        println!("  {:<8} {enforcing}", host.role);
        agents.push(agent);
    }
    let flows = use_case_flows(&demo);
    let _servers = serve_flows(&flows)?;
    println!("\n{:<38} {:<9} {:<9} {:<26}", "use case / flow", "expected", "observed", "deciding rule (sgctl trace)");
    let mut all_ok = true;
    for flow in &flows {
        let observed = observe(flow);
        let predicted = predict(&demo.web, &config, flow)?;
        let ok = observed == flow.expect_pass && predicted.pass == flow.expect_pass;
        all_ok &= ok;
        println!(
            "{:<38} {:<9} {:<9} {:<26}{}",
            flow.label,
            verdict(flow.expect_pass),
            verdict(observed),
            predicted.decided_by,
            if ok { "" } else { "  <-- MISMATCH" }
        );
    }
    println!("\nlive counters (ingress XDP | egress TC), from each sgctl:");
    for (host, agent) in demo.instances().iter().zip(agents.iter_mut()) {
        // The line printed after the flows, not one queued before them.
        std::thread::sleep(Duration::from_millis(1100));
        let line = agent.latest("\"ingress\"", Duration::from_secs(5))?;
        let json: serde_json::Value = serde_json::from_str(&line)?;
        let show = |h: &serde_json::Value| {
            let steps: Vec<String> = h["by_step"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some(format!("{}={}", p[0].as_str()?, p[1])))
                .collect();
            format!("pass {} drop {} [{}]", h["passed"], h["dropped"], steps.join(" "))
        };
        println!("  {:<8} ingress: {}", host.role, show(&json["ingress"]));
        println!("  {:<8} egress:  {}", "", show(&json["egress"]));
    }

    all_ok &= apply_live(&demo, &mut agents[0], &flows, &config)?;
    all_ok &= restart(&demo.db, &mut agents[1], &flows, &config)?;

    println!("\nSIGTERM to every agent: each stops, its enforcement stays");
    for (host, agent) in demo.instances().iter().zip(agents.iter_mut()) {
        agent.stop_with(libc::SIGTERM)?;
        if host.role == "web" {
            let stopped = agent.seen.iter().rev().find(|l| l.contains("enforcement stays")).map_or("", |s| s);
            println!("  {} agent: {}", host.role, from(stopped, "stopped"));
        }
    }
    drop(agents);
    all_ok &= check(find(&flows, "1 web: client -> web tcp/80")?, "  no agent runs anywhere");
    all_ok &= check(find(&flows, "2 ssh: client -> web tcp/22")?, "  no agent runs anywhere");
    println!("\n`sgctl --netns NS down` on each instance:");
    let mut left = Vec::new();
    for host in demo.instances() {
        let removed = down(host)?;
        let summary: Vec<&str> = removed
            .iter()
            .map(String::as_str)
            .filter(|l| !l.starts_with("unpinned /") && !l.starts_with("removed /"))
            .collect();
        println!("  {:<8} {}", host.role, summary.join("; "));
        left.extend(leftovers(host)?);
    }
    if left.is_empty() {
        println!("  nothing left: no program on any NIC, no pins, no state");
    } else {
        println!("  LEFT BEHIND: {}", left.join(", "));
        all_ok = false;
    }
    drop(_servers);
    drop(_down);
    drop(demo);
    println!("\nnamespaces removed");
    Ok(all_ok)
}

/// (a) A changed rule file through the control socket: tcp/8080 on web, dropped before,
/// passes after; the rest of web's rules unchanged.
fn apply_live(demo: &Demo, web_agent: &mut Agent, flows: &[Flow], config: &Path) -> Result<bool> {
    let opened = with_port_8080(config)?;
    let file = opened.0.to_str().context("temp path")?;
    let closed = find(flows, "1 web: client -> web tcp/8080")?;
    println!("\n`sgctl apply` through web's control socket: the same file plus \"tcp 8080 from 0.0.0.0/0\"");
    let mut ok = check(closed, "  before");
    let out = sg_tests::agent::sgctl_pinned(&demo.web, &["apply", file]);
    let reply = String::from_utf8_lossy(&out.stdout);
    println!("  $ sgctl --netns {} apply {file}", demo.web.ns);
    for line in reply.lines() {
        println!("    {line}");
    }
    ok &= out.status.success();
    if !out.status.success() {
        println!("    {}  <-- FAILED", String::from_utf8_lossy(&out.stderr).trim());
    }
    let now_open = expecting(closed, true);
    let predicted = predict(&demo.web, &opened.0, &now_open)?;
    ok &= predicted.pass;
    ok &= check(&now_open, &format!("  after (sgctl trace: {})", predicted.decided_by));
    ok &= check(find(flows, "2 ssh: client -> web tcp/22")?, "  after (unchanged)");
    // The agent logs the same apply; shown so the two sides can be compared.
    if let Ok(line) = web_agent.wait_for("applied /", Duration::from_secs(5)) {
        println!("  agent log: {}", from(&line, "applied"));
    }
    Ok(ok)
}

/// (b) SIGKILL the agent on `host`: its pinned programs keep enforcing with no process
/// behind them; a new agent adopts them without rewriting anything.
fn restart(host: &Host, agent: &mut Agent, flows: &[Flow], config: &Path) -> Result<bool> {
    let allowed = find(flows, "3 mysql: web -> db tcp/3306")?;
    let denied = find(flows, "3 mysql: admin -> db tcp/3306")?;
    let pid = agent.pid();
    agent.stop_with(libc::SIGKILL)?;
    println!("\nagent restart on {}: kill -9 {pid}; no sgctl runs in its namespace now", host.role);
    let mut ok = check(allowed, "  no agent");
    ok &= check(denied, "  no agent");
    let next = enforce_pinned(host, config, &["--interval", "0"])?;
    let adopted = next.seen.iter().find(|l| l.contains("adopted generation")).cloned();
    match &adopted {
        Some(line) => println!("  new sgctl run: {}", from(line, "adopted")),
        None => {
            println!("  new sgctl run did not adopt: {}  <-- MISMATCH", next.seen.join(" | "));
            ok = false;
        }
    }
    ok &= check(allowed, "  new agent");
    ok &= check(denied, "  new agent");
    *agent = next;
    Ok(ok)
}
