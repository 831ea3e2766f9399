//! The API's HTTP/1 server: the accept loop, the connection limit, the
//! connection-level timeouts and graceful shutdown.
//!
//! What it bounds, per [`ApiConfig`]:
//!
//! - **connections**: at most [`ApiConfig::max_connections`] are served at
//!   once (and never more than the process's open-file limit less
//!   [`FD_RESERVE`]). At the limit the server stops accepting: new
//!   connections wait in the kernel's listen backlog, holding none of this
//!   process's file descriptors, and are accepted in order as served ones
//!   close. Accept errors (out of descriptors, say) pause the loop briefly
//!   instead of spinning.
//! - **request heads** ([`ApiConfig::header_timeout`]): a connection must
//!   deliver a complete request head within this long of being accepted or
//!   of its previous response, or it is closed. hyper runs this one timer
//!   from the moment a connection is ready for its next request, so it is
//!   also the idle timeout of keep-alive connections: a slowloris client and
//!   an idle one both free their slot within it. Heads are capped at
//!   [`ApiConfig::max_header_bytes`] (431 past it).
//! - **responses** ([`ApiConfig::body_timeout`], [`ApiConfig::min_body_rate`]):
//!   a client that stops reading its answer (the socket's send buffer full)
//!   must take at least `min_body_rate × body_timeout` bytes in every
//!   `body_timeout` while a write is blocked, or the connection is dropped.
//!   Request bodies are paced by [`super::body`] with the same two settings;
//!   whole requests are bounded by [`super::guard`].
//!
//! Errors hyper answers itself, before any route runs (a malformed request
//! line or header, a head over its cap), carry their status and an empty
//! body, and close the connection.
//!
//! Shutdown: once the `shutdown` future resolves, the listener is closed,
//! idle connections close at once, busy ones after their current response,
//! and whatever is still open after [`SHUTDOWN_GRACE`] is dropped.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Sleep;

use super::ApiConfig;

/// How long requests in flight (a long-poll `wait`, say) may go on once
/// shutdown is asked.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// File descriptors kept for everything but API connections (the store,
/// the broker, module files, logs) when the open-file limit caps
/// [`ApiConfig::max_connections`].
pub const FD_RESERVE: u64 = 256;

/// The smallest read buffer hyper accepts; request heads need no more than
/// [`ApiConfig::max_header_bytes`], bodies are read in chunks of this size.
const READ_BUFFER: usize = 64 << 10;

/// The soft open-file limit of this process, if it can be read.
fn fd_soft_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (read == 0).then_some(limit.rlim_cur)
}

/// Raises this process's soft open-file limit to its hard limit, where the
/// system allows; returns the soft limit now in force. `corral serve` calls
/// it at start-up, so the connection limit is not lowered by a small
/// default soft limit.
pub fn raise_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads only the struct it is given; on failure
        // nothing changes.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Some(limit.rlim_cur)
}

/// The connection limit in force: `wanted`, lowered to leave
/// [`FD_RESERVE`] descriptors free (or half of them, under a tiny limit).
pub fn connection_limit(wanted: usize) -> usize {
    let wanted = wanted.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let Some(soft) = fd_soft_limit() else {
        return wanted;
    };
    let room = if soft > 2 * FD_RESERVE {
        soft - FD_RESERVE
    } else {
        soft / 2
    };
    wanted
        .min(usize::try_from(room).unwrap_or(usize::MAX))
        .max(1)
}

/// Serves `router` on `listener` under `config`'s connection bounds until
/// `shutdown` resolves (see the module docs for what happens then).
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    config: &ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limit = connection_limit(config.max_connections);
    if limit < config.max_connections {
        tracing::warn!(
            wanted = config.max_connections,
            limit,
            "the open-file limit lowers the API's connection limit"
        );
    }
    let slots = Arc::new(Semaphore::new(limit));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true)
        .max_header_size(config.max_header_bytes)
        .max_buf_size(READ_BUFFER.max(config.max_header_bytes));
    let pace = Pace {
        stall: config.body_timeout,
        // Saturating float-to-int: a huge rate only makes the rule stricter.
        window_bytes: ((config.min_body_rate as f64 * config.body_timeout.as_secs_f64()) as u64)
            .max(1),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut pause = ACCEPT_PAUSE_MIN;
    loop {
        // A slot first: at the limit, new connections wait in the backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "accepting an API connection failed; pausing");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = &mut shutdown => break,
                    }
                    pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        pause = ACCEPT_PAUSE_MIN;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(Paced::new(stream, pace));
        let conn = http.serve_connection(io, TowerToHyperService::new(router.clone()));
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                // A closed channel means the server is gone: stop too.
                () = async { let _ = stop.wait_for(|stop| *stop).await; } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "API connection ended with an error");
            }
        });
        // Reap finished connections so the set stays as small as the limit.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            open = connections.len(),
            "API connections still open after the shutdown grace; dropping them"
        );
        connections.shutdown().await;
    }
    Ok(())
}

const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Accept errors that concern only the connection being accepted (the
/// client gave up first): the next accept is fine.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// How fast a blocked response write must drain.
#[derive(Debug, Clone, Copy)]
struct Pace {
    stall: Duration,
    window_bytes: u64,
}

/// A connection whose writes fail once the client stops reading: when a
/// write blocks, a timer of [`Pace::stall`] starts; it is reset once
/// [`Pace::window_bytes`] more bytes have gone out or everything buffered
/// has been flushed; if it fires while a write is still blocked, the write
/// fails with `TimedOut` and hyper drops the connection.
struct Paced {
    io: TcpStream,
    pace: Pace,
    timer: Option<Pin<Box<Sleep>>>,
    sent_since_blocked: u64,
}

impl Paced {
    fn new(io: TcpStream, pace: Pace) -> Self {
        Self {
            io,
            pace,
            timer: None,
            sent_since_blocked: 0,
        }
    }

    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if self.timer.is_some() {
                    self.sent_since_blocked += n as u64;
                    if self.sent_since_blocked >= self.pace.window_bytes {
                        self.unblocked();
                    }
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                let stall = self.pace.stall;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading the response",
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }

    fn unblocked(&mut self) {
        self.timer = None;
        self.sent_since_blocked = 0;
    }
}

impl AsyncRead for Paced {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Paced {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.after_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            // hyper flushes once its buffer is written: nothing is blocked.
            self.unblocked();
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_leaves_descriptors_for_the_rest() {
        let soft = fd_soft_limit().expect("RLIMIT_NOFILE is readable");
        let limit = connection_limit(usize::MAX) as u64;
        assert!(limit >= 1);
        assert!(limit < soft, "{limit} connections under {soft} descriptors");
        assert!(soft - limit >= FD_RESERVE.min(soft / 2));
        assert_eq!(connection_limit(3), 3);
        assert_eq!(connection_limit(0), 1);
    }
}
