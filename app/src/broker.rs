//! The NATS side: connecting from settings and checking JetStream.

use settings::NatsSettings;

/// A broker failure at start-up.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The server could not be reached or refused the credentials.
    #[error("nats at {url} is unreachable: {reason}")]
    Unreachable {
        /// The URL, redacted.
        url: String,
        /// The client's error.
        reason: String,
    },
    /// The server answers but has no JetStream.
    #[error("nats at {url} has no JetStream: {reason}; start nats-server with -js")]
    NoJetStream {
        /// The URL, redacted.
        url: String,
        /// What the server said.
        reason: String,
    },
}

/// Connects to the server in `settings`, once, within `connect_timeout`.
pub async fn connect(settings: &NatsSettings, name: &str) -> Result<async_nats::Client, BrokerError> {
    let unreachable = |reason: String| BrokerError::Unreachable { url: settings.url.redacted(), reason };
    let options = async_nats::ConnectOptions::new().name(name).connection_timeout(settings.connect_timeout);
    let client = tokio::time::timeout(settings.connect_timeout, options.connect(settings.url.expose()))
        .await
        .map_err(|_| unreachable(format!("no connection within {:?}", settings.connect_timeout)))?
        .map_err(|err| unreachable(settings::redact_url(&err.to_string())))?;
    Ok(client)
}

/// Asks the server for JetStream's account info (raw, so it works with
/// nats-server 2.9, whose reply async-nats 0.51 cannot parse).
pub async fn check_jetstream(client: &async_nats::Client, settings: &NatsSettings) -> Result<(), BrokerError> {
    let no_js = |reason: String| BrokerError::NoJetStream { url: settings.url.redacted(), reason };
    let reply = tokio::time::timeout(settings.connect_timeout, client.request("$JS.API.INFO", "".into()))
        .await
        .map_err(|_| no_js("no reply to $JS.API.INFO".to_owned()))?
        .map_err(|err| no_js(err.to_string()))?;
    let body = String::from_utf8_lossy(&reply.payload);
    if body.contains("\"error\"") { Err(no_js(body.into_owned())) } else { Ok(()) }
}
