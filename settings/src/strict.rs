//! Unknown names are errors, never silently ignored: a profile table no
//! profile has (`[prodution.nats]`), a section or key no setting has
//! (`[development.wroker]`, `COURIER_WORKER__CONCURENCY`), and a variable
//! that looks like a setting with one underscore too few
//! (`COURIER_TELEGRAM_TOKEN`). Each error suggests the nearest known name.

use figment::error::Kind;
use figment::{Figment, Profile};

use crate::layers::{self, BUILT_IN, Sources};
use crate::{DIR_VAR, ENV_PREFIX, PROFILE_VAR, PROFILES, Settings, SettingsError};

/// Checks the layers' names before the selected profile is extracted.
pub(crate) fn check(figment: &Figment, sources: &Sources) -> Result<(), SettingsError> {
    file_tables(sources)?;
    misspelt_variables()?;
    // Every profile, the selected one first: a typo in `[production.*]` is
    // found on a developer's machine, not on the first deploy.
    let mut profiles = vec![sources.profile.as_str()];
    profiles.extend(PROFILES.iter().copied().filter(|p| *p != sources.profile));
    for profile in profiles {
        if let Err(err) = figment.clone().select(profile).extract::<Settings>() {
            if let Kind::UnknownField(..) = err.kind {
                return Err(explain(err, sources));
            }
        }
    }
    Ok(())
}

/// Turns figment's unknown-field error into [`SettingsError::UnknownKey`]
/// written the way the user wrote the key; other errors pass through.
pub(crate) fn explain(err: figment::Error, sources: &Sources) -> SettingsError {
    let Kind::UnknownField(name, expected) = &err.kind else { return SettingsError::Load(Box::new(err)) };
    let parent = &err.path[..err.path.len().saturating_sub(1)];
    let nearest = nearest(name, expected.iter().copied()).map(|word| {
        let mut path = parent.to_vec();
        path.push(word.to_owned());
        path
    });
    if err.profile.as_ref().is_some_and(|p| *p == Profile::Global) {
        // Only the environment provider is global. An unknown section ends
        // the path early: the variable itself tells the rest.
        let parts = |var: &str| -> Vec<String> {
            var.strip_prefix(ENV_PREFIX).unwrap_or(var).split("__").map(str::to_ascii_lowercase).collect()
        };
        let rest = sources
            .env_keys
            .iter()
            .map(|var| parts(var))
            .find(|parts| parts.starts_with(&err.path))
            .map(|parts| parts[err.path.len()..].to_vec())
            .unwrap_or_default();
        let whole = |mut path: Vec<String>| {
            path.extend(rest.iter().cloned());
            variable(&path)
        };
        return SettingsError::UnknownKey {
            key: whole(err.path.clone()),
            origin: "set in the environment".to_owned(),
            suggestion: nearest.map(whole),
        };
    }
    let file = err.metadata.as_ref().and_then(|m| m.source.as_ref()).map_or_else(
        || sources.files.last().map_or_else(|| "a settings file".to_owned(), |p| p.display().to_string()),
        ToString::to_string,
    );
    let table = err.profile.as_ref().map_or_else(String::new, |p| format!(" [{}]", p.as_str().as_str()));
    SettingsError::UnknownKey {
        key: err.path.join("."),
        origin: format!("in {file}{table}"),
        suggestion: nearest.map(|path| path.join(".")),
    }
}

/// `; did you mean X?`, or nothing.
pub(crate) fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion.map_or_else(String::new, |s| format!("; did you mean {s}?"))
}

/// The known word closest to `word`, if close enough to be a typo of it:
/// at most one edit (a transposition counts as one) per three letters.
pub(crate) fn nearest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    known
        .into_iter()
        .map(|candidate| (strsim::osa_distance(&word, &candidate.to_ascii_lowercase()), candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len().max(word.len()) / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// The environment variable of a dotted key's parts.
fn variable(path: &[String]) -> String {
    format!("{ENV_PREFIX}{}", path.join("__").to_ascii_uppercase())
}

/// Each file may hold only `[default]` and the profiles' tables.
fn file_tables(sources: &Sources) -> Result<(), SettingsError> {
    let allowed: Vec<&str> = std::iter::once("default").chain(PROFILES.iter().copied()).collect();
    for (path, tables) in sources.file_tables() {
        for table in tables {
            let name = table.as_str().as_str().to_owned();
            if !allowed.contains(&name.as_str()) {
                return Err(SettingsError::UnknownKey {
                    origin: format!(
                        "in {}: tables are [<profile>.<section>] with profile {}",
                        path.display(),
                        allowed.join(", ")
                    ),
                    suggestion: nearest(&name, allowed.iter().copied()).map(|p| format!("[{p}]")),
                    key: format!("[{name}]"),
                });
            }
        }
    }
    Ok(())
}

/// A `COURIER_` variable without `__` is not a setting, unless it starts
/// with (nearly) a section's name: `COURIER_LOG_LEVEL` means
/// `COURIER_LOG__LEVEL` and is refused rather than ignored. Other such
/// variables (tools' own, like a test runner's) are left alone.
fn misspelt_variables() -> Result<(), SettingsError> {
    let sections = layers::sections();
    // As variables without the prefix (`worker__concurrency`): the prefix
    // would make every name look alike.
    let known: Vec<String> = known_keys().iter().map(|key| key.replace('.', "__")).collect();
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        if rest.contains("__") || name == PROFILE_VAR || name == DIR_VAR {
            continue;
        }
        let Some((head, tail)) = rest.split_once('_') else { continue };
        let Some(section) = nearest(head, sections.iter().map(String::as_str)) else { continue };
        let plain = variable(&[section.to_owned(), tail.to_owned()]);
        let suggestion = nearest(rest, known.iter().map(String::as_str))
            .map_or(plain, |key| format!("{ENV_PREFIX}{}", key.to_ascii_uppercase()));
        return Err(SettingsError::UnknownKey {
            key: name.to_owned(),
            origin: "set in the environment; settings are COURIER_<SECTION>__<KEY>".to_owned(),
            suggestion: Some(suggestion),
        });
    }
    Ok(())
}

/// Every key the built-in defaults set, dotted.
fn known_keys() -> Vec<String> {
    use figment::Provider;
    use figment::providers::{Format, Toml};
    let data = Toml::string(BUILT_IN).nested().data().unwrap_or_default();
    data.get(&Profile::Default).map(layers::dotted_keys).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(key: &str) -> Vec<String> {
        key.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn typos_find_their_word_and_strangers_find_none() {
        let sections = ["nats", "redis", "database", "telegram", "worker", "log"];
        assert_eq!(nearest("wroker", sections), Some("worker"));
        assert_eq!(nearest("WORKERS", sections), Some("worker"));
        assert_eq!(nearest("databse", sections), Some("database"));
        assert_eq!(nearest("bin", sections), None);
        assert_eq!(nearest("taskiq", sections), None);
        assert_eq!(nearest("concurency", ["concurrency", "shutdown_timeout"]), Some("concurrency"));
    }

    #[test]
    fn the_built_in_keys_are_known() {
        let keys = known_keys();
        assert!(keys.contains(&"worker.concurrency".to_owned()), "{keys:?}");
        assert!(keys.contains(&"telegram.limits.global_burst".to_owned()), "{keys:?}");
        assert_eq!(variable(&split("telegram.limits.global_burst")), "COURIER_TELEGRAM__LIMITS__GLOBAL_BURST");
    }
}
