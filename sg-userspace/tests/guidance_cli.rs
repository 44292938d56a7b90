//! The built `sgctl` binary's guidance commands: exit codes and `--json` output.

use std::path::PathBuf;
use std::process::{Command, Output};

fn sgctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sgctl")).args(args).output().expect("run sgctl")
}

fn fixture(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/guidance").join(path).display().to_string()
}

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name).display().to_string()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn lint_exit_codes_follow_fail_on() {
    let clean = sgctl(&["lint", &example("guide-use-cases.toml")]);
    assert_eq!(clean.status.code(), Some(0), "{}", String::from_utf8_lossy(&clean.stdout));
    let bad = fixture("lint/sensitive-port-world.bad.toml");
    // One error (MySQL) and warnings: fails at the default `error`, and at `warning`.
    assert_eq!(sgctl(&["lint", &bad]).status.code(), Some(1));
    let ssh_only = fixture("lint/egress-whitelist-without-drop.bad.toml");
    assert_eq!(sgctl(&["lint", &ssh_only]).status.code(), Some(0), "a warning does not fail at --fail-on error");
    assert_eq!(sgctl(&["lint", &ssh_only, "--fail-on", "warning"]).status.code(), Some(1));
    assert_eq!(sgctl(&["lint", "/nonexistent.toml"]).status.code(), Some(2));
}

#[test]
fn lint_json_lists_findings_with_rule_line_and_fix() {
    let out = sgctl(&["lint", &fixture("lint/sensitive-port-world.bad.toml"), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let value = json(&out);
    assert_eq!(value["valid"], true);
    assert_eq!(value["failed"], true);
    let findings = value["findings"].as_array().expect("findings");
    let mysql = findings
        .iter()
        .find(|f| f["check"] == "sensitive-port-world" && f["severity"] == "error")
        .expect("the MySQL finding");
    assert_eq!(mysql["rule"], "sg-web#2");
    assert_eq!(mysql["group"], "sg-web");
    assert_eq!(mysql["line"], 11);
    assert!(mysql["message"].as_str().unwrap_or("").contains("MySQL 3306"));
    assert!(!mysql["fix"].as_str().unwrap_or("").is_empty());
    assert_eq!(value["counts"]["error"], 1);
}

#[test]
fn lint_provider_checks() {
    let out = sgctl(&["lint", &fixture("lint/provider-aws.bad.toml"), "--provider", "aws", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let value = json(&out);
    let refusals =
        value["findings"].as_array().expect("findings").iter().filter(|f| f["check"] == "provider-refuses").count();
    assert!(refusals >= 3, "{value}");
    let without = sgctl(&["lint", &fixture("lint/provider-aws.bad.toml"), "--json"]);
    assert!(json(&without)["findings"].as_array().expect("findings").iter().all(|f| f["check"] != "provider-refuses"));
}

#[test]
fn invalid_files_are_reported_with_positions() {
    let dir = std::env::temp_dir().join(format!("sgctl-guidance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[[security_group]]\nid = \"sg\"\n[[security_group.rule]]\ndirection = \"up\"\n")
        .expect("write");
    let out = sgctl(&["lint", path.to_str().expect("utf-8"), "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let value = json(&out);
    assert_eq!(value["valid"], false);
    assert!(value["errors"][0]["line"].as_u64().is_some_and(|l| l > 0), "{value}");
    let out = sgctl(&["diff", path.to_str().expect("utf-8"), &example("demo.toml")]);
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn diff_exit_codes_and_json() {
    let same = sgctl(&["diff", &example("demo.toml"), &example("demo.toml")]);
    assert_eq!(same.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&same.stdout).contains("no flow changes verdict"));

    let (old, new) = (fixture("diff/office-old.toml"), fixture("diff/office-new.toml"));
    let text = sgctl(&["diff", &old, &new]);
    assert_eq!(text.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("tcp port 443 to 198.18.5.43: accept by sg-office#3 (line 20) -> drop by sg-office#1 (line 7)"),
        "{stdout}"
    );

    let out = sgctl(&["diff", &old, &new, "--json", "--iface", "office0"]);
    assert_eq!(out.status.code(), Some(1));
    let value = json(&out);
    assert_eq!(value["changed"], true);
    let changes = value["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 4, "{value}");
    let https = changes.iter().find(|c| c["port_range"] == "443").expect("the HTTPS change");
    assert_eq!(https["direction"], "egress");
    assert_eq!(https["peer"], "198.18.5.43");
    assert_eq!(https["protocols"], serde_json::json!(["tcp"]));
    assert_eq!(https["old"]["action"], "accept");
    assert_eq!(https["old"]["decided_by"], "sg-office#3");
    assert_eq!(https["new"]["action"], "drop");
    assert_eq!(https["new"]["decided_by"], "sg-office#1");

    assert_eq!(sgctl(&["diff", &old, &new, "--iface", "nope"]).status.code(), Some(2));
}

#[test]
fn import_alibaba_writes_a_rule_file_that_validates() {
    let dir = std::env::temp_dir().join(format!("sgctl-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out_path = dir.join("imported.toml");
    let out = out_path.to_str().expect("utf-8");
    let run = sgctl(&[
        "import",
        "alibaba",
        &fixture("import/alibaba-web.json"),
        &fixture("import/alibaba-db.json"),
        "--members",
        "sg-web=198.18.0.10,198.18.0.11",
        "--members",
        "sg-db=198.18.1.20",
        "--iface",
        "eth0",
        "-o",
        out,
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stderr));
    // Warnings (placeholders, an unknown field) are printed, not dropped.
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("Labels: warning: unknown field"), "{stderr}");
    let validate = sgctl(&["validate", out]);
    assert_eq!(validate.status.code(), Some(0), "{}", String::from_utf8_lossy(&validate.stderr));
    // The imported file lints and diffs like any other.
    assert!(sgctl(&["lint", out, "--json"]).status.code().is_some_and(|c| c <= 1));
    assert_eq!(sgctl(&["diff", out, out]).status.code(), Some(0));
    // --strict refuses on warnings.
    let strict = sgctl(&["import", "alibaba", &fixture("import/alibaba-db.json"), "--strict", "--json"]);
    assert_eq!(strict.status.code(), Some(1));
    assert_eq!(json(&strict)["ok"], false);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn import_refusals_and_json_report() {
    let out = sgctl(&["import", "aws", &fixture("import/aws-unsupported.json"), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let value = json(&out);
    assert_eq!(value["ok"], false);
    let problems = value["problems"].as_array().expect("problems");
    assert!(problems.iter().any(|p| p["severity"] == "error"
        && p["location"].as_str().unwrap_or("").ends_with("IpPermissions[1].FromPort")
        && p["message"].as_str().unwrap_or("").contains("ICMP type 300")));
    // ICMP types and codes and protocol numbers import exactly.
    let icmp = sgctl(&["import", "aws", &fixture("import/aws-icmp-numbers.json"), "--json"]);
    assert_eq!(icmp.status.code(), Some(0), "{}", String::from_utf8_lossy(&icmp.stderr));
    let text = json(&icmp)["rule_file"].as_str().unwrap_or("").to_string();
    assert!(text.contains("protocol = \"icmp\"\n  icmp_type = 8\n  icmp_code = 0\n"), "{text}");
    assert!(text.contains("protocol = \"50\""), "{text}");
    let ok =
        sgctl(&["import", "aws", &fixture("import/aws-groups.json"), "--members", "sg-0web=198.18.0.10", "--json"]);
    assert_eq!(ok.status.code(), Some(0));
    let value = json(&ok);
    assert_eq!(value["ok"], true);
    assert!(value["rule_file"].as_str().unwrap_or("").contains("source_group = \"sg-0web-members\""));
    assert_eq!(sgctl(&["import", "aws", "/nonexistent.json"]).status.code(), Some(2));
}

#[test]
fn export_writes_provider_json_and_refuses_drops_into_aws() {
    let out = sgctl(&["export", "alibaba", &example("demo.toml")]);
    assert_eq!(out.status.code(), Some(0));
    let value = json(&out);
    let groups = value.as_array().expect("one response per group");
    assert!(groups.iter().any(|g| g["SecurityGroupId"] == "sg-web"));
    let refused = sgctl(&["export", "aws", &example("demo.toml")]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no drop rules"));
    let ok = sgctl(&["export", "aws", &fixture("import/aws-roundtrip.toml")]);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(json(&ok)["SecurityGroups"].as_array().map(Vec::len), Some(2));
}

#[test]
fn import_alibaba_takes_members_and_types_from_context_responses() {
    let out = sgctl(&[
        "import",
        "alibaba",
        &fixture("import/alibaba-web.json"),
        "--context",
        &fixture("import/alibaba-nics.json"),
        "--context",
        &fixture("import/alibaba-groups.json"),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let value = json(&out);
    let text = value["rule_file"].as_str().expect("rule file");
    assert!(text.contains("members = [\"198.18.0.10\", \"198.18.0.12\", \"2001:db8::10\", \"198.18.0.11\"]"), "{text}");
    let bad = sgctl(&[
        "import",
        "alibaba",
        &fixture("import/alibaba-web.json"),
        "--context",
        &fixture("import/aws-groups.json"),
    ]);
    assert_eq!(bad.status.code(), Some(1), "an AWS file is no Alibaba context");
}

/// Neighbour and multicast listener discovery pass before any rule in the data plane;
/// `trace` says so instead of judging them by the rules (which would drop them here).
#[test]
fn trace_passes_neighbour_discovery_before_the_rules() {
    let file = example("guide-use-cases.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let iface =
        text.lines().find_map(|l| l.trim().strip_prefix("name = \"")).unwrap().trim_end_matches('"').to_string();
    let trace = |icmp_type: &str| {
        let out = sgctl(&[
            "trace",
            &file,
            "--iface",
            &iface,
            "--direction",
            "ingress",
            "--proto",
            "icmpv6",
            "--src",
            "2001:db8::99",
            "--dst",
            "2001:db8::1",
            "--icmp-type",
            icmp_type,
            "--json",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        json(&out)
    };
    for icmp_type in ["130", "133", "135", "136", "143"] {
        let decision = trace(icmp_type);
        assert_eq!(decision["action"], "accept", "type {icmp_type}: {decision}");
        assert_eq!(decision["decided_by"]["step"], "neighbour_discovery", "type {icmp_type}: {decision}");
    }
    // An echo request is judged by the rules as usual.
    assert_ne!(trace("128")["decided_by"]["step"], "neighbour_discovery");
}
