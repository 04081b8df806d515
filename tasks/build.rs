//! Makes cargo notice task files being added or removed (automod cannot),
//! and new migrations (sqlx::migrate! embeds them at compile time).

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=migrations");
}
