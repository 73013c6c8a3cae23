//! Kubernetes Events for Canaries.

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tracing::{info, warn};

use crate::api::Canary;

/// Publishes Events about Canaries; one recorder is shared so the API server can
/// aggregate repeated events into series.
#[derive(Clone)]
pub struct EventSink {
    recorder: Recorder,
}

impl EventSink {
    pub fn new(client: kube::Client, instance: Option<String>) -> Self {
        let reporter = Reporter { controller: "petrel".into(), instance };
        Self { recorder: Recorder::new(client, reporter) }
    }

    /// Records an Event. Failing to record one is logged, never fatal: events report a
    /// release, they do not drive it.
    pub async fn publish(&self, canary: &Canary, reason: &str, message: &str, warning: bool) {
        if warning {
            warn!(canary = %canary_name(canary), reason, message, "event");
        } else {
            info!(canary = %canary_name(canary), reason, message, "event");
        }
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_string(),
            note: Some(truncate(message, 1000)),
            action: event_action(reason, message),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &canary.object_ref(&())).await {
            warn!(canary = %canary_name(canary), reason, error = %e, "could not record event");
        }
    }
}

/// The Event's `action`. kube's `Recorder` folds Events with the same type, reason and
/// action into one series that keeps the *first* note, so with `action = reason` every
/// "WeightIncreased" read "weight 0 → 10" and a new release's "NewRevision" named the
/// previous revision. A digest of the note in the action folds only true repeats.
fn event_action(reason: &str, note: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(note.as_bytes());
    format!("{reason}-{}", hex::encode(&digest[..4]))
}

fn canary_name(canary: &Canary) -> String {
    format!("{}/{}", canary.meta().namespace.as_deref().unwrap_or(""), canary.meta().name.as_deref().unwrap_or(""))
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

#[cfg(test)]
mod tests {
    use super::event_action;

    #[test]
    fn only_events_with_the_same_note_share_an_action() {
        let weight_10 = event_action("WeightIncreased", "Canary weight 0 → 10 (max 50)");
        assert_eq!(weight_10, event_action("WeightIncreased", "Canary weight 0 → 10 (max 50)"));
        assert_ne!(weight_10, event_action("WeightIncreased", "Canary weight 10 → 20 (max 50)"));
        assert!(weight_10.starts_with("WeightIncreased-") && weight_10.len() <= 128, "{weight_10}");
    }
}
