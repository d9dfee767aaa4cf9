//! The course's evaluation: 5 sessions, the trade probability p from 0 to 0.8 in steps of
//! 0.2, latency per request type against p, written as CSV and as an SVG plot.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::report::Summary;

/// The probabilities swept.
pub const PROBABILITIES: [f64; 5] = [0.0, 0.2, 0.4, 0.6, 0.8];

/// One row of the sweep: p and the run's summary.
pub type Point = (f64, Summary);

/// The CSV: one row per p and request type.
pub fn csv(points: &[Point]) -> String {
    let mut out = String::from("p,request,count,mean_ms,p50_ms,p90_ms,p99_ms,max_ms\n");
    for (p, summary) in points {
        for l in &summary.latency {
            let figures: Vec<String> = l.figures().iter().map(|f| format!("{f:.4}")).collect();
            let _ = writeln!(
                out,
                "{p:.1},{},{},{}",
                l.kind.name(),
                l.count,
                figures.join(",")
            );
        }
    }
    out
}

/// Plots mean and p99 latency of each request type against p.
pub fn plot(points: &[Point], title: &str, path: &Path) -> anyhow::Result<()> {
    let series: Vec<(String, Vec<(f64, f64)>)> = ["lookup", "trade", "verify"]
        .iter()
        .flat_map(|kind| {
            [("mean", false), ("p99", true)].map(|(label, p99)| {
                let values = points
                    .iter()
                    .filter_map(|(p, s)| {
                        let l = s
                            .latency
                            .iter()
                            .find(|l| l.kind.name() == *kind && l.count > 0)?;
                        Some((*p, if p99 { l.p99_ms } else { l.mean_ms }))
                    })
                    .collect();
                (format!("{kind} {label}"), values)
            })
        })
        .filter(|(_, values): &(String, Vec<(f64, f64)>)| !values.is_empty())
        .collect();
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|(_, y)| *y))
        .fold(0.1f64, f64::max)
        * 1.5;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.02f64..0.82f64, 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("probability of a trade after a lookup (p)")
            .y_desc("latency (ms)")
            .draw()?;
        let colors = [BLUE, BLUE, RED, RED, GREEN, GREEN];
        for (index, (label, values)) in series.iter().enumerate() {
            let color = colors[index % colors.len()];
            let style = if label.ends_with("p99") {
                color.stroke_width(1)
            } else {
                color.stroke_width(3)
            };
            chart
                .draw_series(LineSeries::new(values.clone(), style))?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(
                values
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot draw {}", path.display()))
}
