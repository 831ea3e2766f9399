"""{{name}}: a Corral job handler. It receives the task's args and returns the
args for the next handler (or the task's result) and a line for the task's
result log."""

import corral


@corral.handler
def handle(args, ctx):
    # raise corral.Fatal("...") for a task that can never succeed,
    # corral.Retryable("...") for a failure worth retrying; any other
    # exception fails the task with its traceback in the task's log.
    name = args.get("name", "world")
    if not isinstance(name, str):
        raise corral.Fatal("`name` must be a string")
    corral.log.info(f"greeting {name} (task {ctx.task_id})")
    return {**args, "greeting": f"Hello, {name}!"}, f"greeted {name}"
