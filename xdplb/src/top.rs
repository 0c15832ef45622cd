//! `xdplb top`: a live terminal view of rates per service and per backend, with health, drain
//! and drops, refreshed every second. Readable at 80 columns: rates in human units, every
//! address and state word whole (a long service name is cut with an ellipsis instead), `down`
//! in bold red and `drain` in yellow.

use std::time::{Duration, Instant};

use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Table, Wrap},
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
    /// Drained by the operator (no new flows).
    pub drain: bool,
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
        drain: cur.drain,
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
            "flow table {} / {} entries ({:.0}%), {} evicted",
            f.entries,
            f.capacity,
            f.entries as f64 * 100.0 / f64::from(f.capacity.max(1)),
            f.evictions
        ),
    }
}

/// Packet rate units, each 1000 times the one before.
pub const PACKET_UNITS: [&str; 4] = [" pps", " kpps", " Mpps", " Gpps"];
/// Bit rate units (SI, as network interfaces are rated).
pub const BIT_UNITS: [&str; 5] = [" bit/s", " kbit/s", " Mbit/s", " Gbit/s", " Tbit/s"];
/// Flow rate units (the column header says "/s").
pub const COUNT_UNITS: [&str; 4] = ["", "k", "M", "G"];

/// `value` in the largest of `units` (each 1000 times the one before) in which it is at least
/// 1 once rounded: three significant digits in a scaled unit ("1.00 kpps", "12.3 kpps",
/// "999 kpps"), a whole number from 10 in the first unit ("999 pps") and one decimal under
/// 10 ("2.5 pps"), "0" for nothing. A value that would round to 1000 goes to the next unit
/// ("999.5 pps" is "1.00 kpps"). At most 4 digits and a point, except beyond the last unit.
pub fn human(value: f64, units: &[&str]) -> String {
    let value = if value.is_finite() {
        value.max(0.0)
    } else {
        0.0
    };
    if value == 0.0 {
        return format!("0{}", units.first().copied().unwrap_or_default());
    }
    let mut scaled = value;
    let mut unit = 0;
    while scaled >= 999.5 && unit + 1 < units.len() {
        scaled /= 1000.0;
        unit += 1;
    }
    let name = units.get(unit).copied().unwrap_or_default();
    let number = match (unit, scaled) {
        (0, v) if v < 9.95 => format!("{v:.1}"),
        (0, v) => format!("{v:.0}"),
        (_, v) if v < 9.995 => format!("{v:.2}"),
        (_, v) if v < 99.95 => format!("{v:.1}"),
        (_, v) => format!("{v:.0}"),
    };
    format!("{number}{name}")
}

/// The style of `down` (bold red) and `drain` (yellow) in the state column.
pub const DOWN_STYLE: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
pub const DRAIN_STYLE: Style = Style::new().fg(Color::Yellow);

/// The state column of a row: health ("up", "down", "-" without a check) and "drain", styled.
fn state_line(r: &RateRow) -> Line<'static> {
    let mut spans = Vec::new();
    if !(r.drain && r.health == "-") {
        let style = if r.health == "down" {
            DOWN_STYLE
        } else {
            Style::new()
        };
        spans.push(Span::styled(r.health.clone(), style));
    }
    if r.drain {
        if !spans.is_empty() {
            spans.push(Span::raw(" "));
        }
        spans.push(Span::styled("drain", DRAIN_STYLE));
    }
    Line::from(spans)
}

/// `text` cut to `width` characters, with an ellipsis when cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Draws a view. The columns other than the name are as wide as their widest value can be
/// (the address column as its widest address), so that they are never cut; the name column
/// takes what is left (14 characters at 80 columns with full-length addresses).
pub fn draw(frame: &mut Frame, v: &TopView) {
    let [top, table, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(5),
    ])
    .areas(frame.area());
    frame.render_widget(
        Paragraph::new(format!("{}   (q to quit)", v.title))
            .style(Style::default().add_modifier(Modifier::BOLD)),
        top,
    );
    const HEADER: [&str; 6] = ["SERVICE", "ADDRESS", "PACKETS", "BITS", "FLOWS/S", "STATE"];
    let address_width = v
        .rows
        .iter()
        .map(|r| r.address.chars().count())
        .chain([HEADER[1].len()])
        .max()
        .unwrap_or_default();
    // "99.9 kpps", "99.9 Mbit/s", "99.9k", "down drain".
    let fixed = [address_width, 9, 11, 7, 10];
    let spacing = 1;
    let name_width = usize::from(table.width)
        .saturating_sub(2 + fixed.iter().sum::<usize>() + spacing * fixed.len())
        .max(4);
    let right = |s: String| Cell::from(Line::from(s).right_aligned());
    let rows = v.rows.iter().map(|r| {
        let name = if r.is_backend {
            format!("  {}", r.name)
        } else {
            r.name.clone()
        };
        Row::new(vec![
            Cell::from(fit(&name, name_width)),
            Cell::from(r.address.clone()),
            right(human(r.packets_per_second, &PACKET_UNITS)),
            right(human(r.bits_per_second, &BIT_UNITS)),
            right(human(r.flows_per_second, &COUNT_UNITS)),
            Cell::from(state_line(r)),
        ])
    });
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(fixed[0] as u16),
        Constraint::Length(fixed[1] as u16),
        Constraint::Length(fixed[2] as u16),
        Constraint::Length(fixed[3] as u16),
        Constraint::Length(fixed[4] as u16),
    ];
    let header = HEADER.iter().enumerate().map(|(i, h)| {
        if (2..5).contains(&i) {
            right(h.to_string())
        } else {
            Cell::from(*h)
        }
    });
    frame.render_widget(
        Table::new(rows, widths)
            .column_spacing(spacing as u16)
            .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
            .block(Block::bordered().title("rates per second")),
        table,
    );
    let verdicts = if v.verdicts.is_empty() {
        "no passes or drops".to_string()
    } else {
        v.verdicts
            .iter()
            .map(|(n, r)| format!("{n} {}", human(*r, &PACKET_UNITS)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    frame.render_widget(
        Paragraph::new(format!("{}\n{verdicts}", v.flow_table))
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title("flow table, passes and drops per second")),
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
    use ratatui::{Terminal, backend::TestBackend, buffer::Buffer};

    fn traffic(name: &str, address: &str, packets: u64, health: Option<&str>) -> TrafficRow {
        TrafficRow {
            name: name.into(),
            address: address.into(),
            packets,
            bytes: packets * 100,
            flows: packets / 10,
            health: health.map(Into::into),
            drain: false,
        }
    }

    fn snapshot(scale: u64, drops: u64) -> Snapshot {
        Snapshot {
            instance: "t".into(),
            pid: 1,
            interfaces: vec!["lo (generic)".into()],
            services: vec![ServiceRow {
                table_fingerprint: String::new(),
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
    fn human_units_switch_at_each_thousand_after_rounding() {
        for (value, packets, bits) in [
            (0.0, "0 pps", "0 bit/s"),
            (0.04, "0.0 pps", "0.0 bit/s"),
            (2.5, "2.5 pps", "2.5 bit/s"),
            (9.94, "9.9 pps", "9.9 bit/s"),
            (9.95, "10 pps", "10 bit/s"),
            (999.0, "999 pps", "999 bit/s"),
            (999.49, "999 pps", "999 bit/s"),
            (999.5, "1.00 kpps", "1.00 kbit/s"),
            (1000.0, "1.00 kpps", "1.00 kbit/s"),
            (1234.0, "1.23 kpps", "1.23 kbit/s"),
            (9_994.0, "9.99 kpps", "9.99 kbit/s"),
            (9_995.0, "10.0 kpps", "10.0 kbit/s"),
            (99_949.0, "99.9 kpps", "99.9 kbit/s"),
            (99_950.0, "100 kpps", "100 kbit/s"),
            (999_499.0, "999 kpps", "999 kbit/s"),
            (999_500.0, "1.00 Mpps", "1.00 Mbit/s"),
            (14_880_952.0, "14.9 Mpps", "14.9 Mbit/s"),
            (1e9, "1.00 Gpps", "1.00 Gbit/s"),
            (4e11, "400 Gpps", "400 Gbit/s"),
            (1e12, "1000 Gpps", "1.00 Tbit/s"),
            (-1.0, "0 pps", "0 bit/s"),
            (f64::NAN, "0 pps", "0 bit/s"),
        ] {
            assert_eq!(human(value, &PACKET_UNITS), packets, "{value} packets/s");
            assert_eq!(human(value, &BIT_UNITS), bits, "{value} bits/s");
        }
        assert_eq!(human(12_345.0, &COUNT_UNITS), "12.3k");
        // The widest values fit the columns draw() gives them.
        assert_eq!(human(99_949.0, &PACKET_UNITS).len(), 9);
        assert_eq!(human(99_949e6, &BIT_UNITS).len(), 11);
        assert_eq!(human(99_949.0, &COUNT_UNITS).len(), 5);
    }

    /// Each line of the screen, as text.
    fn lines(buffer: &Buffer) -> Vec<String> {
        let width = usize::from(buffer.area.width);
        buffer
            .content()
            .chunks(width)
            .map(|line| line.iter().map(ratatui::buffer::Cell::symbol).collect())
            .collect()
    }

    /// The screen at `width` x `height`.
    fn screen(v: &TopView, width: u16, height: u16) -> Buffer {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
        terminal.draw(|f| draw(f, v)).expect("draw");
        terminal.backend().buffer().clone()
    }

    /// The cells of `word` on the line `y`, the first time it stands alone there.
    fn word_cells<'a>(
        buffer: &'a Buffer,
        line: &str,
        y: usize,
        word: &str,
    ) -> Vec<&'a ratatui::buffer::Cell> {
        let x = line
            .match_indices(word)
            .map(|(x, _)| x)
            .find(|&x| {
                let before = line[..x].chars().last().is_none_or(|c| c == ' ');
                let after = line[x + word.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| c == ' ' || c == '│');
                before && after
            })
            .unwrap_or_else(|| panic!("{word:?} not in {line:?}"));
        // Every character on screen here takes one cell.
        let x = line[..x].chars().count();
        (x..x + word.len())
            .map(|x| &buffer[(x as u16, y as u16)])
            .collect()
    }

    #[test]
    fn the_screen_shows_services_backends_health_and_drops() {
        let v = view(&snapshot(1, 0), &snapshot(3, 8), 2.0);
        let text = lines(&screen(&v, 100, 14)).join("\n");
        for needle in [
            "instance t",
            "demo",
            "127.0.0.1:9877",
            "300 pps",
            "240 kbit/s",
            "down",
            "drop_no_backend 4.0 pps",
            "flow table 30 / 1024 entries (3%), 10 evicted",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
    }

    #[test]
    fn at_80_columns_addresses_and_states_are_whole_and_down_and_drain_stand_out() {
        let backends = [
            ("#1", "192.168.100.101:65535", Some("up"), false),
            ("#2", "192.168.100.102:65535", Some("down"), false),
            ("#3", "192.168.100.103:65535", Some("up"), true),
            ("#4", "192.168.100.104:65535", Some("down"), true),
            ("#5", "10.0.0.5:53", None, true),
        ];
        let mk = |scale: u64| Snapshot {
            services: vec![ServiceRow {
                table_fingerprint: String::new(),
                traffic: traffic(
                    "a-service-name-longer-than-the-column",
                    "203.0.113.200:65535",
                    1_000_000 * scale,
                    None,
                ),
                backends: backends
                    .iter()
                    .map(|(name, address, health, drain)| TrafficRow {
                        drain: *drain,
                        ..traffic(name, address, 123_456_789 * scale, *health)
                    })
                    .collect(),
            }],
            ..snapshot(scale, 0)
        };
        let v = view(&mk(1), &mk(2), 1.0);
        let buffer = screen(&v, 80, 24);
        let lines = lines(&buffer);
        let text = lines.join("\n");
        println!("{text}");
        let line_of = |needle: &str| {
            lines
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle:?} not whole on any line:\n{text}"))
        };
        // The service: VIP whole, its long name cut with an ellipsis, rates in human units.
        let y = line_of("203.0.113.200:65535");
        assert!(lines[y].contains('…'), "{}", lines[y]);
        assert!(
            lines[y].contains("1.00 Mpps") && lines[y].contains("800 Mbit/s"),
            "{text}"
        );
        for (name, address, health, drain) in backends {
            let y = line_of(address);
            let line = &lines[y];
            assert!(line.contains(&format!("  {name} ")), "{line}");
            assert!(
                line.contains("123 Mpps") && line.contains("98.8 Gbit/s") && line.contains("12.3M"),
                "{line}"
            );
            match health {
                Some("down") => {
                    for cell in word_cells(&buffer, line, y, "down") {
                        assert_eq!(
                            (cell.fg, cell.modifier.contains(Modifier::BOLD)),
                            (Color::Red, true),
                            "{line}"
                        );
                    }
                }
                Some(h) => {
                    for cell in word_cells(&buffer, line, y, h) {
                        assert_eq!(cell.fg, Color::Reset, "{h} is plain: {line}");
                    }
                }
                None => assert!(
                    !line.contains(" - "),
                    "no health and drained: only drain: {line}"
                ),
            }
            if drain {
                for cell in word_cells(&buffer, line, y, "drain") {
                    assert_eq!(cell.fg, Color::Yellow, "{line}");
                }
            } else {
                assert!(!line.contains("drain"), "{line}");
            }
        }
        // Headers whole, and the bottom lines.
        for needle in [
            "SERVICE",
            "ADDRESS",
            "PACKETS",
            "BITS",
            "FLOWS/S",
            "STATE",
            "flow table 30 / 1024 entries (3%), 10 evicted",
        ] {
            line_of(needle);
        }
    }
}
