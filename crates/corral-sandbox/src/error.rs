//! How loading or running a handler can fail, as typed errors.
//!
//! Every way a guest can misbehave maps to one [`HandlerFailure`] variant
//! with a stable [`kind`](HandlerFailure::kind) string, so a task's error
//! says exactly what happened and tests can assert it; every way bytes can
//! fail to become a handler maps to one [`LoadError`] with its own
//! [`kind`](LoadError::kind). This module only names failures; the sandbox
//! decides which one happened, and fills a failure's guest-controlled text
//! only inert and bounded (see [`MAX_FAILURE_TEXT_BYTES`]).

use std::time::Duration;

/// Most bytes of guest-controlled text (an error's message, a trap's or a
/// panic's, with the end of stderr) a [`HandlerFailure`] carries, beside the
/// call's own `max_output_bytes`: the failure is stored with the task and
/// shown in every listing of it. Longer text is cut with a note of how much
/// was dropped. The text is also made inert (see [`corral_core::text`]).
pub const MAX_FAILURE_TEXT_BYTES: usize = 4 << 10;

/// Most bytes of a guest-chosen name (an arg's) quoted in a failure.
pub const MAX_NAME_IN_MESSAGE: usize = 128;

/// Why bytes could not become a runnable handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// Over the module size cap.
    #[error("module is {size} bytes, over the {limit}-byte cap")]
    TooLarge {
        /// The module's size.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// Not WebAssembly at all.
    #[error("not a WebAssembly binary (bad magic number)")]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "a core WebAssembly module, not a component: build for wasm32-wasip2 or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    /// The component did not validate or compile.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// The component imports something the host does not provide.
    #[error("component imports what the host does not provide: {0}")]
    UnsupportedImport(String),
    /// The component does not export the `corral:job/handler` world's
    /// `handle` function with the right type.
    #[error("component does not implement the corral:job/handler world: {0}")]
    WrongWorld(String),
    /// The component needs more memories, tables or initial memory than
    /// any sandbox instance may have, so it could never be instantiated.
    #[error("component needs more than a sandbox instance allows: {0}")]
    OverEngineLimits(String),
    /// Compiling the component would take (or took) more CPU time, memory
    /// or wall-clock time than a compile may have, or its shape promises
    /// as much (see [`CompileConfig`](super::CompileConfig)).
    #[error("component is beyond the compile limits: {0}")]
    CompileLimit(String),
    /// The compiler could not be started (not the module's fault: retry).
    #[error("the compiler is unavailable: {0}")]
    CompilerUnavailable(String),
}

impl LoadError {
    /// A stable machine-readable name.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::TooLarge { .. } => "module_too_large",
            LoadError::NotWasm => "not_wasm",
            LoadError::CoreModule => "core_module",
            LoadError::Invalid(_) => "invalid_component",
            LoadError::UnsupportedImport(_) => "unsupported_import",
            LoadError::WrongWorld(_) => "wrong_world",
            LoadError::OverEngineLimits(_) => "over_engine_limits",
            LoadError::CompileLimit(_) => "compile_limit",
            LoadError::CompilerUnavailable(_) => "compiler_unavailable",
        }
    }
}

/// Why a handler call did not produce output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerFailure {
    /// The guest returned an error.
    #[error("returned a {} error: {message}", if *retryable { "retryable" } else { "fatal" })]
    Guest {
        /// Whether the guest asked for a retry.
        retryable: bool,
        /// The guest's message.
        message: String,
    },
    /// The guest burned all its fuel.
    #[error("ran out of fuel ({limit} units)")]
    OutOfFuel {
        /// The fuel it had.
        limit: u64,
    },
    /// The guest ran past its wall-clock deadline.
    #[error("exceeded its deadline of {} ms", limit.as_millis())]
    Deadline {
        /// The budget it had.
        limit: Duration,
    },
    /// The guest tried to grow memory past its limit.
    #[error("tried to grow memory to {requested} bytes, over its limit of {limit}")]
    MemoryLimit {
        /// The limit.
        limit: u64,
        /// The size it asked for.
        requested: u64,
    },
    /// The guest overflowed its stack.
    #[error("overflowed its stack")]
    StackOverflow,
    /// The guest panicked: it trapped on `unreachable` after writing a Rust
    /// panic message (`... panicked at <location>:`) to stderr.
    #[error("panicked: {message}")]
    Panic {
        /// The panic message and where it was raised, from stderr.
        message: String,
    },
    /// The guest trapped (`unreachable`, division by zero, out-of-bounds
    /// access, ...) other than by a recognised panic.
    #[error("trapped: {message}")]
    Trap {
        /// The trap and, when the guest wrote any, the end of its stderr.
        message: String,
    },
    /// The guest returned more output than allowed.
    #[error("returned {size} bytes of output, over its limit of {limit}")]
    OutputTooLarge {
        /// Bytes returned.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The guest returned an arg whose value is not JSON, or is nested
    /// deeper than args may be ([`MAX_ARG_DEPTH`](corral_core::task::MAX_ARG_DEPTH)).
    #[error("returned arg `{name}` whose value is refused: {reason}")]
    BadOutput {
        /// The arg.
        name: String,
        /// The parse error.
        reason: String,
    },
    /// The instance could not be created (for example, the instance pool
    /// is exhausted).
    #[error("could not be instantiated: {message}")]
    Instantiate {
        /// What failed.
        message: String,
    },
    /// The handler's module could not be loaded.
    #[error("could not be loaded: {0}")]
    Load(LoadError),
    /// The call was cancelled from outside (its
    /// [`CancelSignal`](super::CancelSignal)) and the guest stopped where it
    /// was, or never started.
    #[error("was cancelled and stopped before it finished")]
    Cancelled,
}

impl HandlerFailure {
    /// A stable machine-readable name for the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            HandlerFailure::Guest { .. } => "guest_error",
            HandlerFailure::OutOfFuel { .. } => "out_of_fuel",
            HandlerFailure::Deadline { .. } => "deadline",
            HandlerFailure::MemoryLimit { .. } => "memory_limit",
            HandlerFailure::StackOverflow => "stack_overflow",
            HandlerFailure::Panic { .. } => "panic",
            HandlerFailure::Trap { .. } => "trap",
            HandlerFailure::OutputTooLarge { .. } => "output_too_large",
            HandlerFailure::BadOutput { .. } => "bad_output",
            HandlerFailure::Instantiate { .. } => "instantiate",
            HandlerFailure::Load(e) => e.kind(),
            HandlerFailure::Cancelled => "cancelled",
        }
    }

    /// Whether another attempt might succeed. Deterministic failures (fuel,
    /// memory, traps, bad output) are not retried; the guest decides for its
    /// own errors; a deadline or a full instance pool may pass. A cancelled
    /// call is not retried: someone asked for it to stop.
    pub fn is_retryable(&self) -> bool {
        match self {
            HandlerFailure::Guest { retryable, .. } => *retryable,
            HandlerFailure::Deadline { .. } | HandlerFailure::Instantiate { .. } => true,
            HandlerFailure::OutOfFuel { .. }
            | HandlerFailure::MemoryLimit { .. }
            | HandlerFailure::StackOverflow
            | HandlerFailure::Panic { .. }
            | HandlerFailure::Trap { .. }
            | HandlerFailure::OutputTooLarge { .. }
            | HandlerFailure::BadOutput { .. }
            | HandlerFailure::Load(_)
            | HandlerFailure::Cancelled => false,
        }
    }
}
