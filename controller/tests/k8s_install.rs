//! `sluice install` output and the cluster walk-through's manifests against the Kubernetes
//! schemas (kubernetes-validate, strict) and the Gateway API CRD schemas; the Helm chart
//! rendered without a helm binary and compared object by object with `sluice install`; the
//! walk-through's objects through the translator.

use serde_json::Value;
use sluice_controller::install::{self, InstallMode, InstallOptions};
use sluice_controller::provider::file::FileProvider;
use sluice_controller::provider::schema;
use sluice_controller::provision::partition::plan;
use sluice_controller::translate::TranslateOptions;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn parse_yaml_stream(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn id(o: &Value) -> String {
    format!(
        "{}/{}/{}/{}",
        o["apiVersion"].as_str().unwrap_or_default(),
        o["kind"].as_str().unwrap_or_default(),
        o["metadata"]["namespace"].as_str().unwrap_or_default(),
        o["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Runs kubernetes-validate (strict, Kubernetes 1.33) on a YAML file. Returns false (after
/// saying SKIPPED) when the tool is not installed.
fn kubernetes_validate(file: &Path) -> bool {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", "1.33.0"])
        .arg(file)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "SKIPPED: kubernetes-validate is not installed (pip install kubernetes-validate); Kubernetes schema validation of {} not done",
                file.display()
            );
            return false;
        }
        Err(e) => panic!("running kubernetes-validate: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let errors: Vec<&str> = stdout.lines().filter(|l| l.starts_with("ERROR")).collect();
    assert!(
        out.status.success() && errors.is_empty(),
        "kubernetes-validate rejected {}:\n{stdout}\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// Checks every Gateway API object against its CRD schema.
fn crd_validate(objects: &[Value]) -> usize {
    let mut n = 0;
    for o in objects {
        let (av, kind) = (
            o["apiVersion"].as_str().unwrap_or_default(),
            o["kind"].as_str().unwrap_or_default(),
        );
        if schema::has_schema(av, kind) {
            let mut v = o.clone();
            if let Err(errs) = schema::validate(av, kind, &mut v) {
                panic!("{} does not fit its CRD schema: {errs:?}", id(o));
            }
            n += 1;
        }
    }
    n
}

#[test]
fn install_output_validates_against_the_kubernetes_and_crd_schemas() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [InstallMode::Shared, InstallMode::Dedicated] {
        let opts = InstallOptions {
            mode,
            namespace: "edge-system".into(),
            ..Default::default()
        };
        let objects = install::objects(&opts);
        let text = install::render(&objects);
        // The printed YAML reads back to the same objects.
        assert_eq!(parse_yaml_stream(&text), objects);
        let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        for k in [
            "CustomResourceDefinition",
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
            "Service",
            "DaemonSet",
            "ConfigMap",
            "GatewayClass",
            "IngressClass",
        ] {
            assert!(kinds.contains(&k), "sluice install prints no {k}");
        }
        // Everything namespaced lands in the chosen namespace.
        for o in &objects {
            if let Some(ns) = o["metadata"]["namespace"].as_str() {
                assert_eq!(ns, "edge-system", "{}", id(o));
            }
        }
        assert_eq!(
            crd_validate(&objects),
            2,
            "both GatewayClasses are checked against the CRD"
        );
        let file = dir.path().join("install.yaml");
        std::fs::write(&file, &text).unwrap();
        kubernetes_validate(&file);
    }
}

#[test]
fn rbac_covers_exactly_what_the_controller_watches_and_writes() {
    let objects = install::objects(&InstallOptions::default());
    let role = objects.iter().find(|o| o["kind"] == "ClusterRole").unwrap();
    let mut allowed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in role["rules"].as_array().unwrap() {
        for g in r["apiGroups"].as_array().unwrap() {
            for res in r["resources"].as_array().unwrap() {
                let key = format!("{}/{}", g.as_str().unwrap(), res.as_str().unwrap());
                allowed.entry(key).or_default().extend(
                    r["verbs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_string()),
                );
            }
        }
    }
    let watched = [
        "gateway.networking.k8s.io/gatewayclasses",
        "gateway.networking.k8s.io/gateways",
        "gateway.networking.k8s.io/listenersets",
        "gateway.networking.k8s.io/httproutes",
        "gateway.networking.k8s.io/grpcroutes",
        "gateway.networking.k8s.io/tlsroutes",
        "gateway.networking.k8s.io/tcproutes",
        "gateway.networking.k8s.io/udproutes",
        "gateway.networking.k8s.io/referencegrants",
        "gateway.networking.k8s.io/backendtlspolicies",
        "networking.k8s.io/ingresses",
        "networking.k8s.io/ingressclasses",
        "/namespaces",
        "/services",
        "discovery.k8s.io/endpointslices",
        "/secrets",
        "/configmaps",
        "apps/deployments",
    ];
    for w in watched {
        let v = allowed.get(w).unwrap_or_else(|| panic!("no rule for {w}"));
        for verb in ["list", "watch"] {
            assert!(v.contains(&verb.to_string()), "{w} lacks {verb}");
        }
    }
    // Written: status subresources by patch only; nothing can be updated wholesale, nothing
    // outside these kinds.
    for (res, verbs) in &allowed {
        assert!(
            !verbs.contains(&"update".to_string()),
            "{res} may be updated"
        );
        assert!(
            !verbs.contains(&"*".to_string()) && !res.ends_with("/*"),
            "wildcard on {res}"
        );
        if res.ends_with("/status") {
            assert_eq!(verbs, &["patch"], "{res}");
        }
    }
    assert!(!allowed.contains_key("/pods") && !allowed.contains_key("/nodes"));
    // The agents get no API access at all.
    let agent_sa = objects
        .iter()
        .find(|o| o["kind"] == "ServiceAccount" && o["metadata"]["name"] == "sluice-agent")
        .unwrap();
    assert_eq!(agent_sa["automountServiceAccountToken"], false);
    assert!(!objects.iter().any(
        |o| o["kind"].as_str().is_some_and(|k| k.ends_with("Binding"))
            && o["subjects"][0]["name"] == "sluice-agent"
    ));
}

// ---- A Go-template subset renderer: enough for the chart, no helm binary needed. ----

/// Values and release data a template sees.
struct Ctx<'a> {
    values: &'a Value,
    namespace: &'a str,
}

fn lookup<'v>(ctx: &'v Ctx<'_>, dot: &'v Value, path: &str) -> Value {
    let path = path.trim();
    if path == "." {
        return dot.clone();
    }
    if path == ".Release.Namespace" {
        return Value::String(ctx.namespace.to_string());
    }
    let rest = path
        .strip_prefix(".Values.")
        .unwrap_or_else(|| panic!("template uses an unsupported expression {path:?}"));
    let mut v = ctx.values;
    for seg in rest.split('.') {
        v = &v[seg];
    }
    v.clone()
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

enum Node {
    Text(String),
    Expr(String),
    If(String, Vec<Node>, Vec<Node>),
    Range(String, Vec<Node>),
}

/// Splits into text and actions, applying `{{-` / `-}}` whitespace trimming.
fn lex(src: &str) -> Vec<(bool, String)> {
    let mut out: Vec<(bool, String)> = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(i) = rest.find("{{") {
        let mut text = rest[..i].to_string();
        if trim_next {
            text = text.trim_start().to_string();
        }
        let after = &rest[i + 2..];
        let end = after.find("}}").expect("unclosed action");
        let mut action = &after[..end];
        if let Some(a) = action.strip_prefix('-') {
            text = text.trim_end().to_string();
            action = a;
        }
        trim_next = action.ends_with('-');
        let action = action.trim_end_matches('-').trim().to_string();
        out.push((false, text));
        out.push((true, action));
        rest = &after[end + 2..];
    }
    let mut text = rest.to_string();
    if trim_next {
        text = text.trim_start().to_string();
    }
    out.push((false, text));
    out
}

fn parse(
    tokens: &mut std::iter::Peekable<std::vec::IntoIter<(bool, String)>>,
    stop: &[&str],
) -> (Vec<Node>, String) {
    let mut nodes = Vec::new();
    while let Some((is_action, s)) = tokens.next() {
        if !is_action {
            nodes.push(Node::Text(s));
            continue;
        }
        if stop.contains(&s.as_str()) {
            return (nodes, s);
        }
        if let Some(cond) = s.strip_prefix("if ") {
            let (then, ended) = parse(tokens, &["else", "end"]);
            let otherwise = if ended == "else" {
                parse(tokens, &["end"]).0
            } else {
                Vec::new()
            };
            nodes.push(Node::If(cond.to_string(), then, otherwise));
        } else if let Some(list) = s.strip_prefix("range ") {
            let (body, _) = parse(tokens, &["end"]);
            nodes.push(Node::Range(list.to_string(), body));
        } else {
            assert!(!s.starts_with('/'), "comments are not supported");
            nodes.push(Node::Expr(s));
        }
    }
    (nodes, String::new())
}

fn eval(nodes: &[Node], ctx: &Ctx<'_>, dot: &Value, out: &mut String) {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Expr(e) => out.push_str(&scalar(&lookup(ctx, dot, e))),
            Node::If(c, a, b) => {
                let cond = if let Some(args) = c.strip_prefix("eq ") {
                    let (x, y) = args.split_once(' ').expect("eq needs two arguments");
                    scalar(&lookup(ctx, dot, x)) == y.trim().trim_matches('"')
                } else {
                    truthy(&lookup(ctx, dot, c))
                };
                eval(if cond { a } else { b }, ctx, dot, out);
            }
            Node::Range(list, body) => {
                for item in lookup(ctx, dot, list).as_array().into_iter().flatten() {
                    eval(body, ctx, item, out);
                }
            }
        }
    }
}

fn render_template(src: &str, ctx: &Ctx<'_>) -> String {
    let mut tokens = lex(src).into_iter().peekable();
    let (nodes, _) = parse(&mut tokens, &[]);
    let mut out = String::new();
    eval(&nodes, ctx, &Value::Null, &mut out);
    out
}

/// The chart's objects for these values: templates rendered, plus crds/ verbatim.
fn render_chart(chart: &Path, values: &Value, namespace: &str) -> Vec<Value> {
    let ctx = Ctx { values, namespace };
    let mut out = Vec::new();
    let mut crds: Vec<PathBuf> = std::fs::read_dir(chart.join("crds"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    crds.sort();
    for f in crds {
        out.extend(parse_yaml_stream(&std::fs::read_to_string(f).unwrap()));
    }
    let mut templates: Vec<PathBuf> = std::fs::read_dir(chart.join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    templates.sort();
    for f in templates {
        let text = render_template(&std::fs::read_to_string(&f).unwrap(), &ctx);
        out.extend(parse_yaml_stream(&text));
    }
    out
}

#[test]
fn template_subset_renders_values_conditions_and_ranges() {
    let values = serde_json::json!({"a": {"b": "x"}, "on": true, "off": false, "list": ["p", "q"], "mode": "dedicated"});
    let ctx = Ctx {
        values: &values,
        namespace: "ns",
    };
    let src = "v: {{ .Values.a.b }}\nns: {{ .Release.Namespace }}\n{{- if .Values.on }}\non: 1\n{{- end }}\n{{- if .Values.off }}\noff: 1\n{{- else }}\noff: 0\n{{- end }}\nl:\n{{- range .Values.list }}\n- {{ . }}\n{{- end }}\n{{- if eq .Values.mode \"dedicated\" }}\nd: yes\n{{- end }}\n";
    assert_eq!(
        render_template(src, &ctx),
        "v: x\nns: ns\non: 1\noff: 0\nl:\n- p\n- q\nd: yes\n"
    );
}

#[test]
fn helm_chart_renders_what_sluice_install_prints() {
    let chart = repo().join("deploy/helm/sluice");
    let defaults: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap()).unwrap();
    let chart_meta: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(chart_meta["appVersion"], env!("CARGO_PKG_VERSION"));
    for (mode, install_mode, ns) in [
        ("shared", InstallMode::Shared, "sluice-system"),
        ("dedicated", InstallMode::Dedicated, "gateways"),
    ] {
        let mut values = defaults.clone();
        values["mode"] = Value::String(mode.into());
        let rendered = render_chart(&chart, &values, ns);
        let expected = install::objects(&InstallOptions {
            mode: install_mode,
            namespace: ns.into(),
            image: defaults["image"].as_str().unwrap().into(),
            address_pool: defaults["addressPool"].as_str().unwrap().into(),
            controller_replicas: defaults["controller"]["replicas"].as_i64().unwrap() as i32,
            crds: true,
        });
        // The chart leaves the namespace to `helm install --create-namespace`.
        let expected: BTreeMap<String, &Value> = expected
            .iter()
            .filter(|o| o["kind"] != "Namespace")
            .map(|o| (id(o), o))
            .collect();
        let got: BTreeMap<String, &Value> = rendered.iter().map(|o| (id(o), o)).collect();
        assert_eq!(
            got.len(),
            rendered.len(),
            "the chart renders an object twice"
        );
        let missing: Vec<&String> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<&String> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "mode {mode}: missing from the chart {missing:?}, only in the chart {extra:?}"
        );
        for (k, want) in &expected {
            assert_eq!(
                &got[k], want,
                "mode {mode}: chart object {k} differs from sluice install"
            );
        }
    }
    // Turning the IngressClass off removes it.
    let mut values = defaults.clone();
    values["ingressClass"]["enabled"] = Value::Bool(false);
    assert!(
        !render_chart(&chart, &values, "x")
            .iter()
            .any(|o| o["kind"] == "IngressClass")
    );
}

#[test]
fn cluster_walkthrough_manifests_validate_and_translate() {
    let dir = repo().join("examples/cluster");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "the walk-through has no manifests");
    let mut objects = Vec::new();
    for f in &files {
        kubernetes_validate(f);
        objects.extend(parse_yaml_stream(&std::fs::read_to_string(f).unwrap()));
    }
    assert!(crd_validate(&objects) >= 5);

    // Through the file provider (with the classes `sluice install` creates) and the
    // per-data-plane translation.
    let tmp = tempfile::tempdir().unwrap();
    let classes: Vec<Value> = install::objects(&InstallOptions::default())
        .into_iter()
        .filter(|o| o["kind"] == "GatewayClass" || o["kind"] == "ConfigMap")
        .collect();
    std::fs::write(
        tmp.path().join("00-install.yaml"),
        install::render(&classes),
    )
    .unwrap();
    for f in &files {
        std::fs::copy(f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    let mut provider = FileProvider::new(tmp.path());
    let mut res = provider.load().unwrap().clone();
    assert!(res.errors.is_empty(), "{:?}", res.errors);
    // The default pool of `sluice install` (10.255.0.0/24).
    let opts = TranslateOptions {
        address_pool: (1..=254u8)
            .map(|i| std::net::IpAddr::from([10, 255, 0, i]))
            .collect(),
        ..Default::default()
    };
    let p = plan(&mut res, &opts);
    assert!(p.param_errors.is_empty(), "{:?}", p.param_errors);
    let gateways: Vec<_> = p
        .status
        .resources
        .iter()
        .filter(|r| r.object.kind == "Gateway")
        .collect();
    assert!(gateways.len() >= 3);
    for g in &gateways {
        assert!(
            g.condition("Accepted").is_some_and(|c| c.is_true()),
            "{} not accepted: {:?}",
            g.object,
            g.conditions
        );
        for l in &g.listeners {
            assert!(
                l.attached_routes >= 1,
                "{} listener {} has no route",
                g.object,
                l.name
            );
        }
    }
    for r in p
        .status
        .resources
        .iter()
        .filter(|r| r.object.kind == "HTTPRoute")
    {
        for parent in &r.parents {
            for c in &parent.conditions {
                assert!(
                    c.is_true(),
                    "{} {}: {:?}",
                    r.object,
                    parent.parent_ref.name,
                    c
                );
            }
        }
    }
    // The README shows the address the shared Gateway really gets.
    let shared = p.status.get("Gateway", "infra", "shared").unwrap();
    let addr = &shared
        .addresses
        .first()
        .expect("the shared Gateway has an address")
        .value;
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let line = format!("infra       shared    sluice             {addr}");
    assert!(readme.contains(&line), "README.md does not show {line:?}");

    // The shared Gateway is served by the node agents, each team's by its own proxies.
    assert!(!p.shared.listeners.is_empty());
    assert!(
        p.dedicated.len() >= 2,
        "expected per-namespace dedicated Gateways"
    );
    for (k, (snap, params)) in &p.dedicated {
        assert_eq!(params.mode, sluice_controller::provision::Mode::Dedicated);
        assert!(
            snap.listeners.iter().all(|l| l.address.is_unspecified()),
            "{k}"
        );
        assert!(!snap.listeners.is_empty(), "{k} has nothing to serve");
    }
}
