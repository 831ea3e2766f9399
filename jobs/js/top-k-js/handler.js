// top-k-js: the end of the polyglot text pipeline (Rust `normalize` ->
// Python `count-words-py` -> this). Adds `top`, the `k` (default 3) most
// frequent words as [word, count] pairs (count descending, then word), and
// `summary`; keeps the other args: the same result as the Rust `top-k`.
// `./corral.js` is the guest SDK: `corral build` supplies it
// (guest-sdk/js/corral.js) when the folder has none.
import { handler, Fatal } from "./corral.js";

const DEFAULT_K = 3;

export const handle = handler((args) => {
  const { counts } = args;
  if (counts === null || typeof counts !== "object" || Array.isArray(counts)) {
    throw new Fatal("arg `counts` must be an object of word -> count");
  }
  const k = args.k ?? DEFAULT_K;
  if (!Number.isInteger(k) || k < 0) throw new Fatal("arg `k` must be a non-negative integer");
  const entries = Object.entries(counts);
  for (const [word, count] of entries) {
    if (!Number.isInteger(count) || count < 0) {
      throw new Fatal(`count of \`${word}\` must be a non-negative integer`);
    }
  }
  entries.sort(([wa, ca], [wb, cb]) => cb - ca || (wa < wb ? -1 : wa > wb ? 1 : 0));
  const top = entries.slice(0, k);
  let summary = `top ${top.length} of ${entries.length} distinct`;
  if (top.length > 0) summary += ": " + top.map(([w, c]) => `${w} (${c})`).join(", ");
  return [{ ...args, top, summary }, summary];
});
