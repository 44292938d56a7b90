//! `cargo xtask demo`: a namespace topology with sgctl attached to an instance's NIC,
//! real traffic through it, live counters, then clean-up.

use std::{net::Ipv4Addr, process::ExitCode, time::Duration};

use anyhow::Result;
use sg_tests::{agent::Agent, netns::Lab, traffic::Proto};

fn main() -> ExitCode {
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("the demo creates namespaces and loads eBPF: run it as root");
    }
    let mut lab = Lab::new("demo")?;
    let client = lab.add_host("client", Ipv4Addr::new(198, 18, 0, 10), "2001:db8::10".parse()?)?;
    let web = lab.add_host("web", Ipv4Addr::new(198, 18, 1, 10), "2001:db8::1:10".parse()?)?;
    lab.resolve_neighbours()?;
    println!(
        "topology: {} ({}, {}) <-> bridge <-> {} ({}, {})",
        client.role, client.ipv4, client.ipv6, web.role, web.ipv4, web.ipv6
    );

    let mut agent =
        Agent::start(&web, &["attach", "eth0", "--xdp-mode", "generic", "--interval", "1"], "attached to eth0")?;
    println!("sgctl: {}", agent.seen.last().map_or("", String::as_str));
    let _http = web.serve(Proto::Tcp, 80)?;
    let _dns = web.serve(Proto::Udp, 53)?;
    let timeout = Duration::from_secs(2);
    println!("\n{:<34} {:<10}", "flow", "observed");
    for v6 in [false, true] {
        let dst = web.addr(v6);
        for (label, result) in [
            (format!("client -> web {dst} tcp/80"), client.probe(Proto::Tcp, dst, 80, timeout).is_ok()),
            (format!("client -> web {dst} udp/53"), client.probe(Proto::Udp, dst, 53, timeout).is_ok()),
            (format!("client -> web {dst} ping"), client.ping(dst)),
        ] {
            println!("{label:<34} {}", if result { "pass" } else { "drop" });
        }
    }
    println!("\nlive counters from sgctl (no rule set loaded yet: every packet passes):");
    for _ in 0..2 {
        println!("  {}", agent.wait_for("ingress:", Duration::from_secs(5))?);
    }
    agent.stop_with(libc::SIGTERM)?;
    println!("sgctl: {}", agent.seen.last().map_or("", String::as_str));
    drop(lab);
    println!("namespaces removed");
    Ok(())
}
