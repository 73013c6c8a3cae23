//! The route objects petrel reads its weights back from (`reconcile` keeps them): for every
//! provider, the object built for some weights reads back as those weights, and the same
//! object edited anywhere by the fuzzer (a field removed or replaced: what another
//! controller or a person may do to it) reads back as some weights or as an error,
//! never a panic.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use libfuzzer_sys::fuzz_target;
use petrel::api::Canary;
use petrel::routers::services::{PodSelector, TargetPods};
use petrel::routers::{Weights, contour, gatewayapi, istio, kubernetes, nginx, smi, traefik};
use serde_json::{Value, json};

#[derive(Arbitrary, Debug)]
struct Input {
    provider: u8,
    canary_weight: u8,
    ab: bool,
    edits: Vec<Edit>,
}

#[derive(Arbitrary, Debug)]
enum Edit {
    /// Replaces the value the path leads to.
    Set { path: Vec<u8>, value: Leaf },
    /// Removes the field or element the path leads to.
    Remove { path: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
enum Leaf {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    EmptyList,
    EmptyObject,
}

impl Leaf {
    fn json(&self) -> Value {
        match self {
            Leaf::Null => Value::Null,
            Leaf::Bool(b) => json!(b),
            Leaf::Int(i) => json!(i),
            Leaf::Float(f) => json!(f),
            Leaf::Text(s) => json!(s),
            Leaf::EmptyList => json!([]),
            Leaf::EmptyObject => json!({}),
        }
    }
}

/// Follows `path` (each byte picks a child, modulo their number) and applies the edit to
/// the last node reached.
fn apply(root: &mut Value, edit: &Edit) {
    let (path, set) = match edit {
        Edit::Set { path, value } => (path, Some(value.json())),
        Edit::Remove { path } => (path, None),
    };
    let mut node = root;
    for (depth, step) in path.iter().enumerate() {
        let last = depth + 1 == path.len();
        let children = match node {
            Value::Object(map) => map.len(),
            Value::Array(items) => items.len(),
            _ => 0,
        };
        if children == 0 {
            break;
        }
        let index = usize::from(*step) % children;
        if last && set.is_none() {
            match node {
                Value::Object(map) => {
                    let key = map.keys().nth(index).cloned().unwrap_or_default();
                    map.remove(&key);
                }
                Value::Array(items) => {
                    items.remove(index);
                }
                _ => {}
            }
            return;
        }
        node = match node {
            Value::Object(map) => map.values_mut().nth(index).unwrap(),
            Value::Array(items) => &mut items[index],
            _ => unreachable!("children > 0"),
        };
    }
    if let Some(value) = set {
        *node = value;
    }
}

fn canary(ab: bool) -> Canary {
    let mut analysis = json!({"interval": "1m", "stepWeight": 10, "maxWeight": 50});
    if ab {
        analysis["iterations"] = json!(10);
        analysis["match"] = json!([{"headers": {"x-canary": {"exact": "insider"}}}]);
    }
    serde_json::from_value(json!({
        "apiVersion": "petrel.dev/v1alpha1",
        "kind": "Canary",
        "metadata": {"name": "podinfo", "namespace": "test", "uid": "2f9a6b0e-1c55-4c77-9d1e-6f0f2a8f3b10"},
        "spec": {
            "provider": "istio",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
            "ingressRef": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": "podinfo"},
            "service": {
                "port": 9898,
                "hosts": ["app.example.com"],
                "gateways": ["public-gateway"],
                "gatewayRefs": [{"name": "public", "namespace": "gateways"}],
            },
            "analysis": analysis,
        }
    }))
    .expect("the fuzz Canary is valid")
}

fn user_ingress() -> Ingress {
    serde_json::from_value(json!({
        "metadata": {"name": "podinfo", "namespace": "test"},
        "spec": {"rules": [{"host": "app.example.com", "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "podinfo", "port": {"number": 9898}}},
        }]}}]},
    }))
    .expect("the fuzz Ingress is valid")
}

type Read = Box<dyn Fn(&Value) -> Option<Result<Weights, String>>>;

/// The object built for `weights` and how to read weights back from a JSON version of it.
fn built(provider: u8, canary: &Canary, weights: Weights) -> Option<(Value, Read)> {
    let plain = |f: fn(&Value) -> Result<Weights, petrel::routers::RouterError>| -> Read {
        Box::new(move |object| Some(f(object).map_err(|e| e.to_string())))
    };
    let object = match provider % 7 {
        0 => (gatewayapi::build_http_route(canary, weights).ok()?, plain(gatewayapi::weights_of)),
        1 => (istio::build_virtual_service(canary, weights).ok()?, plain(istio::weights_of)),
        2 => (smi::build_traffic_split(canary, weights).ok()?, plain(smi::weights_of)),
        3 => (traefik::build_traefik_service(canary, weights).ok()?, plain(traefik::weights_of)),
        4 => (contour::build_http_proxy(canary, weights).ok()?, plain(contour::weights_of)),
        5 => {
            let ingress = nginx::build_canary_ingress(canary, &user_ingress(), weights).ok()?;
            let read: Read = Box::new(|object| {
                let ingress: Ingress = serde_json::from_value(object.clone()).ok()?;
                Some(nginx::weights_of(&ingress).map_err(|e| e.to_string()))
            });
            (serde_json::to_value(ingress).ok()?, read)
        }
        _ => {
            let labels = BTreeMap::from([("app".to_string(), "podinfo".to_string())]);
            let selector = PodSelector::from_match_labels("podinfo", &labels).ok()?;
            let pods = TargetPods { selector: selector.clone(), discovered_ports: Vec::new() };
            let apex = kubernetes::build_apex(canary, &pods, weights).ok()?;
            let read: Read = Box::new(move |object| {
                let service: Service = serde_json::from_value(object.clone()).ok()?;
                Some(kubernetes::weights_of(&service, &selector).map_err(|e| e.to_string()))
            });
            (serde_json::to_value(apex).ok()?, read)
        }
    };
    Some(object)
}

fuzz_target!(|input: Input| {
    let canary_weight = input.canary_weight % 101;
    let Ok(weights) = Weights::new(100 - canary_weight, canary_weight, false) else { return };
    let canary = canary(input.ab);
    // Builders refuse what their provider cannot do (a split for plain Services, A/B for
    // some): nothing to read back then.
    let Some((mut object, read)) = built(input.provider, &canary, weights) else { return };
    if !input.ab {
        assert_eq!(read(&object), Some(Ok(weights)), "provider {}: {object}", input.provider % 7);
    }
    for edit in &input.edits {
        apply(&mut object, edit);
        if let Some(Ok(read_back)) = read(&object) {
            assert_eq!(
                u16::from(read_back.primary()) + u16::from(read_back.canary()),
                100,
                "weights read back from an edited object must add up to 100"
            );
        }
    }
});
