//! [`PgStore`]: the registry in PostgreSQL, shared by every certmq node of a cluster
//! (`certmq serve --store postgres://…`).
//!
//! - **Table.** `certmq_kv(key text COLLATE "C" PRIMARY KEY, value bytea)`: the same
//!   keys and values as the embedded store. Migrations (`certmq_schema_version`) run at
//!   start in one transaction under an advisory lock, so nodes starting together on an
//!   empty database do not race.
//! - **Writes.** `apply` is one transaction; in it, `pg_notify('certmq_changes', …)`
//!   names the changed keys (PostgreSQL delivers it on commit, to every listening node).
//! - **Reads** come from an in-memory mirror of the table, loaded at start and kept
//!   current from this node's commits and the other nodes' notifications (the changed
//!   keys are re-read). Handshakes never wait on the network, and while PostgreSQL is
//!   unreachable the node keeps admitting with the last state it had. The device
//!   inventory and the audit logs are not mirrored ([`layout::UNMIRRORED`]): they are
//!   read from the database when asked for.
//! - **Loss.** While the connection is down, `apply` (and reads of unmirrored keys)
//!   fail at once with [`StoreError::unavailable`] (the admin API answers 503). The
//!   worker reconnects every second; when back it reloads the whole table, and reports
//!   every key that differs from the mirror, since notifications sent meanwhile were
//!   lost.
//!
//! All network I/O runs on one thread with its own single-threaded tokio runtime; the
//! sync [`Store`] calls hand it requests over a channel and wait at most a few seconds.
//! Changed keys are reported to the [`Watcher`] from another thread, inside the runtime
//! the store was opened in, so listeners may spawn tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::layout;
use crate::store::{Op, SharedStatus, Store, StoreError, Watcher};

/// The notification channel every node listens on.
const CHANNEL: &str = "certmq_changes";

/// The schema this build knows; [`MIGRATIONS`] has one entry per version.
const MIGRATIONS: [&str; 1] = [
    // 1: the key-value table. COLLATE "C": keys sort byte-wise, as in sled.
    "CREATE TABLE certmq_kv (key text COLLATE \"C\" PRIMARY KEY, value bytea NOT NULL)",
];

/// The advisory lock migrations hold (any constant; "certmq" in ASCII).
const MIGRATION_LOCK: i64 = 0x6365_7274_6d71;

/// The advisory lock a node holds while it checks and writes a change
/// ([`Store::catch_up`] to [`Store::release`]): one node at a time.
const WRITE_LOCK: i64 = 0x6365_7274_6d72;

/// How long a node waits for another's write lock before writing without it.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// How long a connection attempt or a round trip (the idle check, a catch-up) may take
/// before the database counts as unreachable.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a write or a read of unmirrored keys may take (a large batch, such as an
/// org deleted with its whole device inventory, takes more than a round trip).
const WORK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long loading the whole registry (or the migrations, which may wait for another
/// node's) may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a caller waits for the worker's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(12);

/// How often a lost connection is retried.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// How often an idle connection is checked (a silently dead one would miss every
/// notification).
const PING_EVERY: Duration = Duration::from_secs(5);

/// How long the first connection may take at start (PostgreSQL starting beside us).
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// PostgreSQL's limit on a notification payload is 8000 bytes.
const MAX_PAYLOAD: usize = 7900;

/// The registry in PostgreSQL (see the module documentation).
pub struct PgStore {
    shared: Arc<Shared>,
    requests: mpsc::UnboundedSender<Request>,
}

struct Shared {
    /// Every mirrored key and its value.
    mirror: RwLock<BTreeMap<String, Vec<u8>>>,
    /// `Some(cause)` while the database is unreachable.
    down: Mutex<Option<String>>,
    /// Where changed keys go; a thread calls the watcher.
    changed: Mutex<std_mpsc::Sender<Vec<String>>>,
    watcher: Arc<RwLock<Option<Watcher>>>,
    /// This node's name (for logs and notifications) and this process's random id (a
    /// node skips its own notifications by it, even if two nodes share a name).
    node: String,
    instance: String,
}

type Reply<T> = std_mpsc::SyncSender<Result<T, StoreError>>;

enum Request {
    Apply(Vec<Op>, Reply<()>),
    /// Takes the cluster's write lock, then catches up.
    CatchUp(Reply<()>),
    /// Releases the write lock (whether or not it was taken).
    Release,
    Get(String, Reply<Option<Vec<u8>>>),
    Scan {
        prefix: String,
        after: String,
        limit: i64,
        reply: Reply<Vec<(String, Vec<u8>)>>,
    },
}

impl Request {
    fn fail(self, e: StoreError) {
        // The caller may have given up waiting: nothing to tell then.
        match self {
            Request::Apply(_, r) | Request::CatchUp(r) => drop(r.send(Err(e))),
            Request::Release => {}
            Request::Get(_, r) => drop(r.send(Err(e))),
            Request::Scan { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

/// What a commit tells the other nodes.
#[derive(Serialize, Deserialize, Debug, Default)]
struct Notice {
    /// The committing node's name.
    node: String,
    /// Its process's random id.
    instance: String,
    /// The changed keys, when they fit in a notification.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keys: Vec<String>,
    /// Else prefixes covering them (`ca/acme/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    prefixes: Vec<String>,
    /// Else: re-read everything.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    all: bool,
}

/// The URL with its password (if any) replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        // The key=value form: hide every password=… value.
        Err(_) => url
            .split_whitespace()
            .map(|part| match part.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => part.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn is_mirrored(key: &str) -> bool {
    !layout::UNMIRRORED.iter().any(|p| key.starts_with(p))
}

/// A LIKE pattern matching every key starting with `prefix`.
fn like_prefix(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

impl PgStore {
    /// Connects to `url` (a libpq connection string or `postgres://` URL), runs the
    /// migrations, loads the mirror and starts listening. Waits up to 10 s for the
    /// database at start. Errors never contain the password. Must be called inside a
    /// tokio runtime: changes are reported within it.
    pub fn open(url: &str, node: &str) -> Result<PgStore, StoreError> {
        let safe = redact(url);
        let config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError(format!(
                "the registry database URL {safe} is not valid: {e}"
            ))
        })?;
        let handle = tokio::runtime::Handle::try_current().ok();
        let (changed_tx, changed_rx) = std_mpsc::channel::<Vec<String>>();
        let watcher: Arc<RwLock<Option<Watcher>>> = Arc::default();
        let shared = Arc::new(Shared {
            mirror: RwLock::default(),
            down: Mutex::new(Some("not connected yet".into())),
            changed: Mutex::new(changed_tx),
            watcher: watcher.clone(),
            node: node.to_owned(),
            instance: hex::encode(crate::seal::random_bytes::<8>()),
        });
        std::thread::Builder::new()
            .name("certmq-pg-changes".into())
            .spawn(move || {
                let _entered = handle.as_ref().map(|h| h.enter());
                while let Ok(keys) = changed_rx.recv() {
                    if let Some(w) = watcher.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
                        w(&keys);
                    }
                }
            })
            .map_err(|e| StoreError(format!("starting the change thread: {e}")))?;
        let (requests, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let worker = Worker {
            shared: shared.clone(),
            config,
            safe_url: safe.clone(),
            requests: rx,
        };
        std::thread::Builder::new()
            .name("certmq-pg".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StoreError(format!(
                            "starting the database runtime: {e}"
                        ))));
                        return;
                    }
                };
                rt.block_on(worker.run(ready_tx));
            })
            .map_err(|e| StoreError(format!("starting the database thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(PgStore { shared, requests }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError(format!(
                "the connection to the registry database {safe} ended before it was ready"
            ))),
        }
    }

    /// Whether the database is reachable right now; `Err` says why not.
    pub fn status(&self) -> Result<(), String> {
        match &*self.shared.down.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(cause) => Err(cause.clone()),
        }
    }

    fn fail_fast(&self) -> Result<(), StoreError> {
        self.status().map_err(StoreError::unavailable)
    }

    /// Sends a request to the worker and waits for its answer.
    fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, StoreError> {
        self.fail_fast()?;
        let (tx, rx) = std_mpsc::sync_channel(1);
        self.requests
            .send(make(tx))
            .map_err(|_| StoreError::unavailable("the database worker has stopped"))?;
        match rx.recv_timeout(REPLY_TIMEOUT) {
            Ok(r) => r,
            Err(_) => Err(StoreError::unavailable(format!(
                "no answer within {} s",
                REPLY_TIMEOUT.as_secs()
            ))),
        }
    }

    fn mirror(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.shared.mirror.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The mirrored entries under `prefix` after `after`, at most `limit`.
    fn scan_mirror(&self, prefix: &str, after: &str, limit: usize) -> Vec<(String, Vec<u8>)> {
        use std::ops::Bound;
        let start = if after < prefix {
            Bound::Included(prefix.to_owned())
        } else {
            Bound::Excluded(after.to_owned())
        };
        self.mirror()
            .range::<String, _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn scan_db(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.ask(|reply| Request::Scan {
            prefix: prefix.to_owned(),
            after: after.to_owned(),
            limit,
            reply,
        })
    }
}

impl Store for PgStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if is_mirrored(key) {
            return Ok(self.mirror().get(key).cloned());
        }
        self.ask(|reply| Request::Get(key.to_owned(), reply))
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.scan_after(prefix, "", usize::MAX)
    }

    fn scan_after(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        // Inside one unmirrored prefix: the database alone.
        if !is_mirrored(prefix) {
            return self.scan_db(prefix, after, limit);
        }
        let mut out = self.scan_mirror(prefix, after, limit);
        // A prefix spanning unmirrored ones too (`""`, `d`): merge them in.
        for p in layout::UNMIRRORED.iter().filter(|p| p.starts_with(prefix)) {
            out.extend(self.scan_db(p, after, limit)?);
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.truncate(limit);
        Ok(out)
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.ask(|reply| Request::Apply(ops, reply))
    }

    fn catch_up(&self) {
        if self.status().is_ok() {
            if let Err(e) = self.ask(Request::CatchUp) {
                tracing::debug!(cause = %e, "could not catch up with other nodes' changes");
            }
        }
    }

    fn release(&self) {
        // Not waited for: requests are served in order, so it lands before the next one.
        let _ = self.requests.send(Request::Release);
    }

    fn shared_status(&self) -> Option<SharedStatus> {
        Some(SharedStatus {
            node: self.shared.node.clone(),
            database: self.status(),
        })
    }

    fn watch(&self, watcher: Watcher) {
        *self
            .shared
            .watcher
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(watcher);
    }
}

/// The thread owning the connection.
struct Worker {
    shared: Arc<Shared>,
    config: tokio_postgres::Config,
    safe_url: String,
    requests: mpsc::UnboundedReceiver<Request>,
}

/// An open connection: the client and what its connection task forwards.
struct Conn {
    client: Client,
    /// Whether this connection holds the cluster's write lock.
    locked: bool,
    /// Notification payloads; closed (with the cause sent last as `Err`) when the
    /// connection ends.
    events: mpsc::UnboundedReceiver<Result<String, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The error and its causes (tokio-postgres says only "db error" at the top; the
/// server's message is the source).
fn db_err(e: impl std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn timed<T>(
    what: &str,
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, impl Into<Cause>>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(|e| format!("{what}: {}", e.into().0)),
        Err(_) => Err(format!("{what}: no answer within {} s", limit.as_secs())),
    }
}

/// An error's text with its causes.
struct Cause(String);

impl From<tokio_postgres::Error> for Cause {
    fn from(e: tokio_postgres::Error) -> Cause {
        Cause(db_err(e))
    }
}

impl From<String> for Cause {
    fn from(e: String) -> Cause {
        Cause(e)
    }
}

impl Worker {
    async fn run(mut self, ready: std_mpsc::SyncSender<Result<(), StoreError>>) {
        let started = tokio::time::Instant::now();
        let mut ready = Some(ready);
        let mut lost_logged = false;
        loop {
            let first = ready.is_some();
            match self.connect_and_load(first).await {
                Ok(conn) => {
                    self.set_down(None);
                    if let Some(r) = ready.take() {
                        tracing::info!(database = %self.safe_url, node = %self.shared.node, "registry database connected");
                        let _ = r.send(Ok(()));
                    } else {
                        tracing::info!(database = %self.safe_url, "registry database reachable again; registry resynchronised");
                    }
                    let cause = self.serve(conn).await;
                    let Some(cause) = cause else { return };
                    tracing::warn!(database = %self.safe_url, %cause, "registry database lost: admitting with the last state read; admin changes are refused until it is back");
                    lost_logged = true;
                    self.set_down(Some(cause));
                }
                Err(cause) => {
                    if let Some(r) = &ready {
                        if started.elapsed() >= START_TIMEOUT {
                            let _ = r.send(Err(StoreError(format!(
                                "cannot open the registry database {}: {cause}",
                                self.safe_url
                            ))));
                            return;
                        }
                    } else if !lost_logged {
                        tracing::warn!(database = %self.safe_url, %cause, "registry database unreachable");
                        lost_logged = true;
                    }
                    self.set_down(Some(cause));
                }
            }
            // Wait before retrying; meanwhile every request is refused at once.
            let retry = tokio::time::sleep(RETRY_EVERY);
            tokio::pin!(retry);
            loop {
                tokio::select! {
                    _ = &mut retry => break,
                    r = self.requests.recv() => match r {
                        Some(r) => r.fail(self.unavailable()),
                        None => return,
                    },
                }
            }
        }
    }

    fn unavailable(&self) -> StoreError {
        let cause = self
            .shared
            .down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "connection lost".into());
        StoreError::unavailable(cause)
    }

    fn set_down(&self, cause: Option<String>) {
        *self.shared.down.lock().unwrap_or_else(|e| e.into_inner()) = cause;
    }

    /// Reports keys changed elsewhere to the watcher.
    fn report(&self, keys: Vec<String>) {
        if !keys.is_empty() {
            let _ = self
                .shared
                .changed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(keys);
        }
    }

    /// Connects, migrates, listens, and (re)loads the mirror. On a reconnect, every key
    /// that differs from the mirror is reported: notifications sent while away are lost.
    async fn connect_and_load(&self, first: bool) -> Result<Conn, String> {
        let (client, mut connection) =
            timed("connecting", IO_TIMEOUT, self.config.connect(NoTls)).await?;
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
            loop {
                match messages.next().await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if tx.send(Ok(n.payload().to_owned())).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        let _ = tx.send(Err(db_err(e)));
                        return;
                    }
                    None => {
                        let _ = tx.send(Err("the server closed the connection".into()));
                        return;
                    }
                }
            }
        });
        let mut conn = Conn {
            client,
            locked: false,
            events,
            task,
        };
        timed(
            "migrating the schema",
            LOAD_TIMEOUT,
            migrate(&mut conn.client),
        )
        .await?;
        timed(
            "listening for changes",
            IO_TIMEOUT,
            conn.client.batch_execute(&format!("LISTEN {CHANNEL}")),
        )
        .await?;
        let all = timed("loading the registry", LOAD_TIMEOUT, load_all(&conn.client)).await?;
        let changed = self.replace_mirror(all, None);
        if !first {
            tracing::info!(
                keys = changed.len(),
                "registry keys changed while the database was unreachable"
            );
            self.report(changed);
        }
        Ok(conn)
    }

    /// Replaces the mirror's entries (all, or those under `prefixes`) with `fresh`; the
    /// keys that differ.
    fn replace_mirror(
        &self,
        fresh: BTreeMap<String, Vec<u8>>,
        prefixes: Option<&[String]>,
    ) -> Vec<String> {
        let mut mirror = self
            .shared
            .mirror
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let covered = |k: &str| prefixes.is_none_or(|ps| ps.iter().any(|p| k.starts_with(p)));
        let mut changed = BTreeSet::new();
        for (k, v) in mirror.iter() {
            if covered(k) && fresh.get(k) != Some(v) {
                changed.insert(k.clone());
            }
        }
        for (k, v) in &fresh {
            if mirror.get(k) != Some(v) {
                changed.insert(k.clone());
            }
        }
        mirror.retain(|k, _| !covered(k));
        mirror.extend(fresh);
        changed.into_iter().collect()
    }

    /// Serves requests and notifications until the connection is lost (`Some(cause)`)
    /// or the store is dropped (`None`).
    async fn serve(&mut self, mut conn: Conn) -> Option<String> {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                r = self.requests.recv() => {
                    let r = r?;
                    if let Err(cause) = self.handle(&mut conn, r).await {
                        return Some(cause);
                    }
                    ping.reset();
                }
                e = conn.events.recv() => match e {
                    Some(Ok(payload)) => {
                        if let Err(cause) = self.on_notice(&conn, &payload).await {
                            return Some(cause);
                        }
                    }
                    Some(Err(cause)) => return Some(cause),
                    None => return Some("the connection ended".into()),
                },
                _ = ping.tick() => {
                    if let Err(cause) = timed("checking the connection", IO_TIMEOUT, conn.client.simple_query("SELECT 1")).await {
                        return Some(cause);
                    }
                }
            }
        }
    }

    /// Answers one request; `Err` when the connection is unusable (the request was
    /// answered with the error already).
    async fn handle(&self, conn: &mut Conn, request: Request) -> Result<(), String> {
        match request {
            Request::Apply(ops, reply) => {
                let notice = notice(&self.shared.node, &self.shared.instance, &ops);
                match timed(
                    "writing",
                    WORK_TIMEOUT,
                    write(&mut conn.client, &ops, notice),
                )
                .await
                {
                    Ok(()) => {
                        self.apply_to_mirror(ops);
                        let _ = reply.send(Ok(()));
                        Ok(())
                    }
                    Err(cause) => {
                        let _ = reply.send(Err(StoreError::unavailable(&cause)));
                        Err(cause)
                    }
                }
            }
            Request::Release => {
                if conn.locked {
                    conn.locked = false;
                    timed(
                        "releasing the write lock",
                        IO_TIMEOUT,
                        conn.client.execute("SELECT pg_advisory_unlock_all()", &[]),
                    )
                    .await?;
                }
                Ok(())
            }
            Request::CatchUp(reply) => {
                // The cluster's write lock first (given up after a while: the write then
                // goes ahead with only this node's lock, as a single node would).
                match timed(
                    "taking the write lock",
                    LOCK_WAIT + IO_TIMEOUT,
                    take_lock(&conn.client),
                )
                .await
                {
                    Ok(true) => conn.locked = true,
                    Ok(false) => tracing::warn!(
                        "another node held the registry's write lock for {} s; writing without it",
                        LOCK_WAIT.as_secs()
                    ),
                    Err(cause) => {
                        let _ = reply.send(Err(StoreError::unavailable(&cause)));
                        return Err(cause);
                    }
                }
                // Then a round trip: PostgreSQL sends the notifications of every commit
                // made before it ahead of its answer; then they are all in `events`.
                let done = timed(
                    "catching up",
                    IO_TIMEOUT,
                    conn.client.simple_query("SELECT 1"),
                )
                .await;
                if let Err(cause) = done {
                    let _ = reply.send(Err(StoreError::unavailable(&cause)));
                    return Err(cause);
                }
                while let Ok(e) = conn.events.try_recv() {
                    let applied = match e {
                        Ok(payload) => self.on_notice(conn, &payload).await,
                        Err(cause) => Err(cause),
                    };
                    if let Err(cause) = applied {
                        let _ = reply.send(Err(StoreError::unavailable(&cause)));
                        return Err(cause);
                    }
                }
                let _ = reply.send(Ok(()));
                Ok(())
            }
            Request::Get(key, reply) => {
                let got = timed(
                    "reading",
                    WORK_TIMEOUT,
                    conn.client
                        .query_opt("SELECT value FROM certmq_kv WHERE key = $1", &[&key]),
                )
                .await
                .map(|row| row.map(|r| r.get::<_, Vec<u8>>(0)));
                self.answer(reply, got)
            }
            Request::Scan {
                prefix,
                after,
                limit,
                reply,
            } => {
                let got = timed(
                    "reading",
                    WORK_TIMEOUT,
                    conn.client.query(
                        "SELECT key, value FROM certmq_kv WHERE key LIKE $1 AND key > $2 \
                         ORDER BY key LIMIT $3",
                        &[&like_prefix(&prefix), &after, &limit],
                    ),
                )
                .await
                .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect());
                self.answer(reply, got)
            }
        }
    }

    fn answer<T>(&self, reply: Reply<T>, got: Result<T, String>) -> Result<(), String> {
        match got {
            Ok(v) => {
                let _ = reply.send(Ok(v));
                Ok(())
            }
            Err(cause) => {
                let _ = reply.send(Err(StoreError::unavailable(&cause)));
                Err(cause)
            }
        }
    }

    fn apply_to_mirror(&self, ops: Vec<Op>) {
        let mut mirror = self
            .shared
            .mirror
            .write()
            .unwrap_or_else(|e| e.into_inner());
        for op in ops {
            match op {
                Op::Put(k, v) if is_mirrored(&k) => {
                    mirror.insert(k, v);
                }
                Op::Delete(k) if is_mirrored(&k) => {
                    mirror.remove(&k);
                }
                _ => {}
            }
        }
    }

    /// Another node committed: re-reads what it names into the mirror and reports the
    /// keys that changed.
    async fn on_notice(&self, conn: &Conn, payload: &str) -> Result<(), String> {
        let notice: Notice = match serde_json::from_str(payload) {
            Ok(n) => n,
            Err(e) => {
                // Someone else's NOTIFY on our channel: re-read everything to be safe.
                tracing::warn!(cause = %e, "unreadable change notification; re-reading the registry");
                Notice {
                    all: true,
                    ..Notice::default()
                }
            }
        };
        if notice.instance == self.shared.instance {
            return Ok(());
        }
        let form = if notice.all {
            "all"
        } else if notice.prefixes.is_empty() {
            "keys"
        } else {
            "prefixes"
        };
        let changed = if notice.all {
            let all = timed(
                "reloading the registry",
                LOAD_TIMEOUT,
                load_all(&conn.client),
            )
            .await?;
            self.replace_mirror(all, None)
        } else if !notice.prefixes.is_empty() {
            let mut fresh = BTreeMap::new();
            for p in &notice.prefixes {
                let rows = timed(
                    "reading changes",
                    LOAD_TIMEOUT,
                    conn.client.query(
                        "SELECT key, value FROM certmq_kv WHERE key LIKE $1",
                        &[&like_prefix(p)],
                    ),
                )
                .await?;
                fresh.extend(
                    rows.iter()
                        .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
                        .filter(|(k, _)| is_mirrored(k)),
                );
            }
            self.replace_mirror(fresh, Some(&notice.prefixes))
        } else {
            let rows = timed(
                "reading changes",
                WORK_TIMEOUT,
                conn.client.query(
                    "SELECT key, value FROM certmq_kv WHERE key = ANY($1)",
                    &[&notice.keys],
                ),
            )
            .await?;
            let fresh: BTreeMap<String, Vec<u8>> = rows
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
                .collect();
            let mut mirror = self
                .shared
                .mirror
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let mut changed = Vec::new();
            for k in notice.keys.into_iter().filter(|k| is_mirrored(k)) {
                let now = fresh.get(&k);
                if mirror.get(&k) != now {
                    match now {
                        Some(v) => mirror.insert(k.clone(), v.clone()),
                        None => mirror.remove(&k),
                    };
                    changed.push(k);
                }
            }
            changed
        };
        tracing::debug!(node = %notice.node, form, keys = changed.len(), "registry changed on another node");
        self.report(changed);
        Ok(())
    }
}

/// What to tell the other nodes about `ops`: `None` when they touch only unmirrored
/// keys (nobody keeps a copy of those).
fn notice(node: &str, instance: &str, ops: &[Op]) -> Option<String> {
    let keys: BTreeSet<&str> = ops
        .iter()
        .map(|op| match op {
            Op::Put(k, _) | Op::Delete(k) => k.as_str(),
        })
        .filter(|k| is_mirrored(k))
        .collect();
    if keys.is_empty() {
        return None;
    }
    let mut notice = Notice {
        node: node.to_owned(),
        instance: instance.to_owned(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        ..Notice::default()
    };
    let fits = |n: &Notice| {
        let s = serde_json::to_string(n).unwrap_or_default();
        (s.len() <= MAX_PAYLOAD).then_some(s)
    };
    if let Some(s) = fits(&notice) {
        return Some(s);
    }
    // Too many keys: their first two segments (`ca/acme/`) cover them.
    let prefixes: BTreeSet<String> = keys
        .iter()
        .map(|k| {
            let mut end = 0;
            for (n, (i, _)) in k.match_indices('/').enumerate() {
                end = i + 1;
                if n == 1 {
                    break;
                }
            }
            if end == 0 {
                k.to_string()
            } else {
                k[..end].to_owned()
            }
        })
        .collect();
    notice.keys.clear();
    notice.prefixes = prefixes.into_iter().collect();
    if let Some(s) = fits(&notice) {
        return Some(s);
    }
    notice.prefixes.clear();
    notice.all = true;
    fits(&notice)
}

/// Brings the schema to the version this build knows, once, under an advisory lock
/// (two nodes starting together on an empty database wait for each other).
async fn migrate(client: &mut Client) -> Result<(), String> {
    let tx = client.transaction().await.map_err(db_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db_err)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS certmq_schema_version (version integer NOT NULL)")
        .await
        .map_err(db_err)?;
    let at: Option<i32> = tx
        .query_one("SELECT max(version) FROM certmq_schema_version", &[])
        .await
        .map_err(db_err)?
        .get(0);
    let at = usize::try_from(at.unwrap_or(0)).unwrap_or(0);
    if at > MIGRATIONS.len() {
        return Err(format!(
            "the database's certmq schema is version {at}, newer than this certmq knows \
             ({}): run a newer certmq",
            MIGRATIONS.len()
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(at) {
        tx.batch_execute(sql).await.map_err(db_err)?;
        let v = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute("INSERT INTO certmq_schema_version VALUES ($1)", &[&v])
            .await
            .map_err(db_err)?;
        tracing::info!(version = v, "registry database migrated");
    }
    tx.commit().await.map_err(db_err)
}

/// Takes the write lock, polling (a blocking `pg_advisory_lock` could not be given
/// up without ending the connection); whether it was taken within [`LOCK_WAIT`].
async fn take_lock(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        let taken: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&WRITE_LOCK])
            .await?
            .get(0);
        if taken || tokio::time::Instant::now() >= deadline {
            return Ok(taken);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Every mirrored entry.
async fn load_all(client: &Client) -> Result<BTreeMap<String, Vec<u8>>, tokio_postgres::Error> {
    let patterns: Vec<String> = layout::UNMIRRORED.iter().map(|p| like_prefix(p)).collect();
    let rows = client
        .query(
            "SELECT key, value FROM certmq_kv WHERE NOT (key LIKE ANY($1))",
            &[&patterns],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// One transaction: the batch (last op per key wins, as applied in order), then the
/// notification, delivered by PostgreSQL on commit.
async fn write(
    client: &mut Client,
    ops: &[Op],
    notice: Option<String>,
) -> Result<(), tokio_postgres::Error> {
    let mut last: BTreeMap<&str, Option<&[u8]>> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Put(k, v) => last.insert(k, Some(v)),
            Op::Delete(k) => last.insert(k, None),
        };
    }
    let (mut put_keys, mut put_values, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
    for (k, v) in last {
        match v {
            Some(v) => {
                put_keys.push(k);
                put_values.push(v);
            }
            None => deletes.push(k),
        }
    }
    let tx = client.transaction().await?;
    if !deletes.is_empty() {
        tx.execute("DELETE FROM certmq_kv WHERE key = ANY($1)", &[&deletes])
            .await?;
    }
    if !put_keys.is_empty() {
        tx.execute(
            "INSERT INTO certmq_kv (key, value) SELECT * FROM unnest($1::text[], $2::bytea[]) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&put_keys, &put_values],
        )
        .await?;
    }
    if let Some(n) = notice {
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &n])
            .await?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://certmq:s3cret@db.example:5432/certmq"),
            "postgres://certmq:***@db.example:5432/certmq"
        );
        assert_eq!(
            redact("postgres://certmq@db.example/certmq"),
            "postgres://certmq@db.example/certmq"
        );
        assert_eq!(
            redact("host=db user=certmq password=s3cret dbname=certmq"),
            "host=db user=certmq password=*** dbname=certmq"
        );
    }

    #[test]
    fn notices_name_keys_then_prefixes_then_everything() {
        let put = |k: String| Op::Put(k, b"v".to_vec());
        let parse = |s: Option<String>| -> Notice { serde_json::from_str(&s.unwrap()).unwrap() };
        let n = parse(notice(
            "n1",
            "i",
            &[put("ca/acme/1".into()), Op::Delete("org/acme".into())],
        ));
        assert_eq!((n.node.as_str(), n.keys.len(), n.all), ("n1", 2, false));
        // Unmirrored keys are nobody's copy: no notice at all.
        assert!(notice("n1", "i", &[put("dev/acme/d:x:1".into())]).is_none());
        let many: Vec<Op> = (0..1000)
            .map(|i| put(format!("blocked/acme/d:x:{i}")))
            .collect();
        let n = parse(notice("n1", "i", &many));
        assert_eq!(
            (n.keys.len(), n.prefixes.clone()),
            (0, vec!["blocked/acme/".to_owned()])
        );
        let orgs: Vec<Op> = (0..1000)
            .map(|i| put(format!("blocked/org{i}/d:x:1")))
            .collect();
        assert!(parse(notice("n1", "i", &orgs)).all);
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_prefix("dev/a_b%c\\"), "dev/a\\_b\\%c\\\\%");
    }
}
