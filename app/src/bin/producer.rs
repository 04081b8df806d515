//! `producer`: not built yet (see the open issues); prints what it will do.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("producer: not available yet; it arrives with the broker and bot issues (see ARCHITECTURE.md)");
    ExitCode::from(2)
}
