//! # certmq device simulator
//!
//! Reusable pieces for exercising a certmq broker the way real fleets do: every client
//! authenticates with an X.509 client certificate over TLS, and the org is chosen by the
//! TLS SNI name (`<org>.messaging.localhost`).
//!
//! * [`certs`] — [`TestCa`]: mint root/intermediate CAs, client certificates (identity in
//!   the CN or in an `rfc822Name` SAN, any validity window) and CRLs.
//! * [`client`] — [`BrokerTarget`], the rustls client configuration and rumqttc options
//!   (v3.1.1 and v5) that send the right SNI while dialing the broker's address.
//! * [`fleet`] — [`run_fleet`]: N devices publishing events, an application answering
//!   each with a command, and a [`FleetReport`] of what arrived.
//! * [`report`] — [`FleetReport`] and the percentile helper.
//! * [`bench`] — benchmark scenarios (`connect`, `throughput`, `idle`, `resume`,
//!   `reload`, `flood`) against any MQTT-over-mTLS broker on this machine, JSON reports
//!   and SVG charts, and [`bench::compare`]: mosquitto and certmq side by side.
//! * [`admin`] — [`AdminClient`], the one client of the certmq admin API: the simulator,
//!   `certmq demo` and the end-to-end tests set orgs and certificates up through it.
//!
//! The `certmq-sim` binary wraps these (`provision`, `fleet`, `bench`, `compare`);
//! `certmq demo`, the end-to-end tests and the benchmarks use the library directly.

pub mod admin;
pub mod bench;
pub mod certs;
pub mod client;
pub mod fleet;
pub mod provision;
pub mod report;
mod sni_relay;
mod verifier;

pub use admin::{AdminClient, ApiError};
pub use certs::{ClientCert, ClientCertOptions, ClientEku, TestCa};
pub use client::{mqtt_options, mqtt_options_v5, tls_config, BrokerTarget};
pub use fleet::{run_fleet, FleetConfig};
pub use report::FleetReport;
