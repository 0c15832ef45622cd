use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Builds the eBPF objects (xdplb-ebpf's binaries) into OUT_DIR with the nightly toolchain.
#[allow(
    unsafe_code,
    reason = "one set_var, before this single-threaded build script starts any thread"
)]
fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("xdplb has no parent directory"))?
        .join("xdplb-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    // aya-build runs a nested `cargo build` of the eBPF crate and turns every line it prints
    // on stderr into a `cargo:warning`, so each "Compiling core ...", "Compiling aya-ebpf ...",
    // "Finished ..." status line showed as `warning: xdplb@0.1.0: ...` (47 of them in a cold
    // `cargo install`). The nested cargo inherits this environment: quiet, it prints only
    // errors and real diagnostics (which aya-build also reports as warnings, as they should
    // be).
    // SAFETY: nothing else runs in this process yet: no thread reads the environment.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [Package {
            name: "xdplb-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
