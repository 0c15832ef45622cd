//! Where the logs go and how they look: stderr, through `tracing`.
//!
//! - `XDPLB_LOG` filters (default `info`: start, stop, reloads, API changes, health
//!   transitions; nothing per packet or per check).
//! - `XDPLB_LOG_FORMAT=json` prints one flat JSON object per line: `timestamp`, `level`,
//!   `message` and the event's fields at the top level (the daemon opens no spans, so there is
//!   no span to nest).
//! - Under systemd (stderr is the journal stream that `$JOURNAL_STREAM` names, or
//!   `XDPLB_LOG_JOURNAL=1`) every line starts with its syslog priority, `<3>` error, `<4>` warn,
//!   `<6>` info, `<7>` debug and trace, as sd-daemon(3) describes: journald strips the prefix
//!   and files the line at that priority, so `journalctl -p warning -u xdplb` works. The
//!   timestamp is left out there (journald stamps every line) and so are colours.
//!
//! Prefixes rather than `tracing-journald`: the lines still go through stderr, so the same
//! output reaches the journal, `docker logs` or a terminal, nothing is lost when the journal
//! socket is absent (as in a container without journald), and it needs no extra crate. The
//! prefix wrapper is written here because tracing-subscriber has no such option; it is four
//! lines.

use std::{fmt, io};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter, format::Writer},
    registry::LookupSpan,
    util::SubscriberInitExt as _,
};

/// How lines are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogFormat {
    /// One flat JSON object per line instead of text.
    pub json: bool,
    /// Lines start with their syslog priority (`<6>`) for journald; no timestamp.
    pub journal: bool,
    /// ANSI colours (text only, never under journald).
    pub ansi: bool,
}

impl LogFormat {
    /// The format that the environment asks for (see the module's documentation).
    pub fn from_env() -> Self {
        let journal = std::env::var("XDPLB_LOG_JOURNAL").is_ok_and(|v| v == "1")
            || std::env::var("JOURNAL_STREAM").is_ok_and(|v| stderr_is_journal_stream(&v));
        LogFormat {
            json: std::env::var("XDPLB_LOG_FORMAT").is_ok_and(|f| f == "json"),
            journal,
            ansi: !journal && io::IsTerminal::is_terminal(&io::stderr()),
        }
    }
}

/// Whether stderr is the stream `$JOURNAL_STREAM` (`DEVICE:INODE`) names: systemd sets it for
/// the service, and a child whose stderr was redirected elsewhere must not prefix.
fn stderr_is_journal_stream(value: &str) -> bool {
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    rustix::fs::fstat(io::stderr()).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

/// The syslog priority of a level, as journald reads it from a `<N>` prefix.
pub fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Puts `<N>` (the event's syslog priority) before what the inner format prints.
struct PriorityPrefix<F>(F);

impl<S, N, F> FormatEvent<S, N> for PriorityPrefix<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", syslog_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// The subscriber that prints to `writer` as `how` says, events filtered by `filter`.
pub fn subscriber<W>(
    how: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::fmt::format;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(how.ansi && !how.json)
        .with_target(false);
    match (how.json, how.journal) {
        (true, journal) => {
            let json = format()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_target(false);
            let builder = builder.fmt_fields(format::JsonFields::new());
            if journal {
                Box::new(builder.event_format(PriorityPrefix(json)).finish())
            } else {
                Box::new(builder.event_format(json).finish())
            }
        }
        (false, true) => {
            let text = format().with_target(false).without_time();
            Box::new(builder.event_format(PriorityPrefix(text)).finish())
        }
        (false, false) => Box::new(builder.finish()),
    }
}

/// Installs the process's subscriber: stderr, `XDPLB_LOG` (default `info`), the format the
/// environment asks for.
pub fn init() {
    let filter = EnvFilter::try_from_env("XDPLB_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // `try_init` also routes the `log` records (aya, aya-log) into it. A second call (there is
    // none) would keep the first subscriber.
    let _ = subscriber(LogFormat::from_env(), filter, io::stderr).try_init();
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The lines that `log` printed in `format`.
    fn lines(format: LogFormat, log: impl FnOnce()) -> Vec<String> {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let sub = subscriber(format, EnvFilter::new("debug"), move || sink.clone());
        tracing::subscriber::with_default(sub, log);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    const TEXT: LogFormat = LogFormat {
        json: false,
        journal: false,
        ansi: false,
    };

    #[test]
    fn priorities_follow_sd_daemon() {
        assert_eq!(syslog_priority(Level::ERROR), 3);
        assert_eq!(syslog_priority(Level::WARN), 4);
        assert_eq!(syslog_priority(Level::INFO), 6);
        assert_eq!(syslog_priority(Level::DEBUG), 7);
        assert_eq!(syslog_priority(Level::TRACE), 7);
    }

    #[test]
    fn journal_lines_start_with_their_priority() {
        let journal = LogFormat {
            journal: true,
            ..TEXT
        };
        let out = lines(journal, || {
            tracing::error!("e");
            tracing::warn!(backend = "10.0.0.2:53", "w");
            tracing::info!("i");
            tracing::debug!("d");
        });
        assert_eq!(out.len(), 4, "{out:?}");
        for (line, (prefix, level)) in out.iter().zip([
            ("<3>", "ERROR e"),
            ("<4>", "WARN w"),
            ("<6>", "INFO i"),
            ("<7>", "DEBUG d"),
        ]) {
            let rest = line
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("{line:?} lacks {prefix}"));
            // No timestamp: the prefix is followed by the level and the message.
            assert!(rest.trim_start().starts_with(level), "{line:?}");
        }
        assert!(out[1].contains("backend=\"10.0.0.2:53\""), "{:?}", out[1]);
        // Without journald there is no prefix.
        let plain = lines(TEXT, || tracing::warn!("w"));
        assert!(!plain[0].starts_with('<'), "{plain:?}");
    }

    #[test]
    fn json_lines_are_flat() {
        let json = LogFormat { json: true, ..TEXT };
        let out = lines(json, || {
            tracing::warn!(reload = 3, backend = "10.0.0.2:53", "reload rejected");
            tracing::info!("running instance");
        });
        assert_eq!(out.len(), 2, "{out:?}");
        let v: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(v["message"], "reload rejected", "{v}");
        assert_eq!(v["level"], "WARN", "{v}");
        assert_eq!(v["reload"], 3, "{v}");
        assert_eq!(v["backend"], "10.0.0.2:53", "{v}");
        assert!(v["timestamp"].is_string(), "{v}");
        assert!(v.get("fields").is_none() && v.get("span").is_none(), "{v}");
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert!(
            v.as_object().unwrap().values().all(|x| !x.is_object()),
            "nested: {keys:?}"
        );
        // Under journald the JSON follows the priority prefix, which journald strips.
        let journal_json = LogFormat {
            json: true,
            journal: true,
            ansi: false,
        };
        let out = lines(journal_json, || tracing::error!(x = 1, "boom"));
        let rest = out[0].strip_prefix("<3>").unwrap();
        let v: serde_json::Value = serde_json::from_str(rest).unwrap();
        assert_eq!(
            (v["message"].as_str(), v["x"].as_i64()),
            (Some("boom"), Some(1))
        );
    }
}
