//! `cargo xtask vm`: the command-line side of the VM harness (`xtask::vm`).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use xtask::vm::{self, Console, Vm, VmOptions};

/// Quotes `arg` for a POSIX shell.
pub fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// The sgctl the guest runs: `$SGCTL_VM_BIN`, else the static build of `cargo xtask dist`
/// (built now, so it is current).
pub fn guest_sgctl() -> Result<PathBuf> {
    match std::env::var_os("SGCTL_VM_BIN") {
        Some(path) => Ok(PathBuf::from(path)),
        None => crate::dist::static_sgctl(),
    }
}

pub fn main(kernel: &str, command: &[String]) -> ExitCode {
    match run(kernel, command) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(kernel: &str, command: &[String]) -> Result<i32> {
    let spec = vm::kernel_spec(kernel)?;
    crate::setup::run()?;
    if let Some(why) = vm::unavailable() {
        anyhow::bail!("cannot run a guest here: {why}");
    }
    let sgctl = guest_sgctl()?;
    let bin_dir = sgctl.parent().map(PathBuf::from).unwrap_or_default();
    let path = format!("export PATH={}:$PATH\n", bin_dir.display());
    let (script, console) = if command.is_empty() {
        (format!("{path}{}", interactive_script()), Console::Interactive)
    } else {
        let cmd: Vec<String> = command.iter().map(|a| shell_quote(a)).collect();
        (format!("{path}{}\n", cmd.join(" ")), Console::Stdout)
    };
    vm::trap_signals();
    println!("==> vm: booting the {kernel} guest (TCG unless the CPU has vmx/svm; Ctrl-A x quits qemu)");
    let mut guest = Vm::boot(&VmOptions { kernel: spec, script, console, timeout: Duration::from_secs(24 * 3600) })?;
    let code = guest.wait()?;
    if let Some(boot) = guest.boot_seconds() {
        println!("==> vm: guest up after {boot:.1} s; its command exited with {code}");
    }
    Ok(code)
}

/// The shell session of `cargo xtask vm` without a command: sgctl enforcing
/// examples/vm.toml on both NICs in native mode, then an interactive shell.
fn interactive_script() -> String {
    r#"echo "sgvm: $(uname -r); starting sgctl run --config examples/vm.toml --xdp-mode native"
sgctl run --config examples/vm.toml --xdp-mode native --interval 0 > /tmp/sgctl.log 2>&1 &
echo $! > /run/sgctl-vm.pid
for i in $(seq 1 600); do
    grep -q 'enforcing on vm1' /tmp/sgctl.log && break
    kill -0 $(cat /run/sgctl-vm.pid) 2>/dev/null || break
    sleep 0.5
done
cat /tmp/sgctl.log
cat <<'EOF'

sgvm: a throw-away guest; its NICs vm0 (198.18.0.2) and vm1 (198.18.6.2) are virtio-net,
      their tap ends in a host namespace (see README "Trying it on a VM NIC").
      sgctl's log: /tmp/sgctl.log; try `sgctl status vm0`, `ip -d link show vm0`,
      `bpftool net`, `ethtool -S vm0`, `sgctl sessions`. Exit the shell to power off.

EOF
export PS1='sgvm# '
/bin/bash --norc -i || /bin/sh -i
kill $(cat /run/sgctl-vm.pid) 2>/dev/null
wait
"#
    .to_string()
}
