"""noop-py: returns its args unchanged with an empty log. The cheapest Python
handler, used by `corral bench` to measure the per-task overhead of a Python
guest."""

import corral


@corral.handler
def noop(args):
    return args
