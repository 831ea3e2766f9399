//! The API's HTTP server against hostile clients, over real TCP: slowloris
//! heads, stalled and dripping bodies, idle connections past the connection
//! limit, uploads past the body budget, requests cut at the request timeout,
//! and malformed requests of every kind, each answered in JSON.
//!
//! Clients here speak raw HTTP/1.1 on a `TcpStream` where they must
//! misbehave. No assertion is about time: each checks that a connection was
//! closed or answered, with which status and kind. Every wait has a generous
//! bound that only turns a hang into a failure.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use corral::api::{ApiConfig, BodyBudget};
use corral::broker::{EmbeddedBroker, RedisBroker, RedisConfig};
use corral::catalog::{Catalog, MemoryCatalog, RedisCatalog};
use corral::registry::Registry;
use corral::tenant::TenantLimits;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::api_support::{self, Api, RedisServer};
use crate::support;

/// The bound that turns a hang into a failure.
const BOUND: Duration = Duration::from_secs(60);

/// Awaits `f`, failing the test with `what` if it takes longer than
/// [`BOUND`].
async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: still waiting after {BOUND:?}"),
    }
}

/// A served API on the embedded broker and an in-memory catalog, with
/// tenants `alpha` and `beta`.
struct World {
    api: Api,
    addr: String,
    a: String,
    b: String,
}

async fn world(config: ApiConfig) -> World {
    let catalog: Arc<dyn Catalog> = Arc::new(MemoryCatalog::new());
    let a = api_support::tenant(&catalog, "alpha", TenantLimits::default()).await;
    let b = api_support::tenant(&catalog, "beta", TenantLimits::default()).await;
    let registry = Registry::with_catalog(support::sandbox(), catalog);
    let api = api_support::serve(EmbeddedBroker::new(), registry, config).await;
    let addr = api.base.trim_start_matches("http://").to_owned();
    World { api, addr, a, b }
}

/// One HTTP response read off a raw connection.
#[derive(Debug)]
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Asserts the API's JSON error shape with `status` and `kind` (any
    /// kind when empty).
    #[track_caller]
    fn expect_error(&self, status: u16, kind: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "not JSON: {self:?}"
        );
        let body = self.json();
        let got = body["error"]["kind"].as_str().unwrap_or("");
        assert!(!got.is_empty(), "no error kind: {self:?}");
        assert!(
            !body["error"]["message"].as_str().unwrap_or("").is_empty(),
            "no error message: {self:?}"
        );
        if !kind.is_empty() {
            assert_eq!(got, kind, "{self:?}");
        }
    }
}

/// Reads one response (a `100 Continue` counts as one); `None` if the
/// connection closed or failed before a whole head arrived.
async fn read_reply(stream: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Option<RawReply> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse::<u16>().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < length {
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf.drain(..length).collect();
    Some(RawReply {
        status,
        headers,
        body,
    })
}

/// Reads until the peer closes the connection (EOF or reset); returns the
/// bytes that came first.
async fn until_closed(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends `request` on a fresh connection and reads the answer.
async fn raw_request(addr: &str, request: &[u8]) -> Option<RawReply> {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the API");
    stream.write_all(request).await.ok()?;
    read_reply(&mut stream, &mut Vec::new()).await
}

/// A request head with the token, and a body length or chunked framing.
fn head(method: &str, path: &str, token: &str, framing: Option<&str>) -> String {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {token}\r\n");
    if let Some(framing) = framing {
        head.push_str(framing);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_heads_are_dropped_while_normal_clients_are_served() {
    let _limit = crate::limit::minutes(5);
    let w = world(ApiConfig {
        header_timeout: Duration::from_secs(1),
        ..ApiConfig::default()
    })
    .await;
    let mut rng = StdRng::seed_from_u64(0x5105_1015);
    let mut slow = JoinSet::new();
    for i in 0..16 {
        // Each sends a head that never ends, a byte at a time: a prefix of
        // a real request, then header lines forever.
        let mut bytes = head("GET", "/v1/stats", &w.a, None).into_bytes();
        let request_line = "GET /v1/stats HTTP/1.1\r\n".len();
        bytes.truncate(rng.random_range(request_line..bytes.len() - 2));
        let pause = Duration::from_millis(rng.random_range(20..200));
        let addr = w.addr.clone();
        slow.spawn(async move {
            let stream = TcpStream::connect(&addr).await.expect("connect");
            let (mut read, mut write) = stream.into_split();
            let writer = tokio::spawn(async move {
                let endless = bytes
                    .into_iter()
                    .chain(b"X-Slow: 1\r\n".iter().copied().cycle());
                for byte in endless {
                    if write.write_all(&[byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
            });
            let got = until_closed(&mut read).await;
            writer.abort();
            (i, got)
        });
    }
    // Normal clients are served meanwhile, on fresh and reused connections.
    for _ in 0..20 {
        w.api.get("/v1/stats", &w.a).await.expect(200, "");
    }
    let mut closed = 0;
    bounded("slow clients to be dropped", async {
        while let Some(done) = slow.join_next().await {
            let (i, got) = done.expect("slow client task");
            // Nothing was answered: the head never completed.
            assert!(
                !String::from_utf8_lossy(&got).contains(" 200 "),
                "slow client {i} was answered: {got:?}"
            );
            closed += 1;
        }
    })
    .await;
    assert_eq!(closed, 16);
    w.api.get("/v1/stats", &w.b).await.expect(200, "");
}

/// A caller without a token gets its 401 after at most one `body_timeout`
/// of reading what it still sends, however slowly it drips: the refusal's
/// drain never holds a connection as long as a paced body could.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dripping_body_gets_its_401_within_one_body_timeout() {
    let _limit = crate::limit::minutes(2);
    let w = world(ApiConfig {
        body_timeout: Duration::from_millis(500),
        min_body_rate: 0,
        ..ApiConfig::default()
    })
    .await;
    let framing = "Content-Type: application/wasm\r\nContent-Length: 1000";
    let head = head("POST", "/v1/modules", "crl_0000", Some(framing));
    let stream = TcpStream::connect(&w.addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    // A byte every 100 ms: each well inside the stall bound, the whole body
    // 100 s.
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        for _ in 0..1000 {
            write.write_all(b" ").await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok::<(), std::io::Error>(())
    });
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        read_reply(&mut read, &mut Vec::new()),
    )
    .await
    .expect("no answer within 10 s: the drain outlasted its bound");
    writer.abort();
    reply.expect("an answer").expect_error(401, "unauthorized");
}

/// How a hostile body misbehaves.
#[derive(Debug, Clone, Copy)]
enum Misbehaviour {
    /// Sends this many bytes, then nothing.
    Stall(usize),
    /// Sends one byte at a time, with this pause.
    Drip(Duration),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_dripping_bodies_are_cut_with_a_json_408() {
    let _limit = crate::limit::minutes(5);
    let budget = BodyBudget::new(64 << 20, 64 << 20);
    let w = world(ApiConfig {
        body_timeout: Duration::from_millis(500),
        min_body_rate: 4 << 10,
        body_budget: budget.clone(),
        ..ApiConfig::default()
    })
    .await;
    let mut rng = StdRng::seed_from_u64(0xB0D7);
    let routes = [
        ("/v1/jobs", "application/json"),
        ("/v1/tasks", "application/json"),
        ("/v1/modules", "application/wasm"),
    ];
    let mut clients = JoinSet::new();
    for i in 0..18 {
        let (path, content_type) = routes[i % routes.len()];
        let chunked = (i / routes.len()) % 2 == 1;
        let misbehaviour = if i % 4 < 2 {
            Misbehaviour::Stall(rng.random_range(0..200))
        } else {
            Misbehaviour::Drip(Duration::from_millis(rng.random_range(20..100)))
        };
        let declared = 1000;
        let framing = if chunked {
            format!("Content-Type: {content_type}\r\nTransfer-Encoding: chunked")
        } else {
            format!("Content-Type: {content_type}\r\nContent-Length: {declared}")
        };
        let head = head("POST", path, &w.a, Some(&framing));
        let addr = w.addr.clone();
        clients.spawn(async move {
            let stream = TcpStream::connect(&addr).await.expect("connect");
            let (mut read, mut write) = stream.into_split();
            let writer = tokio::spawn(async move {
                write.write_all(head.as_bytes()).await?;
                let piece = |n: usize| -> Vec<u8> {
                    let data = vec![b' '; n];
                    if chunked && n > 0 {
                        [format!("{n:x}\r\n").into_bytes(), data, b"\r\n".to_vec()].concat()
                    } else {
                        data
                    }
                };
                match misbehaviour {
                    Misbehaviour::Stall(n) => {
                        write.write_all(&piece(n)).await?;
                        std::future::pending::<()>().await;
                    }
                    Misbehaviour::Drip(pause) => {
                        for _ in 0..declared - 1 {
                            write.write_all(&piece(1)).await?;
                            tokio::time::sleep(pause).await;
                        }
                    }
                }
                Ok::<(), std::io::Error>(())
            });
            let reply = read_reply(&mut read, &mut Vec::new()).await;
            let rest = until_closed(&mut read).await;
            writer.abort();
            (i, path, misbehaviour, reply, rest)
        });
    }
    // A well-behaved upload is served meanwhile.
    w.api.upload_job(&w.b, "noop").await;
    bounded("hostile bodies to be cut", async {
        while let Some(done) = clients.join_next().await {
            let (i, path, misbehaviour, reply, rest) = done.expect("client task");
            let reply = reply.unwrap_or_else(|| {
                panic!("client {i} ({path}, {misbehaviour:?}): closed without an answer")
            });
            reply.expect_error(408, "body_timeout");
            assert_eq!(reply.header("connection"), Some("close"), "{reply:?}");
            // And then the connection is closed.
            assert!(rest.is_empty(), "client {i}: more after the 408: {rest:?}");
        }
    })
    .await;
    assert_eq!(budget.in_use(), 0, "cut bodies released their budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_the_limit_time_out_and_a_new_client_is_served() {
    let _limit = crate::limit::minutes(5);
    let w = world(ApiConfig {
        max_connections: 8,
        header_timeout: Duration::from_secs(1),
        ..ApiConfig::default()
    })
    .await;
    // Three times the limit of connections that never send a byte, and a
    // few that make one request and then sit idle on keep-alive.
    let mut idle = JoinSet::new();
    for _ in 0..24 {
        let mut stream = TcpStream::connect(&w.addr).await.expect("connect");
        idle.spawn(async move { until_closed(&mut stream).await });
    }
    for _ in 0..4 {
        let mut stream = TcpStream::connect(&w.addr).await.expect("connect");
        let request = head("GET", "/v1/stats", &w.a, None);
        idle.spawn(async move {
            stream.write_all(request.as_bytes()).await.expect("write");
            let mut buf = Vec::new();
            let reply = read_reply(&mut stream, &mut buf).await.expect("an answer");
            assert_eq!(reply.status, 200, "{reply:?}");
            let rest = until_closed(&mut stream).await;
            assert!(rest.is_empty() && buf.is_empty());
            Vec::new()
        });
    }
    // A new client is served (once idle ones ahead of it have timed out).
    let served = bounded("a new client to be served", w.api.get("/v1/stats", &w.b)).await;
    served.expect(200, "");
    // Every idle connection was closed by the server.
    let mut closed = 0;
    bounded("idle connections to be closed", async {
        while let Some(done) = idle.join_next().await {
            let got = done.expect("idle connection task");
            assert!(got.is_empty(), "an idle connection got {got:?}");
            closed += 1;
        }
    })
    .await;
    assert_eq!(closed, 28);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_limit_full_a_new_client_is_served_once_a_connection_frees() {
    let _limit = crate::limit::minutes(5);
    let w = world(ApiConfig {
        max_connections: 4,
        header_timeout: Duration::from_secs(300),
        ..ApiConfig::default()
    })
    .await;
    // Four connections, each answered once (so each holds a slot), then idle.
    let request = head("GET", "/v1/stats", &w.a, None);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(&w.addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let reply = bounded(
            "a held connection's answer",
            read_reply(&mut stream, &mut Vec::new()),
        )
        .await
        .expect("an answer");
        assert_eq!(reply.status, 200, "{reply:?}");
        held.push(stream);
    }
    // A fifth is not served while all four slots are held... (a server
    // that served it would answer at once: the pause is room for that
    // mistake to show, not a synchronisation)
    let addr = w.addr.clone();
    let fifth = tokio::spawn(async move { raw_request(&addr, request.as_bytes()).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !fifth.is_finished(),
        "a fifth connection was served past a limit of 4"
    );
    // ...and is as soon as one of them closes.
    drop(held.pop());
    let reply = bounded("the fifth client's answer", fifth)
        .await
        .expect("fifth client task")
        .expect("an answer");
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_answers_is_dropped() {
    let _limit = crate::limit::minutes(5);
    let w = world(ApiConfig {
        body_timeout: Duration::from_millis(500),
        min_body_rate: 64 << 10,
        header_timeout: Duration::from_secs(300),
        ..ApiConfig::default()
    })
    .await;
    // Pipelined requests for the dashboard (a few KiB each): far more
    // answer bytes than the socket buffers between server and client hold.
    let page = w.api.send(Method::GET, "/", None, None).await;
    assert_eq!(page.status.as_u16(), 200);
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("a small receive buffer");
    let addr = w.addr.parse().expect("socket address");
    let stream = socket.connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let requests = 4000;
    let writer = tokio::spawn(async move {
        // Padded so that requests not yet read are left in the server's
        // socket when it gives up (it then resets the connection rather
        // than sending what its buffers still hold).
        let one = format!(
            "GET / HTTP/1.1\r\nHost: api\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(512)
        );
        for _ in 0..requests {
            if write.write_all(one.as_bytes()).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await;
    });
    // The client reads, but at a trickle far below the minimum rate.
    let got = bounded("a slow reader to be dropped", async {
        let mut got = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    writer.abort();
    let answered = String::from_utf8_lossy(&got)
        .matches("HTTP/1.1 200")
        .count();
    assert!(
        answered < requests,
        "all {requests} answers were sent to a client reading 10 KiB/s"
    );
    // Everyone else is still served.
    w.api.get("/v1/stats", &w.a).await.expect(200, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_and_cuts_requests_past_the_grace() {
    let _limit = crate::limit::minutes(5);
    let catalog: Arc<dyn Catalog> = Arc::new(MemoryCatalog::new());
    let token = api_support::tenant(&catalog, "alpha", TenantLimits::default()).await;
    let registry = Registry::with_catalog(support::sandbox(), catalog);
    let broker = EmbeddedBroker::new();
    let config = ApiConfig {
        max_wait: Duration::from_secs(300),
        header_timeout: Duration::from_secs(300),
        ..ApiConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let router = corral::api::router(corral::api::ApiState {
        broker: broker.clone(),
        registry: registry.clone(),
        config: config.clone(),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        corral::api::serve_with(listener, router, &config, async move {
            let _ = stopped.await;
        })
        .await
    });
    // A task nobody runs, long-polled; and an idle keep-alive connection.
    let task = {
        let api = Api::connect(&format!("http://{addr}"));
        let hash = api.upload_job(&token, "noop").await;
        api.post(
            "/v1/jobs",
            &token,
            &serde_json::json!({"name": "j", "handlers": [hash]}),
        )
        .await
        .expect(201, "");
        api.enqueue(&token, "j", serde_json::json!({})).await
    };
    let mut waiting = TcpStream::connect(&addr).await.expect("connect");
    waiting
        .write_all(head("GET", &format!("/v1/tasks/{task}/wait"), &token, None).as_bytes())
        .await
        .expect("write");
    let mut idle = TcpStream::connect(&addr).await.expect("connect");
    idle.write_all(head("GET", "/v1/stats", &token, None).as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    let reply = read_reply(&mut idle, &mut buf).await.expect("an answer");
    assert_eq!(reply.status, 200, "{reply:?}");

    stop.send(()).expect("the server is running");
    // The idle connection is closed, the long poll is cut after the grace,
    // and the server returns.
    assert!(
        bounded("the idle connection to close", until_closed(&mut idle))
            .await
            .is_empty()
    );
    let cut = bounded("the long poll to be cut", until_closed(&mut waiting)).await;
    assert!(cut.is_empty(), "the long poll was answered: {cut:?}");
    bounded("the server to return", server)
        .await
        .expect("server task")
        .expect("served");
    // No new connection is taken.
    assert!(TcpStream::connect(&addr).await.is_err());
}

/// Opens an upload of `length` bytes with `Expect: 100-continue`; answers
/// the connection and whether the server asked for the body (`Ok`) or
/// refused it up front (`Err` with its answer).
async fn open_upload(addr: &str, token: &str, length: usize) -> (TcpStream, Result<(), RawReply>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let framing = format!(
        "Content-Type: application/wasm\r\nContent-Length: {length}\r\nExpect: 100-continue"
    );
    stream
        .write_all(head("POST", "/v1/modules", token, Some(&framing)).as_bytes())
        .await
        .expect("write the head");
    let reply = read_reply(&mut stream, &mut Vec::new())
        .await
        .expect("an interim or final answer");
    if reply.status == 100 {
        (stream, Ok(()))
    } else {
        (stream, Err(reply))
    }
}

/// Sends the body of an admitted upload (zeros: not wasm) and reads the
/// final answer.
async fn finish_upload(mut stream: TcpStream, length: usize) -> RawReply {
    stream
        .write_all(&vec![0u8; length])
        .await
        .expect("write the body");
    read_reply(&mut stream, &mut Vec::new())
        .await
        .expect("a final answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_body_budget_get_a_json_503_and_memory_stays_bounded() {
    let _limit = crate::limit::minutes(5);
    const MIB: usize = 1 << 20;
    let budget = BodyBudget::new(4 << 20, 4 << 20);
    let w = world(ApiConfig {
        body_budget: budget.clone(),
        ..ApiConfig::default()
    })
    .await;
    let mut rng = StdRng::seed_from_u64(0xB4D6E7);
    let sizes: Vec<usize> = (0..12)
        .map(|_| rng.random_range(MIB..MIB * 5 / 2))
        .collect();
    // All open at once; each is admitted (its bytes reserved) or refused.
    let mut opening = JoinSet::new();
    for (i, size) in sizes.iter().copied().enumerate() {
        let addr = w.addr.clone();
        let token = if i % 2 == 0 { w.a.clone() } else { w.b.clone() };
        opening.spawn(async move { (size, open_upload(&addr, &token, size).await) });
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    bounded("uploads to be admitted or refused", async {
        while let Some(done) = opening.join_next().await {
            let (size, (stream, decision)) = done.expect("upload task");
            match decision {
                Ok(()) => admitted.push((stream, size)),
                Err(reply) => {
                    reply.expect_error(503, "body_budget_full");
                    assert_eq!(reply.header("retry-after"), Some("1"), "{reply:?}");
                    refused += 1;
                }
            }
        }
    })
    .await;
    let held: usize = admitted.iter().map(|(_, size)| size).sum();
    assert!(refused > 0, "12 uploads of 1 MiB or more all fit in 4 MiB");
    assert!(!admitted.is_empty());
    assert_eq!(
        budget.in_use(),
        held as u64,
        "the budget counts what is held"
    );
    assert!(budget.peak() <= budget.capacity());
    // The admitted ones finish normally (refused as content: zeros are not
    // wasm), and the budget is whole again.
    for (stream, size) in admitted {
        let reply = bounded("an admitted upload's answer", finish_upload(stream, size)).await;
        reply.expect_error(422, "not_wasm");
    }
    assert_eq!(budget.in_use(), 0);
    assert!(budget.peak() <= budget.capacity());
    assert_eq!(budget.refused(), refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_take_the_whole_body_budget() {
    let _limit = crate::limit::minutes(5);
    const MIB: usize = 1 << 20;
    let budget = BodyBudget::new(8 << 20, 3 << 20);
    let w = world(ApiConfig {
        body_budget: budget.clone(),
        ..ApiConfig::default()
    })
    .await;
    // Alpha's first body always fits; its second would pass its share.
    let (first, decision) = open_upload(&w.addr, &w.a, 2 * MIB).await;
    assert!(decision.is_ok(), "{decision:?}");
    let (_, decision) = open_upload(&w.addr, &w.a, 2 * MIB).await;
    let refused = decision.expect_err("alpha's second body passes its share");
    refused.expect_error(503, "body_budget_full");
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("tenant")
    );
    // Beta still has room.
    let (second, decision) = open_upload(&w.addr, &w.b, 2 * MIB).await;
    assert!(decision.is_ok(), "{decision:?}");
    assert_eq!(budget.in_use(), 4 << 20);
    finish_upload(first, 2 * MIB)
        .await
        .expect_error(422, "not_wasm");
    finish_upload(second, 2 * MIB)
        .await
        .expect_error(422, "not_wasm");
    assert_eq!(budget.in_use(), 0);

    // A body without a declared length reserves as its chunks arrive.
    let mut chunked = TcpStream::connect(&w.addr).await.expect("connect");
    chunked
        .write_all(
            head(
                "POST",
                "/v1/modules",
                &w.a,
                Some("Content-Type: application/wasm\r\nTransfer-Encoding: chunked"),
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    for _ in 0..6 {
        let piece = [
            format!("{:x}\r\n", MIB / 2).into_bytes(),
            vec![0u8; MIB / 2],
            b"\r\n".to_vec(),
        ]
        .concat();
        chunked.write_all(&piece).await.expect("write a chunk");
    }
    bounded("the chunked body to be reserved", async {
        while budget.in_use() < 3 << 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Beta's 6 MiB does not fit beside it.
    let (_, decision) = open_upload(&w.addr, &w.b, 6 * MIB).await;
    decision
        .expect_err("6 MiB beside 3 MiB in flight, in 8 MiB")
        .expect_error(503, "body_budget_full");
    chunked.write_all(b"0\r\n\r\n").await.expect("end the body");
    let reply = read_reply(&mut chunked, &mut Vec::new())
        .await
        .expect("an answer");
    reply.expect_error(422, "not_wasm");
    assert_eq!(budget.in_use(), 0);
    assert!(budget.peak() <= budget.capacity());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_up_by_a_stalled_store_is_cut_at_the_request_timeout() {
    let _limit = crate::limit::minutes(5);
    let redis = RedisServer::start();
    let catalog: Arc<dyn Catalog> = Arc::new(
        RedisCatalog::connect(&redis.url())
            .await
            .expect("connect the Redis catalog"),
    );
    let token = api_support::tenant(&catalog, "alpha", TenantLimits::default()).await;
    let broker = RedisBroker::connect(RedisConfig::new(redis.url()))
        .await
        .expect("connect the Redis broker");
    let registry = Registry::with_catalog(support::sandbox(), catalog);
    let api = api_support::serve(
        broker,
        registry,
        ApiConfig {
            request_timeout: Duration::from_millis(500),
            ..ApiConfig::default()
        },
    )
    .await;
    api.get("/v1/stats", &token).await.expect(200, "");
    // Redis answers no one for a while: every route waits on it.
    redis.cli(&["CLIENT", "PAUSE", "5000", "ALL"]);
    for path in ["/v1/stats", "/v1/jobs", "/v1/tasks"] {
        let reply = api.get(path, &token).await;
        reply.expect(503, "request_timeout");
    }
    // Once Redis is back, so is the API.
    bounded("the API to answer again", async {
        loop {
            if api.get("/v1/stats", &token).await.status.as_u16() == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}

/// Percent-encodes `bytes` whole (every byte as `%XX`).
fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// Byte strings that are not UTF-8: one invalid sequence among valid text.
fn not_utf8(rng: &mut StdRng) -> Vec<u8> {
    let invalid: [&[u8]; 6] = [
        b"\xFF",
        b"\xC3\x28",
        b"\xE2\x82",
        b"\x80",
        b"\xF0\x28\x8C\xBC",
        b"\xED\xA0\x80",
    ];
    let mut bytes: Vec<u8> = (0..rng.random_range(0..6))
        .map(|_| rng.random_range(b'a'..=b'z'))
        .collect();
    let at = rng.random_range(0..=bytes.len());
    let bad = invalid[rng.random_range(0..invalid.len())];
    bytes.splice(at..at, bad.iter().copied());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_of_every_kind_answer_json() {
    let _limit = crate::limit::minutes(5);
    let w = world(ApiConfig {
        max_header_bytes: 8 << 10,
        ..ApiConfig::default()
    })
    .await;
    let mut rng = StdRng::seed_from_u64(0x7E57);
    // Path parameters that do not decode to UTF-8, on every route with one.
    for _ in 0..40 {
        let segment = encode(&not_utf8(&mut rng));
        for (method, path) in [
            ("GET", format!("/v1/jobs/{segment}")),
            ("GET", format!("/v1/modules/{segment}")),
            ("GET", format!("/v1/tasks/{segment}")),
            ("GET", format!("/v1/tasks/{segment}/wait")),
            ("POST", format!("/v1/tasks/{segment}/retry")),
            ("POST", format!("/v1/tasks/{segment}/cancel")),
            ("DELETE", format!("/v1/tasks/{segment}")),
            ("GET", format!("/v1/queues/{segment}/stats")),
            ("POST", format!("/v1/queues/{segment}/pause")),
            ("POST", format!("/v1/queues/{segment}/resume")),
            ("POST", format!("/v1/queues/{segment}/retry-dead")),
            ("DELETE", format!("/v1/queues/{segment}/tasks?state=dead")),
        ] {
            let reply = raw_request(&w.addr, head(method, &path, &w.a, None).as_bytes())
                .await
                .expect("an answer");
            reply.expect_error(400, "bad_request");
            // Without a token the answer is the 401, before the path is read.
            let reply = raw_request(
                &w.addr,
                format!("{method} {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
            )
            .await
            .expect("an answer");
            reply.expect_error(401, "unauthorized");
        }
        // Routes that do not exist, with such bytes anywhere.
        let reply = raw_request(
            &w.addr,
            head("GET", &format!("/v1/{segment}"), &w.a, None).as_bytes(),
        )
        .await
        .expect("an answer");
        reply.expect_error(404, "route_not_found");
    }
    // Queries that do not parse, methods a route does not take.
    let mut cases: Vec<(String, String, u16)> = Vec::new();
    for query in [
        "limit=abc",
        "limit=-1",
        "limit=99999999999999999999999",
        "state=%FF",
        "state=",
        "oops=1",
        "limit=1&limit=2",
    ] {
        cases.push(("GET".into(), format!("/v1/tasks?{query}"), 400));
    }
    for query in [
        "state=zombie",
        "state=%FF",
        "oops=1",
        "state=dead&state=dead",
    ] {
        cases.push(("DELETE".into(), format!("/v1/queues/q/tasks?{query}"), 400));
    }
    cases.push(("GET".into(), "/v1/tasks?cursor=nonsense".into(), 400));
    for query in [
        "version=x",
        "version=-1",
        "version=%FF",
        "version=4294967296",
    ] {
        cases.push(("GET".into(), format!("/v1/jobs/j?{query}"), 400));
    }
    for query in ["timeout_ms=x", "timeout_ms=-5", "timeout_ms=%00"] {
        cases.push((
            "GET".into(),
            format!("/v1/tasks/0190a5c2-7a1e-7cc2-9a41-3f1d7e2b9c10/wait?{query}"),
            400,
        ));
    }
    for path in [
        "/v1/jobs",
        "/v1/tasks",
        "/v1/modules",
        "/v1/stats",
        "/v1/jobs/j",
        "/v1/tenants",
        "/v1/queues",
        "/v1/workers",
        "/v1/queues/q/pause",
    ] {
        for method in ["PUT", "PATCH", "DELETE", "FROB"] {
            // Removing a job is a route.
            if (method, path) != ("DELETE", "/v1/jobs/j") {
                cases.push((method.into(), path.into(), 405));
            }
        }
    }
    for (method, path, status) in cases {
        let request = head(&method, &path, &w.a, Some("Content-Length: 0"));
        let reply = raw_request(&w.addr, request.as_bytes())
            .await
            .unwrap_or_else(|| panic!("{method} {path}: no answer"));
        assert_eq!(reply.status, status, "{method} {path}: {reply:?}");
        reply.expect_error(status, "");
    }
    // Requests hyper itself refuses before any route runs: a status, an
    // empty body (never text), and the connection closed.
    let long = "x".repeat(16 << 10);
    for request in [
        b"GET /v1/st\xFFats HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        b"GET /v1/stats HTTP/1.1\r\nBad Header: 1\r\n\r\n".to_vec(),
        b"GET  HTTP/1.1\r\n\r\n".to_vec(),
        b"POST /v1/tasks HTTP/1.1\r\nContent-Length: abc\r\n\r\n".to_vec(),
        b"POST /v1/tasks HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec(),
        format!("GET /v1/stats HTTP/1.1\r\nX-Long: {long}\r\n\r\n").into_bytes(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
    ] {
        let mut stream = TcpStream::connect(&w.addr).await.expect("connect");
        stream.write_all(&request).await.expect("write");
        let reply = bounded("hyper's answer", async {
            let reply = read_reply(&mut stream, &mut Vec::new()).await;
            let rest = until_closed(&mut stream).await;
            (reply, rest)
        })
        .await;
        if let (Some(reply), _) = &reply {
            assert!(
                (400..=505).contains(&reply.status),
                "{:?}: {reply:?}",
                String::from_utf8_lossy(&request)
            );
            assert!(reply.body.is_empty(), "{reply:?}");
            assert!(
                !reply
                    .header("content-type")
                    .is_some_and(|t| t.starts_with("text/")),
                "{reply:?}"
            );
        }
    }
    // The server is none the worse for any of it.
    w.api
        .send(Method::GET, "/v1/stats", Some(&w.a), None)
        .await
        .expect(200, "");
}
