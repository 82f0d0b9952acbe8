//! What the Kubernetes API server would do to a Gateway API object before storing it, for the
//! file provider: apply the CRD's OpenAPI defaults and check the structural schema (types,
//! required fields, enums, patterns, lengths, ranges, list uniqueness, oneOf/anyOf/not,
//! ip formats). CEL rules (`x-kubernetes-validations`) are not evaluated; the translator
//! reports the semantic errors they would have caught as status conditions.

use crate::provider::yaml::parse_documents;
use regex::Regex;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;

/// One schema violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// Path of the offending field, `spec.rules[0].matches[0].path.type`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Default)]
struct Node {
    ty: Option<String>,
    properties: BTreeMap<String, Node>,
    required: Vec<String>,
    items: Option<Box<Node>>,
    additional: Option<Box<Node>>,
    enum_values: Vec<Value>,
    pattern: Option<Regex>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    max_properties: Option<u64>,
    format: Option<String>,
    default: Option<Value>,
    list_type: Option<String>,
    list_map_keys: Vec<String>,
    one_of: Vec<Node>,
    any_of: Vec<Node>,
    not: Option<Box<Node>>,
    int_or_string: bool,
    preserve_unknown: bool,
    nullable: bool,
}

fn compile(s: &Value) -> Node {
    let num = |k: &str| s.get(k).and_then(Value::as_f64);
    let uint = |k: &str| s.get(k).and_then(Value::as_u64);
    let string = |k: &str| s.get(k).and_then(Value::as_str).map(str::to_string);
    let nodes = |k: &str| {
        s.get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().map(compile).collect())
            .unwrap_or_default()
    };
    Node {
        ty: string("type"),
        properties: s
            .get("properties")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), compile(v))).collect())
            .unwrap_or_default(),
        required: s
            .get("required")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        items: s.get("items").map(|i| Box::new(compile(i))),
        additional: s
            .get("additionalProperties")
            .filter(|a| a.is_object())
            .map(|a| Box::new(compile(a))),
        enum_values: s
            .get("enum")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        // Kubernetes patterns are ECMA-262; the few that the regex crate cannot compile
        // (look-around) are not checked.
        pattern: string("pattern").and_then(|p| Regex::new(&p).ok()),
        min_length: uint("minLength"),
        max_length: uint("maxLength"),
        minimum: num("minimum"),
        maximum: num("maximum"),
        min_items: uint("minItems"),
        max_items: uint("maxItems"),
        max_properties: uint("maxProperties"),
        format: string("format"),
        default: s.get("default").cloned(),
        list_type: string("x-kubernetes-list-type"),
        list_map_keys: s
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        one_of: nodes("oneOf"),
        any_of: nodes("anyOf"),
        not: s.get("not").map(|n| Box::new(compile(n))),
        int_or_string: s
            .get("x-kubernetes-int-or-string")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        preserve_unknown: s
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        nullable: s.get("nullable").and_then(Value::as_bool).unwrap_or(false),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}...", &s[..57])
    } else {
        s
    }
}

fn sub(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Node {
    fn check(&self, v: &mut Value, path: &str, errs: &mut Vec<SchemaError>) {
        let mut err = |message: String| {
            errs.push(SchemaError {
                path: path.to_string(),
                message,
            })
        };
        if v.is_null() && self.nullable {
            return;
        }
        if self.int_or_string {
            if !(v.is_string() || v.is_i64() || v.is_u64()) {
                err(format!(
                    "must be an integer or a string, got {}",
                    type_name(v)
                ));
            }
            return;
        }
        if let Some(ty) = &self.ty {
            let actual = type_name(v);
            let ok = actual == ty || (ty == "number" && actual == "integer");
            if !ok {
                err(format!("must be of type {ty}, got {actual} {}", show(v)));
                return;
            }
        }
        if !self.enum_values.is_empty() && !self.enum_values.contains(v) {
            let allowed: Vec<String> = self.enum_values.iter().map(show).collect();
            err(format!(
                "unsupported value {}: must be one of {}",
                show(v),
                allowed.join(", ")
            ));
        }
        match v {
            Value::String(s) => {
                let n = s.chars().count() as u64;
                if let Some(min) = self.min_length
                    && n < min
                {
                    err(format!("must be at least {min} characters long"));
                }
                if let Some(max) = self.max_length
                    && n > max
                {
                    err(format!("must be at most {max} characters long"));
                }
                if let Some(re) = &self.pattern
                    && !re.is_match(s)
                {
                    err(format!("{:?} does not match pattern {:?}", s, re.as_str()));
                }
                match self.format.as_deref() {
                    Some("ipv4") if s.parse::<std::net::Ipv4Addr>().is_err() => {
                        err(format!("{s:?} is not an IPv4 address"))
                    }
                    Some("ipv6") if s.parse::<std::net::Ipv6Addr>().is_err() => {
                        err(format!("{s:?} is not an IPv6 address"))
                    }
                    _ => {}
                }
            }
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(0.0);
                if let Some(min) = self.minimum
                    && x < min
                {
                    err(format!("must be at least {min}, got {n}"));
                }
                if let Some(max) = self.maximum
                    && x > max
                {
                    err(format!("must be at most {max}, got {n}"));
                }
            }
            Value::Array(items) => {
                let n = items.len() as u64;
                if let Some(min) = self.min_items
                    && n < min
                {
                    err(format!("must have at least {min} items"));
                }
                if let Some(max) = self.max_items
                    && n > max
                {
                    err(format!("must have at most {max} items, has {n}"));
                }
                if let Some(item) = &self.items {
                    for (i, x) in items.iter_mut().enumerate() {
                        item.check(x, &format!("{path}[{i}]"), errs);
                    }
                }
                self.check_list_uniqueness(items, path, errs);
            }
            Value::Object(map) => self.check_object(map, path, errs),
            _ => {}
        }
        self.check_combinators(v, path, errs);
    }

    fn check_list_uniqueness(&self, items: &[Value], path: &str, errs: &mut Vec<SchemaError>) {
        match self.list_type.as_deref() {
            Some("map") if !self.list_map_keys.is_empty() => {
                let mut seen = HashSet::new();
                for (i, x) in items.iter().enumerate() {
                    let key: Vec<String> = self
                        .list_map_keys
                        .iter()
                        .map(|k| x.get(k).map(|v| v.to_string()).unwrap_or_default())
                        .collect();
                    if !seen.insert(key.clone()) {
                        errs.push(SchemaError {
                            path: format!("{path}[{i}]"),
                            message: format!(
                                "duplicate entry with {} {}",
                                self.list_map_keys.join("/"),
                                key.join("/")
                            ),
                        });
                    }
                }
            }
            Some("set") => {
                let mut seen = HashSet::new();
                for (i, x) in items.iter().enumerate() {
                    if !seen.insert(x.to_string()) {
                        errs.push(SchemaError {
                            path: format!("{path}[{i}]"),
                            message: format!("duplicate value {}", show(x)),
                        });
                    }
                }
            }
            _ => {}
        }
    }

    fn check_object(&self, map: &mut Map<String, Value>, path: &str, errs: &mut Vec<SchemaError>) {
        for (k, p) in &self.properties {
            if !map.contains_key(k)
                && let Some(d) = &p.default
            {
                map.insert(k.clone(), d.clone());
            }
        }
        for r in &self.required {
            if !map.contains_key(r) {
                errs.push(SchemaError {
                    path: sub(path, r),
                    message: "required field is missing".into(),
                });
            }
        }
        if let Some(max) = self.max_properties
            && map.len() as u64 > max
        {
            errs.push(SchemaError {
                path: path.to_string(),
                message: format!("must have at most {max} entries"),
            });
        }
        let known = !self.properties.is_empty();
        let mut unknown = Vec::new();
        for (k, x) in map.iter_mut() {
            let p = sub(path, k);
            if let Some(node) = self.properties.get(k) {
                node.check(x, &p, errs);
            } else if let Some(node) = &self.additional {
                node.check(x, &p, errs);
            } else if known && !self.preserve_unknown {
                unknown.push(k.clone());
            }
        }
        // The API server prunes unknown fields; so do we, after saying so in the log.
        for k in unknown {
            tracing::debug!(field = %sub(path, &k), "unknown field pruned");
            map.remove(&k);
        }
    }

    fn matches(&self, v: &Value) -> bool {
        let mut copy = v.clone();
        let mut errs = Vec::new();
        self.check(&mut copy, "", &mut errs);
        errs.is_empty()
    }

    fn check_combinators(&self, v: &Value, path: &str, errs: &mut Vec<SchemaError>) {
        if !self.one_of.is_empty() {
            let n = self.one_of.iter().filter(|s| s.matches(v)).count();
            if n != 1 {
                errs.push(SchemaError {
                    path: path.to_string(),
                    message: format!(
                        "must match exactly one of {} alternatives, matches {n}",
                        self.one_of.len()
                    ),
                });
            }
        }
        if !self.any_of.is_empty() && !self.any_of.iter().any(|s| s.matches(v)) {
            let formats: Vec<&str> = self
                .any_of
                .iter()
                .filter_map(|s| s.format.as_deref())
                .collect();
            errs.push(SchemaError {
                path: path.to_string(),
                message: if formats.is_empty() {
                    "matches none of the allowed alternatives".into()
                } else {
                    format!("must be one of the formats {}", formats.join(", "))
                },
            });
        }
        if let Some(n) = &self.not
            && n.matches(v)
        {
            errs.push(SchemaError {
                path: path.to_string(),
                message: format!("value {} is not allowed here", show(v)),
            });
        }
    }
}

type Schemas = HashMap<(String, String), Node>;

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let mut out = HashMap::new();
        for (file, text) in sluice_gateway_crds::EXPERIMENTAL_CRDS {
            let docs = parse_documents(text)
                .unwrap_or_else(|e| panic!("embedded CRD {file} does not parse: {e}"));
            for d in docs {
                let v = &d.value;
                if v["kind"] != "CustomResourceDefinition" {
                    continue;
                }
                let group = v["spec"]["group"].as_str().unwrap_or_default();
                let kind = v["spec"]["names"]["kind"].as_str().unwrap_or_default();
                for ver in v["spec"]["versions"].as_array().into_iter().flatten() {
                    let name = ver["name"].as_str().unwrap_or_default();
                    let schema = &ver["schema"]["openAPIV3Schema"];
                    out.insert(
                        (format!("{group}/{name}"), kind.to_string()),
                        compile(schema),
                    );
                }
            }
        }
        out
    })
}

/// True when a CRD schema is known for this apiVersion and kind.
pub fn has_schema(api_version: &str, kind: &str) -> bool {
    schemas().contains_key(&(api_version.to_string(), kind.to_string()))
}

/// Applies defaults and checks `obj` against its CRD schema. Objects of kinds without a CRD
/// pass unchanged.
pub fn validate(api_version: &str, kind: &str, obj: &mut Value) -> Result<(), Vec<SchemaError>> {
    let Some(node) = schemas().get(&(api_version.to_string(), kind.to_string())) else {
        return Ok(());
    };
    let mut errs = Vec::new();
    // metadata is only `type: object` in CRDs; the API server checks it separately.
    let metadata = obj.as_object_mut().and_then(|m| m.remove("metadata"));
    node.check(obj, "", &mut errs);
    if let (Some(m), Some(map)) = (metadata, obj.as_object_mut()) {
        map.insert("metadata".into(), m);
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const V1: &str = "gateway.networking.k8s.io/v1";

    #[test]
    fn defaults_are_applied() {
        let mut r = json!({"apiVersion": V1, "kind": "HTTPRoute", "metadata": {"name": "r"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"matches": [{"path": {"value": "/x"}}],
            "backendRefs": [{"name": "svc", "port": 80}]}]}});
        validate(V1, "HTTPRoute", &mut r).unwrap();
        assert_eq!(
            r["spec"]["rules"][0]["matches"][0]["path"]["type"],
            "PathPrefix"
        );
        assert_eq!(r["spec"]["rules"][0]["backendRefs"][0]["weight"], 1);
        assert_eq!(r["spec"]["parentRefs"][0]["kind"], "Gateway");
        assert_eq!(r["metadata"]["name"], "r");
    }

    #[test]
    fn violations_name_the_field() {
        let mut r = json!({"apiVersion": V1, "kind": "HTTPRoute", "metadata": {"name": "r"},
            "spec": {"rules": [{"matches": [{"path": {"type": "Prefix", "value": "/x"}}],
            "backendRefs": [{"name": "svc", "port": 70000}]}]}});
        let errs = validate(V1, "HTTPRoute", &mut r).unwrap_err();
        let text: Vec<String> = errs
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        assert!(
            text.iter().any(|t| t
                .starts_with("spec.rules[0].matches[0].path.type: unsupported value \"Prefix\"")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("spec.rules[0].backendRefs[0].port: must be at most 65535")),
            "{text:?}"
        );
    }

    #[test]
    fn gateway_address_one_of() {
        let mut gw = json!({"apiVersion": V1, "kind": "Gateway", "metadata": {"name": "g"},
            "spec": {"gatewayClassName": "c", "addresses": [{"value": "not-an-ip"}],
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}});
        let errs = validate(V1, "Gateway", &mut gw).unwrap_err();
        assert!(
            errs.iter().any(|e| e.path == "spec.addresses[0]"),
            "{errs:?}"
        );
        let mut ok = json!({"apiVersion": V1, "kind": "Gateway", "metadata": {"name": "g"},
            "spec": {"gatewayClassName": "c", "addresses": [{"value": "10.0.0.1"}],
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}});
        validate(V1, "Gateway", &mut ok).unwrap();
        assert_eq!(ok["spec"]["addresses"][0]["type"], "IPAddress");
    }

    #[test]
    fn duplicate_listener_names_are_rejected() {
        let mut gw = json!({"apiVersion": V1, "kind": "Gateway", "metadata": {"name": "g"},
            "spec": {"gatewayClassName": "c", "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP"},
                {"name": "http", "port": 81, "protocol": "HTTP"}]}});
        let errs = validate(V1, "Gateway", &mut gw).unwrap_err();
        assert!(
            errs.iter().any(|e| e.message.contains("duplicate entry")),
            "{errs:?}"
        );
    }

    #[test]
    fn every_conformance_manifest_is_valid() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/conformance/upstream"
        );
        let Ok(entries) = std::fs::read_dir(format!("{dir}/tests")) else {
            eprintln!(
                "SKIPPED: {dir} not found (the shared conformance material sits beside the repository)"
            );
            return;
        };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.push(format!("{dir}/base/manifests.yaml").into());
        let mut checked = 0;
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "yaml"))
        {
            let text = std::fs::read_to_string(f)
                .unwrap()
                .replace("{GATEWAY_CLASS_NAME}", "sluice")
                .replace("{GATEWAY_CONTROLLER_NAME}", crate::CONTROLLER_NAME);
            if text.contains("PLACEHOLDER_") {
                continue; // the suite substitutes real addresses before applying these
            }
            for mut d in parse_documents(&text).unwrap() {
                let av = d.value["apiVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let kind = d.value["kind"].as_str().unwrap_or_default().to_string();
                if let Err(e) = validate(&av, &kind, &mut d.value) {
                    panic!("{}:{}: {kind}: {e:?}", f.display(), d.line);
                }
                checked += 1;
            }
        }
        assert!(checked > 300, "only {checked} documents checked");
    }
}
