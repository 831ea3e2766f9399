// hostile-js: misbehaves as arg `mode` says, for the hostile-guest tests:
// `loop` spins forever, `alloc` allocates without bound, `recurse` recurses
// without bound, `throw` throws an uncaught TypeError, `retry` and `fatal`
// throw the SDK's `Retryable` and `Fatal`; anything else returns the args.
// `./corral.js` is the guest SDK: `corral build` supplies it
// (guest-sdk/js/corral.js) when the folder has none.
import { handler, Retryable, Fatal } from "./corral.js";

function recurse(n) {
  return recurse(n + 1) + 1;
}

export const handle = handler((args) => {
  switch (args.mode) {
    case "loop": {
      let n = 0;
      for (;;) n++;
    }
    case "alloc": {
      const hoard = [];
      for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
    }
    case "recurse":
      return { depth: recurse(0) };
    case "retry":
      throw new Retryable("try again later");
    case "fatal":
      throw new Fatal("cannot ever work");
    case "throw":
      return { value: null.missing };
    default:
      return args;
  }
});
