//! Tracing set-up for the binaries (libraries only emit events).

use settings::{LogFormat, LogSettings};
use tracing_subscriber::EnvFilter;

/// Installs the subscriber on stderr: `RUST_LOG` if set, else `log.level`
/// (with the chatter of async-nats and of PostgreSQL notices at `warn` unless asked for); text or JSON lines.
pub fn init(log: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{},async_nats=warn,sqlx::postgres::notice=warn", log.level)))
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}

/// `warn` unless `RUST_LOG` says otherwise, as text: for command-line
/// tools whose stdout is their output.
pub fn init_quiet() {
    init(&LogSettings { level: "warn".to_owned(), format: LogFormat::Text });
}
