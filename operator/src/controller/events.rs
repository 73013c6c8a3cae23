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
            action: reason.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &canary.object_ref(&())).await {
            warn!(canary = %canary_name(canary), reason, error = %e, "could not record event");
        }
    }
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
