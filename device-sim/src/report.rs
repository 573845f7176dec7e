//! The outcome of a fleet run and the latency statistics it is summarised with.

use std::fmt;
use std::time::Duration;

/// What a [`run_fleet`](crate::fleet::run_fleet) run observed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetReport {
    /// Devices the run was asked to start.
    pub devices: usize,
    /// Devices whose CONNECT was accepted.
    pub devices_connected: usize,
    /// Events the run meant to send (`devices * events_per_device`).
    pub events_expected: usize,
    /// Event PUBLISH packets the devices wrote to the network.
    pub events_sent: usize,
    /// Events the application received.
    pub events_received_by_app: usize,
    /// Commands the application sent back (one per event received).
    pub commands_sent_by_app: usize,
    /// Commands the devices received.
    pub commands_received_by_devices: usize,
    /// Wall time of the whole run, connects and disconnects included.
    pub duration: Duration,
    /// Median device → application event latency, milliseconds (`None` without events).
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile device → application event latency, milliseconds.
    pub latency_p99_ms: Option<f64>,
    /// Connection, subscription and protocol errors seen, one line each.
    pub errors: Vec<String>,
}

impl FleetReport {
    /// True when every device connected, every event reached the application and every
    /// command reached its device, without errors.
    pub fn is_complete(&self) -> bool {
        self.errors.is_empty()
            && self.devices_connected == self.devices
            && self.events_sent == self.events_expected
            && self.events_received_by_app == self.events_expected
            && self.commands_received_by_devices == self.events_expected
    }
}

impl fmt::Display for FleetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} ms"));
        writeln!(
            f,
            "devices connected: {}/{}",
            self.devices_connected, self.devices
        )?;
        writeln!(
            f,
            "events: {} sent, {} received by the application (expected {})",
            self.events_sent, self.events_received_by_app, self.events_expected
        )?;
        writeln!(
            f,
            "commands: {} sent by the application, {} received by devices",
            self.commands_sent_by_app, self.commands_received_by_devices
        )?;
        writeln!(
            f,
            "event latency: p50 {}, p99 {}",
            ms(self.latency_p50_ms),
            ms(self.latency_p99_ms)
        )?;
        write!(f, "duration: {:.2} s", self.duration.as_secs_f64())?;
        if !self.errors.is_empty() {
            write!(f, "\nerrors ({}):", self.errors.len())?;
            for e in self.errors.iter().take(10) {
                write!(f, "\n  {e}")?;
            }
            if self.errors.len() > 10 {
                write!(f, "\n  … and {} more", self.errors.len() - 10)?;
            }
        }
        Ok(())
    }
}

/// The `p`-th percentile (0–100) of ascending-sorted `sorted`, nearest-rank method:
/// the smallest sample such that at least `p`% of the samples are ≤ it. `None` for no
/// samples or a `p` outside 0–100 (or NaN).
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let n = sorted.len();
    // rank in 1..=n; p = 0 maps to the minimum.
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    let index = rank.clamp(1, n) - 1;
    sorted.get(index).copied()
}

/// Sorts latency samples and returns `(p50, p99)`.
pub fn latency_summary(mut samples: Vec<f64>) -> (Option<f64>, Option<f64>) {
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 50.0), percentile(&samples, 99.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 0.5), Some(1.0));
        assert_eq!(percentile(&v, 99.1), Some(100.0));
    }

    #[test]
    fn percentile_small_and_edge_cases() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 50.0), Some(7.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0], 50.0), Some(1.0));
        assert_eq!(percentile(&[1.0, 2.0], 51.0), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[1.0], 101.0), None);
        assert_eq!(percentile(&[1.0], -1.0), None);
        assert_eq!(percentile(&[1.0], f64::NAN), None);
    }

    #[test]
    fn summary_sorts() {
        let (p50, p99) = latency_summary(vec![5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(p50, Some(3.0));
        assert_eq!(p99, Some(5.0));
        assert_eq!(latency_summary(Vec::new()), (None, None));
    }

    #[test]
    fn display_and_completeness() {
        let r = FleetReport {
            devices: 2,
            devices_connected: 2,
            events_expected: 4,
            events_sent: 4,
            events_received_by_app: 4,
            commands_sent_by_app: 4,
            commands_received_by_devices: 4,
            duration: Duration::from_millis(1500),
            latency_p50_ms: Some(1.234),
            latency_p99_ms: Some(5.0),
            errors: vec![],
        };
        assert!(r.is_complete());
        let text = r.to_string();
        assert!(text.contains("devices connected: 2/2"), "{text}");
        assert!(text.contains("p50 1.23 ms"), "{text}");
        let mut bad = r;
        bad.errors.push("d:acme:sensor:dev1: refused".into());
        assert!(!bad.is_complete());
        assert!(bad.to_string().contains("refused"));
    }
}
