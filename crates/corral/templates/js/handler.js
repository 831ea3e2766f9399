// {{name}}: a Corral job handler. It receives the task's args and returns the
// args for the next handler (or the task's result) and a line for the task's
// result log.
import { handler, Fatal, log } from "./corral.js";

export const handle = handler(async (args, ctx) => {
  // throw new Fatal("...") for a task that can never succeed,
  // new Retryable("...") for a failure worth retrying; anything else thrown
  // fails the task with its stack in the task's log.
  const name = args.name ?? "world";
  if (typeof name !== "string") throw new Fatal("`name` must be a string");
  log.info(`greeting ${name} (task ${ctx.taskId})`);
  return [{ ...args, greeting: `Hello, ${name}!` }, `greeted ${name}`];
});
