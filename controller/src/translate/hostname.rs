//! Hostnames: validation, listener/route intersection, specificity order, matching.

use std::cmp::Ordering;

/// Checks a Gateway API hostname: an RFC 1123 DNS name, optionally prefixed with one `*.`
/// wildcard label; no IP addresses, lower-case only. Returns why it is invalid.
pub fn validate(h: &str) -> Result<(), String> {
    if h.is_empty() {
        return Err("hostname is empty".into());
    }
    if h.len() > 253 {
        return Err(format!("hostname {h:?} is longer than 253 characters"));
    }
    let name = h.strip_prefix("*.").unwrap_or(h);
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("hostname {h:?} is an IP address"));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "hostname {h:?} is not a lower-case RFC 1123 name (optionally prefixed with \"*.\")"
            ));
        }
    }
    Ok(())
}

/// True for `*.suffix` patterns.
pub fn is_wildcard(h: &str) -> bool {
    h.starts_with("*.")
}

/// Whether a host (a concrete name) matches a pattern: equal, or `*.suffix` with at least one
/// label in front of the suffix. `*` matches everything.
pub fn matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty()),
        None => pattern == host,
    }
}

/// Whether every name matched by `inner` is also matched by `outer` (`None` = any host).
pub fn covers(outer: Option<&str>, inner: &str) -> bool {
    let Some(outer) = outer else { return true };
    if outer == inner {
        return true;
    }
    match inner.strip_prefix("*.") {
        // A wildcard is covered by a wildcard with an equal or shorter suffix.
        Some(isuf) => match outer.strip_prefix("*.") {
            Some(osuf) => isuf
                .strip_suffix(osuf)
                .is_some_and(|head| head.ends_with('.')),
            None => false,
        },
        None => matches(outer, inner),
    }
}

/// The hostname a route hostname yields on a listener: the more specific of the two when one
/// contains the other, `None` when they do not intersect. `listener` `None` = no listener
/// hostname (any host).
pub fn intersect(listener: Option<&str>, route: &str) -> Option<String> {
    let Some(l) = listener else {
        return Some(route.to_string());
    };
    if covers(Some(l), route) {
        Some(route.to_string())
    } else if covers(Some(route), l) {
        Some(l.to_string())
    } else {
        None
    }
}

/// The hostnames a route serves on a listener: each route hostname intersected with the
/// listener hostname, deduplicated, in route order; the listener hostname (or `*`) when the
/// route has none. Empty when nothing intersects.
pub fn effective(listener: Option<&str>, route_hostnames: &[String]) -> Vec<String> {
    if route_hostnames.is_empty() {
        return vec![listener.unwrap_or("*").to_string()];
    }
    let mut out: Vec<String> = Vec::new();
    for r in route_hostnames {
        if let Some(h) = intersect(listener, r)
            && !out.contains(&h)
        {
            out.push(h);
        }
    }
    out
}

/// Orders hostname patterns most specific first: exact names, then wildcards by decreasing
/// suffix length (number of characters), then `*` (and `None`, no hostname). Ties by name.
pub fn specificity_cmp(a: &str, b: &str) -> Ordering {
    fn key(h: &str) -> (u8, std::cmp::Reverse<usize>) {
        if h == "*" || h.is_empty() {
            (2, std::cmp::Reverse(0))
        } else if let Some(s) = h.strip_prefix("*.") {
            (1, std::cmp::Reverse(s.len()))
        } else {
            (0, std::cmp::Reverse(h.len()))
        }
    }
    key(a).cmp(&key(b)).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(validate("foo.example.com").is_ok());
        assert!(validate("*.example.com").is_ok());
        assert!(validate("localhost").is_ok());
        assert!(validate("Foo.com").is_err());
        assert!(validate("*").is_err());
        assert!(validate("foo.*.com").is_err());
        assert!(validate("1.2.3.4").is_err());
        assert!(validate("-a.com").is_err());
        assert!(validate("a..com").is_err());
        assert!(validate("").is_err());
    }

    #[test]
    fn wildcard_matching() {
        assert!(matches("*.example.com", "foo.example.com"));
        assert!(matches("*.example.com", "foo.bar.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", "fooexample.com"));
        assert!(matches("*", "anything"));
        assert!(matches("a.com", "a.com"));
        assert!(!matches("a.com", "b.a.com"));
    }

    #[test]
    fn intersection_follows_the_spec_examples() {
        // Listener test.example.com: route test.example.com or *.example.com.
        assert_eq!(
            intersect(Some("test.example.com"), "test.example.com").as_deref(),
            Some("test.example.com")
        );
        assert_eq!(
            intersect(Some("test.example.com"), "*.example.com").as_deref(),
            Some("test.example.com")
        );
        assert_eq!(
            intersect(Some("test.example.com"), "other.example.com"),
            None
        );
        // Listener *.example.com.
        for h in ["*.example.com", "test.example.com", "foo.test.example.com"] {
            assert_eq!(intersect(Some("*.example.com"), h).as_deref(), Some(h));
        }
        assert_eq!(intersect(Some("*.example.com"), "example.com"), None);
        assert_eq!(intersect(Some("*.example.com"), "test.example.net"), None);
        // Wildcards narrow to the more specific one, in either direction.
        assert_eq!(
            intersect(Some("*.foo.example.com"), "*.example.com").as_deref(),
            Some("*.foo.example.com")
        );
        assert_eq!(
            intersect(Some("*.example.com"), "*.foo.example.com").as_deref(),
            Some("*.foo.example.com")
        );
        assert_eq!(intersect(Some("*.wildcard.io"), "wildcard.io"), None);
        assert_eq!(intersect(None, "a.com").as_deref(), Some("a.com"));
    }

    #[test]
    fn effective_hostnames() {
        let hs: Vec<String> = ["non.matching.com", "*.specific.com", "very.specific.com"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            effective(Some("very.specific.com"), &hs),
            vec!["very.specific.com"]
        );
        assert_eq!(effective(Some("*.io"), &hs), Vec::<String>::new());
        assert_eq!(effective(None, &[]), vec!["*"]);
        assert_eq!(effective(Some("*.a.com"), &[]), vec!["*.a.com"]);
    }

    #[test]
    fn covering() {
        assert!(covers(None, "*.a.com"));
        assert!(covers(Some("*.a.com"), "*.b.a.com"));
        assert!(covers(Some("*.a.com"), "x.a.com"));
        assert!(!covers(Some("*.b.a.com"), "*.a.com"));
        assert!(!covers(Some("x.a.com"), "*.a.com"));
        assert!(!covers(Some("*.a.com"), "*.ba.com"));
    }

    #[test]
    fn specificity_order() {
        let mut v = vec![
            "*",
            "*.example.com",
            "a.example.com",
            "*.foo.example.com",
            "example.com",
        ];
        v.sort_by(|a, b| specificity_cmp(a, b));
        assert_eq!(
            v,
            vec![
                "a.example.com",
                "example.com",
                "*.foo.example.com",
                "*.example.com",
                "*"
            ]
        );
    }
}
