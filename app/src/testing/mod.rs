//! Test doubles Courier ships for its users' tests: Telegram's flood rules
//! as a fake Bot API enforces them, and the fake Bot API itself.

pub mod fake_bot_api;
pub mod flood;
