//! Settings: one test per precedence rule, redaction, and validation errors
//! that name the key and where the value came from.

// `figment::Jail` fixes the closure type to `Result<(), figment::Error>`.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use figment::Jail;
use settings::{NatsMode, Settings, SettingsError};

type JailResult = Result<(), figment::Error>;

fn load(jail: &Jail, profile: &str) -> Result<Settings, SettingsError> {
    Settings::load_from(jail.directory(), profile)
}

fn err(e: impl std::fmt::Display) -> figment::Error {
    figment::Error::from(e.to_string())
}

#[test]
fn built_in_defaults_apply_without_any_file() {
    Jail::expect_with(|jail| -> JailResult {
        let s = load(jail, "development").map_err(err)?;
        assert_eq!(s.profile, "development");
        assert_eq!(s.nats.url.expose(), "nats://127.0.0.1:4222");
        assert_eq!(s.nats.mode, NatsMode::Jetstream);
        assert_eq!(s.nats.ack_wait, Duration::from_secs(30));
        assert_eq!(s.redis.result_ttl, Duration::from_secs(3600));
        assert_eq!(s.redis.key_prefix, "");
        // [development] overrides [default] for database.url only.
        assert!(s.database.url.expose().starts_with("postgres://"));
        assert_eq!(s.database.max_connections, 32);
        assert!(s.telegram.token.is_none());
        Ok(())
    });
}

#[test]
fn settings_file_overrides_built_in_defaults() {
    Jail::expect_with(|jail| -> JailResult {
        jail.create_file("settings.toml", "[default.worker]\nconcurrency = 7\nshutdown_timeout = \"2m\"\n")?;
        let s = load(jail, "development").map_err(err)?;
        assert_eq!(s.worker.concurrency, 7);
        assert_eq!(s.worker.shutdown_timeout, Duration::from_secs(120));
        // Untouched keys keep the built-in value.
        assert_eq!(s.redis.pool_size, 8);
        Ok(())
    });
}

#[test]
fn profile_table_is_deep_merged_over_default() {
    Jail::expect_with(|jail| -> JailResult {
        jail.create_file(
            "settings.toml",
            "[default.redis]\npool_size = 3\n[production.redis]\nurl = \"redis://cache.internal:6379\"\n[production.telegram]\ntoken = \"1:x\"\n",
        )?;
        let prod = load(jail, "production").map_err(err)?;
        assert_eq!(prod.redis.url.expose(), "redis://cache.internal:6379");
        assert_eq!(prod.redis.pool_size, 3, "inherited from [default]");
        let dev = load(jail, "development").map_err(err)?;
        assert_eq!(dev.redis.url.expose(), "redis://127.0.0.1:6379", "the production table does not leak");
        Ok(())
    });
}

#[test]
fn secrets_file_beats_settings_file() {
    Jail::expect_with(|jail| -> JailResult {
        jail.create_file("settings.toml", "[production.telegram]\ntoken = \"1:from-settings\"\n")?;
        jail.create_file(".secrets.toml", "[production.telegram]\ntoken = \"2:from-secrets\"\n")?;
        let s = load(jail, "production").map_err(err)?;
        assert_eq!(s.telegram.token.as_ref().map(|t| t.expose()), Some("2:from-secrets"));
        Ok(())
    });
}

#[test]
fn environment_beats_profile_and_secrets() {
    Jail::expect_with(|jail| -> JailResult {
        jail.create_file("settings.toml", "[production.worker]\nconcurrency = 16\n")?;
        jail.create_file(".secrets.toml", "[production.telegram]\ntoken = \"2:from-secrets\"\n")?;
        jail.set_env("COURIER_WORKER__CONCURRENCY", "99");
        jail.set_env("COURIER_TELEGRAM__TOKEN", "3:from-env");
        jail.set_env("COURIER_NATS__ACK_WAIT", "45");
        let s = load(jail, "production").map_err(err)?;
        assert_eq!(s.worker.concurrency, 99);
        assert_eq!(s.telegram.token.as_ref().map(|t| t.expose()), Some("3:from-env"));
        assert_eq!(s.nats.ack_wait, Duration::from_secs(45), "a bare integer is seconds");
        Ok(())
    });
}

#[test]
fn courier_env_selects_profile_and_settings_dir_points_elsewhere() {
    Jail::expect_with(|jail| -> JailResult {
        jail.create_file("settings.toml", "[test.worker]\nconcurrency = 5\n")?;
        let dir = jail.directory().display().to_string();
        jail.set_env("COURIER_SETTINGS_DIR", dir);
        jail.set_env("COURIER_ENV", "test");
        let s = Settings::load().map_err(err)?;
        assert_eq!(s.profile, "test");
        assert_eq!(s.worker.concurrency, 5);
        assert_eq!(s.database.url.expose(), "sqlite::memory:");
        Ok(())
    });
}

#[test]
fn unknown_profile_is_an_error_naming_it() {
    Jail::expect_with(|jail| -> JailResult {
        jail.set_env("COURIER_ENV", "prodcution");
        let dir = jail.directory().display().to_string();
        jail.set_env("COURIER_SETTINGS_DIR", dir);
        match Settings::load() {
            Err(SettingsError::UnknownProfile { profile }) => assert_eq!(profile, "prodcution"),
            other => panic!("expected UnknownProfile, got {other:?}"),
        }
        Ok(())
    });
}

#[test]
fn production_requires_a_token() {
    Jail::expect_with(|jail| -> JailResult {
        match load(jail, "production") {
            Err(SettingsError::Invalid(found)) => {
                assert_eq!(found.len(), 1, "{found:?}");
                assert_eq!(found[0].key, "telegram.token");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        Ok(())
    });
}

#[test]
fn validation_names_the_key_and_its_source() {
    Jail::expect_with(|jail| -> JailResult {
        jail.create_file("settings.toml", "[default.redis]\nresult_ttl = \"0s\"\n")?;
        jail.set_env("COURIER_WORKER__CONCURRENCY", "0");
        jail.set_env("COURIER_REDIS__URL", "http://not-redis");
        let Err(SettingsError::Invalid(found)) = load(jail, "development") else {
            panic!("expected Invalid");
        };
        let by_key =
            |key: &str| found.iter().find(|i| i.key == key).unwrap_or_else(|| panic!("{key} not reported: {found:?}"));
        assert!(by_key("redis.result_ttl").origin.contains("settings.toml"), "{:?}", by_key("redis.result_ttl"));
        assert!(by_key("worker.concurrency").origin.contains("COURIER_"), "{:?}", by_key("worker.concurrency"));
        assert!(by_key("redis.url").origin.contains("COURIER_"));
        assert_eq!(found.len(), 3, "{found:?}");
        Ok(())
    });
}

#[test]
fn wrong_type_names_the_key() {
    Jail::expect_with(|jail| -> JailResult {
        jail.set_env("COURIER_WORKER__CONCURRENCY", "many");
        let Err(SettingsError::Load(e)) = load(jail, "development") else { panic!("expected Load") };
        let text = e.to_string().to_ascii_lowercase();
        assert!(text.contains("concurrency") && text.contains("courier_"), "{text}");
        Ok(())
    });
}

#[test]
fn secrets_are_redacted_in_debug_and_errors() {
    Jail::expect_with(|jail| -> JailResult {
        jail.set_env("COURIER_TELEGRAM__TOKEN", "12345:SUPERSECRETTOKEN");
        jail.set_env("COURIER_DATABASE__URL", "postgres://app:hunter2@db:5432/app");
        jail.set_env("COURIER_REDIS__URL", "redis://:redispass@cache:6379");
        jail.set_env("COURIER_NATS__URL", "nats://natstoken@nats:4222");
        let s = load(jail, "production").map_err(err)?;
        let debug = format!("{s:?}");
        for secret in ["SUPERSECRETTOKEN", "hunter2", "redispass", "natstoken"] {
            assert!(!debug.contains(secret), "{secret} leaked into Debug: {debug}");
        }
        assert!(debug.contains("postgres://app:***@db:5432/app"), "{debug}");
        assert_eq!(s.database.url.expose(), "postgres://app:hunter2@db:5432/app");

        jail.set_env("COURIER_REDIS__URL", "ftp://user:ftppass@cache:6379");
        let e = load(jail, "production").expect_err("bad scheme").to_string();
        assert!(e.contains("redis.url") && !e.contains("ftppass"), "{e}");
        Ok(())
    });
}

/// The exposed URL of each server in `nats.url`.
fn servers(s: &Settings) -> Vec<&str> {
    s.nats.url.servers().iter().map(|url| url.expose()).collect()
}

#[test]
fn nats_url_takes_a_list_in_files_and_a_comma_string_in_the_environment() {
    Jail::expect_with(|jail| -> JailResult {
        jail.create_file(
            "settings.toml",
            "[default.nats]\nurl = [\"nats://n1:4222\", \"nats://u:p%2Cw@n2:4222\", \"tls://n3:4222\"]\n",
        )?;
        let s = load(jail, "development").map_err(err)?;
        assert_eq!(servers(&s), ["nats://n1:4222", "nats://u:p%2Cw@n2:4222", "tls://n3:4222"]);

        // One string in a file may list several servers too.
        jail.create_file("settings.toml", "[default.nats]\nurl = \"nats://n1:4222, nats://n2:4222\"\n")?;
        assert_eq!(servers(&load(jail, "development").map_err(err)?), ["nats://n1:4222", "nats://n2:4222"]);

        // The environment beats the file, comma-separated.
        jail.set_env("COURIER_NATS__URL", "nats://e1:4222,nats://e2:4222,nats://e3:4222");
        let s = load(jail, "development").map_err(err)?;
        assert_eq!(servers(&s), ["nats://e1:4222", "nats://e2:4222", "nats://e3:4222"]);
        // The comma form is what a child process is handed: it round-trips.
        assert_eq!(s.nats.url.expose(), "nats://e1:4222,nats://e2:4222,nats://e3:4222");
        Ok(())
    });
}

#[test]
fn every_nats_server_is_validated_and_redacted() {
    Jail::expect_with(|jail| -> JailResult {
        jail.set_env("COURIER_NATS__URL", "nats://tok-s3cret@n1:4222,redis://n2:6379");
        let Err(SettingsError::Invalid(found)) = load(jail, "development") else { panic!("expected Invalid") };
        let text = format!("{found:?}");
        assert!(found.iter().any(|i| i.key == "nats.url" && i.reason.contains("redis://n2:6379")), "{text}");
        assert!(!text.contains("tok-s3cret"), "{text}");

        jail.set_env("COURIER_NATS__URL", " , ");
        let Err(SettingsError::Invalid(found)) = load(jail, "development") else { panic!("expected Invalid") };
        assert!(found.iter().any(|i| i.key == "nats.url" && i.reason.contains("no server")), "{found:?}");

        // One client has one set of credentials.
        jail.set_env("COURIER_NATS__URL", "nats://u:one@n1:4222,nats://n2:4222,nats://u:two@n3:4222");
        let Err(SettingsError::Invalid(found)) = load(jail, "development") else { panic!("expected Invalid") };
        let text = format!("{found:?}");
        assert!(found.iter().any(|i| i.key == "nats.url" && i.reason.contains("different credentials")), "{text}");
        assert!(!text.contains("one@") && !text.contains("two@"), "{text}");

        // The same credentials on every server, or on one only: accepted; Debug hides them all.
        jail.set_env("COURIER_NATS__URL", "nats://u:s3cret@n1:4222,nats://n2:4222,nats://u:s3cret@n3:4222");
        let s = load(jail, "development").map_err(err)?;
        let debug = format!("{s:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("nats://u:***@n1:4222,nats://n2:4222,nats://u:***@n3:4222"), "{debug}");
        Ok(())
    });
}

#[test]
fn the_cluster_compose_file_gives_every_worker_every_nats_node() {
    let compose = include_str!("../../docker/compose.cluster.yml");
    // The NATS services: `  nats-N:` in `services:` (`volumes:` has them too).
    let services = compose.split("\nservices:\n").nth(1).and_then(|rest| rest.split("\nvolumes:\n").next());
    let nodes: Vec<String> = services
        .expect("a services: section")
        .lines()
        .filter_map(|line| line.strip_prefix("  nats-")?.strip_suffix(':').map(|n| format!("nats://nats-{n}:4222")))
        .collect();
    assert!(nodes.len() >= 3, "{nodes:?}");
    let value = compose
        .lines()
        .find_map(|line| line.trim().strip_prefix("COURIER_NATS__URL:"))
        .expect("the worker's COURIER_NATS__URL")
        .trim()
        .to_owned();
    Jail::expect_with(|jail| -> JailResult {
        jail.set_env("COURIER_NATS__URL", &value);
        let s = load(jail, "development").map_err(err)?;
        assert_eq!(servers(&s), nodes, "every node, as the worker reads them");
        Ok(())
    });
}
