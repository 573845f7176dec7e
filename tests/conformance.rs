//! Conformance: the Eclipse Paho MQTT interoperability suites (`client_test.py` for
//! MQTT 3.1.1, `client_test5.py` for MQTT 5; vendored under `tests/conformance/paho`)
//! against certmq, through its mutual-TLS front end.
//!
//! Each org is in custom topic mode with one rule that lets its applications use any
//! client id, publish anywhere and subscribe to anything; the suites connect with an
//! application certificate (`a:paho`) and the org's name as the TLS server name
//! (`tests/conformance/run_paho.py` puts TLS under the suites' sockets). The suites use
//! fixed client ids and topics, so tests that run at the same time each get an org of
//! their own (a shard): orgs share nothing.
//!
//! The test passes when exactly the tests listed in [`CANNOT_PASS`] fail (the reasons
//! are in docs/conformance.md): a new failure is a regression, a new pass means the list
//! (and the doc) must shrink.
//!
//! Needs `python3` (standard library only). When it is missing the test skips, unless
//! `CERTMQ_REQUIRE_INTEROP=1` (set by `.ci/run`).

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use support::*;

/// Tests that cannot pass by design, with the reason in a few words (the full reason is
/// in docs/conformance.md).
const CANNOT_PASS: &[(&str, &str, &str)] = &[
    (
        "3.1.1",
        "test_dollar_topics",
        "publishes to a $ topic, which certmq reserves (the connection closes)",
    ),
    (
        "5",
        "test_dollar_topics",
        "publishes to a $ topic, which certmq reserves (the connection closes)",
    ),
    (
        "5",
        "test_server_keep_alive",
        "expects a Server Keep Alive of exactly 60 s; certmq keeps the client's",
    ),
    (
        "5",
        "test_server_topic_alias",
        "expects topic aliases from the broker; certmq uses none",
    ),
    (
        "5",
        "test_subscribe_failure",
        "the suite's decoder takes only 0x80 in a SUBACK; certmq answers 0x87",
    ),
];

/// A group of tests run one after the other against an org of their own, at the same
/// time as the other shards.
struct Shard {
    suite: &'static str,
    /// The filters the org's application rule lets clients subscribe to.
    subscribe: &'static [&'static str],
    tests: &'static [&'static str],
}

/// Subscribe to anything.
const ANYTHING: &[&str] = &["#"];
/// The subscribe-failure tests subscribe to `test/nosubscribe` and expect a refusal: a
/// rule that does not allow it (their setup's `#` subscription, meant to clear retained
/// messages, is refused too; their org has none).
const NOT_TEST: &[&str] = &["TopicA/#"];

/// The suites' tests in shards, grouped by how long they take (about 25 s each, the
/// setup included: the longest tests wait 15–22 s), so the whole run takes little
/// more than the longest shard. The tests that cannot pass run apart, so their
/// failures (a connection closed, say) cannot leak into other tests.
const SHARDS: &[Shard] = &[
    Shard {
        suite: "3.1.1",
        subscribe: ANYTHING,
        tests: &["test_keepalive", "testBasic", "test_zero_length_clientid"],
    },
    Shard {
        suite: "3.1.1",
        subscribe: ANYTHING,
        tests: &[
            "test_offline_message_queueing",
            "test_overlapping_subscriptions",
            "test_redelivery_on_reconnect",
            "test_retained_messages",
            "test_unsubscribe",
        ],
    },
    Shard {
        suite: "3.1.1",
        subscribe: ANYTHING,
        tests: &["test_dollar_topics"],
    },
    Shard {
        suite: "3.1.1",
        subscribe: NOT_TEST,
        tests: &["test_subscribe_failure"],
    },
    Shard {
        suite: "5",
        subscribe: ANYTHING,
        tests: &[
            "test_subscribe_options",
            "test_flow_control1",
            "test_flow_control2",
            "test_assigned_clientid",
            "test_payload_format",
        ],
    },
    Shard {
        suite: "5",
        subscribe: ANYTHING,
        tests: &[
            "test_session_expiry",
            "test_client_topic_alias",
            "test_overlapping_subscriptions",
            "test_user_properties",
        ],
    },
    Shard {
        suite: "5",
        subscribe: ANYTHING,
        tests: &[
            "test_keepalive",
            "test_publication_expiry",
            "test_zero_length_clientid",
        ],
    },
    Shard {
        suite: "5",
        subscribe: ANYTHING,
        tests: &[
            "test_will_delay",
            "test_offline_message_queueing",
            "test_basic",
        ],
    },
    Shard {
        suite: "5",
        subscribe: ANYTHING,
        tests: &[
            "test_maximum_packet_size",
            "test_redelivery_on_reconnect",
            "test_retained_message",
        ],
    },
    Shard {
        suite: "5",
        subscribe: ANYTHING,
        tests: &[
            "test_shared_subscriptions",
            "test_unsubscribe",
            "test_request_response",
            "test_subscribe_identifiers",
            "test_will_message",
        ],
    },
    Shard {
        suite: "5",
        subscribe: ANYTHING,
        tests: &[
            "test_dollar_topics",
            "test_server_keep_alive",
            "test_server_topic_alias",
        ],
    },
    Shard {
        suite: "5",
        subscribe: NOT_TEST,
        tests: &["test_subscribe_failure"],
    },
];

/// How long one test may take before the runner stops it (a suite waiting forever for
/// a message is a failure, not a hang).
const TEST_TIMEOUT_SECS: u32 = 30;
/// How long a shard may take in all.
const SHARD_DEADLINE: Duration = Duration::from_secs(240);

/// Whether to run test `name`: all of them, or the ones `CERTMQ_PAHO_TESTS` names
/// (comma-separated), to look at a few.
fn chosen(name: &str) -> bool {
    match std::env::var("CERTMQ_PAHO_TESTS") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|t| t.trim() == name),
        _ => true,
    }
}

/// Whether python3 runs and `<org>.messaging.localhost` resolves to loopback; panics
/// when they must but do not.
fn can_run() -> bool {
    let python = Command::new("python3")
        .args(["-c", "import ssl, unittest"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let resolves = std::net::ToSocketAddrs::to_socket_addrs(&(format!("paho.{DOMAIN}"), 1))
        .is_ok_and(|mut a| a.any(|a| a.ip().is_loopback()));
    if python && resolves {
        return true;
    }
    let why = if python {
        format!("paho.{DOMAIN} does not resolve to loopback (install libnss-myhostname)")
    } else {
        "python3 (with ssl) not found".to_owned()
    };
    assert!(!interop_required(), "CERTMQ_REQUIRE_INTEROP=1 but {why}");
    eprintln!("skipping the Paho conformance suites: {why}");
    false
}

fn runner() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/run_paho.py")
}

/// The names of a suite's tests, as the runner lists them.
fn suite_tests(suite: &str) -> Vec<String> {
    let out = Command::new("python3")
        .arg(runner())
        .args([suite, "--list"])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "listing the {suite} suite failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("TEST "))
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

/// One test's outcome as the runner reported it.
#[derive(Debug, Clone)]
struct Outcome {
    result: String,
    seconds: String,
}

/// Where and as whom a shard's runner connects: files it reads, written beforehand.
struct Target {
    host: String,
    port: u16,
    server_ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl Target {
    /// `org`'s server name and port, its server certificate, and an application
    /// certificate (`a:paho`) with its key, written to `dir`.
    fn new(org: &Org, dir: &Path) -> Target {
        let write = |name: &str, contents: &str| {
            let path = dir.join(format!("{}-{name}", org.id));
            std::fs::write(&path, contents).expect("write a file for the runner");
            path
        };
        let cert = org.cert("a:paho");
        Target {
            host: format!("{}.{DOMAIN}", org.id),
            port: org.mqtt.port(),
            server_ca: write("server.pem", &org.server_pem),
            cert: write("app.pem", &cert.chain_pem),
            key: write("app.key", &cert.key_pem),
        }
    }
}

/// Runs one shard: the suite's `tests` against `target`. Returns what the runner
/// printed and each test's outcome.
fn run_shard(target: &Target, suite: &str, tests: &[&str]) -> (String, BTreeMap<String, Outcome>) {
    let mut child = Command::new("python3")
        .arg(runner())
        .arg(suite)
        .arg(format!("--hostname={}", target.host))
        .arg(format!("--port={}", target.port))
        .arg("--cafile")
        .arg(&target.server_ca)
        .arg("--cert")
        .arg(&target.cert)
        .arg("--key")
        .arg(&target.key)
        .arg(format!("--test-timeout={TEST_TIMEOUT_SECS}"))
        .args(tests)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let err_reader =
        std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut out = String::new();
    let mut outcomes = BTreeMap::new();
    loop {
        let left = SHARD_DEADLINE.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix("RESULT ") {
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    if let [_, name, result, seconds] = f[..] {
                        outcomes.insert(
                            name.to_owned(),
                            Outcome {
                                result: result.to_owned(),
                                seconds: seconds.to_owned(),
                            },
                        );
                    }
                }
                out.push_str(&line);
                out.push('\n');
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                out.push_str(&format!(
                    "(stopped: the shard took longer than {SHARD_DEADLINE:?})\n"
                ));
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait().expect("wait for python3");
    out.push_str(&format!("exit: {status}\n"));
    out.push_str(&err_reader.join().unwrap_or_default());
    (out, outcomes)
}

#[tokio::test(flavor = "multi_thread")]
async fn paho_interoperability_suites() {
    if !can_run() {
        return;
    }
    // Every test of both suites is in exactly one shard.
    for suite in ["3.1.1", "5"] {
        let mut sharded: Vec<String> = SHARDS
            .iter()
            .filter(|s| s.suite == suite)
            .flat_map(|s| s.tests.iter().map(|t| t.to_string()))
            .collect();
        sharded.sort();
        assert_eq!(sharded, suite_tests(suite), "SHARDS of the {suite} suite");
    }

    let server = Server::start();
    let api = server.api();
    let files = tempfile::tempdir().expect("tempdir");
    let mut orgs = Vec::new();
    for (i, shard) in SHARDS.iter().enumerate() {
        let id = format!("paho{}s{i}", shard.suite.replace('.', ""));
        let org = Org::create(&server, &id).await;
        // Applications: any client id, publish anywhere, subscribe as the shard needs.
        let policy = json!({
            "mode": "custom",
            "rules": [{"who": "a:*", "client_id": "*", "publish": ["#"], "subscribe": shard.subscribe}],
        });
        let (status, body) = api
            .call(
                Method::PUT,
                &format!("/orgs/{id}/topic-policy"),
                Some(policy),
            )
            .await;
        assert!(
            (200..300).contains(&status),
            "topic policy of {id}: {status} {body}"
        );
        orgs.push(org);
    }

    let started = Instant::now();
    let runs: Vec<_> = SHARDS
        .iter()
        .zip(&orgs)
        .filter_map(|(shard, org)| {
            let tests: Vec<&str> = shard.tests.iter().copied().filter(|t| chosen(t)).collect();
            if tests.is_empty() {
                return None;
            }
            let target = Target::new(org, files.path());
            let suite = shard.suite;
            Some(std::thread::spawn(move || {
                (suite, run_shard(&target, suite, &tests))
            }))
        })
        .collect();
    let mut results: BTreeMap<(String, String), Outcome> = BTreeMap::new();
    let mut logs = String::new();
    for run in runs {
        let (suite, (out, outcomes)) = run.join().expect("a shard's thread panicked");
        logs.push_str(&format!("----- {suite} -----\n{out}"));
        for (name, outcome) in outcomes {
            results.insert((suite.to_owned(), name), outcome);
        }
    }
    let took = started.elapsed();

    println!("Paho interoperability suites against certmq ({took:.0?}):");
    println!("{:<6} {:<32} {:<8} time", "suite", "test", "result");
    for ((suite, name), o) in &results {
        println!("{suite:<6} {name:<32} {:<8} {}", o.result, o.seconds);
    }

    let mut missing = Vec::new();
    for shard in SHARDS {
        for t in shard.tests.iter().filter(|t| chosen(t)) {
            if !results.contains_key(&(shard.suite.to_string(), t.to_string())) {
                missing.push(format!("{} {t}", shard.suite));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "no result for {missing:?}; the runners' output:\n{logs}"
    );
    let not_passed: Vec<String> = results
        .iter()
        .filter(|(_, o)| o.result != "pass")
        .map(|((s, n), o)| format!("{s} {n} ({})", o.result))
        .collect();
    let not_passed_names: Vec<String> = results
        .iter()
        .filter(|(_, o)| o.result != "pass")
        .map(|((s, n), _)| format!("{s} {n}"))
        .collect();
    let mut expected: Vec<String> = CANNOT_PASS
        .iter()
        .filter(|(_, n, _)| chosen(n))
        .map(|(s, n, _)| format!("{s} {n}"))
        .collect();
    expected.sort();
    assert_eq!(
        not_passed_names, expected,
        "tests that did not pass: {not_passed:?}, expected exactly the ones that cannot \
         pass by design (docs/conformance.md); the runners' output:\n{logs}"
    );
}
