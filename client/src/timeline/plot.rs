//! The timeline plot: latency against time for lookups and trades (the slowest request and
//! the median of every time slice), with each kill, restart and election marked.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{axis, elections, place, seconds_since, EventKind, RequestRecord};
use crate::load::Kind;

/// Time slices across the plot: about one per pixel column of its area.
const SLICES: usize = 900;

/// The slowest and the median latency of each non-empty slice, at the slice's centre.
pub struct Slices {
    /// `(seconds, slowest ms)` per slice that had requests.
    pub slowest: Vec<(f64, f64)>,
    /// Runs of consecutive slices with requests, as `(seconds, median ms)`: a line is drawn
    /// through each run only, never across a gap with no requests.
    pub median_runs: Vec<Vec<(f64, f64)>>,
}

/// Slices the requests of one kind into `slices` equal spans of the axis.
pub fn slice(records: &[RequestRecord], kind: Kind, slices: usize) -> Slices {
    let mut out = Slices {
        slowest: Vec::new(),
        median_runs: Vec::new(),
    };
    let Some((start, end)) = axis(records) else {
        return out;
    };
    let slices = slices.max(1);
    let span = seconds_since(start, end).max(0.001);
    let width = span / slices as f64;
    let mut buckets: Vec<Vec<f64>> = vec![Vec::new(); slices];
    for r in records.iter().filter(|r| r.kind == kind) {
        let at = seconds_since(start, r.unix_ms);
        let index = ((at / width) as usize).min(slices - 1);
        buckets[index].push(r.latency_ms);
    }
    let mut run = Vec::new();
    for (index, bucket) in buckets.iter_mut().enumerate() {
        let centre = (index as f64 + 0.5) * width;
        if bucket.is_empty() {
            if !run.is_empty() {
                out.median_runs.push(std::mem::take(&mut run));
            }
            continue;
        }
        bucket.sort_by(f64::total_cmp);
        out.slowest.push((centre, bucket[bucket.len() - 1]));
        run.push((centre, bucket[bucket.len() / 2]));
    }
    if !run.is_empty() {
        out.median_runs.push(run);
    }
    out
}

/// How a legend entry is drawn.
enum Marker {
    /// A dot of this colour.
    Dot(RGBColor),
    /// A line in this style, dashed or not.
    Line(ShapeStyle, bool),
}

/// Draws the timeline as SVG at `path`. `kills` are the kill log's events (kills and
/// restarts), `leaders` the leader changes; events off the requests' axis are left out.
pub fn plot(
    records: &[RequestRecord],
    kills: &[super::Event],
    leaders: &[super::Event],
    title: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let range = axis(records).context("no requests to plot")?;
    let span = seconds_since(range.0, range.1).max(0.001);
    let lowest = records
        .iter()
        .map(|r| r.latency_ms)
        .filter(|l| *l > 0.0)
        .fold(f64::INFINITY, f64::min);
    let highest = records.iter().map(|r| r.latency_ms).fold(0.0f64, f64::max);
    let bottom = 10f64.powf(lowest.max(0.001).log10().floor());
    // Room above the slowest request for the two rows of labels.
    let top = 10f64.powf((highest.max(bottom * 10.0) * 4.0).log10().ceil());
    let (kill_events, _) = place(kills, range);
    let (election_events, _) = place(&elections(leaders), range);
    let mut sorted_leaders = leaders.to_vec();
    sorted_leaders.sort_by_key(|e| e.unix_ms);
    let title = match sorted_leaders.first().map(|e| e.kind) {
        Some(EventKind::Leader { leader, epoch }) => {
            format!("{title} (leader at the start: {leader}, epoch {epoch})")
        }
        _ => title.to_owned(),
    };
    let mut rounds: Vec<(f64, f64)> = Vec::new();
    let mut by_time = records.to_vec();
    by_time.sort_by_key(|r| r.unix_ms);
    for r in &by_time {
        if rounds.last().is_none_or(|(_, p)| (p - r.p).abs() > 1e-9) {
            rounds.push((seconds_since(range.0, r.unix_ms), r.p));
        }
    }

    let root = SVGBackend::new(path, (1200, 640)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let (upper, legend_area) = root.split_vertically(590);
        let mut chart = ChartBuilder::on(&upper)
            .caption(title.as_str(), ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..span * 1.01, (bottom..top).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("time since the first request (s)")
            .y_desc("latency (ms, log scale)")
            .y_label_formatter(&|v| {
                if *v >= 1.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v}")
                }
            })
            .light_line_style(WHITE)
            .draw()?;

        // The rounds of the sweep, faint, behind everything.
        let round_style = RGBColor(180, 180, 180);
        for (index, (at, p)) in rounds.iter().enumerate() {
            chart.draw_series(LineSeries::new(
                [(*at, bottom), (*at, top)],
                round_style.stroke_width(1),
            ))?;
            // Alternate heights, so that a short round's label does not cover the next one's.
            let height = if index % 2 == 0 { 1.15 } else { 1.6 };
            chart.draw_series(std::iter::once(Text::new(
                format!(" p={p:.1}"),
                (*at, bottom * height),
                ("sans-serif", 13)
                    .into_font()
                    .color(&RGBColor(110, 110, 110)),
            )))?;
        }

        let mut legend: Vec<(Marker, String)> = Vec::new();
        let series = [
            (Kind::Lookup, RGBColor(60, 150, 60)),
            (Kind::Trade, RGBColor(40, 80, 200)),
        ];
        for (kind, color) in series {
            let slices = slice(records, kind, SLICES);
            if slices.slowest.is_empty() {
                continue;
            }
            chart.draw_series(
                slices
                    .slowest
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 2, color.mix(0.6).filled())),
            )?;
            for run in &slices.median_runs {
                chart.draw_series(LineSeries::new(run.clone(), color.stroke_width(2)))?;
            }
            legend.push((
                Marker::Dot(color),
                format!(
                    "{}: slowest in each {:.0} ms",
                    kind.name(),
                    span / SLICES as f64 * 1000.0
                ),
            ));
            legend.push((
                Marker::Line(color.stroke_width(2), false),
                format!("{}: median", kind.name()),
            ));
        }

        // Kills on the top row of labels, elections on the second, restarts at the bottom.
        let kill_color = RGBColor(210, 30, 30);
        let election_color = RGBColor(130, 40, 170);
        let restart_color = RGBColor(240, 150, 0);
        let decades = (top / bottom).log10();
        let row = |from_top: f64| top / 10f64.powf(decades * from_top);
        let label_font = |color: RGBColor| {
            ("sans-serif", 12)
                .into_font()
                .color(&color)
                .pos(Pos::new(HPos::Left, VPos::Top))
        };
        let kill_style = kill_color.stroke_width(2);
        let election_style = election_color.stroke_width(1);
        let restart_style = restart_color.mix(0.7).stroke_width(1);
        for (at, event) in kill_events.iter().chain(&election_events) {
            let (color, style, label, y) = match event.kind {
                EventKind::Kill(r) => (kill_color, kill_style, format!(" kill {r}"), row(0.01)),
                EventKind::Restart(r) => {
                    (restart_color, restart_style, format!(" up {r}"), row(0.9))
                }
                EventKind::Leader { leader, epoch } => (
                    election_color,
                    election_style,
                    format!(" L{leader} e{epoch}"),
                    row(0.06),
                ),
            };
            let line: Vec<(f64, f64)> = vec![(*at, bottom), (*at, top)];
            if matches!(event.kind, EventKind::Leader { .. }) {
                chart.draw_series(DashedLineSeries::new(line, 6, 4, style))?;
            } else {
                chart.draw_series(LineSeries::new(line, style))?;
            }
            chart.draw_series(std::iter::once(Text::new(
                label,
                (*at, y),
                label_font(color),
            )))?;
        }
        legend.extend([
            (
                Marker::Line(kill_style, false),
                "kill N: SIGKILL of replica N".to_owned(),
            ),
            (
                Marker::Line(election_style, true),
                "L N e M: elected leader N, epoch M".to_owned(),
            ),
            (
                Marker::Line(restart_style, false),
                "up N: replica N listens again".to_owned(),
            ),
        ]);
        // The legend in a strip under the plot, four entries a row, never over the data.
        for (index, (marker, text)) in legend.iter().enumerate() {
            let x = 80 + (index % 4) as i32 * 280;
            let y = 4 + (index / 4) as i32 * 20;
            match marker {
                Marker::Dot(color) => {
                    legend_area.draw(&Circle::new((x + 11, y + 7), 3, color.filled()))?
                }
                Marker::Line(style, false) => legend_area
                    .draw(&PathElement::new(vec![(x, y + 7), (x + 22, y + 7)], *style))?,
                Marker::Line(style, true) => {
                    for dash in [0, 9, 18] {
                        legend_area.draw(&PathElement::new(
                            vec![(x + dash, y + 7), (x + dash + 5, y + 7)],
                            *style,
                        ))?;
                    }
                }
            }
            legend_area.draw(&Text::new(
                text.as_str(),
                (x + 30, y),
                ("sans-serif", 13).into_font(),
            ))?;
        }
        root.present()?;
        Ok(())
    };
    draw()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot draw {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(unix_ms: u64, kind: Kind, latency_ms: f64) -> RequestRecord {
        RequestRecord {
            unix_ms,
            p: 0.2,
            kind,
            status: 200,
            latency_ms,
        }
    }

    #[test]
    fn slices_keep_the_slowest_and_the_median_and_break_lines_at_gaps() {
        let records = [
            request(0, Kind::Trade, 1.0),
            request(10, Kind::Trade, 3.0),
            request(20, Kind::Trade, 2.0),
            request(150, Kind::Trade, 7.0),
            request(900, Kind::Trade, 4.0),
            request(990, Kind::Lookup, 10.0),
        ];
        // Axis 0..1000 ms in ten slices of 100 ms.
        let slices = slice(&records, Kind::Trade, 10);
        let slowest: Vec<f64> = slices.slowest.iter().map(|s| s.1).collect();
        assert_eq!(slowest, vec![3.0, 7.0, 4.0]);
        assert_eq!(slices.median_runs.len(), 2);
        assert_eq!(slices.median_runs[0].len(), 2);
        assert_eq!(slices.median_runs[0][0].1, 2.0);
        assert!((slices.median_runs[1][0].0 - 0.95).abs() < 1e-9);
        assert!(slice(&[], Kind::Trade, 10).slowest.is_empty());
        assert!(slice(&records, Kind::Verify, 0).slowest.is_empty());
    }

    #[test]
    fn a_plot_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.svg");
        let records: Vec<RequestRecord> = (0..200)
            .map(|i| {
                request(
                    1_000 + i * 10,
                    if i % 2 == 0 {
                        Kind::Lookup
                    } else {
                        Kind::Trade
                    },
                    0.2 + (i % 7) as f64,
                )
            })
            .collect();
        let kills = [super::super::Event {
            unix_ms: 1_500,
            kind: EventKind::Kill(3),
        }];
        let leaders = [
            super::super::Event {
                unix_ms: 900,
                kind: EventKind::Leader {
                    leader: 3,
                    epoch: 1,
                },
            },
            super::super::Event {
                unix_ms: 1_700,
                kind: EventKind::Leader {
                    leader: 2,
                    epoch: 2,
                },
            },
        ];
        plot(&records, &kills, &leaders, "test", &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("kill 3") && svg.contains("L2 e2"), "{svg}");
        assert!(plot(&[], &kills, &leaders, "empty", &path).is_err());
    }
}
