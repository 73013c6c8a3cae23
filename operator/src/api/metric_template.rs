//! `MetricTemplate`: a reusable query and the backend that answers it.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, SecretRef, is_false};

/// A query template and its metric backend. Queries may use the variables
/// `{{ name }}`, `{{ namespace }}`, `{{ target }}`, `{{ service }}`, `{{ ingress }}`,
/// `{{ interval }}` and `{{ variables.<key> }}` (from the Canary metric's `templateVariables`).
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "petrel.dev",
    version = "v1alpha1",
    kind = "MetricTemplate",
    namespaced,
    status = "MetricTemplateStatus",
    shortname = "mt",
    category = "petrel",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider.type"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MetricTemplateSpec {
    pub provider: MetricProviderSpec,
    /// The query, with template variables.
    #[schemars(length(min = 1))]
    pub query: String,
}

/// Where a metric comes from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricProviderSpec {
    /// Backend type.
    #[serde(rename = "type")]
    #[schemars(schema_with = "metric_provider_type_schema")]
    pub type_: String,
    /// Base URL of the backend, for example `http://prometheus.monitoring:9090`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Secret with credentials: `token` (bearer), or `username` and `password` (basic);
    /// an `address` key overrides the address above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Extra HTTP headers sent with each query.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Vec<String>>,
    /// Cloud region (CloudWatch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure_skip_verify: bool,
}

/// Metric backend types the API accepts. Only some are implemented; the others are
/// reported as a failed check with a clear reason, never skipped.
pub const METRIC_PROVIDER_TYPES: &[&str] = &[
    "prometheus",
    "datadog",
    "newrelic",
    "graphite",
    "influxdb",
    "cloudwatch",
    "stackdriver",
    "dynatrace",
    "splunk",
    "keptn",
    "externalmetrics",
    "http",
];

fn metric_provider_type_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": METRIC_PROVIDER_TYPES,
        "description": "Metric backend type."
    })
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricTemplateStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
