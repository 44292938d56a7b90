//! sgctl on a real NIC driver: one qemu guest per kernel of the matrix (Debian's 6.12,
//! 6.1 and 5.10), two virtio-net NICs, `sgctl run --xdp-mode native` on both, and real
//! traffic between the host namespace holding the taps and the guest.
//!
//! Each boot runs one scenario (`GUEST`): sgctl enforces `examples/vm.toml`; the guest
//! records how the programs are attached, probes its egress whitelist, then waits while
//! the host probes the guest's services from several source addresses; then it reads
//! sgctl's counters against the driver's own XDP drop count, stops sgctl (enforcement
//! stays), lets a second agent adopt it, removes it all with `sgctl down` and records what
//! is left on the NICs. The host checks every flow's verdict, the attach modes (driver
//! XDP; TCX on 6.12, clsact before 6.6), the drop counts and the clean detach.
//!
//! Under `CI=true` these tests never skip. The guests run one at a time.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{Condvar, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use sg_tests::{
    netns::Host,
    traffic::{Proto, Server},
};
use xtask::vm::{self, Console, Vm, VmOptions};

/// Guests booted at once: each runs one vCPU thread (TCG here), and this host has two
/// cores, so two guests in parallel take about the time of one (the suite was 7 minutes
/// one at a time).
/// `SGCTL_VM_GUESTS` overrides it (`cargo xtask test` runs the suite beside the other
/// tests with one guest at a time, so the two cores are shared, not oversubscribed).
const GUESTS_AT_ONCE: usize = 2;

fn guests_at_once() -> usize {
    std::env::var("SGCTL_VM_GUESTS").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(GUESTS_AT_ONCE)
}

static GUESTS_RUNNING: Mutex<usize> = Mutex::new(0);
static GUEST_DONE: Condvar = Condvar::new();

/// A place among the [`GUESTS_AT_ONCE`] guests; given back on drop, also on panic.
struct GuestSlot;

impl GuestSlot {
    fn take() -> Self {
        let mut running = GUESTS_RUNNING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while *running >= guests_at_once() {
            running = GUEST_DONE.wait(running).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *running += 1;
        GuestSlot
    }
}

impl Drop for GuestSlot {
    fn drop(&mut self) {
        *GUESTS_RUNNING.lock().unwrap_or_else(std::sync::PoisonError::into_inner) -= 1;
        GUEST_DONE.notify_one();
    }
}

/// The egress hook sgctl must pick on a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Egress {
    Tcx,
    Clsact,
}

#[test]
fn vm_kernel_6_12() {
    scenario("6.12", Egress::Tcx);
}

#[test]
fn vm_kernel_6_1() {
    scenario("6.1", Egress::Clsact);
}

#[test]
fn vm_kernel_5_10() {
    scenario("5.10", Egress::Clsact);
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The sgctl the guest runs: `$SGCTL_VM_BIN`, else the static build of `cargo xtask dist`
/// (required under CI), else the debug build.
fn guest_sgctl() -> PathBuf {
    if let Some(p) = std::env::var_os("SGCTL_VM_BIN") {
        return PathBuf::from(p);
    }
    let static_bin = vm::target_dir().join("dist/sgctl");
    if static_bin.exists() {
        return static_bin;
    }
    assert!(
        !in_ci(),
        "{} missing: under CI the VM suite runs the static binary (cargo xtask dist)",
        static_bin.display()
    );
    eprintln!("note: {} missing (cargo xtask dist builds it); the guest runs the debug build", static_bin.display());
    sg_tests::kernel::sgctl_bin()
}

/// The guest's scenario. `$SGCTL` is the binary under test, `$SGVM_SHARE` the share.
const GUEST: &str = r#"
S=$SGVM_SHARE
uname -r > $S/uname
# Started from the guest's memory: every start from the 9p share reads the binary anew.
cp $SGCTL /tmp/sgctl && SGCTL=/tmp/sgctl
for p in 80 22 3306; do socat TCP6-LISTEN:$p,fork,reuseaddr,ipv6only=0 /dev/null & done
t0=$(date +%s%N)
SGCTL_VERIFIER_LOG=1 $SGCTL run --config examples/vm.toml --xdp-mode native --interval 1 --json > $S/sgctl.log 2>&1 &
pid=$!
while ! grep -q 'enforcing on vm1' $S/sgctl.log; do
    kill -0 $pid 2>/dev/null || { echo "sgvm: sgctl exited"; cat $S/sgctl.log; exit 10; }
    sleep 0.2
done
echo $(( ($(date +%s%N) - t0) / 1000000 )) > $S/load_ms
for n in vm0 vm1; do
    ip -d link show dev $n > $S/link-$n.txt
    tc qdisc show dev $n > $S/qdisc-$n.txt
    tc filter show dev $n egress > $S/filter-$n.txt
    $SGCTL status $n --json > $S/status-$n.json
done
bpftool net show > $S/bpftool-net.txt 2>&1
probe() {
    name=$1; shift
    if nc -z -w 3 "$@" 2>/dev/null; then echo "$name pass"; else echo "$name drop"; fi >> $S/guest-flows.txt
}
# At once: a dropped flow waits out nc's 3 s timeout.
probe office-http-allowed 198.18.6.80 80 & p1=$!
probe office-http-other 198.18.6.43 80 & p2=$!
probe office-https-allowed 198.18.6.80 443 & p3=$!
wait $p1 $p2 $p3
: > $S/ready
i=0
while [ ! -e $S/host-done ]; do
    i=$((i + 1)); [ $i -lt 3000 ] || { echo "sgvm: the host never finished"; exit 11; }
    sleep 0.1
done
xdp_drops() {
    for n in vm0 vm1; do ethtool -S $n; done | awk '$1 ~ /^rx(_queue_)?[0-9]+_xdp_drops:$/ { s += $2 } END { print s + 0 }'
}
# A counter line printed between two equal readings of the driver's count.
for try in 1 2 3 4 5 6 7 8; do
    e1=$(xdp_drops)
    lines=$(wc -l < $S/sgctl.log)
    while [ $(wc -l < $S/sgctl.log) -lt $((lines + 2)) ]; do sleep 0.1; done
    line=$(grep '^{' $S/sgctl.log | tail -n 1)
    e2=$(xdp_drops)
    [ "$e1" = "$e2" ] && break
done
echo "$e1 $e2" > $S/ethtool-xdp-drops
echo "$line" > $S/counters.json
for n in vm0 vm1; do ethtool -S $n > $S/ethtool-$n.txt; done
# SIGTERM: the agent goes, enforcement stays; a new agent adopts it; `sgctl down` removes it.
kill -TERM $pid
wait $pid
echo $? > $S/sgctl-exit
for n in vm0 vm1; do $SGCTL status $n --json > $S/term-status-$n.json; done
$SGCTL run --config examples/vm.toml --xdp-mode native --interval 0 > $S/sgctl-again.log 2>&1 &
pid=$!
i=0
while ! grep -q 'applied examples/vm.toml' $S/sgctl-again.log; do
    i=$((i + 1)); [ $i -lt 600 ] || { echo "sgvm: the second agent never got ready"; cat $S/sgctl-again.log; exit 12; }
    kill -0 $pid 2>/dev/null || { echo "sgvm: the second agent exited"; cat $S/sgctl-again.log; exit 12; }
    sleep 0.1
done
$SGCTL down > $S/down.txt 2>&1
echo $? > $S/down-exit
wait $pid
sleep 0.5
for n in vm0 vm1; do
    { ip -d link show dev $n; tc qdisc show dev $n; tc filter show dev $n egress; tc filter show dev $n ingress; } > $S/after-$n.txt
    $SGCTL status $n --json > $S/after-status-$n.json
done
bpftool prog show > $S/after-progs.txt 2>&1
ls -R /sys/fs/bpf > $S/after-bpffs.txt 2>&1
exit 0
"#;

struct Probe {
    name: &'static str,
    src: &'static str,
    dst: &'static str,
    /// 0 for a ping.
    port: u16,
    pass: bool,
}

/// Flows from the host's peers into the guest, each with its expected verdict.
const HOST_FLOWS: &[Probe] = &[
    Probe { name: "web from client", src: "198.18.0.10", dst: "198.18.0.2", port: 80, pass: true },
    Probe { name: "web from admin", src: "198.18.0.20", dst: "198.18.0.2", port: 80, pass: true },
    Probe { name: "web from client over IPv6", src: "2001:db8::10", dst: "2001:db8::2", port: 80, pass: true },
    Probe { name: "ssh from admin", src: "198.18.0.20", dst: "198.18.0.2", port: 22, pass: true },
    Probe { name: "ssh from client", src: "198.18.0.10", dst: "198.18.0.2", port: 22, pass: false },
    Probe { name: "ssh from admin over IPv6", src: "2001:db8::20", dst: "2001:db8::2", port: 22, pass: false },
    Probe { name: "ping from client", src: "198.18.0.10", dst: "198.18.0.2", port: 0, pass: true },
    Probe { name: "ping from admin", src: "198.18.0.20", dst: "198.18.0.2", port: 0, pass: false },
    Probe { name: "database from app (sg-app)", src: "198.18.0.30", dst: "198.18.0.2", port: 3306, pass: true },
    Probe { name: "database from client", src: "198.18.0.10", dst: "198.18.0.2", port: 3306, pass: false },
    Probe { name: "database from admin", src: "198.18.0.20", dst: "198.18.0.2", port: 3306, pass: false },
    Probe { name: "office web unsolicited", src: "198.18.6.80", dst: "198.18.6.2", port: 80, pass: false },
];

/// The guest's own flows out of the office NIC.
const GUEST_FLOWS: &[(&str, bool)] =
    &[("office-http-allowed", true), ("office-http-other", false), ("office-https-allowed", false)];

fn host_probe(ns: &str, p: &Probe) -> bool {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]);
    if p.port == 0 {
        cmd.args(["ping", "-c", "1", "-W", "3", "-n", "-q", "-I", p.src, p.dst]);
    } else {
        cmd.args(["nc", "-z", "-w", "3", "-s", p.src, p.dst, &p.port.to_string()]);
    }
    cmd.output().is_ok_and(|o| o.status.success())
}

fn read(share: &Path, name: &str) -> String {
    std::fs::read_to_string(share.join(name)).unwrap_or_else(|e| panic!("guest file {name}: {e}"))
}

fn json(share: &Path, name: &str) -> Value {
    serde_json::from_str(read(share, name).trim()).unwrap_or_else(|e| panic!("guest file {name}: {e}"))
}

fn scenario(kernel: &str, egress: Egress) {
    let test = format!("vm_kernel_{kernel}");
    if let Some(why) = vm::unavailable() {
        assert!(!in_ci(), "{test}: the VM suite must run under CI, but {why}");
        eprintln!("\n*** SKIPPED {test}: cannot run qemu here: {why} ***\n");
        return;
    }
    let _slot = GuestSlot::take();
    let spec = vm::kernel_spec(kernel).expect("kernel of the matrix");
    // Fetched before the clock starts (cached after the first run).
    vm::kernel(spec).expect("guest kernel");
    let sgctl = guest_sgctl();
    let script = format!("export SGCTL={}\n{GUEST}", sgctl.display());
    let began = Instant::now();
    let console = vm::target_dir().join(format!("vm-console-{kernel}.log"));
    let mut guest = Vm::boot(&VmOptions {
        kernel: spec,
        script,
        console: Console::File(console.clone()),
        timeout: Duration::from_secs(420),
    })
    .expect("booting the guest");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drive(&mut guest, egress, &sgctl)));
    if let Err(panic) = outcome {
        guest.keep_share();
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        eprintln!("--- {test}: guest console (last lines, full log {}) ---", console.display());
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
        eprintln!("--- guest files kept in {} ---", guest.share.display());
        std::panic::resume_unwind(panic);
    }
    eprintln!(
        "{test}: guest {} up after {:.1} s, whole scenario {:.1} s",
        guest.kernel.release,
        guest.boot_seconds().unwrap_or(f64::NAN),
        began.elapsed().as_secs_f64()
    );
}

fn drive(guest: &mut Vm, egress: Egress, sgctl: &Path) {
    let ns = guest.net.ns.clone();
    let host = Host {
        role: "peers".into(),
        ns: ns.clone(),
        iface: "vmtap0".into(),
        ipv4: "198.18.0.10".parse().unwrap(),
        ipv6: "2001:db8::10".parse().unwrap(),
        mac: String::new(),
    };
    // The outside web servers the office NIC talks to (every address of the namespace).
    let _servers: Vec<Server> = [80, 443].iter().map(|&p| host.serve(Proto::Tcp, p).expect("host server")).collect();
    guest.wait_for_file("ready", Duration::from_secs(360)).expect("guest scenario start");
    let share = guest.share.clone();
    let release = read(&share, "uname");
    eprintln!(
        "guest kernel {}; sgctl ({}) loaded and attached in {} ms",
        release.trim(),
        sgctl.display(),
        read(&share, "load_ms").trim()
    );

    // Attach modes.
    for nic in ["vm0", "vm1"] {
        let link = read(&share, &format!("link-{nic}.txt"));
        assert!(link.contains("prog/xdp id"), "{nic}: no driver-mode XDP program: {link}");
        assert!(!link.contains("xdpgeneric"), "{nic}: XDP fell back to generic mode: {link}");
        let status = json(&share, &format!("status-{nic}.json"));
        let filters = read(&share, &format!("filter-{nic}.txt"));
        let qdiscs = read(&share, &format!("qdisc-{nic}.txt"));
        match egress {
            Egress::Tcx => {
                assert!(
                    status["tcx_programs"].as_array().is_some_and(|a| !a.is_empty()),
                    "{nic}: sg_egress not on the TCX hook: {status}"
                );
                assert!(!filters.contains("sg_egress"), "{nic}: a clsact filter beside TCX: {filters}");
            }
            Egress::Clsact => {
                assert!(filters.contains("sg_egress"), "{nic}: no clsact filter sg_egress: {filters}");
                assert!(qdiscs.contains("clsact"), "{nic}: no clsact qdisc: {qdiscs}");
            }
        }
    }
    let net = read(&share, "bpftool-net.txt");
    for nic in ["vm0", "vm1"] {
        assert!(
            net.lines().any(|l| l.starts_with(&format!("{nic}(")) && l.contains(" driver id ")),
            "bpftool does not show {nic} in driver mode: {net}"
        );
    }
    let log = read(&share, "sgctl.log");
    let hook = if egress == Egress::Tcx { "egress TC Tcx" } else { "egress TC Clsact" };
    for nic in ["vm0", "vm1"] {
        assert!(
            log.lines().any(|l| l.contains(&format!("enforcing on {nic} (ingress XDP native, {hook}"))),
            "sgctl did not report {nic} as native XDP with {hook}: {log}"
        );
    }

    // Traffic.
    let mut wrong = Vec::new();
    let mut observed = Vec::new();
    // All at once: each dropped flow waits out its 3 s timeout.
    let verdicts: Vec<bool> = std::thread::scope(|s| {
        let probes: Vec<_> = HOST_FLOWS.iter().map(|p| s.spawn(|| host_probe(&ns, p))).collect();
        probes.into_iter().map(|p| p.join().expect("probe thread")).collect()
    });
    for (p, passed) in HOST_FLOWS.iter().zip(verdicts) {
        let _: IpAddr = p.src.parse().expect("source address");
        observed.push(format!("{}: {}", p.name, if passed { "pass" } else { "drop" }));
        if passed != p.pass {
            wrong.push(format!("{} ({} -> {}:{}): expected {}", p.name, p.src, p.dst, p.port, verdict(p.pass)));
        }
    }
    std::fs::write(share.join("host-done"), "").expect("signalling the guest");
    let guest_flows = read(&share, "guest-flows.txt");
    for (name, pass) in GUEST_FLOWS {
        let line = guest_flows.lines().find(|l| l.split_whitespace().next() == Some(name));
        let seen = line.and_then(|l| l.split_whitespace().nth(1)).unwrap_or("missing");
        observed.push(format!("{name}: {seen}"));
        if seen != verdict(*pass) {
            wrong.push(format!("{name} (guest, vm1): expected {}, saw {seen}", verdict(*pass)));
        }
    }
    eprintln!("flows: {}", observed.join("; "));
    assert!(wrong.is_empty(), "flows with the wrong verdict: {wrong:#?}");

    let status = guest.wait().expect("the guest's scenario");
    assert_eq!(status, 0, "the guest scenario failed; sgctl log:\n{}", read(&share, "sgctl.log"));

    // Counters: sgctl's XDP drops are the driver's.
    let drops = read(&share, "ethtool-xdp-drops");
    let (e1, e2) = drops.trim().split_once(' ').expect("two readings");
    assert_eq!(e1, e2, "the driver's XDP drop count never held still");
    let driver: u64 = e1.parse().expect("a count");
    let counters = json(&share, "counters.json");
    let sgctl_drops = counters["ingress"]["dropped"].as_u64().expect("ingress drops");
    let dropped_flows = HOST_FLOWS.iter().filter(|p| !p.pass).count() as u64;
    eprintln!("XDP drops: sgctl {sgctl_drops}, ethtool -S per-queue xdp_drops {driver}; counters {counters}");
    assert!(driver >= dropped_flows, "fewer driver drops ({driver}) than dropped flows ({dropped_flows})");
    assert_eq!(sgctl_drops, driver, "sgctl's XDP drop count differs from the driver's");
    assert!(counters["egress"]["dropped"].as_u64().unwrap_or(0) >= 2, "no egress drops counted: {counters}");

    // SIGTERM leaves enforcement; a second agent adopts it untouched; `sgctl down`
    // leaves nothing behind.
    assert_eq!(read(&share, "sgctl-exit").trim(), "0", "sgctl did not stop cleanly:\n{}", read(&share, "sgctl.log"));
    for nic in ["vm0", "vm1"] {
        let status = json(&share, &format!("term-status-{nic}.json"));
        assert_eq!(status["attached"], Value::Bool(true), "{nic}: enforcement stays after SIGTERM: {status}");
    }
    let again = read(&share, "sgctl-again.log");
    assert!(again.contains("adopted generation 1 as it was"), "the second agent adopts the first's state: {again}");
    assert_eq!(read(&share, "down-exit").trim(), "0", "sgctl down failed: {}", read(&share, "down.txt"));
    assert!(!read(&share, "after-bpffs.txt").contains("gen-"), "pins left: {}", read(&share, "after-bpffs.txt"));
    for nic in ["vm0", "vm1"] {
        let after = read(&share, &format!("after-{nic}.txt"));
        assert!(!after.contains("prog/xdp") && !after.contains("xdpgeneric"), "{nic}: XDP left: {after}");
        assert!(!after.contains("sg_egress") && !after.contains("clsact"), "{nic}: TC left: {after}");
        let status = json(&share, &format!("after-status-{nic}.json"));
        assert_eq!(status["attached"], Value::Bool(false), "{nic}: sgctl status after detach: {status}");
    }
    let progs = read(&share, "after-progs.txt");
    assert!(!progs.contains("sg_ingress") && !progs.contains("sg_egress"), "programs left loaded: {progs}");
}

fn verdict(pass: bool) -> &'static str {
    if pass { "pass" } else { "drop" }
}
