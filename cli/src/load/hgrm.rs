//! `--hgrm FILE`: the latency distribution in HdrHistogram's percentile
//! text format, the one its plotter (`plotFiles.html`) and
//! `HistogramLogProcessor` use:
//!
//! ```text
//!        Value     Percentile TotalCount 1/(1-Percentile)
//!
//!       41.215 0.000000000000          1           1.00
//!       52.735 0.100000000000        209           1.11
//!   ...
//!     1126.399 1.000000000000       2000            inf
//! #[Mean    =       61.210, StdDeviation   =       40.331]
//! #[Max     =     1126.399, Total count    =         2000]
//! #[Buckets =           32, SubBuckets     =         2048]
//! ```
//!
//! Exactly four columns on every data line: the plotter keeps only lines
//! that split into four fields (the `hdrhistogram` crate's example prints a
//! fifth, which the plotter silently drops). Values are microseconds; the
//! steps are the usual 5 per halving of the distance to 100 %. The last
//! line's `inf` is what the reference files have (the plotter skips it: it
//! is not a number for it).

use std::io::{self, Write};

use hdrhistogram::Histogram;

/// Steps per halving of the distance to the 100th percentile.
const TICKS_PER_HALF: u32 = 5;

/// Write `h` (nanoseconds) as microseconds.
pub fn write(out: &mut impl Write, h: &Histogram<u64>) -> io::Result<()> {
    writeln!(out, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)")?;
    let us = |ns: u64| ns as f64 / 1000.0;
    // Java's writer prints the running total up to each step.
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(TICKS_PER_HALF) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = us(v.value_iterated_to());
            if q < 1.0 {
                writeln!(out, "{value:12.3} {q:2.12} {total:10} {:14.2}", 1.0 / (1.0 - q))?;
            } else {
                writeln!(out, "{value:12.3} {q:2.12} {total:10} {:>14}", "inf")?;
            }
        }
    }
    let mean = if h.is_empty() { 0.0 } else { h.mean() / 1000.0 };
    let stdev = if h.is_empty() { 0.0 } else { h.stdev() / 1000.0 };
    let max = if h.is_empty() { 0.0 } else { us(h.max()) };
    // Sub-buckets per bucket: the power of two that holds 2 * 10^digits.
    let sub_buckets = (2 * 10u64.pow(h.sigfig() as u32)).next_power_of_two();
    writeln!(out, "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]")?;
    writeln!(out, "#[Max     = {max:12.3}, Total count    = {:12}]", h.len())?;
    writeln!(out, "#[Buckets = {:12}, SubBuckets     = {sub_buckets:12}]", h.buckets())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_back_with_four_monotonic_columns_and_the_footer() {
        let mut h = crate::load::latency::histogram();
        for i in 1..=10_000u64 {
            h.record(i * 997 % 50_000 + 20_000).unwrap();
        }
        h.record(3_000_000).unwrap();
        let mut text = Vec::new();
        write(&mut text, &h).unwrap();
        let text = String::from_utf8(text).unwrap();
        let mut rows = Vec::new();
        let mut footer = Vec::new();
        for line in text.lines().skip(2) {
            if let Some(f) = line.strip_prefix("#[") {
                footer.push(f.to_string());
                continue;
            }
            let cols: Vec<f64> = line.split_whitespace().map(|c| c.parse().unwrap()).collect();
            assert_eq!(cols.len(), 4, "{line}");
            rows.push(cols);
        }
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
        assert!(rows.len() > 50, "{} rows", rows.len());
        for w in rows.windows(2) {
            for c in 0..4 {
                assert!(w[1][c] >= w[0][c], "column {c} decreases: {w:?}");
            }
        }
        let last = rows.last().unwrap();
        assert_eq!(last[1], 1.0);
        assert_eq!(last[2], 10_001.0);
        assert!(last[3].is_infinite());
        assert_eq!(footer.len(), 3, "{footer:?}");
        assert!(footer[0].starts_with("Mean    = "), "{footer:?}");
        let max: f64 = footer[1]["Max     = ".len()..].split(',').next().unwrap().trim().parse().unwrap();
        assert_eq!(max, last[0]);
        assert_eq!(max, h.max() as f64 / 1000.0);
        assert!(footer[1].ends_with("Total count    =        10001]"), "{footer:?}");
    }
}
