//! API changes: the persist-then-apply transaction, run by the loop that owns config and data
//! plane, for a change the core ([`crate::control`]) validated.

use tracing::warn;

use crate::{
    api::Response, config, control::Change, dataplane::Dataplane, instance::InstanceState, stats,
};

/// `GET /v1/status`: the daemon's live view, counters read now.
pub(super) fn status(state: &InstanceState) -> Response {
    match stats::read(state) {
        Ok(stats) => Response::ok(serde_json::json!({
            "instance": state.instance,
            "pid": state.pid,
            "config": state.config,
            "generation": state.generation,
            "services": state.services,
            "announce": state.announce,
            "stats": stats,
        })),
        Err(e) => Response::error(500, e.to_string()),
    }
}

/// Makes a validated change: as an edit of the operator's config file (comments and layout
/// kept; refused with 409 while the file holds edits that were not applied; written through a
/// symlink, keeping owner and mode: [`config::ConfigFile`]), and only then in the data plane; if
/// the data plane refuses it the previous file is put back. So a refused change leaves the data
/// plane and the file as they were (the error is the answer), an applied one survives a restart
/// and a reload, and the answer matches both.
pub(super) fn persist_and_apply(
    change: &Change,
    dp: &mut Dataplane,
    config_file: Option<&mut config::ConfigFile>,
) -> Result<(), Refused> {
    let what = &change.what;
    let Some(file) = config_file else {
        return Err(Refused::before_apply(Response::error(
            409,
            "this instance runs the built-in default config, so a live change could not survive a restart; start it with --config FILE",
        )));
    };
    // Persist first, then apply: the edit is written (keeping a symlink, the owner and the
    // mode; in place if it is bind-mounted) before the data plane changes, and put back as it
    // was if the data plane refuses the change. So the answer always matches both.
    let path = file.path().to_path_buf();
    let original = match file.write_edit(&change.edit, &change.next) {
        Ok((original, _)) => original,
        Err(e) => {
            // A failed in-place rewrite may have left part of the text: put the old one back.
            let restored = match &e {
                config::FileError::Save(_) => {
                    let last = file.last_text().to_owned();
                    file.restore(last).map_or_else(
                        |e| format!("; restoring the previous file failed too: {e}"),
                        |_| String::new(),
                    )
                }
                _ => String::new(),
            };
            warn!("API: {what}, not applied: {e}{restored}");
            return Err(Refused::before_apply(Response::error(
                e.status(),
                format!("{what}: not applied (the data plane is unchanged): {e}{restored}"),
            )));
        }
    };
    let Err(e) = dp.apply_config(&change.effective) else {
        return Ok(());
    };
    let response = match file.restore(original) {
        Ok(_) => Response::error(400, format!("{what}: {e}")),
        Err(restore) => {
            warn!(
                "API: {what}: the data plane refused it ({e}) and restoring {} failed ({restore}); the file holds the change, the data plane does not",
                path.display()
            );
            Response::error(
                500,
                format!(
                    "{what}: the data plane refused it ({e}), and restoring {} failed ({restore}): the file holds the refused change, the data plane the previous config; fix the file before the next reload",
                    path.display()
                ),
            )
        }
    };
    Err(Refused {
        response,
        apply_failed: true,
    })
}

/// Why a change was not made: the answer, and whether the data plane refused it (an apply
/// that failed, for `xdplb_config_last_apply_success`) or it stopped before that.
pub(super) struct Refused {
    pub response: Response,
    pub apply_failed: bool,
}

impl Refused {
    fn before_apply(response: Response) -> Self {
        Refused {
            response,
            apply_failed: false,
        }
    }
}
