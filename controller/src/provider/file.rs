//! The file provider of standalone mode: every `*.yaml`/`*.yml` under a directory, multi-document,
//! holding real Kubernetes objects.
//!
//! A file is all-or-nothing: when any document in it fails (YAML syntax, unknown kind, schema
//! error, bad regular expression, an object defined twice), every error is reported with
//! `file:line` and the file's **last good version keeps applying** (nothing of it, if it never
//! loaded). Other files are unaffected. Unchanged files are not parsed again.

use crate::provider::schema;
use crate::provider::yaml::{Document, parse_documents};
use crate::resources::{Object, ObjectError, ObjectSource, Resources};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sluice_ir::ObjectRef;
use sluice_ir::status::{ConfigError, SourceLocation};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The namespace given to namespaced objects that name none (as kubectl does).
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, Clone)]
struct Parsed {
    object: Object,
    source: SourceLocation,
}

#[derive(Debug, Clone, Default)]
struct FileState {
    /// The content last read (`None` after a read error): compared whole, which is faster
    /// than hashing it and cannot be fooled by a collision.
    content: Option<Vec<u8>>,
    /// Objects of the last version that loaded cleanly.
    good: Option<Vec<Parsed>>,
    /// Errors of the current version (empty when it is the good one).
    errors: Vec<ConfigError>,
    /// Objects this file contributes to the assembled store now.
    contributed: Vec<ObjectRef>,
    /// Why `good` is not in the store (objects defined in an earlier file too).
    duplicates: Vec<ConfigError>,
}

/// Reads a directory of manifests into [`Resources`], remembering each file's last good version.
///
/// The store is kept between loads and patched for the files whose content changed, so a
/// change costs reading the files (no parsing of unchanged ones) plus the changed objects.
#[derive(Debug)]
pub struct FileProvider {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    resources: Resources,
    changed: bool,
}

/// The directory itself cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {dir}: {source}")]
pub struct DirError {
    /// The directory.
    pub dir: String,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

struct Located<'a> {
    doc: &'a Document,
}

impl ObjectSource for Located<'_> {
    fn typed<K: DeserializeOwned>(self) -> Result<K, ObjectError> {
        serde_path_to_error::deserialize(&self.doc.value).map_err(|e| {
            let path = e.path().to_string();
            let line = self.doc.line_of(&path);
            ObjectError::Schema(format!("line {line}: {path}: {}", e.into_inner()))
        })
    }
}

impl FileProvider {
    /// A provider for `dir` (nothing is read until [`FileProvider::load`]).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileProvider {
            dir: dir.into(),
            files: BTreeMap::new(),
            resources: Resources::default(),
            changed: true,
        }
    }

    /// The directory watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lists manifest files under the directory, sorted, skipping hidden files and directories
    /// (editors' swap files, `..data` symlink farms of mounted ConfigMaps).
    fn list(&self) -> Result<Vec<PathBuf>, DirError> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>, top: bool) -> std::io::Result<()> {
            let rd = match std::fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e) if !top => {
                    tracing::warn!(dir = %dir.display(), error = %e, "skipping unreadable directory");
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            for entry in rd {
                let entry = entry?;
                let path = entry.path();
                let name = entry.file_name();
                if name.to_string_lossy().starts_with('.') {
                    continue;
                }
                let ft = std::fs::metadata(&path).map(|m| m.file_type());
                match ft {
                    Ok(ft) if ft.is_dir() => walk(&path, out, false)?,
                    Ok(ft)
                        if ft.is_file()
                            && path.extension().is_some_and(|e| e == "yaml" || e == "yml") =>
                    {
                        out.push(path)
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        let mut out = Vec::new();
        walk(&self.dir, &mut out, true).map_err(|source| DirError {
            dir: self.dir.display().to_string(),
            source,
        })?;
        out.sort();
        Ok(out)
    }

    /// Re-reads changed files and returns the store: every file's current version if it is
    /// good, else its last good one; `errors` lists what is wrong now.
    /// [`FileProvider::changed`] tells whether anything differs from the previous load.
    pub fn load(&mut self) -> Result<&Resources, DirError> {
        let paths = self.list()?;
        let mut dirty: Vec<PathBuf> = Vec::new();
        let mut errors_changed = false;
        for (path, state) in &self.files {
            if paths.binary_search(path).is_err() {
                dirty.push(path.clone());
                errors_changed |= !state.errors.is_empty();
                for r in &state.contributed {
                    self.resources.remove(r);
                }
            }
        }
        self.files.retain(|p, _| paths.binary_search(p).is_ok());
        for path in &paths {
            let state = self.files.entry(path.clone()).or_default();
            // Reading and comparing is cheap next to parsing, and unlike modification times it
            // never misses a rewrite within one clock tick.
            let text = match std::fs::read(path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    let err = vec![error_at(path, 1, None, None, format!("cannot read: {e}"))];
                    errors_changed |= state.errors != err;
                    state.errors = err;
                    state.content = None;
                    continue;
                }
            };
            if state.content.as_deref() == Some(text.as_slice())
                && (state.good.is_some() || !state.errors.is_empty())
            {
                continue;
            }
            let parsed = parse_file(path, &text);
            state.content = Some(text);
            match parsed {
                Ok(objects) => {
                    state.good = Some(objects);
                    errors_changed |= !state.errors.is_empty();
                    state.errors.clear();
                    dirty.push(path.clone());
                }
                Err(errors) => {
                    for e in &errors {
                        tracing::warn!(error = %e, "configuration rejected; the last good version of this file keeps applying");
                    }
                    errors_changed = true;
                    state.errors = errors;
                }
            }
        }
        self.changed = !dirty.is_empty() || errors_changed;
        if !dirty.is_empty() {
            self.patch(&dirty);
        }
        if self.changed {
            let mut errors: Vec<ConfigError> = self
                .files
                .values()
                .flat_map(|s| s.errors.iter().chain(&s.duplicates).cloned())
                .collect();
            errors.sort();
            self.resources.errors = errors;
        }
        Ok(&self.resources)
    }

    /// Whether the last [`FileProvider::load`] found any difference (objects or errors).
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// The store as of the last [`FileProvider::load`].
    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// Replaces the objects of the `dirty` files. Duplicates make a file all-or-nothing, with
    /// the earlier file (in path order) winning; when any are involved the store is rebuilt so
    /// the outcome never depends on the order of past edits.
    fn patch(&mut self, dirty: &[PathBuf]) {
        let had_duplicates = self.files.values().any(|s| !s.duplicates.is_empty());
        for path in dirty {
            if let Some(state) = self.files.get_mut(path) {
                for r in std::mem::take(&mut state.contributed) {
                    self.resources.remove(&r);
                }
            }
        }
        let clash = dirty.iter().any(|path| {
            self.files
                .get(path)
                .and_then(|s| s.good.as_ref())
                .is_some_and(|objs| {
                    objs.iter()
                        .any(|p| self.resources.contains(&p.object.object_ref()))
                })
        });
        if had_duplicates || clash {
            self.rebuild();
            return;
        }
        for path in dirty {
            let Some(state) = self.files.get_mut(path) else {
                continue;
            };
            let Some(objects) = &state.good else { continue };
            if let Some(dup) = insert_file(&mut self.resources, objects) {
                state.duplicates = dup;
            } else {
                state.contributed = objects.iter().map(|p| p.object.object_ref()).collect();
            }
        }
    }

    /// Assembles the store from scratch, files in path order.
    fn rebuild(&mut self) {
        let errors = std::mem::take(&mut self.resources.errors);
        self.resources = Resources {
            errors,
            ..Resources::default()
        };
        for state in self.files.values_mut() {
            state.contributed.clear();
            state.duplicates.clear();
            let Some(objects) = &state.good else { continue };
            match insert_file(&mut self.resources, objects) {
                Some(dup) => {
                    for e in &dup {
                        tracing::warn!(error = %e, "configuration rejected");
                    }
                    state.duplicates = dup;
                }
                None => {
                    state.contributed = objects.iter().map(|p| p.object.object_ref()).collect();
                }
            }
        }
    }
}

/// Inserts a file's objects unless one of them is already in the store (or twice in the file):
/// then nothing is inserted and the errors are returned.
fn insert_file(res: &mut Resources, objects: &[Parsed]) -> Option<Vec<ConfigError>> {
    let mut seen = std::collections::HashSet::new();
    let mut dup = Vec::new();
    for p in objects {
        let r = p.object.object_ref();
        if res.contains(&r) || !seen.insert(r.clone()) {
            let first = res
                .sources
                .get(&r)
                .map(|s| format!(" (first defined at {s})"))
                .unwrap_or_default();
            dup.push(ConfigError {
                source: p.source.clone(),
                object: Some(r),
                message: format!("defined more than once{first}; this file is ignored"),
            });
        }
    }
    if !dup.is_empty() {
        return Some(dup);
    }
    for p in objects {
        // Cannot fail: checked above.
        let _ = res.insert(p.object.clone(), Some(p.source.clone()));
    }
    None
}

fn error_at(
    path: &Path,
    line: u32,
    column: Option<u32>,
    object: Option<ObjectRef>,
    message: String,
) -> ConfigError {
    ConfigError {
        source: SourceLocation {
            file: path.display().to_string(),
            line,
            column,
        },
        object,
        message,
    }
}

/// Checks an HTTPRoute's or GRPCRoute's regular expressions (the CRDs leave them free-form).
fn check_regexes(kind: &str, v: &Value) -> Vec<(String, String)> {
    let mut bad = Vec::new();
    let mut check = |path: String, m: &Value| {
        if m["type"] == "RegularExpression"
            && let Some(re) = m["value"].as_str()
            && let Err(e) = regex::Regex::new(re)
        {
            let first = e.to_string().lines().last().unwrap_or_default().to_string();
            bad.push((path, format!("invalid regular expression {re:?}: {first}")));
        }
    };
    let rules = v["spec"]["rules"].as_array().into_iter().flatten();
    for (ri, rule) in rules.enumerate() {
        for (mi, m) in rule["matches"].as_array().into_iter().flatten().enumerate() {
            let base = format!("spec.rules[{ri}].matches[{mi}]");
            if kind == "HTTPRoute" {
                check(format!("{base}.path.value"), &m["path"]);
                for (qi, q) in m["queryParams"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    check(format!("{base}.queryParams[{qi}].value"), q);
                }
            } else {
                check(format!("{base}.method"), &m["method"]);
            }
            for (hi, h) in m["headers"].as_array().into_iter().flatten().enumerate() {
                check(format!("{base}.headers[{hi}].value"), h);
            }
        }
    }
    bad
}

/// Checks `metadata.name` the way the API server does for most kinds (DNS subdomain).
fn check_name(v: &Value) -> Result<(), String> {
    let name = v["metadata"]["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        return Err("metadata.name is required".into());
    }
    let ok = name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "metadata.name {name:?} is not a valid name (lower-case letters, digits, '-' and '.')"
        ))
    }
}

fn parse_file(path: &Path, bytes: &[u8]) -> Result<Vec<Parsed>, Vec<ConfigError>> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| vec![error_at(path, 1, None, None, format!("not UTF-8: {e}"))])?;
    let docs = parse_documents(text).map_err(|e| {
        vec![error_at(
            path,
            e.line,
            Some(e.column),
            None,
            format!("invalid YAML: {}", e.message),
        )]
    })?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for mut doc in docs {
        let str_field = |f: &str| doc.value[f].as_str().unwrap_or_default().to_string();
        let (api_version, kind) = (str_field("apiVersion"), str_field("kind"));
        let name = doc.value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let namespace = doc.value["metadata"]["namespace"]
            .as_str()
            .unwrap_or(DEFAULT_NAMESPACE)
            .to_string();
        let object = (!kind.is_empty()).then(|| ObjectRef::new(&kind, &namespace, &name));
        let mut fail = |line: u32, msg: String| {
            errors.push(error_at(path, line, None, object.clone(), msg));
        };
        if !doc.value.is_object() {
            fail(
                doc.line,
                "a document must be a mapping (a Kubernetes object)".into(),
            );
            continue;
        }
        if api_version.is_empty() || kind.is_empty() {
            fail(doc.line, "apiVersion and kind are required".into());
            continue;
        }
        if let Err(e) = check_name(&doc.value) {
            fail(doc.line_of("metadata.name"), e);
            continue;
        }
        if let Err(errs) = schema::validate(&api_version, &kind, &mut doc.value) {
            for e in errs {
                fail(doc.line_of(&e.path), format!("{}: {}", e.path, e.message));
            }
            continue;
        }
        if kind == "HTTPRoute" || kind == "GRPCRoute" {
            let bad = check_regexes(&kind, &doc.value);
            if !bad.is_empty() {
                for (p, msg) in bad {
                    fail(doc.line_of(&p), format!("{p}: {msg}"));
                }
                continue;
            }
        }
        match Object::decode(&api_version, &kind, Located { doc: &doc }) {
            Ok(Some(mut obj)) => {
                obj.default_namespace(DEFAULT_NAMESPACE);
                out.push(Parsed {
                    object: obj,
                    source: SourceLocation {
                        file: path.display().to_string(),
                        line: doc.line,
                        column: None,
                    },
                });
            }
            Ok(None) => {
                tracing::debug!(file = %path.display(), line = doc.line, %kind, "ignored kind")
            }
            Err(ObjectError::Schema(msg)) => {
                // `msg` starts with "line N: path: ..." from Located.
                let (line, rest) = split_line(&msg).unwrap_or((doc.line, msg.as_str()));
                fail(line, rest.to_string());
            }
            Err(e) => fail(doc.line, e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn split_line(msg: &str) -> Option<(u32, &str)> {
    let rest = msg.strip_prefix("line ")?;
    let (n, rest) = rest.split_once(": ")?;
    Some((n.parse().ok()?, rest))
}

/// Watches `dir` recursively and sends `()` after changes settle: once no event arrived for
/// `quiet` (after an event that can leave a file half-written: created, data written) or for
/// `settled` (after one that finishes a change: a file closed after writing, renamed into
/// place, removed; the wait only gathers the rest of a multi-file change), and at the latest
/// `max_delay` after the first one. Dropping the receiver stops it.
pub fn watch(
    dir: &Path,
    quiet: Duration,
    settled: Duration,
    max_delay: Duration,
) -> notify::Result<tokio::sync::mpsc::Receiver<()>> {
    use notify::{RecursiveMode, Watcher};
    let (raw_tx, mut raw_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let mut watcher =
        notify::recommended_watcher(move |ev: notify::Result<notify::Event>| match ev {
            Ok(ev) => {
                if let Some(done) = finishes_change(&ev.kind) {
                    let _ = raw_tx.send(done);
                }
            }
            Err(e) => tracing::warn!(error = %e, "file watch error"),
        })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let _watcher = watcher; // lives as long as this task
        while let Some(mut done) = raw_rx.recv().await {
            let deadline = tokio::time::Instant::now() + max_delay;
            loop {
                let wait = tokio::time::sleep(if done { settled } else { quiet });
                tokio::select! {
                    more = raw_rx.recv() => {
                        let Some(d) = more else { return };
                        done = d;
                        if tokio::time::Instant::now() >= deadline { break; }
                    }
                    _ = wait => break,
                }
            }
            match tx.try_send(()) {
                Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(())) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Closed(())) => return,
            }
        }
    });
    Ok(rx)
}

/// Whether an event finishes a change (`Some(true)`), may leave a file half-written
/// (`Some(false)`), or changes nothing (`None`: reads, opens, closes after reading).
fn finishes_change(kind: &notify::EventKind) -> Option<bool> {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(true),
        EventKind::Access(_) => None,
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
        | EventKind::Remove(_) => Some(true),
        _ => Some(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: r
  namespace: apps
spec:
  rules:
  - matches:
    - path:
        type: RegularExpression
        value: /v[0-9]+
    backendRefs:
    - name: svc
      port: 80
";

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn loads_multi_document_files_with_sources() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "a.yaml",
            &format!(
                "{ROUTE}---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc}}\nspec: {{ports: [{{port: 80}}]}}\n"
            ),
        );
        std::fs::create_dir(d.path().join("sub")).unwrap();
        write(
            d.path(),
            "sub/ns.yml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n",
        );
        write(d.path(), "notes.txt", "ignored");
        let mut p = FileProvider::new(d.path());
        let res = p.load().unwrap().clone();
        assert!(res.errors.is_empty(), "{:?}", res.errors);
        assert_eq!(res.len(), 3);
        let src = res.source("Service", "default", "svc").unwrap();
        assert_eq!(src.line, 16);
        assert!(src.file.ends_with("a.yaml"));
        assert!(res.namespaces.contains_key(&crate::Key::new("", "apps")));
    }

    #[test]
    fn a_bad_file_keeps_its_last_good_version_and_others_apply() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "route.yaml", ROUTE);
        let mut p = FileProvider::new(d.path());
        let res = p.load().unwrap();
        assert_eq!(res.http_routes.len(), 1);

        // Invalid YAML: reported with line; the route stays.
        write(d.path(), "route.yaml", &format!("{ROUTE}  - bad: [\n"));
        write(
            d.path(),
            "svc.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: other}\n",
        );
        let res = p.load().unwrap();
        assert_eq!(res.http_routes.len(), 1, "last good version kept");
        assert_eq!(res.services.len(), 1, "other files still apply");
        assert_eq!(res.errors.len(), 1);
        let e = &res.errors[0];
        assert!(e.source.file.ends_with("route.yaml"));
        assert!(e.source.line >= 16, "{e}");
        assert!(e.message.starts_with("invalid YAML"), "{e}");

        // A bad regular expression, reported at its line.
        write(
            d.path(),
            "route.yaml",
            &ROUTE.replace("/v[0-9]+", "/v[0-9+"),
        );
        let res = p.load().unwrap();
        assert_eq!(res.http_routes.len(), 1);
        let e = &res.errors[0];
        assert_eq!(e.source.line, 11, "{e}");
        assert_eq!(e.object, Some(ObjectRef::new("HTTPRoute", "apps", "r")));
        assert!(
            e.message
                .contains("spec.rules[0].matches[0].path.value: invalid regular expression"),
            "{e}"
        );

        // Schema error.
        write(
            d.path(),
            "route.yaml",
            &ROUTE.replace("port: 80", "port: 99999"),
        );
        let res = p.load().unwrap();
        let e = &res.errors[0];
        assert_eq!(e.source.line, 14, "{e}");
        assert!(
            e.message
                .contains("backendRefs[0].port: must be at most 65535"),
            "{e}"
        );

        // Unknown kind.
        write(
            d.path(),
            "route.yaml",
            &format!(
                "{ROUTE}---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: w}}\n"
            ),
        );
        let res = p.load().unwrap();
        let e = &res.errors[0];
        assert_eq!(e.source.line, 16, "{e}");
        assert!(e.message.contains("unknown kind \"Widget\""), "{e}");

        // Fixed: the new version applies, errors clear.
        write(d.path(), "route.yaml", &ROUTE.replace("svc", "svc2"));
        let res = p.load().unwrap();
        assert!(res.errors.is_empty());
        let r = res.http_routes.values().next().unwrap();
        let rule = &r.spec.rules.as_ref().unwrap()[0];
        assert_eq!(rule.backend_refs.as_ref().unwrap()[0].name, "svc2");

        // Deleted: gone.
        std::fs::remove_file(d.path().join("route.yaml")).unwrap();
        assert!(p.load().unwrap().http_routes.is_empty());
    }

    #[test]
    fn a_file_that_never_loaded_contributes_nothing_and_typed_errors_have_lines() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "svc.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports:\n  - port: eighty\n",
        );
        let mut p = FileProvider::new(d.path());
        let res = p.load().unwrap();
        assert!(res.services.is_empty());
        let e = &res.errors[0];
        assert_eq!(e.source.line, 7, "{e}");
        assert!(
            e.message.starts_with("spec.ports[0].port: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn duplicates_across_files_reject_the_later_file() {
        let d = tempfile::tempdir().unwrap();
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n";
        write(d.path(), "a.yaml", svc);
        write(
            d.path(),
            "b.yaml",
            &format!("{svc}---\napiVersion: v1\nkind: Service\nmetadata: {{name: t}}\n"),
        );
        let mut p = FileProvider::new(d.path());
        let res = p.load().unwrap();
        assert_eq!(res.services.len(), 1, "b.yaml is all-or-nothing");
        assert_eq!(res.errors.len(), 1);
        assert!(res.errors[0].source.file.ends_with("b.yaml"));
        assert!(
            res.errors[0].message.contains("first defined at"),
            "{}",
            res.errors[0]
        );
    }

    #[test]
    fn edits_patch_the_store_and_removing_the_first_definition_admits_the_duplicate() {
        let d = tempfile::tempdir().unwrap();
        let svc = |name: &str, port: u16| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports:\n  - port: {port}\n"
            )
        };
        let port_of = |res: &Resources, name: &str| {
            res.services
                .iter()
                .find(|(k, _)| k.name == name)
                .and_then(|(_, s)| s.spec.as_ref()?.ports.as_ref()?.first().map(|p| p.port))
        };
        write(d.path(), "a.yaml", &svc("s", 80));
        write(
            d.path(),
            "b.yaml",
            &format!("{}---\n{}", svc("s", 81), svc("t", 90)),
        );
        write(d.path(), "c.yaml", &svc("u", 70));
        let mut p = FileProvider::new(d.path());
        let res = p.load().unwrap();
        assert_eq!(port_of(res, "s"), Some(80));
        assert_eq!(port_of(res, "t"), None, "b.yaml is ignored as a whole");
        assert_eq!(res.errors.len(), 1);
        assert!(p.changed());

        // Nothing differs on disk: nothing changed.
        p.load().unwrap();
        assert!(!p.changed());

        // An edit to one file replaces exactly its objects.
        write(d.path(), "c.yaml", &svc("v", 71));
        p.load().unwrap();
        assert!(p.changed());
        let res = p.resources();
        assert_eq!(port_of(res, "u"), None);
        assert_eq!(port_of(res, "v"), Some(71));
        assert_eq!(port_of(res, "s"), Some(80));
        assert_eq!(res.source("Service", "default", "v").unwrap().line, 1);

        // A broken edit keeps the last good version, and says so.
        write(d.path(), "c.yaml", "kind: [");
        p.load().unwrap();
        assert!(p.changed());
        let res = p.resources();
        assert_eq!(port_of(res, "v"), Some(71));
        assert_eq!(res.errors.len(), 2);

        // Removing the first definition lets the other file apply.
        std::fs::remove_file(d.path().join("a.yaml")).unwrap();
        let res = p.load().unwrap();
        assert_eq!(port_of(res, "s"), Some(81));
        assert_eq!(port_of(res, "t"), Some(90));
        assert_eq!(res.errors.len(), 1, "{:?}", res.errors);

        // Removing a file removes its objects; the store equals a fresh load.
        std::fs::remove_file(d.path().join("c.yaml")).unwrap();
        let res = p.load().unwrap().clone();
        assert_eq!(port_of(&res, "v"), None);
        let fresh = FileProvider::new(d.path()).load().unwrap().clone();
        assert_eq!(res.len(), fresh.len());
        assert_eq!(res.sources, fresh.sources);
        assert!(res.errors.is_empty() && fresh.errors.is_empty());
    }

    #[tokio::test]
    async fn watch_reports_changes_once_settled() {
        let d = tempfile::tempdir().unwrap();
        let mut rx = watch(
            d.path(),
            Duration::from_millis(20),
            Duration::from_millis(5),
            Duration::from_millis(500),
        )
        .unwrap();
        for i in 0..5 {
            write(d.path(), &format!("{i}.yaml"), "a: 1\n");
        }
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a change notification")
            .unwrap();
    }

    #[tokio::test]
    async fn watch_waits_out_a_file_being_written_and_not_a_finished_one() {
        use std::io::Write;
        let d = tempfile::tempdir().unwrap();
        let quiet = Duration::from_secs(3);
        let mut rx = watch(d.path(), quiet, Duration::from_millis(5), quiet * 2).unwrap();
        // Half-written and still open: nothing before `quiet`.
        let mut f = std::fs::File::create(d.path().join("a.yaml")).unwrap();
        f.write_all(b"a: ").unwrap();
        f.flush().unwrap();
        let early = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await;
        assert!(early.is_err(), "reported while the file was being written");
        // Closed after writing: reported well before `quiet`.
        f.write_all(b"1\n").unwrap();
        drop(f);
        let waited = next_change(&mut rx).await;
        assert!(waited < Duration::from_secs(1), "{waited:?}");
        // A file renamed into place is finished too.
        write(d.path(), ".b.tmp", "b: 1\n");
        next_change(&mut rx).await;
        std::fs::rename(d.path().join(".b.tmp"), d.path().join("b.yaml")).unwrap();
        let waited = next_change(&mut rx).await;
        assert!(waited < Duration::from_secs(1), "{waited:?}");
    }

    /// Waits for the watcher's next report; returns how long that took.
    async fn next_change(rx: &mut tokio::sync::mpsc::Receiver<()>) -> Duration {
        let t = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a change notification")
            .unwrap();
        t.elapsed()
    }
}
