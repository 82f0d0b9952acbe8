//! A scripted Kubernetes API server for the controller tests: real Kubernetes JSON over HTTP
//! (list, watch with resourceVersions and bookmarks, get, create, replace, merge and apply
//! patches, status subresources, delete), an in-memory store, a request log, and faults
//! (410 Gone on the next watches, dropped watch streams, compaction).
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

type Body = BoxBody<Bytes, Infallible>;

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Which listener (client) sent it.
    pub listener: usize,
    pub content_type: String,
}

#[derive(Clone, Debug)]
struct Ev {
    rv: u64,
    res: String,
    ns: String,
    ty: &'static str,
    obj: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<(String, String, String), Value>,
    log: Vec<Ev>,
    compacted: u64,
    requests: Vec<Logged>,
    gone_next_watches: usize,
    uid: u64,
}

/// The scripted API server.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Ev>,
    drop_watches: watch::Sender<u64>,
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
}

/// `group/plural` and whether namespaced, for an apiVersion and kind.
pub fn resource_of(api_version: &str, kind: &str) -> (String, bool) {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let (plural, namespaced) = match kind {
        "GatewayClass" => ("gatewayclasses", false),
        "IngressClass" => ("ingressclasses", false),
        "Namespace" => ("namespaces", false),
        "Gateway" => ("gateways", true),
        "ListenerSet" => ("listenersets", true),
        "HTTPRoute" => ("httproutes", true),
        "GRPCRoute" => ("grpcroutes", true),
        "TLSRoute" => ("tlsroutes", true),
        "TCPRoute" => ("tcproutes", true),
        "UDPRoute" => ("udproutes", true),
        "ReferenceGrant" => ("referencegrants", true),
        "BackendTLSPolicy" => ("backendtlspolicies", true),
        "Ingress" => ("ingresses", true),
        "Service" => ("services", true),
        "EndpointSlice" => ("endpointslices", true),
        "Secret" => ("secrets", true),
        "ConfigMap" => ("configmaps", true),
        "Deployment" => ("deployments", true),
        "Lease" => ("leases", true),
        other => panic!("fake API server: unknown kind {other}"),
    };
    (format!("{group}/{plural}"), namespaced)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn matches_labels(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        let v = v.trim_start_matches('=');
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn matches_fields(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        let v = v.trim_start_matches('=');
        let got = match k {
            "metadata.name" => obj["metadata"]["name"].as_str(),
            "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
            "type" => obj["type"].as_str(),
            _ => None,
        };
        got == Some(v)
    })
}

fn query_map(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(x) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(x);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

/// Parsed request path.
struct Target {
    res: String,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g, _v, rest @ ..] => (*g, rest),
        _ => return None,
    };
    let t = |plural: &str, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
        res: format!("{group}/{plural}"),
        ns: ns.map(str::to_string),
        name: name.map(str::to_string),
        sub: sub.map(str::to_string),
    };
    Some(match rest {
        ["namespaces"] => t("namespaces", None, None, None),
        ["namespaces", name] => t("namespaces", None, Some(name), None),
        ["namespaces", ns, plural] => t(plural, Some(ns), None, None),
        ["namespaces", ns, plural, name] => t(plural, Some(ns), Some(name), None),
        ["namespaces", ns, plural, name, sub] => t(plural, Some(ns), Some(name), Some(sub)),
        [plural] => t(plural, None, None, None),
        [plural, name] => t(plural, None, Some(name), None),
        [plural, name, sub] => t(plural, None, Some(name), Some(sub)),
        _ => return None,
    })
}

fn full(code: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(v).unwrap())).boxed())
        .unwrap()
}

fn err(code: u16, reason: &str, message: &str) -> Response<Body> {
    full(
        StatusCode::from_u16(code).unwrap(),
        &status(code, reason, message),
    )
}

impl FakeApi {
    /// Starts the server with `listeners` listening sockets on 127.0.0.1 (one per client that
    /// must be told apart in the request log).
    pub async fn start(listeners: usize) -> FakeApi {
        let fake = FakeApi {
            state: Arc::new(Mutex::new(State {
                rv: 100,
                ..Default::default()
            })),
            events: broadcast::channel(4096).0,
            drop_watches: watch::channel(0).0,
            addrs: Arc::new(Mutex::new(Vec::new())),
        };
        for i in 0..listeners.max(1) {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            fake.addrs.lock().unwrap().push(l.local_addr().unwrap());
            let f = fake.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((s, _)) = l.accept().await else { return };
                    let f = f.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let f = f.clone();
                            async move { Ok::<_, Infallible>(f.handle(req, i).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                            .await;
                    });
                }
            });
        }
        fake
    }

    /// A kube client for listener `i`.
    pub fn client(&self, i: usize) -> kube::Client {
        let addr = self.addrs.lock().unwrap()[i];
        let mut cfg = kube::Config::new(format!("http://{addr}").parse().unwrap());
        cfg.default_namespace = "default".into();
        cfg.read_timeout = Some(Duration::from_secs(300));
        kube::Client::try_from(cfg).unwrap()
    }

    fn record(
        st: &mut State,
        events: &broadcast::Sender<Ev>,
        res: &str,
        ns: &str,
        ty: &'static str,
        obj: Value,
    ) {
        let ev = Ev {
            rv: st.rv,
            res: res.to_string(),
            ns: ns.to_string(),
            ty,
            obj,
        };
        st.log.push(ev.clone());
        let _ = events.send(ev);
    }

    fn stamp(st: &mut State, obj: &mut Value) {
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
    }

    /// Creates or replaces an object (as `kubectl apply` would); returns the stored object.
    pub fn put(&self, mut obj: Value) -> Value {
        let (res, namespaced) = resource_of(
            obj["apiVersion"].as_str().unwrap(),
            obj["kind"].as_str().unwrap(),
        );
        let ns = if namespaced {
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        if namespaced {
            obj["metadata"]["namespace"] = json!(ns);
        }
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let mut st = self.state.lock().unwrap();
        let key = (res.clone(), ns.clone(), name);
        let ty = match st.objects.get(&key) {
            Some(old) => {
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                let changed = old.get("spec") != obj.get("spec");
                obj["metadata"]["generation"] =
                    json!(if changed { generation + 1 } else { generation });
                obj["metadata"]["uid"] = old["metadata"]["uid"].clone();
                obj["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
                if obj.get("status").is_none()
                    && let Some(s) = old.get("status")
                {
                    obj["status"] = s.clone();
                }
                "MODIFIED"
            }
            None => {
                st.uid += 1;
                obj["metadata"]["uid"] = json!(format!("uid-{}", st.uid));
                obj["metadata"]["generation"] = json!(1);
                obj["metadata"]["creationTimestamp"] = json!(format!(
                    "2024-01-01T00:{:02}:{:02}Z",
                    st.uid / 60 % 60,
                    st.uid % 60
                ));
                "ADDED"
            }
        };
        Self::stamp(&mut st, &mut obj);
        st.objects.insert(key, obj.clone());
        Self::record(&mut st, &self.events, &res, &ns, ty, obj.clone());
        obj
    }

    /// Replaces an object's status (as another controller or the cloud provider would).
    pub fn set_status(&self, api_version: &str, kind: &str, ns: &str, name: &str, status: Value) {
        let (res, namespaced) = resource_of(api_version, kind);
        let ns = if namespaced { ns } else { "" };
        let mut st = self.state.lock().unwrap();
        let key = (res.clone(), ns.to_string(), name.to_string());
        let mut obj = st.objects.get(&key).cloned().expect("object exists");
        obj["status"] = status;
        Self::stamp(&mut st, &mut obj);
        st.objects.insert(key, obj.clone());
        Self::record(&mut st, &self.events, &res, ns, "MODIFIED", obj);
    }

    /// Deletes an object. With `silently`, no watch event is sent and history is compacted,
    /// as when the deletion happened while the watch was down: only a re-list notices.
    pub fn delete(&self, api_version: &str, kind: &str, ns: &str, name: &str, silently: bool) {
        let (res, namespaced) = resource_of(api_version, kind);
        let ns = if namespaced { ns } else { "" };
        let mut st = self.state.lock().unwrap();
        let Some(mut obj) = st
            .objects
            .remove(&(res.clone(), ns.to_string(), name.to_string()))
        else {
            return;
        };
        st.rv += 1;
        if silently {
            st.compacted = st.rv;
        } else {
            obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            Self::record(&mut st, &self.events, &res, ns, "DELETED", obj);
        }
    }

    /// An object as stored.
    pub fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let (res, namespaced) = resource_of(api_version, kind);
        let ns = if namespaced { ns } else { "" };
        self.state
            .lock()
            .unwrap()
            .objects
            .get(&(res, ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Objects of a kind.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let (res, _) = resource_of(api_version, kind);
        self.state
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|((r, _, _), _)| *r == res)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The next `n` watch requests get `410 Gone` (expired resourceVersion).
    pub fn expire_next_watches(&self, n: usize) {
        self.state.lock().unwrap().gone_next_watches = n;
    }

    /// Closes every open watch stream (a dropped connection).
    pub fn drop_watches(&self) {
        self.drop_watches.send_modify(|n| *n += 1);
    }

    /// The request log.
    pub fn requests(&self) -> Vec<Logged> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests with this method whose path contains `needle`.
    pub fn count(&self, method: &str, needle: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path.contains(needle))
            .count()
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>, listener: usize) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        self.state.lock().unwrap().requests.push(Logged {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            listener,
            content_type: content_type.clone(),
        });
        let q = query_map(&query);
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let Some(t) = parse_path(&path) else {
            return err(404, "NotFound", &format!("no route for {path}"));
        };
        let ns = t.ns.clone().unwrap_or_default();
        match (method, &t.name) {
            (Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                self.watch(&t, &q)
            }
            (Method::GET, None) => self.list_response(&t, &q),
            (Method::GET, Some(name)) => {
                let st = self.state.lock().unwrap();
                match st.objects.get(&(t.res.clone(), ns.clone(), name.clone())) {
                    Some(o) => full(StatusCode::OK, o),
                    None => err(404, "NotFound", &format!("{} {name:?} not found", t.res)),
                }
            }
            (Method::POST, None) => {
                let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
                    return err(400, "BadRequest", "body is not JSON");
                };
                if t.ns.is_some() {
                    obj["metadata"]["namespace"] = json!(ns);
                }
                let name = obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if self.state.lock().unwrap().objects.contains_key(&(
                    t.res.clone(),
                    ns.clone(),
                    name.clone(),
                )) {
                    return err(409, "AlreadyExists", &format!("{name:?} already exists"));
                }
                full(StatusCode::CREATED, &self.put(obj))
            }
            (Method::PUT, Some(name)) => {
                let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
                    return err(400, "BadRequest", "body is not JSON");
                };
                let cur = self
                    .state
                    .lock()
                    .unwrap()
                    .objects
                    .get(&(t.res.clone(), ns.clone(), name.clone()))
                    .cloned();
                let Some(cur) = cur else {
                    return err(404, "NotFound", "not found");
                };
                let rv = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default();
                if !rv.is_empty()
                    && rv
                        != cur["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap_or_default()
                {
                    return err(
                        409,
                        "Conflict",
                        "the object has been modified; please apply your changes to the latest version and try again",
                    );
                }
                if t.ns.is_some() {
                    obj["metadata"]["namespace"] = json!(ns);
                }
                full(StatusCode::OK, &self.put(obj))
            }
            (Method::PATCH, Some(name)) => self.patch(&t, name, &content_type, &body),
            (Method::DELETE, Some(name)) => {
                let cur = self
                    .state
                    .lock()
                    .unwrap()
                    .objects
                    .get(&(t.res.clone(), ns.clone(), name.clone()))
                    .cloned();
                match cur {
                    Some(o) => {
                        self.delete(
                            o["apiVersion"].as_str().unwrap_or_default(),
                            o["kind"].as_str().unwrap_or_default(),
                            &ns,
                            name,
                            false,
                        );
                        full(StatusCode::OK, &o)
                    }
                    None => err(404, "NotFound", "not found"),
                }
            }
            _ => err(405, "MethodNotAllowed", "method not allowed"),
        }
    }

    fn patch(&self, t: &Target, name: &str, content_type: &str, body: &[u8]) -> Response<Body> {
        let ns = t.ns.clone().unwrap_or_default();
        let Ok(patch) = serde_json::from_slice::<Value>(body) else {
            return err(400, "BadRequest", "patch is not JSON");
        };
        let cur = self
            .state
            .lock()
            .unwrap()
            .objects
            .get(&(t.res.clone(), ns.clone(), name.to_string()))
            .cloned();
        let status_only = t.sub.as_deref() == Some("status");
        let mut obj = match (cur, content_type.starts_with("application/apply-patch")) {
            (Some(c), _) => c,
            (None, true) => {
                let mut o = patch.clone();
                if t.ns.is_some() {
                    o["metadata"]["namespace"] = json!(ns);
                }
                return full(StatusCode::CREATED, &self.put(o));
            }
            (None, false) => return err(404, "NotFound", "not found"),
        };
        let rv = patch["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if !rv.is_empty()
            && rv
                != obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
        {
            return err(
                409,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
            );
        }
        let before = obj.clone();
        if status_only {
            merge(&mut obj["status"], &patch["status"]);
        } else if content_type.starts_with("application/apply-patch") {
            for k in ["spec", "data", "type"] {
                if let Some(v) = patch.get(k) {
                    obj[k] = v.clone();
                }
            }
            for k in ["labels", "annotations", "ownerReferences"] {
                if let Some(v) = patch["metadata"].get(k) {
                    obj["metadata"][k] = v.clone();
                }
            }
        } else {
            let mut p = patch.clone();
            if let Some(m) = p.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            if let Some(m) = p.as_object_mut() {
                m.remove("status");
            }
            merge(&mut obj, &p);
        }
        if obj == before {
            return full(StatusCode::OK, &obj);
        }
        if status_only {
            let mut st = self.state.lock().unwrap();
            Self::stamp(&mut st, &mut obj);
            st.objects
                .insert((t.res.clone(), ns.clone(), name.to_string()), obj.clone());
            Self::record(&mut st, &self.events, &t.res, &ns, "MODIFIED", obj.clone());
            full(StatusCode::OK, &obj)
        } else {
            full(StatusCode::OK, &self.put(obj))
        }
    }

    fn list_response(&self, t: &Target, q: &BTreeMap<String, String>) -> Response<Body> {
        let st = self.state.lock().unwrap();
        let items: Vec<Value> = st
            .objects
            .iter()
            .filter(|((r, ns, _), o)| {
                *r == t.res
                    && t.ns.as_ref().is_none_or(|n| n == ns)
                    && q.get("labelSelector").is_none_or(|s| matches_labels(o, s))
                    && q.get("fieldSelector").is_none_or(|s| matches_fields(o, s))
            })
            .map(|(_, o)| o.clone())
            .collect();
        let kind = items
            .first()
            .and_then(|o| o["kind"].as_str())
            .map(|k| format!("{k}List"))
            .unwrap_or_else(|| "List".into());
        full(
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": kind,
                "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
        )
    }

    fn watch(&self, t: &Target, q: &BTreeMap<String, String>) -> Response<Body> {
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
        let labels = q.get("labelSelector").cloned().unwrap_or_default();
        let fields = q.get("fieldSelector").cloned().unwrap_or_default();
        let mut rx = self.events.subscribe();
        let (backlog, gone, current) = {
            let mut st = self.state.lock().unwrap();
            let gone = if st.gone_next_watches > 0 {
                st.gone_next_watches -= 1;
                true
            } else {
                from < st.compacted
            };
            let backlog: Vec<Ev> = st.log.iter().filter(|e| e.rv > from).cloned().collect();
            (backlog, gone, st.rv)
        };
        let (tx, out) = tokio::sync::mpsc::channel::<Bytes>(64);
        let res = t.res.clone();
        let ns = t.ns.clone();
        let mut dropped = self.drop_watches.subscribe();
        dropped.borrow_and_update();
        let line = |v: Value| {
            let mut b = serde_json::to_vec(&v).unwrap();
            b.push(b'\n');
            Bytes::from(b)
        };
        tokio::spawn(async move {
            if gone {
                let _ = tx
                    .send(line(json!({"type": "ERROR", "object": status(410, "Expired", &format!("too old resource version: {from} ({current})"))})))
                    .await;
                return;
            }
            let wanted = |e: &Ev| {
                e.res == res
                    && ns.as_ref().is_none_or(|n| *n == e.ns)
                    && matches_labels(&e.obj, &labels)
                    && matches_fields(&e.obj, &fields)
            };
            let mut last = from;
            for e in backlog {
                if wanted(&e) {
                    last = e.rv;
                    if tx
                        .send(line(json!({"type": e.ty, "object": e.obj})))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    e = rx.recv() => match e {
                        Ok(e) if e.rv > last && wanted(&e) => {
                            last = e.rv;
                            if tx.send(line(json!({"type": e.ty, "object": e.obj}))).await.is_err() { return; }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    },
                    _ = tick.tick(), if bookmarks => {
                        let rv = last.max(from);
                        if tx.send(line(json!({"type": "BOOKMARK", "object": {"kind": "Bookmark", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}}}))).await.is_err() { return; }
                    }
                    _ = dropped.changed() => return,
                }
            }
        });
        let stream = futures::stream::unfold(out, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap()
    }
}

/// Waits until `f` returns Some, polling every 50 ms, up to `secs` seconds.
pub async fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
