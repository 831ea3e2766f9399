//! `tally`: a step of the workflow examples and tests.
//!
//! With a `results` list (a chord's callback, or whatever follows a
//! group), sums each result's `n` into `n` and records how many there were
//! in `count`; otherwise adds `add` (default 1) to `n` (default 0). Every
//! other arg passes through. Fails for good when `fail` is true, so a test
//! can kill one step of a workflow on purpose. Log: what it computed.

use corral_guest::{Args, Context, Error, Output, export_handler};

fn tally(_ctx: Context, mut args: Args) -> Result<Output, Error> {
    if args.get_opt::<bool>("fail")?.unwrap_or(false) {
        return Err(Error::fatal("asked to fail"));
    }
    let log = match args.remove("results") {
        Some(results) => {
            let items = results
                .as_array()
                .ok_or_else(|| Error::fatal("`results` is not a list"))?;
            let mut sum: i64 = 0;
            for item in items {
                let n = item.get("n").and_then(|n| n.as_i64()).unwrap_or(0);
                sum = sum.saturating_add(n);
            }
            args.insert("n", &sum)?;
            args.insert("count", &items.len())?;
            format!("summed {} results to {sum}", items.len())
        }
        None => {
            let n: i64 = args.get_opt("n")?.unwrap_or(0);
            let add: i64 = args.get_opt("add")?.unwrap_or(1);
            let total = n.saturating_add(add);
            args.insert("n", &total)?;
            format!("{n} + {add} = {total}")
        }
    };
    Ok(Output::new(args).log(log))
}

export_handler!(tally);
