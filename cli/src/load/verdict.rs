//! Whether an open-loop run measured what was asked.
//!
//! A load generator that misses its rate still prints numbers, and they
//! look like a result (wrk2#28: the requested rate silently not met). So an
//! open-loop run ends with a verdict (Lancet rejects such runs the same
//! way):
//!
//! - `ok`: the achieved rate was at least 99 % of the asked rate, and the
//!   send lag's p99 was at most 1 ms — the load was what was asked, and
//!   was sent when it was due.
//! - otherwise `generator_behind` when one of the generator's threads used
//!   90 % of a core or more: then the figures describe the generator, not
//!   the server (use more threads, fewer connections, or another machine);
//! - otherwise `server_behind`: the generator had room to spare, so the
//!   server (or the network) did not keep up.
//!
//! A run whose verdict is not `ok` still prints its summary, with the
//! reasons, and exits with status 3.

use std::time::Duration;

use serde::Serialize;

/// The least share of the asked rate that counts as achieved.
pub const MIN_ACHIEVED: f64 = 0.99;
/// The largest send-lag p99 that counts as on schedule.
pub const MAX_LAG_P99: Duration = Duration::from_millis(1);
/// A thread busy this share of a core or more was saturated.
pub const SATURATED: f64 = 0.90;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    ServerBehind,
    GeneratorBehind,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::ServerBehind => "server_behind",
            Verdict::GeneratorBehind => "generator_behind",
        }
    }
}

/// What the verdict is made from.
#[derive(Clone, Debug)]
pub struct Evidence {
    /// `--rate`, messages per second.
    pub rate: f64,
    /// Messages echoed per second in the window.
    pub achieved: f64,
    pub lag_p99: Duration,
    /// CPU time over wall time in the window, per generator thread.
    pub thread_util: Vec<f64>,
}

/// The verdict, and why (empty when `ok`).
pub fn judge(e: &Evidence) -> (Verdict, Vec<String>) {
    let mut why = Vec::new();
    if e.achieved < MIN_ACHIEVED * e.rate {
        why.push(format!(
            "achieved {:.0} msg/s, {:.1}% of the {:.0} asked (at least {:.0}% needed)",
            e.achieved,
            100.0 * e.achieved / e.rate,
            e.rate,
            100.0 * MIN_ACHIEVED
        ));
    }
    if e.lag_p99 > MAX_LAG_P99 {
        why.push(format!(
            "send lag p99 {:.3} ms, over {} ms: messages left later than they were due",
            e.lag_p99.as_secs_f64() * 1e3,
            MAX_LAG_P99.as_millis()
        ));
    }
    if why.is_empty() {
        return (Verdict::Ok, why);
    }
    let busy: Vec<String> = e
        .thread_util
        .iter()
        .enumerate()
        .filter(|(_, &u)| u >= SATURATED)
        .map(|(i, u)| format!("thread {i} used {:.0}% of a core", u * 100.0))
        .collect();
    if busy.is_empty() {
        let most = e.thread_util.iter().copied().fold(0.0, f64::max);
        why.push(format!(
            "the generator had room to spare (its busiest thread used {:.0}% of a core): the server did not keep up",
            most * 100.0
        ));
        if e.lag_p99 > MAX_LAG_P99 {
            // Late sends from idle threads: something else had the CPU.
            why.push(
                "sends were late although no generator thread was busy: other processes competing for the cores are the usual cause"
                    .to_string(),
            );
        }
        (Verdict::ServerBehind, why)
    } else {
        why.push(format!(
            "{}: the figures describe the generator, not the server (try more --threads or fewer --conns)",
            busy.join(", ")
        ));
        (Verdict::GeneratorBehind, why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(achieved: f64, lag_us: u64, util: &[f64]) -> Evidence {
        Evidence { rate: 1000.0, achieved, lag_p99: Duration::from_micros(lag_us), thread_util: util.to_vec() }
    }

    #[test]
    fn on_rate_and_on_time_is_ok() {
        assert_eq!(judge(&ev(990.0, 1000, &[0.95])), (Verdict::Ok, vec![]));
        assert_eq!(judge(&ev(1003.0, 20, &[0.1, 0.2])).0, Verdict::Ok);
    }

    #[test]
    fn short_of_the_rate_with_an_idle_generator_is_the_server() {
        let (v, why) = judge(&ev(500.0, 30, &[0.2]));
        assert_eq!(v, Verdict::ServerBehind);
        assert!(why[0].contains("50.0% of the 1000"), "{why:?}");
        assert_eq!(judge(&ev(989.9, 30, &[0.89])).0, Verdict::ServerBehind);
    }

    #[test]
    fn late_sends_alone_fail_the_run() {
        let (v, why) = judge(&ev(1000.0, 1001, &[0.5]));
        assert_eq!(v, Verdict::ServerBehind);
        assert!(why[0].contains("send lag"), "{why:?}");
    }

    #[test]
    fn a_saturated_thread_blames_the_generator() {
        let (v, why) = judge(&ev(700.0, 5000, &[0.3, 0.9]));
        assert_eq!(v, Verdict::GeneratorBehind);
        assert!(why.last().unwrap().contains("thread 1 used 90%"), "{why:?}");
    }
}
