//! The command line on bad input: a clear error, a non-zero exit, nothing attached.
//! The privileged cases need root; run with the README test command.

use std::time::Duration;

use xdplb_test_support::{netns::*, require_root};

/// The `xdplb` binary under test.
const XDPLB: &str = env!("CARGO_BIN_EXE_xdplb");

fn write_config(tag: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("xdplb-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{tag}.toml"));
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

const GOOD: &str = r#"interfaces = ["lo"]
[[service]]
name = "demo"
vip = "127.0.0.1:9875"
[[service.backend]]
address = "127.0.0.1:9876"
"#;

/// Runs xdplb and returns (success, stdout + stderr).
fn xdplb(args: &[&str]) -> (bool, String) {
    let mut full = vec![XDPLB];
    full.extend_from_slice(args);
    let out = run_bounded(&full, Duration::from_secs(20));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_accepts_a_good_config_and_says_what_it_would_do() {
    let path = write_config("good", GOOD);
    let (ok, text) = xdplb(&["check", "--config", &path]);
    assert!(ok, "{text}");
    for needle in ["demo", "127.0.0.1:9875", "127.0.0.1:9876", "lo"] {
        assert!(
            text.contains(needle),
            "check output lacks {needle:?}:\n{text}"
        );
    }
}

#[test]
fn a_reader_that_hangs_up_early_ends_the_cli_quietly() {
    use std::{
        io::Read as _,
        os::unix::process::ExitStatusExt as _,
        process::{Command, Stdio},
    };
    let path = write_config("sigpipe", GOOD);
    // The reader is gone before xdplb writes a byte, as with `xdplb check ... | head -0`: every
    // write to stdout fails with EPIPE.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut child = Command::new(XDPLB)
        .args(["check", "--config", &path])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn xdplb check");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("xdplb check did not exit within 20 s; stderr: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        !stderr.contains("panicked") && status.code() != Some(101),
        "a closed stdout must end xdplb quietly, not with a panic: {status}, stderr: {stderr}"
    );
    const SIGPIPE: i32 = 13;
    assert_eq!(
        status.signal(),
        Some(SIGPIPE),
        "ended by SIGPIPE like other command-line tools: {status}, stderr: {stderr}"
    );
}

#[test]
fn check_rejects_bad_configs_with_specific_errors() {
    let cases: &[(&str, String, &[&str])] = &[
        (
            "syntax",
            GOOD.replace("name = \"demo\"", "name = \"demo"),
            &["syntax.toml:3"],
        ),
        (
            "unknown-field",
            GOOD.replace("name = \"demo\"", "name = \"demo\"\ncolour = \"red\""),
            &["colour"],
        ),
        (
            "no-interface",
            GOOD.replace("[\"lo\"]", "[\"nosuchif0\"]"),
            &["nosuchif0"],
        ),
        (
            "bad-address",
            GOOD.replace("127.0.0.1:9876", "127.0.0.300:9876"),
            &["127.0.0.300:9876"],
        ),
        (
            "weight-zero",
            GOOD.replace(
                "address = \"127.0.0.1:9876\"",
                "address = \"127.0.0.1:9876\"\nweight = 0",
            ),
            &["weight", "0"],
        ),
        (
            "weight-big",
            GOOD.replace(
                "address = \"127.0.0.1:9876\"",
                "address = \"127.0.0.1:9876\"\nweight = 65536",
            ),
            &["weight", "65536"],
        ),
        (
            "no-backends",
            GOOD.replace("[[service.backend]]\naddress = \"127.0.0.1:9876\"\n", ""),
            &["demo", "backend"],
        ),
        (
            "duplicate-vip",
            format!(
                "{GOOD}{}",
                GOOD.replace("interfaces = [\"lo\"]\n", "")
                    .replace("name = \"demo\"", "name = \"other\"")
            ),
            &["127.0.0.1:9875", "demo", "other"],
        ),
        (
            "over-capacity",
            format!("{GOOD}[[service.backend]]\naddress = \"127.0.0.1:9877\"\n").replace(
                "interfaces = [\"lo\"]\n",
                "interfaces = [\"lo\"]\n[limits]\nmax_backends_per_service = 1\n",
            ),
            &["max_backends_per_service", "2"],
        ),
    ];
    for (tag, text, needles) in cases {
        let path = write_config(tag, text);
        let (ok, out) = xdplb(&["check", "--config", &path]);
        assert!(!ok, "{tag}: a bad config must be rejected:\n{text}");
        for n in *needles {
            assert!(out.contains(n), "{tag}: error lacks {n:?}:\n{out}");
        }
    }
}

#[test]
fn run_with_a_missing_interface_fails_before_loading_anything() {
    let path = write_config(
        "missing-if",
        &GOOD.replace("[\"lo\"]", "[\"lo\", \"nosuchif1\"]"),
    );
    let (ok, out) = xdplb(&["run", "--config", &path, "--instance", "cli-missing-if"]);
    assert!(!ok && out.contains("nosuchif1"), "{out}");
}

#[test]
fn run_without_privileges_says_so() {
    require_root();
    let path = write_config("unpriv", GOOD);
    std::fs::set_permissions(
        std::path::Path::new(&path).parent().expect("dir"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let out = run_bounded(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            XDPLB,
            "run",
            "--config",
            &path,
        ],
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unprivileged run must fail");
    assert!(
        text.contains("needs root"),
        "the error must say why: {text}"
    );
}

#[test]
fn a_failed_attach_rolls_back_the_interfaces_already_attached() {
    require_root();
    let ns = Netns::new("rollback");
    let pid = std::process::id();
    let (a, b) = (format!("ra{pid}"), format!("rb{pid}"));
    ns.exec(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
    ns.exec(&["ip", "link", "set", &a, "up"]);
    ns.exec(&["ip", "link", "set", &b, "up"]);
    // Native XDP works on the veth but not on lo, so the second attach fails.
    let path = write_config(
        "rollback",
        &GOOD
            .replace("[\"lo\"]", &format!("[\"{a}\", \"lo\"]"))
            .replace("interfaces", "xdp_mode = \"native\"\ninterfaces"),
    );
    let dir = std::env::temp_dir().join(format!("xdplb-cli-run-{pid}"));
    let env = format!("XDPLB_RUN_DIR={}", dir.display());
    let out = ns.exec_unchecked(&[
        "env",
        &env,
        XDPLB,
        "run",
        "--config",
        &path,
        "--instance",
        "rollback",
    ]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "native XDP on lo must fail: {text}");
    assert!(
        text.contains("lo") && text.contains("native"),
        "the error names lo and the mode: {text}"
    );
    let link = ns.exec(&["ip", "-d", "link", "show", "dev", &a]);
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
        "the veth must not keep the XDP program after the failed run"
    );
    let tc = ns.exec(&["bpftool", "net", "show", "dev", &a]);
    assert!(
        !String::from_utf8_lossy(&tc.stdout).contains("xdplb"),
        "no xdplb program may stay attached: {}",
        String::from_utf8_lossy(&tc.stdout)
    );
}

#[test]
fn the_example_configs_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let p = path.display().to_string();
            // Interfaces are checked too, so the examples attach to lo only.
            let (ok, out) = xdplb(&["check", "--config", &p]);
            assert!(ok, "{p}: {out}");
            checked += 1;
        }
    }
    assert!(checked > 0, "no example config found in {dir}");
}

#[test]
fn explain_names_the_backend_and_refuses_unknown_destinations() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/maglev.toml");
    let (ok, out) = xdplb(&[
        "explain",
        "--config",
        example,
        "10.1.2.3:4444",
        "192.0.2.1:53",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("maglev") && out.contains("slot") && out.contains("backend   10.1.0."),
        "{out}"
    );
    assert!(
        !out.contains("10.1.0.4:53 (backend"),
        "a drained backend gets no new flow: {out}"
    );
    let (ok, out) = xdplb(&[
        "explain",
        "--config",
        example,
        "10.1.2.3:4444",
        "192.0.2.9:53",
    ]);
    assert!(
        !ok && out.contains("no service matches 192.0.2.9:53"),
        "{out}"
    );
}

/// IPv6 through the command line: `check` accepts an IPv6 service and refuses one that mixes
/// families (naming the field, the value and the line), and `explain` takes bracketed
/// addresses and shows them bracketed.
#[test]
fn ipv6_configs_are_checked_and_ipv6_flows_explained() {
    let v6 = "interfaces = [\"lo\"]\n[[service]]\nname = \"dns6\"\nvip = \"[2001:db8::1]:53\"\n\
              [[service.backend]]\naddress = \"[2001:db8:1::1]:53\"\n\
              [[service.backend]]\naddress = \"[2001:db8:1::2]:53\"\n";
    let path = write_config("ipv6", v6);
    let (ok, out) = xdplb(&["check", "--config", &path]);
    assert!(ok && out.contains("[2001:db8::1]:53"), "{out}");

    let mixed = write_config(
        "ipv6-mixed",
        &v6.replace("[2001:db8:1::2]:53", "10.1.0.2:53"),
    );
    let (ok, out) = xdplb(&["check", "--config", &mixed]);
    assert!(
        !ok && out.contains("ipv6-mixed.toml:8")
            && out.contains("backend #2 address \"10.1.0.2:53\" is IPv4")
            && out.contains("NAT64"),
        "{out}"
    );

    let (ok, out) = xdplb(&[
        "explain",
        "--config",
        &path,
        "[2001:db8::99]:4000",
        "[2001:db8::1]:53",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("[2001:db8::99]:4000 -> [2001:db8::1]:53")
            && out.contains("backend   [2001:db8:1::"),
        "{out}"
    );
    let (ok, out) = xdplb(&[
        "explain",
        "--config",
        &path,
        "[2001:db8::99]:4000",
        "[2001:db8::7]:53",
    ]);
    assert!(!ok && out.contains("none listens on [::]:53"), "{out}");
}
