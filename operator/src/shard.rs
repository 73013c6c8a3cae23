//! Sharding the Canaries of one cluster over several replicas (`--shards N`): the pure
//! decisions. Which shard a Canary belongs to, which shard a replica prefers, the name of
//! a shard's Lease, and the set of shards a replica holds right now, read at the start of
//! every reconcile.
//!
//! The shard of a Canary is FNV-1a (64 bit) of `namespace/name`, modulo N. FNV-1a is a
//! fixed algorithm with fixed constants, so every replica, every process and every
//! petrel version agrees on it (std's `RandomState` does not: it is seeded per process).
//! Changing it is a breaking change: two versions would then both reconcile some Canaries
//! during a rolling upgrade.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bit. Pure and stable across processes and versions.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME))
}

/// The shard (0..shards) of the Canary `namespace/name`. `shards` 0 is treated as 1
/// (everything in shard 0), so the function is total. Pure.
pub fn shard_of(namespace: &str, name: &str, shards: u32) -> u32 {
    let shards = u64::from(shards.max(1));
    let mut key = Vec::with_capacity(namespace.len() + 1 + name.len());
    key.extend_from_slice(namespace.as_bytes());
    key.push(b'/');
    key.extend_from_slice(name.as_bytes());
    // The remainder is < shards <= u32::MAX, so the conversion cannot fail.
    u32::try_from(fnv1a(&key) % shards).unwrap_or(0)
}

/// The name of shard `index`'s Lease: `<lease-name>-shard-<index>`. Pure.
pub fn lease_name(base: &str, index: u32) -> String {
    format!("{base}-shard-{index}")
}

/// The StatefulSet ordinal of a Pod name (`petrel-2` → 2): the digits after the last `-`.
/// `None` when the name has no such suffix (a Deployment's Pod name ends in a random
/// string, which is not all digits except by chance; use `--shard-index` there). Pure.
pub fn ordinal(pod_name: &str) -> Option<u32> {
    let (_, suffix) = pod_name.rsplit_once('-')?;
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    suffix.parse().ok()
}

/// The shard this replica prefers: `--shard-index` when given, else the Pod name's
/// ordinal, modulo `shards`; `None` when neither is known (the replica then only takes
/// shards whose Lease is free or expired). Pure.
pub fn preferred_shard(shard_index: Option<u32>, pod_name: Option<&str>, shards: u32) -> Option<u32> {
    let shards = shards.max(1);
    shard_index.or_else(|| pod_name.and_then(ordinal)).map(|index| index % shards)
}

/// The order in which a replica campaigns for the shard Leases: its preferred shard first,
/// then the others in rising order from it (wrapping), so replicas with different
/// preferences do not all rush for shard 0 first when a replica dies. Pure.
pub fn campaign_order(preferred: Option<u32>, shards: u32) -> Vec<u32> {
    let shards = shards.max(1);
    let start = preferred.unwrap_or(0) % shards;
    (0..shards).map(|offset| (start + offset) % shards).collect()
}

/// The shards a replica holds right now, shared between the Lease tasks (which add and
/// remove shards as they acquire and lose Leases) and the reconciler (which asks
/// [`HeldShards::owns`] at the start of every reconcile).
///
/// With one shard (the default) every Canary is owned: single-replica and single-leader
/// modes behave as before.
#[derive(Debug, Clone)]
pub struct HeldShards {
    shards: u32,
    held: Arc<RwLock<BTreeSet<u32>>>,
}

impl HeldShards {
    /// `shards` shards, none held yet (with `shards` ≤ 1: everything is owned).
    pub fn new(shards: u32) -> Self {
        Self { shards: shards.max(1), held: Arc::default() }
    }

    /// The number of shards the Canaries are split into.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Whether this replica may write for the Canary `namespace/name` now.
    pub fn owns(&self, namespace: &str, name: &str) -> bool {
        self.shards == 1 || self.holds(shard_of(namespace, name, self.shards))
    }

    /// Whether shard `index` is held now.
    pub fn holds(&self, index: u32) -> bool {
        // A poisoned lock means a writer panicked mid-insert; the set is still a valid
        // set, so reading it is sound.
        self.held.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&index)
    }

    /// Marks shard `index` held (`true`) or lost (`false`); returns whether that changed.
    pub fn set(&self, index: u32, held: bool) -> bool {
        let mut set = self.held.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if held { set.insert(index) } else { set.remove(&index) }
    }

    /// The shards held now, in rising order.
    pub fn held(&self) -> Vec<u32> {
        self.held.read().unwrap_or_else(std::sync::PoisonError::into_inner).iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference test suite (Landon Curt Noll).
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_shard_of_a_canary_is_pinned() {
        // Pinned values: a change of algorithm fails here (it would split the Canaries
        // differently between two petrel versions during an upgrade).
        let shards: Vec<u32> = ["a", "b", "podinfo", "web", "api"].iter().map(|n| shard_of("test", n, 3)).collect();
        assert_eq!(shards, vec![1, 1, 0, 2, 2]);
    }

    #[test]
    fn the_separator_keeps_namespace_and_name_apart() {
        // "ab/c" and "a/bc" are different Canaries and hash different keys.
        assert_ne!(fnv1a(b"ab/c"), fnv1a(b"a/bc"));
        assert_eq!(shard_of("ab", "c", u32::MAX), (fnv1a(b"ab/c") % u64::from(u32::MAX)) as u32);
    }

    #[test]
    fn many_names_spread_evenly() {
        for shards in [2u32, 3, 5, 8] {
            let mut counts = vec![0u32; shards as usize];
            let total = 30_000u32;
            for i in 0..total {
                counts[shard_of(&format!("team-{}", i % 37), &format!("app-{i}"), shards) as usize] += 1;
            }
            let expected = f64::from(total) / f64::from(shards);
            for (shard, count) in counts.iter().enumerate() {
                let deviation = (f64::from(*count) - expected).abs() / expected;
                assert!(deviation < 0.05, "shard {shard} of {shards} holds {count}, expected about {expected}");
            }
        }
    }

    #[test]
    fn the_ordinal_is_a_statefulset_suffix() {
        assert_eq!(ordinal("petrel-2"), Some(2));
        assert_eq!(ordinal("petrel-member-10"), Some(10));
        assert_eq!(ordinal("petrel"), None);
        assert_eq!(ordinal("petrel-"), None);
        assert_eq!(ordinal("petrel-7d9f8-abcde"), None);
        assert_eq!(preferred_shard(Some(4), Some("petrel-1"), 3), Some(1), "--shard-index wins, modulo N");
        assert_eq!(preferred_shard(None, Some("petrel-2"), 3), Some(2));
        assert_eq!(preferred_shard(None, Some("petrel-abc"), 3), None);
        assert_eq!(lease_name("petrel-member", 2), "petrel-member-shard-2");
    }

    #[test]
    fn one_shard_owns_everything_and_more_own_only_what_is_held() {
        let single = HeldShards::new(1);
        assert!(single.owns("any", "thing"), "the default mode reconciles every Canary");
        let held = HeldShards::new(3);
        let shard = shard_of("test", "web", 3);
        assert!(!held.owns("test", "web"), "nothing held yet");
        assert!(held.set(shard, true));
        assert!(!held.set(shard, true), "already held");
        assert!(held.owns("test", "web"));
        assert_eq!(held.held(), vec![shard]);
        assert!(held.set(shard, false));
        assert!(!held.owns("test", "web"), "a lost shard stops the writes at once");
    }

    proptest! {
        #[test]
        fn the_shard_is_in_range_and_stable(namespace in "[a-z0-9-]{1,63}", name in "[a-z0-9-]{1,253}", shards in 1u32..64) {
            let shard = shard_of(&namespace, &name, shards);
            prop_assert!(shard < shards);
            prop_assert_eq!(shard, shard_of(&namespace, &name, shards));
        }

        #[test]
        fn exactly_one_of_the_replicas_holding_all_shards_owns_a_canary(namespace in "[a-z0-9-]{1,63}", name in "[a-z0-9-]{1,63}", shards in 2u32..16) {
            let replicas: Vec<HeldShards> = (0..shards).map(|i| { let h = HeldShards::new(shards); h.set(i, true); h }).collect();
            prop_assert_eq!(replicas.iter().filter(|r| r.owns(&namespace, &name)).count(), 1);
        }

        #[test]
        fn the_campaign_visits_every_shard_once_from_the_preferred(preferred in proptest::option::of(0u32..100), shards in 1u32..32) {
            let order = campaign_order(preferred, shards);
            prop_assert_eq!(order.len(), shards as usize);
            prop_assert_eq!(order[0], preferred.unwrap_or(0) % shards);
            let set: BTreeSet<u32> = order.iter().copied().collect();
            prop_assert_eq!(set.len(), shards as usize);
        }
    }
}
