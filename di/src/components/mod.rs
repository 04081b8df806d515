//! The injectable components: one interface and its real implementation per file.

pub mod bot;
pub mod db;
pub mod result_store;
