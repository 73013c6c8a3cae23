//! Kubernetes Events (`events.k8s.io/v1`) about petrel's objects, with repeats folded
//! into series, and a bounded memory of the Events published recently.
//!
//! kube-runtime's `Recorder` was used before. It keeps every Event it published for six
//! minutes, whole, and sweeps all of them at every publish: a release of 1,000 Canaries
//! publishes about 9,000 Events, and a member held them all. It keys them by the whole
//! object reference, resourceVersion included, and a Canary's resourceVersion changes
//! with every status write, so a repeat after a step was never folded into a series.
//! This recorder keys an Event by the object's identity (namespace, kind, name, uid),
//! its type, reason and note, keeps of it only what a series needs (its name, count and
//! time), and keeps at most [`RECENT_CAPACITY`] (as client-go's event correlator does),
//! each for [`RECENT_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};

/// How many Events are remembered for folding repeats: client-go's event correlator
/// keeps as many.
pub const RECENT_CAPACITY: usize = 4096;

/// How long an Event is remembered after it was last seen: a repeat later than that
/// starts a new Event (kube-runtime's `Recorder` waits as long).
pub const RECENT_TTL: SignedDuration = SignedDuration::from_secs(6 * 60);

/// The longest note an Event carries; the API server refuses more than 1 KiB.
const NOTE_LIMIT: usize = 1000;

/// Publishes Events for one controller (its `reportingController`), one instance.
#[derive(Clone)]
pub struct EventRecorder {
    client: Client,
    controller: String,
    instance: String,
    recent: Arc<Mutex<RecentEvents>>,
}

impl EventRecorder {
    /// `instance` is the `reportingInstance` (the pod's name); the controller's name when
    /// there is none.
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            recent: Arc::new(Mutex::new(RecentEvents::new(RECENT_CAPACITY, RECENT_TTL))),
        }
    }

    /// Publishes an Event about `regarding`: a new one, or the repeat of one published
    /// within [`RECENT_TTL`] (its series count goes up). Cluster-scoped objects' Events go
    /// to the namespace `default`, as kube's and client-go's do.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        reason: &str,
        note: &str,
        warning: bool,
    ) -> Result<(), kube::Error> {
        let note = truncate(note, NOTE_LIMIT);
        let key = EventKey::new(regarding, reason, &note, warning);
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".to_string());
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let now = Timestamp::now();
        let repeat = self.recent().repeat_of(&key, now);
        if let Some(repeat) = repeat {
            let series = serde_json::json!({ "series": {
                "count": repeat.count,
                "lastObservedTime": MicroTime(now),
            }});
            match events.patch(&repeat.name, &PatchParams::default(), &Patch::Merge(&series)).await {
                Ok(_) => {
                    self.recent().remember(key, repeat.name, repeat.count, now);
                    return Ok(());
                }
                // Gone (the API server's event TTL, or deleted): start a new one.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = self.new_event(regarding, reason, note, warning, now);
        let created = events.create(&PostParams::default(), &event).await?;
        let name = created.metadata.name.or(event.metadata.name).unwrap_or_default();
        self.recent().remember(key, name, 1, now);
        Ok(())
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentEvents> {
        // A panic while the lock was held can only have left a half-updated memory of
        // recent Events, whose worst effect is an unfolded repeat: keep going with it.
        self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn new_event(
        &self,
        regarding: &ObjectReference,
        reason: &str,
        note: String,
        warning: bool,
        now: Timestamp,
    ) -> Event {
        let object = regarding.name.as_deref().unwrap_or(&self.controller);
        Event {
            metadata: ObjectMeta {
                name: Some(event_name(object, now)),
                namespace: regarding.namespace.clone(),
                ..ObjectMeta::default()
            },
            action: Some(event_action(reason, &note)),
            reason: Some(reason.to_string()),
            note: Some(note),
            type_: Some(if warning { "Warning" } else { "Normal" }.to_string()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

/// A new Event's name: the object's and the time in nanoseconds (hexadecimal), as
/// client-go names them, the object's part cut so the whole stays a valid name (253).
fn event_name(object: &str, now: Timestamp) -> String {
    let suffix = format!(".{:x}", now.as_nanosecond());
    // Object names are DNS subdomains (ASCII), so any byte is a character boundary; a
    // cut that ends on a dot or dash would still be refused, so those are trimmed.
    let room = 253 - suffix.len();
    let object = object.get(..room.min(object.len())).unwrap_or(object).trim_end_matches(['.', '-']);
    format!("{object}{suffix}")
}

/// The Event's `action` (required, at most 128 characters): the reason and a digest of
/// the note, so `kubectl get events -o wide` tells apart Events that differ only in note.
pub fn event_action(reason: &str, note: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(note.as_bytes());
    let reason: String = reason.chars().take(100).collect();
    format!("{reason}-{}", hex::encode(&digest[..4]))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// What makes two Events the same: the object (its uid too, so a re-created object's
/// Events are its own; not its resourceVersion), the type, reason and note.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EventKey {
    regarding: String,
    reason: String,
    note_digest: [u8; 16],
    warning: bool,
}

impl EventKey {
    fn new(regarding: &ObjectReference, reason: &str, note: &str, warning: bool) -> Self {
        use sha2::Digest as _;
        let field = |f: &Option<String>| f.as_deref().unwrap_or_default().to_string();
        let regarding = format!(
            "{}/{}/{}/{}/{}",
            field(&regarding.api_version),
            field(&regarding.kind),
            field(&regarding.namespace),
            field(&regarding.name),
            field(&regarding.uid)
        );
        let digest = sha2::Sha256::digest(note.as_bytes());
        let mut note_digest = [0; 16];
        note_digest.copy_from_slice(&digest[..16]);
        Self { regarding, reason: reason.to_string(), note_digest, warning }
    }
}

/// An Event published recently: its name, how many times it happened, when last.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    name: String,
    count: i32,
    last: Timestamp,
}

/// The repeat of a recent Event: patch `name`'s series to `count`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Repeat {
    name: String,
    count: i32,
}

/// The Events published recently, at most `capacity`, each until `ttl` after it was
/// last seen. Pure: the time is given.
struct RecentEvents {
    seen: HashMap<EventKey, Seen>,
    capacity: usize,
    ttl: SignedDuration,
}

impl RecentEvents {
    fn new(capacity: usize, ttl: SignedDuration) -> Self {
        Self { seen: HashMap::new(), capacity, ttl }
    }

    /// The Event that one published now under `key` repeats, if any.
    fn repeat_of(&self, key: &EventKey, now: Timestamp) -> Option<Repeat> {
        let seen = self.seen.get(key).filter(|seen| !expired(seen, now, self.ttl))?;
        Some(Repeat { name: seen.name.clone(), count: seen.count.saturating_add(1) })
    }

    /// Records that `name` was written with `count` at `now`. When full, the expired
    /// Events go first, then the one seen longest ago.
    fn remember(&mut self, key: EventKey, name: String, count: i32, now: Timestamp) {
        if !self.seen.contains_key(&key) && self.seen.len() >= self.capacity {
            let ttl = self.ttl;
            self.seen.retain(|_, seen| !expired(seen, now, ttl));
            if self.seen.len() >= self.capacity
                && let Some(oldest) = self.seen.iter().min_by_key(|(_, seen)| seen.last).map(|(key, _)| key.clone())
            {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(key, Seen { name, count, last: now });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }
}

/// Whether `seen` was last seen `ttl` or longer before `now` (never, if the clock went back).
fn expired(seen: &Seen, now: Timestamp, ttl: SignedDuration) -> bool {
    now.duration_since(seen.last) >= ttl
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canary(uid: &str, resource_version: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("petrel.dev/v1".into()),
            kind: Some("Canary".into()),
            namespace: Some("test".into()),
            name: Some("podinfo".into()),
            uid: Some(uid.into()),
            resource_version: Some(resource_version.into()),
            ..ObjectReference::default()
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn a_repeat_is_folded_across_status_writes_and_a_new_note_is_a_new_event() {
        let mut recent = RecentEvents::new(16, RECENT_TTL);
        let waiting = EventKey::new(&canary("u1", "100"), "Waiting", "podinfo is not ready", false);
        assert_eq!(recent.repeat_of(&waiting, at(0)), None);
        recent.remember(waiting, "podinfo.1".into(), 1, at(0));

        // The Canary's status was written in between: another resourceVersion, the same Event.
        let again = EventKey::new(&canary("u1", "101"), "Waiting", "podinfo is not ready", false);
        assert_eq!(recent.repeat_of(&again, at(10)), Some(Repeat { name: "podinfo.1".into(), count: 2 }));
        recent.remember(again.clone(), "podinfo.1".into(), 2, at(10));
        assert_eq!(recent.repeat_of(&again, at(20)), Some(Repeat { name: "podinfo.1".into(), count: 3 }));

        // Another note, type or object (a re-created Canary has another uid) is another Event.
        for other in [
            EventKey::new(&canary("u1", "101"), "Waiting", "podinfo-primary is not ready", false),
            EventKey::new(&canary("u1", "101"), "Waiting", "podinfo is not ready", true),
            EventKey::new(&canary("u2", "7"), "Waiting", "podinfo is not ready", false),
        ] {
            assert_eq!(recent.repeat_of(&other, at(20)), None, "{other:?}");
        }
    }

    #[test]
    fn a_repeat_after_the_ttl_is_a_new_event() {
        let mut recent = RecentEvents::new(16, RECENT_TTL);
        let key = EventKey::new(&canary("u1", "1"), "Waiting", "not ready", false);
        recent.remember(key.clone(), "podinfo.1".into(), 4, at(0));
        assert!(recent.repeat_of(&key, at(359)).is_some());
        assert_eq!(recent.repeat_of(&key, at(360)), None);
    }

    #[test]
    fn when_full_the_expired_go_first_then_the_oldest() {
        let mut recent = RecentEvents::new(3, SignedDuration::from_secs(100));
        let key = |n: usize| EventKey::new(&canary("u1", "1"), "Step", &format!("weight {n}"), false);
        recent.remember(key(0), "e0".into(), 1, at(0));
        recent.remember(key(1), "e1".into(), 1, at(150));
        recent.remember(key(2), "e2".into(), 1, at(160));
        // e0 expired at 100: it goes, the others stay.
        recent.remember(key(3), "e3".into(), 1, at(170));
        assert_eq!(recent.len(), 3);
        assert!(recent.repeat_of(&key(1), at(171)).is_some());
        // None expired: the one seen longest ago (e1) goes.
        recent.remember(key(4), "e4".into(), 1, at(180));
        assert_eq!(recent.len(), 3);
        assert_eq!(recent.repeat_of(&key(1), at(181)), None);
        assert!(recent.repeat_of(&key(2), at(181)).is_some());
        // A repeat of a remembered one evicts nothing.
        recent.remember(key(2), "e2".into(), 2, at(190));
        assert_eq!(recent.len(), 3);
    }

    #[test]
    fn an_event_name_is_valid_for_any_object_name() {
        assert_eq!(event_name("podinfo", at(0)), format!("podinfo.{:x}", at(0).as_nanosecond()));
        let long = format!("{}.{}", "a".repeat(235), "b".repeat(17));
        let name = event_name(&long, at(0));
        assert!(name.len() <= 253, "{}", name.len());
        assert!(!name.contains("..") && !name.contains("-."), "{name}");
    }

    #[test]
    fn the_action_names_the_reason_and_the_note() {
        let weight_10 = event_action("WeightIncreased", "Canary weight 0 → 10 (max 50)");
        assert_eq!(weight_10, event_action("WeightIncreased", "Canary weight 0 → 10 (max 50)"));
        assert_ne!(weight_10, event_action("WeightIncreased", "Canary weight 10 → 20 (max 50)"));
        assert!(weight_10.starts_with("WeightIncreased-") && weight_10.len() <= 128, "{weight_10}");
        assert!(event_action(&"x".repeat(500), "").len() <= 128);
    }

    #[test]
    fn a_long_note_is_cut_at_a_character_boundary() {
        let note = "é".repeat(NOTE_LIMIT);
        let cut = truncate(&note, NOTE_LIMIT);
        assert!(cut.len() <= NOTE_LIMIT + '…'.len_utf8(), "{}", cut.len());
        assert!(cut.ends_with('…'));
    }

    proptest! {
        /// Whatever is published, and when, at most `capacity` Events are remembered, and
        /// the one just remembered is always found again at once.
        #[test]
        fn the_memory_is_bounded(steps in proptest::collection::vec((0usize..40, 0i64..50), 1..300)) {
            let mut recent = RecentEvents::new(8, SignedDuration::from_secs(60));
            let mut now = 0;
            for (note, advance) in steps {
                now += advance;
                let key = EventKey::new(&canary("u1", "1"), "Step", &format!("note {note}"), false);
                let count = recent.repeat_of(&key, at(now)).map_or(1, |r| r.count);
                recent.remember(key.clone(), format!("e{note}"), count, at(now));
                prop_assert!(recent.len() <= 8);
                prop_assert_eq!(recent.repeat_of(&key, at(now)).map(|r| r.count), Some(count + 1));
            }
        }
    }
}
