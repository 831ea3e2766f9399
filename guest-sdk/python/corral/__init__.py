"""Write Corral job handlers as plain Python functions.

A handler takes the task's args as a dict and returns the args for the next
handler as a dict, optionally with text for the task's result log::

    import corral

    @corral.handler
    def handle(args):
        text = args["text"]
        if not text:
            raise corral.Fatal("`text` is empty")
        corral.log.info(f"shouting {len(text)} chars")
        return {**args, "text": text.upper()}, "shouted"

This package owns the glue between such a function and the
``corral:job/handler`` world (``wit/job.wit``): JSON in and out of the args
map, exceptions into the WIT error kinds, ``log`` into the host's log import.
It imports nothing the host does not provide (no sockets, files or HTTP), and
never lets an exception escape into the host: anything a handler raises ends
as a task error.

Build with ``corral build``, or by hand::

    componentize-py -d wit -w handler componentize -p . -p guest-sdk/python app -o app.wasm
"""

import inspect
import json
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports import types as wit

__all__ = [
    "Context",
    "Fatal",
    "Output",
    "Retryable",
    "handler",
    "log",
]


class Retryable(Exception):
    """A passing failure: the task is retried with backoff until it runs out
    of attempts."""


class Fatal(Exception):
    """The task can never succeed as it stands: it fails at once."""


@dataclass(frozen=True)
class Context:
    """Where this call sits: which task, job, tenant, attempt and handler."""

    task_id: str
    job: str
    tenant: str
    attempt: int
    handler_index: int
    handler_count: int


@dataclass
class Output:
    """Args for the next handler and text for the task's result log (the same
    as returning the tuple ``(args, log)``)."""

    args: Dict[str, Any]
    log: str = ""


class _Log:
    """Lines for the task's log and the worker's tracing output, through the
    host's ``log`` import. Lines past the job's log budget are dropped by the
    host, which notes the drop."""

    def trace(self, message: object) -> None:
        host.log(host.Level.TRACE, str(message))

    def debug(self, message: object) -> None:
        host.log(host.Level.DEBUG, str(message))

    def info(self, message: object) -> None:
        host.log(host.Level.INFO, str(message))

    def warn(self, message: object) -> None:
        host.log(host.Level.WARN, str(message))

    warning = warn

    def error(self, message: object) -> None:
        host.log(host.Level.ERROR, str(message))


log = _Log()

Handler = Callable[..., Union[Dict[str, Any], Tuple[Dict[str, Any], str], Output]]

_handler: Optional[Handler] = None
_wants_context = False


def handler(fn: Handler) -> Handler:
    """Registers ``fn`` as this component's handler.

    ``fn`` takes the args dict, and optionally a :class:`Context` as its second
    parameter. It returns a dict (the next handler's args), a tuple
    ``(dict, log_text)``, or an :class:`Output`. One handler per component:
    registering a second one is an error when the component is built.
    """
    global _handler, _wants_context
    if _handler is not None:
        raise RuntimeError(
            f"corral: a component has one handler; `{_handler.__name__}` is "
            f"already registered, so `{fn.__name__}` cannot be"
        )
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    _handler = fn
    _wants_context = len(params) >= 2
    # componentize-py looks for the world's export class, `WitWorld`, in the
    # app module: put it there, so the handler's module is all a job needs.
    module = sys.modules.get(fn.__module__)
    if module is not None and not hasattr(module, "WitWorld"):
        setattr(module, "WitWorld", WitWorld)
    return fn


def _error(kind: "wit.ErrorKind", message: str) -> Err:
    return Err(wit.Error(kind=kind, message=message))


def _parse_args(args) -> Dict[str, Any]:
    parsed: Dict[str, Any] = {}
    for arg in args:
        try:
            parsed[arg.name] = json.loads(arg.value)
        except ValueError as e:
            raise Fatal(f"arg `{arg.name}` is not valid JSON: {e}") from None
    return parsed


def _wire_args(value: Any):
    if not isinstance(value, dict):
        raise Fatal(
            "the handler must return a dict of args (or a (dict, str) tuple, "
            f"or corral.Output), not {type(value).__name__}"
        )
    wire = []
    for name, v in value.items():
        if not isinstance(name, str):
            raise Fatal(f"arg names must be strings, not {type(name).__name__}")
        try:
            text = json.dumps(v, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as e:
            raise Fatal(f"arg `{name}` cannot be written as JSON: {e}") from None
        wire.append(wit.Arg(name=name, value=text))
    return wire


def _output(result: Any) -> "wit.Output":
    if isinstance(result, Output):
        args, text = result.args, result.log
    elif isinstance(result, tuple) and len(result) == 2:
        args, text = result
    else:
        args, text = result, ""
    if not isinstance(text, str):
        raise Fatal(f"the log text must be a str, not {type(text).__name__}")
    return wit.Output(args=_wire_args(args), log=text)


class WitWorld:
    """The component's export: calls the registered handler for each task."""

    def handle(self, ctx: "wit.Context", args) -> "wit.Output":
        if _handler is None:
            raise _error(
                wit.ErrorKind.FATAL,
                "no handler registered: decorate a function with @corral.handler",
            )
        try:
            parsed = _parse_args(args)
            if _wants_context:
                context = Context(
                    task_id=ctx.task_id,
                    job=ctx.job,
                    tenant=ctx.tenant,
                    attempt=ctx.attempt,
                    handler_index=ctx.handler_index,
                    handler_count=ctx.handler_count,
                )
                result = _handler(parsed, context)
            else:
                result = _handler(parsed)
            return _output(result)
        except Retryable as e:
            raise _error(wit.ErrorKind.RETRYABLE, str(e) or "retryable error") from None
        except Fatal as e:
            raise _error(wit.ErrorKind.FATAL, str(e) or "fatal error") from None
        except Exception as e:  # noqa: BLE001 - every failure must reach the host as an error
            trace = traceback.format_exc()
            try:
                host.log(host.Level.ERROR, trace)
            except Exception:  # noqa: BLE001
                pass
            raise _error(wit.ErrorKind.FATAL, f"{type(e).__name__}: {e}") from None
