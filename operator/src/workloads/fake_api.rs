//! A tiny in-memory Kubernetes API server for testing the I/O layer: objects stored by
//! path; GET, LIST (equality label selectors), POST, PATCH (apply = replace, merge =
//! JSON merge patch) and DELETE; every request recorded in order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// One request the fake served.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Option<Value>,
}

impl Recorded {
    /// `"METHOD path"`, handy for asserting the order of calls.
    pub fn call(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

#[derive(Clone, Default)]
pub struct FakeApi {
    pub objects: Arc<Mutex<BTreeMap<String, Value>>>,
    pub log: Arc<Mutex<Vec<Recorded>>>,
    /// The last resourceVersion given, when writes are given one.
    versions: Option<Arc<AtomicU64>>,
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": if code < 300 { "Success" } else { "Failure" },
        "reason": reason, "message": message, "code": code,
    })
}

/// Whether a path names a collection (`.../namespaces/<ns>/<plural>`) rather than an object.
fn is_collection(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    segments.iter().position(|s| *s == "namespaces").is_some_and(|i| segments.len() == i + 3)
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

fn matches_selector(object: &Value, query: &str) -> bool {
    let selector = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("labelSelector="))
        .map(|s| s.replace("%3D", "=").replace("%2F", "/").replace("%2C", ","));
    let Some(selector) = selector else {
        return true;
    };
    selector.split(',').all(|requirement| match requirement.split_once('=') {
        Some((key, value)) => object["metadata"]["labels"][key] == value,
        None => true,
    })
}

impl FakeApi {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake that gives every object it writes a new resourceVersion (from 100), as an
    /// API server does. The default leaves versions as written.
    pub fn with_resource_versions() -> Self {
        FakeApi { versions: Some(Arc::new(AtomicU64::new(100))), ..Self::default() }
    }

    /// The object written, with a new resourceVersion when this fake gives them.
    fn versioned(&self, mut object: Value) -> Value {
        if let Some(versions) = &self.versions
            && let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut)
        {
            let version = versions.fetch_add(1, Ordering::SeqCst) + 1;
            metadata.insert("resourceVersion".into(), json!(version.to_string()));
        }
        object
    }

    pub fn insert(&self, path: &str, object: Value) {
        self.objects.lock().unwrap().insert(path.to_string(), object);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(path).cloned()
    }

    pub fn calls(&self) -> Vec<String> {
        self.log.lock().unwrap().iter().map(Recorded::call).collect()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    /// Writes only (everything but GET), in order.
    pub fn writes(&self) -> Vec<String> {
        self.calls().into_iter().filter(|c| !c.starts_with("GET ")).collect()
    }

    fn serve(&self, request: &Recorded) -> (u16, Value) {
        let mut objects = self.objects.lock().unwrap();
        let path = request.path.clone();
        match request.method.as_str() {
            "GET" if is_collection(&path) => {
                let prefix = format!("{path}/");
                let items: Vec<Value> = objects
                    .iter()
                    .filter(|(p, o)| p.starts_with(&prefix) && matches_selector(o, &request.query))
                    .map(|(_, o)| o.clone())
                    .collect();
                (200, json!({ "apiVersion": "v1", "kind": "List", "metadata": {}, "items": items }))
            }
            "GET" => match objects.get(&path) {
                Some(object) => (200, object.clone()),
                None => (404, status(404, "NotFound", &format!("{path} not found"))),
            },
            "POST" => {
                let body = request.body.clone().unwrap_or_default();
                let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let object_path = format!("{path}/{name}");
                if objects.contains_key(&object_path) {
                    return (409, status(409, "AlreadyExists", &format!("{object_path} exists")));
                }
                let body = self.versioned(body);
                objects.insert(object_path, body.clone());
                (201, body)
            }
            "PATCH" if request.content_type.contains("apply-patch") => {
                let mut body = request.body.clone().unwrap_or_default();
                // A resourceVersion in the body is a precondition, as on a real API server.
                let wanted = body.pointer("/metadata/resourceVersion").and_then(Value::as_str);
                let current =
                    objects.get(&path).and_then(|o| o.pointer("/metadata/resourceVersion")).and_then(Value::as_str);
                if wanted.is_some() && current.is_some() && wanted != current {
                    return (
                        409,
                        status(
                            409,
                            "Conflict",
                            "the object has been modified; please apply your changes to the latest version and try again",
                        ),
                    );
                }
                // The server keeps what the client does not send: status.
                if let Some(existing_status) = objects.get(&path).and_then(|o| o.get("status")).cloned() {
                    body["status"] = existing_status;
                }
                let body = self.versioned(body);
                objects.insert(path, body.clone());
                (200, body)
            }
            "PATCH" => match objects.get_mut(&path) {
                Some(object) => {
                    merge(object, &request.body.clone().unwrap_or_default());
                    *object = self.versioned(object.clone());
                    (200, object.clone())
                }
                None => (404, status(404, "NotFound", &format!("{path} not found"))),
            },
            "DELETE" => match objects.remove(&path) {
                Some(_) => (200, status(200, "", "deleted")),
                None => (404, status(404, "NotFound", &format!("{path} not found"))),
            },
            other => (405, status(405, "MethodNotAllowed", other)),
        }
    }

    /// A client talking to this fake. Must be used inside a Tokio runtime.
    pub fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let recorded = Recorded {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or_default().to_string(),
                    content_type: parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                    body: serde_json::from_slice(&bytes).ok(),
                };
                let (code, answer) = fake.serve(&recorded);
                fake.log.lock().unwrap().push(recorded);
                let response = Response::builder()
                    .status(code)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap_or_default()))
                    .unwrap();
                send.send_response(response);
            }
        });
        Client::new(service, "default")
    }
}
