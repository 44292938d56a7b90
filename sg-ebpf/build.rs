//! Rebuild the eBPF object when bpf-linker changes (as aya-template does).
use which::which;

fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
