//! `count-words`: second step of the text pipeline (normalize → count-words →
//! top-k).
//!
//! Reads the string arg `text`, splits it on whitespace and counts each word.
//! Adds `counts` (a JSON object, word → count) and `total` (the number of
//! words) and passes every other arg, `text` included, through unchanged.
//! Log: `counted N words, M distinct`.

use std::collections::BTreeMap;

use corral_guest::{Args, Context, Error, Output, export_handler};

fn count_words(_ctx: Context, mut args: Args) -> Result<Output, Error> {
    let text: String = args.get("text")?;
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word).or_default() += 1;
    }
    let total: u64 = counts.values().sum();
    args.insert("counts", &counts)?;
    args.insert("total", &total)?;
    let log = format!("counted {total} words, {} distinct", counts.len());
    Ok(Output::new(args).log(log))
}

export_handler!(count_words);
