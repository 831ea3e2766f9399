//! Trace export over OTLP (the `otlp` feature): a real `corral demo`
//! process, pointed by the standard variable at a small OTLP/HTTP receiver
//! this test runs on loopback, sends its task and handler spans there.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One request an OTLP client sent: its path and body.
struct Export {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// Accepts HTTP/1.1 requests (keep-alive too) and answers each `200`,
/// passing it on.
async fn receive(listener: TcpListener, out: mpsc::UnboundedSender<Export>) {
    while let Ok((mut conn, _)) = listener.accept().await {
        let out = out.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                // Read a head, then its body.
                let head_end = loop {
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    let mut chunk = [0u8; 8192];
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let header = |name: &str| {
                    head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case(name)
                            .then(|| v.trim().to_owned())
                    })
                };
                let len: usize = header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let mut chunk = [0u8; 8192];
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let path = head
                    .lines()
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .unwrap_or_default()
                    .to_owned();
                let _ = out.send(Export {
                    path,
                    content_type: header("content-type").unwrap_or_default(),
                    body: buf[head_end..head_end + len].to_vec(),
                });
                buf.drain(..head_end + len);
                let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                if conn.write_all(ok).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_exports_its_task_and_handler_spans_over_otlp() {
    let _limit = crate::limit::minutes(5);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(receive(listener, tx));

    let demo = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_corral"))
            .arg("demo")
            .arg("--jobs-dir")
            .arg(crate::support::jobs_dir())
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
            .env("OTEL_SERVICE_NAME", "corral-otlp-test")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run corral demo")
    })
    .await
    .expect("join");
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );

    // The process flushed on its way out: everything has arrived.
    let mut body = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(30);
    while !(contains(&body, "handler") && contains(&body, "text-stats")) {
        let left = give_up.saturating_duration_since(Instant::now());
        let Ok(Some(export)) = tokio::time::timeout(left, rx.recv()).await else {
            panic!(
                "no task and handler spans exported; got {} bytes",
                body.len()
            );
        };
        assert_eq!(export.path, "/v1/traces");
        assert_eq!(export.content_type, "application/x-protobuf");
        body.extend_from_slice(&export.body);
    }
    assert!(contains(&body, "corral-otlp-test"), "service name missing");
    assert!(contains(&body, "task"), "no task span");
    assert!(contains(&body, "attempt"), "task span without its attempt");
}
