//! `sqlx::migrate!` embeds `migrations/` at compile time, but Cargo does not know it
//! reads that directory: without this, a new migration file is left out of an
//! incremental build until this crate's sources change.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
