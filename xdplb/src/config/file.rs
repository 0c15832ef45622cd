//! The operator's config file, as the daemon edits it.
//!
//! The operator owns the file: a live API change is written back as an edit of the operator's
//! own document ([`toml_edit`]), so comments, order and layout stay; and a change is refused
//! while the file holds edits the daemon has not applied (the operator's edit would otherwise
//! be overwritten without ever having run). [`ConfigFile`] keeps the text the daemon last
//! loaded or wrote, to tell.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use toml_edit::{DocumentMut, Item, TableLike, Value};

use super::{BackendConfig, Config, ConfigError, SaveError, Saved, ServiceConfig, save};

/// One change to the services, as the API makes it; [`apply_edit`] makes it in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one edit at a time, made by an API request: the size of the value does not matter"
)]
pub enum ConfigEdit {
    /// Append a `[[service]]` table (with its `[[service.backend]]` tables).
    AddService(ServiceConfig),
    /// Remove the `[[service]]` table with this name (and what belongs to it).
    RemoveService { name: String },
    /// Append a backend to a service.
    AddBackend {
        service: String,
        backend: BackendConfig,
    },
    /// Remove a service's backend.
    RemoveBackend {
        service: String,
        address: SocketAddr,
    },
    /// Set a backend's `weight` and/or `drain`.
    SetBackend {
        service: String,
        address: SocketAddr,
        weight: Option<u16>,
        drain: Option<bool>,
    },
    /// Set (`true`) or remove (`false`) `drained` in the `[announce]` table, which exists.
    SetDrained(bool),
}

/// Why an edit could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file on disk is not the text the daemon last loaded or wrote.
    #[error(
        "the config file {} has edits that were not applied; run `xdplb reload` first",
        path.display()
    )]
    Changed { path: PathBuf },
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The document is not shaped the way the edit needs (the text was valid, so this is a
    /// layout the editor does not handle, such as `service = [...]` written inline).
    #[error("cannot edit the config file {}: {reason}", path.display())]
    Shape { path: PathBuf, reason: String },
    /// The safety net: the edited text does not parse to the config the change validated.
    #[error(
        "the edited config file {} would not hold the change as validated ({reason}); nothing was written",
        path.display()
    )]
    Mismatch { path: PathBuf, reason: String },
    #[error(transparent)]
    Save(#[from] SaveError),
}

impl FileError {
    /// The HTTP status an API answer gives this error.
    pub fn status(&self) -> u16 {
        match self {
            FileError::Changed { .. } => 409,
            _ => 500,
        }
    }
}

/// The config file and the text the daemon last loaded from it or wrote to it.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    last_text: String,
}

impl ConfigFile {
    /// Reads and parses `path`; the text read is what later edits start from.
    pub fn load(path: &Path) -> Result<(ConfigFile, Config), ConfigError> {
        let text = read(path)?;
        let cfg = super::parse(&text, &path.display().to_string())?;
        Ok((
            ConfigFile {
                path: path.to_path_buf(),
                last_text: text,
            },
            cfg,
        ))
    }

    /// Reads and parses the file again without recording anything: the caller applies the
    /// config and then records the text with [`reloaded`](Self::reloaded).
    pub fn read(&self) -> Result<(Config, String), ConfigError> {
        let text = read(&self.path)?;
        let cfg = super::parse(&text, &self.path.display().to_string())?;
        Ok((cfg, text))
    }

    /// Records `text` as applied (a reload took it).
    pub fn reloaded(&mut self, text: String) {
        self.last_text = text;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The text last loaded or written.
    pub fn last_text(&self) -> &str {
        &self.last_text
    }

    /// Refuses ([`FileError::Changed`]) if the file no longer holds the text last loaded or
    /// written.
    pub fn check_unchanged(&self) -> Result<(), FileError> {
        let now = std::fs::read_to_string(&self.path).map_err(|source| FileError::Read {
            path: self.path.clone(),
            source,
        })?;
        if now == self.last_text {
            Ok(())
        } else {
            Err(FileError::Changed {
                path: self.path.clone(),
            })
        }
    }

    /// Makes `edit` in the file, which must still hold the text last loaded or written, and
    /// checks that the edited text parses to exactly `next` before writing it (keeping a
    /// symlink, the owner and the mode: [`save`]). Returns the previous text, for
    /// [`restore`](Self::restore) if the data plane then refuses the change.
    pub fn write_edit(
        &mut self,
        edit: &ConfigEdit,
        next: &Config,
    ) -> Result<(String, Saved), FileError> {
        self.check_unchanged()?;
        let shape = |reason: String| FileError::Shape {
            path: self.path.clone(),
            reason,
        };
        let text = apply_edit(&self.last_text, edit).map_err(shape)?;
        let mismatch = |reason: String| FileError::Mismatch {
            path: self.path.clone(),
            reason,
        };
        match super::parse(&text, &self.path.display().to_string()) {
            Ok(parsed) if parsed == *next => {}
            Ok(_) => return Err(mismatch("it parses to a different config".to_owned())),
            Err(e) => return Err(mismatch(e.to_string())),
        }
        let saved = save(&self.path, text.as_bytes())?;
        Ok((std::mem::replace(&mut self.last_text, text), saved))
    }

    /// Writes `previous` back (after [`write_edit`](Self::write_edit), when the change was
    /// not applied after all).
    pub fn restore(&mut self, previous: String) -> Result<Saved, SaveError> {
        // Whatever happens, the text the daemon stands behind is `previous`: if it cannot be
        // put back, the file differs from it, and later changes get 409 until a reload.
        let saved = save(&self.path, previous.as_bytes());
        self.last_text = previous;
        saved
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Makes `edit` in the TOML document `text`, keeping everything else as written: comments,
/// order, blank lines, quoting. A new service is appended at the end as `[[service]]` text
/// (an array-of-tables header may follow any table); the other edits change the one table
/// they concern. Says why if the document is not shaped for the edit.
pub fn apply_edit(text: &str, edit: &ConfigEdit) -> Result<String, String> {
    if let ConfigEdit::AddService(svc) = edit {
        let mut out = text.to_owned();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&super::write::service_toml(svc));
        return Ok(out);
    }
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("it does not parse as TOML: {e}"))?;
    if let ConfigEdit::SetDrained(drained) = edit {
        let announce = doc
            .get_mut("announce")
            .and_then(Item::as_table_like_mut)
            .ok_or("it has no [announce] table")?;
        if *drained {
            announce.insert("drained", toml_edit::value(true));
        } else {
            announce.remove("drained");
        }
        return Ok(doc.to_string());
    }
    let services = doc
        .get_mut("service")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or("its services are not written as [[service]] tables")?;
    let index_of = |services: &toml_edit::ArrayOfTables, name: &str| {
        services
            .iter()
            .position(|t| t.get("name").and_then(Item::as_str) == Some(name))
            .ok_or_else(|| format!("it has no [[service]] named {name:?}"))
    };
    match edit {
        ConfigEdit::AddService(_) | ConfigEdit::SetDrained(_) => {}
        ConfigEdit::RemoveService { name } => {
            let i = index_of(services, name)?;
            services.remove(i);
        }
        ConfigEdit::AddBackend { service, backend } => {
            let i = index_of(services, service)?;
            let table = services
                .get_mut(i)
                .ok_or_else(|| format!("service {service:?} vanished"))?;
            add_backend(table, backend)?;
        }
        ConfigEdit::RemoveBackend { service, address } => {
            let i = index_of(services, service)?;
            let table = services
                .get_mut(i)
                .ok_or_else(|| format!("service {service:?} vanished"))?;
            remove_backend(table, *address)?;
        }
        ConfigEdit::SetBackend {
            service,
            address,
            weight,
            drain,
        } => {
            let i = index_of(services, service)?;
            let table = services
                .get_mut(i)
                .ok_or_else(|| format!("service {service:?} vanished"))?;
            let b = backend_mut(table, *address)?;
            if let Some(w) = weight {
                set(b, "weight", Value::from(i64::from(*w)), *w == 1);
            }
            if let Some(d) = drain {
                set(b, "drain", Value::from(*d), !*d);
            }
        }
    }
    Ok(doc.to_string())
}

/// Whether a backend entry's `address` is `address`.
fn is_backend(entry: &dyn TableLike, address: SocketAddr) -> bool {
    entry
        .get("address")
        .and_then(Item::as_str)
        .and_then(|a| a.parse::<SocketAddr>().ok())
        == Some(address)
}

/// The backend entry with `address`: a `[[service.backend]]` table or an inline table of a
/// `backend = [...]` array.
fn backend_mut(
    service: &mut toml_edit::Table,
    address: SocketAddr,
) -> Result<&mut dyn TableLike, String> {
    let missing = || format!("the service has no backend {address}");
    match service.get_mut("backend") {
        Some(Item::ArrayOfTables(list)) => list
            .iter_mut()
            .find(|t| is_backend(*t, address))
            .map(|t| t as &mut dyn TableLike)
            .ok_or_else(missing),
        Some(Item::Value(Value::Array(list))) => list
            .iter_mut()
            .filter_map(Value::as_inline_table_mut)
            .find(|t| is_backend(*t, address))
            .map(|t| t as &mut dyn TableLike)
            .ok_or_else(missing),
        _ => Err(missing()),
    }
}

fn add_backend(service: &mut toml_edit::Table, backend: &BackendConfig) -> Result<(), String> {
    let mut entry = toml_edit::InlineTable::new();
    entry.insert("address", Value::from(backend.address.to_string()));
    if backend.weight != 1 {
        entry.insert("weight", Value::from(i64::from(backend.weight)));
    }
    if backend.drain {
        entry.insert("drain", Value::from(true));
    }
    match service.get_mut("backend") {
        Some(Item::ArrayOfTables(list)) => {
            list.push(entry.into_table());
            Ok(())
        }
        Some(Item::Value(Value::Array(list))) => {
            list.push(entry);
            Ok(())
        }
        _ => Err("the service's backends are neither [[service.backend]] tables nor a backend = [...] array".to_owned()),
    }
}

fn remove_backend(service: &mut toml_edit::Table, address: SocketAddr) -> Result<(), String> {
    let missing = || format!("the service has no backend {address}");
    match service.get_mut("backend") {
        Some(Item::ArrayOfTables(list)) => {
            let i = list
                .iter()
                .position(|t| is_backend(t, address))
                .ok_or_else(missing)?;
            list.remove(i);
            Ok(())
        }
        Some(Item::Value(Value::Array(list))) => {
            let i = list
                .iter()
                .position(|v| v.as_inline_table().is_some_and(|t| is_backend(t, address)))
                .ok_or_else(missing)?;
            list.remove(i);
            Ok(())
        }
        _ => Err(missing()),
    }
}

/// Sets `key` to `value`, keeping the decoration (spacing, a trailing comment) of a value that
/// was there; a key that is absent and would get its default value is left out.
fn set(entry: &mut dyn TableLike, key: &str, value: Value, is_default: bool) {
    match entry.get_mut(key).and_then(Item::as_value_mut) {
        Some(old) => {
            let decor = old.decor().clone();
            *old = value;
            *old.decor_mut() = decor;
        }
        None if is_default => {}
        None => {
            let mut value = value;
            // In an inline table the space before `}` trails the last value: move it to the
            // new last value (`{ a = 1 }` + b gives `{ a = 1, b = 2 }`). A comment is never
            // moved.
            if let Some((_, Item::Value(last))) = entry.iter_mut().last() {
                let space = last
                    .decor()
                    .suffix()
                    .and_then(|s| s.as_str())
                    .filter(|s| !s.is_empty() && s.trim().is_empty())
                    .map(str::to_owned);
                if let Some(space) = space {
                    last.decor_mut().set_suffix("");
                    value.decor_mut().set_suffix(space);
                }
            }
            entry.insert(key, Item::Value(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An operator's file: comments everywhere, a backend written inline, unusual spacing.
    const FILE: &str = r#"# Operator's notes: do not lose me.
interfaces = ["lo"]   # the loopback only

[[service]]
# DNS, the main service.
name = "dns"
vip = "127.0.0.1:9875"
scheduler = "round-robin"

[[service.backend]]
address = "127.0.0.1:9876"   # first
weight  = 2                  # keep the spacing

[[service.backend]]
address = "127.0.0.1:9877"

# Syslog, with its backends inline.
[[service]]
name = "syslog"
vip = "127.0.0.1:5514"
backend = [ { address = "127.0.0.1:5515" }, { address = "127.0.0.1:5516", weight = 3 } ]
# trailing note
"#;

    fn cfg(text: &str) -> Config {
        super::super::parse(text, "f").expect("parses")
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("literal")
    }

    /// Each edit keeps every comment and every untouched line, and parses to the config the
    /// same change makes in the typed model.
    #[test]
    fn edits_keep_comments_and_layout() {
        let before = cfg(FILE);
        let backend = |a: &str, weight: u16, drain: bool| BackendConfig {
            address: addr(a),
            weight,
            drain,
        };
        let mut new_service = before.services[1].clone();
        new_service.name = "new".into();
        new_service.vip = addr("127.0.0.1:6000");
        new_service.backends = vec![backend("127.0.0.1:6001", 1, false)];
        type Change = fn(&mut Config);
        let cases: Vec<(&str, ConfigEdit, Change, &[&str])> = vec![
            (
                "set weight and drain",
                ConfigEdit::SetBackend {
                    service: "dns".into(),
                    address: addr("127.0.0.1:9876"),
                    weight: Some(5),
                    drain: Some(true),
                },
                |c| {
                    c.services[0].backends[0].weight = 5;
                    c.services[0].backends[0].drain = true;
                },
                &["weight  = 5                  # keep the spacing"],
            ),
            (
                "drain an inline backend",
                ConfigEdit::SetBackend {
                    service: "syslog".into(),
                    address: addr("127.0.0.1:5516"),
                    weight: None,
                    drain: Some(true),
                },
                |c| c.services[1].backends[1].drain = true,
                &["weight = 3, drain = true"],
            ),
            (
                "add a backend table",
                ConfigEdit::AddBackend {
                    service: "dns".into(),
                    backend: backend("127.0.0.1:9878", 4, false),
                },
                |c| {
                    c.services[0].backends.push(BackendConfig {
                        address: "127.0.0.1:9878".parse().expect("literal"),
                        weight: 4,
                        drain: false,
                    });
                },
                &["address = \"127.0.0.1:9878\""],
            ),
            (
                "add an inline backend",
                ConfigEdit::AddBackend {
                    service: "syslog".into(),
                    backend: backend("127.0.0.1:5517", 1, false),
                },
                |c| {
                    c.services[1].backends.push(BackendConfig {
                        address: "127.0.0.1:5517".parse().expect("literal"),
                        weight: 1,
                        drain: false,
                    });
                },
                &["address = \"127.0.0.1:5517\""],
            ),
            (
                "remove a backend",
                ConfigEdit::RemoveBackend {
                    service: "dns".into(),
                    address: addr("127.0.0.1:9877"),
                },
                |c| {
                    c.services[0].backends.remove(1);
                },
                &[],
            ),
            (
                "remove a service",
                ConfigEdit::RemoveService {
                    name: "syslog".into(),
                },
                |c| {
                    c.services.remove(1);
                },
                &[],
            ),
        ];
        for (name, edit, change, added) in cases {
            let text = apply_edit(FILE, &edit).unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut expected = before.clone();
            change(&mut expected);
            assert_eq!(cfg(&text), expected, "{name}:\n{text}");
            for line in added {
                assert!(text.contains(line), "{name}: {line:?} missing:\n{text}");
            }
            // Everything of the file that the edit did not concern is still there, in order.
            let lines: Vec<&str> = FILE.lines().collect();
            let kept: Vec<&str> = lines
                .iter()
                .enumerate()
                .filter(|(i, l)| {
                    let next = lines.get(i + 1).copied().unwrap_or_default();
                    // A table goes with the comment above its header.
                    let removed_service = name == "remove a service"
                        && (l.contains("yslog")
                            || l.contains("5515")
                            || l.contains("5514")
                            || next.contains("syslog"));
                    let removed_backend =
                        name == "remove a backend" && (l.contains("9877") || next.contains("9877"));
                    let changed = (name == "set weight and drain" && l.starts_with("weight"))
                        || (name.contains("inline") && l.starts_with("backend = "));
                    !(removed_service || removed_backend || changed)
                })
                .map(|(_, l)| *l)
                .collect();
            let mut rest = text.as_str();
            for line in kept {
                match rest.find(line) {
                    Some(i) => rest = &rest[i + line.len()..],
                    None => panic!("{name}: {line:?} lost or out of order:\n{text}"),
                }
            }
        }
        // A new service goes at the end, after everything the operator wrote.
        let text = apply_edit(FILE, &ConfigEdit::AddService(new_service.clone())).expect("add");
        assert!(
            text.starts_with(FILE),
            "the operator's text is kept as written"
        );
        let mut expected = before;
        expected.services.push(new_service);
        assert_eq!(cfg(&text), expected);
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xdplb-cfgfile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// An edit is refused with 409 while the file holds edits that were not loaded, and goes
    /// through once they are; the file keeps its symlink and its mode.
    #[test]
    fn unapplied_edits_refuse_changes_and_the_file_keeps_its_identity() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = temp_dir("identity");
        let real = dir.join("real.toml");
        let link = dir.join("xdplb.toml");
        std::fs::write(&real, FILE).expect("write");
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");

        let (mut file, cfg) = ConfigFile::load(&link).expect("loads");
        let edit = ConfigEdit::SetBackend {
            service: "dns".into(),
            address: addr("127.0.0.1:9877"),
            weight: None,
            drain: Some(true),
        };
        let mut next = cfg.clone();
        next.services[0].backends[1].drain = true;

        // The operator edits the file; the daemon has not reloaded it.
        let edited = FILE.replace("# trailing note", "# trailing note, edited");
        std::fs::write(&real, &edited).expect("write");
        let e = file.write_edit(&edit, &next).expect_err("refused");
        assert_eq!(e.status(), 409, "{e}");
        assert!(
            e.to_string()
                .contains("has edits that were not applied; run `xdplb reload` first"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_to_string(&real).expect("read"),
            edited,
            "untouched"
        );

        // After a reload, the change goes through, as an edit of the operator's text.
        let (reread, text) = file.read().expect("reads");
        assert_eq!(reread, cfg);
        file.reloaded(text);
        let (previous, _) = file.write_edit(&edit, &next).expect("written");
        assert_eq!(previous, edited);
        let now = std::fs::read_to_string(&real).expect("read");
        assert!(
            now.contains("# trailing note, edited") && now.contains("drain = true"),
            "{now}"
        );
        assert!(
            std::fs::symlink_metadata(&link)
                .expect("lstat")
                .file_type()
                .is_symlink(),
            "the symlink stays"
        );
        let mode = std::fs::metadata(&real).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640, "the mode stays");

        // A change the edit cannot carry exactly is refused by the safety net (500).
        let mut wrong = next.clone();
        wrong.services[0].backends[0].weight = 9;
        let e = file.write_edit(&edit, &wrong).expect_err("mismatch");
        assert_eq!(e.status(), 500, "{e}");
        assert_eq!(
            std::fs::read_to_string(&real).expect("read"),
            now,
            "nothing written"
        );

        // restore puts the previous text back.
        file.restore(previous.clone()).expect("restore");
        assert_eq!(std::fs::read_to_string(&real).expect("read"), previous);
        file.check_unchanged()
            .expect("the restored text is the last written");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
