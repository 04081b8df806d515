//! Settings are strict and say what they did: unknown tables, sections and
//! keys are errors suggesting the nearest known name; a settings folder
//! that is not there is an error; the layers loaded are listed by name;
//! the merged settings print with secrets masked; the defaults agree.

// `figment::Jail` fixes the closure type to `Result<(), figment::Error>`.
#![allow(clippy::result_large_err)]

use figment::Jail;
use settings::{Settings, SettingsError};

type JailResult = Result<(), figment::Error>;

fn load(jail: &Jail, profile: &str) -> Result<Settings, SettingsError> {
    Settings::load_from(jail.directory(), profile)
}

fn err(e: impl std::fmt::Display) -> figment::Error {
    figment::Error::from(e.to_string())
}

/// The unknown key, its origin and the suggestion; panics on anything else.
fn unknown(result: Result<Settings, SettingsError>) -> (String, String, Option<String>) {
    match result {
        Err(SettingsError::UnknownKey { key, origin, suggestion }) => (key, origin, suggestion),
        other => panic!("expected UnknownKey, got {other:?}"),
    }
}

#[test]
fn a_misspelt_section_or_key_in_the_environment_is_named_with_the_nearest_variable() {
    Jail::expect_with(|jail| -> JailResult {
        jail.set_env("COURIER_WROKER__CONCURRENCY", "3");
        let (key, origin, suggestion) = unknown(load(jail, "development"));
        assert_eq!(key, "COURIER_WROKER__CONCURRENCY");
        assert!(origin.contains("environment"), "{origin}");
        assert_eq!(suggestion.as_deref(), Some("COURIER_WORKER__CONCURRENCY"));
        let text = load(jail, "development").unwrap_err().to_string();
        assert!(text.contains("did you mean COURIER_WORKER__CONCURRENCY?"), "{text}");
        Ok(())
    });
    Jail::expect_with(|jail| -> JailResult {
        jail.set_env("COURIER_REDIS__URLL", "redis://x");
        let (key, _, suggestion) = unknown(load(jail, "development"));
        assert_eq!((key.as_str(), suggestion.as_deref()), ("COURIER_REDIS__URLL", Some("COURIER_REDIS__URL")));
        Ok(())
    });
}

#[test]
fn a_misspelt_section_in_a_file_is_named_with_its_file_and_table() {
    Jail::expect_with(|jail| -> JailResult {
        jail.create_file("settings.toml", "[development.wroker]\nconcurrency = 3\n")?;
        let (key, origin, suggestion) = unknown(load(jail, "development"));
        assert_eq!((key.as_str(), suggestion.as_deref()), ("wroker", Some("worker")));
        assert!(origin.contains("settings.toml") && origin.contains("[development]"), "{origin}");
        Ok(())
    });
}

#[test]
fn a_typo_in_a_profile_not_selected_is_found_too() {
    Jail::expect_with(|jail| -> JailResult {
        jail.create_file("settings.toml", "[production.worker]\nconcurency = 3\n")?;
        let (key, origin, suggestion) = unknown(load(jail, "development"));
        assert_eq!((key.as_str(), suggestion.as_deref()), ("worker.concurency", Some("worker.concurrency")));
        assert!(origin.contains("[production]"), "{origin}");
        Ok(())
    });
}

#[test]
fn a_table_that_is_no_profile_is_an_error() {
    Jail::expect_with(|jail| -> JailResult {
        jail.create_file("settings.toml", "[prodution.nats]\nstream = \"X\"\n")?;
        let (key, _, suggestion) = unknown(load(jail, "development"));
        assert_eq!((key.as_str(), suggestion.as_deref()), ("[prodution]", Some("[production]")));

        // A section without a profile table around it.
        jail.create_file("settings.toml", "[nats]\nstream = \"X\"\n")?;
        let (key, origin, _) = unknown(load(jail, "development"));
        assert_eq!(key, "[nats]");
        assert!(origin.contains("[<profile>.<section>]"), "{origin}");
        Ok(())
    });
}

#[test]
fn one_underscore_too_few_is_refused_and_other_variables_are_left_alone() {
    Jail::expect_with(|jail| -> JailResult {
        jail.set_env("COURIER_BIN_DIR", "/somewhere");
        jail.set_env("COURIER_TASKIQ_VENV", "/somewhere/else");
        load(jail, "development").map_err(err)?;

        jail.set_env("COURIER_LOG_LEVEL", "debug");
        let (key, _, suggestion) = unknown(load(jail, "development"));
        assert_eq!((key.as_str(), suggestion.as_deref()), ("COURIER_LOG_LEVEL", Some("COURIER_LOG__LEVEL")));
        Ok(())
    });
    Jail::expect_with(|jail| -> JailResult {
        // Not among the built-in keys (it has no default), still suggested.
        jail.set_env("COURIER_TELEGRAM_TOKEN", "1:x");
        let (_, _, suggestion) = unknown(load(jail, "development"));
        assert_eq!(suggestion.as_deref(), Some("COURIER_TELEGRAM__TOKEN"));
        Ok(())
    });
}

#[test]
fn a_settings_dir_that_is_not_there_is_an_error() {
    Jail::expect_with(|jail| -> JailResult {
        jail.set_env("COURIER_SETTINGS_DIR", "/nonexistent/courier-settings");
        match Settings::load() {
            Err(SettingsError::MissingDir(path)) => assert_eq!(path.to_str(), Some("/nonexistent/courier-settings")),
            other => panic!("expected MissingDir, got {other:?}"),
        }
        // Unset, the default folder is optional.
        jail.set_env("COURIER_SETTINGS_DIR", jail.directory().display().to_string());
        Settings::load().map_err(err)?;
        Ok(())
    });
}

#[test]
fn the_layers_loaded_are_listed_by_name_never_by_value() {
    Jail::expect_with(|jail| -> JailResult {
        jail.create_file("settings.toml", "[default.worker]\nconcurrency = 4\n")?;
        jail.create_file(".secrets.toml", "[production.telegram]\ntoken = \"1:filesecret\"\n")?;
        jail.set_env("COURIER_REDIS__URL", "redis://:envsecret@cache:6379");
        let s = load(jail, "development").map_err(err)?;
        let names: Vec<_> = s.sources.files.iter().filter_map(|p| p.file_name()?.to_str()).collect();
        assert_eq!(names, ["settings.toml", ".secrets.toml"]);
        assert_eq!(s.sources.env_keys, ["COURIER_REDIS__URL"]);
        assert_eq!(s.sources.profile, "development");
        let line = s.sources.to_string();
        assert!(line.starts_with("built-in defaults, ") && line.contains("profile development"), "{line}");
        assert!(line.contains("COURIER_REDIS__URL") && !line.contains("envsecret"), "{line}");
        Ok(())
    });
}

#[test]
fn a_file_default_that_the_built_in_profile_beats_is_reported() {
    Jail::expect_with(|jail| -> JailResult {
        jail.create_file("settings.toml", "[default.database]\nurl = \"postgres://elsewhere/app\"\n")?;
        let s = load(jail, "development").map_err(err)?;
        // The documented order: the built-in [development] beats a file's [default].
        assert!(s.database.url.expose().contains("127.0.0.1"), "{:?}", s.database.url);
        assert_eq!(s.sources.shadowed, ["settings.toml database.url"]);
        // Under the profile's own table it wins, and nothing is shadowed.
        jail.create_file("settings.toml", "[development.database]\nurl = \"postgres://elsewhere/app\"\n")?;
        let s = load(jail, "development").map_err(err)?;
        assert_eq!(s.database.url.expose(), "postgres://elsewhere/app");
        assert!(s.sources.shadowed.is_empty());
        Ok(())
    });
}

#[test]
fn the_merged_settings_print_as_toml_with_every_secret_masked() {
    Jail::expect_with(|jail| -> JailResult {
        jail.set_env("COURIER_TELEGRAM__TOKEN", "12345:SUPERSECRETTOKEN");
        jail.set_env("COURIER_DATABASE__URL", "postgres://app:hunter2@db:5432/app");
        jail.set_env("COURIER_REDIS__URL", "redis://:redispass@cache:6379");
        jail.set_env("COURIER_NATS__URL", "nats://u:natspass@n1:4222,nats://n2:4222");
        jail.set_env("COURIER_WORKER__CONCURRENCY", "12");
        let s = load(jail, "production").map_err(err)?;
        let text = s.to_masked_toml();
        for secret in ["SUPERSECRETTOKEN", "12345", "hunter2", "redispass", "natspass"] {
            assert!(!text.contains(secret), "{secret} printed:\n{text}");
        }
        let parsed: toml::Table = text.parse().map_err(err)?;
        assert_eq!(parsed["worker"]["concurrency"].as_integer(), Some(12));
        assert_eq!(parsed["telegram"]["token"].as_str(), Some("***"));
        assert_eq!(parsed["database"]["url"].as_str(), Some("postgres://app:***@db:5432/app"));
        assert_eq!(parsed["nats"]["ack_wait"].as_str(), Some("30s"), "values as written");
        let json = serde_json::to_string(s.masked()).map_err(err)?;
        assert!(!json.contains("hunter2") && json.contains("\"concurrency\":12"), "{json}");
        Ok(())
    });
}

#[test]
fn every_profile_has_a_database_pool_as_large_as_its_concurrency() {
    Jail::expect_with(|jail| -> JailResult {
        jail.set_env("COURIER_TELEGRAM__TOKEN", "1:x");
        for profile in ["development", "test", "production"] {
            let s = load(jail, profile).map_err(err)?;
            let pool = usize::try_from(s.database.max_connections).unwrap();
            assert!(pool >= s.worker.concurrency, "{profile}: pool {pool} < concurrency {}", s.worker.concurrency);
            assert!(!courier::worker::lifecycle::warn_if_pool_below_concurrency(&s), "{profile}");
        }
        Ok(())
    });
}
