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

    /// Records an Event. Failing to record one is logged, never fatal: events report a
    /// release, they do not drive it.
    pub async fn publish(&self, canary: &Canary, reason: &str, message: &str, warning: bool) {
        if warning {
            warn!(canary = %canary_name(canary), reason, message, "event");
        } else {
            info!(canary = %canary_name(canary), reason, message, "event");
        }
        if let Err(e) = self.recorder.publish(&canary.object_ref(&()), reason, message, warning).await {
            warn!(canary = %canary_name(canary), reason, error = %e, "could not record event");
        }
    }
}

fn canary_name(canary: &Canary) -> String {
    format!("{}/{}", canary.meta().namespace.as_deref().unwrap_or(""), canary.meta().name.as_deref().unwrap_or(""))
}
