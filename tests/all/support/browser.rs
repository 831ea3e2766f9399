//! A real headless Chromium, driven over the Chrome DevTools Protocol for
//! the dashboard's tests.
//!
//! The browser is started with `--remote-debugging-pipe`: it reads
//! protocol messages (JSON, each ended by a NUL byte) on its fd 3 and
//! writes its own on fd 4. A shell maps the child's piped stdin and stdout
//! onto those two descriptors, so no WebSocket client (nor any crate at
//! all) is needed: the protocol is a few commands over a pipe.
//!
//! What the page reports is collected as it arrives: uncaught exceptions,
//! `console.error`, and the browser's own error entries (CSP and Trusted
//! Types violations, failed loads), so a test can assert there were none.
//! A `window.confirm` (or any dialog) is accepted at once and its message
//! kept. Every command and every wait has a bound; a browser that cannot
//! be found or started fails the test with what to install.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

/// The longest one protocol command may take.
const COMMAND_BOUND: Duration = Duration::from_secs(30);

/// The browsers tried, in order, when `CORRAL_TEST_CHROMIUM` names none:
/// Debian's `chromium-headless-shell` first (the smallest), then a full
/// Chromium or Chrome in headless mode.
const CANDIDATES: [&str; 5] = [
    "chromium-headless-shell",
    "chrome-headless-shell",
    "chromium",
    "chromium-browser",
    "google-chrome",
];

/// Most errors kept.
const MAX_REPORTS: usize = 20;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// What the page said that a test checks.
#[derive(Debug, Default, Clone)]
pub struct Reports {
    /// Uncaught exceptions, `console.error`/`console.assert` calls, and
    /// the browser's error-level log entries, as text.
    pub errors: Vec<String>,
    /// The messages of the dialogs (`confirm`, `alert`) the page opened;
    /// each was accepted.
    pub dialogs: Vec<String>,
}

/// A running headless Chromium with one page open; killed when dropped.
pub struct Browser {
    child: Child,
    stdin: Arc<tokio::sync::Mutex<ChildStdin>>,
    pending: Pending,
    next_id: AtomicU64,
    reports: Arc<Mutex<Reports>>,
    /// The page's session id.
    session: String,
    reader: tokio::task::JoinHandle<()>,
    /// The profile (and the browser's stderr, `browser.log`).
    profile: tempfile::TempDir,
}

/// Where the browser binary is: `CORRAL_TEST_CHROMIUM`, or the first of
/// [`CANDIDATES`] on `PATH`.
fn find_browser() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CORRAL_TEST_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    CANDIDATES.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// A short text for an event the page reported as an error.
fn report_text(method: &str, params: &Value) -> Option<String> {
    match method {
        "Runtime.exceptionThrown" => {
            let d = &params["exceptionDetails"];
            let text = d["exception"]["description"]
                .as_str()
                .or_else(|| d["text"].as_str())
                .unwrap_or("an exception");
            Some(format!("uncaught: {text}"))
        }
        "Runtime.consoleAPICalled" => {
            let kind = params["type"].as_str().unwrap_or("");
            if kind != "error" && kind != "assert" {
                return None;
            }
            let args: Vec<String> = params["args"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .map(|a| match &a["value"] {
                    Value::String(s) => s.clone(),
                    Value::Null => a["description"].as_str().unwrap_or("").to_owned(),
                    v => v.to_string(),
                })
                .collect();
            Some(format!("console.{kind}: {}", args.join(" ")))
        }
        "Log.entryAdded" => {
            let entry = &params["entry"];
            if entry["level"].as_str() != Some("error") {
                return None;
            }
            Some(format!(
                "{} error: {} ({})",
                entry["source"].as_str().unwrap_or("browser"),
                entry["text"].as_str().unwrap_or(""),
                entry["url"].as_str().unwrap_or("")
            ))
        }
        "Inspector.targetCrashed" => Some("the page crashed".to_owned()),
        _ => None,
    }
}

async fn send(stdin: &tokio::sync::Mutex<ChildStdin>, message: &Value) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    bytes.push(0);
    let mut stdin = stdin.lock().await;
    stdin.write_all(&bytes).await?;
    stdin.flush().await
}

impl Browser {
    /// Starts the browser with a fresh profile and opens a blank page.
    /// Fails the test, saying what to install, when there is no browser or
    /// it does not start.
    pub async fn launch() -> Browser {
        let Some(binary) = find_browser() else {
            panic!(
                "no headless Chromium found (looked for {CANDIDATES:?} on PATH): install \
                 Debian's `chromium-headless-shell` (scripts/test.sh does when run as root) \
                 or name a binary in CORRAL_TEST_CHROMIUM"
            );
        };
        let profile = tempfile::tempdir().expect("a browser profile dir");
        let log = std::fs::File::create(profile.path().join("browser.log"))
            .expect("the browser's log file");
        let mut child = Command::new("sh")
            // fd 3 is what the browser reads (our stdin pipe), fd 4 what it
            // writes (our stdout pipe); its own stdout joins its stderr.
            .arg("-c")
            .arg(r#"exec "$@" 3<&0 4>&1 0</dev/null 1>&2"#)
            .arg("sh")
            .arg(&binary)
            .args([
                "--headless",
                "--remote-debugging-pipe",
                // Root in a container has no user namespaces to sandbox in.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--mute-audio",
                "--window-size=1280,1024",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let stdin = Arc::new(tokio::sync::Mutex::new(
            child.stdin.take().expect("piped stdin"),
        ));
        let stdout = child.stdout.take().expect("piped stdout");
        let pending: Pending = Arc::default();
        let reports: Arc<Mutex<Reports>> = Arc::default();
        let reader = tokio::spawn(read_messages(
            BufReader::new(stdout),
            stdin.clone(),
            pending.clone(),
            reports.clone(),
        ));
        let mut browser = Browser {
            child,
            stdin,
            pending,
            next_id: AtomicU64::new(1),
            reports,
            session: String::new(),
            reader,
            profile,
        };
        let version = browser
            .command(None, "Browser.getVersion", json!({}))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{} did not answer the DevTools protocol: {e}\n{}",
                    binary.display(),
                    browser.log()
                )
            });
        eprintln!(
            "browser: {} ({})",
            version["product"].as_str().unwrap_or("?"),
            binary.display()
        );
        let target = browser
            .call_browser("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"].as_str().expect("a target id").to_owned();
        let attached = browser
            .call_browser(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({})).await;
        }
        browser
    }

    /// The browser's own stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("browser.log")).unwrap_or_default()
    }

    /// Sends `method` (to the page's session, or the browser's with
    /// `None`) and waits for its answer, at most [`COMMAND_BOUND`].
    async fn command(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        send(&self.stdin, &message)
            .await
            .map_err(|e| format!("write to the browser: {e}"))?;
        match tokio::time::timeout(COMMAND_BOUND, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err("the browser closed its pipe".to_owned()),
            Err(_) => Err(format!("no answer to {method} within {COMMAND_BOUND:?}")),
        }
    }

    async fn call_browser(&self, method: &str, params: Value) -> Value {
        self.command(None, method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}\n{}", self.log()))
    }

    /// Sends `method` to the page; fails the test on an error.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.command(Some(&session), method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}\n{}", self.log()))
    }

    /// Loads `url` and waits (at most 30 s) until the document is complete.
    pub async fn goto(&self, url: &str) {
        let answer = self.call("Page.navigate", json!({"url": url})).await;
        if let Some(e) = answer["errorText"].as_str() {
            panic!("load {url}: {e}");
        }
        self.wait_for(
            "the page to load",
            "document.readyState === 'complete'",
            Duration::from_secs(30),
        )
        .await;
    }

    /// The value of the JavaScript `expression` in the page (awaited if a
    /// promise); fails the test if it throws.
    pub async fn eval(&self, expression: &str) -> Value {
        self.try_eval(expression)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    /// [`eval`](Self::eval), its failure returned: it throws, or the page
    /// is between two documents (a reload).
    async fn try_eval(&self, expression: &str) -> Result<Value, String> {
        let session = self.session.clone();
        let answer = self
            .command(
                Some(&session),
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(e) = answer.get("exceptionDetails") {
            return Err(format!("`{expression}` threw: {e}"));
        }
        Ok(answer["result"]["value"].clone())
    }

    /// Waits until `expression` is truthy, at most `bound`; returns its
    /// value. Fails the test naming `what`, with the page's status line and
    /// what it reported.
    pub async fn wait_for(&self, what: &str, expression: &str, bound: Duration) -> Value {
        if let Some(value) = self.poll(expression, Instant::now() + bound).await {
            return value;
        }
        panic!("waited {bound:?} for {what}; {}", self.page_state().await);
    }

    /// The page's address, status line and last refresh, and what it
    /// reported: what a failed wait shows.
    async fn page_state(&self) -> String {
        let page = self
            .eval(
                "JSON.stringify({hash: location.hash, \
                 status: (document.getElementById('status') || {}).textContent, \
                 updated: (document.getElementById('updated') || {}).textContent})",
            )
            .await;
        format!("the page: {page}; reports: {:?}", self.reports())
    }

    /// `expression`'s value once it is truthy, or `None` if it is not by
    /// `deadline` (evaluated at least once). A failed evaluation (the page
    /// reloading) counts as not yet.
    async fn poll(&self, expression: &str, deadline: Instant) -> Option<Value> {
        loop {
            let value = self.try_eval(expression).await.unwrap_or(Value::Null);
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Some(value);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks `selector` until `expression` holds (within `bound`): the
    /// page refreshes its tables on a timer, and a refresh that moves the
    /// element between finding it and the mouse press makes a click land
    /// beside it.
    pub async fn click_until(&self, selector: &str, what: &str, expression: &str, bound: Duration) {
        let give_up = Instant::now() + bound;
        loop {
            self.click(selector).await;
            let settle = (Instant::now() + Duration::from_secs(2)).min(give_up);
            if self.poll(expression, settle).await.is_some() {
                return;
            }
            if Instant::now() >= give_up {
                let selector_js = serde_json::to_string(selector).expect("a selector as JSON");
                let boxes = self
                    .eval(&format!(
                        "(() => {{ const e = document.querySelector({selector_js}); \
                         return e ? Array.from(e.getClientRects(), \
                         (r) => [r.x, r.y, r.width, r.height]) : null; }})()"
                    ))
                    .await;
                panic!(
                    "clicking `{selector}` (boxes {boxes}) never gave {what} within {bound:?}; {}",
                    self.page_state().await
                );
            }
        }
    }

    /// Clicks the element `selector` names as a user would: scrolled into
    /// view, the mouse pressed and released over the centre of its first
    /// box (a link that wraps over two lines has two; the centre of their
    /// union can be beside both). Fails the test if there is no such
    /// element, or it is hidden or disabled.
    pub async fn click(&self, selector: &str) {
        let selector_js = serde_json::to_string(selector).expect("a selector as JSON");
        let at = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({selector_js}); \
                 if (!e || e.disabled) return null; \
                 e.scrollIntoView({{block: 'center', inline: 'center'}}); \
                 const r = e.getClientRects()[0] || e.getBoundingClientRect(); \
                 if (r.width === 0 || r.height === 0) return null; \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ))
            .await;
        let (Some(x), Some(y)) = (at[0].as_f64(), at[1].as_f64()) else {
            panic!("no visible, enabled `{selector}` to click");
        };
        self.call(
            "Input.dispatchMouseEvent",
            json!({"type": "mouseMoved", "x": x, "y": y}),
        )
        .await;
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// Clicks `selector` (to focus it) and types `text` into it.
    pub async fn type_into(&self, selector: &str, text: &str) {
        self.click(selector).await;
        self.call("Input.insertText", json!({"text": text})).await;
    }

    /// Presses and releases `key` (a DOM key name, e.g. `ArrowDown`, with
    /// its Windows virtual key code) on the focused element.
    pub async fn press(&self, key: &str, code: u32) {
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": key, "code": key,
                       "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code}),
            )
            .await;
        }
    }

    /// What the page reported so far.
    pub fn reports(&self) -> Reports {
        self.reports.lock().expect("reports lock").clone()
    }

    /// Where the browser's profile lives.
    pub fn profile(&self) -> &Path {
        self.profile.path()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.reader.abort();
        let _ = self.child.start_kill();
    }
}

/// Reads the browser's messages until its pipe closes: answers go to their
/// command, dialogs are accepted, errors kept.
async fn read_messages(
    mut stdout: BufReader<tokio::process::ChildStdout>,
    stdin: Arc<tokio::sync::Mutex<ChildStdin>>,
    pending: Pending,
    reports: Arc<Mutex<Reports>>,
) {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match stdout.read_until(0, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if buf.last() == Some(&0) {
            buf.pop();
        }
        let Ok(message) = serde_json::from_slice::<Value>(&buf) else {
            continue;
        };
        if let Some(id) = message["id"].as_u64() {
            let answer = match message.get("error") {
                Some(e) => Err(e.to_string()),
                None => Ok(message["result"].clone()),
            };
            if let Some(tx) = pending.lock().expect("pending lock").remove(&id) {
                let _ = tx.send(answer);
            }
            continue;
        }
        let method = message["method"].as_str().unwrap_or("");
        let params = &message["params"];
        if method == "Page.javascriptDialogOpening" {
            reports
                .lock()
                .expect("reports lock")
                .dialogs
                .push(params["message"].as_str().unwrap_or("").to_owned());
            // Accepted from here: the click that opened it waits on it.
            let mut accept = json!({
                "id": 0,
                "method": "Page.handleJavaScriptDialog",
                "params": {"accept": true},
            });
            if let Some(session) = message.get("sessionId") {
                accept["sessionId"] = session.clone();
            }
            if send(&stdin, &accept).await.is_err() {
                break;
            }
            continue;
        }
        if let Some(text) = report_text(method, params) {
            let mut reports = reports.lock().expect("reports lock");
            // A page that fails on every refresh would fill memory: the
            // first ones say what went wrong.
            if reports.errors.len() < MAX_REPORTS {
                reports.errors.push(text);
            }
        }
    }
    // The browser is gone: every command still waiting fails now.
    pending.lock().expect("pending lock").clear();
}
