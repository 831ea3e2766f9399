//! Redis servers for tests: each on a free loopback port, in a temp dir of
//! its own, never the machine's Redis on 6379.
//!
//! [`RedisServer::start`] spawns `redis-server` under a small `sh` guard
//! that holds the server's pid and kills it when the guard's stdin closes.
//! The test keeps the write end of that pipe, so the server stops when the
//! [`RedisServer`] is dropped, and also when the test process dies in any
//! way (even SIGKILL): the kernel closes the pipe. [`cluster`] starts one
//! three-master Redis Cluster per test binary, shared by the tests (each
//! uses its own key prefix), created with `redis-cli --cluster create`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A `redis-server` of the test's own.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    guard: Option<(Child, ChildStdin)>,
    /// The server's pid as the guard printed it; `None` when it could not
    /// be read, and then no signal is ever sent by pid.
    pid: Option<u32>,
    /// Whether `port` speaks TLS only ([`RedisServer::start_tls`]).
    tls: bool,
}

/// A loopback port nothing listens on now (nor, if `bus`, on port + 10000,
/// which a cluster node also needs).
pub fn free_port(bus: bool) -> u16 {
    for _ in 0..1000 {
        let port = if bus {
            20_000 + rand::random::<u16>() % 20_000
        } else {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            listener.local_addr().expect("local addr").port()
        };
        if port == 6379 || port > 55_000 {
            continue;
        }
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && (!bus || free(port + 10_000)) {
            return port;
        }
    }
    panic!("no free loopback port found");
}

/// Sends PING over a raw connection; true on `+PONG`.
pub fn ping(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl RedisServer {
    /// A server with persistence off.
    pub fn start() -> Self {
        Self::start_with(&["--appendonly", "no"])
    }

    /// A server with extra `redis-server` options (e.g. `--appendonly yes`).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let mut server = Self {
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            guard: None,
            pid: None,
            tls: false,
        };
        for _ in 0..5 {
            server.port = free_port(extra.contains(&"--cluster-enabled"));
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start; see {}", server.log().display());
    }

    /// A server speaking only TLS on its port, given its `--tls-*`
    /// certificate options in `extra`; `Err` with its log when it does not
    /// start (a redis-server built without TLS says so there).
    pub fn start_tls(extra: &[&str]) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let mut server = Self {
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            guard: None,
            pid: None,
            tls: true,
        };
        for _ in 0..3 {
            server.port = free_port(false);
            if server.spawn() {
                return Ok(server);
            }
        }
        Err(std::fs::read_to_string(server.log()).unwrap_or_default())
    }

    /// `rediss://127.0.0.1:<port>`, for a server from `start_tls`.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// Whether the server answers: PING, or for TLS (which a raw PING
    /// cannot speak) a connection accepted.
    fn answers(&self) -> bool {
        if self.tls {
            let addr = ([127, 0, 0, 1], self.port).into();
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        } else {
            ping(self.port)
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Starts the server on `self.port`; false if it did not answer PING.
    fn spawn(&mut self) -> bool {
        let mut args: Vec<String> = vec![
            "--port".into(),
            self.port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            self.dir.path().display().to_string(),
            "--logfile".into(),
            self.log().display().to_string(),
            "--save".into(),
            "".into(),
            "--daemonize".into(),
            "no".into(),
        ];
        if self.tls {
            // The plain port off (the last `--port` wins), TLS on this one.
            args.extend(["--port", "0", "--tls-port"].map(String::from));
            args.push(self.port.to_string());
        }
        args.extend(self.extra.iter().cloned());
        // The guard: start the server, print its pid, wait for stdin to
        // close (drop, or this process dying), then stop it gracefully.
        let script = r#"server="$1"; shift; "$server" "$@" & pid=$!; echo $pid; read _unused; kill -TERM $pid 2>/dev/null; wait $pid"#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(redis_server())
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh for redis-server");
        let stdin = child.stdin.take().expect("guard stdin");
        let stdout = child.stdout.take().expect("guard stdout");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        self.pid = line.trim().parse().ok().filter(|pid| *pid > 1);
        self.guard = Some((child, stdin));
        let give_up = Instant::now() + Duration::from_secs(10);
        while Instant::now() < give_up {
            if self.answers() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop();
        false
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server gracefully (SIGTERM: it writes its append-only file
    /// out) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.guard.take() {
            drop(stdin);
            let give_up = Instant::now() + Duration::from_secs(20);
            while Instant::now() < give_up {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // The server outlived its guard's SIGTERM by 20 s: kill it by
            // the pid the guard printed, and only by that.
            if let Some(pid) = self.pid {
                let killed = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(
                    killed || !Path::new(&format!("/proc/{pid}")).exists(),
                    "could not kill redis-server {pid}"
                );
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server and starts it again on the same port and data
    /// directory (what it persisted comes back).
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "redis-server did not come back on port {}",
            self.port
        );
    }

    /// Runs `redis-cli` against this server; returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `redis-server` as found on `PATH`; fails the test when there is none.
pub fn redis_server() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| candidate.is_file())
    });
    found.expect("redis-server is not on PATH (scripts/test.sh installs it)")
}

/// Whether this `redis-server` was built with TLS: one without it refuses
/// `--tls-port` as a bad directive (one with it exits at once here, having
/// nothing to listen on).
pub fn redis_supports_tls() -> bool {
    let out = Command::new(redis_server())
        .args(["--port", "0", "--tls-port", "0", "--save", ""])
        .stdin(Stdio::null())
        .output()
        .expect("run redis-server");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    !said.contains("Bad directive")
}

/// Runs `redis-cli -p port args...`; returns stdout.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A three-master Redis Cluster.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    fn create() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                    "--appendonly",
                    "no",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let give_up = Instant::now() + Duration::from_secs(30);
        while !nodes
            .iter()
            .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(
                Instant::now() < give_up,
                "the cluster never reached state ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { nodes }
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Every node's port.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }
}

/// The test binary's cluster, created on first use and stopped when the
/// process exits (the guards' pipes close).
pub fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::create)
}

/// A key prefix no other test uses.
pub fn unique_prefix(name: &str) -> String {
    format!("t-{name}-{:08x}", rand::random::<u32>())
}

/// A `corral worker` process (the real binary), killed (SIGKILL) on drop.
pub struct WorkerProcess {
    child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
    /// Its compiled-component cache, never the user's.
    _cache: tempfile::TempDir,
}

impl WorkerProcess {
    /// Starts `corral worker` against `url` under key `prefix` with the
    /// example jobs, `extra` arguments appended; stderr (with handler-run
    /// events at debug level, no colours) goes to `log`.
    pub fn start(url: &str, prefix: &str, extra: &[&str], log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("worker log file");
        let cache = tempfile::tempdir().expect("worker cache dir");
        let child = Command::new(env!("CARGO_BIN_EXE_corral"))
            .arg("worker")
            .args(["--redis", url, "--prefix", prefix])
            .arg("--cache-dir")
            .arg(cache.path())
            .arg("--jobs-dir")
            .arg(super::jobs_dir())
            .args(extra)
            .env("RUST_LOG", "warn,corral_worker::executor=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start corral worker");
        Self {
            child,
            log,
            _cache: cache,
        }
    }

    /// Waits (at most 60 s) until the worker has registered its jobs: it
    /// says so on its start line (`corral worker ID: queues …`). A task of a
    /// job not registered yet is refused by `corral enqueue`.
    pub fn wait_started(&mut self) {
        let child = &mut self.child;
        wait_for_start(&self.log, || matches!(child.try_wait(), Ok(None)));
    }

    /// SIGKILL: no shutdown, no hand-back; its leases must expire.
    pub fn kill(&mut self) {
        if self.running() {
            self.child.kill().expect("SIGKILL the worker");
        }
        self.child.wait().expect("reap the worker");
    }

    /// SIGTERM and wait for a clean exit; true if it exited successfully.
    pub fn stop(&mut self) -> bool {
        // `child` is not reaped yet, so its pid is still its own.
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent || !self.running(), "could not SIGTERM the worker");
        let give_up = Instant::now() + Duration::from_secs(30);
        while Instant::now() < give_up {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// Its process id (valid until it is reaped by `kill` or `stop`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.running() {
            self.kill();
        }
    }
}

/// Waits until the `corral worker` logging to `log` prints its start line
/// (its jobs are registered then, so `corral enqueue` finds them); fails
/// if `running` says it exited, or after 60 s.
pub fn wait_for_start(log: &Path, mut running: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().any(|l| l.starts_with("corral worker ")) {
            return;
        }
        assert!(running(), "the worker exited before starting: {text}");
        assert!(Instant::now() < give_up, "the worker did not start: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One handler run, as the worker's `handler finished` debug event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerRun {
    /// The task.
    pub task: String,
    /// The handler's index in the chain.
    pub handler: u32,
    /// The attempt it ran in.
    pub attempt: u32,
}

/// Every handler run in a worker's log (lines cut short by a SIGKILL are
/// skipped).
pub fn handler_runs(log: &Path) -> Vec<HandlerRun> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("handler finished"))
        .filter_map(|l| {
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(str::to_owned)
            };
            Some(HandlerRun {
                task: field("task=")?,
                handler: field("handler=")?.parse().ok()?,
                attempt: field("attempt=")?.parse().ok()?,
            })
        })
        .collect()
}
