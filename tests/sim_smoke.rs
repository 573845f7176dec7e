//! Smoke run of every `certmq-sim bench` scenario with tiny counts against the real
//! certmq binary: the scenarios run to completion, count what they should, and write
//! their reports. No timing assertions: performance lives in docs/benchmarks.md.

mod support;

use device_sim::bench::{
    self, BenchReport, BenchTarget, ConnectConfig, FloodConfig, IdleConfig, ReloadConfig, Results,
    ResumeConfig, Scenario, ThroughputConfig,
};
use support::{Org, Server, DOMAIN, TOKEN};

async fn run(
    target: &BenchTarget,
    org: &Org,
    scenario: Scenario,
    out: &std::path::Path,
) -> BenchReport {
    let report = bench::run(target, &org.ca, &scenario)
        .await
        .unwrap_or_else(|e| panic!("{scenario:?}: {e:#}"));
    assert_eq!(report.error_count, 0, "{scenario:?}: {:?}", report.errors);
    let files = report.write(out).expect("write report");
    assert!(files[0].extension().is_some_and(|e| e == "json"));
    let back: BenchReport =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).expect("read")).expect("parse");
    // Floats may differ in the last bit after a JSON round trip: compare what counts.
    assert_eq!(back.results.name(), report.results.name());
    assert_eq!((back.broker.as_str(), back.error_count), ("certmq", 0));
    for svg in &files[1..] {
        assert!(std::fs::read_to_string(svg)
            .expect("svg")
            .starts_with("<svg"));
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_against_certmq() {
    let server = Server::start();
    let org = Org::create(&server, "bench").await;
    let mut target = BenchTarget::new(
        "certmq",
        server.mqtt,
        "bench",
        &format!("bench.{DOMAIN}"),
        &org.server_pem,
    );
    target.verify_server = true;
    target.broker_pid = Some(server.pid());
    let out = tempfile::tempdir().expect("tmp");
    let out = out.path();

    let r = run(
        &target,
        &org,
        Scenario::Connect(ConnectConfig {
            connections: 20,
            concurrency: 4,
        }),
        out,
    )
    .await;
    let Results::Connect(c) = r.results else {
        panic!("{r:?}")
    };
    assert_eq!((c.ok, c.failed), (20, 0));
    assert_eq!(c.connect.expect("latency").count, 20);

    for qos in [0, 1] {
        let cfg = ThroughputConfig {
            publishers: 2,
            qos,
            payload_bytes: 32,
            window: 4,
            warmup_ms: 100,
            measure_ms: 500,
            orgs: 1,
        };
        let r = run(&target, &org, Scenario::Throughput(cfg), out).await;
        let Results::Throughput(t) = r.results else {
            panic!("{r:?}")
        };
        assert!(t.sent > 0, "{t:?}");
        assert_eq!(t.received, t.sent, "{t:?}");
        assert_eq!(t.missing, 0);
    }

    let cfg = IdleConfig {
        connections: 20,
        concurrency: 4,
        settle_ms: 100,
    };
    let r = run(&target, &org, Scenario::Idle(cfg), out).await;
    let Results::Idle(i) = r.results else {
        panic!("{r:?}")
    };
    assert_eq!((i.connected, i.alive, i.failed), (20, 20, 0));
    assert!(
        i.rss_before_kib.is_some() && i.rss_per_connection_kib.is_some(),
        "{i:?}"
    );

    let cfg = ResumeConfig {
        devices: 4,
        connections_per_device: 3,
        concurrency: 2,
    };
    let r = run(&target, &org, Scenario::Resume(cfg), out).await;
    let Results::Resume(s) = r.results else {
        panic!("{r:?}")
    };
    assert_eq!((s.ok, s.failed), (12, 0));
    assert_eq!(s.resumed + s.full, 12);
    assert!(
        s.full >= 4,
        "every device's first connection is a full handshake: {s:?}"
    );

    let cfg = FloodConfig {
        publishers: 2,
        payload_bytes: 32,
        inflight: 20,
        subscriber_rate: 500,
        flood_ms: 500,
        drain_ms: 5_000,
    };
    let r = run(&target, &org, Scenario::Flood(cfg), out).await;
    let Results::Flood(f) = r.results else {
        panic!("{r:?}")
    };
    assert!(f.published > 0 && f.received > 0, "{f:?}");
    assert_eq!(
        f.missing, 0,
        "certmq slows publishers instead of dropping: {f:?}"
    );
    assert!(f.peak_rss_kib.is_some());

    let cfg = ReloadConfig::new(&format!("http://{}", server.admin), TOKEN, 2);
    let r = run(&target, &org, Scenario::Reload(cfg), out).await;
    let Results::Reload(x) = r.results else {
        panic!("{r:?}")
    };
    assert_eq!(x.ca_deactivate.samples_ms.len(), 2);
    assert_eq!(x.ca_activate.samples_ms.len(), 2);
    assert_eq!(x.server_cert_activate.samples_ms.len(), 4);
    // A change is visible to the very next handshake after the API call returns.
    assert_eq!(x.ca_deactivate.stale_handshakes, 0, "{x:?}");
    assert_eq!(x.ca_activate.stale_handshakes, 0, "{x:?}");
    assert_eq!(x.server_cert_activate.stale_handshakes, 0, "{x:?}");
}

#[tokio::test]
async fn refuses_non_loopback_targets() {
    let ca = device_sim::TestCa::new("ca").expect("ca");
    let target = BenchTarget::new(
        "x",
        "192.0.2.1:8883".parse().expect("addr"),
        "acme",
        "acme.messaging.localhost",
        "",
    );
    let err = bench::run(&target, &ca, &Scenario::Connect(ConnectConfig::default()))
        .await
        .expect_err("not loopback");
    assert!(err.to_string().contains("loopback"), "{err}");
}
