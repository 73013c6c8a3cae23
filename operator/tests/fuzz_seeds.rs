//! Replays every committed fuzz seed (fuzz/seeds/<target>/: the starting corpus and every
//! input that once made a target fail) through the same property the cargo-fuzz target
//! checks, on stable, in every `cargo test`. The properties live in fuzz/src/lib.rs,
//! included here; `./scripts/fuzz` explores new inputs with libFuzzer on nightly.
//!
//! `route_weights` takes structured input (`arbitrary`), so it has no byte seeds to
//! replay here.

#[path = "../../fuzz/src/lib.rs"]
mod properties;

use std::path::PathBuf;

/// Runs `property` on every seed of `target`, naming the seed of a failure.
fn replay(target: &str, property: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds").join(target);
    let mut seeds: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable seed directory entry").path())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    for seed in seeds {
        let data = std::fs::read(&seed).unwrap_or_else(|e| panic!("reading {}: {e}", seed.display()));
        let outcome = std::panic::catch_unwind(|| property(&data));
        assert!(outcome.is_ok(), "seed {} fails the {target} property", seed.display());
    }
}

#[test]
fn duration_seeds() {
    replay("duration", properties::duration);
}

#[test]
fn query_template_seeds() {
    replay("query_template", properties::query_template);
}

#[test]
fn answers_seeds() {
    replay("answers", properties::answers);
}
