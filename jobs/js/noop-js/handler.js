// noop-js: returns its args unchanged with an empty log. The cheapest
// JavaScript handler, used by `corral bench` to measure the per-task overhead
// of a JavaScript guest.
// `./corral.js` is the guest SDK: `corral build` supplies it
// (guest-sdk/js/corral.js) when the folder has none.
import { handler } from "./corral.js";

export const handle = handler((args) => args);
