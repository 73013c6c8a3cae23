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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};

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
    /// Counts acquisitions, so the controller can reconcile every Canary when a shard
    /// comes in ([`HeldShards::acquisitions`]).
    acquired: Arc<tokio::sync::watch::Sender<u64>>,
}

impl HeldShards {
    /// `shards` shards, none held yet (with `shards` ≤ 1: everything is owned).
    pub fn new(shards: u32) -> Self {
        Self { shards: shards.max(1), held: Arc::default(), acquired: Arc::new(tokio::sync::watch::Sender::new(0)) }
    }

    /// One item each time a shard is newly held (several acquisitions close together may
    /// come as one), for `Controller::reconcile_all_on`: the Canaries of a shard taken
    /// over are picked up at once instead of at their next change.
    pub fn acquisitions(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        let mut receiver = self.acquired.subscribe();
        receiver.mark_unchanged();
        futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.changed().await.ok()?;
            Some(((), receiver))
        })
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
        let changed = {
            let mut set = self.held.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if held { set.insert(index) } else { set.remove(&index) }
        };
        if changed && held {
            self.acquired.send_modify(|count| *count = count.wrapping_add(1));
        }
        changed
    }

    /// The shards held now, in rising order.
    pub fn held(&self) -> Vec<u32> {
        self.held.read().unwrap_or_else(std::sync::PoisonError::into_inner).iter().copied().collect()
    }
}

/// What a replica saw of a shard's Lease at its last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseSeen {
    /// Held by another replica that renewed it within its duration.
    Held,
    /// Held, but not renewed within its duration (the holder died or is cut off), or
    /// held by this very identity (an earlier life of this replica).
    Expired,
    /// No holder (never taken, or released by a replica that stopped), seen so for `since`.
    Free { since: Duration },
}

/// Classifies a shard's Lease from its holder, last renewal and duration, as the lease
/// manager does (a holder without a renewal time or duration has expired). Pure.
pub fn lease_seen(
    holder: Option<&str>,
    renewed: Option<DateTime<Utc>>,
    duration_seconds: Option<i32>,
    identity: &str,
    now: DateTime<Utc>,
    free_since: Duration,
) -> LeaseSeen {
    match holder.filter(|h| !h.is_empty()) {
        None => LeaseSeen::Free { since: free_since },
        Some(holder) if holder == identity => LeaseSeen::Expired,
        Some(_) => match (renewed, duration_seconds) {
            (Some(renewed), Some(seconds)) if now <= renewed + chrono::Duration::seconds(i64::from(seconds)) => {
                LeaseSeen::Held
            }
            _ => LeaseSeen::Expired,
        },
    }
}

/// The shards a replica starts campaigning for now, given what it campaigns for already
/// and what it saw of the other Leases. Pure.
///
/// - Its preferred shard at once: its own, whoever else is up.
/// - Any other shard only when nobody can be counting on it: its Lease expired (its
///   holder died: taken over after about one lease duration), or it has been free for
///   `grace` (one lease duration: time for the replica that prefers it to start and take
///   it, so a fleet that starts together ends with one shard each, not one replica
///   holding every shard).
/// - A replica with no preferred shard (a Deployment's Pod) that campaigns for nothing
///   yet takes one free shard at once, the first in its `order`.
/// - At most one other shard per look, in `order`, so survivors share a dead replica's
///   shards instead of the fastest taking them all.
pub fn shards_to_campaign(
    order: &[u32],
    preferred: Option<u32>,
    campaigning: &BTreeSet<u32>,
    seen: &BTreeMap<u32, LeaseSeen>,
    grace: Duration,
) -> Vec<u32> {
    let mut start: Vec<u32> = preferred.filter(|p| !campaigning.contains(p)).into_iter().collect();
    let idle = preferred.is_none() && campaigning.is_empty();
    let other =
        order.iter().copied().filter(|i| Some(*i) != preferred && !campaigning.contains(i)).find(|i| {
            match seen.get(i) {
                Some(LeaseSeen::Expired) => true,
                Some(LeaseSeen::Free { since }) => idle || *since >= grace,
                Some(LeaseSeen::Held) | None => false,
            }
        });
    start.extend(other);
    start
}

/// The annotations a replica writes on the Lease of its preferred shard while another
/// replica holds it: who wants it back, and when it last said so.
pub const WANTED_BY_ANNOTATION: &str = "petrel.dev/wanted-by";
pub const WANTED_AT_ANNOTATION: &str = "petrel.dev/wanted-at";

/// What a replica does, at a look, with a shard it campaigns for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stewardship {
    /// Go on: hold it, or wait for it.
    Keep,
    /// Its preferred shard, held by another replica: ask for it back (write
    /// [`WANTED_BY_ANNOTATION`] and [`WANTED_AT_ANNOTATION`] on its Lease).
    Ask,
    /// Held, but another replica prefers it and asked for it within `fresh`: stop
    /// reconciling it and release its Lease, so that replica takes it.
    HandBack,
    /// Not its preferred shard, not held, and held by another replica: stop campaigning
    /// (it lost the race for it), so that it does not snatch the shard when its holder
    /// hands it back to the replica that prefers it.
    Drop,
}

/// Whether the request on a Lease (`wanted`: who, when) is another replica's, made within
/// `fresh`. A replica that wants its shard back asks at every look, so an older request
/// is from one that got its shard or died, and is ignored: a survivor that took a dead
/// replica's shard keeps it. Pure.
pub fn asked_by_another(
    wanted: Option<(&str, DateTime<Utc>)>,
    identity: &str,
    now: DateTime<Utc>,
    fresh: Duration,
) -> bool {
    let fresh = chrono::Duration::from_std(fresh).unwrap_or(chrono::Duration::MAX);
    wanted.is_some_and(|(by, at)| by != identity && now - at <= fresh)
}

/// Whether the request on a Lease is this replica's own and young enough to need no
/// refresh yet: it must stay within `fresh` (what [`asked_by_another`] honours) until
/// the look after the next one, `look` apart, so a holder reading at any moment between
/// two looks still sees it. A replica that asks for its shard back writes the Lease only
/// when this is false, not at every look. Pure.
pub fn request_is_current(
    wanted: Option<(&str, DateTime<Utc>)>,
    identity: &str,
    now: DateTime<Utc>,
    fresh: Duration,
    look: Duration,
) -> bool {
    let fresh = chrono::Duration::from_std(fresh).unwrap_or(chrono::Duration::MAX);
    let two_looks = chrono::Duration::from_std(look.saturating_mul(2)).unwrap_or(chrono::Duration::MAX);
    wanted.is_some_and(|(by, at)| {
        by == identity && at <= now && (now - at).checked_add(&two_looks).is_some_and(|age| age <= fresh)
    })
}

/// Decides [`Stewardship`] for shard `index`, which this replica campaigns for; `asked`:
/// [`asked_by_another`] of its Lease. Pure.
pub fn stewardship(index: u32, preferred: Option<u32>, holds: bool, seen: LeaseSeen, asked: bool) -> Stewardship {
    match (Some(index) == preferred, holds, seen) {
        (true, false, LeaseSeen::Held) => Stewardship::Ask,
        (true, _, _) => Stewardship::Keep,
        (false, true, _) if asked => Stewardship::HandBack,
        (false, false, LeaseSeen::Held) => Stewardship::Drop,
        (false, _, _) => Stewardship::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_own_request_is_refreshed_only_when_it_would_go_stale_before_the_look_after_next() {
        let now = chrono::Utc::now();
        let (fresh, look) = (Duration::from_secs(15), Duration::from_secs(5));
        let ago = |s: i64| now - chrono::Duration::seconds(s);
        let current = |wanted| request_is_current(wanted, "petrel-0", now, fresh, look);
        assert!(!current(None), "no request yet: ask");
        assert!(current(Some(("petrel-0", ago(0)))));
        assert!(current(Some(("petrel-0", ago(5)))), "15 s fresh, 5 s old: still fresh two looks on");
        assert!(!current(Some(("petrel-0", ago(6)))), "would be 16 s old at the look after next");
        assert!(!current(Some(("petrel-1", ago(0)))), "another replica's request is not ours");
        assert!(
            !current(Some(("petrel-0", now + chrono::Duration::seconds(30)))),
            "a time in the future is not trusted"
        );
    }

    proptest! {
        /// Whatever the timing, a request the rule leaves alone is still honoured by
        /// every holder that reads the Lease before the next refresh can land.
        #[test]
        fn a_request_left_alone_stays_fresh_until_the_next_refresh(age in 0u64..100, fresh in 1u64..60, look in 1u64..30) {
            let now = chrono::Utc::now();
            let at = now - chrono::Duration::seconds(age as i64);
            let (fresh, look) = (Duration::from_secs(fresh), Duration::from_secs(look));
            if request_is_current(Some(("petrel-0", at)), "petrel-0", now, fresh, look) {
                let before_refresh = now + chrono::Duration::from_std(look * 2).unwrap();
                prop_assert!(asked_by_another(Some(("petrel-0", at)), "petrel-1", before_refresh, fresh));
            }
        }
    }

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

    #[tokio::test]
    async fn a_newly_held_shard_is_announced_and_a_loss_is_not() {
        use futures::StreamExt;
        let held = HeldShards::new(3);
        let mut acquisitions = Box::pin(held.acquisitions());
        held.set(2, true);
        let announced = tokio::time::timeout(Duration::from_secs(1), acquisitions.next()).await;
        assert_eq!(announced, Ok(Some(())), "an acquisition is announced");
        held.set(2, false);
        held.set(2, false);
        let quiet = tokio::time::timeout(Duration::from_millis(100), acquisitions.next()).await;
        assert!(quiet.is_err(), "a loss triggers nothing");
        held.set(1, true);
        assert_eq!(tokio::time::timeout(Duration::from_secs(1), acquisitions.next()).await, Ok(Some(())));
    }

    #[test]
    fn a_preferred_shard_is_asked_back_and_handed_back_once_only_while_the_request_is_fresh() {
        let now = chrono::Utc::now();
        let fresh = Duration::from_secs(15);
        let asked = |seconds_ago: i64| Some(("petrel-1", now - chrono::Duration::seconds(seconds_ago)));
        let decide = |index, holds, seen, wanted| {
            stewardship(index, Some(0), holds, seen, asked_by_another(wanted, "petrel-0", now, fresh))
        };
        // petrel-0 prefers 0 and holds 1, which petrel-1 prefers.
        assert_eq!(decide(1, true, LeaseSeen::Expired, asked(2)), Stewardship::HandBack);
        assert_eq!(decide(1, true, LeaseSeen::Expired, asked(16)), Stewardship::Keep, "a stale request: a dead asker");
        assert_eq!(decide(1, true, LeaseSeen::Expired, None), Stewardship::Keep);
        let own = Some(("petrel-0", now));
        assert_eq!(decide(1, true, LeaseSeen::Expired, own), Stewardship::Keep, "its own request");
        assert_eq!(decide(1, false, LeaseSeen::Held, None), Stewardship::Drop, "lost the race for shard 1");
        assert_eq!(decide(1, false, LeaseSeen::Expired, None), Stewardship::Keep, "still in the race");
        // Its own shard: asked for while another holds it, kept otherwise, never handed back.
        assert_eq!(decide(0, false, LeaseSeen::Held, None), Stewardship::Ask);
        assert_eq!(decide(0, false, LeaseSeen::Free { since: Duration::ZERO }, None), Stewardship::Keep);
        assert_eq!(decide(0, true, LeaseSeen::Expired, asked(1)), Stewardship::Keep, "a preferred shard stays");
    }

    #[test]
    fn leases_are_held_expired_or_free() {
        let now = chrono::Utc::now();
        let ago = |s: i64| Some(now - chrono::Duration::seconds(s));
        let free = Duration::from_secs(4);
        assert_eq!(lease_seen(Some("b"), ago(3), Some(15), "a", now, free), LeaseSeen::Held);
        assert_eq!(lease_seen(Some("b"), ago(16), Some(15), "a", now, free), LeaseSeen::Expired);
        assert_eq!(lease_seen(Some("b"), None, Some(15), "a", now, free), LeaseSeen::Expired, "no renewal time");
        assert_eq!(lease_seen(Some("a"), ago(1), Some(15), "a", now, free), LeaseSeen::Expired, "an earlier life");
        assert_eq!(lease_seen(None, None, None, "a", now, free), LeaseSeen::Free { since: free });
        assert_eq!(lease_seen(Some(""), ago(1), Some(15), "a", now, free), LeaseSeen::Free { since: free });
    }

    #[test]
    fn the_preferred_shard_at_once_the_others_only_when_nobody_counts_on_them() {
        let grace = Duration::from_secs(15);
        let order = campaign_order(Some(1), 3);
        let seen = |entries: &[(u32, LeaseSeen)]| entries.iter().copied().collect::<BTreeMap<_, _>>();
        let none = BTreeSet::new();
        let young = LeaseSeen::Free { since: Duration::from_secs(2) };
        let old = LeaseSeen::Free { since: grace };
        assert_eq!(shards_to_campaign(&order, Some(1), &none, &seen(&[(0, young), (2, young)]), grace), vec![1]);
        let mine: BTreeSet<u32> = [1].into();
        assert!(
            shards_to_campaign(&order, Some(1), &mine, &seen(&[(0, young), (2, LeaseSeen::Held)]), grace).is_empty()
        );
        assert_eq!(
            shards_to_campaign(
                &order,
                Some(1),
                &mine,
                &seen(&[(0, LeaseSeen::Expired), (2, LeaseSeen::Expired)]),
                grace
            ),
            vec![2],
            "one other shard per look, in campaign order (2 after 1)"
        );
        assert_eq!(
            shards_to_campaign(&order, Some(1), &mine, &seen(&[(0, old), (2, LeaseSeen::Held)]), grace),
            vec![0]
        );
        let order = campaign_order(None, 3);
        assert_eq!(
            shards_to_campaign(&order, None, &none, &seen(&[(0, LeaseSeen::Held), (1, young), (2, young)]), grace),
            vec![1],
            "a replica without preference takes one free shard at once"
        );
        let one: BTreeSet<u32> = [1].into();
        assert!(shards_to_campaign(&order, None, &one, &seen(&[(0, LeaseSeen::Held), (2, young)]), grace).is_empty());
    }

    /// A fleet of replicas looking once per tick: each starts the campaigns
    /// [`shards_to_campaign`] gives, and a campaign takes a Lease that is free or whose
    /// holder is dead (as the lease manager does), first come first served.
    struct Fleet {
        holders: Vec<Option<usize>>,
        alive: Vec<bool>,
        campaigning: Vec<BTreeSet<u32>>,
        free_since: Vec<BTreeMap<u32, u32>>,
        preferred: Vec<Option<u32>>,
    }

    impl Fleet {
        fn new(shards: u32, preferred: Vec<Option<u32>>) -> Fleet {
            let replicas = preferred.len();
            Fleet {
                holders: vec![None; shards as usize],
                alive: vec![false; replicas],
                campaigning: vec![BTreeSet::new(); replicas],
                free_since: vec![BTreeMap::new(); replicas],
                preferred,
            }
        }

        fn tick(&mut self, now: u32, grace: u32, looking: &[usize]) {
            let shards = self.holders.len() as u32;
            for &r in looking.iter().filter(|r| self.alive[**r]) {
                let mut seen = BTreeMap::new();
                for i in 0..shards {
                    let state = match self.holders[i as usize] {
                        Some(h) if h != r && self.alive[h] => {
                            self.free_since[r].remove(&i);
                            LeaseSeen::Held
                        }
                        Some(_) => LeaseSeen::Expired,
                        None => {
                            let since = *self.free_since[r].entry(i).or_insert(now);
                            LeaseSeen::Free { since: Duration::from_secs(u64::from(now - since)) }
                        }
                    };
                    seen.insert(i, state);
                }
                let order = campaign_order(self.preferred[r], shards);
                let start = shards_to_campaign(
                    &order,
                    self.preferred[r],
                    &self.campaigning[r],
                    &seen,
                    Duration::from_secs(u64::from(grace)),
                );
                self.campaigning[r].extend(start);
                for &i in &self.campaigning[r] {
                    let holder = &mut self.holders[i as usize];
                    if holder.is_none_or(|h| !self.alive[h]) {
                        *holder = Some(r);
                    }
                }
            }
        }

        fn held_by(&self, r: usize) -> Vec<u32> {
            (0..self.holders.len() as u32).filter(|i| self.holders[*i as usize] == Some(r)).collect()
        }
    }

    proptest! {
        #[test]
        fn a_fleet_starting_within_the_grace_ends_with_one_shard_each_and_survivors_take_a_dead_ones(
            shards in 2u32..8,
            starts in proptest::collection::vec(0u32..5, 8),
            orders in proptest::collection::vec(proptest::sample::subsequence((0..8usize).collect::<Vec<_>>(), 8).prop_shuffle(), 40),
            dead in 0usize..8,
        ) {
            let grace = 5;
            let n = shards as usize;
            let mut fleet = Fleet::new(shards, (0..shards).map(Some).collect());
            for now in 0..20u32 {
                for (r, start) in starts.iter().enumerate().take(n) {
                    if *start == now {
                        fleet.alive[r] = true;
                    }
                }
                let order: Vec<usize> = orders[now as usize].iter().copied().filter(|r| *r < n).collect();
                fleet.tick(now, grace, &order);
            }
            for r in 0..n {
                prop_assert_eq!(fleet.held_by(r), vec![r as u32], "replica {} after a start within the grace", r);
            }
            // One dies: its shard goes to one survivor at the next look, nobody else moves.
            let dead = dead % n;
            fleet.alive[dead] = false;
            for now in 20..22u32 {
                let order: Vec<usize> = orders[now as usize].iter().copied().filter(|r| *r < n).collect();
                fleet.tick(now, grace, &order);
            }
            let taker = fleet.holders[dead].expect("a dead replica's shard is taken within two looks");
            prop_assert!(taker != dead && fleet.alive[taker]);
            for r in (0..n).filter(|r| *r != dead && *r != taker) {
                prop_assert_eq!(fleet.held_by(r), vec![r as u32]);
            }
        }

        #[test]
        fn replicas_without_preference_spread_over_the_shards(
            shards in 2u32..8,
            orders in proptest::collection::vec(proptest::sample::subsequence((0..8usize).collect::<Vec<_>>(), 8).prop_shuffle(), 30),
        ) {
            let n = shards as usize;
            let mut fleet = Fleet::new(shards, vec![None; n]);
            fleet.alive = vec![true; n];
            for now in 0..30u32 {
                let order: Vec<usize> = orders[now as usize].iter().copied().filter(|r| *r < n).collect();
                fleet.tick(now, 5, &order);
            }
            prop_assert!(fleet.holders.iter().all(Option::is_some), "every shard held: {:?}", fleet.holders);
            let most = (0..n).map(|r| fleet.held_by(r).len()).max().unwrap_or(0);
            prop_assert!(most <= 2, "{:?}", fleet.holders);
        }
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
