//! A throw-away qemu guest with two virtio-net NICs, for `cargo xtask vm` and the VM test
//! suite (`tests/tests/vm.rs`).
//!
//! - Guest kernels are Debian packages, fetched with a private apt configuration (the
//!   host's apt sources and package state are untouched), unpacked with `dpkg-deb -x`,
//!   never installed; cached under `target/vm-cache/` and not fetched again.
//! - The initramfs is Debian's static busybox plus the modules the guest needs
//!   (virtio-pci, virtio-net, 9p, clsact and cls_bpf), inserted in dependency order. Its
//!   init mounts the host's root read-only over 9p, a writable 9p share (at the same path
//!   as on the host), tmpfs on /tmp, /run and /var/tmp, and bpffs, then runs the share's
//!   `run.sh` chrooted into the host root and writes its exit status to the share.
//! - The tap ends of the NICs live in a network namespace of the host that the guest's
//!   [`Vm`] creates and removes (also on panic; a killed run's namespace is removed by the
//!   next). Addresses come from 198.18.0.0/15 and 2001:db8::/32 only; nothing routes out.
//! - qemu uses TCG unless the CPU shows vmx/svm (a paravirtual /dev/kvm without them
//!   cannot run a stock kernel), and dies with the process that started it.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// A guest kernel of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSpec {
    /// What `--kernel` takes.
    pub label: &'static str,
    /// The Debian suite whose `linux-image-amd64` names the package.
    pub suite: &'static str,
}

/// The kernels the suite proves: bookworm-backports (TCX), bookworm (clsact only) and
/// bullseye (the oldest supported).
pub const KERNELS: [KernelSpec; 3] = [
    KernelSpec { label: "6.12", suite: "bookworm-backports" },
    KernelSpec { label: "6.1", suite: "bookworm" },
    KernelSpec { label: "5.10", suite: "bullseye" },
];

pub fn kernel_spec(label: &str) -> Result<KernelSpec> {
    KERNELS
        .iter()
        .copied()
        .find(|k| k.label == label)
        .ok_or_else(|| anyhow!("unknown kernel {label}; one of: {}", KERNELS.map(|k| k.label).join(", ")))
}

/// One NIC of the guest: its MAC (the guest finds it by MAC, then renames it), the
/// addresses on both ends of its tap.
#[derive(Clone, Copy, Debug)]
pub struct Nic {
    /// The name the guest gives the NIC (and `examples/vm.toml` uses).
    pub guest_name: &'static str,
    pub mac: &'static str,
    /// The tap in the host namespace.
    pub tap: &'static str,
    pub guest_addrs: &'static [&'static str],
    /// Addresses on the tap: the hosts the guest talks to on this link.
    pub host_addrs: &'static [&'static str],
}

/// The guest's two NICs. `vm0` is the server NIC (web, SSH, ping, database); its peers are
/// a client (.10), the admin workstation (.20) and an app server in the database's
/// allowed group (.30). `vm1` is the office NIC with an egress whitelist; its peers are an
/// allowed web server (.80) and another one (.43).
pub const NICS: [Nic; 2] = [
    Nic {
        guest_name: "vm0",
        mac: "52:54:00:5e:00:01",
        tap: "vmtap0",
        guest_addrs: &["198.18.0.2/24", "2001:db8::2/64"],
        host_addrs: &["198.18.0.10/24", "198.18.0.20/24", "198.18.0.30/24", "2001:db8::10/64", "2001:db8::20/64"],
    },
    Nic {
        guest_name: "vm1",
        mac: "52:54:00:5e:00:02",
        tap: "vmtap1",
        guest_addrs: &["198.18.6.2/24"],
        host_addrs: &["198.18.6.80/24", "198.18.6.43/24"],
    },
];

/// Queues per NIC: virtio-net's XDP wants a TX queue per CPU beside the stack's, so with
/// one vCPU two queues keep it out of its locked TX mode.
const QUEUES: u32 = 2;
const VCPUS: u32 = 1;
const MEMORY_MIB: u32 = 1536;

/// Modules the guest loads (with their dependencies) when not built in.
const MODULES: &[&str] = &["virtio_pci", "virtio_net", "9pnet_virtio", "9p", "sch_ingress", "cls_bpf"];

const NS_PREFIX: &str = "sgvm";
static NEXT: AtomicU32 = AtomicU32::new(0);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".."))
}

/// `$CARGO_TARGET_DIR`, else `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

fn cache_dir() -> PathBuf {
    target_dir().join("vm-cache")
}

/// Runs a command, failing with its stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// Why qemu cannot run here, if it cannot (the suite skips on that outside CI).
pub fn unavailable() -> Option<String> {
    if Command::new("qemu-system-x86_64").arg("--version").stdout(Stdio::null()).status().is_err() {
        return Some("qemu-system-x86_64 is not installed (cargo xtask setup installs it)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (taps and network namespaces need CAP_NET_ADMIN)".into());
    }
    None
}

/// True when the CPU can run a guest under KVM (`/dev/kvm` alone is not enough: a
/// paravirtual KVM without vmx/svm fails on a stock kernel).
fn kvm_usable() -> bool {
    let flags = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    hw && Path::new("/dev/kvm").exists() && std::env::var_os("SGVM_NO_KVM").is_none()
}

// ---------------------------------------------------------------------------------------
// Kernels

/// An unpacked guest kernel.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub spec: KernelSpec,
    /// `uname -r` of the guest.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// The unpacked package (its `lib/modules/<release>`).
    root: PathBuf,
}

fn apt_options(dir: &Path) -> Vec<String> {
    let d = dir.display();
    vec![
        format!("-oDir::Etc::SourceList={d}/sources.list"),
        format!("-oDir::Etc::SourceParts={d}/sources.list.d"),
        format!("-oDir::Etc::Preferences={d}/preferences"),
        format!("-oDir::Etc::PreferencesParts={d}/preferences.d"),
        format!("-oDir::State::Lists={d}/lists"),
        format!("-oDir::Cache={d}/cache"),
        format!("-oDir::Cache::archives={d}/archives"),
        "-oAcquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false".into(),
        "-oAcquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
        "-oAcquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".into(),
        "-oAcquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".into(),
        "-oAcquire::Languages=none".into(),
        "-oAPT::Sandbox::User=root".into(),
    ]
}

/// A private apt state under the cache: the three suites, the host's keyring.
fn private_apt() -> Result<PathBuf> {
    let dir = cache_dir().join("apt");
    for sub in ["sources.list.d", "preferences.d", "lists/partial", "cache", "archives/partial"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let mirror = "http://deb.debian.org/debian";
    let suites = ["bookworm", "bookworm-backports", "bullseye"];
    let list: String = suites.iter().map(|s| format!("deb [signed-by={keyring}] {mirror} {s} main\n")).collect();
    fs::write(dir.join("sources.list"), list)?;
    Ok(dir)
}

/// The guest kernel `spec`, fetched and unpacked once into `target/vm-cache/`.
pub fn kernel(spec: KernelSpec) -> Result<Kernel> {
    let root = cache_dir().join(format!("kernel-{}", spec.label));
    let marker = root.join(".sgvm-complete");
    // One fetch at a time: the private apt state is shared and apt locks it.
    static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _fetching = FETCHING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !marker.exists() {
        fetch_kernel(spec, &root)?;
        fs::write(&marker, "")?;
    }
    let modules = root.join("lib/modules");
    let release = fs::read_dir(&modules)
        .with_context(|| format!("reading {}", modules.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| anyhow!("no kernel release under {}", modules.display()))?;
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    Ok(Kernel { spec, release, vmlinuz, root })
}

fn fetch_kernel(spec: KernelSpec, root: &Path) -> Result<()> {
    println!("==> vm: fetching the {} guest kernel (Debian {}; cached afterwards)", spec.label, spec.suite);
    let apt = private_apt()?;
    let opts = apt_options(&apt);
    let apt_get = |args: &[&str]| run(Command::new("apt-get").args(&opts).args(args));
    apt_get(&["-q", "update"])?;
    let show = run(Command::new("apt-cache").args(&opts).args(["show", &format!("linux-image-amd64/{}", spec.suite)]))?;
    let package = show
        .lines()
        .find_map(|l| l.strip_prefix("Depends: "))
        .and_then(|d| d.split([' ', ',']).find(|p| p.starts_with("linux-image-")))
        .ok_or_else(|| anyhow!("linux-image-amd64/{} names no kernel package", spec.suite))?
        .to_string();
    let debs = cache_dir().join("debs");
    fs::create_dir_all(&debs)?;
    run(Command::new("apt-get").args(&opts).args(["-q", "download", &package]).current_dir(&debs))?;
    let deb = fs::read_dir(&debs)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_"))))
        .ok_or_else(|| anyhow!("apt-get download {package} left no .deb"))?;
    let _ = fs::remove_dir_all(root);
    fs::create_dir_all(root)?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root))?;
    let release = fs::read_dir(root.join("lib/modules"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| anyhow!("{} has no lib/modules", deb.display()))?;
    run(Command::new("depmod").arg("-b").arg(root).arg(&release))?;
    fs::remove_file(&deb)?;
    println!("    {package} ({release}) unpacked into {}", root.display());
    Ok(())
}

impl Kernel {
    /// Module files (relative to `lib/modules/<release>`) to insert, dependencies first.
    fn module_files(&self) -> Result<Vec<String>> {
        let dir = self.root.join("lib/modules").join(&self.release);
        let dep = fs::read_to_string(dir.join("modules.dep"))?;
        let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        let name_of = |path: &str| {
            let file = path.rsplit('/').next().unwrap_or(path);
            file.split(".ko").next().unwrap_or(file).replace('-', "_")
        };
        let deps: Vec<(String, Vec<String>)> = dep
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(m, d)| (m.to_string(), d.split_whitespace().map(str::to_string).collect()))
            .collect();
        fn visit(path: &str, deps: &[(String, Vec<String>)], out: &mut Vec<String>) {
            if out.iter().any(|p| p == path) {
                return;
            }
            if let Some((_, ds)) = deps.iter().find(|(m, _)| m == path) {
                for d in ds.iter().rev() {
                    visit(d, deps, out);
                }
            }
            out.push(path.to_string());
        }
        let mut out = Vec::new();
        for wanted in MODULES {
            if builtin.lines().any(|l| name_of(l) == *wanted) {
                continue;
            }
            let (path, _) = deps
                .iter()
                .find(|(m, _)| name_of(m) == *wanted)
                .ok_or_else(|| anyhow!("kernel {} has no module {wanted}", self.release))?;
            visit(path, &deps, &mut out);
        }
        Ok(out)
    }

    /// Builds the initramfs (busybox, the modules, `init`) into `out`.
    fn initramfs(&self, out: &Path) -> Result<()> {
        let stage = out.with_extension("d");
        let _ = fs::remove_dir_all(&stage);
        for d in ["bin", "proc", "sys", "dev", "newroot", "modules"] {
            fs::create_dir_all(stage.join(d))?;
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| anyhow!("busybox is not installed (cargo xtask setup installs busybox-static)"))?;
        fs::copy(busybox, stage.join("bin/busybox"))?;
        let dir = self.root.join("lib/modules").join(&self.release);
        let mut order = String::new();
        for (i, m) in self.module_files()?.iter().enumerate() {
            let src = dir.join(m);
            let name = format!("{i:02}-{}.ko", m.rsplit('/').next().unwrap_or(m).split(".ko").next().unwrap_or(m));
            let dst = stage.join("modules").join(&name);
            let bytes = if m.ends_with(".xz") {
                run_bytes(Command::new("xz").arg("-dc").arg(&src))?
            } else if m.ends_with(".zst") {
                run_bytes(Command::new("zstd").arg("-dc").arg(&src))?
            } else if m.ends_with(".gz") {
                run_bytes(Command::new("gzip").arg("-dc").arg(&src))?
            } else {
                fs::read(&src)?
            };
            fs::write(dst, bytes)?;
            order.push_str(&name);
            order.push('\n');
        }
        fs::write(stage.join("modules/order"), order)?;
        let init = stage.join("init");
        fs::write(&init, INIT)?;
        run(Command::new("chmod").arg("755").arg(&init))?;
        let script = format!(
            "cd {} && find . -mindepth 1 | sort | cpio --quiet -o -H newc -R 0:0 | gzip -1 > {}",
            stage.display(),
            out.display()
        );
        run(Command::new("sh").args(["-c", &script]))?;
        fs::remove_dir_all(&stage)?;
        Ok(())
    }
}

fn run_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// The initramfs's `/init` (busybox sh).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do
    insmod /modules/$m || echo "sgvm: insmod $m failed"
done
share=$(sed -n 's/.*sgvm\.share=\([^ ]*\).*/\1/p' /proc/cmdline)
fail() { echo "sgvm: $*"; reboot -f; }
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /newroot || fail "no 9p host root"
for d in tmp run var/tmp; do mount -t tmpfs tmpfs /newroot/$d; done
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts && mount -t devpts devpts /newroot/dev/pts
mount -t bpf bpf /newroot/sys/fs/bpf
mount -t tracefs tracefs /newroot/sys/kernel/tracing 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /newroot$share || fail "no 9p share"
hostname sgvm
if grep -q sgvm.interactive /proc/cmdline; then
    setsid -c chroot /newroot /bin/sh $share/run.sh
else
    chroot /newroot /bin/sh $share/run.sh
fi
echo $? > /newroot$share/status
sync
umount /newroot$share
reboot -f
"#;

// ---------------------------------------------------------------------------------------
// The host side of the NICs

/// A network namespace of the host holding the taps; removed on drop.
pub struct HostNet {
    pub ns: String,
}

impl HostNet {
    fn create() -> Result<Self> {
        remove_stale_namespaces();
        let ns = format!("{NS_PREFIX}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &ns])?;
        let net = Self { ns };
        let ns = net.ns.as_str();
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        for nic in &NICS {
            ip(&["-n", ns, "tuntap", "add", "dev", nic.tap, "mode", "tap", "multi_queue"])?;
            for addr in nic.host_addrs {
                let mut args = vec!["-n", ns, "addr", "add", addr, "dev", nic.tap];
                if addr.contains(':') {
                    args.push("nodad");
                }
                ip(&args)?;
            }
            ip(&["-n", ns, "link", "set", nic.tap, "up"])?;
        }
        Ok(net)
    }
}

impl Drop for HostNet {
    fn drop(&mut self) {
        for nic in &NICS {
            let _ = Command::new("ip").args(["-n", &self.ns, "link", "del", nic.tap]).output();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// Deletes `sgvm-<pid>-...` namespaces whose process is gone.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let mut parts = name.splitn(3, '-');
        if parts.next() != Some(NS_PREFIX) {
            continue;
        }
        let Some(pid) = parts.next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        // SAFETY: signal 0 only probes whether the process exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            for nic in &NICS {
                let _ = Command::new("ip").args(["-n", name, "link", "del", nic.tap]).output();
            }
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The guest

/// Where the guest's console goes.
#[derive(Clone, Debug)]
pub enum Console {
    /// This process's terminal, the guest's shell interactive (Ctrl-A x quits qemu).
    Interactive,
    /// This process's stdout (stdin not connected).
    Stdout,
    /// A file.
    File(PathBuf),
}

#[derive(Clone, Debug)]
pub struct VmOptions {
    pub kernel: KernelSpec,
    /// Shell run in the guest (chrooted into the host root, cwd the workspace) after its
    /// NICs are up as `vm0` and `vm1`; its exit status is the guest's.
    pub script: String,
    pub console: Console,
    /// qemu is killed after this long.
    pub timeout: Duration,
}

/// A running guest; dropping it kills qemu and removes the host namespace and the share.
pub struct Vm {
    qemu: Option<Child>,
    pub net: HostNet,
    /// The writable share, at the same path in the guest.
    pub share: PathBuf,
    pub kernel: Kernel,
    pub started: Instant,
    deadline: Instant,
    keep_share: bool,
}

/// The guest-side prologue: NICs renamed by MAC and addressed.
fn prologue(share: &Path) -> String {
    let mut s = format!("export SGVM_SHARE={}\n", share.display());
    s.push_str(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         export HOME=/tmp TERM=${TERM:-linux}\n\
         ip link set lo up\n\
         nic_by_mac() { for d in /sys/class/net/*; do [ \"$(cat $d/address)\" = \"$1\" ] && basename $d; done; }\n",
    );
    for nic in &NICS {
        let name = nic.guest_name;
        s.push_str(&format!(
            "n=$(nic_by_mac {mac}); [ -n \"$n\" ] || {{ echo 'sgvm: no NIC with MAC {mac}'; exit 97; }}\n\
             [ \"$n\" = {name} ] || ip link set dev $n name {name}\n",
            mac = nic.mac
        ));
        for addr in nic.guest_addrs {
            let nodad = if addr.contains(':') { " nodad" } else { "" };
            s.push_str(&format!("ip addr add {addr} dev {name}{nodad}\n"));
        }
        s.push_str(&format!("ip link set {name} up\n"));
    }
    s.push_str(&format!("date +%s.%N > {}/booted\n", share.display()));
    s.push_str(&format!("cd {}\n", workspace_root().canonicalize().unwrap_or_else(|_| workspace_root()).display()));
    s
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM/SIGHUP set a flag the wait loop checks, so the guest's resources are
/// removed before this process exits.
pub fn trap_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

impl Vm {
    /// Fetches the kernel if needed, builds the initramfs, creates the host namespace
    /// with the taps and starts qemu in it.
    pub fn boot(opts: &VmOptions) -> Result<Self> {
        let kernel = kernel(opts.kernel)?;
        let id = format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let share = target_dir().join("vm-run").join(&id);
        let _ = fs::remove_dir_all(&share);
        fs::create_dir_all(&share)?;
        let share = share.canonicalize()?;
        let initramfs = share.join("initramfs.cpio.gz");
        kernel.initramfs(&initramfs)?;
        fs::write(share.join("run.sh"), format!("{}\n{}\n", prologue(&share), opts.script))?;
        let net = HostNet::create()?;
        let mut vm = Self {
            qemu: None,
            net,
            share: share.clone(),
            kernel,
            started: Instant::now(),
            deadline: Instant::now() + opts.timeout,
            keep_share: std::env::var_os("SGVM_KEEP").is_some(),
        };
        let interactive = matches!(opts.console, Console::Interactive);
        let mut append = format!("console=ttyS0 panic=-1 sgvm.share={}", share.display());
        // A console file keeps the kernel's messages; a terminal shows only the guest's.
        append.push_str(if matches!(opts.console, Console::File(_)) { " loglevel=4" } else { " quiet loglevel=1" });
        if interactive {
            append.push_str(" sgvm.interactive");
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &vm.net.ns, "qemu-system-x86_64"]);
        if kvm_usable() {
            cmd.args(["-accel", "kvm", "-cpu", "host"]);
        } else {
            cmd.args(["-accel", "tcg", "-cpu", "max"]);
        }
        cmd.args(["-nodefaults", "-no-user-config", "-no-reboot", "-display", "none"]);
        cmd.args(["-m", &MEMORY_MIB.to_string(), "-smp", &VCPUS.to_string()]);
        cmd.arg("-kernel").arg(&vm.kernel.vmlinuz).arg("-initrd").arg(&initramfs).args(["-append", &append]);
        cmd.args(["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"]);
        cmd.arg("-virtfs")
            .arg(format!("local,path={},mount_tag=share,security_model=none,multidevs=remap", share.display()));
        for (i, nic) in NICS.iter().enumerate() {
            cmd.arg("-netdev")
                .arg(format!("tap,id=n{i},ifname={},script=no,downscript=no,queues={QUEUES},vhost=off", nic.tap));
            cmd.arg("-device").arg(format!(
                "virtio-net-pci,netdev=n{i},mac={},mq=on,vectors={}",
                nic.mac,
                2 * QUEUES + 2
            ));
        }
        match &opts.console {
            Console::Interactive => {
                cmd.args([
                    "-chardev",
                    "stdio,id=con,mux=on,signal=off",
                    "-serial",
                    "chardev:con",
                    "-mon",
                    "chardev=con",
                ]);
            }
            Console::Stdout => {
                cmd.args(["-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con"]).stdin(Stdio::null());
            }
            Console::File(path) => {
                cmd.arg("-chardev").arg(format!("file,id=con,path={}", path.display()));
                cmd.args(["-serial", "chardev:con"]).stdin(Stdio::null()).stdout(Stdio::null());
            }
        }
        // SAFETY: prctl in the child before exec; `ip netns exec` execs qemu, which keeps it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        vm.started = Instant::now();
        vm.qemu = Some(cmd.spawn().context("starting qemu")?);
        Ok(vm)
    }

    /// Waits for qemu to exit; returns the guest command's exit status.
    pub fn wait(&mut self) -> Result<i32> {
        let status = self.wait_qemu()?;
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted; the guest was stopped");
        }
        let text = fs::read_to_string(self.share.join("status"))
            .map_err(|_| anyhow!("the guest ended without an exit status (qemu: {status}); see its console"))?;
        text.trim().parse().with_context(|| format!("guest status {text:?}"))
    }

    fn wait_qemu(&mut self) -> Result<ExitStatus> {
        let child = self.qemu.as_mut().ok_or_else(|| anyhow!("qemu not running"))?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.qemu = None;
                return Ok(status);
            }
            if INTERRUPTED.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
            if Instant::now() > self.deadline {
                bail!("the guest did not finish within its time limit");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// True while qemu runs.
    pub fn running(&mut self) -> bool {
        self.qemu.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits until the guest creates `name` in the share.
    pub fn wait_for_file(&mut self, name: &str, timeout: Duration) -> Result<PathBuf> {
        let path = self.share.join(name);
        let deadline = Instant::now() + timeout;
        while !path.exists() {
            if !self.running() {
                bail!("the guest stopped before writing {name}");
            }
            if INTERRUPTED.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
            if Instant::now() > deadline.min(self.deadline) {
                bail!("the guest did not write {name} within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(path)
    }

    /// Seconds from qemu's start until the guest's NICs were up.
    pub fn boot_seconds(&self) -> Option<f64> {
        let booted = fs::metadata(self.share.join("booted")).ok()?.modified().ok()?;
        let since = booted.elapsed().ok()?;
        Some(self.started.elapsed().saturating_sub(since).as_secs_f64())
    }

    /// Keeps the share directory (console log, results) after the guest is dropped.
    pub fn keep_share(&mut self) {
        self.keep_share = true;
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut child) = self.qemu.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.keep_share {
            let _ = fs::remove_dir_all(&self.share);
        }
    }
}
