//! Courier's settings, layered the Dynaconf way with figment.
//!
//! Layers, later ones winning (`layers.rs`): the compiled-in
//! `settings.toml`; the same file in `$COURIER_SETTINGS_DIR` (default
//! `./settings`); `.secrets.toml` beside it; then `COURIER_<SECTION>__<KEY>`
//! environment variables, which beat every profile. `COURIER_ENV` picks the
//! profile (`development` by default); every layer's `[<profile>]` table is
//! deep-merged over every layer's `[default]`. Unknown tables, sections and
//! keys are errors that suggest the nearest known name (`strict.rs`). This
//! crate is the only place that reads files or environment variables for
//! configuration.

mod duration;
mod layers;
mod secret;
mod sections;
mod show;
mod strict;
mod validate;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use layers::Sources;
pub use secret::{Secret, SecretUrl, SecretUrls, percent_decode, redact_url};
pub use sections::{
    BoardSettings, DatabaseSettings, IndexSettings, LogFormat, LogSettings, MissedTicks, NatsMode, NatsSettings,
    PaidWhenSpent, RedisSettings, ScheduleSettings, TelegramLimits, TelegramSettings, WorkerSettings,
};
pub use validate::Invalid;

/// Prefix of every environment variable Courier reads.
pub const ENV_PREFIX: &str = "COURIER_";
/// The variable that selects the profile.
pub const PROFILE_VAR: &str = "COURIER_ENV";
/// The variable that points at another settings folder.
pub const DIR_VAR: &str = "COURIER_SETTINGS_DIR";
/// The profile used when `COURIER_ENV` is unset.
pub const DEFAULT_PROFILE: &str = "development";
/// The profiles a deployment may select.
pub const PROFILES: &[&str] = &["development", "test", "production"];

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `COURIER_ENV` names a profile that does not exist.
    #[error("unknown profile {profile:?} in {PROFILE_VAR}; expected one of: {}", PROFILES.join(", "))]
    UnknownProfile {
        /// The name that was given.
        profile: String,
    },
    /// `COURIER_SETTINGS_DIR` names no folder (a typo there would otherwise
    /// silently run on the built-in defaults).
    #[error("{DIR_VAR} is {}, which is not a folder", .0.display())]
    MissingDir(PathBuf),
    /// A table, section or key that no setting has: a typo, most likely.
    #[error("unknown setting {key} ({origin}){}", strict::did_you_mean(.suggestion.as_deref()))]
    UnknownKey {
        /// What was written: a dotted key, a `[profile]` table, or a variable.
        key: String,
        /// Where: the file (and profile table), or the environment.
        origin: String,
        /// The nearest known name, written the same way, if one is close.
        suggestion: Option<String>,
    },
    /// A layer could not be read or a value has the wrong type; figment's
    /// message names the key and the layer.
    #[error("cannot read settings: {0}")]
    Load(#[from] Box<figment::Error>),
    /// Values that parsed but make no sense.
    #[error("invalid settings:\n  {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid(Vec<Invalid>),
}

/// Everything Courier's processes are configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The broker.
    pub nats: NatsSettings,
    /// The result store.
    pub redis: RedisSettings,
    /// The application database.
    pub database: DatabaseSettings,
    /// The Telegram Bot API.
    pub telegram: TelegramSettings,
    /// The worker process.
    pub worker: WorkerSettings,
    /// Logging.
    pub log: LogSettings,
    /// The board (`board` binary).
    pub board: BoardSettings,
    /// The task index the board searches.
    pub index: IndexSettings,
    /// Cron schedules declared in settings, by name (tasks may also declare
    /// their own in their registration).
    #[serde(default)]
    pub schedules: std::collections::BTreeMap<String, ScheduleSettings>,
    /// The profile these settings were loaded for.
    #[serde(skip)]
    pub profile: String,
    /// Which layers were loaded, for the start-up log and `--print-settings`.
    #[serde(skip)]
    pub sources: Sources,
}

impl Settings {
    /// Loads, merges and validates the settings from the process environment.
    pub fn load() -> Result<Self, SettingsError> {
        let dir = match std::env::var_os(DIR_VAR) {
            Some(dir) if !Path::new(&dir).is_dir() => return Err(SettingsError::MissingDir(dir.into())),
            Some(dir) => PathBuf::from(dir),
            // The default folder is optional: the binaries run from anywhere.
            None => PathBuf::from("settings"),
        };
        let profile = std::env::var(PROFILE_VAR).unwrap_or_else(|_| DEFAULT_PROFILE.to_owned());
        Self::load_from(&dir, &profile)
    }

    /// Loads from the settings folder `dir` for `profile`, with the process'
    /// `COURIER_*` variables on top.
    pub fn load_from(dir: &Path, profile: &str) -> Result<Self, SettingsError> {
        let profile = profile.trim().to_ascii_lowercase();
        if !PROFILES.contains(&profile.as_str()) {
            return Err(SettingsError::UnknownProfile { profile });
        }
        let mut sources = Sources::discover(dir, &profile);
        let figment = sources.figment();
        strict::check(&figment, &sources)?;
        let selected = figment.select(profile.as_str());
        let mut settings: Settings = selected.extract().map_err(|err| strict::explain(err, &sources))?;
        settings.profile = profile;
        let invalid = validate::validate(&settings, &selected);
        if !invalid.is_empty() {
            return Err(SettingsError::Invalid(invalid));
        }
        sources.shown = show::masked(&selected, &settings)?;
        settings.sources = sources;
        Ok(settings)
    }

    /// The merged settings as TOML, every secret (tokens, passwords in URLs)
    /// shown as `***`: what `worker --print-settings` prints.
    pub fn to_masked_toml(&self) -> String {
        show::to_toml(&self.sources.shown)
    }

    /// The merged settings as a JSON-like value tree, secrets masked (for
    /// `--print-settings --json`; any serializer will do).
    pub fn masked(&self) -> &impl serde::Serialize {
        &self.sources.shown
    }
}
