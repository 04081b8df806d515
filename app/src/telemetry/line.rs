//! The text log line, written as tracing-subscriber's default (`Full`)
//! format writes it without colours, byte for byte, at a fraction of its
//! cost: that format paints every field name, `=` and `:` through an
//! (empty) ANSI style, formats the time through `fmt`, and writes a message
//! character by character to escape terminal controls. A worker at full
//! load writes a line per task, and spent about 7 % of its instructions there.
//!
//! `2026-12-07T22:10:00.123456Z  INFO task{task.id="…" task.name="noop"}: courier::worker::jetstream: task succeeded elapsed_ms=0.2`

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events: time, level, the spans with their fields, target, fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct Line;

/// Formats fields (an event's, a span's): `message` bare and first as
/// given, the others `name=value` with `Debug` values (strings quoted).
#[derive(Debug, Clone, Copy, Default)]
pub struct Fields;

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        timestamp(&mut writer, SystemTime::now())?;
        writer.write_str(match *meta.level() {
            Level::TRACE => "TRACE ",
            Level::DEBUG => "DEBUG ",
            Level::INFO => " INFO ",
            Level::WARN => " WARN ",
            Level::ERROR => "ERROR ",
        })?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                seen = true;
                writer.write_str(span.metadata().name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>().filter(|f| !f.is_empty()) {
                    writer.write_char('{')?;
                    writer.write_str(fields)?;
                    writer.write_char('}')?;
                }
                writer.write_char(':')?;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

impl<'writer> FormatFields<'writer> for Fields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Visitor { writer, empty: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'a> {
    writer: Writer<'a>,
    empty: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    /// Writes the separator and `name=` (nothing for the message); false
    /// if an earlier write failed.
    fn start(&mut self, field: &Field) -> bool {
        if self.result.is_err() {
            return false;
        }
        if !std::mem::replace(&mut self.empty, false) {
            self.result = self.writer.write_char(' ');
        }
        let name = field.name();
        if name != "message" {
            let name = name.strip_prefix("r#").unwrap_or(name);
            self.result =
                self.result.and_then(|()| self.writer.write_str(name)).and_then(|()| self.writer.write_char('='));
        }
        self.result.is_ok()
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.start(field) {
            return;
        }
        self.result = if field.name() == "message" {
            Escaping(&mut self.writer).write_str(value)
        } else if value.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\') {
            // `Debug` of a string that needs no escape: the string quoted.
            self.writer
                .write_char('"')
                .and_then(|()| self.writer.write_str(value))
                .and_then(|()| self.writer.write_char('"'))
        } else {
            write!(self.writer, "{value:?}")
        };
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if !self.start(field) {
            return;
        }
        let mut out = Escaping(&mut self.writer);
        self.result = write!(out, "{value}");
        if let Some(source) = value.source() {
            let name = field.name();
            self.result = self.result.and_then(|()| write!(self.writer, " {name}.sources=[")).and_then(|()| {
                let mut next = Some(source);
                let mut first = true;
                while let Some(error) = next {
                    if !std::mem::replace(&mut first, false) {
                        self.writer.write_str(", ")?;
                    }
                    write!(Escaping(&mut self.writer), "{error}")?;
                    next = error.source();
                }
                self.writer.write_char(']')
            });
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.start(field) {
            return;
        }
        self.result = if field.name() == "message" {
            write!(Escaping(&mut self.writer), "{value:?}")
        } else {
            write!(self.writer, "{value:?}")
        };
    }
}

/// Writes through, escaping the controls a terminal acts on (ESC, BEL,
/// BS, FF, DEL, and C1 as `\u{..}`), as tracing-subscriber does in messages.
struct Escaping<'a, 'b>(&'a mut Writer<'b>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let control = |c: char| matches!(c, '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}');
        if !text.chars().any(control) {
            return self.0.write_str(text);
        }
        for c in text.chars() {
            match c {
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                c if control(c) => write!(self.0, "\\x{:02x}", c as u32)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// `2026-12-07T22:10:00.123456Z ` (UTC, microseconds, then a space).
fn timestamp(writer: &mut Writer<'_>, now: SystemTime) -> fmt::Result {
    let Some((since, (year, month, day))) = now
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|since| (since, civil(since.as_secs() / 86_400)))
        .filter(|(_, (year, ..))| *year <= 9999)
    else {
        // A clock before 1970 or past 9999: written as tracing-subscriber
        // writes it (a sign before years of more than four digits).
        return write!(writer, "{} ", chrono::DateTime::<chrono::Utc>::from(now).format("%Y-%m-%dT%H:%M:%S%.6fZ"));
    };
    let secs = since.as_secs();
    let of_day = secs % 86_400;
    let mut text = [0_u8; 28];
    let mut put = |at: usize, value: u64, width: usize| {
        let mut value = value;
        for i in (at..at + width).rev() {
            text[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, of_day / 3600, 2);
    put(14, of_day / 60 % 60, 2);
    put(17, of_day % 60, 2);
    put(20, u64::from(since.subsec_micros()), 6);
    for (at, byte) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.'), (26, b'Z'), (27, b' ')] {
        text[at] = byte;
    }
    // Only ASCII digits and separators were written.
    writer.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
}

/// The proleptic Gregorian date of `days` since 1970-01-01.
fn civil(days: u64) -> (u64, u64, u64) {
    // Howard Hinnant's days-to-civil, counted from 0000-03-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[derive(Debug)]
    struct Failure(&'static str, Option<Box<Failure>>);

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Failure {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    /// Every kind of field and message a worker logs, in and out of spans.
    fn events() {
        let span = tracing::info_span!(
            "task",
            task.id = tracing::field::Empty,
            task.name = tracing::field::Empty,
            task.delivery = 1_u32,
            task.outcome = tracing::field::Empty
        );
        let _entered = span.enter();
        tracing::info!("before the fields are known");
        span.record("task.id", "0b9c2f0e6a4d4b5c8f1e2d3c4b5a6978");
        span.record("task.name", "send \"report\"\n");
        span.record("task.outcome", "success");
        tracing::info!(elapsed_ms = 0.25_f64, "task succeeded");
        tracing::warn!(error = "a \\ backslash", retry_in = %"1s 250ms", attempt = 2_u64, gone = false, "task failed; will retry");
        let inner = tracing::debug_span!("inner", r#type = "x");
        inner.in_scope(|| tracing::error!(delta = -3_i64, "nested {} and \x1b[31mred\x1b[0m \u{85}", 42));
        let error = Failure("outer", Some(Box::new(Failure("middle \x07", Some(Box::new(Failure("root", None)))))));
        tracing::warn!(error = &error as &(dyn std::error::Error + 'static), "with sources");
        tracing::warn!(error = &Failure("alone", None) as &(dyn std::error::Error + 'static));
        tracing::info!(empty = "", unicode = "chat ✓ é", "");
    }

    #[test]
    fn lines_match_tracing_subscribers_full_format_without_colours() {
        let theirs = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_ansi(false)
            .without_time()
            .with_writer(theirs.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, events);
        let ours = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_writer(ours.clone())
            .event_format(Line)
            .fmt_fields(Fields)
            .finish();
        tracing::subscriber::with_default(subscriber, events);
        let (theirs, ours) = (theirs.text(), ours.text());
        assert_eq!(theirs.lines().count(), 7, "{theirs}");
        // Ours start with the time and a space; theirs were asked for none.
        let ours: String = ours.lines().map(|line| format!("{}\n", &line[28..])).collect();
        for (theirs, ours) in theirs.lines().zip(ours.lines()) {
            assert_eq!(ours, theirs);
        }
        assert_eq!(ours, theirs);
    }

    #[test]
    fn the_time_is_utc_to_the_microsecond() {
        let at = |secs: u64, nanos: u32| {
            let mut text = String::new();
            timestamp(&mut Writer::new(&mut text), UNIX_EPOCH + Duration::new(secs, nanos)).unwrap();
            text
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z ");
        assert_eq!(at(1_700_000_000, 123_456_789), "2023-11-14T22:13:20.123456Z ");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000000Z ");
        assert_eq!(at(1_709_251_199, 999_999_999), "2024-02-29T23:59:59.999999Z ");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z ");
        assert_eq!(at(253_402_300_799, 0), "9999-12-31T23:59:59.000000Z ");
        assert_eq!(at(253_402_300_800, 5_000), "+10000-01-01T00:00:00.000005Z ");
        let before = UNIX_EPOCH - Duration::from_millis(500);
        let mut text = String::new();
        timestamp(&mut Writer::new(&mut text), before).unwrap();
        assert_eq!(text, "1969-12-31T23:59:59.500000Z ");
    }
}
