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

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> Context {
        Context {
            task_id: "task".to_owned(),
            job: "text".to_owned(),
            tenant: "tenant".to_owned(),
            attempt: 1,
            handler_index: 1,
            handler_count: 3,
        }
    }

    #[test]
    fn counts_words_and_keeps_other_args() -> Result<(), Error> {
        let mut args = Args::new();
        args.insert("text", "the cat  the\nhat")?;
        args.insert("lang", "en")?;

        let mut expected = args.clone();
        let counts = BTreeMap::from([("cat", 1u64), ("hat", 1), ("the", 2)]);
        expected.insert("counts", &counts)?;
        expected.insert("total", &4u64)?;

        assert_eq!(
            count_words(context(), args)?,
            Output::new(expected).log("counted 4 words, 3 distinct")
        );
        Ok(())
    }

    #[test]
    fn missing_text_is_fatal() {
        let err = count_words(context(), Args::new()).unwrap_err();
        assert!(!err.is_retryable());
    }
}
