//! Connections to Redis: one shared, reconnecting connection for ordinary
//! commands and a small pool of dedicated ones for blocking waits.
//!
//! A standalone server is reached through a [`ConnectionManager`] (one
//! multiplexed connection; concurrent commands are pipelined on it, and a
//! dropped connection is re-established in the background with exponential
//! backoff). A cluster is reached through a [`ClusterConnection`], which
//! follows slot moves and reconnects to nodes itself. A blocking `BLPOP`
//! would hold up every command queued behind it on a multiplexed
//! connection, so blocking waits get their own connections from
//! [`BlockingPool`].
//!
//! A `rediss://` URL is reached over TLS (rustls, with the ring crypto
//! provider), trusting the system's roots, or only the CA certificates of a
//! [`RedisTls`], which may also carry a client certificate for servers that
//! ask for one.
//!
//! Every Redis error becomes [`BrokerError::Unavailable`] naming the
//! operation; losing and regaining the server is logged (rate-limited) here.
//! This module never interprets replies and never panics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::broker::BrokerError;

/// How long one command may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to one server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest single blocking wait; longer waits loop.
pub const MAX_BLOCK: Duration = Duration::from_secs(10);
/// Idle blocking connections kept for reuse.
const POOL_KEEP: usize = 4;

/// A connection to a standalone server or to a cluster.
#[derive(Clone)]
pub enum Conn {
    /// One server, through a reconnecting manager.
    Single(ConnectionManager),
    /// A cluster, through redis-rs's cluster connection.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Certificates for `rediss://` connections, in PEM.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// The CA certificates to trust instead of the system's roots (a
    /// private CA, or a self-signed server).
    pub ca_cert: Option<Vec<u8>>,
    /// A client certificate chain and its private key, for a server that
    /// checks clients (mutual TLS).
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A private key never reaches a log line.
        f.debug_struct("RedisTls")
            .field("ca_cert", &self.ca_cert.as_ref().map(|_| "<pem>"))
            .field("client", &self.client.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

impl RedisTls {
    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca_cert.clone(),
        }
    }
}

/// `urls` (one Redis URL, or several comma-separated) with any password
/// replaced by `***`, for messages and printed settings.
pub fn redact(urls: &str) -> String {
    let one = |url: &str| -> String {
        let Some((scheme, rest)) = url.split_once("://") else {
            return url.to_owned();
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = match userinfo.split_once(':') {
                    Some((user, _password)) => format!("{user}:***"),
                    // A lone userinfo may be a password (`redis://secret@host`).
                    None => "***".to_owned(),
                };
                format!("{scheme}://{user}@{host}{tail}")
            }
            None => url.to_owned(),
        }
    };
    urls.split(',').map(one).collect::<Vec<_>>().join(",")
}

/// Whether `url` asks for TLS.
fn is_tls(url: &str) -> bool {
    url.get(..9)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("rediss://"))
}

/// Where the broker's Redis is.
#[derive(Clone)]
pub enum Target {
    /// A standalone server (boxed: with TLS settings a client is large).
    Single(Box<redis::Client>),
    /// A cluster, from its seed nodes (boxed: a cluster client is large).
    Cluster(Box<ClusterTarget>),
}

/// The clients of a cluster target.
#[derive(Clone)]
pub struct ClusterTarget {
    /// For ordinary commands.
    normal: ClusterClient,
    /// For blocking waits (a response timeout longer than any wait).
    blocking: ClusterClient,
}

impl Target {
    /// Parses the URL(s): one URL is a standalone server unless `cluster`;
    /// several are a cluster's seed nodes.
    pub fn new(nodes: &[String], cluster: bool) -> Result<Self, BrokerError> {
        Self::with_tls(nodes, cluster, None)
    }

    /// Like [`new`](Self::new), with certificates for `rediss://` URLs
    /// (refused with `redis://` ones, which would not use them).
    pub fn with_tls(
        nodes: &[String],
        cluster: bool,
        tls: Option<&RedisTls>,
    ) -> Result<Self, BrokerError> {
        let bad = |e: RedisError| BrokerError::Invalid {
            op: "connect",
            reason: format!("bad Redis URL or TLS certificate: {e}"),
        };
        if nodes.iter().any(|n| is_tls(n)) {
            // Several providers may be compiled in; rustls then wants one
            // chosen for the process. An application that chose already
            // keeps its choice.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        if tls.is_some()
            && let Some(plain) = nodes.iter().find(|n| !is_tls(n))
        {
            return Err(BrokerError::Invalid {
                op: "connect",
                reason: format!(
                    "TLS certificates are given, but `{}` is not a rediss:// URL",
                    redact(plain)
                ),
            });
        }
        let certs = tls.map(RedisTls::certificates);
        match nodes {
            [] => Err(BrokerError::Invalid {
                op: "connect",
                reason: "no Redis URL given".into(),
            }),
            [one] if !cluster => Ok(Target::Single(Box::new(
                match &certs {
                    Some(certs) => redis::Client::build_with_tls(one.as_str(), certs.clone()),
                    None => redis::Client::open(one.as_str()),
                }
                .map_err(bad)?,
            ))),
            many => {
                let build = |timeout: Duration| {
                    let mut builder = ClusterClient::builder(many.iter().map(String::as_str))
                        .connection_timeout(CONNECT_TIMEOUT)
                        .response_timeout(timeout)
                        .retries(6);
                    if let Some(certs) = &certs {
                        builder = builder.certs(certs.clone());
                    }
                    builder.build().map_err(bad)
                };
                Ok(Target::Cluster(Box::new(ClusterTarget {
                    normal: build(RESPONSE_TIMEOUT)?,
                    blocking: build(MAX_BLOCK + RESPONSE_TIMEOUT)?,
                })))
            }
        }
    }

    fn manager_config(response: Duration) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2))
            .set_exponent_base(2.0)
            .set_number_of_retries(8)
    }

    /// Opens the connection for ordinary commands.
    pub async fn connect(&self) -> Result<Conn, BrokerError> {
        self.open(RESPONSE_TIMEOUT, false).await
    }

    /// Opens a connection for blocking waits.
    pub async fn connect_blocking(&self) -> Result<Conn, BrokerError> {
        self.open(MAX_BLOCK + RESPONSE_TIMEOUT, true).await
    }

    async fn open(&self, response: Duration, blocking: bool) -> Result<Conn, BrokerError> {
        let conn = match self {
            Target::Single(client) => {
                if matches!(
                    client.get_connection_info().addr(),
                    redis::ConnectionAddr::TcpTls { .. }
                ) {
                    refused_tls(client).await?;
                }
                ConnectionManager::new_with_config(*client.clone(), Self::manager_config(response))
                    .await
                    .map(Conn::Single)
            }
            Target::Cluster(c) => {
                let client = if blocking { &c.blocking } else { &c.normal };
                client.get_async_connection().await.map(Conn::Cluster)
            }
        };
        conn.map_err(|e| unavailable("connect", e))
    }
}

/// Fails with [`BrokerError::Invalid`] when the TLS server's certificate,
/// or the client's, is refused: a verdict waiting cannot change, which the
/// connection manager would otherwise retry for seconds, leaving a one-shot
/// command to report a server that does not answer. Anything else (a
/// server not up yet) is left to the manager's retries.
async fn refused_tls(client: &redis::Client) -> Result<(), BrokerError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let Err(e) = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
    else {
        return Ok(());
    };
    // redis-rs keeps rustls' error behind an `Arc<dyn Error>` (no downcast):
    // its wording is all there is to go by.
    let said = e.to_string();
    let verdict = e.kind() == redis::ErrorKind::InvalidClientConfig
        || (!e.is_connection_refusal()
            && !e.is_timeout()
            && (said.contains("certificate") || said.contains("fatal alert")));
    if verdict {
        return Err(BrokerError::Invalid {
            op: "connect",
            reason: format!("TLS refused: {said}"),
        });
    }
    Ok(())
}

/// Idle connections for blocking waits. A connection goes back only after
/// its wait finished normally: one whose wait was cut short may still be
/// blocked on the server.
#[derive(Default)]
pub struct BlockingPool {
    idle: Mutex<Vec<Conn>>,
}

impl BlockingPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection, or a new one.
    pub async fn take(&self, target: &Target) -> Result<Conn, BrokerError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => target.connect_blocking().await,
        }
    }

    /// Returns a connection whose wait finished normally.
    pub fn give_back(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL_KEEP {
            idle.push(conn);
        }
    }
}

/// Whether the last command failed; for logging the recovery once.
static DOWN: AtomicBool = AtomicBool::new(false);
/// When a lost connection was last logged (ms since the epoch).
static LAST_LOGGED: AtomicI64 = AtomicI64::new(0);

/// Turns a Redis error into [`BrokerError::Unavailable`] naming `op`, and
/// logs that the server was lost (at most once a second; the managers
/// reconnect in the background, with backoff).
pub fn unavailable(op: &'static str, e: RedisError) -> BrokerError {
    let connection_trouble = e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error();
    if connection_trouble {
        DOWN.store(true, Ordering::Relaxed);
    }
    let now = chrono::Utc::now().timestamp_millis();
    let last = LAST_LOGGED.load(Ordering::Relaxed);
    if now - last >= 1000
        && LAST_LOGGED
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        if connection_trouble {
            tracing::warn!(op, error = %e, "lost the Redis connection; reconnecting with backoff");
        } else {
            tracing::warn!(op, error = %e, "Redis refused a command");
        }
    }
    BrokerError::Unavailable {
        op,
        reason: e.to_string(),
    }
}

/// Notes a successful command; logs once when the server is back.
pub fn reachable() {
    if DOWN.load(Ordering::Relaxed) && DOWN.swap(false, Ordering::Relaxed) {
        tracing::info!("Redis is reachable again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact("rediss://user:secret@h:6380/0,redis://:pw@h2:7000"),
            "rediss://user:***@h:6380/0,redis://:***@h2:7000"
        );
        assert_eq!(redact("redis://secret@h"), "redis://***@h");
        assert_eq!(redact("redis://h:6379/0?x=a@b"), "redis://h:6379/0?x=a@b");
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn certificates_need_a_tls_url() {
        let tls = RedisTls::default();
        let nodes = ["redis://127.0.0.1:1".to_owned()];
        let err = Target::with_tls(&nodes, false, Some(&tls))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("not a rediss:// URL"), "{err}");
        let nodes = ["rediss://127.0.0.1:1".to_owned()];
        assert!(Target::with_tls(&nodes, false, Some(&tls)).is_ok());
    }
}
