"""hostile-py: misbehaves as arg `mode` says, for the hostile-guest tests:
`loop` spins forever, `alloc` allocates without bound, `recurse` recurses
without bound, `raise` raises an uncaught exception, `retry` and `fatal` raise the SDK's
`Retryable` and `Fatal`; anything else returns the args."""

import corral


def _recurse(n):
    return _recurse(n + 1) + 1


@corral.handler
def hostile(args):
    mode = args.get("mode")
    if mode == "loop":
        n = 0
        while True:
            n += 1
    if mode == "alloc":
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
    if mode == "recurse":
        return {"depth": _recurse(0)}
    if mode == "retry":
        raise corral.Retryable("try again later")
    if mode == "fatal":
        raise corral.Fatal("cannot ever work")
    if mode == "raise":
        return {"value": {}["missing"]}
    return args
