//! The install artifacts: the static binary (scripts/build-static.sh) and the Debian package
//! (scripts/build-deb.sh), built by the scripts the README documents, in the workspace's target
//! directory (so a second run is incremental). The first musl build of the whole tree takes
//! minutes; the builds are bounded and shared by the tests of this file.
//! The package test installs the .deb with dpkg (root) and purges it afterwards, even on
//! failure.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::Duration,
};

use xdplb_test_support::{
    netns::{Daemon, Netns, run_bounded},
    require_root,
};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A cold musl build of everything, on a loaded two-core machine, fits in this.
const BUILD: Duration = Duration::from_mins(40);

/// One build at a time: the deb build runs the static build again (incremental by then).
static BUILDING: Mutex<()> = Mutex::new(());

/// Runs `bash scripts/NAME` in the workspace and returns the path it prints last.
fn build(script: &str) -> PathBuf {
    let _one = BUILDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let path = root().join("scripts").join(script);
    let out = run_bounded(&["bash", path.to_str().expect("UTF-8 path")], BUILD);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("the script prints a path");
    root().join(last.trim())
}

/// Runs a command (bounded) and returns (success, stdout + stderr).
fn run(args: &[&str]) -> (bool, String) {
    let out = run_bounded(args, Duration::from_mins(1));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_static_binary_is_static_stripped_and_runs() {
    let bin = build("build-static.sh");
    let bin_str = bin.to_str().expect("UTF-8 path");
    assert!(
        bin.ends_with("target/x86_64-unknown-linux-musl/release/xdplb"),
        "{}",
        bin.display()
    );
    let (ok, file) = run(&["file", "-L", bin_str]);
    assert!(ok, "{file}");
    assert!(
        file.contains("statically linked") || file.contains("static-pie linked"),
        "not static: {file}"
    );
    assert!(
        file.contains("stripped") && !file.contains("not stripped"),
        "{file}"
    );
    // ldd refuses it (exit 1: "not a dynamic executable"; "statically linked" for static-pie).
    let (ldd_ok, ldd) = run(&["ldd", bin_str]);
    assert!(
        ldd.contains("not a dynamic executable") || ldd.contains("statically linked"),
        "ldd ({ldd_ok}): {ldd}"
    );
    let (ok, version) = run(&[bin_str, "--version"]);
    assert!(ok, "{version}");
    assert_eq!(
        version.trim(),
        format!("xdplb {}", env!("CARGO_PKG_VERSION")),
        "{version}"
    );
    for config in ["packaging/xdplb.toml", "examples/maglev.toml"] {
        let path = root().join(config);
        let (ok, text) = run(&[bin_str, "check", "--config", path.to_str().expect("UTF-8")]);
        assert!(ok && text.contains(": OK"), "{config}: {text}");
    }
    // The eBPF objects are embedded: the daemon loads and attaches the data plane from this
    // binary alone (in a namespace of its own, removed again with --cleanup).
    if rustix::process::geteuid().is_root() {
        let ns = Netns::new("static");
        let dir = std::env::temp_dir().join(format!("xdplb-static-{}", std::process::id()));
        let env = format!("XDPLB_RUN_DIR={}", dir.display());
        let config = root().join("packaging/xdplb.toml");
        let mut args = ns.prefix();
        for a in [
            "env",
            &env,
            bin_str,
            "run",
            "--cleanup",
            "--instance",
            "static",
            "--config",
            config.to_str().expect("UTF-8"),
        ] {
            args.push(a.to_owned());
        }
        let mut daemon = Daemon::spawn(&args);
        daemon.wait_for("running instance", Duration::from_secs(30));
        let link = ns.exec(&["ip", "-d", "link", "show", "dev", "lo"]);
        assert!(
            String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
            "lo has no XDP program: {}",
            String::from_utf8_lossy(&link.stdout)
        );
        assert!(daemon.terminate(Duration::from_secs(10)).success());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Purges the package on drop, so a failed assertion leaves nothing installed.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let out = Command::new("dpkg").args(["--purge", "xdplb"]).output();
        if let Ok(out) = out
            && !out.status.success()
        {
            eprintln!(
                "dpkg --purge xdplb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn the_debian_package_installs_checks_its_config_and_purges() {
    require_root();
    // An operator's real install is not this test's to replace and purge.
    let (present, status) = run(&["dpkg-query", "-W", "-f=${Status}", "xdplb"]);
    if present && status.contains("installed") {
        eprintln!("skipped: a package xdplb is installed on this host ({status})");
        return;
    }
    let deb = build("build-deb.sh");
    let deb_str = deb.to_str().expect("UTF-8 path");
    assert!(
        deb.extension().is_some_and(|e| e == "deb"),
        "{}",
        deb.display()
    );
    let (ok, fields) = run(&["dpkg-deb", "-f", deb_str, "Package", "Version", "Depends"]);
    assert!(ok, "{fields}");
    assert!(
        fields.contains("Package: xdplb") && !fields.contains("libc6"),
        "{fields}"
    );

    let installed = Installed;
    let (ok, text) = run(&["dpkg", "-i", deb_str]);
    assert!(ok, "dpkg -i: {text}");

    let (ok, text) = run(&[
        "/usr/bin/xdplb",
        "check",
        "--config",
        "/etc/xdplb/xdplb.toml",
    ]);
    assert!(ok && text.contains("/etc/xdplb/xdplb.toml: OK"), "{text}");
    let (ok, conffiles) = run(&["dpkg-query", "-W", "-f=${Conffiles}", "xdplb"]);
    assert!(
        ok && conffiles.contains("/etc/xdplb/xdplb.toml"),
        "{conffiles}"
    );
    for path in [
        "/lib/systemd/system/xdplb.service",
        "/usr/share/doc/xdplb/README.md",
        "/usr/share/man/man1/xdplb.1.gz",
        "/usr/share/man/man1/xdplb-run.1.gz",
        "/usr/share/man/man1/xdplb-service-add.1.gz",
        "/usr/share/bash-completion/completions/xdplb",
        "/usr/share/zsh/vendor-completions/_xdplb",
        "/usr/share/fish/vendor_completions.d/xdplb.fish",
    ] {
        assert!(Path::new(path).is_file(), "{path} is missing");
    }
    let (ok, unit) = run(&["cat", "/lib/systemd/system/xdplb.service"]);
    assert!(
        ok && unit.contains("ExecStart=/usr/bin/xdplb run"),
        "{unit}"
    );
    // The hidden generator has no page; every listed subcommand has one.
    assert!(!Path::new("/usr/share/man/man1/xdplb-generate-docs.1.gz").exists());

    // The pages render, and say what the command does.
    let out = Command::new("man")
        .args(["-P", "cat", "-l", "/usr/share/man/man1/xdplb-run.1.gz"])
        .env("MANWIDTH", "80")
        .output()
        .expect("man");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && page.contains("--config") && page.contains("--instance"),
        "man -l xdplb-run.1.gz: {page}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The completions parse and know the subcommands.
    let (ok, text) = run(&["bash", "-n", "/usr/share/bash-completion/completions/xdplb"]);
    assert!(ok, "bash -n: {text}");
    let (ok, text) = run(&[
        "bash",
        "-c",
        "source /usr/share/bash-completion/completions/xdplb && complete -p xdplb",
    ]);
    assert!(ok && text.contains("xdplb"), "bash completion: {text}");
    for shell_file in [
        "/usr/share/bash-completion/completions/xdplb",
        "/usr/share/zsh/vendor-completions/_xdplb",
        "/usr/share/fish/vendor_completions.d/xdplb.fish",
    ] {
        let text = std::fs::read_to_string(shell_file).expect("read completion");
        assert!(
            text.contains("reload") && text.contains("check"),
            "{shell_file}"
        );
    }
    for (shell, file) in [
        ("zsh", "/usr/share/zsh/vendor-completions/_xdplb"),
        ("fish", "/usr/share/fish/vendor_completions.d/xdplb.fish"),
    ] {
        // Parsed by the shell itself where it is installed (neither is on the CI image).
        if Command::new(shell).arg("-c").arg("true").output().is_ok() {
            let (ok, text) = run(&[shell, "-n", file]);
            assert!(ok, "{shell} -n {file}: {text}");
        }
    }

    drop(installed);
    assert!(!Path::new("/usr/bin/xdplb").exists(), "purged");
    assert!(!Path::new("/etc/xdplb/xdplb.toml").exists(), "purged");
}
