//! Man pages and shell completions, generated from the command line's clap definition by the
//! hidden `xdplb generate-docs DIR` (scripts/build-deb.sh runs it on the binary it packages, so
//! the pages describe exactly that binary).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

/// Writes `DIR/man/xdplb.1` and one page per subcommand (`xdplb-service-add.1`, ...), and
/// `DIR/completions/` for bash (`xdplb.bash`), zsh (`_xdplb`) and fish (`xdplb.fish`).
/// Returns the files written.
pub fn generate(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    clap_mangen::generate_to(super::Cli::command(), &man)
        .with_context(|| format!("writing the man pages into {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut super::Cli::command(), "xdplb", &completions)
            .with_context(|| {
                format!(
                    "writing the {shell} completions into {}",
                    completions.display()
                )
            })?;
    }
    let mut written = Vec::new();
    for d in [&man, &completions] {
        for entry in std::fs::read_dir(d).with_context(|| format!("listing {}", d.display()))? {
            written.push(entry?.path());
        }
    }
    written.sort();
    Ok(written)
}
