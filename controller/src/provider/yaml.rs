//! Multi-document YAML to JSON values, remembering the line of every field so that errors
//! found later (schema, regex, duplicates) can point at `file:line`.

use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One YAML document.
#[derive(Debug, Clone)]
pub struct Document {
    /// Its content (YAML 1.2 core schema scalars).
    pub value: Value,
    /// 1-based line where the document's content starts.
    pub line: u32,
    /// 1-based line of each field and sequence item, keyed by its path as
    /// `serde_path_to_error` prints it (`spec.rules[0].matches[1].path`).
    lines: HashMap<String, u32>,
}

impl Document {
    /// The line of `path`, or of its closest ancestor that has one, or of the document.
    pub fn line_of(&self, path: &str) -> u32 {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return *l;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.line,
            }
        }
    }
}

/// A syntax error with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} column {column}: {message}")]
pub struct SyntaxError {
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
    /// What the parser says.
    pub message: String,
}

enum Frame {
    Seq(Vec<Value>, String),
    Map(Map<String, Value>, String, Option<String>),
}

#[derive(Default)]
struct Builder {
    docs: Vec<Document>,
    stack: Vec<Frame>,
    lines: HashMap<String, u32>,
    anchors: HashMap<usize, Value>,
    anchor_stack: Vec<usize>,
    doc_line: Option<u32>,
    error: Option<SyntaxError>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
fn plain_scalar(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let int = |digits: &str, radix| i64::from_str_radix(digits, radix).ok();
    let (sign, body) = match s.strip_prefix('-') {
        Some(b) => (-1, b),
        None => (1, s.strip_prefix('+').unwrap_or(s)),
    };
    let parsed = if let Some(h) = body.strip_prefix("0x") {
        int(h, 16)
    } else if let Some(o) = body.strip_prefix("0o") {
        int(o, 8)
    } else if !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit()) {
        int(body, 10)
    } else {
        None
    };
    if let Some(i) = parsed {
        return Value::Number((sign * i).into());
    }
    let lower = body.to_ascii_lowercase();
    if lower == ".inf" || lower == ".nan" {
        return Value::String(s.to_string());
    }
    let looks_float = body.bytes().any(|b| b.is_ascii_digit())
        && body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if looks_float
        && let Ok(f) = s.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(s.to_string())
}

impl Builder {
    fn path_of_next(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Seq(items, path)) => Some(format!("{path}[{}]", items.len())),
            Some(Frame::Map(_, path, Some(key))) => Some(join(path, key)),
            Some(Frame::Map(_, _, None)) => None, // the next scalar is a key
        }
    }

    fn push_value(&mut self, v: Value, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, v.clone());
        }
        match self.stack.last_mut() {
            None => {
                let line = self.doc_line.take().unwrap_or(1);
                let lines = std::mem::take(&mut self.lines);
                self.docs.push(Document {
                    value: v,
                    line,
                    lines,
                });
            }
            Some(Frame::Seq(items, _)) => items.push(v),
            Some(Frame::Map(map, _, key)) => {
                if let Some(k) = key.take() {
                    map.insert(k, v);
                }
            }
        }
    }

    fn fail(&mut self, mark: Marker, message: String) {
        if self.error.is_none() {
            self.error = Some(SyntaxError {
                line: mark.line() as u32,
                column: mark.col() as u32 + 1,
                message,
            });
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line() as u32;
        match ev {
            Event::DocumentStart => {
                self.doc_line = None;
                self.lines.clear();
            }
            Event::DocumentEnd => {
                if self.doc_line.is_some() {
                    // A document with only comments or `---`: nothing to keep.
                    self.doc_line = None;
                }
            }
            Event::Scalar(s, style, anchor, _tag) => {
                if self.stack.is_empty() {
                    self.doc_line = Some(line);
                }
                match self.path_of_next() {
                    None => {
                        // A mapping key.
                        if let Some(Frame::Map(map, path, key)) = self.stack.last_mut() {
                            if map.contains_key(&s) {
                                let msg = format!("duplicate key {:?} in {}", s, {
                                    if path.is_empty() { "document" } else { path }
                                });
                                self.fail(mark, msg);
                                return;
                            }
                            self.lines.insert(join(path, &s), line);
                            *key = Some(s);
                        }
                    }
                    Some(path) => {
                        self.lines.entry(path).or_insert(line);
                        let v = if style == TScalarStyle::Plain {
                            plain_scalar(&s)
                        } else {
                            Value::String(s)
                        };
                        self.push_value(v, anchor);
                    }
                }
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if self.stack.is_empty() {
                    self.doc_line = Some(line);
                }
                let Some(path) = self.path_of_next() else {
                    self.fail(mark, "a mapping key must be a plain value".into());
                    return;
                };
                self.lines.entry(path.clone()).or_insert(line);
                self.anchor_stack.push(anchor);
                if matches!(ev, Event::SequenceStart(..)) {
                    self.stack.push(Frame::Seq(Vec::new(), path));
                } else {
                    self.stack.push(Frame::Map(Map::new(), path, None));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let v = match self.stack.pop() {
                    Some(Frame::Seq(items, _)) => Value::Array(items),
                    Some(Frame::Map(map, _, _)) => Value::Object(map),
                    None => return,
                };
                let anchor = self.anchor_stack.pop().unwrap_or(0);
                self.push_value(v, anchor);
            }
            Event::Alias(id) => {
                if self.path_of_next().is_none() {
                    self.fail(mark, "an alias cannot be a mapping key".into());
                    return;
                }
                match self.anchors.get(&id).cloned() {
                    Some(v) => self.push_value(v, 0),
                    None => self.fail(mark, "unknown alias".into()),
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
        }
    }
}

/// Parses every document of a YAML stream. Empty documents are dropped.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, SyntaxError> {
    let mut b = Builder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut b, true) {
        let m = e.marker();
        return Err(SyntaxError {
            line: m.line() as u32,
            column: m.col() as u32 + 1,
            message: e.info().to_string(),
        });
    }
    if let Some(e) = b.error {
        return Err(e);
    }
    Ok(b.docs.into_iter().filter(|d| !d.value.is_null()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_values_and_lines() {
        let text = "# comment\napiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n  - port: 80\n    name: http\n---\n---\nkind: X\nflag: true\nnum: 1.5\nnull: ~\nq: \"8080\"\nhex: 0x10\n";
        let docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].line, 2);
        assert_eq!(docs[0].value["spec"]["ports"][0]["port"], json!(80));
        assert_eq!(docs[0].line_of("spec.ports[0].port"), 8);
        assert_eq!(docs[0].line_of("spec.ports[0].name"), 9);
        assert_eq!(docs[0].line_of("spec.ports[0].missing.deeper"), 8);
        assert_eq!(docs[0].line_of("metadata.name"), 5);
        assert_eq!(docs[1].line, 12);
        assert_eq!(docs[1].value["flag"], json!(true));
        assert_eq!(docs[1].value["num"], json!(1.5));
        assert_eq!(docs[1].value["null"], json!(null));
        assert_eq!(docs[1].value["q"], json!("8080"));
        assert_eq!(docs[1].value["hex"], json!(16));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse_documents("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(e.line >= 2, "{e}");
        let e = parse_documents("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("duplicate key \"a\""), "{e}");
    }

    #[test]
    fn anchors_and_aliases() {
        let docs = parse_documents("base: &b {x: 1}\ncopy: *b\n").unwrap();
        assert_eq!(docs[0].value["copy"], json!({"x": 1}));
    }

    #[test]
    fn plain_scalars() {
        assert_eq!(plain_scalar("-12"), json!(-12));
        assert_eq!(plain_scalar("1e3"), json!(1000.0));
        assert_eq!(plain_scalar("v1.2"), json!("v1.2"));
        assert_eq!(plain_scalar("1.2.3"), json!("1.2.3"));
        assert_eq!(plain_scalar("/path"), json!("/path"));
        assert_eq!(plain_scalar("yes"), json!("yes"));
    }
}
