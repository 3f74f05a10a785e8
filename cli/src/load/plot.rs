//! `--plot FILE.svg`: one SVG with three charts.
//!
//! 1. Latency by percentile on a "nines" axis: x is `log10(1 / (1 - q))`,
//!    so 0 is the median's side of the distribution (0 %), 1 is 90 %, 2 is
//!    99 %, ... 5 is 99.999 % — the tail gets as much room as the body, as
//!    in HdrHistogram's plotter. One curve per histogram (response time,
//!    service time, send lag; the closed loop has only latency). The
//!    latency axis is logarithmic: a 50 µs body and a 500 ms stall both fit.
//! 2. Messages per second, each second of the run (with the asked rate).
//! 3. The p99 of each second: a stall shows where it happened.
//!
//! Pure Rust: `plotters` with only its SVG backend and its built-in text
//! layout (no font or image libraries of the system).

use hdrhistogram::Histogram;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use super::progress::Second;

/// The deepest percentile drawn: 99.999 %.
const NINES: f64 = 5.0;
/// The lowest latency drawn, in microseconds.
const FLOOR_US: f64 = 1.0;

/// What one plot shows.
pub struct Plot<'a> {
    pub title: String,
    /// Named histograms of nanoseconds.
    pub curves: Vec<(&'static str, &'a Histogram<u64>)>,
    pub seconds: &'a [Second],
    /// The asked rate, in the open loop.
    pub target: Option<f64>,
}

const COLORS: [RGBColor; 3] = [RGBColor(0xd6, 0x27, 0x28), RGBColor(0x1f, 0x77, 0xb4), RGBColor(0x2c, 0xa0, 0x2c)];

/// `q` on the nines axis.
fn nines(q: f64) -> f64 {
    (1.0 / (1.0 - q)).log10().min(NINES)
}

/// A tick of the nines axis as a percentile: 0 → "0%", 2 → "99%".
fn nines_label(x: f64) -> String {
    let p = 100.0 - 100.0 / 10f64.powf(x);
    let digits = x.ceil().max(0.0) as usize;
    let s = format!("{p:.digits$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { &s };
    format!("{s}%")
}

/// A latency tick: as many decimals as its size needs.
fn micros_label(us: f64) -> String {
    if us == 0.0 || us >= 10.0 {
        format!("{us:.0}")
    } else if us >= 1.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.3}")
    }
}

/// The points of one curve: (nines, microseconds), as far as 99.999 %.
fn points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut pts = Vec::new();
    if h.is_empty() {
        return pts;
    }
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        // Below a microsecond is "no wait" here (a send lag of 0): the
        // floor keeps the log axis on the values that matter.
        let us = (v.value_iterated_to() as f64 / 1000.0).max(FLOOR_US);
        pts.push((if q >= 1.0 { NINES } else { nines(q) }, us));
        if q >= 1.0 || nines(q) >= NINES {
            break;
        }
    }
    pts
}

/// Draw `plot` into the SVG file `path`.
pub fn write(path: &std::path::Path, plot: &Plot<'_>) -> Result<(), String> {
    draw(path, plot).map_err(|e| e.to_string())
}

fn draw(path: &std::path::Path, plot: &Plot<'_>) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1000, 1150)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&plot.title, ("sans-serif", 22))?;
    let (top, bottom) = root.split_vertically(560);
    let (middle, bottom) = bottom.split_vertically(280);

    // 1. By percentile.
    let curves: Vec<(&str, Vec<(f64, f64)>)> = plot.curves.iter().map(|(n, h)| (*n, points(h))).collect();
    let (lo, hi) = curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold((f64::MAX, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = if hi > 0.0 { (lo / 1.5, hi * 1.5) } else { (1.0, 1000.0) };
    let mut chart = ChartBuilder::on(&top)
        .caption("Latency by percentile", ("sans-serif", 18))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..NINES, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(6)
        .x_label_formatter(&|x| nines_label(*x))
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .y_label_formatter(&|y| micros_label(*y))
        .draw()?;
    for (i, (name, pts)) in curves.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).border_style(BLACK).draw()?;

    // 2 and 3. Over time.
    let end = plot.seconds.last().map_or(1.0, |s| s.t.max(1.0));
    let top_rate = plot.seconds.iter().map(|s| s.msgs).fold(plot.target.unwrap_or(0.0), f64::max).max(1.0) * 1.1;
    let mut chart = ChartBuilder::on(&middle)
        .caption("Messages per second", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..end, 0f64..top_rate)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("msg/s")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    chart
        .draw_series(LineSeries::new(plot.seconds.iter().map(|s| (s.t, s.msgs)), COLORS[1].stroke_width(2)))?
        .label("echoed")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], COLORS[1].stroke_width(2)));
    if let Some(rate) = plot.target {
        chart
            .draw_series(LineSeries::new([(0.0, rate), (end, rate)], BLACK.stroke_width(1)))?
            .label("asked")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    chart.configure_series_labels().position(SeriesLabelPosition::LowerRight).border_style(BLACK).draw()?;

    let p99: Vec<(f64, f64)> = plot.seconds.iter().filter(|s| s.p99_us > 0.0).map(|s| (s.t, s.p99_us)).collect();
    let (lo, hi) = p99.iter().fold((f64::MAX, 0f64), |(lo, hi), &(_, y)| (lo.min(y), hi.max(y)));
    // A log axis only when the values span a decade or more: within one,
    // it would have no labelled tick at all.
    if hi > 0.0 && hi / lo >= 10.0 {
        p99_chart(&bottom, end, (lo / 1.5..hi * 1.5).log_scale(), p99)?;
    } else {
        p99_chart(&bottom, end, 0f64..if hi > 0.0 { hi * 1.2 } else { 1000.0 }, p99)?;
    }
    root.present()?;
    Ok(())
}

/// Chart 3, the p99 of each second, on a `y` axis of either kind.
fn p99_chart<DB, Y>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    end: f64,
    y: Y,
    p99: Vec<(f64, f64)>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend,
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption("p99 of each second", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..end, y)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("p99 (µs)")
        .y_label_formatter(&|y| micros_label(*y))
        .draw()?;
    chart.draw_series(LineSeries::new(p99, COLORS[0].stroke_width(2)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        assert_eq!(nines_label(0.0), "0%");
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(2.0), "99%");
        assert_eq!(nines_label(5.0), "99.999%");
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(nines(1.0), NINES);
    }
}
