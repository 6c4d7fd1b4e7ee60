//! SVG charts of a [`Report`] (`--plot DIR`):
//!
//! * `throughput.svg`: ops/s per design (bars) and ops/s over time (lines);
//! * `latency.svg`: per hypercall kind, the latency distribution of each design as a CDF on a
//!   log time axis;
//! * `teardown.svg` (only when a teardown ran): each design's teardown steps on a timeline
//!   (x = time since the kill, bar width = step duration, bar height = step duration).
//!
//! Everything plotted comes from the report, so the charts show exactly the JSON's numbers.

use super::report::{DesignReport, Report};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

type Res<T> = Result<T, String>;

fn e<E: std::fmt::Display>(x: E) -> String {
    x.to_string()
}

/// Draws the series labels of `chart` at `pos`, in the style every chart uses.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    pos: SeriesLabelPosition,
) -> Res<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(pos)
        .draw()
        .map_err(e)
}

/// Writes the charts into `dir` (created if needed); returns the files written.
pub fn write_all(report: &Report, dir: &Path) -> Res<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|x| format!("creating {}: {x}", dir.display()))?;
    let mut out = Vec::new();
    let p = dir.join("throughput.svg");
    throughput(report, &p)?;
    out.push(p);
    let p = dir.join("latency.svg");
    latency(report, &p)?;
    out.push(p);
    if report.results.iter().any(|r| !r.teardowns.is_empty()) {
        let p = dir.join("teardown.svg");
        teardown(report, &p)?;
        out.push(p);
    }
    Ok(out)
}

fn title(report: &Report, what: &str) -> String {
    format!("gntsim `{}`: {what}", report.scenario.name)
}

fn throughput(report: &Report, path: &Path) -> Res<()> {
    let root = SVGBackend::new(path, (1000, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let root = root
        .titled(&title(report, "throughput per design"), ("sans-serif", 20))
        .map_err(e)?;
    let (left, right) = root.split_horizontally(380);
    bars(report, &left)?;
    over_time(report, &right)?;
    root.present().map_err(e)?;
    Ok(())
}

fn bars(report: &Report, area: &DrawingArea<SVGBackend<'_>, Shift>) -> Res<()> {
    let res = &report.results;
    let n = res.len();
    let max = res
        .iter()
        .map(|r| r.ops_per_sec)
        .fold(0.0, f64::max)
        .max(1.0);
    // Horizontal bars, the first design on top. Segments 0..=n-1 (a segmented 0..n range
    // would add an empty one).
    let names: Vec<String> = res.iter().rev().map(|r| r.design.clone()).collect();
    let hi = n.saturating_sub(1).max(1);
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .caption("mean ops/s (ratio to the first design)", ("sans-serif", 14))
        .x_label_area_size(30)
        .y_label_area_size(100)
        .build_cartesian_2d(0.0..max * 1.45, (0..hi).into_segmented())
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n.max(1))
        .y_label_style(("sans-serif", 13))
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_labels(4)
        .x_label_formatter(&|v| si(*v))
        .draw()
        .map_err(e)?;
    for (i, r) in res.iter().enumerate() {
        let c = color(i);
        let row = n - 1 - i;
        chart
            .draw_series(std::iter::once({
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(row)),
                        (r.ops_per_sec, SegmentValue::Exact(row + 1)),
                    ],
                    c.mix(0.85).filled(),
                );
                bar.set_margin(6, 6, 0, 0);
                bar
            }))
            .map_err(e)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!(" {} ({:.2}x)", si(r.ops_per_sec), r.ratio_to_first),
                (r.ops_per_sec, SegmentValue::CenterOf(row)),
                ("sans-serif", 12)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            )))
            .map_err(e)?;
    }
    Ok(())
}

fn over_time(report: &Report, area: &DrawingArea<SVGBackend<'_>, Shift>) -> Res<()> {
    let res = &report.results;
    let tmax = res
        .iter()
        .flat_map(|r| r.timeline.iter().map(|p| p[0]))
        .fold(0.0, f64::max)
        .max(1e-3);
    let ymax = res
        .iter()
        .flat_map(|r| r.timeline.iter().map(|p| p[1]))
        .fold(0.0, f64::max)
        .max(1.0);
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .caption("ops/s over time (20 ms samples)", ("sans-serif", 15))
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..tmax, 0.0..ymax * 1.1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_label_formatter(&|v| si(*v))
        .draw()
        .map_err(e)?;
    for (i, r) in res.iter().enumerate() {
        let c = color(i);
        // Teardown windows, shaded.
        for t in &r.teardowns {
            if t.source == "event" {
                let a = t.started_s;
                let b = a + t.wall_ns as f64 / 1e9;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(a, 0.0), (b.max(a + tmax / 400.0), ymax * 1.1)],
                        c.mix(0.12).filled(),
                    )))
                    .map_err(e)?;
            }
        }
        chart
            .draw_series(LineSeries::new(
                r.timeline.iter().map(|p| (p[0], p[1])),
                c.stroke_width(2),
            ))
            .map_err(e)?
            .label(r.design.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    Ok(())
}

fn latency(report: &Report, path: &Path) -> Res<()> {
    let kinds: Vec<&str> = [
        "map",
        "unmap",
        "copy",
        "query",
        "setup",
        "forged_map",
        "forged_unmap",
    ]
    .into_iter()
    .filter(|k| report.results.iter().any(|r| r.latency.contains_key(*k)))
    .collect();
    let n = kinds.len().max(1);
    let cols = n.min(3);
    let rows = n.div_ceil(cols);
    let root =
        SVGBackend::new(path, (420 * cols as u32, 60 + 320 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let root = root
        .titled(
            &title(report, "latency distribution per hypercall (CDF)"),
            ("sans-serif", 20),
        )
        .map_err(e)?;
    let panels = root.split_evenly((rows, cols));
    for (k, area) in kinds.iter().zip(panels.iter()) {
        cdf_panel(&report.results, k, area)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

fn cdf_panel(
    res: &[DesignReport],
    kind: &str,
    area: &DrawingArea<SVGBackend<'_>, Shift>,
) -> Res<()> {
    let mut lo = f64::MAX;
    let mut hi: f64 = 1.0;
    for r in res {
        if let Some(l) = r.latency.get(kind) {
            if let Some(b) = l.histogram.first() {
                lo = lo.min(b[0].max(1) as f64);
            }
            if let Some(b) = l.histogram.last() {
                hi = hi.max(b[1] as f64);
            }
        }
    }
    if lo >= hi {
        lo = hi / 10.0;
    }
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .caption(format!("{kind} (per hypercall)"), ("sans-serif", 15))
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d((lo * 0.9..hi * 1.1).log_scale(), 0.0..100.0)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("latency")
        .y_desc("% of calls <=")
        .x_label_formatter(&|v| super::report::fmt_ns(*v))
        .draw()
        .map_err(e)?;
    for (i, r) in res.iter().enumerate() {
        let Some(l) = r.latency.get(kind) else {
            continue;
        };
        let total: u64 = l.histogram.iter().map(|b| b[2]).sum();
        if total == 0 {
            continue;
        }
        let mut acc = 0;
        let mut pts = vec![(l.histogram[0][0].max(1) as f64, 0.0)];
        for b in &l.histogram {
            acc += b[2];
            pts.push((b[1] as f64, 100.0 * acc as f64 / total as f64));
        }
        let c = color(i);
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(e)?
            .label(format!(
                "{} p99 {}",
                r.design,
                super::report::fmt_ns(l.p99_ns as f64)
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    Ok(())
}

fn teardown(report: &Report, path: &Path) -> Res<()> {
    // One teardown per design: the first destroy event's, else the churn's worst.
    let picks: Vec<(usize, &DesignReport, &super::report::TeardownReport)> = report
        .results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.teardowns
                .iter()
                .find(|t| t.source == "event")
                .or_else(|| r.teardowns.first())
                .map(|t| (i, r, t))
        })
        .collect();
    let root = SVGBackend::new(path, (1000, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let what = match picks.first() {
        Some((_, _, t)) if t.source == "event" => {
            format!("teardown of `{}`, step by step", t.domain)
        }
        _ => "the churn teardown with the longest step".to_string(),
    };
    let root = root
        .titled(&title(report, &what), ("sans-serif", 20))
        .map_err(e)?;
    let xmax = picks
        .iter()
        .flat_map(|(_, _, t)| t.timeline.iter().map(|s| (s[0] + s[1]) as f64 / 1e6))
        .fold(0.0, f64::max)
        .max(0.001);
    let ymax = picks
        .iter()
        .flat_map(|(_, _, t)| t.timeline.iter().map(|s| s[1] as f64 / 1e3))
        .fold(0.0, f64::max)
        .max(0.001);
    let mut chart = ChartBuilder::on(&root)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..xmax * 1.02, 0.0..ymax * 1.2)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("ms since the teardown job started, after the pause (bar width = step duration)")
        .y_desc("step duration (µs)")
        .draw()
        .map_err(e)?;
    for (i, r, t) in &picks {
        let c = color(*i);
        chart
            .draw_series(t.timeline.iter().map(|s| {
                let x0 = s[0] as f64 / 1e6;
                let d_us = s[1] as f64 / 1e3;
                let w = (s[1] as f64 / 1e6).max(xmax / 1500.0);
                Rectangle::new([(x0, 0.0), (x0 + w, d_us)], c.mix(0.6).filled())
            }))
            .map_err(e)?
            .label(format!(
                "{}: pause {}, {} steps, longest {}, {} mappings",
                r.design,
                super::report::fmt_ns(t.pause_ns as f64),
                t.steps,
                super::report::fmt_ns(t.longest_step_ns as f64),
                t.mappings_released
            ))
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.mix(0.6).filled())
            });
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(e)?;
    Ok(())
}

/// `1234567` -> `1.23M`.
fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
