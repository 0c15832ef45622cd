//! API changes: the persist-then-apply transaction, run by the loop that owns config and data
//! plane.

use tracing::{info, warn};

use crate::{
    config::{self, Config},
    dataplane::Dataplane,
    health::HealthBook,
    instance, stats,
};

/// Answers one API request; returns the response and whether the config changed.
///
/// A change is validated whole, made as an edit of the operator's config file (comments and
/// layout kept; refused with 409 while the file holds edits that were not applied; written
/// through a symlink, keeping owner and mode: [`config::ConfigFile`]), and only then applied to
/// the data plane; if the data plane refuses it the previous file is put back. So a rejected
/// change leaves the data plane and the file as they were, an applied one survives a restart
/// and a reload, and the answer matches both.
pub(super) fn answer_api(
    req: &crate::api::Request,
    dp: &mut Dataplane,
    config_file: Option<&mut config::ConfigFile>,
    cfg: &mut Config,
    book: &HealthBook,
    state: &instance::InstanceState,
) -> (crate::api::Response, bool) {
    use crate::api::{Plan, Response};
    let plan = match crate::api::plan(req, cfg) {
        Ok(p) => p,
        Err(resp) => return (resp, false),
    };
    let (next, edit, what, answer) = match plan {
        Plan::Read(v) => return (Response::ok(v), false),
        Plan::Status => {
            let snapshot = stats::read(state).map(|s| serde_json::to_value(&s).unwrap_or_default());
            return match snapshot {
                Ok(stats) => (
                    Response::ok(serde_json::json!({
                        "instance": state.instance,
                        "pid": state.pid,
                        "config": state.config,
                        "generation": state.generation,
                        "services": state.services,
                        "stats": stats,
                    })),
                    false,
                ),
                Err(e) => (Response::error(500, e.to_string()), false),
            };
        }
        Plan::Change {
            next,
            edit,
            what,
            answer,
        } => (next, edit, what, answer),
    };
    let Some(file) = config_file else {
        return (
            Response::error(
                409,
                "this instance runs the built-in default config, so a live change could not survive a restart; start it with --config FILE",
            ),
            false,
        );
    };
    // Persist first, then apply: the edit is written (keeping a symlink, the owner and the
    // mode; in place if it is bind-mounted) before the data plane changes, and put back as it
    // was if the data plane refuses the change. So the answer always matches both.
    let path = file.path().to_path_buf();
    let original = match file.write_edit(&edit, &next) {
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
            return (
                Response::error(
                    e.status(),
                    format!("{what}: not applied (the data plane is unchanged): {e}{restored}"),
                ),
                false,
            );
        }
    };
    if let Err(e) = dp.apply_config(&book.effective(&next)) {
        return match file.restore(original) {
            Ok(_) => (Response::error(400, format!("{what}: {e}")), false),
            Err(restore) => {
                warn!(
                    "API: {what}: the data plane refused it ({e}) and restoring {} failed ({restore}); the file holds the change, the data plane does not",
                    path.display()
                );
                (
                    Response::error(
                        500,
                        format!(
                            "{what}: the data plane refused it ({e}), and restoring {} failed ({restore}): the file holds the refused change, the data plane the previous config; fix the file before the next reload",
                            path.display()
                        ),
                    ),
                    false,
                )
            }
        };
    }
    info!(generation = state.generation + 1, "API: {what}");
    *cfg = next;
    (Response::ok(answer), true)
}
