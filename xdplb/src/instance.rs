//! A running instance's description, written by `xdplb run` so that `xdplb stats` (another
//! process, possibly in another mount namespace) can find its maps by kernel id.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use rustix::process::{Pid, Signal, kill_process};
use serde::{Deserialize, Serialize};

use crate::dataplane::AttachedInterface;

/// Where state files live; `XDPLB_RUN_DIR` overrides it.
pub const DEFAULT_RUN_DIR: &str = "/run/xdplb";

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "instance {name:?} is already running (pid {pid}, state file {path}); use --replace to take over from it, stop it first, or use --instance"
    )]
    AlreadyRunning {
        name: String,
        pid: u32,
        path: PathBuf,
    },
    #[error("no running instance {name:?} (no state file {path}); is `xdplb run` running?")]
    NotRunning { name: String, path: PathBuf },
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state file {path} is not valid: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "instance {name:?} is already running (pid {pid}, which holds the lock {path}); use --replace to take over from it, stop it first with `xdplb stop --instance {name}`, or use another --instance"
    )]
    Locked {
        name: String,
        pid: String,
        path: PathBuf,
    },
    #[error(
        "instance {name:?}: the lock {path} was not released within {seconds} s after the previous daemon exited; is another `xdplb run --instance {name}` starting?"
    )]
    LockTimeout {
        name: String,
        path: PathBuf,
        seconds: u64,
    },
    #[error("instance name {0:?} is invalid: use 1-64 characters of A-Z a-z 0-9 _ . -")]
    BadName(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendInfo {
    pub address: String,
    /// Position in `BACKENDS_V1`; `None` while the backend is left out of the data plane
    /// (unhealthy with `on_failure = "move-flows"`).
    pub index: Option<u32>,
    /// "up" or "down" when the service has a health check.
    #[serde(default)]
    pub health: Option<String>,
    /// The last check's outcome.
    #[serde(default)]
    pub health_detail: Option<String>,
    /// Drained by the operator (`drain = true`): keeps its live flows, gets no new ones.
    #[serde(default)]
    pub drain: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    pub vip: String,
    pub id: u32,
    /// How the service picks backends (`reconcile::table_fingerprint`); equal on every node
    /// that picks the same backend for every flow.
    #[serde(default)]
    pub table_fingerprint: String,
    pub backends: Vec<BackendInfo>,
}

/// What the last reload did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadOutcome {
    pub ok: bool,
    pub message: String,
    /// What an applied reload changed, one line each (`confdiff::diff`).
    #[serde(default)]
    pub changes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceState {
    pub instance: String,
    pub pid: u32,
    pub config: String,
    pub interfaces: Vec<AttachedInterface>,
    /// Map name to kernel map id.
    pub map_ids: BTreeMap<String, u32>,
    pub services: Vec<ServiceInfo>,
    /// Config changes applied since start (reloads and API calls).
    #[serde(default)]
    pub generation: u64,
    /// Reloads attempted since start (`xdplb reload` waits for this to grow).
    #[serde(default)]
    pub reloads: u64,
    #[serde(default)]
    pub last_reload: Option<ReloadOutcome>,
    /// Every veth of the daemon's network namespace: drops since the daemon started, and
    /// whether it can take XDP_REDIRECT frames (see `veth`).
    #[serde(default)]
    pub veths: BTreeMap<String, crate::veth::VethReport>,
    /// What the node announces (`[announce]`; see `announce`), as last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<crate::announce::Plan>,
}

impl InstanceState {
    /// Each attached interface with its XDP mode, as the listings print it: `eth0 (native)`.
    pub fn interface_labels(&self) -> Vec<String> {
        self.interfaces
            .iter()
            .map(|i| format!("{} ({})", i.name, i.xdp_mode))
            .collect()
    }
}

pub fn run_dir() -> PathBuf {
    std::env::var_os("XDPLB_RUN_DIR").map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), PathBuf::from)
}

pub fn state_path(instance: &str) -> Result<PathBuf, InstanceError> {
    let valid = !instance.is_empty()
        && instance.len() <= 64
        && instance
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && instance != "."
        && instance != "..";
    if !valid {
        return Err(InstanceError::BadName(instance.to_string()));
    }
    Ok(run_dir().join(format!("{instance}.json")))
}

/// Whether process `pid` is alive (a zombie, which has exited, is not).
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Sends `signal` to process `pid` (a pid from a state file or a lock: never 0 or a group).
pub fn signal(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::other(format!("pid {pid} out of range")))?;
    kill_process(pid, signal).map_err(io::Error::from)
}

/// Sends `signal` to `pid` and waits up to `timeout` for the process to exit.
pub fn signal_and_wait(pid: u32, signal: Signal, timeout: std::time::Duration) -> io::Result<()> {
    self::signal(pid, signal)?;
    let deadline = std::time::Instant::now() + timeout;
    while pid_alive(pid) {
        if std::time::Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("still running {timeout:?} after the signal"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

/// The pid of the live daemon running `instance`, if one is.
pub fn running_pid(instance: &str) -> Result<Option<u32>, InstanceError> {
    match read(instance) {
        Ok(s) if s.pid != std::process::id() && pid_alive(s.pid) => Ok(Some(s.pid)),
        Ok(_) | Err(InstanceError::NotRunning { .. } | InstanceError::Corrupt { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Fails if a live process already runs `instance`; removes a stale state file.
pub fn ensure_not_running(instance: &str) -> Result<(), InstanceError> {
    let path = state_path(instance)?;
    match read_at(&path, instance) {
        Ok(s) if pid_alive(s.pid) && s.pid != std::process::id() => {
            Err(InstanceError::AlreadyRunning {
                name: instance.to_string(),
                pid: s.pid,
                path,
            })
        }
        Ok(_) | Err(InstanceError::Corrupt { .. }) => {
            fs::remove_file(&path).map_err(|source| InstanceError::Io { path, source })
        }
        Err(_) => Ok(()),
    }
}

/// Writes the state atomically (temporary file, then rename).
pub fn write(state: &InstanceState) -> Result<PathBuf, InstanceError> {
    let path = state_path(&state.instance)?;
    let io_err = |source| InstanceError::Io {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(run_dir()).map_err(io_err)?;
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(state).map_err(|source| InstanceError::Corrupt {
        path: path.clone(),
        source,
    })?;
    fs::write(&tmp, text).map_err(io_err)?;
    fs::rename(&tmp, &path).map_err(io_err)?;
    Ok(path)
}

pub fn read(instance: &str) -> Result<InstanceState, InstanceError> {
    read_at(&state_path(instance)?, instance)
}

fn read_at(path: &Path, instance: &str) -> Result<InstanceState, InstanceError> {
    let text = fs::read_to_string(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            InstanceError::NotRunning {
                name: instance.to_string(),
                path: path.to_path_buf(),
            }
        } else {
            InstanceError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    serde_json::from_str(&text).map_err(|source| InstanceError::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes the state file of `instance`; a missing file is fine.
pub fn remove(instance: &str) {
    if let Ok(path) = state_path(instance) {
        let _ = fs::remove_file(path);
    }
}

/// The exclusive lock of an instance, held by its daemon for its whole life: `<run
/// dir>/NAME.lock`, with the holder's pid written in it. Released when dropped (or when the
/// process dies, however it dies). The file itself stays: removing a lock file races with a
/// process that opened it and waits for it.
#[derive(Debug)]
pub struct InstanceLock {
    _file: fs::File,
    pub path: PathBuf,
}

pub fn lock_path(instance: &str) -> Result<PathBuf, InstanceError> {
    state_path(instance).map(|p| p.with_extension("lock"))
}

/// Why [`try_lock`] did not get the lock: the pid written by its holder ("unknown" if the
/// holder has not written it yet).
#[derive(Debug)]
pub struct Held {
    pub pid: String,
    pub path: PathBuf,
}

impl Held {
    pub fn pid(&self) -> Option<u32> {
        self.pid.parse().ok()
    }

    pub fn into_error(self, instance: &str) -> InstanceError {
        InstanceError::Locked {
            name: instance.to_string(),
            pid: self.pid,
            path: self.path,
        }
    }
}

/// Takes the instance's lock without waiting.
pub fn try_lock(instance: &str) -> Result<Result<InstanceLock, Held>, InstanceError> {
    use std::io::{Read as _, Seek as _, Write as _};
    let path = lock_path(instance)?;
    let io_err = |source| InstanceError::Io {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(run_dir()).map_err(io_err)?;
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            file.set_len(0).map_err(io_err)?;
            file.rewind().map_err(io_err)?;
            write!(file, "{}", std::process::id()).map_err(io_err)?;
            file.flush().map_err(io_err)?;
            Ok(Ok(InstanceLock { _file: file, path }))
        }
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            // The holder writes its pid right after taking the lock.
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
            let mut pid = String::new();
            while pid.is_empty() && std::time::Instant::now() < deadline {
                pid.clear();
                let _ = file.rewind();
                let _ = file.read_to_string(&mut pid);
                pid = pid.trim().to_string();
                if pid.is_empty() {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            if pid.is_empty() {
                pid = "unknown".into();
            }
            Ok(Err(Held { pid, path }))
        }
        Err(e) => Err(io_err(e.into())),
    }
}

/// Takes the instance's lock, waiting up to `timeout` for its holder to release it.
pub fn lock_within(
    instance: &str,
    timeout: std::time::Duration,
) -> Result<InstanceLock, InstanceError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match try_lock(instance)? {
            Ok(lock) => return Ok(lock),
            Err(held) if std::time::Instant::now() >= deadline => {
                return Err(InstanceError::LockTimeout {
                    name: instance.to_string(),
                    path: held.path,
                    seconds: timeout.as_secs(),
                });
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}
