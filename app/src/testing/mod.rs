//! Test doubles Courier ships for its users' tests: Telegram's flood rules
//! as a fake Bot API enforces them.

pub mod flood;
