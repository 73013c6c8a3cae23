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
//!
//! The Canary controller's Events are queued and published by background tasks, not by
//! the reconcile that decided them (client-go's broadcaster does the same, with one
//! writer; the hub, with a few Events per Rollout decision, writes them at once with
//! [`EventRecorder::write_now`]): when 1,000 Canaries detect a release at once, their
//! 1,000 `NewRevision` Events were a third of petrel's writes while the API server was
//! answering the scale-ups and status writes that detection waits for (issue 15,
//! docs/benchmarks.md: detection p50 3.28 → 1.97 s with them queued). [`PUBLISHERS`]
//! lanes write them, one at a time each, so Events trail the writes that drive a release
//! instead of competing with them; an object's Events always take the same lane, so
//! they are written in the order they happened and a repeat finds the Event it repeats. The
//! queues hold at most [`QUEUE_CAPACITY`] in all; one queued beyond is dropped and logged
//! (client-go drops too), never waited for. The time of an Event is when it was queued,
//! so a late write still tells when it happened.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tracing::warn;

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

/// Events waiting to be published at most; one queued beyond is dropped. A release of
/// 1,000 Canaries queues about 1,000 at a time.
pub const QUEUE_CAPACITY: usize = 4096;

/// Events written to the API server at once: one per lane.
pub const PUBLISHERS: usize = 8;

/// Events one lane holds waiting.
const LANE_CAPACITY: usize = QUEUE_CAPACITY / PUBLISHERS;

/// How long a stopping controller waits for its queued Events to be published, within
/// the shutdown grace (`--shutdown-grace-seconds`, 5 s by default).
pub const DRAIN_ON_SHUTDOWN: Duration = Duration::from_secs(2);

/// Publishes Events for one controller (its `reportingController`), one instance.
/// Cheap to clone; clones share the queue.
#[derive(Clone)]
pub struct EventRecorder {
    writer: Arc<EventWriter>,
    /// The lanes' queues, started by the first Event on the runtime that queued it.
    lanes: Arc<OnceLock<Vec<mpsc::Sender<Pending>>>>,
    outstanding: Arc<Outstanding>,
}

/// What writes Events: the client, the names it reports, and the recent Events.
struct EventWriter {
    client: Client,
    controller: String,
    instance: String,
    recent: Mutex<RecentEvents>,
}

/// An Event queued, with the time it happened.
struct Pending {
    regarding: ObjectReference,
    reason: String,
    note: String,
    warning: bool,
    at: Timestamp,
}

impl Pending {
    fn now(regarding: &ObjectReference, reason: &str, note: &str, warning: bool) -> Self {
        Pending {
            regarding: regarding.clone(),
            reason: reason.to_string(),
            note: truncate(note, NOTE_LIMIT),
            warning,
            at: Timestamp::now(),
        }
    }
}

/// Events queued or being written, and those dropped.
#[derive(Default)]
struct Outstanding {
    count: AtomicUsize,
    drained: Notify,
    dropped: AtomicU64,
}

impl Outstanding {
    fn done(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
    }
}

impl EventRecorder {
    /// `instance` is the `reportingInstance` (the pod's name); the controller's name when
    /// there is none.
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        let writer = EventWriter {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            recent: Mutex::new(RecentEvents::new(RECENT_CAPACITY, RECENT_TTL)),
        };
        Self { writer: Arc::new(writer), lanes: Arc::default(), outstanding: Arc::default() }
    }

    /// Queues an Event about `regarding`, published soon: a new one, or the repeat of one
    /// published within [`RECENT_TTL`] (its series count goes up). Cluster-scoped
    /// objects' Events go to the namespace `default`, as kube's and client-go's do.
    /// Returns whether it was queued: not when its lane is full or there is no Tokio
    /// runtime to publish from (both logged).
    pub fn publish(&self, regarding: &ObjectReference, reason: &str, note: &str, warning: bool) -> bool {
        let pending = Pending::now(regarding, reason, note, warning);
        let Some(lanes) = self.lanes() else {
            warn!(reason, "Event not recorded: no runtime to publish it from");
            return false;
        };
        let lane = &lanes[lane_of(regarding)];
        self.outstanding.count.fetch_add(1, Ordering::AcqRel);
        if lane.try_send(pending).is_ok() {
            return true;
        }
        self.outstanding.done();
        let dropped = self.outstanding.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // One line for the first and then for every thousandth: an API server too slow
        // for Events must not also flood the log.
        if dropped == 1 || dropped.is_multiple_of(1000) {
            warn!(reason, dropped, capacity = LANE_CAPACITY, "Event dropped: its lane of Events to publish is full");
        }
        false
    }

    /// Writes an Event now, without the queue, for a controller whose Events are few and
    /// must be written before it goes on (the hub's, one per Rollout decision); repeats
    /// fold as for queued ones.
    pub async fn write_now(
        &self,
        regarding: &ObjectReference,
        reason: &str,
        note: &str,
        warning: bool,
    ) -> Result<(), kube::Error> {
        self.writer.write(Pending::now(regarding, reason, note, warning)).await
    }

    /// Events dropped so far because their lane was full.
    pub fn dropped(&self) -> u64 {
        self.outstanding.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every queued Event is published (or failed), at most `within`; for a
    /// shutdown. Returns whether none is left.
    pub async fn drain(&self, within: Duration) -> bool {
        let drained = async {
            loop {
                let notified = self.outstanding.drained.notified();
                if self.outstanding.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(within, drained).await.is_ok()
    }

    /// The lanes, their publishers started on the current runtime the first time.
    fn lanes(&self) -> Option<&[mpsc::Sender<Pending>]> {
        if let Some(lanes) = self.lanes.get() {
            return Some(lanes);
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        Some(self.lanes.get_or_init(|| {
            (0..PUBLISHERS)
                .map(|_| {
                    let (lane, queued) = mpsc::channel(LANE_CAPACITY);
                    runtime.spawn(publish_lane(self.writer.clone(), self.outstanding.clone(), queued));
                    lane
                })
                .collect()
        }))
    }
}

/// The lane of an object's Events: the same for every Event of that object.
fn lane_of(regarding: &ObjectReference) -> usize {
    let mut hasher = std::hash::DefaultHasher::new();
    (&regarding.kind, &regarding.namespace, &regarding.name).hash(&mut hasher);
    // The remainder is below PUBLISHERS, so it fits a usize.
    (hasher.finish() % PUBLISHERS as u64) as usize
}

/// Writes a lane's Events one after the other, until every recorder is dropped.
async fn publish_lane(writer: Arc<EventWriter>, outstanding: Arc<Outstanding>, mut lane: mpsc::Receiver<Pending>) {
    while let Some(pending) = lane.recv().await {
        let (kind, name) =
            (pending.regarding.kind.clone().unwrap_or_default(), pending.regarding.name.clone().unwrap_or_default());
        if let Err(e) = writer.write(pending).await {
            warn!(kind, name, error = %e, "could not record event");
        }
        outstanding.done();
    }
}

impl EventWriter {
    async fn write(&self, pending: Pending) -> Result<(), kube::Error> {
        let Pending { regarding, reason, note, warning, at } = pending;
        let key = EventKey::new(&regarding, &reason, &note, warning);
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".to_string());
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let repeat = self.recent().repeat_of(&key, at);
        if let Some(repeat) = repeat {
            let series = serde_json::json!({ "series": {
                "count": repeat.count,
                "lastObservedTime": MicroTime(at),
            }});
            match events.patch(&repeat.name, &PatchParams::default(), &Patch::Merge(&series)).await {
                Ok(_) => {
                    self.recent().remember(key, repeat.name, repeat.count, at);
                    return Ok(());
                }
                // Gone (the API server's event TTL, or deleted): start a new one.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = self.new_event(&regarding, &reason, note, warning, at);
        let created = events.create(&PostParams::default(), &event).await?;
        let name = created.metadata.name.or(event.metadata.name).unwrap_or_default();
        self.recent().remember(key, name, 1, at);
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

    type ApiHandle = tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<kube::client::Body>>;
    type Answer = tower_test::mock::SendResponse<http::Response<kube::client::Body>>;

    /// A recorder whose Events go to a mock API server, and the mock's handle.
    fn recorder_on_mock() -> (EventRecorder, ApiHandle) {
        let (service, handle) = tower_test::mock::pair();
        (EventRecorder::new(Client::new(service, "default"), "petrel", None), handle)
    }

    /// The Event a create sends; answered with itself, as the API server does.
    async fn sent_event(request: http::Request<kube::client::Body>) -> Event {
        assert_eq!(request.method(), http::Method::POST, "{}", request.uri());
        let body = request.into_body().collect_bytes().await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    fn answer(send: Answer, event: &Event) {
        let body = serde_json::to_vec(event).unwrap();
        send.send_response(http::Response::builder().status(201).body(kube::client::Body::from(body)).unwrap());
    }

    /// Whether the mock receives another request within a short wait.
    async fn another_request(api: &mut ApiHandle) -> bool {
        tokio::time::timeout(Duration::from_millis(300), api.next_request()).await.is_ok()
    }

    /// Objects named `app-0`, `app-1`, ... whose Events take the lane of `lane`.
    fn objects_in_lane(lane: usize) -> impl Iterator<Item = ObjectReference> {
        (0..).map(|i| named(&format!("app-{i}"))).filter(move |object| lane_of(object) == lane)
    }

    fn named(name: &str) -> ObjectReference {
        ObjectReference { name: Some(name.into()), uid: Some(format!("uid-{name}")), ..canary("", "1") }
    }

    #[tokio::test]
    async fn events_are_queued_and_written_one_per_lane_at_a_time() {
        let (recorder, mut api) = recorder_on_mock();
        let objects: Vec<_> = (0..PUBLISHERS).flat_map(|lane| objects_in_lane(lane).take(3)).collect();
        for object in &objects {
            assert!(recorder.publish(object, "NewRevision", "New revision detected", false), "queued at once");
        }
        let mut writing = Vec::new();
        for _ in 0..PUBLISHERS {
            writing.push(api.next_request().await.unwrap());
        }
        assert!(!another_request(&mut api).await, "no more than {PUBLISHERS} written at once");
        assert!(!recorder.drain(Duration::from_millis(50)).await, "{} Events are outstanding", objects.len());
        let mut written = Vec::new();
        for (request, send) in writing {
            let event = sent_event(request).await;
            answer(send, &event);
            written.push(event);
        }
        while written.len() < objects.len() {
            let (request, send) = api.next_request().await.unwrap();
            let event = sent_event(request).await;
            answer(send, &event);
            written.push(event);
        }
        assert!(recorder.drain(Duration::from_secs(5)).await, "every Event written");
        assert!(!another_request(&mut api).await, "each Event written once");
        let mut names: Vec<_> = written.iter().map(|e| e.regarding.as_ref().unwrap().name.clone().unwrap()).collect();
        let mut expected: Vec<_> = objects.iter().map(|o| o.name.clone().unwrap()).collect();
        names.sort();
        expected.sort();
        assert_eq!(names, expected);
        assert_eq!(recorder.dropped(), 0);
    }

    #[tokio::test]
    async fn an_objects_events_are_written_in_order_and_a_late_one_keeps_its_time() {
        let (recorder, mut api) = recorder_on_mock();
        let podinfo = named("podinfo");
        recorder.publish(&podinfo, "NewRevision", "first", false);
        let (first, answer_first) = api.next_request().await.unwrap();
        let queued = Timestamp::now();
        recorder.publish(&podinfo, "Promoted", "second", false);
        assert!(!another_request(&mut api).await, "the second waits for the first");
        answer(answer_first, &sent_event(first).await);
        let (second, answer_second) = api.next_request().await.unwrap();
        let second = sent_event(second).await;
        answer(answer_second, &second);
        assert_eq!(second.note.as_deref(), Some("second"));
        let time = second.event_time.unwrap().0;
        assert!(
            time.duration_since(queued) < SignedDuration::from_millis(200),
            "{time} is when it was written, not when it was queued ({queued})"
        );
    }

    #[tokio::test]
    async fn a_full_lane_drops_an_event_without_waiting() {
        let (recorder, mut api) = recorder_on_mock();
        let podinfo = named("podinfo");
        recorder.publish(&podinfo, "NewRevision", "being written", false);
        let _writing = api.next_request().await.unwrap();
        for i in 0..LANE_CAPACITY {
            assert!(recorder.publish(&podinfo, "Waiting", &format!("queued {i}"), false));
        }
        assert!(!recorder.publish(&podinfo, "Waiting", "one too many", false));
        assert_eq!(recorder.dropped(), 1);
        let other_lane = objects_in_lane((lane_of(&podinfo) + 1) % PUBLISHERS).next().unwrap();
        assert!(recorder.publish(&other_lane, "NewRevision", "another lane", false), "other lanes still take Events");
    }

    #[test]
    fn without_a_runtime_an_event_is_not_queued() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (recorder, _api) = {
            let _inside = runtime.enter();
            recorder_on_mock()
        };
        assert!(!recorder.publish(&canary("uid", "1"), "NewRevision", "note", false));
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
