//! What the flood-control tests share: worker processes pointed at a fake
//! Bot API with the limits it enforces, and the exactly-once check.

use std::collections::HashMap;

use courier::testing::fake_bot_api::FakeTelegram;
use settings::TelegramLimits;

use crate::process::ChildProcess;
use crate::scope::Scope;

/// What a worker process needs: the scope, the fake's URL, a token, the
/// limits (every `telegram.limits` key as an environment variable).
pub fn env(scope: &Scope, fake_url: &str, limits: &TelegramLimits) -> Vec<(String, String)> {
    let mut env = scope.env();
    let mut set = |key: &str, value: String| env.push((format!("COURIER_TELEGRAM__{key}"), value));
    set("TOKEN", "123456:TEST-TOKEN".into());
    set("API_URL", fake_url.to_owned());
    set("LIMITS__GLOBAL_PER_SECOND", limits.global_per_second.to_string());
    set("LIMITS__GLOBAL_BURST", limits.global_burst.to_string());
    set("LIMITS__PRIVATE_PER_SECOND", limits.private_per_second.to_string());
    set("LIMITS__PRIVATE_BURST", limits.private_burst.to_string());
    set("LIMITS__GROUP_PER_MINUTE", limits.group_per_minute.to_string());
    set("LIMITS__GROUP_BURST", limits.group_burst.to_string());
    set("LIMITS__INTERACTIVE_RESERVE", limits.interactive_reserve.to_string());
    set("LIMITS__PAID_PER_SECOND", limits.paid_per_second.to_string());
    set("LIMITS__PAID_BURST", limits.paid_burst.to_string());
    set("LIMITS__PAID_DAILY_STARS", limits.paid_daily_stars.to_string());
    let when_spent = match limits.paid_when_spent {
        settings::PaidWhenSpent::Free => "free",
        settings::PaidWhenSpent::Pause => "pause",
    };
    set("LIMITS__PAID_WHEN_SPENT", when_spent.to_owned());
    env
}

/// Starts `n` worker processes with `env`.
pub async fn workers(n: usize, env: &[(String, String)]) -> Vec<ChildProcess> {
    let env = env.to_vec();
    tokio::task::spawn_blocking(move || (0..n).map(|_| ChildProcess::start(&env)).collect()).await.unwrap()
}

/// Each of `texts` was accepted by the fake exactly once, and no other text.
pub fn exactly_once(fake: &FakeTelegram, texts: &[String]) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (_, text, _) in fake.accepted() {
        *seen.entry(text.as_str().unwrap_or_default().to_owned()).or_default() += 1;
    }
    for text in texts {
        assert_eq!(seen.get(text).copied(), Some(1), "{text} arrived {:?} times", seen.get(text));
    }
    assert_eq!(seen.len(), texts.len(), "messages nobody sent arrived");
}
