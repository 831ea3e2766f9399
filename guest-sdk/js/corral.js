// Write Corral job handlers as plain JavaScript functions.
//
// A handler takes the task's args as an object and returns the args for the
// next handler, optionally with text for the task's result log. It may be
// sync or async:
//
//     import { handler, Fatal, log } from "./corral.js";
//
//     export const handle = handler(async (args, ctx) => {
//       if (typeof args.text !== "string") throw new Fatal("`text` must be a string");
//       log.info(`shouting ${args.text.length} chars for task ${ctx.taskId}`);
//       return [{ ...args, text: args.text.toUpperCase() }, "shouted"];
//     });
//
// This module owns the glue between such a function and the
// `corral:job/handler` world (wit/job.wit): JSON in and out of the args
// map, thrown `Retryable` / `Fatal` into the WIT error kinds, `log` into the
// host's log import. It uses nothing the host does not provide (no fetch, no
// files), and never lets an exception escape into the host: anything a
// handler throws ends as a task error.
//
// Build with `corral build`, or with componentize-js by hand (its `http` and
// `fetch-event` features off, since the host offers no HTTP):
//
//     componentize-js --wit wit --world-name handler -d http fetch-event -o handler.wasm handler.js

import { log as hostLog } from "corral:job/host@0.1.0";

/** A passing failure: the task is retried with backoff until it runs out of attempts. */
export class Retryable extends Error {
  constructor(message) {
    super(message);
    this.name = "Retryable";
  }
}

/** The task can never succeed as it stands: it fails at once. */
export class Fatal extends Error {
  constructor(message) {
    super(message);
    this.name = "Fatal";
  }
}

/** Args for the next handler and text for the task's result log (the same as returning `[args, log]`). */
export class Output {
  constructor(args, log = "") {
    this.args = args;
    this.log = log;
  }
}

function line(message) {
  return typeof message === "string" ? message : String(message);
}

/**
 * Lines for the task's log and the worker's tracing output, through the
 * host's `log` import. Lines past the job's log budget are dropped by the
 * host, which notes the drop.
 */
export const log = Object.freeze({
  trace: (message) => hostLog("trace", line(message)),
  debug: (message) => hostLog("debug", line(message)),
  info: (message) => hostLog("info", line(message)),
  warn: (message) => hostLog("warn", line(message)),
  error: (message) => hostLog("error", line(message)),
});

// The error the export throws: componentize-js lowers a thrown value as the
// `err` of the export's `result`, taking an own `payload` when there is one.
class WireError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind;
    this.payload = { kind, message };
  }
}

function describe(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value;
}

function parseArgs(wire) {
  const args = {};
  for (const { name, value } of wire) {
    try {
      args[name] = JSON.parse(value);
    } catch (e) {
      throw new Fatal(`arg \`${name}\` is not valid JSON: ${e.message}`);
    }
  }
  return args;
}

function toWire(result) {
  let args = result;
  let text = "";
  if (result instanceof Output) {
    ({ args, log: text } = result);
  } else if (Array.isArray(result) && result.length === 2) {
    [args, text] = result;
  }
  if (args === null || typeof args !== "object" || Array.isArray(args)) {
    throw new Fatal(
      `the handler must return an object of args (or [args, log], or an Output), not ${describe(args)}`,
    );
  }
  if (typeof text !== "string") {
    throw new Fatal(`the log text must be a string, not ${describe(text)}`);
  }
  const wire = [];
  for (const [name, value] of Object.entries(args)) {
    let json;
    try {
      json = JSON.stringify(value);
    } catch (e) {
      throw new Fatal(`arg \`${name}\` cannot be written as JSON: ${e.message}`);
    }
    // JSON.stringify gives `undefined` for functions, symbols and undefined.
    if (json === undefined) {
      throw new Fatal(`arg \`${name}\` cannot be written as JSON: it is ${typeof value}`);
    }
    wire.push({ name, value: json });
  }
  return { args: wire, log: text };
}

function failure(e) {
  if (e instanceof Retryable) return new WireError("retryable", e.message || "retryable error");
  if (e instanceof Fatal) return new WireError("fatal", e.message || "fatal error");
  // Anything else is a bug in the handler: fatal, with its stack in the task's log.
  const message = e instanceof Error ? `${e.name}: ${e.message}` : `uncaught ${line(e)}`;
  try {
    hostLog("error", e instanceof Error && e.stack ? `${message}\n${e.stack}` : message);
  } catch (_) {
    // The log budget is the host's business; the error below still reaches it.
  }
  return new WireError("fatal", message);
}

/**
 * Turns `fn(args, ctx)` into the component's `handle` export:
 * `export const handle = handler(fn)`.
 *
 * `fn` receives the args as a plain object and a context
 * `{ taskId, job, tenant, attempt, handlerIndex, handlerCount }`, and returns
 * (or resolves to) an object of args, `[args, logText]`, or an `Output`.
 */
export function handler(fn) {
  if (typeof fn !== "function") {
    throw new TypeError("corral: handler() takes the handler function");
  }
  return function handle(ctx, wire) {
    let result;
    try {
      result = fn(parseArgs(wire), Object.freeze({ ...ctx }));
    } catch (e) {
      throw failure(e);
    }
    // A sync handler's result is converted at once; only an async one
    // makes componentize-js run the event loop until its promise settles,
    // which costs a call about as much again.
    if (result !== null && typeof result === "object" && typeof result.then === "function") {
      return Promise.resolve(result).then(toWire, (e) => {
        throw failure(e);
      });
    }
    try {
      return toWire(result);
    } catch (e) {
      throw failure(e);
    }
  };
}
