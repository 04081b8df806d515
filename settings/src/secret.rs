//! Wrappers that keep secrets out of `Debug` output and logs.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A secret string (a bot token, a password): `Debug` prints `***`.
///
/// There is deliberately no `Display`: the only way to the value is
/// [`Secret::expose`], so a secret never reaches a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must hand it to a client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

/// A connection URL that may carry a password (`redis://:pw@host`).
///
/// `Debug` and `Display` show it with the password (and a token-only user
/// such as NATS' `nats://token@host`) replaced by `***`, so it is safe in
/// logs and error messages; [`SecretUrl::expose`] gives the real URL.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The URL with its credentials, for the client that connects.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }

    /// The password (or a lone user part, which NATS reads as a token),
    /// percent-decoded: what must be scrubbed from client error messages.
    pub fn password(&self) -> Option<String> {
        let url = url::Url::parse(&self.0).ok()?;
        let raw = url.password().unwrap_or(url.username());
        (!raw.is_empty()).then(|| percent_decode(raw))
    }

    /// The scheme (`redis`, `postgres`, `sqlite`...), if the URL has one.
    pub fn scheme(&self) -> Option<&str> {
        self.0.split_once(':').map(|(scheme, _)| scheme)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

/// Whether `text` (blanks first allowed) begins with a URL scheme and `://`.
fn starts_with_scheme(text: &str) -> bool {
    let text = text.trim_start();
    let Some((scheme, _)) = text.split_once("://") else { return false };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// One or more server URLs, each of which may carry credentials (`nats.url`).
///
/// Written as a list in a settings file (`url = ["nats://a:4222",
/// "nats://b:4222"]`) or as one string with the URLs separated by commas
/// (`nats://a:4222,nats://b:4222`, the only form an environment variable
/// can give). Blanks around each URL are trimmed and empty entries dropped.
/// `Debug` and `Display` show every URL redacted, comma-separated.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrls(Vec<SecretUrl>);

impl SecretUrls {
    /// Parses one URL or several separated by commas. A comma starts a new
    /// URL only where a scheme (`xyz://`) follows it, so a password with a
    /// comma in it stays whole.
    pub fn new(value: impl AsRef<str>) -> Self {
        let value = value.as_ref();
        let mut urls = Vec::new();
        let mut start = 0;
        for (at, _) in value.match_indices(',') {
            let rest = value[at + 1..].trim_start();
            if rest.is_empty() || rest.starts_with(',') || starts_with_scheme(rest) {
                urls.push(&value[start..at]);
                start = at + 1;
            }
        }
        urls.push(&value[start..]);
        Self::from_list(urls)
    }

    /// Takes a list of URLs (each trimmed; empty ones dropped).
    pub fn from_list<S: AsRef<str>>(urls: impl IntoIterator<Item = S>) -> Self {
        Self(
            urls.into_iter()
                .map(|url| url.as_ref().trim().to_owned())
                .filter(|url| !url.is_empty())
                .map(SecretUrl)
                .collect(),
        )
    }

    /// Every server, in the order written.
    pub fn servers(&self) -> &[SecretUrl] {
        &self.0
    }

    /// The URLs with their credentials, comma-separated: the form
    /// `COURIER_NATS__URL` takes, for handing the setting to another process.
    pub fn expose(&self) -> String {
        self.0.iter().map(SecretUrl::expose).collect::<Vec<_>>().join(",")
    }

    /// The password (or token) of the first URL that carries one: what must
    /// be scrubbed from client error messages (settings validation makes
    /// every URL that carries one carry the same).
    pub fn password(&self) -> Option<String> {
        self.0.iter().find_map(SecretUrl::password)
    }

    /// Every URL with its password or token replaced by `***`, comma-separated.
    pub fn redacted(&self) -> String {
        self.0.iter().map(SecretUrl::redacted).collect::<Vec<_>>().join(",")
    }
}

impl From<SecretUrl> for SecretUrls {
    fn from(url: SecretUrl) -> Self {
        Self::new(url.expose())
    }
}

impl fmt::Debug for SecretUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrls {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// A string (comma-separated URLs) or a list of strings.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            One(String),
            List(Vec<String>),
        }
        Written::deserialize(deserializer)
            .map_err(|_| serde::de::Error::custom("expected a URL, URLs separated by commas, or a list of URL strings"))
            .map(|written| match written {
                Written::One(urls) => Self::new(urls),
                Written::List(urls) => Self::from_list(urls),
            })
    }
}

/// Decodes a URL's user or password part the way clients do (RFC 3986
/// percent-decoding: `%2B` is `+`, and a `+` stays a `+`; never form
/// decoding, which reads `+` as a space). Invalid UTF-8 is replaced.
/// Every reader of URL credentials in Courier uses this one.
pub fn percent_decode(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw).decode_utf8_lossy().into_owned()
}

/// Replaces the password of a URL with `***`; a URL that does not parse is
/// hidden whole, since its credentials cannot be located.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                // Cannot fail: a URL with a password has a host.
                let _ = url.set_password(Some("***"));
            } else if !url.username().is_empty() && url.scheme().starts_with("nats") {
                // NATS reads a lone user part as a token.
                let _ = url.set_username("***");
            }
            url.to_string()
        }
        Err(_) if !raw.contains('@') => raw.to_owned(),
        Err(_) => "*** (unparsable URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_masked() {
        let secret = Secret::new("123:abc");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(secret.expose(), "123:abc");
    }

    #[test]
    fn url_password_is_masked() {
        let url = SecretUrl::new("postgres://app:hunter2@db:5432/app");
        assert_eq!(url.redacted(), "postgres://app:***@db:5432/app");
        assert!(!format!("{url:?} {url}").contains("hunter2"));
        assert_eq!(url.scheme(), Some("postgres"));
    }

    #[test]
    fn password_is_read_for_scrubbing() {
        assert_eq!(SecretUrl::new("postgres://app:p%40ss@db/app").password().as_deref(), Some("p@ss"));
        assert_eq!(SecretUrl::new("nats://tok@h:4222").password().as_deref(), Some("tok"));
        assert_eq!(SecretUrl::new("redis://h:6379").password(), None);
    }

    #[test]
    fn passwords_decode_as_clients_decode_them() {
        for (in_url, password) in [
            ("a+b", "a+b"),
            ("a%2Bb", "a+b"),
            ("a%252Bb", "a%2Bb"),
            ("p%40ss", "p@ss"),
            ("p%3Ass", "p:ss"),
            ("dGVzdA%2B%2Fx%3D%3D", "dGVzdA+/x=="),
        ] {
            let url = SecretUrl::new(format!("redis://:{in_url}@h:6379"));
            assert_eq!(url.password().as_deref(), Some(password), "{in_url}");
            assert!(!url.redacted().contains(in_url), "{}", url.redacted());
        }
    }

    #[test]
    fn nats_token_is_masked() {
        let url = SecretUrl::new("nats://s3cret@127.0.0.1:4222");
        assert!(!url.redacted().contains("s3cret"), "{}", url.redacted());
    }

    #[test]
    fn url_without_credentials_is_unchanged() {
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
    }

    #[test]
    fn server_lists_read_from_a_comma_string_or_a_list() {
        let from_string = SecretUrls::new(" nats://a:4222 ,nats://u:pw@b:4222,, ");
        let from_list = SecretUrls::from_list(["nats://a:4222", "nats://u:pw@b:4222"]);
        assert_eq!(from_string, from_list);
        let exposed: Vec<_> = from_list.servers().iter().map(SecretUrl::expose).collect();
        assert_eq!(exposed, ["nats://a:4222", "nats://u:pw@b:4222"]);
        assert_eq!(from_list.expose(), "nats://a:4222,nats://u:pw@b:4222");
        assert_eq!(SecretUrls::new(from_list.expose()), from_list, "expose() round-trips");
    }

    #[test]
    fn every_server_is_redacted() {
        let comma = SecretUrls::new("redis://:pa,ss@a:6379,redis://:pa,ss@b:6379");
        assert_eq!(comma.servers().len(), 2, "a comma in a password stays in it");
        assert_eq!(comma.password().as_deref(), Some("pa,ss"));
        let urls = SecretUrls::new("nats://tok1@a:4222,nats://u:pw2@b:4222,nats://c:4222");
        assert_eq!(urls.redacted(), "nats://***@a:4222,nats://u:***@b:4222,nats://c:4222");
        let shown = format!("{urls:?} {urls}");
        assert!(!shown.contains("tok1") && !shown.contains("pw2"), "{shown}");
    }

    #[test]
    fn unparsable_url_with_credentials_is_hidden() {
        assert!(!redact_url("::bad:pw@x").contains("pw"));
    }
}
