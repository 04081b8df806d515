//! Output for people and for pipes: progress only on a terminal (a pipe or
//! a log file never gets `\r` or escape codes), and JSON for scripts.

use std::io::{IsTerminal, Write};

use serde::Serialize;

/// A one-line status on stderr, rewritten in place on a terminal and
/// silent otherwise (its last words go to the final report instead).
#[derive(Debug)]
pub struct Progress {
    terminal: bool,
}

impl Progress {
    /// Progress on stderr if stderr is a terminal.
    pub fn stderr() -> Self {
        Self { terminal: std::io::stderr().is_terminal() }
    }

    /// Whether anything will be shown.
    pub fn is_shown(&self) -> bool {
        self.terminal
    }

    /// Replaces the status line with `text`.
    pub fn set(&self, text: &str) {
        if self.terminal {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K  {text}");
            let _ = err.flush();
        }
    }

    /// Clears the status line (before the report is printed).
    pub fn clear(&self) {
        if self.terminal {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
    }
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) ends the
/// output quietly instead of with a panic.
pub fn print_bytes(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}

/// Writes `text` to stdout, as [`print_bytes`].
pub fn print_text(text: &str) {
    print_bytes(text.as_bytes());
}

/// Prints `value` as one line of JSON on stdout.
pub fn print_json_line(value: &impl Serialize) {
    match serde_json::to_string(value) {
        Ok(json) => print_text(&format!("{json}\n")),
        Err(err) => print_text(&format!("{{\"error\": \"cannot render as JSON: {err}\"}}\n")),
    }
}

/// Prints `value` as indented JSON on stdout.
pub fn print_json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(json) => print_text(&format!("{json}\n")),
        Err(err) => print_text(&format!("{{\"error\": \"cannot render as JSON: {err}\"}}\n")),
    }
}
