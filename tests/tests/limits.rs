//! The limits, with the real binary in namespaces: each file past a limit is refused
//! whole with an error that names the file, the line, the field and the limit, while the
//! running agent keeps its old rules in force; the largest files within the limits load;
//! and an apply that fails half-way through writing the maps (`SGCTL_FAULT_APPLY` makes
//! a write fail), in place or into a new generation of larger maps, leaves nothing of
//! the new rules behind; so does a new generation whose maps a memory cgroup's limit
//! refuses (a real `ENOMEM` from the kernel).

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use sg_tests::{
    agent::{Agent, sgctl},
    deploy::enforce,
    kernel::kernel_tests_enabled,
    memcg::MemoryCgroup,
    netns::{Host, instance_and_outside, ip},
    traffic::Proto,
};

const T: Duration = Duration::from_millis(800);
/// The agent's peak resident memory may not pass this while it refuses a file
/// (the 100,000-rule file is 12 MiB of text).
const MAX_AGENT_KIB: u64 = 1 << 20;

fn dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sgctl-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(name: &str, text: &str) -> PathBuf {
    let path = dir().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `count` ingress TCP rules, each from its own /32 of 198.18.0.0/15 to its own port, and
/// last one admitting `open` from anywhere.
fn rules(count: usize, open: u16) -> String {
    let mut s = String::new();
    for i in 0..count.saturating_sub(1) {
        let port = 10_000 + i % 50_000;
        let _ = write!(
            s,
            "  [[security_group.rule]]\n  direction = \"ingress\"\n  protocol = \"tcp\"\n  port_range = \"{port}/{port}\"\n  source = \"198.{}.{}.{}/32\"\n",
            18 + (i >> 16) % 2,
            (i >> 8) & 255,
            i & 255
        );
    }
    let _ = write!(
        s,
        "  [[security_group.rule]]\n  direction = \"ingress\"\n  protocol = \"tcp\"\n  port_range = \"{open}/{open}\"\n  source = \"0.0.0.0/0\"\n"
    );
    s
}

fn group(id: &str, rules: &str) -> String {
    format!("[[security_group]]\nid = \"{id}\"\ntype = \"basic\"\nmembers = [\"198.18.1.1\"]\n{rules}")
}

fn interface(name: &str, groups: &[String]) -> String {
    let list: Vec<String> = groups.iter().map(|g| format!("\"{g}\"")).collect();
    format!("[[interface]]\nname = \"{name}\"\nsecurity_groups = [{}]\n", list.join(", "))
}

/// One group `sg-inst` of `count` rules opening `open`, on inst0.
fn file(count: usize, open: u16) -> String {
    group("sg-inst", &rules(count, open)) + &interface("inst0", &["sg-inst".into()])
}

/// Which of ports 8080 and 9090 `out` reaches on the instance.
fn open_ports(out: &Host) -> (bool, bool) {
    let inst: IpAddr = Ipv4Addr::new(198, 18, 1, 1).into();
    (out.reaches(Proto::Tcp, inst, 8080, T), out.reaches(Proto::Tcp, inst, 9090, T))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn status(inst: &Host) -> serde_json::Value {
    let out = sgctl(inst, &["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("status json")
}

/// The agent's peak resident set (VmHWM), in KiB.
fn peak_kib(agent: &Agent) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `sgctl apply FILE` fails, saying every one of `words`, and changes nothing.
fn refused(inst: &Host, out: &Host, agent: &Agent, file: &Path, words: &[&str]) {
    let before = status(inst);
    let started = Instant::now();
    let applied = sgctl(inst, &["apply", file.to_str().unwrap()]);
    let took = started.elapsed();
    let stderr = text(&applied.stderr);
    assert!(!applied.status.success(), "{} was applied: {applied:?}", file.display());
    for w in words {
        assert!(stderr.contains(w), "{}: no `{w}` in: {stderr}", file.display());
    }
    let after = status(inst);
    assert_eq!(after["generation"], before["generation"], "{}", file.display());
    assert_eq!(after["maps"]["rule_vectors"], before["maps"]["rule_vectors"], "nothing left in the maps");
    assert_eq!(after["maps"]["rule_handles"], before["maps"]["rule_handles"], "no handle leaked");
    assert_eq!(open_ports(out), (true, false), "the old rules are in force after {}", file.display());
    assert!(peak_kib(agent) < MAX_AGENT_KIB, "agent peak {} KiB", peak_kib(agent));
    eprintln!(
        "refused {} in {:.2} s (agent peak {} KiB): {}",
        file.display(),
        took.as_secs_f64(),
        peak_kib(agent),
        stderr.lines().next().unwrap_or("")
    );
}

#[test]
fn files_past_the_limits_are_refused_whole_and_the_old_rules_keep_running() {
    if !kernel_tests_enabled("files_past_the_limits_are_refused_whole") {
        return;
    }
    let (_lab, inst, out) = instance_and_outside("limits").unwrap();
    let base = write("base.toml", &file(3, 8080));
    let mut agent = enforce(&inst, &base, &[]).unwrap();
    assert_eq!(open_ports(&out), (true, false));

    // 100,000 rules on one interface: more than one interface and direction holds.
    let big = write("rules-100k.toml", &file(100_000, 9090));
    refused(
        &inst,
        &out,
        &agent,
        &big,
        &["rules-100k.toml:", "interface[1].security_groups", "100000 ingress rules", "at most 65536"],
    );

    // A prefix list of 100,000 entries.
    let entries: Vec<String> = (0..100_000u32).map(|i| format!("\"{}/32\"", Ipv4Addr::from(0xc612_0000 + i))).collect();
    let list = format!("[[prefix_list]]\nid = \"pl-big\"\nfamily = \"ipv4\"\nentries = [{}]\n", entries.join(", "))
        + &group(
            "sg-inst",
            "  [[security_group.rule]]\n  direction = \"ingress\"\n  protocol = \"tcp\"\n  port_range = \"9090/9090\"\n  source_prefix_list = \"pl-big\"\n",
        )
        + &interface("inst0", &["sg-inst".into()]);
    let list = write("list-100k.toml", &list);
    refused(
        &inst,
        &out,
        &agent,
        &list,
        &["list-100k.toml:4:", "prefix_list[1].entries", "100000 entries", "at most 16384"],
    );

    // 64 groups on one interface.
    let ids: Vec<String> = (0..64).map(|i| format!("sg-{i}")).collect();
    let many: String = ids.iter().map(|id| group(id, &rules(1, 9090))).collect::<String>() + &interface("inst0", &ids);
    let many = write("groups-64.toml", &many);
    refused(
        &inst,
        &out,
        &agent,
        &many,
        &["groups-64.toml:", "interface[1].security_groups", "64 groups", "at most 10"],
    );

    // 1,000 interfaces in one file, 100 of them present here (veth pairs in the
    // instance's namespace): more than one agent enforces on.
    let mut batch = String::new();
    for i in 0..100 {
        let _ = writeln!(batch, "link add lim{i} type veth peer name limp{i}");
    }
    let batch_file = write("links.batch", &batch);
    ip(&["-n", &inst.ns, "-batch", batch_file.to_str().unwrap()]).unwrap();
    let names: Vec<String> = std::iter::once("inst0".to_string()).chain((0..999).map(|i| format!("lim{i}"))).collect();
    let thousand = group("sg-inst", &rules(2, 9090))
        + &names.iter().map(|n| interface(n, &["sg-inst".into()])).collect::<String>();
    let thousand_file = write("ifaces-1000.toml", &thousand);
    refused(&inst, &out, &agent, &thousand_file, &["101 interfaces to enforce on", "at most 63 interfaces"]);
    // No interface of the refused file was left with a program attached.
    let links = ip(&["-n", &inst.ns, "-d", "link", "show", "lim7"]).unwrap();
    assert!(!text(&links.stdout).contains("prog/xdp"), "{}", text(&links.stdout));
    // Without the extra interfaces the same file is within the limits: the 999 absent
    // ones are skipped and inst0 takes the new rules.
    for i in 0..100 {
        ip(&["-n", &inst.ns, "link", "del", &format!("lim{i}")]).unwrap();
    }
    let applied = sgctl(&inst, &["apply", thousand_file.to_str().unwrap()]);
    assert!(applied.status.success(), "{applied:?}");
    assert_eq!(open_ports(&out), (false, true));
    assert!(agent.is_running(), "the agent is still up");
}

#[test]
fn the_largest_files_load_and_a_failure_half_way_through_an_apply_changes_nothing() {
    if !kernel_tests_enabled("the_largest_files_load_and_a_failure_half_way_changes_nothing") {
        return;
    }
    let (_lab, inst, out) = instance_and_outside("limits-max").unwrap();
    // Write 4 of the second apply fails (the agent's first apply is the one at start),
    // and write 3 of the fifth.
    let small = write("small.toml", &file(3, 8080));
    let agent = Agent::start_with_env(
        &inst,
        &["run", "--config", small.to_str().unwrap(), "--xdp-mode", "generic"],
        &[("SGCTL_FAULT_APPLY", "2:4,5:3")],
        "applied",
    )
    .unwrap();
    assert_eq!(open_ports(&out), (true, false));
    let switched = write("small-9090.toml", &file(3, 9090));
    refused(&inst, &out, &agent, &switched, &["injected fault: write 4 of apply 2"]);
    // The same file in the next apply goes through.
    let applied = sgctl(&inst, &["apply", switched.to_str().unwrap()]);
    assert!(applied.status.success(), "{applied:?}");
    assert_eq!(open_ports(&out), (false, true));
    let back = sgctl(&inst, &["apply", small.to_str().unwrap()]);
    assert!(back.status.success(), "{back:?}");
    assert_eq!(open_ports(&out), (true, false));

    // An apply that needs larger maps moves to a new generation of programs and maps:
    // a write failing there, in the new generation's maps, leaves the old generation
    // and its rules in force, and the half-made generation is removed.
    let programs = status(&inst)["programs_generation"].clone();
    let larger = write("larger.toml", &(file(3, 9090) + "[sessions]\nmax_sessions = 8192\n"));
    refused(&inst, &out, &agent, &larger, &["injected fault: write 3 of apply 5"]);
    assert_eq!(status(&inst)["programs_generation"], programs);
    let regenerated = sgctl(&inst, &["apply", larger.to_str().unwrap()]);
    assert!(regenerated.status.success(), "{regenerated:?}");
    assert_ne!(status(&inst)["programs_generation"], programs);
    assert_eq!(status(&inst)["session_capacity"], 8192);
    assert_eq!(open_ports(&out), (false, true));
    drop(agent);

    // 65,536 rules, as many as one interface and direction holds, each of its own peer:
    // four bands, and the rule that opens 9090 ranks last, in the last band.
    let full = write("rules-65536.toml", &file(65_536, 9090));
    let started = Instant::now();
    let agent = enforce(&inst, &full, &[]).unwrap();
    let took = started.elapsed();
    assert_eq!(open_ports(&out), (false, true));
    // The 65,536 of the file and the pseudo-rules (intra-group, default, next band) of
    // each direction.
    assert!(status(&inst)["rules"].as_u64().unwrap() > 65_536, "{}", status(&inst));
    eprintln!("65,536 rules: agent up in {:.2} s, peak {} KiB", took.as_secs_f64(), peak_kib(&agent));

    // A 10 MB file (2,000 rules with long descriptions, and comments) applies.
    let mut ten = String::from("# A rule file of 10 MB.\n");
    let description = "d".repeat(500);
    for line in file(2_000, 8080).lines() {
        ten.push_str(line);
        ten.push('\n');
        if line.contains("source") {
            let _ = writeln!(ten, "  description = \"{description}\"");
        }
    }
    let comment = format!("# {}\n", "c".repeat(1_000));
    while ten.len() < 10 << 20 {
        ten.push_str(&comment);
    }
    let ten = write("ten-mb.toml", &ten);
    let started = Instant::now();
    let applied = sgctl(&inst, &["apply", ten.to_str().unwrap()]);
    assert!(applied.status.success(), "{applied:?}");
    eprintln!("10 MB file applied in {:.2} s, agent peak {} KiB", started.elapsed().as_secs_f64(), peak_kib(&agent));
    assert_eq!(open_ports(&out), (true, false));
    assert!(peak_kib(&agent) < MAX_AGENT_KIB, "agent peak {} KiB", peak_kib(&agent));
}

#[test]
fn a_map_allocation_a_memory_limit_refuses_leaves_the_old_generation_in_force() {
    if !kernel_tests_enabled("a_map_allocation_a_memory_limit_refuses_leaves_the_old_generation_in_force") {
        return;
    }
    let (_lab, inst, out) = instance_and_outside("limits-mem").unwrap();
    // Declared before the agent, so it is removed after the agent is gone.
    let cgroup = MemoryCgroup::new("limits", 192 << 20).unwrap();
    let small = write("mem-small.toml", &file(3, 8080));
    let agent =
        Agent::start(&inst, &["run", "--config", small.to_str().unwrap(), "--xdp-mode", "generic"], "applied").unwrap();
    // From here on what the agent allocates, its maps included, counts against 192 MiB.
    cgroup.add(agent.pid()).unwrap();
    assert_eq!(open_ports(&out), (true, false));
    let programs = status(&inst)["programs_generation"].clone();
    let capacity = status(&inst)["session_capacity"].clone();

    // 4,194,304 sessions need 640 MiB for the assured table alone: the kernel refuses the
    // new generation's maps half-way through creating them.
    let huge = write("mem-huge.toml", &(file(3, 9090) + "[sessions]\nmax_sessions = 4194304\n"));
    refused(&inst, &out, &agent, &huge, &["Cannot allocate memory"]);
    assert!(cgroup.limit_hits() > 0, "the memory limit refused an allocation");
    assert_eq!(status(&inst)["programs_generation"], programs, "the old generation is still in force");
    assert_eq!(status(&inst)["session_capacity"], capacity);

    // A larger table that fits under the limit then moves to a new generation.
    let fits = write("mem-fits.toml", &(file(3, 9090) + "[sessions]\nmax_sessions = 65536\n"));
    let applied = sgctl(&inst, &["apply", fits.to_str().unwrap()]);
    assert!(applied.status.success(), "{applied:?}");
    assert_eq!(open_ports(&out), (false, true));
    assert_ne!(status(&inst)["programs_generation"], programs);
    assert_eq!(status(&inst)["session_capacity"], 65536);
}
