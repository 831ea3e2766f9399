//! Write Corral job handlers as plain Rust functions.
//!
//! A handler is one function from a [`Context`] and an [`Args`] map to an
//! [`Output`] or an [`Error`]; [`export_handler!`] turns it into the export of
//! the `corral:job/handler` world. The crate owns the wit-bindgen glue and the
//! JSON conversions, and never panics on what the host sends: a value that
//! does not parse becomes an [`Error`] the handler can return with `?`.
//!
//! ```no_run
//! use corral_guest::{export_handler, Args, Context, Error, Output};
//!
//! fn shout(_ctx: Context, args: Args) -> Result<Output, Error> {
//!     let text: String = args.get("text")?;
//!     let mut next = Args::new();
//!     next.insert("text", &text.to_uppercase())?;
//!     Ok(Output::new(next).log(format!("shouted {} bytes", text.len())))
//! }
//!
//! export_handler!(shout);
//! ```
//!
//! Build with `cargo component build --release`, or with plain cargo for the
//! `wasm32-wasip2` target (see `jobs/build.sh`).

// The generated bindings name the runtime by its absolute path
// `::corral_guest::...`, which must resolve inside this crate too.
extern crate self as corral_guest;

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Generated bindings for the `corral:job/handler` world. Used by
/// [`export_handler!`]; job code rarely needs it directly.
#[doc(hidden)]
// The generated export glue takes the flattened WIT arguments one by one.
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "corral:job/handler",
        pub_export_macro: true,
        export_macro_name: "__export_corral_handler",
        default_bindings_module: "::corral_guest::bindings",
        runtime_path: "::corral_guest::__private::wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use crate::bindings::corral::job::types as wit;

    /// Converts between the WIT types and the SDK's, around the user's function.
    pub fn dispatch(
        ctx: wit::Context,
        args: Vec<wit::Arg>,
        handler: fn(crate::Context, crate::Args) -> Result<crate::Output, crate::Error>,
    ) -> Result<wit::Output, wit::Error> {
        let ctx = crate::Context {
            task_id: ctx.task_id,
            job: ctx.job,
            tenant: ctx.tenant,
            attempt: ctx.attempt,
            handler_index: ctx.handler_index,
            handler_count: ctx.handler_count,
        };
        let args = crate::Args::from_wire(args).map_err(crate::Error::into_wire)?;
        match handler(ctx, args) {
            Ok(out) => Ok(wit::Output {
                args: out.args.into_wire(),
                log: out.log,
            }),
            Err(err) => Err(err.into_wire()),
        }
    }
}

use bindings::corral::job::host;
use bindings::corral::job::types as wit;

/// Exports `fn(Context, Args) -> Result<Output, Error>` as this component's
/// handler. Use it once per crate.
#[macro_export]
macro_rules! export_handler {
    ($handler:path) => {
        #[doc(hidden)]
        struct __CorralHandler;

        impl $crate::bindings::Guest for __CorralHandler {
            fn handle(
                ctx: $crate::bindings::corral::job::types::Context,
                args: ::std::vec::Vec<$crate::bindings::corral::job::types::Arg>,
            ) -> ::std::result::Result<
                $crate::bindings::corral::job::types::Output,
                $crate::bindings::corral::job::types::Error,
            > {
                $crate::__private::dispatch(ctx, args, $handler)
            }
        }

        $crate::bindings::__export_corral_handler!(__CorralHandler);
    };
}

/// Where a call sits: task, job, tenant, attempt and position in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The task's id.
    pub task_id: String,
    /// The job the task was enqueued for.
    pub job: String,
    /// The tenant that owns the task.
    pub tenant: String,
    /// 1 on the first run, 2 on the first retry, ...
    pub attempt: u32,
    /// This handler's position in the chain, from 0.
    pub handler_index: u32,
    /// How many handlers the chain has.
    pub handler_count: u32,
}

impl Context {
    /// Whether this handler is the last of its chain.
    pub fn is_last(&self) -> bool {
        self.handler_index + 1 >= self.handler_count
    }
}

/// The args map: names to JSON values, read and written through serde.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Args {
    values: BTreeMap<String, serde_json::Value>,
}

impl Args {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    fn from_wire(args: Vec<wit::Arg>) -> Result<Self, Error> {
        let mut values = BTreeMap::new();
        for arg in args {
            let value = serde_json::from_str(&arg.value)
                .map_err(|e| Error::fatal(format!("arg `{}` is not valid JSON: {e}", arg.name)))?;
            values.insert(arg.name, value);
        }
        Ok(Self { values })
    }

    fn into_wire(self) -> Vec<wit::Arg> {
        self.values
            .into_iter()
            .map(|(name, value)| wit::Arg {
                name,
                value: value.to_string(),
            })
            .collect()
    }

    /// Reads `name` as a `T`; a missing or mistyped arg is a fatal error.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<T, Error> {
        let value = self
            .values
            .get(name)
            .ok_or_else(|| Error::fatal(format!("missing arg `{name}`")))?;
        T::deserialize(value).map_err(|e| Error::fatal(format!("arg `{name}`: {e}")))
    }

    /// Reads `name` as a `T` when present.
    pub fn get_opt<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, Error> {
        match self.values.get(name) {
            None => Ok(None),
            Some(value) => T::deserialize(value)
                .map(Some)
                .map_err(|e| Error::fatal(format!("arg `{name}`: {e}"))),
        }
    }

    /// Sets `name` to `value`, replacing what was there.
    pub fn insert<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> Result<(), Error> {
        let value = serde_json::to_value(value)
            .map_err(|e| Error::fatal(format!("arg `{name}` does not serialize: {e}")))?;
        self.values.insert(name.to_owned(), value);
        Ok(())
    }

    /// Removes `name`, returning its raw JSON value.
    pub fn remove(&mut self, name: &str) -> Option<serde_json::Value> {
        self.values.remove(name)
    }

    /// The raw JSON value of `name`.
    pub fn raw(&self, name: &str) -> Option<&serde_json::Value> {
        self.values.get(name)
    }

    /// Arg names, in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Number of args.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// A handler's successful result: the next args and a line for the result log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    args: Args,
    log: String,
}

impl Output {
    /// Hands `args` to the next handler, with nothing for the result log.
    pub fn new(args: Args) -> Self {
        Self {
            args,
            log: String::new(),
        }
    }

    /// Sets the text appended to the task's result log.
    pub fn log(mut self, text: impl Into<String>) -> Self {
        self.log = text.into();
        self
    }
}

/// A handler's failure: retryable (the task is tried again with backoff) or
/// fatal (the task fails now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    retryable: bool,
    message: String,
}

impl Error {
    /// A failure that another attempt may not repeat.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            message: message.into(),
        }
    }

    /// A failure no retry can fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
        }
    }

    /// Whether the task should be retried.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The message the task will carry.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn into_wire(self) -> wit::Error {
        wit::Error {
            kind: if self.retryable {
                wit::ErrorKind::Retryable
            } else {
                wit::ErrorKind::Fatal
            },
            message: self.message,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.retryable { "retryable" } else { "fatal" };
        write!(f, "{kind}: {}", self.message)
    }
}

impl std::error::Error for Error {}

/// Structured logging to the task's log and the worker's tracing output.
pub mod log {
    use super::host::{self, Level};

    /// Logs at trace level.
    pub fn trace(message: &str) {
        host::log(Level::Trace, message);
    }
    /// Logs at debug level.
    pub fn debug(message: &str) {
        host::log(Level::Debug, message);
    }
    /// Logs at info level.
    pub fn info(message: &str) {
        host::log(Level::Info, message);
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        host::log(Level::Warn, message);
    }
    /// Logs at error level.
    pub fn error(message: &str) {
        host::log(Level::Error, message);
    }
}

// The SDK's side of the contract, run natively: the WIT records in, the WIT
// records out, through the same `dispatch` the exported handler calls.
#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> wit::Context {
        wit::Context {
            task_id: "t1".into(),
            job: "job".into(),
            tenant: "acme".into(),
            attempt: 1,
            handler_index: 0,
            handler_count: 2,
        }
    }

    fn arg(name: &str, json: &str) -> wit::Arg {
        wit::Arg {
            name: name.into(),
            value: json.into(),
        }
    }

    /// Doubles `n` (a u32) into `doubled`, keeping the other args.
    fn double(ctx: Context, mut args: Args) -> Result<Output, Error> {
        let n: u32 = args.get("n")?;
        let note: Option<String> = args.get_opt("note")?;
        args.insert("doubled", &(u64::from(n) * 2))?;
        let last = ctx.is_last();
        Ok(Output::new(args).log(format!("{note:?} last={last}")))
    }

    fn fatal(result: Result<wit::Output, wit::Error>) -> String {
        match result {
            Err(wit::Error {
                kind: wit::ErrorKind::Fatal,
                message,
            }) => message,
            Err(e) => panic!("expected a fatal error, got {:?}: {}", e.kind, e.message),
            Ok(out) => panic!("expected a fatal error, got output {:?}", out.log),
        }
    }

    #[test]
    fn args_flow_through_and_the_output_is_wire_json() {
        let out = __private::dispatch(
            ctx(),
            vec![arg("n", "21"), arg("keep", r#"{"a":[1,"x"]}"#)],
            double,
        )
        .unwrap_or_else(|e| panic!("{}", e.message));
        let got: BTreeMap<String, String> =
            out.args.into_iter().map(|a| (a.name, a.value)).collect();
        assert_eq!(got["doubled"], "42");
        assert_eq!(got["n"], "21");
        assert_eq!(got["keep"], r#"{"a":[1,"x"]}"#);
        assert_eq!(out.log, "None last=false");
    }

    #[test]
    fn a_missing_arg_is_fatal_and_named() {
        let message = fatal(__private::dispatch(ctx(), vec![], double));
        assert_eq!(message, "missing arg `n`");
    }

    #[test]
    fn a_mistyped_arg_is_fatal_and_named() {
        for (value, why) in [
            (r#""21""#, "a string"),
            ("-1", "a negative number"),
            ("4294967296", "past u32"),
            ("2.5", "a fraction"),
            ("null", "null"),
        ] {
            let message = fatal(__private::dispatch(ctx(), vec![arg("n", value)], double));
            assert!(message.starts_with("arg `n`: "), "{why}: {message}");
        }
        // An optional arg present with the wrong type is refused too.
        let message = fatal(__private::dispatch(
            ctx(),
            vec![arg("n", "1"), arg("note", "7")],
            double,
        ));
        assert!(message.starts_with("arg `note`: "), "{message}");
    }

    #[test]
    fn an_arg_that_is_not_json_is_fatal_before_the_handler_runs() {
        fn never(_: Context, _: Args) -> Result<Output, Error> {
            panic!("the handler ran on an arg that is not JSON")
        }
        let message = fatal(__private::dispatch(
            ctx(),
            vec![arg("n", "{not json")],
            never,
        ));
        assert!(
            message.starts_with("arg `n` is not valid JSON"),
            "{message}"
        );
    }

    #[test]
    fn retryable_and_fatal_errors_keep_their_kind_and_message() {
        fn flaky(_: Context, _: Args) -> Result<Output, Error> {
            Err(Error::retryable("upstream busy"))
        }
        match __private::dispatch(ctx(), vec![], flaky) {
            Err(wit::Error {
                kind: wit::ErrorKind::Retryable,
                message,
            }) => assert_eq!(message, "upstream busy"),
            other => panic!("expected retryable, got {:?}", other.map(|o| o.log)),
        }
        let e = Error::fatal("bad input");
        assert!(!e.is_retryable());
        assert_eq!(e.to_string(), "fatal: bad input");
    }

    #[test]
    fn the_last_handler_knows_it_is_last() {
        let mut last = ctx();
        last.handler_index = 1;
        let out = __private::dispatch(last, vec![arg("n", "1")], double)
            .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(out.log, "None last=true");
    }
}
