use which::which;

/// Rebuild the eBPF objects when bpf-linker changes: it is a tool of the build that cargo does
/// not track by itself.
fn main() {
    let bpf_linker = which("bpf-linker").unwrap_or_else(|err| {
        panic!("bpf-linker not found ({err}); run scripts/setup.sh, which installs it")
    });
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
