#!/usr/bin/env bash
# mosquitto and certmq side by side on this machine, same CA and server certificate;
# writes the table into docs/benchmarks.md. Extra arguments go to `certmq-sim compare`
# (e.g. --scenarios connect,throughput --idle-connections 10000).
# Scenarios: connect, throughput, idle, resume, flood, reload, inflight, durable, overload,
# offline (all by default), and bridge (only when asked: `--scenarios bridge --no-doc`
# forwards over each broker's outgoing bridge to an upstream mosquitto it starts, unpaced,
# paced and with the upstream stopped for 5 s); `--scenarios inflight,overload --no-doc` measures PUBACK-driven publishers
# and the delivered-vs-offered curve without touching the document;
# `--scenarios throughput --orgs 8 --publishers 16 --no-pin --no-doc` adds QoS 1 fan-in over
# 8 orgs (one application each) next to the single-org run.
# Honours CARGO_TARGET_DIR (the build and the binaries run come from there).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y mosquitto || { apt-get update && apt-get install -y mosquitto; }
fi
cargo build --release -p certmq -p certmq-device-sim
# Let the build's writeback settle before the first measurement: right after a build the
# first scenario (connect) measured 30–40 % below the same binary run a minute later.
sync
sleep 20

# Every idle connection is a file descriptor in the simulator and in the broker (the
# brokers are started by certmq-sim and inherit this limit).
ulimit -n "$(ulimit -Hn)" || true

# Broker on CPU 0 (certmq-sim starts it under `taskset -c 0`), load generator on CPU 1.
pin=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  pin=(taskset -c 1)
fi
exec "${pin[@]}" "${CARGO_TARGET_DIR:-target}/release/certmq-sim" compare "$@"
