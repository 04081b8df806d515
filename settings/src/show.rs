//! The merged settings for people to read (`worker --print-settings`), with
//! every secret masked: values as written (durations stay `"30s"`), after
//! all layers are merged for the selected profile.

use figment::Figment;
use figment::value::{Dict, Value};

use crate::{Settings, SettingsError, redact_url};

/// Key names whose values are secrets wherever they appear.
const SECRET_KEYS: [&str; 3] = ["token", "password", "secret"];

/// The merged settings of `selected`, masked: keys named like a secret are
/// `***`, URLs lose their passwords, and every secret the typed `settings`
/// hold is cut out of any other value it hides in.
pub(crate) fn masked(selected: &Figment, settings: &Settings) -> Result<Dict, SettingsError> {
    let mut merged: Dict = selected.extract().map_err(Box::new)?;
    let mut secrets: Vec<String> =
        settings.telegram.token.iter().chain(&settings.board.password).map(|t| t.expose().to_owned()).collect();
    let urls =
        std::iter::once(&settings.database.url).chain(settings.redis.url.servers()).chain(settings.nats.url.servers());
    secrets.extend(urls.filter_map(|url| credential(url.expose())));
    secrets.retain(|s| s.len() >= 3);
    for (key, value) in &mut merged {
        mask(key, value, &secrets);
    }
    Ok(merged)
}

/// A URL's password, or the user part NATS reads as a token; not a plain
/// user name (`postgres://postgres@...` would otherwise mask every
/// "postgres").
fn credential(raw: &str) -> Option<String> {
    let url = url::Url::parse(raw).ok()?;
    let secret = match url.password() {
        Some(password) => password,
        None if url.scheme().starts_with("nats") || url.scheme() == "tls" => url.username(),
        None => return None,
    };
    (!secret.is_empty()).then(|| crate::percent_decode(secret))
}

fn mask(key: &str, value: &mut Value, secrets: &[String]) {
    match value {
        Value::Dict(_, dict) => {
            for (key, value) in dict {
                mask(key, value, secrets);
            }
        }
        Value::Array(_, items) => {
            for item in items {
                mask(key, item, secrets);
            }
        }
        Value::String(_, text) => {
            let lower = key.to_ascii_lowercase();
            if SECRET_KEYS.iter().any(|word| lower.contains(word)) {
                *text = "***".to_owned();
                return;
            }
            if text.contains("://") {
                // A list in one string (`nats.url` from the environment).
                *text = text.split(',').map(|url| redact_url(url.trim())).collect::<Vec<_>>().join(",");
            }
            for secret in secrets {
                if text.contains(secret.as_str()) {
                    *text = text.replace(secret.as_str(), "***");
                }
            }
        }
        _ => {}
    }
}

/// TOML, one table per section: the form settings files take.
pub(crate) fn to_toml(dict: &Dict) -> String {
    toml::to_string(dict).unwrap_or_else(|err| format!("# cannot render the settings as TOML: {err}\n"))
}
