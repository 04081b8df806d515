//! Errors of building the container: each names the component and its URL
//! (with any password replaced by `***`).

use std::fmt;

/// The components the container is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The application database (`Db`).
    Database,
    /// The result store (`ResultStore`, Redis).
    Redis,
    /// The Telegram Bot API (`BotApi`).
    Telegram,
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Database => "database",
            Self::Redis => "redis",
            Self::Telegram => "telegram",
        })
    }
}

/// Why the container could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The component's server could not be reached or refused us.
    #[error("{component} at {url} is unreachable: {reason}")]
    Unreachable {
        /// Which component.
        component: Component,
        /// Its URL, redacted.
        url: String,
        /// The client's error, with secrets removed.
        reason: String,
    },
    /// The server answered, but refused us (a token or password it does
    /// not accept).
    #[error("{component} at {url} refused us: {reason}")]
    Refused {
        /// Which component.
        component: Component,
        /// Its URL, redacted.
        url: String,
        /// What it said, with secrets removed.
        reason: String,
    },
    /// Something answered, but not as the component would (another HTTP
    /// server at `telegram.api_url`, a proxy's error page).
    #[error("{component} at {url} gave an unexpected answer: {reason}")]
    UnexpectedAnswer {
        /// Which component.
        component: Component,
        /// Its URL, redacted.
        url: String,
        /// What could not be understood, with secrets removed.
        reason: String,
    },
    /// The component's settings cannot work (a URL of the wrong kind, say).
    #[error("{component} is misconfigured: {reason}")]
    Misconfigured {
        /// Which component.
        component: Component,
        /// What is wrong.
        reason: String,
    },
}

impl StartupError {
    /// The component at fault.
    pub fn component(&self) -> Component {
        match self {
            Self::Unreachable { component, .. }
            | Self::Refused { component, .. }
            | Self::UnexpectedAnswer { component, .. }
            | Self::Misconfigured { component, .. } => *component,
        }
    }

    /// An `Unreachable` error whose reason has every secret in `secrets` masked.
    pub(crate) fn unreachable(component: Component, url: String, reason: impl fmt::Display, secrets: &[&str]) -> Self {
        Self::Unreachable { component, url, reason: scrub(&reason.to_string(), secrets) }
    }
}

/// Replaces each non-empty secret in `text` with `***`; client errors
/// sometimes echo the URL or the token they were given.
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    secrets.iter().filter(|s| s.len() >= 3).fold(text.to_owned(), |acc, secret| acc.replace(secret, "***"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_masks_passwords_and_tokens() {
        assert_eq!(scrub("auth hunter2 failed for 123:tok", &["hunter2", "123:tok"]), "auth *** failed for ***");
        assert_eq!(scrub("short secrets are not scrubbed: ab", &["ab"]), "short secrets are not scrubbed: ab");
    }
}
