//! Latency recording with an HDR histogram: microsecond resolution, three significant
//! digits, up to one minute; summarised as min/mean/p50/p99/p99.9/max in milliseconds.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency recorded, microseconds (one minute); longer samples are clamped.
const MAX_US: u64 = 60_000_000;

/// A latency histogram (microseconds).
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of a [`Latency`], milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Self {
        // Bounds and precision are constants that hdrhistogram accepts.
        let hist = Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds");
        Self { hist }
    }

    /// Records one sample (clamped to 1 µs … 60 s).
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(MAX_US);
        self.record_us(us);
    }

    /// Records one sample given in microseconds (clamped to 1 µs … 60 s).
    pub fn record_us(&mut self, us: u64) {
        // In bounds after the clamp, so this cannot fail.
        let _ = self.hist.record(us.clamp(1, MAX_US));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides: cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The `q`-quantile (0–1), milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    /// Summary, or `None` without samples.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.hist.is_empty() {
            return None;
        }
        Some(LatencySummary {
            count: self.hist.len(),
            min_ms: self.hist.min() as f64 / 1000.0,
            mean_ms: self.hist.mean() / 1000.0,
            p50_ms: self.quantile_ms(0.50),
            p99_ms: self.quantile_ms(0.99),
            p999_ms: self.quantile_ms(0.999),
            max_ms: self.hist.max() as f64 / 1000.0,
        })
    }

    /// The latency distribution for a plot: points `(nines, ms)` where
    /// `nines = log10(1 / (1 - q))`, so 1 is p90, 2 is p99, 3 is p99.9.
    pub fn curve(&self) -> Vec<(f64, f64)> {
        if self.hist.is_empty() {
            return Vec::new();
        }
        // 0 to 3.95 nines in steps of 0.05, then the maximum at 4.
        let mut points: Vec<(f64, f64)> = (0..80u32)
            .map(|i| {
                let nines = f64::from(i) / 20.0;
                (nines, self.quantile_ms(1.0 - 10f64.powf(-nines)))
            })
            .collect();
        points.push((4.0, self.hist.max() as f64 / 1000.0));
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b.abs() * 0.002 + 1e-9
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut l = Latency::new();
        for ms in 1..=1000u64 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary().expect("samples");
        assert_eq!(s.count, 1000);
        assert!(close(s.min_ms, 1.0), "{s:?}");
        assert!(close(s.p50_ms, 500.0), "{s:?}");
        assert!(close(s.p99_ms, 990.0), "{s:?}");
        assert!(close(s.p999_ms, 999.0), "{s:?}");
        assert!(close(s.max_ms, 1000.0), "{s:?}");
        assert!(close(s.mean_ms, 500.5), "{s:?}");
    }

    #[test]
    fn one_slow_sample_shows_only_in_the_tail() {
        let mut l = Latency::new();
        for _ in 0..999 {
            l.record_us(2_000);
        }
        l.record_us(250_000);
        let s = l.summary().expect("samples");
        assert!(close(s.p50_ms, 2.0) && close(s.p99_ms, 2.0), "{s:?}");
        assert!(close(s.max_ms, 250.0), "{s:?}");
        // p99.9 of 1000 samples is the 999th: still the fast one.
        assert!(close(s.p999_ms, 2.0), "{s:?}");
    }

    #[test]
    fn clamps_and_merges() {
        let mut a = Latency::new();
        a.record(Duration::ZERO);
        a.record(Duration::from_secs(3600));
        let mut b = Latency::new();
        b.record_us(10);
        a.merge(&b);
        let s = a.summary().expect("samples");
        assert_eq!(s.count, 3);
        assert!(close(s.min_ms, 0.001), "{s:?}");
        assert!(close(s.max_ms, 60_000.0), "{s:?}");
        assert_eq!(Latency::new().summary(), None);
    }

    #[test]
    fn curve_is_monotonic_and_ends_at_max() {
        let mut l = Latency::new();
        for us in 1..=10_000u64 {
            l.record_us(us);
        }
        let c = l.curve();
        assert!(c.len() > 10);
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(c.last().map(|p| p.0), Some(4.0));
        assert!(Latency::new().curve().is_empty());
    }
}
