//! Settings from `--config FILE`, `CORRAL_*` variables and flags, as real
//! `corral` processes see them: the documented example file loads and
//! repeats the built-in defaults; a flag beats the environment, which beats
//! the file (in `--print-config`, and in what a worker and `corral serve`
//! actually connect to); a broken file stops the command with an error
//! naming it. And Redis over TLS: a worker, `enqueue` and `wait` reach a
//! `rediss://` server that checks client certificates, with a CA made by
//! the test.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;

use corral::catalog::RedisCatalog;
use corral::registry::Registry;
use corral::sandbox::Limits;

use crate::support;
use crate::support::redis::{RedisServer, redis_supports_tls, unique_prefix, wait_for_start};

/// The example file at the top of the repository.
fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../corral.example.toml")
}

/// `corral ARGS` with no `CORRAL_*` variable of the test's environment.
fn corral(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CORRAL_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run corral")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A process killed (SIGKILL) and reaped on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `--print-config` output as `table.key` (`key` at the top) to (value,
/// source); an unset setting is `("unset", "")`.
fn settings(printed: &str) -> BTreeMap<String, (String, String)> {
    let mut table = String::new();
    let mut found = BTreeMap::new();
    for line in printed.lines() {
        let full = |key: &str| {
            if table.is_empty() {
                key.to_owned()
            } else {
                format!("{table}.{key}")
            }
        };
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = name.to_owned();
        } else if let Some(key) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(": not set"))
        {
            found.insert(full(key), ("unset".to_owned(), String::new()));
        } else if let Some((setting, source)) = line.rsplit_once("  # ")
            && let Some((key, value)) = setting.split_once(" = ")
        {
            found.insert(full(key), (value.to_owned(), source.to_owned()));
        }
    }
    found
}

/// `corral COMMAND --print-config` with `args` and `env`; its settings.
fn print_config(
    command: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (String, BTreeMap<String, (String, String)>) {
    let mut cmd = corral(&[command, "--print-config"]);
    cmd.args(args).envs(env.iter().copied());
    let out = run(&mut cmd);
    let printed = text(&out.stdout);
    assert!(
        out.status.success(),
        "{command} {args:?}: {}{printed}",
        text(&out.stderr)
    );
    let found = settings(&printed);
    (printed, found)
}

/// The example loads for both commands, sets nothing but the defaults, and
/// names every setting either command has (so it stays complete when a
/// flag is added).
#[test]
fn the_example_file_loads_and_repeats_the_defaults() {
    let _limit = crate::limit::minutes(2);
    let example = example();
    let example_text = std::fs::read_to_string(&example).expect("read corral.example.toml");
    let file = example.to_string_lossy().into_owned();
    for command in ["worker", "serve"] {
        let (_, defaults) = print_config(command, &[], &[]);
        let (printed, loaded) = print_config(command, &["--config", &file], &[]);
        assert!(
            defaults.len() > 20,
            "{command}: too few settings: {defaults:?}"
        );
        assert_eq!(
            defaults.keys().collect::<Vec<_>>(),
            loaded.keys().collect::<Vec<_>>(),
            "{command}"
        );
        for (key, (value, source)) in &loaded {
            let (default, default_source) = &defaults[key];
            assert_eq!(
                value, default,
                "{command}: {key} in the example is not the default"
            );
            assert!(
                matches!(default_source.as_str(), "default" | ""),
                "{key}: {default_source}"
            );
            let name = key.rsplit('.').next().unwrap_or(key);
            let written = example_text.contains(&format!("\n{name} = "));
            let documented = written || example_text.contains(&format!("\n# {name} = "));
            assert!(
                documented,
                "{command}: `{name}` is missing from the example"
            );
            // What the example writes out came from the file.
            if written && value != "unset" {
                assert_eq!(source, "file", "{command}: {key}\n{printed}");
            }
        }
    }
}

/// Each setting from the layer that should win it, in `--print-config`;
/// then what it printed, read back with `--config`, gives the same values.
#[test]
fn a_flag_beats_the_environment_which_beats_the_file() {
    let _limit = crate::limit::minutes(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("corral.toml");
    std::fs::write(
        &file,
        r#"
log-format = "json"
verbose = 2
prefix = "file-prefix"
redis = "redis://:hunter2@127.0.0.1:1/0"

[worker]
concurrency = 5
lease = "7s"
shutdown-grace = "3s"
queue = ["critical", "default"]
memory-mib = 32

[serve]
workers = 9
listen = "127.0.0.1:0"
"#,
    )
    .expect("write the config");
    let file = file.to_string_lossy().into_owned();
    let env = [
        ("CORRAL_WORKER_LEASE", "8s"),
        ("CORRAL_WORKER_SHUTDOWN_GRACE", "9s"),
        ("CORRAL_REDIS_PREFIX", "env-prefix"),
        ("CORRAL_VERBOSE", "1"),
    ];
    let flags = ["--config", &file, "--shutdown-grace", "4s", "-vvv"];
    let (printed, worker) = print_config("worker", &flags, &env);
    let expect = |key: &str, value: &str, source: &str| {
        let got = worker
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in\n{printed}"));
        assert_eq!(
            got,
            &(value.to_owned(), source.to_owned()),
            "{key} in\n{printed}"
        );
    };
    expect("worker.concurrency", "5", "file");
    expect("worker.lease", "\"8s\"", "env CORRAL_WORKER_LEASE");
    expect("worker.shutdown-grace", "\"4s\"", "flag");
    expect("worker.queue", "[\"critical\", \"default\"]", "file");
    expect("worker.memory-mib", "32", "file");
    expect("worker.prefix", "\"env-prefix\"", "env CORRAL_REDIS_PREFIX");
    expect("worker.redis", "\"redis://:***@127.0.0.1:1/0\"", "file");
    expect("worker.tenant", "[\"default\"]", "default");
    expect("log-format", "\"json\"", "file");
    expect("verbose", "3", "flag");
    assert!(
        !printed.contains("hunter2"),
        "a password was printed:\n{printed}"
    );

    // The top-level Redis settings reach `serve` too.
    let (printed_serve, serve) = print_config("serve", &["--config", &file], &env);
    let get = |key: &str| serve.get(key).map(|(v, s)| (v.as_str(), s.as_str()));
    assert_eq!(get("serve.workers"), Some(("9", "file")), "{printed_serve}");
    assert_eq!(
        get("serve.prefix"),
        Some(("\"env-prefix\"", "env CORRAL_REDIS_PREFIX")),
        "{printed_serve}"
    );
    assert_eq!(get("verbose"), Some(("1", "env CORRAL_VERBOSE")));

    // What was printed is a config file giving the same settings.
    let again = dir.path().join("printed.toml");
    std::fs::write(&again, &printed).expect("write the printed settings");
    let again = again.to_string_lossy().into_owned();
    let (reprinted, reread) = print_config("worker", &["--config", &again], &[]);
    for (key, (value, _)) in &worker {
        // The password was hidden, so the URL differs by design.
        if key != "worker.redis" {
            assert_eq!(&reread[key].0, value, "{key}\n{reprinted}");
        }
    }
}

/// A real worker takes its Redis URL, queue, jobs and cache setting from
/// the file and its key prefix from the environment (over the file's).
#[test]
fn a_worker_runs_on_settings_from_its_file_and_environment() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let url = server.url();
    let prefix = unique_prefix("config");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("corral.toml");
    std::fs::write(
        &file,
        format!(
            "redis = {url:?}\nprefix = \"file-prefix\"\nno-disk-cache = true\n\n\
             [worker]\nqueue = [\"cfg-q\"]\nconcurrency = 2\njobs-dir = {:?}\n",
            support::jobs_dir().to_string_lossy()
        ),
    )
    .expect("write the config");
    let log = std::fs::File::create(dir.path().join("worker.log")).expect("log file");
    let _worker = Running(
        corral(&["worker", "--config"])
            .arg(&file)
            .env("CORRAL_REDIS_PREFIX", &prefix)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start corral worker"),
    );
    wait_for_start(&dir.path().join("worker.log"), || true);
    let by_flags = ["--redis", &url, "--prefix", &prefix];
    let out = run(corral(&["enqueue", "noop", "--queue", "cfg-q"]).args(by_flags));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    let out = run(corral(&["wait", &id, "--timeout", "120s"]).args(by_flags));
    let log = std::fs::read_to_string(dir.path().join("worker.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}{}\nworker log:\n{log}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // Nothing went under the file's prefix.
    let stray = server.cli(&["--scan", "--pattern", "file-prefix*"]);
    assert!(
        stray.trim().is_empty(),
        "keys under the file's prefix: {stray}"
    );
}

/// `corral serve` honours the Redis prefix (here from its `[serve]` table,
/// over the top-level one) for its broker and its catalog: its worker finds
/// a job registered under that prefix and runs a task enqueued there.
#[test]
fn corral_serve_uses_the_prefix_of_its_config() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let url = server.url();
    let prefix = unique_prefix("serve-config");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let catalog = RedisCatalog::connect_with_prefix(&url, &prefix)
            .await
            .expect("catalog");
        let registry = Registry::with_catalog(support::sandbox(), Arc::new(catalog));
        registry
            .register_files(
                "default",
                "noop",
                &[support::job("noop")],
                Limits::default(),
            )
            .await
            .expect("register noop");
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("corral.toml");
    std::fs::write(
        &file,
        format!(
            "redis = {url:?}\nprefix = \"top-prefix\"\nno-disk-cache = true\n\n\
             [serve]\nprefix = {prefix:?}\nlisten = \"127.0.0.1:0\"\nworkers = 1\n"
        ),
    )
    .expect("write the config");
    let mut child = corral(&["serve", "--config"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start corral serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let _serve = Running(child);
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("read serve's stdout");
    assert!(first.starts_with("listening on "), "{first}");
    let by_flags = ["--redis", &url, "--prefix", &prefix];
    let out = run(corral(&["enqueue", "noop"]).args(by_flags));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    let out = run(corral(&["wait", &id, "--timeout", "120s"]).args(by_flags));
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stray = server.cli(&["--scan", "--pattern", "top-prefix*"]);
    assert!(
        stray.trim().is_empty(),
        "keys under the top-level prefix: {stray}"
    );
}

/// A missing file, bad TOML, an unknown key, a value of the wrong type and
/// one the flag refuses: exit status 2 and an error naming the file and the
/// key, never a panic; the command never starts.
#[test]
fn a_broken_config_file_is_a_clear_error() {
    let _limit = crate::limit::minutes(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let cases: [(&str, &str, &[&str]); 7] = [
        (
            "[worker]\nconcurency = 3\n",
            "worker",
            &[
                "unknown key `concurency` in [worker]",
                "valid keys there:",
                "concurrency",
                "shutdown-grace",
            ],
        ),
        (
            "concurrency = 3\n",
            "worker",
            &[
                "unknown key `concurrency` at the top level",
                "put it under [worker]",
            ],
        ),
        (
            "[serve]\nlog-format = \"json\"\n",
            "serve",
            &["unknown key `log-format` in [serve]", "global option"],
        ),
        (
            "[worker]\nlease = [\"1s\"]\n",
            "worker",
            &["[worker] `lease`", "expected one value, found an array"],
        ),
        (
            "[worker]\nconcurrency = \"lots\"\n",
            "worker",
            &["[worker] `concurrency`", "invalid value 'lots'"],
        ),
        (
            "log-format = \"xml\"\n",
            "serve",
            &["`log-format`", "invalid value 'xml'", "text, json"],
        ),
        ("[worker\nqueue = 1\n", "worker", &["is not valid TOML"]),
    ];
    for (i, (content, command, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&file, content).expect("write the config");
        let out = run(corral(&[command, "--redis", "redis://127.0.0.1:1", "--config"]).arg(&file));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{content}: {stderr}");
        assert!(
            stderr.contains(&file.to_string_lossy().into_owned()),
            "{stderr}"
        );
        for part in *expected {
            assert!(stderr.contains(part), "{content}: no `{part}` in {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // A file that is not there, named by the environment.
    let missing = dir.path().join("missing.toml");
    let out = run(corral(&["worker"]).env("CORRAL_CONFIG", &missing));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read the config file") && stderr.contains("missing.toml"),
        "{stderr}"
    );
}

/// A throwaway CA, and a server and a client certificate it signed, as PEM
/// files in `dir`: (ca, server cert, server key, client cert, client key).
fn certificates(dir: &Path) -> [PathBuf; 5] {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
        ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    };
    // Every certificate has a name of its own: a leaf named like its issuer
    // would look self-signed.
    let named = |alt_names: Vec<String>, name: &str| {
        let mut params = CertificateParams::new(alt_names).expect("certificate params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
    };
    let mut ca = named(Vec::new(), "corral test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
        .expect("self-sign the CA");
    let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
        let mut params = named(vec![name.to_owned()], name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca).expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf("corral-test-client", ExtendedKeyUsagePurpose::ClientAuth);
    let files = [
        ("ca.pem", ca.pem()),
        ("server.pem", server_cert),
        ("server.key", server_key),
        ("client.pem", client_cert),
        ("client.key", client_key),
    ];
    files.map(|(name, pem)| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write a PEM file");
        path
    })
}

/// Redis speaking only TLS and requiring client certificates: a worker,
/// `enqueue` and `wait`, all given the CA and the client certificate by one
/// config file, complete a task; without them `enqueue` is refused.
#[test]
fn a_worker_and_enqueue_over_tls_complete_a_task() {
    let _limit = crate::limit::minutes(5);
    let dir = tempfile::tempdir().expect("temp dir");
    let [ca, server_cert, server_key, client_cert, client_key] = certificates(dir.path());
    let path = |p: &PathBuf| p.to_string_lossy().into_owned();
    let (ca, server_cert, server_key) = (path(&ca), path(&server_cert), path(&server_key));
    if !redis_supports_tls() {
        eprintln!("skipped: this redis-server was built without TLS (`--tls-port` is refused)");
        return;
    }
    let server = RedisServer::start_tls(&[
        "--tls-cert-file",
        &server_cert,
        "--tls-key-file",
        &server_key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "yes",
        "--appendonly",
        "no",
    ])
    .unwrap_or_else(|log| panic!("redis-server with TLS did not start:\n{log}"));
    let url = server.tls_url();
    let prefix = unique_prefix("tls");
    let file = dir.path().join("corral.toml");
    std::fs::write(
        &file,
        format!(
            "redis = {url:?}\nprefix = {prefix:?}\nredis-ca-cert = {ca:?}\n\
             redis-client-cert = {:?}\nredis-client-key = {:?}\nno-disk-cache = true\n\n\
             [worker]\njobs-dir = {:?}\n",
            path(&client_cert),
            path(&client_key),
            support::jobs_dir().to_string_lossy()
        ),
    )
    .expect("write the config");
    let file = path(&file);
    let log = dir.path().join("worker.log");
    let _worker = Running(
        corral(&["worker", "--config", &file])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start corral worker"),
    );
    wait_for_start(Path::new(&log), || true);
    let out = run(&mut corral(&["enqueue", "noop", "--config", &file]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    let out = run(&mut corral(&[
        "wait",
        &id,
        "--config",
        &file,
        "--timeout",
        "120s",
    ]));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("state=completed"),
        "{stdout}{}\nworker log:\n{}",
        text(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The system's roots do not know this CA; and this server wants a
    // client certificate. Either is said at once, not as a server that
    // does not answer.
    let without_ca = ["enqueue", "noop", "--redis", &url];
    let ca_only = ["enqueue", "noop", "--redis", &url, "--redis-ca-cert", &ca];
    for args in [&without_ca[..], &ca_only[..]] {
        let out = run(&mut corral(args));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("TLS refused"), "{args:?}: {stderr}");
    }
}
