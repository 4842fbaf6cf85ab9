//! The sampling seed: the one given, or a fresh random one per run (as llama.cpp), so that two
//! sampled runs differ unless `--seed` asks for a repeat.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

/// `given`, else a random seed. std's `RandomState` is keyed from the OS's random source, and
/// the clock is mixed in so that two keys drawn in one process still differ.
pub fn seed_or_random(given: Option<u64>) -> u64 {
    given.unwrap_or_else(|| {
        let mut h = RandomState::new().build_hasher();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.finish()
    })
}

#[cfg(test)]
mod tests {
    use super::seed_or_random;

    #[test]
    fn a_given_seed_is_kept_and_random_ones_differ() {
        assert_eq!(seed_or_random(Some(42)), 42);
        assert_ne!(seed_or_random(None), seed_or_random(None));
    }
}
