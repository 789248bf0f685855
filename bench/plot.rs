//! SVG plots (plotters, SVG backend only): latency by percentile with every run and
//! reference overlaid, and lines over time or over load.

use std::path::Path;

use anyhow::anyhow;
use hdrhistogram::Histogram;
use plotters::prelude::*;

const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// One histogram to draw: its target (one colour and legend entry per target) and run.
pub struct Curve<'a> {
    /// Target label.
    pub target: &'a str,
    /// The histogram, ns.
    pub hist: &'a Histogram<u64>,
}

fn x_of(q: f64) -> f64 {
    // Percentile axis: 0 at p0, 1 at p90, 2 at p99, 3 at p99.9 …
    -(1.0 - q).max(1e-7).log10()
}

fn label_x(x: &f64) -> String {
    match x.round() as i32 {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        3 => "99.9%".into(),
        4 => "99.99%".into(),
        5 => "99.999%".into(),
        6 => "99.9999%".into(),
        n => format!("1-1e-{n}"),
    }
}

/// A legend entry: a short line in the series' colour.
fn mark(colour: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
}

/// Draws the series' legend in the upper left corner.
fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))
}

/// Latency (ms, log scale) by percentile, one line per run, one colour per target.
pub fn percentiles(path: &Path, title: &str, curves: &[Curve<'_>]) -> anyhow::Result<()> {
    let mut targets: Vec<&str> = Vec::new();
    for c in curves {
        if !targets.contains(&c.target) {
            targets.push(c.target);
        }
    }
    let mut series: Vec<(usize, Vec<(f64, f64)>)> = Vec::new();
    let (mut lo, mut hi, mut xmax) = (f64::MAX, 0f64, 1f64);
    for c in curves {
        if c.hist.is_empty() {
            continue;
        }
        let mut pts = Vec::new();
        for v in c.hist.iter_quantiles(5) {
            let q = v.quantile_iterated_to();
            let x = x_of(q);
            let y = (v.value_iterated_to() as f64 / 1e6).max(1e-3);
            lo = lo.min(y);
            hi = hi.max(y);
            xmax = xmax.max(x);
            pts.push((x, y));
        }
        let idx = targets.iter().position(|t| *t == c.target).unwrap_or(0);
        series.push((idx, pts));
    }
    if series.is_empty() {
        return Ok(());
    }
    let xmax = xmax.ceil().min(6.0);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..xmax, ((lo * 0.8).max(1e-3)..hi * 1.25).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_labels(xmax as usize + 1)
        .x_label_formatter(&label_x)
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let mut labelled = vec![false; targets.len()];
    for (idx, pts) in series {
        let colour = COLOURS[idx % COLOURS.len()];
        let s = chart
            .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?;
        if !labelled[idx] {
            labelled[idx] = true;
            s.label(targets[idx].to_owned()).legend(mark(colour));
        }
    }
    legend(&mut chart)?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Named lines of (x, y) points on linear axes (log y when asked).
pub fn lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
) -> anyhow::Result<()> {
    lines_marked(path, title, x_desc, y_desc, series, log_y, &[])
}

/// [`lines`] with a dashed vertical line and its label at each of `marks` (x, label):
/// the moments something happened, such as a restart.
pub fn lines_marked(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
    marks: &[(f64, String)],
) -> anyhow::Result<()> {
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Ok(());
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(72);
    macro_rules! draw {
        ($chart:expr, $lo:expr, $hi:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
            for (i, (name, p)) in series.iter().enumerate() {
                let colour = COLOURS[i % COLOURS.len()];
                chart
                    .draw_series(LineSeries::new(p.iter().copied(), colour.stroke_width(2)))
                    .map_err(|e| anyhow!("{e}"))?
                    .label(name.clone())
                    .legend(mark(colour));
            }
            draw_marks(&mut chart, marks, $lo, $hi)?;
            legend(&mut chart)?;
        }};
    }
    if log_y {
        let lo = (y0 * 0.8).max(1e-3);
        let hi = (y1 * 1.25).max(lo * 10.0);
        draw!(
            builder
                .build_cartesian_2d(x0..x1, (lo..hi).log_scale())
                .map_err(|e| anyhow!("{e}"))?,
            lo,
            hi
        );
    } else {
        let hi = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
        let lo = 0f64.min(y0);
        draw!(
            builder
                .build_cartesian_2d(x0..x1, lo..hi)
                .map_err(|e| anyhow!("{e}"))?,
            lo,
            hi
        );
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// A dashed vertical line at each mark's x, from `lo` to `hi`, its label at the top.
fn draw_marks<'a, CT>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    marks: &[(f64, String)],
    lo: f64,
    hi: f64,
) -> anyhow::Result<()>
where
    CT: CoordTranslate<From = (f64, f64)>,
{
    let grey = RGBColor(110, 110, 110);
    for (x, label) in marks {
        chart
            .draw_series(DashedLineSeries::new(
                [(*x, lo), (*x, hi)],
                6,
                4,
                grey.stroke_width(1),
            ))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(std::iter::once(Text::new(
                label.clone(),
                (*x, hi),
                ("sans-serif", 13).into_font().color(&grey),
            )))
            .map_err(|e| anyhow!("{e}"))?;
    }
    Ok(())
}
