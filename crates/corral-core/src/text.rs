//! Text a guest or a tenant chose, on its way into a log line or a stored
//! record: made inert, and bounded.
//!
//! Guests write log lines, error messages, arg names; tenants choose job,
//! handler, queue and tenant names, and a raw push can put anything in a
//! task id or a job name. None of it may forge a line in the worker's or the
//! server's log, restyle an operator's terminal, or reorder what is shown
//! around it. This module owns the one rule for that and both places it is
//! applied:
//!
//! - [`Inert`] (and [`push_inert`], [`inert_capped`]) escape every
//!   character that could break or restyle a line: C0 and C1 controls
//!   (newline, carriage return, tab, NUL, ESC, DEL, NEL, ...), the Unicode
//!   line and paragraph separators, and the bidirectional-text controls.
//!   `\n`, `\r`, `\t` and `\0` become those two-character escapes; anything
//!   else becomes `\u{..}`. Everything else, backslashes included, passes
//!   unchanged: the result is for people reading logs, not a reversible
//!   encoding. Library code wraps guest text and tenant-chosen names in
//!   [`Inert`] where they enter a tracing field or message, so an embedder's
//!   own subscriber gets one line per event too; the sandbox stores guest
//!   log lines and error messages already escaped.
//! - `InertFields` (in `corral-sandbox`, beside the guest text it guards)
//!   is a field formatter for `tracing-subscriber`'s fmt layer that applies
//!   the same escaping ([`write_inert`]) to every field value and message,
//!   whatever the call site did; `corral`'s own subscriber uses it, so an
//!   error's `Display` that quotes a queue name cannot break a line either.
//!   Escaping is idempotent on text that is already inert.
//!
//! Bounding is by bytes of escaped text: [`push_inert`] never writes past a
//! limit, doing work in proportion to what it keeps, not to the input's size.
//!
//! This module only transforms text; it never decides what is logged or
//! stored, and never drops a character silently (what is cut is counted).

use std::fmt::{self, Write as _};

/// Whether `c` could break a log line or restyle a terminal.
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Line and paragraph separators: a line break to many viewers.
            '\u{2028}' | '\u{2029}'
            // Bidirectional controls: reorder the text shown around them.
            | '\u{061C}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
        )
}

/// Writes the escape of `c` (one that [`needs_escape`]).
fn write_escape<W: fmt::Write + ?Sized>(out: &mut W, c: char) -> fmt::Result {
    match c {
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        '\0' => out.write_str("\\0"),
        c => write!(out, "\\u{{{:x}}}", c as u32),
    }
}

/// Writes `s` to `out` with every character that [`needs_escape`] escaped.
pub fn write_inert<W: fmt::Write + ?Sized>(out: &mut W, s: &str) -> fmt::Result {
    let mut clean_from = 0;
    for (i, c) in s.char_indices() {
        if needs_escape(c) {
            out.write_str(&s[clean_from..i])?;
            write_escape(out, c)?;
            clean_from = i + c.len_utf8();
        }
    }
    out.write_str(&s[clean_from..])
}

/// Displays a string with every character that could break or restyle a
/// line escaped (see the module docs). Costs nothing when the string is
/// clean beyond one scan.
#[derive(Clone, Copy)]
pub struct Inert<'a>(pub &'a str);

impl fmt::Display for Inert<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_inert(f, self.0)
    }
}

impl fmt::Debug for Inert<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        write_inert(f, self.0)?;
        f.write_char('"')
    }
}

/// Appends `s` to `out`, escaped, without letting `out` grow past `limit`
/// bytes; returns how many bytes of `s` were taken (whole characters, each
/// with its whole escape). Work is proportional to what is appended.
pub fn push_inert(out: &mut String, s: &str, limit: usize) -> usize {
    let mut escape = String::new();
    for (i, c) in s.char_indices() {
        let piece: &str = if needs_escape(c) {
            escape.clear();
            // Writing to a String cannot fail.
            let _ = write_escape(&mut escape, c);
            &escape
        } else {
            // A character is at most 4 bytes: encode it in place.
            let len = c.len_utf8();
            &s[i..i + len]
        };
        if out.len() + piece.len() > limit {
            return i;
        }
        out.push_str(piece);
    }
    s.len()
}

/// `s` made inert and cut to at most `max` bytes of escaped text, on a
/// character boundary; when anything was cut, a short note saying how many
/// bytes of the original were dropped is appended (so the result may exceed
/// `max` by the note's length, under 50 bytes).
pub fn inert_capped(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    let taken = push_inert(&mut out, s, max);
    if taken < s.len() {
        // Writing to a String cannot fail.
        let _ = write!(out, " [truncated: {} more bytes]", s.len() - taken);
    }
    out
}

/// Whether `name` may name a job, a queue or a schedule: 1 to 128 of
/// letters, digits, `-`, `_`, `.`, `:` (so it needs no escaping anywhere).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_separators_and_bidi_are_escaped() {
        let s = "a\nb\rc\td\0e\x1b[31mf\x7fg\u{85}h\u{2028}i\u{202e}j\u{2066}k\\l";
        let shown = Inert(s).to_string();
        assert_eq!(
            shown,
            "a\\nb\\rc\\td\\0e\\u{1b}[31mf\\u{7f}g\\u{85}h\\u{2028}i\\u{202e}j\\u{2066}k\\l"
        );
        assert!(!shown.chars().any(needs_escape));
        // Already-inert text is left as it is.
        assert_eq!(Inert(&shown).to_string(), shown);
        assert_eq!(Inert("plain ünïcode ✓").to_string(), "plain ünïcode ✓");
    }

    #[test]
    fn push_inert_stops_at_the_limit_on_a_whole_escape() {
        let mut out = String::from("ab");
        let taken = push_inert(&mut out, "cd\nef", 5);
        assert_eq!(out, "abcd");
        assert_eq!(taken, 2);
        let mut out = String::new();
        assert_eq!(push_inert(&mut out, "é\u{202e}", 6), "é".len());
        assert_eq!(out, "é");
    }

    #[test]
    fn capped_text_notes_what_was_cut() {
        assert_eq!(inert_capped("short", 10), "short");
        let long = "x".repeat(100);
        assert_eq!(
            inert_capped(&long, 10),
            "xxxxxxxxxx [truncated: 90 more bytes]"
        );
        let capped = inert_capped(&"é".repeat(10), 5);
        assert!(
            capped.starts_with("éé [truncated: 16 more bytes]"),
            "{capped}"
        );
    }
}
