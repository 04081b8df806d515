//! `COPY ... FROM STDIN` in text format, as the task index's writer sends
//! a batch: each line its fields split by tabs, `\N` for NULL, what COPY
//! reads as syntax escaped, sent in parts of about 1 MiB.

use super::Row;

/// COPY data sent at once, at most: a batch is sent in parts, never held
/// whole (2,000 rows of up to 16 KiB would be 32 MiB).
const COPY_PART: usize = 1 << 20;

/// Streams `lines` into `statement` in parts of about [`COPY_PART`] bytes,
/// ending the copy either way.
pub(super) async fn copy_in(tx: &mut sqlx::PgConnection, statement: &str, lines: Lines<'_>) -> Result<(), sqlx::Error> {
    let mut copy = tx.copy_in_raw(statement).await?;
    let mut at = (0, 0);
    // One buffer for every part, sized for the batch's usual rows (a few
    // hundred bytes each) up to a full part: a part ends at the first line
    // past COPY_PART, and a line holds at most about 16 KiB.
    let (Lines::Rows(rows, _) | Lines::Keys(rows)) = lines;
    let mut part = Vec::with_capacity((rows.len() * 512).min(COPY_PART + 64 * 1024));
    loop {
        part.clear();
        lines.fill(&mut at, &mut part);
        if part.is_empty() {
            break;
        }
        if let Err(err) = copy.send(&part[..]).await {
            // Ends the copy (or finds the connection gone): the error that
            // matters is the send's.
            let _ = copy.abort("the task index's data was not sent").await;
            return Err(err);
        }
    }
    copy.finish().await.map(drop)
}

/// What a COPY sends: a batch's rows (and the worker that wrote them), or
/// their keys.
#[derive(Clone, Copy)]
pub(super) enum Lines<'a> {
    Rows(&'a [Row], &'a str),
    Keys(&'a [Row]),
}

impl Lines<'_> {
    /// Writes COPY lines from `at` (a row, and a key of it) on, until
    /// `part` holds [`COPY_PART`] bytes or none is left.
    fn fill(self, at: &mut (usize, usize), part: &mut Vec<u8>) {
        use Field::{Int, Text};
        let (Lines::Rows(rows, _) | Lines::Keys(rows)) = self;
        while part.len() < COPY_PART {
            let Some(row) = rows.get(at.0) else { return };
            match self {
                Lines::Rows(_, worker) => {
                    copy_row(
                        part,
                        &[
                            Text(Some(&row.task_id)),
                            Text(Some(&row.task_name)),
                            Text(Some(row.status)),
                            Int(Some(row.attempt)),
                            Text(Some(&row.labels)),
                            Text(Some(&row.arguments)),
                            Text(row.result.as_deref()),
                            Text(row.error.as_deref()),
                            Int(row.started_at),
                            Int(Some(row.finished_at)),
                            Int(Some(row.elapsed_ms)),
                            Text(Some(worker)),
                        ],
                    );
                    at.0 += 1;
                }
                Lines::Keys(_) => match row.keys.get(at.1) {
                    Some((name, value)) => {
                        let fields =
                            [Text(Some(name)), Text(Some(value)), Text(Some(&row.task_id)), Int(Some(row.finished_at))];
                        copy_row(part, &fields);
                        at.1 += 1;
                    }
                    None => *at = (at.0 + 1, 0),
                },
            }
        }
    }
}

/// A value of a COPY line.
enum Field<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
}

/// One line of COPY's text format: fields split by tabs, `\N` for NULL, and
/// a backslash, tab, newline or carriage return in a text escaped.
fn copy_row(out: &mut Vec<u8>, fields: &[Field<'_>]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match field {
            Field::Text(Some(text)) => copy_text(out, text.as_bytes()),
            Field::Int(Some(n)) => copy_int(out, *n),
            Field::Text(None) | Field::Int(None) => out.extend_from_slice(b"\\N"),
        }
    }
    out.push(b'\n');
}

fn copy_text(out: &mut Vec<u8>, bytes: &[u8]) {
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut plain = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..at]);
        out.extend_from_slice(escaped);
        plain = at + 1;
    }
    out.extend_from_slice(&bytes[plain..]);
}

/// Whether `bytes` may hold a byte COPY reads as syntax. Nearly every
/// value holds none: 16 bytes at a time, two comparisons a byte without
/// an early exit (what the compiler vectorizes); the rare other control
/// character is sent the slow way too.
fn needs_escape(bytes: &[u8]) -> bool {
    let special = |byte: u8| (byte <= b'\r') | (byte == b'\\');
    let mut blocks = bytes.chunks_exact(16);
    for block in &mut blocks {
        if block.iter().fold(false, |found, &byte| found | special(byte)) {
            return true;
        }
    }
    blocks.remainder().iter().any(|&byte| special(byte))
}

/// `n` in decimal, without the formatting machinery.
fn copy_int(out: &mut Vec<u8>, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_lines_escape_what_copy_reads_as_syntax() {
        let mut out = Vec::new();
        copy_row(
            &mut out,
            &[Field::Text(Some("a\tb\nc\rd\\N")), Field::Text(None), Field::Int(Some(-7)), Field::Int(None)],
        );
        assert_eq!(out, b"a\\tb\\nc\\rd\\\\N\t\\N\t-7\t\\N\n");
        out.clear();
        copy_row(
            &mut out,
            &[Field::Int(Some(0)), Field::Int(Some(i64::MIN)), Field::Int(Some(i64::MAX)), Field::Text(Some("é"))],
        );
        assert_eq!(out, "0\t-9223372036854775808\t9223372036854775807\té\n".as_bytes());
        for at in 0..40 {
            let mut text = vec![b'a'; 40];
            text[at] = b'\\';
            assert!(needs_escape(&text), "a backslash at {at}");
            text[at] = 0x0b;
            assert!(needs_escape(&text), "a control character at {at}");
        }
        assert!(!needs_escape("a long value with no special byte, é and all".as_bytes()));
    }

    #[test]
    fn a_batch_is_sent_in_parts_of_whole_lines() {
        let row = |i: usize| Row {
            task_id: format!("t{i}"),
            task_name: "noop".into(),
            status: "success",
            attempt: 1,
            labels: "x".repeat(4_000),
            arguments: "{}".into(),
            result: None,
            error: None,
            started_at: None,
            finished_at: 1,
            elapsed_ms: 0,
            keys: (0..i % 3).map(|k| (format!("k{k}"), "v".into())).collect(),
        };
        let rows: Vec<Row> = (0..700).map(row).collect();
        for (lines, expected) in [(Lines::Rows(&rows, "w"), 700), (Lines::Keys(&rows), 699)] {
            let (mut at, mut parts, mut seen) = ((0, 0), 0, 0);
            loop {
                let mut part = Vec::new();
                lines.fill(&mut at, &mut part);
                if part.is_empty() {
                    break;
                }
                parts += 1;
                assert_eq!(part.last(), Some(&b'\n'), "a part ends with a whole line");
                assert!(part.len() < COPY_PART + 4_200, "{}", part.len());
                seen += part.iter().filter(|&&b| b == b'\n').count();
            }
            assert_eq!(seen, expected, "every line once");
            assert!(parts > 1 || expected < 700, "2.8 MB of rows in more than one part");
        }
    }
}
