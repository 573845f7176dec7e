//! `certmq serve`'s settings: flags, `CERTMQ_*` variables and a TOML file
//! (`--config certmq.toml`), resolved once at start into [`app::Options`].
//!
//! Every setting can come from four places; the first that has it wins:
//! the flag, the environment variable, the config file, the built-in default.
//! clap resolves flag over variable; the file and the defaults fill what is left.
//! The file's keys are the flags' names with `_` for `-` (`--max-packet-size` is
//! `max_packet_size`); an unknown key is an error naming it and its line.
//!
//! Secrets are never settings: the admin token and the master key come only from
//! their own variables or files in the data directory (docs/operations.md).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

use crate::app;

/// `certmq serve`'s flags. None has a clap default: an absent flag falls through to
/// the variable, then the file, then [`app::Options::default`].
#[derive(Args, Debug, Default)]
pub(crate) struct ServeArgs {
    /// A TOML file with any of the settings below (keys as the flags, `_` for `-`).
    #[arg(long, env = "CERTMQ_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Where the embedded store, master key and admin token live [default: ./certmq-data].
    #[arg(long, env = "CERTMQ_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where the registry lives: `sled` (the embedded store in --data-dir) or a
    /// PostgreSQL URL, `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`, shared by every
    /// node of a cluster (docs/cluster.md) [default: sled].
    /// Taken as text and checked by certmq, not clap: a refusal never quotes it (it may
    /// hold a password).
    #[arg(long, env = "CERTMQ_STORE")]
    store: Option<String>,
    /// This node's name in logs and in the cluster's change notifications
    /// [default: the host name].
    #[arg(long, env = "CERTMQ_NODE_ID")]
    node_id: Option<String>,
    /// Join a cluster whose nodes exchange messages, takeovers, kicks and connection
    /// listings through NATS with JetStream: `nats://HOST:PORT`
    /// (docs/cluster-messages.md) [default: none, a node alone].
    #[arg(long, env = "CERTMQ_CLUSTER")]
    cluster: Option<String>,
    /// MQTT over TLS listen address [default: 0.0.0.0:8883].
    #[arg(long, env = "CERTMQ_MQTT")]
    mqtt: Option<SocketAddr>,
    /// Admin REST API listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "CERTMQ_ADMIN")]
    admin: Option<SocketAddr>,
    /// Plain MQTT listen address, for orgs whose security level is `tls_optional`
    /// (token authentication only). Off unless given: an unauthenticated port is
    /// opt-in (e.g. `--mqtt-plain 0.0.0.0:1883`) [default: off].
    #[arg(long, env = "CERTMQ_MQTT_PLAIN")]
    mqtt_plain: Option<OptionalAddr>,
    /// MQTT over WebSockets listen address: TLS with the org's server certificate and
    /// client certificate checks as on --mqtt, upgrade on `/mqtt` with subprotocol
    /// `mqtt` (e.g. `--ws 0.0.0.0:443`) [default: off].
    #[arg(long, env = "CERTMQ_WS")]
    ws: Option<OptionalAddr>,
    /// Base messaging domain: org hosts are `<org>.<domain>` [default: messaging.localhost].
    #[arg(long, env = "CERTMQ_DOMAIN")]
    domain: Option<String>,
    /// Days audit log entries are kept (1-36500). Retention is by age only: no
    /// number of requests pushes a younger entry out [default: 90].
    #[arg(long, env = "CERTMQ_AUDIT_RETENTION_DAYS")]
    audit_retention_days: Option<u32>,
    /// Connections one source address may have handshaking or waiting for their
    /// CONNECT to be decided at once; 0 = no limit (e.g. behind an L4 balancer that
    /// hides client addresses) [default: 256].
    #[arg(long, env = "CERTMQ_MAX_PENDING_PER_IP")]
    max_pending_per_ip: Option<u32>,
    /// TLS handshakes one source address may start per second (bursts of twice as
    /// many); 0 = no limit [default: 500].
    #[arg(long, env = "CERTMQ_HANDSHAKES_PER_IP")]
    handshakes_per_ip: Option<u32>,
    /// Open MQTT connections at most (handshaking or in session); more are closed at
    /// accept. Never more than the file descriptor limit allows (less 256 kept for the
    /// admin API and the store) [default: 100000, or that limit when lower].
    #[arg(long, env = "CERTMQ_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Time from TCP accept to a finished TLS handshake, e.g. `10s`, `500ms` [default: 10s].
    #[arg(long, env = "CERTMQ_HANDSHAKE_TIMEOUT")]
    handshake_timeout: Option<Dur>,
    /// Time from the finished handshake to the client's CONNECT [default: 10s].
    #[arg(long, env = "CERTMQ_CONNECT_TIMEOUT")]
    connect_timeout: Option<Dur>,
    /// Largest MQTT packet accepted from a client, in bytes (a bigger one closes the
    /// connection) [default: 1048576].
    #[arg(long, env = "CERTMQ_MAX_PACKET_SIZE")]
    max_packet_size: Option<usize>,
    /// On SIGTERM or Ctrl-C: how long sessions get to receive what is owed to them
    /// before the process exits [default: 10s].
    #[arg(long, env = "CERTMQ_DRAIN_TIMEOUT")]
    drain_timeout: Option<Dur>,
    /// `text` (default) or `json` (one JSON object per line, for log collectors).
    #[arg(long, env = "CERTMQ_LOG_FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
    /// Serve the admin API over HTTPS with this certificate chain (PEM, leaf first);
    /// needs --admin-tls-key. Without it the admin API is plain HTTP on a loopback
    /// address, and HTTPS with the platform's generated certificate elsewhere.
    #[arg(long, env = "CERTMQ_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    admin_tls_cert: Option<PathBuf>,
    /// The private key of --admin-tls-cert (PEM, unencrypted).
    #[arg(long, env = "CERTMQ_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    admin_tls_key: Option<PathBuf>,
    /// Every connection on the MQTT listeners (--mqtt, --ws, --mqtt-plain) starts with a
    /// PROXY protocol v2 header from an L4 balancer (HAProxy's `send-proxy-v2`), whose
    /// client address is then used everywhere; a connection without one is closed.
    /// Only for ports that nothing but the balancer can reach [default: false].
    #[arg(long, env = "CERTMQ_PROXY_PROTOCOL", num_args = 0..=1, default_missing_value = "true")]
    proxy_protocol: Option<bool>,
}

/// The config file: the same settings as [`ServeArgs`], all optional.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    /// Text, checked after reading (a parse error quoting the line would show a
    /// password).
    store: Option<String>,
    node_id: Option<String>,
    cluster: Option<String>,
    mqtt: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    mqtt_plain: Option<OptionalAddr>,
    ws: Option<OptionalAddr>,
    domain: Option<String>,
    audit_retention_days: Option<u32>,
    max_pending_per_ip: Option<u32>,
    handshakes_per_ip: Option<u32>,
    max_connections: Option<usize>,
    handshake_timeout: Option<Dur>,
    connect_timeout: Option<Dur>,
    max_packet_size: Option<usize>,
    drain_timeout: Option<Dur>,
    log_format: Option<LogFormat>,
    admin_tls_cert: Option<PathBuf>,
    admin_tls_key: Option<PathBuf>,
    proxy_protocol: Option<bool>,
}

/// Reads and parses `path`; errors name the file and, from the TOML parser, the line,
/// column and key.
fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
}

/// The config file named by `--config`/`CERTMQ_CONFIG`, if any.
pub(crate) fn load_file(args: &ServeArgs) -> anyhow::Result<Option<LoadedFile>> {
    args.config
        .as_ref()
        .map(|p| {
            read_file(p).map(|config| LoadedFile {
                path: p.clone(),
                config,
            })
        })
        .transpose()
}

/// A parsed config file and where it came from.
pub(crate) struct LoadedFile {
    path: PathBuf,
    config: FileConfig,
}

impl LoadedFile {
    /// The log format the file asks for (needed before logging starts).
    pub(crate) fn log_format(&self) -> Option<LogFormat> {
        self.config.log_format
    }
}

/// Flag (or variable) over file over default.
pub(crate) fn resolve(args: ServeArgs, file: Option<&LoadedFile>) -> anyhow::Result<app::Options> {
    let empty = FileConfig::default();
    let f = file.map_or(&empty, |l| &l.config);
    let d = app::Options::default();
    let audit_retention_days = args
        .audit_retention_days
        .or(f.audit_retention_days)
        .unwrap_or(d.audit_retention_days);
    if !(1..=36500).contains(&audit_retention_days) {
        anyhow::bail!("audit_retention_days is {audit_retention_days}; it must be 1-36500");
    }
    let max_packet_size = args
        .max_packet_size
        .or(f.max_packet_size)
        .unwrap_or(d.max_packet_size);
    if max_packet_size < 64 {
        anyhow::bail!("max_packet_size is {max_packet_size} bytes; it must be at least 64");
    }
    let pick = |a: Option<Dur>, f: Option<Dur>, d: Duration, name: &str| {
        let v = a.or(f).map_or(d, |x| x.0);
        if v.is_zero() {
            anyhow::bail!("{name} must be more than 0");
        }
        Ok(v)
    };
    let admin_tls = match (
        args.admin_tls_cert.or_else(|| f.admin_tls_cert.clone()),
        args.admin_tls_key.or_else(|| f.admin_tls_key.clone()),
    ) {
        (Some(cert), Some(key)) => crate::admin_tls::AdminTls::Files { cert, key },
        (None, None) => crate::admin_tls::AdminTls::Auto,
        _ => anyhow::bail!("admin_tls_cert and admin_tls_key go together: give both or neither"),
    };
    let mut guard = d.guard.clone();
    if let Some(n) = args.max_pending_per_ip.or(f.max_pending_per_ip) {
        guard.max_pending_per_ip = n;
    }
    if let Some(n) = args.handshakes_per_ip.or(f.handshakes_per_ip) {
        guard.handshakes_per_sec = f64::from(n);
        guard.handshake_burst = 2.0 * f64::from(n);
    }
    let node_id = args
        .node_id
        .or_else(|| f.node_id.clone())
        .unwrap_or_else(default_node_id);
    let node_id = node_id.trim().to_owned();
    if node_id.is_empty()
        || node_id.len() > 64
        || !node_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        anyhow::bail!(
            "node_id {node_id:?} is not valid: 1-64 characters of letters, digits, '-', '_' and '.'"
        );
    }
    let cluster = args.cluster.or_else(|| f.cluster.clone());
    if let Some(url) = &cluster {
        let ok = url
            .strip_prefix("nats://")
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
        if !ok {
            anyhow::bail!("cluster {url:?} is not valid: it must be nats://HOST:PORT");
        }
    }
    Ok(app::Options {
        store: match args.store.or_else(|| f.store.clone()) {
            Some(s) => {
                s.parse::<StoreArg>()
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "store (--store, CERTMQ_STORE or the config file's `store`): {e}"
                        )
                    })?
                    .0
            }
            None => d.store,
        },
        node_id,
        cluster,
        data_dir: args
            .data_dir
            .or_else(|| f.data_dir.clone())
            .unwrap_or(d.data_dir),
        mqtt: args.mqtt.or(f.mqtt).unwrap_or(d.mqtt),
        admin: args.admin.or(f.admin).unwrap_or(d.admin),
        mqtt_plain: args
            .mqtt_plain
            .or_else(|| f.mqtt_plain.clone())
            .map_or(d.mqtt_plain, |a| a.0),
        ws: args.ws.or_else(|| f.ws.clone()).map_or(d.ws, |a| a.0),
        domain: args.domain.or_else(|| f.domain.clone()).unwrap_or(d.domain),
        audit_retention_days,
        guard,
        max_connections: args.max_connections.or(f.max_connections),
        handshake_timeout: pick(
            args.handshake_timeout,
            f.handshake_timeout,
            d.handshake_timeout,
            "handshake_timeout",
        )?,
        connect_timeout: pick(
            args.connect_timeout,
            f.connect_timeout,
            d.connect_timeout,
            "connect_timeout",
        )?,
        max_packet_size,
        drain_timeout: pick(
            args.drain_timeout,
            f.drain_timeout,
            d.drain_timeout,
            "drain_timeout",
        )?,
        admin_tls,
        proxy_protocol: args
            .proxy_protocol
            .or(f.proxy_protocol)
            .unwrap_or(d.proxy_protocol),
    })
}

/// Logs the settings in effect (none of them is a secret), and the file they came from.
pub(crate) fn log_effective(o: &app::Options, file: Option<&LoadedFile>, format: LogFormat) {
    let plain = o
        .mqtt_plain
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    let max_connections = o
        .max_connections
        .map_or_else(|| "default".to_owned(), |n| n.to_string());
    tracing::info!(
        config_file = %file.map_or_else(|| "none".to_owned(), |l| l.path.display().to_string()),
        data_dir = %o.data_dir.display(),
        store = %o.store,
        node_id = %o.node_id,
        mqtt = %o.mqtt,
        admin = %o.admin,
        mqtt_plain = %plain,
        ws = %o.ws.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        domain = %o.domain,
        audit_retention_days = o.audit_retention_days,
        max_pending_per_ip = o.guard.max_pending_per_ip,
        handshakes_per_ip = o.guard.handshakes_per_sec,
        max_connections = %max_connections,
        handshake_timeout = %Dur(o.handshake_timeout),
        connect_timeout = %Dur(o.connect_timeout),
        max_packet_size = o.max_packet_size,
        drain_timeout = %Dur(o.drain_timeout),
        proxy_protocol = o.proxy_protocol,
        cluster = %o.cluster.as_deref().unwrap_or("off"),
        admin_tls = %match &o.admin_tls {
            crate::admin_tls::AdminTls::Files { cert, .. } => cert.display().to_string(),
            crate::admin_tls::AdminTls::Auto => "auto (HTTP on loopback, else the platform certificate)".into(),
        },
        log_format = %format,
        "effective configuration (flag > CERTMQ_* variable > config file > default)"
    );
}

/// The node's name when none is given: the host name, else `certmq`.
fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "certmq".into())
}

/// `--store`: `sled` or a PostgreSQL URL.
#[derive(Clone, Debug)]
pub(crate) struct StoreArg(pub(crate) app::StoreKind);

impl std::str::FromStr for StoreArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("sled") {
            return Ok(StoreArg(app::StoreKind::Sled));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(StoreArg(app::StoreKind::Postgres(s.to_owned())));
        }
        // Never echo the value: it may hold a password.
        Err("expected `sled` or a PostgreSQL URL (postgres://USER@HOST[:PORT]/DB)".into())
    }
}

/// The log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    #[default]
    Text,
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// A listen address, or `off`.
#[derive(Clone, Debug)]
pub(crate) struct OptionalAddr(pub(crate) Option<SocketAddr>);

impl std::str::FromStr for OptionalAddr {
    type Err = std::net::AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            Ok(OptionalAddr(None))
        } else {
            s.parse().map(|a| OptionalAddr(Some(a)))
        }
    }
}

impl<'de> Deserialize<'de> for OptionalAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid address {s:?}: expected `off` or IP:port, e.g. \"0.0.0.0:1883\""
            ))
        })
    }
}

/// A duration: `500ms`, `10s`, `2m`, or a bare number of seconds (in the file also a
/// TOML integer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dur(pub(crate) Duration);

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || format!("invalid duration {s:?}: expected e.g. 10s, 500ms, 2m or 10");
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let d = match unit.trim() {
            "" | "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
            _ => return Err(bad()),
        };
        Ok(Dur(d))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\", \"500ms\" or a number of seconds")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(|s| Dur(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur(Duration::from_secs(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dur, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_the_documented_forms() {
        let p = |s: &str| s.parse::<Dur>().map(|d| d.0);
        assert_eq!(p("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(p("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(p("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(p("7"), Ok(Duration::from_secs(7)));
        assert!(p("ten").is_err());
        assert!(p("10h").is_err());
        assert_eq!(Dur(Duration::from_millis(1500)).to_string(), "1500ms");
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let file: FileConfig = toml::from_str(
            "mqtt = \"127.0.0.1:1\"\ndomain = \"file.example\"\nhandshake_timeout = 3\n\
             drain_timeout = \"250ms\"\nmqtt_plain = \"off\"\n",
        )
        .unwrap();
        let loaded = LoadedFile {
            path: "x.toml".into(),
            config: file,
        };
        let args = ServeArgs {
            domain: Some("flag.example".into()),
            ..Default::default()
        };
        let o = resolve(args, Some(&loaded)).unwrap();
        assert_eq!(o.domain, "flag.example");
        assert_eq!(o.mqtt, "127.0.0.1:1".parse().unwrap());
        assert_eq!(o.handshake_timeout, Duration::from_secs(3));
        assert_eq!(o.drain_timeout, Duration::from_millis(250));
        assert_eq!(o.admin, app::Options::default().admin);
        assert_eq!(o.mqtt_plain, None);
    }

    #[test]
    fn the_store_and_node_id_come_from_the_file_and_never_show_a_password() {
        let file: FileConfig = toml::from_str(
            "store = \"postgres://certmq:s3cret@db:5432/certmq\"\nnode_id = \"node-1\"\n",
        )
        .unwrap();
        let loaded = LoadedFile {
            path: "x.toml".into(),
            config: file,
        };
        let o = resolve(ServeArgs::default(), Some(&loaded)).unwrap();
        assert_eq!(o.node_id, "node-1");
        assert_eq!(o.store.to_string(), "postgres://certmq:***@db:5432/certmq");
        assert_eq!(
            format!("{:?}", o.store),
            "postgres://certmq:***@db:5432/certmq"
        );
        let o = resolve(ServeArgs::default(), None).unwrap();
        assert_eq!(o.store.to_string(), "sled");
        assert!(!o.node_id.is_empty(), "the host name by default");

        let e = "mysql://u:s3cret@db/x".parse::<StoreArg>().unwrap_err();
        assert!(e.contains("postgres://") && !e.contains("s3cret"), "{e}");
        let bad = ServeArgs {
            node_id: Some("two words".into()),
            ..Default::default()
        };
        let e = resolve(bad, None).unwrap_err().to_string();
        assert!(e.contains("node_id"), "{e}");
    }

    #[test]
    fn the_admin_tls_files_come_in_pairs() {
        let load = |text: &str| LoadedFile {
            path: "x.toml".into(),
            config: toml::from_str(text).unwrap(),
        };
        let both = load("admin_tls_cert = \"a.pem\"\nadmin_tls_key = \"a.key\"\n");
        let o = resolve(ServeArgs::default(), Some(&both)).unwrap();
        assert_eq!(
            o.admin_tls,
            crate::admin_tls::AdminTls::Files {
                cert: "a.pem".into(),
                key: "a.key".into()
            }
        );
        let half = load("admin_tls_cert = \"a.pem\"\n");
        let e = resolve(ServeArgs::default(), Some(&half)).unwrap_err();
        assert!(e.to_string().contains("give both or neither"), "{e}");
        let none = resolve(ServeArgs::default(), None).unwrap();
        assert_eq!(none.admin_tls, crate::admin_tls::AdminTls::Auto);
    }

    #[test]
    fn the_cluster_and_node_id_come_from_the_file_and_are_checked() {
        let load = |text: &str| LoadedFile {
            path: "x.toml".into(),
            config: toml::from_str(text).unwrap(),
        };
        let f = load("cluster = \"nats://10.0.0.5:4222\"\nnode_id = \"node-1\"\n");
        let o = resolve(ServeArgs::default(), Some(&f)).unwrap();
        assert_eq!(o.cluster.as_deref(), Some("nats://10.0.0.5:4222"));
        assert_eq!(o.node_id, "node-1");
        let o = resolve(ServeArgs::default(), None).unwrap();
        assert_eq!(o.cluster, None);
        assert!(!o.node_id.is_empty(), "the host name by default");
        for bad in ["cluster = \"10.0.0.5:4222\"", "cluster = \"nats://\""] {
            let e = resolve(ServeArgs::default(), Some(&load(bad))).unwrap_err();
            assert!(e.to_string().contains("nats://HOST:PORT"), "{bad}: {e}");
        }
        let e = resolve(ServeArgs::default(), Some(&load("node_id = \"a b\""))).unwrap_err();
        assert!(e.to_string().contains("node_id"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let e = toml::from_str::<FileConfig>("domain = \"a\"\nmqt = \"127.0.0.1:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("mqt"), "{e}");
    }
}
