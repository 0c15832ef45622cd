//! The live API: JSON over HTTP on a Unix socket that only root can use.
//!
//! The server ([`router`], axum on hyper, see [`crate::http`]) hands each request to the
//! daemon's main loop, which owns the config and the data plane. [`plan`] decides what a request does to the config with
//! no I/O: a change is made to the typed config and validated there with every rule the config
//! file obeys, before anything touches the data plane; the daemon then writes it as an edit of
//! the operator's file (comments and layout kept), or answers 409 while the file holds edits
//! that were not applied (`xdplb reload` applies them).
//!
//! A service is the JSON form of its `[[service]]` table in the config file (every field, the
//! health check as `"health_check": {...}`, the backends as `"backend": [...]`), and a backend
//! that of its `[[service.backend]]` table. Answers show a service complete, defaults filled in.
//!
//! | method | path | body |
//! |---|---|---|
//! | GET | /healthz | (answered by the server: 200 while the daemon runs) |
//! | GET | /readyz | (answered by the server: 200 when attached and applied, else 503) |
//! | GET | /v1/status | |
//! | GET | /v1/node | (the node's announcements: drained, table, every VIP with why) |
//! | POST | /v1/node/drain | (withdraws every VIP; persisted as `[announce] drained = true`) |
//! | POST | /v1/node/undrain | (announces again what qualifies; removes `drained`) |
//! | GET | /v1/config | (the applied config: `{"toml": "..."}`) |
//! | GET | /v1/services | |
//! | POST | /v1/services | a `[[service]]` table, such as `{"name", "vip", "backend": [{"address"}]}` |
//! | GET | /v1/services/NAME | |
//! | DELETE | /v1/services/NAME | |
//! | GET | /v1/services/NAME/backends | |
//! | POST | /v1/services/NAME/backends | a `[[service.backend]]` table: `{"address", "weight"?, "drain"?}` |
//! | PATCH | /v1/services/NAME/backends/ADDRESS | `{"weight"?, "drain"?}` |
//! | DELETE | /v1/services/NAME/backends/ADDRESS | |

mod client;
mod plan;
mod server;

use std::path::PathBuf;

use serde_json::{Value, json};

pub use client::call;
pub use plan::{Plan, plan};
pub use server::{ToMain, bind, router};

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;

/// The API socket of an instance.
pub fn socket_path(instance: &str) -> Result<PathBuf, crate::instance::InstanceError> {
    Ok(crate::instance::state_path(instance)?.with_extension("sock"))
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Value,
}

impl Response {
    pub fn ok(body: Value) -> Self {
        Response { status: 200, body }
    }
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Response {
            status,
            body: json!({ "error": message.into() }),
        }
    }
}
