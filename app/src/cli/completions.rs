//! `<binary> completions <SHELL>`: a completion script for bash, zsh, fish,
//! elvish or PowerShell on stdout, generated from the binary's own flags.
//!
//! ```sh
//! producer completions bash > ~/.local/share/bash-completion/completions/producer
//! ```

use clap::CommandFactory;
use clap_complete::Shell;

/// The `completions` subcommand's arguments (each binary embeds it).
#[derive(Debug, clap::Args)]
pub struct Completions {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: Shell,
}

impl Completions {
    /// Prints the script for the binary whose command line is `C`.
    pub fn print<C: CommandFactory>(&self) {
        let mut command = C::command();
        let name = command.get_name().to_owned();
        // Into a buffer: clap_complete panics when it cannot write, and a
        // closed pipe is no reason to panic.
        let mut script = Vec::new();
        clap_complete::generate(self.shell, &mut command, name, &mut script);
        crate::cli::output::print_bytes(&script);
    }
}
