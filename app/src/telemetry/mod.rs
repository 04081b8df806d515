//! Tracing set-up for the binaries (libraries only emit events).

mod line;

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
        // A terminal gets tracing-subscriber's colours; files and pipes
        // the same text from the cheaper `line::Line`.
        LogFormat::Text if ansi => builder.try_init(),
        LogFormat::Text => builder.event_format(line::Line).fmt_fields(line::Fields).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}

/// `warn` unless `RUST_LOG` says otherwise, as text: for command-line
/// tools whose stdout is their output.
pub fn init_quiet() {
    init(&LogSettings { level: "warn".to_owned(), format: LogFormat::Text });
}

/// Logs which settings layers were loaded (files, profile, the names of the
/// `COURIER_*` variables; never a value), and warns about keys a file sets
/// under `[default]` that the built-in profile table overrides.
pub fn log_settings(settings: &settings::Settings) {
    let sources = &settings.sources;
    tracing::info!(layers = %sources, "settings loaded");
    for shadowed in &sources.shadowed {
        tracing::warn!(
            key = %shadowed,
            profile = %sources.profile,
            "a [default] key that the built-in [{}] table overrides: set it under [{}] instead",
            sources.profile,
            sources.profile
        );
    }
}

/// A duration for logs and messages, to the millisecond (`1s 250ms`), not
/// `Debug`'s `1.250371s`.
pub fn human(duration: std::time::Duration) -> humantime::FormattedDuration {
    humantime::format_duration(std::time::Duration::from_millis(duration.as_millis().try_into().unwrap_or(u64::MAX)))
}
