//! `compare --plot FILE.png`: deliveries/s and p99 latency against N (the fan-out at 128 B) for
//! every system, drawn with plotters' bitmap backend. Text is rendered with `ab_glyph` from a
//! TrueType file (no fontconfig): `$TIDINGS_BENCH_FONT`, or DejaVu Sans / Liberation Sans where
//! Debian puts them (`fonts-dejavu-core`, installed by `setup-peers.sh`).

use std::path::Path;

use super::Target;
use super::compare::median;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn load_font() -> Result<(), String> {
    let path = std::env::var("TIDINGS_BENCH_FONT")
        .ok()
        .or_else(|| FONTS.iter().find(|p| Path::new(p).is_file()).map(|p| (*p).to_owned()))
        .ok_or("no TrueType font found for the plot: install fonts-dejavu-core or set TIDINGS_BENCH_FONT")?;
    let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| format!("{path}: not a usable TrueType font"))
}

const COLORS: [RGBColor; 5] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

/// `(N, value)` points of `key` per target, from the plain 128 B fan-out scenarios.
fn series(
    results: &super::compare::Results,
    target: Target,
    key: &str,
    scale: f64,
) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = results
        .iter()
        .filter(|(name, _)| name.starts_with("fanout N=") && name.ends_with(" 128B"))
        .filter_map(|(name, by_target)| {
            let n: f64 = name
                .trim_start_matches("fanout N=")
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            let v = median(by_target.get(target.name())?, key)?;
            (v > 0.0).then_some((n, v * scale))
        })
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts
}

/// Draws the two panels into `path`.
pub(crate) fn draw(
    path: &Path,
    results: &super::compare::Results,
    targets: &[Target],
) -> Result<(), String> {
    load_font()?;
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let root = BitMapBackend::new(path, (1280, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (title, body) = root.split_vertically(50);
    title
        .titled(
            "Fan-out, 1 publisher -> N subscribers of one topic, 128 B messages (median of runs)",
            ("sans-serif", 22),
        )
        .map_err(|e| err(&e))?;
    let panels = body.split_evenly((1, 2));
    for (panel, (key, scale, label, legend)) in panels.iter().zip([
        (
            "deliveries_per_sec",
            1e-6,
            "deliveries/s (millions, log)",
            SeriesLabelPosition::UpperRight,
        ),
        (
            "p99_us",
            1e-3,
            "p99 publish-to-delivery latency (ms, log), unpaced",
            SeriesLabelPosition::UpperLeft,
        ),
    ]) {
        let all: Vec<(Target, Vec<(f64, f64)>)> = targets
            .iter()
            .map(|&t| (t, series(results, t, key, scale)))
            .filter(|(_, s)| !s.is_empty())
            .collect();
        let ys = all.iter().flat_map(|(_, s)| s.iter().map(|p| p.1));
        let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
        let (lo, hi) = if lo <= hi && lo > 0.0 {
            (lo / 2.0, hi * 2.0)
        } else {
            (0.001, 10.0)
        };
        let mut chart = ChartBuilder::on(panel)
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .caption(label, ("sans-serif", 18))
            .build_cartesian_2d((700f64..14_000f64).log_scale(), (lo..hi).log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("N subscribers")
            .x_labels(6)
            .y_labels(12)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|&y| {
                if y >= 10.0 {
                    format!("{y:.0}")
                } else if y >= 1.0 {
                    format!("{y:.1}")
                } else {
                    format!("{y:.3}")
                }
            })
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        for (t, pts) in &all {
            let i = Target::ALL.iter().position(|x| x == t).unwrap_or(0);
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(t.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(legend)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
