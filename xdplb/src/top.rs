//! `xdplb top`: a live terminal view of rates per service and per backend, with health and
//! drops, refreshed every second.

use std::time::{Duration, Instant};

use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    widgets::{Block, Paragraph, Row, Table},
};

use crate::{
    instance,
    stats::{self, Snapshot, TrafficRow},
};

/// One line of the view: a service or one of its backends.
#[derive(Debug, Clone, PartialEq)]
pub struct RateRow {
    pub name: String,
    pub address: String,
    pub packets_per_second: f64,
    pub bits_per_second: f64,
    pub flows_per_second: f64,
    pub health: String,
    pub is_backend: bool,
}

/// What one refresh shows.
#[derive(Debug, Clone, PartialEq)]
pub struct TopView {
    pub title: String,
    pub rows: Vec<RateRow>,
    /// Pass and drop reasons with a non-zero rate, per second.
    pub verdicts: Vec<(String, f64)>,
    pub flow_table: String,
}

fn rate(cur: u64, prev: u64, seconds: f64) -> f64 {
    cur.saturating_sub(prev) as f64 / seconds
}

fn row(cur: &TrafficRow, prev: Option<&TrafficRow>, seconds: f64, is_backend: bool) -> RateRow {
    let p = |f: fn(&TrafficRow) -> u64| prev.map_or(f(cur), f);
    RateRow {
        name: cur.name.clone(),
        address: cur.address.clone(),
        packets_per_second: rate(cur.packets, p(|t| t.packets), seconds),
        bits_per_second: rate(cur.bytes, p(|t| t.bytes), seconds) * 8.0,
        flows_per_second: rate(cur.flows, p(|t| t.flows), seconds),
        health: cur.health.clone().unwrap_or_else(|| "-".into()),
        is_backend,
    }
}

/// Rates between two snapshots `seconds` apart.
pub fn view(prev: &Snapshot, cur: &Snapshot, seconds: f64) -> TopView {
    let seconds = seconds.max(1e-3);
    let mut rows = Vec::new();
    for s in &cur.services {
        let ps = prev
            .services
            .iter()
            .find(|p| p.traffic.name == s.traffic.name);
        rows.push(row(&s.traffic, ps.map(|p| &p.traffic), seconds, false));
        for b in &s.backends {
            let pb = ps.and_then(|p| p.backends.iter().find(|x| x.address == b.address));
            rows.push(row(b, pb, seconds, true));
        }
    }
    let verdicts = cur
        .counters
        .iter()
        .filter(|(name, _)| name.starts_with("pass_") || name.starts_with("drop_"))
        .map(|(name, v)| {
            let before = prev
                .counters
                .iter()
                .find(|(n, _)| n == name)
                .map_or(*v, |(_, p)| *p);
            (name.clone(), rate(*v, before, seconds))
        })
        .filter(|(_, r)| *r > 0.0)
        .collect();
    let f = &cur.flow_table;
    TopView {
        title: format!(
            "xdplb top: instance {} (pid {}), {}",
            cur.instance,
            cur.pid,
            cur.interfaces.join(", ")
        ),
        rows,
        verdicts,
        flow_table: format!(
            "flow table {} / {} entries, {} evicted",
            f.entries, f.capacity, f.evictions
        ),
    }
}

/// Draws a view.
pub fn draw(frame: &mut Frame, v: &TopView) {
    let [top, table, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(4),
    ])
    .areas(frame.area());
    frame.render_widget(
        Paragraph::new(format!("{}   (q to quit)", v.title))
            .style(Style::default().add_modifier(Modifier::BOLD)),
        top,
    );
    let rows = v.rows.iter().map(|r| {
        let name = if r.is_backend {
            format!("  {}", r.name)
        } else {
            r.name.clone()
        };
        Row::new(vec![
            name,
            r.address.clone(),
            format!("{:.0}", r.packets_per_second),
            format!("{:.0}", r.bits_per_second),
            format!("{:.1}", r.flows_per_second),
            r.health.clone(),
        ])
    });
    let widths = [
        Constraint::Length(22),
        Constraint::Length(22),
        Constraint::Length(12),
        Constraint::Length(14),
        Constraint::Length(10),
        Constraint::Length(6),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(
                Row::new(vec![
                    "SERVICE / BACKEND",
                    "ADDRESS",
                    "PKT/S",
                    "BIT/S",
                    "FLOWS/S",
                    "HEALTH",
                ])
                .style(Style::default().add_modifier(Modifier::BOLD)),
            )
            .block(Block::bordered().title("rates")),
        table,
    );
    let verdicts = if v.verdicts.is_empty() {
        "no passes or drops".to_string()
    } else {
        v.verdicts
            .iter()
            .map(|(n, r)| format!("{n} {r:.0}/s"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    frame.render_widget(
        Paragraph::new(format!("{verdicts}\n{}", v.flow_table))
            .block(Block::bordered().title("passes, drops, flow table")),
        bottom,
    );
}

/// Runs the live view until `q`, Esc or Ctrl-C.
pub fn run(instance_name: &str) -> anyhow::Result<()> {
    let state = instance::read(instance_name)?;
    let mut prev = stats::read(&state)?;
    let mut prev_at = Instant::now();
    let mut terminal = ratatui::init();
    let result = (|| -> anyhow::Result<()> {
        let mut shown = view(&prev, &prev, 1.0);
        loop {
            terminal.draw(|f| draw(f, &shown))?;
            if event::poll(Duration::from_millis(200))?
                && let Event::Key(k) = event::read()?
                && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                    || (k.code == KeyCode::Char('c')
                        && k.modifiers.contains(KeyModifiers::CONTROL)))
            {
                return Ok(());
            }
            if prev_at.elapsed() >= Duration::from_secs(1) {
                // A reload may have changed the services: read the state again.
                let state = instance::read(instance_name)?;
                let cur = stats::read(&state)?;
                shown = view(&prev, &cur, prev_at.elapsed().as_secs_f64());
                prev = cur;
                prev_at = Instant::now();
            }
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{FlowTable, ServiceRow};
    use ratatui::{Terminal, backend::TestBackend};

    fn traffic(name: &str, address: &str, packets: u64, health: Option<&str>) -> TrafficRow {
        TrafficRow {
            name: name.into(),
            address: address.into(),
            packets,
            bytes: packets * 100,
            flows: packets / 10,
            health: health.map(Into::into),
        }
    }

    fn snapshot(scale: u64, drops: u64) -> Snapshot {
        Snapshot {
            instance: "t".into(),
            pid: 1,
            interfaces: vec!["lo (generic)".into()],
            services: vec![ServiceRow {
                traffic: traffic("demo", "127.0.0.1:9875", 300 * scale, None),
                backends: vec![
                    traffic("#1", "127.0.0.1:9876", 200 * scale, Some("up")),
                    traffic("#2", "127.0.0.1:9877", 100 * scale, Some("down")),
                ],
            }],
            counters: vec![
                ("forwarded".into(), 300 * scale),
                ("drop_no_backend".into(), drops),
            ],
            flow_table: FlowTable {
                entries: 30,
                capacity: 1024,
                inserts: 40,
                evictions: 10,
            },
            veths: Default::default(),
        }
    }

    #[test]
    fn rates_are_deltas_over_time() {
        let v = view(&snapshot(1, 0), &snapshot(3, 8), 2.0);
        let demo = &v.rows[0];
        assert_eq!(
            (demo.packets_per_second, demo.bits_per_second),
            (300.0, 240_000.0)
        );
        assert_eq!(v.rows[2].health, "down");
        assert_eq!(v.verdicts, [("drop_no_backend".to_string(), 4.0)]);
    }

    #[test]
    fn the_screen_shows_services_backends_health_and_drops() {
        let v = view(&snapshot(1, 0), &snapshot(3, 8), 2.0);
        let mut terminal = Terminal::new(TestBackend::new(100, 14)).expect("test terminal");
        terminal.draw(|f| draw(f, &v)).expect("draw");
        let screen: String = terminal
            .backend()
            .buffer()
            .content()
            .chunks(100)
            .map(|line| {
                line.iter()
                    .map(ratatui::buffer::Cell::symbol)
                    .collect::<String>()
                    + "\n"
            })
            .collect();
        for needle in [
            "instance t",
            "demo",
            "127.0.0.1:9877",
            "300",
            "240000",
            "down",
            "drop_no_backend 4/s",
            "flow table 30 / 1024 entries, 10 evicted",
        ] {
            assert!(
                screen.contains(needle),
                "{needle:?} missing from:\n{screen}"
            );
        }
    }
}
