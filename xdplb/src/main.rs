//! The `xdplb` command: parses the command line and dispatches (`xdplb::cli`).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;
use xdplb::cli::{Cli, Command, dispatch};

/// Logs go to stderr through `tracing`: `XDPLB_LOG` filters (default `info`: start, stop,
/// reloads, API changes, health transitions; nothing per packet or per check), and
/// `XDPLB_LOG_FORMAT=json` prints one JSON object per line.
fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("XDPLB_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if std::env::var("XDPLB_LOG_FORMAT").is_ok_and(|f| f == "json") {
        fmt.json().init();
    } else {
        fmt.init();
    }
}

fn main() -> ExitCode {
    init_logs();
    let cli = Cli::parse();
    // The daemons keep Rust's SIGPIPE = ignore, so that a client hanging up on the API or
    // metrics socket is an EPIPE for that request, not the end of the daemon. Every other
    // command is a CLI whose output may go to `head`: it stops quietly when the reader is gone.
    if !matches!(
        cli.command,
        Command::Run { .. } | Command::DemoBackend { .. }
    ) {
        xdplb::sys::restore_default_sigpipe();
    }
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xdplb: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
