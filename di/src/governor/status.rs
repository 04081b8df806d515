//! What the governor's shared state says right now: frozen keys, the send
//! rate of each lane, the global backlog and the Stars spent today. Read by
//! `producer governor` and by the worker's gauges; one round trip.

use std::time::Duration;

use super::{Governor, GovernorError, Lane};

/// The most frozen keys one status lists (their count is always exact).
pub const MOST_FROZEN_LISTED: usize = 100;

/// A frozen key: a chat, or the whole bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrozenKey {
    /// Every send of the bot.
    Bot,
    /// One chat.
    Chat(i64),
}

/// The shared flood-control state of one bot.
#[derive(Debug, Clone, PartialEq)]
pub struct GovernorStatus {
    /// Keys frozen by a 429, soonest to thaw first, with the time left (at
    /// most [`MOST_FROZEN_LISTED`]).
    pub frozen: Vec<(FrozenKey, Duration)>,
    /// How many keys are frozen.
    pub frozen_count: u64,
    /// Messages per second admitted in each lane, over the last 5 full seconds.
    pub rates: Vec<(Lane, f64)>,
    /// How far ahead the global bucket is booked (zero: idle).
    pub global_backlog: Duration,
    /// Telegram Stars the paid lane spent today (UTC).
    pub stars_today: f64,
    /// The day's Stars budget.
    pub stars_budget: u64,
}

/// What the `STATUS` script answers: now (ms), the global TAT, the frozen
/// keys with their ends, their count, the Stars value, the rates hash.
type StatusReply = (u64, String, Vec<(String, f64)>, u64, String, Vec<(String, String)>);

/// The window [`GovernorStatus::rates`] averages over.
const RATE_SECONDS: u64 = 5;

impl Governor {
    /// Reads the shared state (fails while Redis is unreachable).
    pub async fn status(&self) -> Result<GovernorStatus, GovernorError> {
        let mut conn = self.conn().await?;
        let mut call = self.status.prepare_invoke();
        for key in ["frozen", "global", "stars", "rates"] {
            call.key(self.key(key));
        }
        call.arg(MOST_FROZEN_LISTED);
        let (now_ms, global_tat, frozen, frozen_count, stars, rates): StatusReply =
            call.invoke_async(&mut conn).await.map_err(|e| self.failed(e))?;
        let frozen = frozen
            .into_iter()
            .filter_map(|(member, until)| {
                let key = if member == "bot" { FrozenKey::Bot } else { FrozenKey::Chat(member.parse().ok()?) };
                Some((key, Duration::from_millis((until as u64).saturating_sub(now_ms))))
            })
            .collect();
        let global_tat_us: u64 = global_tat.parse().unwrap_or(0);
        Ok(GovernorStatus {
            frozen,
            frozen_count,
            rates: lane_rates(&rates, now_ms / 1000),
            global_backlog: Duration::from_micros(global_tat_us.saturating_sub(now_ms * 1000)),
            stars_today: tenths_today(&stars, now_ms / 86_400_000) as f64 / 10.0,
            stars_budget: self.limits.paid_daily_stars,
        })
    }
}

/// The tenths of a Star spent on `day` (days since the epoch, UTC) from the
/// `stars` value `<day>:<tenths>`; 0 for another day.
fn tenths_today(value: &str, day: u64) -> u64 {
    value
        .split_once(':')
        .filter(|(d, _)| d.parse::<u64>().ok() == Some(day))
        .and_then(|(_, tenths)| tenths.parse().ok())
        .unwrap_or(0)
}

/// Per-lane rates from the `rates` hash (`<lane>:<slot>` → `<sec>:<count>`)
/// over the [`RATE_SECONDS`] full seconds before `now_sec`.
fn lane_rates(fields: &[(String, String)], now_sec: u64) -> Vec<(Lane, f64)> {
    Lane::ALL
        .into_iter()
        .map(|lane| {
            let sent: u64 = fields
                .iter()
                .filter(|(field, _)| field.split_once(':').is_some_and(|(name, _)| name == lane.name()))
                .filter_map(|(_, value)| {
                    let (sec, count) = value.split_once(':')?;
                    let sec: u64 = sec.parse().ok()?;
                    (sec < now_sec && sec + RATE_SECONDS >= now_sec).then(|| count.parse::<u64>().ok())?
                })
                .sum();
            (lane, sent as f64 / RATE_SECONDS as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_count_only_for_their_day() {
        assert_eq!(tenths_today("20000:35", 20_000), 35);
        assert_eq!(tenths_today("19999:35", 20_000), 0, "yesterday's spend is not today's");
        assert_eq!(tenths_today("", 20_000), 0);
        assert_eq!(tenths_today("garbage", 20_000), 0);
    }

    #[test]
    fn rates_count_only_the_last_full_seconds_of_each_lane() {
        let field = |lane: &str, sec: u64, n: u64| (format!("{lane}:{}", sec % 16), format!("{sec}:{n}"));
        let fields = [
            field("bulk", 100, 10),
            field("bulk", 99, 10),
            field("bulk", 95, 10),
            field("bulk", 94, 1000),
            field("bulk", 101, 1000),
            field("interactive", 97, 5),
        ];
        let rates = lane_rates(&fields, 101);
        assert_eq!(rates.iter().find(|(l, _)| *l == Lane::Bulk).unwrap().1, 4.0);
        assert_eq!(rates.iter().find(|(l, _)| *l == Lane::Interactive).unwrap().1, 1.0);
        assert_eq!(rates.iter().find(|(l, _)| *l == Lane::Paid).unwrap().1, 0.0);
    }
}
