//! A `tracing-subscriber` field formatter that writes every field inert.
//!
//! Owns [`InertFields`]: the escaping rule of `corral_core::text`
//! ([`write_inert`]) applied to every field value and message an event
//! carries, whatever its call site did, so a subscriber that uses it writes
//! one line per event even when an error's `Display` quotes guest text or a
//! tenant's name. The sandbox's own events already wrap guest text in
//! [`Inert`](corral_core::text::Inert); this is the second line of defence
//! for a host's log output. It never decides what is logged.

use std::fmt::{self, Write as _};

use corral_core::text::write_inert;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// A `tracing-subscriber` fmt field formatter that writes every field value
/// and message inert (see `corral_core::text`), in the default formatter's
/// `message field=value ...` layout.
///
/// ```no_run
/// tracing_subscriber::fmt()
///     .fmt_fields(corral_sandbox::InertFields)
///     .init();
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct InertFields;

impl<'writer> FormatFields<'writer> for InertFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = InertVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct InertVisitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

/// Escapes what is written through it.
struct Escaping<'a, 'writer>(&'a mut Writer<'writer>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_inert(self.0, s)
    }
}

impl Visit for InertVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        // Metadata of events bridged from the `log` crate, already shown as
        // the event's target.
        if name.starts_with("log.") {
            return;
        }
        self.result = write_field(&mut self.writer, self.first, name, value);
        self.first = false;
    }
}

fn write_field(
    writer: &mut Writer<'_>,
    first: bool,
    name: &str,
    value: &dyn fmt::Debug,
) -> fmt::Result {
    if !first {
        writer.write_char(' ')?;
    }
    if name != "message" {
        writer.write_str(name.strip_prefix("r#").unwrap_or(name))?;
        writer.write_char('=')?;
    }
    write!(Escaping(writer), "{value:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::text::needs_escape;

    /// The subscriber `corral`'s binary installs writes one line per event,
    /// whatever its fields hold and however they were recorded.
    #[test]
    fn the_inert_field_formatter_keeps_every_event_on_one_line() {
        use std::io;
        use std::sync::{Arc, Mutex};

        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Buffer {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let mut bytes = self.0.lock().unwrap_or_else(|p| p.into_inner());
                bytes.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }

        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(InertFields)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .with_max_level(tracing::Level::TRACE)
            .finish();
        let hostile = "q\n INFO corral: forged\r\x1b[2J\u{2028}\u{202e}\0";
        let error = std::io::Error::other(hostile);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("span", name = %hostile);
            let _entered = span.enter();
            tracing::warn!(queue = %hostile, debug = ?hostile, plain = hostile, "message {hostile}");
            tracing::error!(error = &error as &dyn std::error::Error, "failed");
            tracing::info!(r#type = %hostile, count = 3, "done");
        });
        let bytes = buffer.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let text = String::from_utf8(bytes).expect("UTF-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        for line in &lines {
            assert!(!line.chars().any(needs_escape), "{line:?}");
        }
        assert!(
            lines[0].starts_with(" WARN span{name=q\\n INFO corral: forged"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains(": message q\\n INFO"), "{}", lines[0]);
        assert!(lines[0].contains(" queue=q\\n"), "{}", lines[0]);
        assert!(
            lines[2].contains(" type=q\\n") && lines[2].ends_with(" count=3"),
            "{}",
            lines[2]
        );
    }
}
