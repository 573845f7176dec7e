//! `certmq demo`, the README's first command, as a newcomer runs it: it exits 0 and
//! says every event reached the application and, over the bridge, the partner.

use std::process::Command;

#[test]
fn the_demo_runs_its_fleet_and_its_bridge_and_exits_0() {
    let out = Command::new(env!("CARGO_BIN_EXE_certmq"))
        .arg("demo")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run certmq demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("bridge to partner.messaging.localhost"),
        "{stdout}"
    );
    assert!(
        stdout.contains("bridge: 25 events forwarded to the partner, 25 received"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok: every event reached the application"),
        "{stdout}"
    );
}
