//! Start-up validation: every value is checked once, and each problem names
//! its key and the layer it came from.

use std::fmt;

use figment::Figment;

use crate::{NatsSettings, Settings, percent_decode, redact_url};

/// One invalid value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The dotted key, e.g. `redis.result_ttl`.
    pub key: String,
    /// What is wrong and what is expected.
    pub reason: String,
    /// Which layer supplied the value (a file, the environment, the defaults).
    pub origin: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (set in {})", self.key, self.reason, self.origin)
    }
}

struct Checker<'a> {
    figment: &'a Figment,
    found: Vec<Invalid>,
}

impl Checker<'_> {
    fn check(&mut self, ok: bool, key: &str, reason: impl FnOnce() -> String) {
        if !ok {
            let origin = self
                .figment
                .find_metadata(key)
                .map(|meta| match &meta.source {
                    Some(source) => format!("{} {source}", meta.name),
                    None => meta.name.to_string(),
                })
                .unwrap_or_else(|| "no layer: the value is not set".to_owned());
            self.found.push(Invalid { key: key.to_owned(), reason: reason(), origin });
        }
    }

    fn url(&mut self, key: &str, raw: &str, schemes: &[&str]) {
        let scheme = raw.split_once(':').map(|(scheme, _)| scheme);
        let ok = scheme.is_some_and(|s| schemes.contains(&s)) && url::Url::parse(raw).is_ok();
        self.check(ok, key, || {
            format!(
                "{:?} is not a valid URL; expected one starting with {}",
                redact_url(raw),
                schemes.join(":// or ") + "://"
            )
        });
    }

    fn name(&mut self, key: &str, value: &str, what: &str, forbidden: &[char]) {
        let bad = value.is_empty() || value.chars().any(|c| c.is_whitespace() || forbidden.contains(&c));
        self.check(!bad, key, || format!("{value:?} is not a valid {what} (non-empty, no spaces or {forbidden:?})"));
    }
}

/// Checks every value of `settings`; `figment` is asked where each came from.
pub(crate) fn validate(settings: &Settings, figment: &Figment) -> Vec<Invalid> {
    let mut c = Checker { figment, found: Vec::new() };
    nats(&mut c, &settings.nats);

    let redis = &settings.redis;
    c.check(!redis.url.servers().is_empty(), "redis.url", || "names no server".to_owned());
    for server in redis.url.servers() {
        c.url("redis.url", server.expose(), &["redis", "rediss", "redis+unix", "unix"]);
    }
    c.check(redis.cluster || redis.url.servers().len() <= 1, "redis.url", || {
        "names several servers, which only a cluster has: set redis.cluster = true, or give one URL".to_owned()
    });
    c.check(same_credentials(redis.url.servers(), true), "redis.url", || {
        "the nodes carry different credentials; a cluster client uses one user and password for every \
         node: write the same ones in each URL"
            .to_owned()
    });
    c.check(!redis.cluster || !redis.key_prefix.contains(['{', '}']), "redis.key_prefix", || {
        "must not contain { or } on a cluster: Courier's keys carry their own hash tags".to_owned()
    });
    c.check(redis.result_ttl.as_secs() >= 1, "redis.result_ttl", || {
        "must be at least 1s; Redis expiry is in whole seconds and a TTL of zero would keep nothing".to_owned()
    });
    if let Some(path) = &redis.tls_ca_file {
        c.check(std::path::Path::new(path).is_file(), "redis.tls_ca_file", || {
            format!("{path:?} is not a readable file")
        });
        c.check(redis.url.servers().iter().all(|u| u.expose().starts_with("rediss://")), "redis.tls_ca_file", || {
            "is set, but redis.url is not rediss://".to_owned()
        });
    }
    c.check(redis.pool_size >= 1, "redis.pool_size", || "must be at least 1".to_owned());

    let db = &settings.database;
    let db_url = db.url.expose();
    let sqlite_ok = db_url.starts_with("sqlite:") && db_url.len() > "sqlite:".len();
    if !sqlite_ok {
        c.url("database.url", db_url, &["postgres", "postgresql", "sqlite"]);
    }
    c.check(db.max_connections >= 1, "database.max_connections", || "must be at least 1".to_owned());

    let tg = &settings.telegram;
    c.url("telegram.api_url", &tg.api_url, &["http", "https"]);
    match &tg.token {
        None => c.check(!tg.require_token, "telegram.token", || {
            format!(
                "is required in profile {:?} (telegram.require_token); put it in settings/.secrets.toml or COURIER_TELEGRAM__TOKEN",
                settings.profile
            )
        }),
        Some(token) => c.check(
            token.expose().split_once(':').is_some_and(|(id, rest)| {
                !id.is_empty() && id.chars().all(|ch| ch.is_ascii_digit()) && !rest.is_empty()
            }),
            "telegram.token",
            || "does not look like a bot token (expected \"<digits>:<secret>\"; the value is not shown)".to_owned(),
        ),
    }

    c.check(
        i64::try_from(settings.worker.concurrency).unwrap_or(i64::MAX) < settings.nats.max_ack_pending,
        "worker.concurrency",
        || {
            format!(
                "{} must be below nats.max_ack_pending ({}): a pull for more than the consumer allows is refused",
                settings.worker.concurrency, settings.nats.max_ack_pending
            )
        },
    );

    for (name, schedule) in &settings.schedules {
        let key = format!("schedules.{name}");
        c.check(
            !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            &key,
            || "a schedule's name is 1 to 64 letters, digits, '_' or '-' (it becomes part of task ids)".to_owned(),
        );
        c.check(!schedule.task.trim().is_empty(), &format!("{key}.task"), || "names no task".to_owned());
        c.check(!schedule.cron.trim().is_empty(), &format!("{key}.cron"), || "is empty".to_owned());
    }

    let limits = &tg.limits;
    for (key, rate) in [
        ("telegram.limits.global_per_second", limits.global_per_second),
        ("telegram.limits.private_per_second", limits.private_per_second),
        ("telegram.limits.group_per_minute", limits.group_per_minute),
        ("telegram.limits.fallback_per_second", limits.fallback_per_second),
        ("telegram.limits.paid_per_second", limits.paid_per_second),
    ] {
        c.check(rate.is_finite() && rate > 0.0 && rate <= 100_000.0, key, || format!("{rate} is not a rate above 0"));
    }
    for (key, burst) in [
        ("telegram.limits.global_burst", limits.global_burst),
        ("telegram.limits.private_burst", limits.private_burst),
        ("telegram.limits.group_burst", limits.group_burst),
        ("telegram.limits.global_freeze_chats", limits.global_freeze_chats),
        ("telegram.limits.paid_burst", limits.paid_burst),
    ] {
        c.check(burst >= 1, key, || "must be at least 1".to_owned());
    }
    c.check(limits.max_retry_after >= std::time::Duration::from_secs(1), "telegram.limits.max_retry_after", || {
        "must be at least 1s (Telegram's retry_after is in whole seconds)".to_owned()
    });
    c.check(limits.paid_per_second <= 1000.0, "telegram.limits.paid_per_second", || {
        format!("{} is above Telegram's 1000 paid messages a second", limits.paid_per_second)
    });
    c.check((0.0..=0.9).contains(&limits.interactive_reserve), "telegram.limits.interactive_reserve", || {
        format!("{} is not a share between 0 and 0.9", limits.interactive_reserve)
    });
    c.check(limits.wait_threshold <= std::time::Duration::from_secs(10), "telegram.limits.wait_threshold", || {
        "must be at most 10s (a task holds its slot while it waits)".to_owned()
    });

    let level = settings.log.level.trim();
    let plain = ["trace", "debug", "info", "warn", "error", "off"].contains(&level.to_ascii_lowercase().as_str());
    c.check(plain || level.contains('='), "log.level", || {
        format!("{level:?} is not a level (trace, debug, info, warn, error, off) nor tracing directives like \"info,sqlx=warn\"")
    });
    let worker = &settings.worker;
    let addr = worker.http_addr.trim();
    c.check(addr.is_empty() || addr.parse::<std::net::SocketAddr>().is_ok(), "worker.http_addr", || {
        format!("{addr:?} is not an address like \"127.0.0.1:9464\" (or empty to turn the server off)")
    });
    c.check(worker.concurrency >= 1, "worker.concurrency", || "must be at least 1".to_owned());
    c.check(worker.http_max_connections >= 1, "worker.http_max_connections", || "must be at least 1".to_owned());
    c.check(!worker.http_header_timeout.is_zero(), "worker.http_header_timeout", || {
        "must be more than zero (it is what closes silent and idle connections)".to_owned()
    });
    // An envelope is a map holding maps: depth 2 is the least that decodes.
    c.check((2..=1024).contains(&worker.decode_max_depth), "worker.decode_max_depth", || {
        "must be 2 to 1024 (decoding recurses once per level)".to_owned()
    });
    c.check(worker.decode_max_items >= 16, "worker.decode_max_items", || {
        "must be at least 16 (an envelope alone has a dozen values)".to_owned()
    });
    c.check(worker.decode_max_bytes >= 4096, "worker.decode_max_bytes", || "must be at least 4096".to_owned());
    c.found
}

/// Whether every URL of `servers` that names a user or password names the
/// same ones (`every`: and so does every other URL): one connection carries
/// one set, whichever server it reaches.
fn same_credentials(servers: &[crate::SecretUrl], every: bool) -> bool {
    let mut credentials: Vec<(String, Option<String>)> = servers
        .iter()
        .filter_map(|server| url::Url::parse(server.expose()).ok())
        .filter(|url| every || !url.username().is_empty() || url.password().is_some())
        .map(|url| (percent_decode(url.username()), url.password().map(percent_decode)))
        .collect();
    credentials.dedup();
    credentials.len() <= 1
}

fn nats(c: &mut Checker<'_>, nats: &NatsSettings) {
    c.check(!nats.url.servers().is_empty(), "nats.url", || {
        "names no server; give a URL, a list of URLs, or URLs separated by commas".to_owned()
    });
    for server in nats.url.servers() {
        c.url("nats.url", server.expose(), &["nats", "tls", "ws", "wss"]);
    }
    c.check(same_credentials(nats.url.servers(), false), "nats.url", || {
        "the servers carry different credentials; one client uses one user and password (or token) \
         for every server: write the same ones in each URL, or in one only"
            .to_owned()
    });
    c.name("nats.stream", &nats.stream, "stream name", &['.', '*', '>', '/', '\\']);
    c.name("nats.durable", &nats.durable, "consumer name", &['.', '*', '>', '/', '\\']);
    c.name("nats.subject", &nats.subject, "subject without wildcards", &['*', '>']);
    c.name("nats.dead_letter_subject", &nats.dead_letter_subject, "subject without wildcards", &['*', '>']);
    let dead_letter_in_stream =
        nats.dead_letter_subject == nats.subject || nats.dead_letter_subject.starts_with(&format!("{}.", nats.subject));
    c.check(!dead_letter_in_stream, "nats.dead_letter_subject", || {
        format!("must lie outside the task subject {:?}, or dead letters would be run again", nats.subject)
    });
    c.name("nats.done_subject", &nats.done_subject, "subject without wildcards", &['*', '>']);
    let done_in_stream =
        nats.done_subject == nats.subject || nats.done_subject.starts_with(&format!("{}.", nats.subject));
    c.check(!done_in_stream, "nats.done_subject", || {
        format!("must lie outside the task subject {:?}, or completion notices would be queued as tasks", nats.subject)
    });
    c.check(!nats.ack_wait.is_zero(), "nats.ack_wait", || "must be more than zero".to_owned());
    c.check((1..=5).contains(&nats.stream_replicas), "nats.stream_replicas", || "must be 1 to 5".to_owned());
    for (key, path) in [
        ("nats.credentials_file", &nats.credentials_file),
        ("nats.tls_ca_file", &nats.tls_ca_file),
        ("nats.tls_cert_file", &nats.tls_cert_file),
        ("nats.tls_key_file", &nats.tls_key_file),
    ] {
        if let Some(path) = path {
            c.check(std::path::Path::new(path).is_file(), key, || format!("{path:?} is not a readable file"));
        }
    }
    c.check(nats.tls_cert_file.is_some() == nats.tls_key_file.is_some(), "nats.tls_key_file", || {
        "nats.tls_cert_file and nats.tls_key_file go together (mutual TLS needs both)".to_owned()
    });
    c.check(nats.max_deliver >= 1, "nats.max_deliver", || "must be at least 1".to_owned());
    c.check(nats.max_ack_pending >= 1, "nats.max_ack_pending", || "must be at least 1".to_owned());
    c.check(!nats.dead_letter_max_age.is_zero(), "nats.dead_letter_max_age", || "must be more than zero".to_owned());
    c.check(!nats.duplicate_window.is_zero(), "nats.duplicate_window", || "must be more than zero".to_owned());
    c.check(nats.max_payload >= 1024, "nats.max_payload", || "must be at least 1024 bytes".to_owned());
}
