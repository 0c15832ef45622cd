//! The `xdplb` command: parses the command line and dispatches (`xdplb::cli`).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;
use xdplb::cli::{Cli, Command, dispatch};

fn main() -> ExitCode {
    // Logs go to stderr: `XDPLB_LOG` filters, `XDPLB_LOG_FORMAT=json` prints flat JSON, and
    // under systemd every line carries its journald priority (see `xdplb::logs`).
    xdplb::logs::init();
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
