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
    let top = most_frequent(counts, k);
    let summary = summarize(&top, distinct);
    args.insert("top", &top)?;
    args.insert("summary", &summary)?;
    Ok(Output::new(args).log(summary))
}

/// The `k` most frequent words, by count descending, then word ascending.
fn most_frequent(counts: BTreeMap<String, u64>, k: usize) -> Vec<(String, u64)> {
    let mut top: Vec<(String, u64)> = counts.into_iter().collect();
    top.sort_by(|(word_a, count_a), (word_b, count_b)| {
        count_b.cmp(count_a).then_with(|| word_a.cmp(word_b))
    });
    top.truncate(k);
    top
}

/// `top 3 of 12 distinct: the (4), a (2), cat (1)`.
fn summarize(top: &[(String, u64)], distinct: usize) -> String {
    let mut summary = format!("top {} of {distinct} distinct", top.len());
    if !top.is_empty() {
        let entries: Vec<String> = top
            .iter()
            .map(|(word, count)| format!("{word} ({count})"))
            .collect();
        summary.push_str(": ");
        summary.push_str(&entries.join(", "));
    }
    summary
}

export_handler!(top_k);

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|&(w, c)| (w.to_owned(), c)).collect()
    }

    #[test]
    fn sorts_by_count_then_word_and_summarizes() {
        let all = counts(&[("cat", 1), ("the", 4), ("a", 2), ("bat", 1), ("zoo", 2)]);
        let top = most_frequent(all, 3);
        assert_eq!(
            top,
            [
                ("the".to_owned(), 4),
                ("a".to_owned(), 2),
                ("zoo".to_owned(), 2)
            ]
        );
        assert_eq!(
            summarize(&top, 5),
            "top 3 of 5 distinct: the (4), a (2), zoo (2)"
        );
    }

    #[test]
    fn k_larger_than_distinct_keeps_everything() {
        let top = most_frequent(counts(&[("b", 1), ("a", 1)]), 10);
        assert_eq!(summarize(&top, 2), "top 2 of 2 distinct: a (1), b (1)");
    }

    #[test]
    fn empty_counts() {
        let top = most_frequent(BTreeMap::new(), 3);
        assert_eq!(summarize(&top, 0), "top 0 of 0 distinct");
    }
}
