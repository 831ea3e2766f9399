//! `top-k`: last step of the text pipeline (normalize → count-words → top-k).
//!
//! Reads `counts` (a JSON object, word → count) and the optional `k` (default
//! 3). Adds `top`, an array of `[word, count]` pairs for the `k` most frequent
//! words (by count descending, then word ascending), and `summary`, e.g.
//! `top 3 of 12 distinct: the (4), a (2), cat (1)`; passes every other arg
//! through unchanged. Log: the summary.

use std::collections::BTreeMap;

use corral_guest::{Args, Context, Error, Output, export_handler};

const DEFAULT_K: usize = 3;

fn top_k(_ctx: Context, mut args: Args) -> Result<Output, Error> {
    let counts: BTreeMap<String, u64> = args.get("counts")?;
    let k = args.get_opt::<usize>("k")?.unwrap_or(DEFAULT_K);

    let distinct = counts.len();
    let mut top: Vec<(String, u64)> = counts.into_iter().collect();
    top.sort_by(|(word_a, count_a), (word_b, count_b)| {
        count_b.cmp(count_a).then_with(|| word_a.cmp(word_b))
    });
    top.truncate(k);

    let mut summary = format!("top {} of {distinct} distinct", top.len());
    if !top.is_empty() {
        let entries: Vec<String> = top
            .iter()
            .map(|(word, count)| format!("{word} ({count})"))
            .collect();
        summary.push_str(": ");
        summary.push_str(&entries.join(", "));
    }

    args.insert("top", &top)?;
    args.insert("summary", &summary)?;
    Ok(Output::new(args).log(summary))
}

export_handler!(top_k);
