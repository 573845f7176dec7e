//! The `inflight` and `overload` scenarios of `certmq-sim compare`: PUBACK-driven
//! publishers (see [`PubackConfig`](super::PubackConfig)) at several inflight windows,
//! and the delivered-vs-offered curve around each broker's own capacity.
//!
//! Why a curve around each broker's *own* capacity: a broker that keeps up when paced
//! below its capacity can still collapse when offered more than it can take, and that
//! collapse only shows when the load goes past the knee; the same absolute rates for
//! both brokers would put one of them entirely on one side of it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::compare::{num, ratio};
use super::plot::{render_svg, Plot};
use super::{BenchReport, PubackResult, Results};

/// The brokers in table and chart order.
const BROKERS: [&str; 2] = ["mosquitto", "certmq"];

/// One broker's delivered-vs-offered curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverloadCurve {
    pub broker: String,
    /// Inflight window of every run of the curve.
    pub inflight: usize,
    /// Delivered msgs/s of the unpaced run: 100 % load.
    pub capacity_per_s: f64,
    pub points: Vec<OverloadPoint>,
}

/// One load level of an [`OverloadCurve`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverloadPoint {
    /// Offered rate in % of the capacity.
    pub percent: u32,
    /// The configured (offered) rate, msgs/s.
    pub offered_per_s: f64,
    /// What the publishers managed to write (below offered when their windows filled).
    pub sent_per_s: f64,
    pub acked_per_s: f64,
    pub delivered_per_s: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub lost: u64,
}

impl OverloadPoint {
    pub fn new(percent: u32, p: &PubackResult) -> Self {
        Self {
            percent,
            offered_per_s: p.rate as f64,
            sent_per_s: p.offered_per_s,
            acked_per_s: p.acked_per_s,
            delivered_per_s: p.delivered_per_s,
            p50_ms: p.latency.as_ref().map(|l| l.p50_ms),
            p99_ms: p.latency.as_ref().map(|l| l.p99_ms),
            max_ms: p.latency.as_ref().map(|l| l.max_ms),
            lost: p.lost,
        }
    }
}

/// `(percent, offered msgs/s)` per load level: `percent` % of `capacity`, at least
/// 1 msg/s (rate 0 would mean unpaced). No level at all when the broker delivered
/// nothing unpaced: there is no capacity to scale.
pub(super) fn rates(capacity_per_s: f64, percents: &[u32]) -> Vec<(u32, u64)> {
    if !capacity_per_s.is_finite() || capacity_per_s < 1.0 {
        return Vec::new();
    }
    percents
        .iter()
        .map(|&p| {
            (
                p,
                (capacity_per_s * f64::from(p) / 100.0).round().max(1.0) as u64,
            )
        })
        .collect()
}

/// Unpaced PUBACK-driven results of `broker` with a clean-session application (the
/// `durable` runs have their own rows), by inflight window.
fn unpaced<'a>(reports: &'a [BenchReport], broker: &str) -> Vec<&'a PubackResult> {
    let mut v: Vec<&PubackResult> = reports
        .iter()
        .filter(|r| r.broker == broker)
        .filter_map(|r| match &r.results {
            Results::Puback(p) if p.rate == 0 && !p.persistent_subscriber => Some(p),
            _ => None,
        })
        .collect();
    v.sort_by_key(|p| p.inflight);
    v.dedup_by_key(|p| p.inflight);
    v
}

/// `p50 / p99 / max` in ms.
fn latency_cell(p: &PubackResult) -> String {
    let l = p.latency.as_ref();
    format!(
        "{} / {} / {}",
        num(l.map(|l| l.p50_ms)),
        num(l.map(|l| l.p99_ms)),
        num(l.map(|l| l.max_ms))
    )
}

/// The markdown table of the unpaced PUBACK-driven runs (one row per inflight window),
/// empty without any.
pub(super) fn inflight_table(reports: &[BenchReport]) -> String {
    let (m, c) = (unpaced(reports, BROKERS[0]), unpaced(reports, BROKERS[1]));
    let mut windows: Vec<usize> = m.iter().chain(&c).map(|p| p.inflight).collect();
    windows.sort_unstable();
    windows.dedup();
    let Some(first) = m.first().or(c.first()) else {
        return String::new();
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n#### PUBACK-driven publishers, unpaced ({} QoS 1 publishers → 1 application, {} B)\n",
        first.publishers, first.payload_bytes
    );
    let _ = writeln!(
        md,
        "| inflight | mosquitto acked / delivered msgs/s | p50 / p99 / max ms | lost | peak RSS MiB \
         | certmq acked / delivered msgs/s | p50 / p99 / max ms | lost | peak RSS MiB \
         | certmq / mosquitto delivered |"
    );
    let _ = writeln!(
        md,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let cells = |p: Option<&&PubackResult>| match p {
        Some(p) => format!(
            "{} / {} | {} | {} | {}",
            num(Some(p.acked_per_s)),
            num(Some(p.delivered_per_s)),
            latency_cell(p),
            p.lost,
            num(p.peak_rss_kib.map(|k| k as f64 / 1024.0))
        ),
        None => "– | – | – | –".to_owned(),
    };
    for w in windows {
        let (pm, pc) = (
            m.iter().find(|p| p.inflight == w),
            c.iter().find(|p| p.inflight == w),
        );
        let _ = writeln!(
            md,
            "| {w} | {} | {} | {} |",
            cells(pm),
            cells(pc),
            ratio(pc.map(|p| p.delivered_per_s), pm.map(|p| p.delivered_per_s))
        );
    }
    md
}

/// The markdown table of the overload curves (one row per load level), empty without
/// any.
pub(super) fn overload_table(curves: &[OverloadCurve]) -> String {
    let Some(first) = curves.first() else {
        return String::new();
    };
    let curve = |b: &str| curves.iter().find(|c| c.broker == b);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n#### Overload: offered rate vs delivered (inflight {}, paced; 100 % = the broker's unpaced delivered rate)\n",
        first.inflight
    );
    let capacities: Vec<String> = curves
        .iter()
        .map(|c| format!("{} {} msgs/s", c.broker, num(Some(c.capacity_per_s))))
        .collect();
    let _ = writeln!(md, "Capacity: {}.\n", capacities.join(", "));
    let _ = writeln!(
        md,
        "| load | mosquitto offered → delivered msgs/s | p50 / p99 / max ms | certmq offered → delivered msgs/s | p50 / p99 / max ms |"
    );
    let _ = writeln!(md, "| ---: | ---: | ---: | ---: | ---: |");
    let mut percents: Vec<u32> = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.percent))
        .collect();
    percents.sort_unstable();
    percents.dedup();
    let cells = |b: &str, pct: u32| match curve(b)
        .and_then(|c| c.points.iter().find(|p| p.percent == pct))
    {
        Some(p) => format!(
            "{} → {} | {} / {} / {}",
            num(Some(p.offered_per_s)),
            num(Some(p.delivered_per_s)),
            num(p.p50_ms),
            num(p.p99_ms),
            num(p.max_ms)
        ),
        None => "– | –".to_owned(),
    };
    for pct in percents {
        let _ = writeln!(
            md,
            "| {pct} % | {} | {} |",
            cells(BROKERS[0], pct),
            cells(BROKERS[1], pct)
        );
    }
    md
}

/// The comparison charts: delivered msgs/s and p99 vs inflight window (unpaced runs),
/// and delivered vs offered (with the ideal y = x) and p99 vs offered (overload).
pub(super) fn plots(reports: &[BenchReport], curves: &[OverloadCurve]) -> Vec<Plot> {
    let mut plots = Vec::new();
    let per_window = |f: &dyn Fn(&PubackResult) -> Option<f64>| {
        BROKERS
            .iter()
            .map(|b| {
                let points = unpaced(reports, b)
                    .into_iter()
                    .filter_map(|p| Some(((p.inflight as f64).log10(), f(p)?)))
                    .collect();
                ((*b).to_owned(), points)
            })
            .filter(|(_, p): &(String, Vec<(f64, f64)>)| !p.is_empty())
            .collect::<Vec<_>>()
    };
    let window_axis = "inflight window per publisher (log10: 0 = 1, 2 = 100, 3 = 1000)";
    let delivered = per_window(&|p| Some(p.delivered_per_s));
    if !delivered.is_empty() {
        plots.push(Plot {
            name: "inflight-delivered".into(),
            title: "PUBACK-driven publishers, unpaced: delivered msgs/s".into(),
            x_label: window_axis.into(),
            y_label: "msgs/s".into(),
            series: delivered,
        });
        plots.push(Plot {
            name: "inflight-p99".into(),
            title: "PUBACK-driven publishers, unpaced: end-to-end p99".into(),
            x_label: window_axis.into(),
            y_label: "p99 latency, ms".into(),
            series: per_window(&|p| p.latency.as_ref().map(|l| l.p99_ms)),
        });
    }
    if !curves.is_empty() {
        let series = |f: &dyn Fn(&OverloadPoint) -> Option<f64>| {
            curves
                .iter()
                .map(|c| {
                    let pts = c
                        .points
                        .iter()
                        .filter_map(|p| Some((p.offered_per_s, f(p)?)))
                        .collect();
                    (c.broker.clone(), pts)
                })
                .collect::<Vec<(String, Vec<(f64, f64)>)>>()
        };
        let top = curves
            .iter()
            .flat_map(|c| c.points.iter().map(|p| p.offered_per_s))
            .fold(0.0, f64::max);
        let mut delivered = series(&|p| Some(p.delivered_per_s));
        delivered.push((
            "ideal (delivered = offered)".into(),
            vec![(0.0, 0.0), (top, top)],
        ));
        plots.push(Plot {
            name: "overload-delivered".into(),
            title: format!(
                "QoS 1, inflight {}: delivered vs offered msgs/s",
                curves[0].inflight
            ),
            x_label: "offered msgs/s".into(),
            y_label: "delivered msgs/s".into(),
            series: delivered,
        });
        plots.push(Plot {
            name: "overload-p99".into(),
            title: format!(
                "QoS 1, inflight {}: end-to-end p99 vs offered msgs/s",
                curves[0].inflight
            ),
            x_label: "offered msgs/s".into(),
            y_label: "p99 latency, ms".into(),
            series: series(&|p| p.p99_ms),
        });
    }
    plots
}

/// Writes `overload.json` (the curves, when there are any) and the comparison charts
/// into `dir`.
pub(super) fn write(dir: &Path, reports: &[BenchReport], curves: &[OverloadCurve]) -> Result<()> {
    if !curves.is_empty() {
        let path = dir.join("overload.json");
        let json = serde_json::to_string_pretty(curves).context("serialize overload curves")?;
        std::fs::write(&path, json + "\n").with_context(|| format!("write {}", path.display()))?;
    }
    for plot in plots(reports, curves) {
        let path = dir.join(format!("{}.svg", plot.name));
        std::fs::write(&path, render_svg(&plot)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::LatencySummary;

    fn puback(broker: &str, inflight: usize, rate: u64, delivered: f64) -> BenchReport {
        BenchReport {
            broker: broker.into(),
            started_at: String::new(),
            elapsed_s: 1.0,
            broker_cpu_s: None,
            sim_cpu_s: None,
            config: serde_json::Value::Null,
            results: Results::Puback(PubackResult {
                publishers: 8,
                payload_bytes: 64,
                inflight,
                rate,
                persistent_subscriber: false,
                measure_s: 4.0,
                sent: 100,
                acked: 100,
                received: 98,
                lost: 2,
                duplicates: 0,
                missing: 2,
                offered_per_s: delivered,
                acked_per_s: delivered,
                delivered_per_s: delivered,
                latency: Some(LatencySummary {
                    count: 10,
                    min_ms: 0.1,
                    mean_ms: 1.0,
                    p50_ms: 1.0,
                    p99_ms: 2.5,
                    p999_ms: 3.0,
                    max_ms: 4.0,
                }),
                latency_curve: vec![],
                rss_before_kib: Some(1024),
                peak_rss_kib: Some(2048),
                acked_series: vec![],
                delivered_series: vec![],
            }),
            errors: vec![],
            error_count: 0,
        }
    }

    #[test]
    fn load_levels_scale_the_capacity() {
        assert_eq!(
            rates(20_000.0, &[25, 100, 400]),
            vec![(25, 5_000), (100, 20_000), (400, 80_000)]
        );
        assert_eq!(rates(2.0, &[25]), vec![(25, 1)], "never 0 (= unpaced)");
        assert!(rates(0.0, &[25, 50]).is_empty());
        assert!(rates(f64::NAN, &[25]).is_empty());
    }

    #[test]
    fn inflight_table_pairs_windows_and_ratio() {
        let reports = vec![
            puback("mosquitto", 100, 0, 30_000.0),
            puback("certmq", 100, 0, 3_000.0),
            puback("certmq", 1, 0, 10_000.0),
            puback("certmq", 100, 5_000, 5_000.0),
        ];
        let md = inflight_table(&reports);
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| 1")).collect();
        assert_eq!(rows.len(), 2, "paced run left out: {md}");
        assert!(
            rows[0].starts_with("| 1 | – | – | – | – | 10,000 / 10,000 |"),
            "{md}"
        );
        assert!(
            rows[1].contains("| 30,000 / 30,000 | 1.00 / 2.50 / 4.00 | 2 | 2.00 |"),
            "{md}"
        );
        assert!(rows[1].ends_with("| 0.10× |"), "{md}");
        assert_eq!(inflight_table(&[]), "");
    }

    #[test]
    fn overload_table_and_plots() {
        let curve = |broker: &str, cap: f64| {
            let Results::Puback(p) = puback(broker, 100, 0, cap).results else {
                unreachable!()
            };
            OverloadCurve {
                broker: broker.into(),
                inflight: 100,
                capacity_per_s: cap,
                points: rates(cap, &[50, 200])
                    .into_iter()
                    .map(|(pct, rate)| {
                        OverloadPoint::new(
                            pct,
                            &PubackResult {
                                rate,
                                delivered_per_s: (rate as f64).min(cap),
                                ..p.clone()
                            },
                        )
                    })
                    .collect(),
            }
        };
        let curves = vec![curve("mosquitto", 30_000.0), curve("certmq", 2_000.0)];
        let md = overload_table(&curves);
        assert!(md.contains("Capacity: mosquitto 30,000 msgs/s, certmq 2,000 msgs/s."));
        let row = md.lines().find(|l| l.starts_with("| 200 %")).expect("row");
        assert_eq!(
            row,
            "| 200 % | 60,000 → 30,000 | 1.00 / 2.50 / 4.00 | 4,000 → 2,000 | 1.00 / 2.50 / 4.00 |"
        );
        let plots = plots(&[], &curves);
        let names: Vec<&str> = plots.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["overload-delivered", "overload-p99"]);
        let ideal = plots[0].series.last().expect("ideal line");
        assert_eq!(ideal.1, vec![(0.0, 0.0), (60_000.0, 60_000.0)]);
        assert_eq!(
            plots[0].series[1].1,
            vec![(1_000.0, 1_000.0), (4_000.0, 2_000.0)]
        );
        assert_eq!(overload_table(&[]), "");
    }
}
