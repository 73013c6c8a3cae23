//! Kubernetes Events for Canaries.

use kube::Resource;
use tracing::{info, warn};

use crate::api::Canary;
use crate::events::EventRecorder;

/// Publishes Events about Canaries; one recorder is shared so repeats fold into series.
#[derive(Clone)]
pub struct EventSink {
    recorder: EventRecorder,
}

impl EventSink {
    pub fn new(client: kube::Client, instance: Option<String>) -> Self {
        Self { recorder: EventRecorder::new(client, "petrel", instance) }
    }

    /// Records an Event: logged now, published soon (see [`crate::events`]). Failing to
    /// record one is logged, never fatal: events report a release, they do not drive it.
    pub fn publish(&self, canary: &Canary, reason: &str, message: &str, warning: bool) {
        if warning {
            warn!(canary = %canary_name(canary), reason, message, "event");
        } else {
            info!(canary = %canary_name(canary), reason, message, "event");
        }
        self.recorder.publish(&canary.object_ref(&()), reason, message, warning);
    }

    /// Waits for the queued Events to be published, at most `within` (for a shutdown).
    pub async fn drain(&self, within: std::time::Duration) -> bool {
        self.recorder.drain(within).await
    }
}

fn canary_name(canary: &Canary) -> String {
    format!("{}/{}", canary.meta().namespace.as_deref().unwrap_or(""), canary.meta().name.as_deref().unwrap_or(""))
}
