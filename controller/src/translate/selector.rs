//! Kubernetes label selectors (matchLabels and matchExpressions), as Gateway API uses them
//! for namespaces.

use std::collections::BTreeMap;

/// A label selector in a form independent of the generated type it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// `matchLabels`.
    pub labels: BTreeMap<String, String>,
    /// `matchExpressions`: key, operator, values.
    pub expressions: Vec<(String, String, Vec<String>)>,
}

impl Selector {
    /// Whether a label set satisfies every requirement. An unknown operator matches nothing.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|(k, op, values)| {
                let have = labels.get(k);
                match op.as_str() {
                    "In" => have.is_some_and(|v| values.contains(v)),
                    "NotIn" => have.is_none_or(|v| !values.contains(v)),
                    "Exists" => have.is_some(),
                    "DoesNotExist" => have.is_none(),
                    _ => false,
                }
            })
    }

    /// Why the selector is malformed, if it is.
    pub fn problem(&self) -> Option<String> {
        self.expressions
            .iter()
            .find_map(|(k, op, values)| match op.as_str() {
                "In" | "NotIn" if values.is_empty() => Some(format!(
                    "selector requirement on {k:?} with operator {op} needs values"
                )),
                "Exists" | "DoesNotExist" if !values.is_empty() => Some(format!(
                    "selector requirement on {k:?} with operator {op} must not have values"
                )),
                "In" | "NotIn" | "Exists" | "DoesNotExist" => None,
                _ => Some(format!(
                    "selector operator {op:?} is not one of In, NotIn, Exists, DoesNotExist"
                )),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn match_labels_and_expressions() {
        let s = Selector {
            labels: labels(&[("team", "a")]),
            expressions: vec![
                (
                    "env".into(),
                    "In".into(),
                    vec!["prod".into(), "stage".into()],
                ),
                ("legacy".into(), "DoesNotExist".into(), vec![]),
            ],
        };
        assert!(s.matches(&labels(&[("team", "a"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("team", "a"), ("env", "dev")])));
        assert!(!s.matches(&labels(&[("team", "a"), ("env", "prod"), ("legacy", "")])));
        assert!(!s.matches(&labels(&[("env", "prod")])));
        assert!(Selector::default().matches(&labels(&[])));
        let not_in = Selector {
            expressions: vec![("env".into(), "NotIn".into(), vec!["prod".into()])],
            ..Default::default()
        };
        assert!(not_in.matches(&labels(&[])));
        assert!(!not_in.matches(&labels(&[("env", "prod")])));
        let bad = Selector {
            expressions: vec![("env".into(), "Like".into(), vec![])],
            ..Default::default()
        };
        assert!(!bad.matches(&labels(&[("env", "x")])));
        assert!(bad.problem().unwrap().contains("Like"));
    }
}
