//! `normalize`: first step of the text pipeline (normalize → count-words →
//! top-k).
//!
//! Reads the string arg `text`, lowercases it, turns every character that is
//! not alphanumeric into a space and collapses runs of whitespace into single
//! spaces (no leading or trailing space). Writes the result back to `text`
//! and passes every other arg through unchanged. Log: `normalized N chars`,
//! N being the length of the input in characters.

use corral_guest::{Args, Context, Error, Output, export_handler};

fn normalize(_ctx: Context, mut args: Args) -> Result<Output, Error> {
    let text: String = args.get("text")?;
    let normalized = normalize_text(&text);
    args.insert("text", &normalized)?;
    let log = format!("normalized {} chars", text.chars().count());
    Ok(Output::new(args).log(log))
}

/// Lowercase words made of alphanumeric characters, joined by single spaces.
fn normalize_text(text: &str) -> String {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

export_handler!(normalize);

#[cfg(test)]
mod tests {
    use super::normalize_text;

    #[test]
    fn lowercases_and_collapses_punctuation_and_whitespace() {
        assert_eq!(
            normalize_text("  The CAT, the\tcat!\n(42x) "),
            "the cat the cat 42x"
        );
    }

    #[test]
    fn keeps_non_ascii_letters() {
        assert_eq!(normalize_text("Été—STRASSE straße"), "été strasse straße");
    }

    #[test]
    fn nothing_alphanumeric_gives_empty_text() {
        assert_eq!(normalize_text(" ,;- "), "");
    }
}
