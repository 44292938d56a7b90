//! `cargo xtask demo`: the use cases of the security-group guide on a namespace
//! topology. Three instances run `sgctl run` with `examples/demo.toml`; real TCP and ICMP
//! traffic is sent; each flow's expected, observed and predicted (`sgctl trace`) verdict is
//! printed with the rule that decides it, then everything is removed.

use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use sg_tests::deploy::{Demo, demo_config, enforce, observe, predict, serve_flows, use_case_flows};

fn main() -> ExitCode {
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

fn verdict(pass: bool) -> &'static str {
    if pass { "pass" } else { "drop" }
}

fn demo() -> Result<bool> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("the demo creates namespaces and loads eBPF: run it as root");
    }
    let config = demo_config();
    let demo = Demo::build("demo")?;
    println!("topology (one bridge, no route out):");
    for h in demo.lab.hosts() {
        println!("  {:<8} {:<7} {:<12} {}", h.role, h.iface, h.ipv4, h.ipv6);
    }
    println!("\nrule file: {}", config.display());
    let mut agents = Vec::new();
    for host in demo.instances() {
        let agent = enforce(host, &config, &["--json", "--interval", "1"])?;
        println!(
            "  sgctl run on {:<8} {}",
            host.role,
            agent.seen.iter().find(|l| l.contains("enforcing")).map_or("", |s| s)
        );
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
    for agent in &mut agents {
        agent.stop_with(libc::SIGTERM)?;
    }
    drop(agents);
    drop(demo);
    println!("\nsgctl stopped, programs detached, namespaces removed");
    Ok(all_ok)
}
