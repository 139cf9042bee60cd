//! The benchmark's plot: time against sequence length on log-log axes, one
//! line per mixer, as SVG and PNG (plotters).
//!
//! Text needs a TrueType font: the first of a few common system fonts is
//! loaded at run time (`scripts/setup.sh` installs DejaVu).

use anyhow::{anyhow, bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// One line: a label and its `(L, seconds)` points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Peers are drawn dashed.
    pub peer: bool,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

fn register_font() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let mut candidates: Vec<String> = Vec::new();
        if let Ok(p) = std::env::var("MIXC_FONT") {
            candidates.push(p);
        }
        candidates.extend(FONTS.iter().map(|s| s.to_string()));
        for p in &candidates {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(format!(
            "no TrueType font for the plot's text (looked for {}); install fonts-dejavu-core or set MIXC_FONT",
            candidates.join(", ")
        ))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Writes `stem.svg` and `stem.png`.
pub fn write(stem: &Path, title: &str, series: &[Series]) -> Result<Vec<String>> {
    register_font()?;
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.clone()).collect();
    if pts.is_empty() {
        bail!("nothing was measured, so there is nothing to plot");
    }
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    {
        let root = SVGBackend::new(&svg, (900, 600)).into_drawing_area();
        draw(&root, title, series, &pts)?;
        root.present()
            .map_err(|e| anyhow!("{}: {e}", svg.display()))?;
    }
    {
        let root = BitMapBackend::new(&png, (900, 600)).into_drawing_area();
        draw(&root, title, series, &pts)?;
        root.present()
            .map_err(|e| anyhow!("{}: {e}", png.display()))?;
    }
    Ok(vec![svg.display().to_string(), png.display().to_string()])
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    series: &[Series],
    pts: &[(f64, f64)],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plot: {x}");
    root.fill(&WHITE).map_err(e)?;
    let (xmin, xmax) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (ymin, ymax) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(
            (xmin / 1.3..xmax * 1.3).log_scale(),
            (ymin / 2.0..ymax * 2.0).log_scale(),
        )
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("sequence length L")
        .y_desc("time per call (ms)")
        .x_label_formatter(&|x| format!("{}", *x as i64))
        .y_label_formatter(&|y| {
            let ms = y * 1e3;
            if ms >= 10.0 {
                format!("{ms:.0}")
            } else if ms >= 1.0 {
                format!("{ms:.1}")
            } else {
                format!("{ms:.3}")
            }
        })
        .light_line_style(RGBColor(238, 238, 238))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    for (k, s) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()].to_rgba();
        let style = ShapeStyle {
            color,
            filled: true,
            stroke_width: if s.peer { 1 } else { 2 },
        };
        let line: Vec<(f64, f64)> = s.points.clone();
        let label = if s.peer {
            format!("{} (peer)", s.label)
        } else {
            s.label.clone()
        };
        chart
            .draw_series(LineSeries::new(line.clone(), style))
            .map_err(e)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        chart
            .draw_series(
                line.iter()
                    .map(move |p| Circle::new(*p, if s.peer { 3 } else { 4 }, style)),
            )
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    Ok(())
}
