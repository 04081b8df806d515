//! The layers settings are merged from, and the record of which were found.
//!
//! Order, later winning: (1) the built-in `settings.toml`, compiled into the
//! binaries; (2) `settings.toml` in the settings folder; (3) `.secrets.toml`
//! beside it; (4) `COURIER_<SECTION>__<KEY>` variables. Inside a layer a file
//! has profile tables; figment merges every layer's `[default]`, then every
//! layer's `[<profile>]` over that, then the environment. So a key in the
//! built-in `[development]` table beats the same key in a file's `[default]`
//! table: such shadowed keys are listed in [`Sources::shadowed`] and logged.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Profile, Provider};

use crate::ENV_PREFIX;

/// The defaults, compiled in so the binaries run from any directory.
pub(crate) const BUILT_IN: &str = include_str!("../settings.toml");

/// The files a settings folder may hold, in merge order.
const FILES: [&str; 2] = ["settings.toml", ".secrets.toml"];

/// Which layers were loaded: names only, never values (safe to log).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The profile selected.
    pub profile: String,
    /// The settings files found, in merge order (the built-in one is always
    /// there and not listed).
    pub files: Vec<PathBuf>,
    /// The `COURIER_<SECTION>__<KEY>` variables set, sorted (names only).
    pub env_keys: Vec<String>,
    /// Keys a file's `[default]` table sets that the built-in table of the
    /// selected profile overrides (write them under `[<profile>]` instead).
    pub shadowed: Vec<String>,
    /// The merged settings with secrets masked (see `show.rs`).
    pub(crate) shown: Dict,
}

impl Sources {
    /// Looks at what is there: the files in `dir` and the variables set.
    pub(crate) fn discover(dir: &Path, profile: &str) -> Self {
        let files = FILES.iter().map(|name| dir.join(name)).filter(|path| path.is_file()).collect();
        let mut env_keys: Vec<String> = std::env::vars_os()
            .filter_map(|(key, _)| key.into_string().ok())
            .filter(|key| key.strip_prefix(ENV_PREFIX).is_some_and(|rest| rest.contains("__")))
            .collect();
        env_keys.sort();
        let mut sources =
            Self { profile: profile.to_owned(), files, env_keys, shadowed: Vec::new(), shown: Dict::new() };
        sources.shadowed = sources.find_shadowed();
        sources
    }

    /// Every layer, not yet tied to a profile.
    pub(crate) fn figment(&self) -> Figment {
        // Exact paths (figment's `file` would also search parent folders).
        let files = self.files.iter().fold(Figment::new().merge(Toml::string(BUILT_IN).nested()), |figment, path| {
            figment.merge(Toml::file_exact(path).nested())
        });
        files.merge(environment())
    }

    /// The profile tables each file defines (`[default]`, `[production]`...),
    /// with the file; a file that does not parse gives none (extraction
    /// reports it).
    pub(crate) fn file_tables(&self) -> Vec<(&Path, Vec<Profile>)> {
        self.files
            .iter()
            .map(|path| {
                let tables = Toml::file_exact(path).nested().data().map(|data| data.into_keys().collect());
                (path.as_path(), tables.unwrap_or_default())
            })
            .collect()
    }

    /// Keys of a file's `[default]` that the built-in `[<profile>]` beats
    /// and no file's `[<profile>]` sets (then the file has said what it
    /// wants for this profile, as the repository's own copy of the
    /// built-in file does).
    fn find_shadowed(&self) -> Vec<String> {
        let profile = Profile::new(&self.profile);
        let keys_of = |data: &figment::value::Map<Profile, Dict>, profile: &Profile| {
            data.get(profile).map(dotted_keys).unwrap_or_default()
        };
        let built_in = Toml::string(BUILT_IN).nested().data().unwrap_or_default();
        let overriding = keys_of(&built_in, &profile);
        let files: Vec<_> =
            self.files.iter().map(|path| (path, Toml::file_exact(path).nested().data().unwrap_or_default())).collect();
        let decided: Vec<String> = files.iter().flat_map(|(_, data)| keys_of(data, &profile)).collect();
        let mut shadowed = Vec::new();
        for (path, data) in &files {
            let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            shadowed.extend(
                keys_of(data, &Profile::Default)
                    .into_iter()
                    .filter(|k| overriding.contains(k) && !decided.contains(k))
                    .map(|k| format!("{name} {k}")),
            );
        }
        shadowed
    }
}

impl fmt::Display for Sources {
    /// One line for the start-up log: layers in merge order, names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "built-in defaults")?;
        for file in &self.files {
            write!(f, ", {}", file.display())?;
        }
        write!(f, ", profile {}", self.profile)?;
        if !self.env_keys.is_empty() {
            write!(f, ", environment {}", self.env_keys.join(" "))?;
        }
        Ok(())
    }
}

/// The `COURIER_<SECTION>__<KEY>` variables: a variable without `__` is not
/// a setting (`COURIER_ENV`, `COURIER_SETTINGS_DIR`, tools' own variables),
/// though one that looks like a misspelt setting is refused (`strict.rs`).
fn environment() -> Env {
    Env::prefixed(ENV_PREFIX).filter(|key| key.as_str().contains("__")).split("__").global()
}

/// The dotted keys of the leaves of `dict` (`worker.concurrency`).
pub(crate) fn dotted_keys(dict: &Dict) -> Vec<String> {
    let mut keys = Vec::new();
    for (key, value) in dict {
        match value {
            Value::Dict(_, inner) => keys.extend(dotted_keys(inner).into_iter().map(|k| format!("{key}.{k}"))),
            _ => keys.push(key.clone()),
        }
    }
    keys
}

/// The sections of the built-in defaults (`nats`, `redis`...).
pub(crate) fn sections() -> Vec<String> {
    let built_in = Toml::string(BUILT_IN).nested().data().unwrap_or_default();
    built_in.get(&Profile::Default).map(|d| d.keys().cloned().collect()).unwrap_or_default()
}
