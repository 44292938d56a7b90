//! Profiling aid (not committed): full applies of a large realistic set.
use sg_tests::{
    r#gen::{RealisticOptions, realistic_ruleset_with},
    testrun::TEST_RUN_IFINDEX,
};
use sgctl::{
    control::Enforcer,
    dataplane::{Capacity, Dataplane, LoadOptions},
    policy::compile::compile,
    policy::config::{Direction, parse_str},
};
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(65536);
    let rounds: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let opts = RealisticOptions {
        iface: "lo".into(),
        drop_all_from: Some("198.19.0.0/16".into()),
        drop_all_from_v6: Some("2001:db8:ffff::/48".into()),
    };
    let text = realistic_ruleset_with(7, n, &opts);
    let cfg = parse_str(&text, "b.toml").unwrap();
    let c = compile(&cfg, &cfg.interfaces[0], Direction::Ingress)?;
    let capacity = Capacity::for_rule_sets([&c, &c]);
    let mut dp = Dataplane::load(&LoadOptions { trace: false, capacity, event_ring_bytes: 1 << 20 })?;
    let mut enforcer = Enforcer::new(&mut dp, &capacity)?;
    let mut parts = Vec::new();
    for _ in 0..rounds {
        enforcer.clear(TEST_RUN_IFINDEX)?;
        let t = Instant::now();
        let targets = [(TEST_RUN_IFINDEX, &cfg.interfaces[0])];
        let compiled = sgctl::control::compile_targets(&cfg, &targets)?;
        let ct = t.elapsed();
        let r = enforcer.apply_compiled(&cfg, &compiled)?;
        let all = t.elapsed();
        enforcer.retire_pending();
        parts.push([ct, r.write_time, all].map(|d| d.as_secs_f64() * 1e3));
    }
    for k in 0..3 {
        let mut v: Vec<f64> = parts.iter().map(|p| p[k]).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        print!("{:.2} ", v[v.len() / 2]);
    }
    println!("(compile write all, ms)");
    Ok(())
}
