//! Courier's settings, layered the Dynaconf way with figment.
//!
//! Layers, later ones winning: the compiled-in `settings.toml`; the same file
//! in `$COURIER_SETTINGS_DIR` (default `./settings`); `.secrets.toml` beside
//! it; then `COURIER_<SECTION>__<KEY>` environment variables, which beat
//! every profile. `COURIER_ENV` picks the profile (`development` by default)
//! and it is deep-merged over `[default]`. This crate is the only place that
//! reads files or environment variables for configuration.

mod duration;
mod secret;
mod sections;
mod validate;

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

pub use secret::{Secret, SecretUrl, SecretUrls, percent_decode, redact_url};
pub use sections::{
    DatabaseSettings, LogFormat, LogSettings, NatsMode, NatsSettings, PaidWhenSpent, RedisSettings, TelegramLimits,
    TelegramSettings, WorkerSettings,
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

/// The defaults, compiled in so the binaries run from any directory.
const BUILT_IN: &str = include_str!("../settings.toml");

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `COURIER_ENV` names a profile that does not exist.
    #[error("unknown profile {profile:?} in {PROFILE_VAR}; expected one of: {}", PROFILES.join(", "))]
    UnknownProfile {
        /// The name that was given.
        profile: String,
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
    /// The profile these settings were loaded for.
    #[serde(skip)]
    pub profile: String,
}

impl Settings {
    /// Loads, merges and validates the settings from the process environment.
    pub fn load() -> Result<Self, SettingsError> {
        let dir = std::env::var_os(DIR_VAR).map_or_else(|| PathBuf::from("settings"), PathBuf::from);
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
        let figment = figment(dir).select(profile.as_str());
        let mut settings: Settings = figment.extract().map_err(Box::new)?;
        settings.profile = profile;
        let invalid = validate::validate(&settings, &figment);
        if invalid.is_empty() { Ok(settings) } else { Err(SettingsError::Invalid(invalid)) }
    }
}

/// The layers, not yet tied to a profile.
fn figment(dir: &Path) -> Figment {
    let mut figment = Figment::new().merge(Toml::string(BUILT_IN).nested());
    // Exact paths (figment's `file` would also search parent folders); a
    // missing file is simply a layer that is not there.
    for name in ["settings.toml", ".secrets.toml"] {
        let path = dir.join(name);
        if path.is_file() {
            figment = figment.merge(Toml::file_exact(path).nested());
        }
    }
    figment.merge(Env::prefixed(ENV_PREFIX).ignore(&["ENV", "SETTINGS_DIR"]).split("__").global())
}
