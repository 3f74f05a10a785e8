//! `soak-plot SAMPLES.csv OUT.png [--title TEXT] [--font FILE.ttf]`
//!
//! Draws the samples that `scripts/soak.sh` takes once a second (CSV
//! columns `t_s,server,rss_kib,fds,cpu_pct`; a row with empty figures means
//! the server was not alive at that moment) as one PNG of two panels over
//! time: resident memory (MiB) and open descriptors, one line per server,
//! with a legend. A server that died shows as a line that stops.
//!
//! Text is drawn with `ab_glyph` from a TrueType file read at run time
//! (default: DejaVu Sans, Debian's `fonts-dejavu-core`), so the tool needs
//! no system library: no fontconfig, no freetype.

use std::collections::BTreeMap;
use std::error::Error;
use std::process::ExitCode;

use plotters::prelude::*;
use plotters::style::FontStyle;

const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (1400, 1000);
/// Longer runs are drawn in minutes, shorter ones in seconds.
const MINUTES_ABOVE_S: f64 = 300.0;

/// One server's samples: runs of consecutive live samples, (t, rss MiB, fds).
#[derive(Default)]
struct Series {
    segments: Vec<Vec<(f64, f64, f64)>>,
    broken: bool,
}

struct Samples {
    /// Servers in the order they first appear in the file.
    order: Vec<String>,
    series: BTreeMap<String, Series>,
    t_max: f64,
    rss_max: f64,
    fds_max: f64,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak-plot: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let (mut positional, mut title, mut font) = (Vec::new(), None, DEFAULT_FONT.to_string());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--title" => title = Some(args.next().ok_or("--title needs a value")?),
            "--font" => font = args.next().ok_or("--font needs a value")?,
            "-h" | "--help" => {
                println!("usage: soak-plot SAMPLES.csv OUT.png [--title TEXT] [--font FILE.ttf]");
                return Ok(());
            }
            _ => positional.push(a),
        }
    }
    let [csv, png] = <[String; 2]>::try_from(positional)
        .map_err(|_| "usage: soak-plot SAMPLES.csv OUT.png [--title TEXT] [--font FILE.ttf]")?;

    let bytes =
        std::fs::read(&font).map_err(|e| format!("cannot read the font {font}: {e} (Debian: fonts-dejavu-core)"))?;
    // plotters keeps fonts for the life of the program.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{font} is not a font ab_glyph can read"))?;

    let text = std::fs::read_to_string(&csv).map_err(|e| format!("cannot read {csv}: {e}"))?;
    let samples = parse(&text)?;
    let title = title.unwrap_or_else(|| format!("edgeloop soak: {csv}"));
    draw(&samples, &png, &title)?;
    println!("wrote {png}");
    Ok(())
}

fn parse(text: &str) -> Result<Samples, Box<dyn Error>> {
    let mut lines = text.lines();
    let header = lines.next().ok_or("empty file")?;
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let col = |name: &str| cols.iter().position(|c| *c == name).ok_or(format!("no column {name} in the header"));
    let (ct, cs, cr, cf) = (col("t_s")?, col("server")?, col("rss_kib")?, col("fds")?);

    let mut s = Samples { order: Vec::new(), series: BTreeMap::new(), t_max: 0.0, rss_max: 0.0, fds_max: 0.0 };
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let get = |i: usize| f.get(i).copied().unwrap_or("");
        let t: f64 = get(ct).parse().map_err(|_| format!("line {}: bad t_s {:?}", n + 2, get(ct)))?;
        let server = get(cs).to_string();
        if !s.series.contains_key(&server) {
            s.order.push(server.clone());
        }
        let series = s.series.entry(server).or_default();
        s.t_max = s.t_max.max(t);
        match (get(cr).parse::<f64>(), get(cf).parse::<f64>()) {
            (Ok(rss_kib), Ok(fds)) => {
                let rss = rss_kib / 1024.0;
                s.rss_max = s.rss_max.max(rss);
                s.fds_max = s.fds_max.max(fds);
                if series.broken || series.segments.is_empty() {
                    series.segments.push(Vec::new());
                    series.broken = false;
                }
                series.segments.last_mut().expect("pushed above").push((t, rss, fds));
            }
            // Not alive at that moment: the line stops here.
            _ => series.broken = true,
        }
    }
    if s.order.is_empty() {
        return Err("no samples".into());
    }
    Ok(s)
}

fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(127, 127, 127),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
    ];
    COLORS[i % COLORS.len()]
}

fn draw(s: &Samples, png: &str, title: &str) -> Result<(), Box<dyn Error>> {
    let root = BitMapBackend::new(png, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 28))?;
    let panels = root.split_evenly((2, 1));

    let minutes = s.t_max > MINUTES_ABOVE_S;
    let (scale, x_desc) = if minutes { (60.0, "time (minutes)") } else { (1.0, "time (seconds)") };
    let x_max = (s.t_max / scale).max(1.0 / scale);

    // (panel, y caption, y maximum, which figure of a sample)
    type Pick = fn(&(f64, f64, f64)) -> f64;
    let specs: [(&str, f64, Pick, usize); 2] =
        [("resident memory (MiB)", s.rss_max, |p| p.1, 1), ("open descriptors", s.fds_max, |p| p.2, 0)];
    for (area, (y_desc, y_max, pick, decimals)) in panels.iter().zip(specs) {
        let y_top = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .caption(y_desc, ("sans-serif", 22))
            .build_cartesian_2d(0.0..x_max, 0.0..y_top)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .axis_desc_style(("sans-serif", 18))
            .label_style(("sans-serif", 15))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.decimals$}"))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        for (i, server) in s.order.iter().enumerate() {
            let c = color(i);
            let mut labelled = false;
            for seg in &s.series[server].segments {
                let points = seg.iter().map(|p| (p.0 / scale, pick(p)));
                let drawn = chart.draw_series(LineSeries::new(points, c.stroke_width(2)))?;
                if !labelled {
                    drawn
                        .label(server.as_str())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
                    labelled = true;
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
