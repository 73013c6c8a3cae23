//! A small process-wide cache for short-lived credentials (Google access
//! tokens, AWS role credentials), so that a check every few seconds does not
//! also fetch a new token every few seconds.
//!
//! Entries are keyed by a SHA-256 of what identifies the token's source (the
//! key itself never is a map key), and expire on their own.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Credentials of type `T` by source, with the instant they stop being used.
pub(crate) struct ExpiringCache<T> {
    entries: Mutex<HashMap<[u8; 32], (T, Instant)>>,
}

impl<T: Clone> ExpiringCache<T> {
    pub(crate) fn new() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 32], (T, Instant)>> {
        // A poisoned lock only means a panic mid-update elsewhere: the map is
        // still a valid cache, at worst missing an entry.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The entry for `key`, if it has not expired.
    pub(crate) fn get(&self, key: &[u8; 32]) -> Option<T> {
        self.lock().get(key).filter(|(_, until)| Instant::now() < *until).map(|(value, _)| value.clone())
    }

    /// Keeps `value` for `ttl`, dropping expired entries.
    pub(crate) fn put(&self, key: [u8; 32], value: T, ttl: Duration) {
        let now = Instant::now();
        let mut entries = self.lock();
        entries.retain(|_, (_, until)| now < *until);
        entries.insert(key, (value, now + ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire() {
        let cache = ExpiringCache::new();
        cache.put([1; 32], "a".to_string(), Duration::from_secs(60));
        cache.put([2; 32], "b".to_string(), Duration::ZERO);
        assert_eq!(cache.get(&[1; 32]), Some("a".to_string()));
        assert_eq!(cache.get(&[2; 32]), None);
        assert_eq!(cache.get(&[3; 32]), None);
    }
}
