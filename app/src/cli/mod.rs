//! What the three binaries (`worker`, `producer`, `bot`) share on the
//! command line: one exit-code table, shell completions, output for people
//! and for pipes, the task listing, and the values `producer` parses.

mod args;
pub mod completions;
pub mod exit;
pub mod output;
pub mod tasks;

pub use args::{envelope_from_json, filter, parse_label, parse_when};
pub use exit::{EXIT_CODES, Exit};
