//! The six use cases of the security-group guide, with real sockets in namespaces: each
//! flow's observed verdict must equal the expected one and what `sgctl trace` predicts
//! for it. Case 6 (the egress whitelist) and the web instance's own MySQL connection need
//! sessions: their replies arrive on interfaces whose ingress rules would drop them.

use std::path::Path;

use sg_tests::{
    deploy::{Demo, enforce, observe, predict, serve_flows, use_case_flows},
    kernel::kernel_tests_enabled,
};

/// Runs the flows whose label starts with `case` against `config`.
fn check_case(case: &str, config: &Path) {
    let demo = Demo::build(&format!("uc{}", case.trim())).expect("topology");
    let _agents: Vec<_> = demo.instances().iter().map(|h| enforce(h, config, &[]).expect("sgctl run")).collect();
    let flows: Vec<_> = use_case_flows(&demo).into_iter().filter(|f| f.label.starts_with(case)).collect();
    assert!(!flows.is_empty(), "no flows for case {case}");
    let _servers = serve_flows(&flows).expect("servers");
    let mut failures = Vec::new();
    for flow in &flows {
        let observed = observe(flow);
        let predicted = predict(&demo.client, config, flow).expect("sgctl trace");
        if observed != flow.expect_pass || predicted.pass != flow.expect_pass {
            failures.push(format!(
                "{}: expected {}, observed {}, sgctl trace {} ({})",
                flow.label, flow.expect_pass, observed, predicted.pass, predicted.decided_by
            ));
        }
    }
    assert!(failures.is_empty(), "case {case}:\n{}", failures.join("\n"));
}

fn demo_config() -> std::path::PathBuf {
    sg_tests::deploy::demo_config()
}

#[test]
fn case_1_web_server_open_on_80_and_443_only() {
    if kernel_tests_enabled("case_1") {
        check_case("1 ", &demo_config());
    }
}

#[test]
fn case_2_ssh_only_from_the_admin() {
    if kernel_tests_enabled("case_2") {
        check_case("2 ", &demo_config());
    }
}

#[test]
fn case_3_mysql_only_from_sg_web_with_a_priority_100_drop() {
    if kernel_tests_enabled("case_3") {
        check_case("3 ", &demo_config());
    }
}

#[test]
fn case_4_icmp_only_from_one_client() {
    if kernel_tests_enabled("case_4") {
        check_case("4 ", &demo_config());
    }
}

#[test]
fn case_5_ftp_from_group_a_written_as_account_reference() {
    if kernel_tests_enabled("case_5_account") {
        check_case("5 ", &demo_config());
    }
}

#[test]
fn case_5_ftp_from_group_a_written_as_plain_group_id() {
    if !kernel_tests_enabled("case_5_plain") {
        return;
    }
    let text = std::fs::read_to_string(demo_config()).unwrap();
    assert!(text.contains("\"160998252992/sg-a\""));
    let dir = std::env::temp_dir().join(format!("sgctl-uc5-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plain = dir.join("demo-plain.toml");
    std::fs::write(&plain, text.replace("\"160998252992/sg-a\"", "\"sg-a\"")).unwrap();
    check_case("5 ", &plain);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn case_6_egress_whitelist_with_replies_by_session() {
    if kernel_tests_enabled("case_6") {
        check_case("6 ", &demo_config());
    }
}
