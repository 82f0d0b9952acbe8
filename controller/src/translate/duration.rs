//! Gateway API durations (GEP-2257): one to four `<1-5 digits><h|m|s|ms>` parts, e.g. `1s`,
//! `500ms`, `1m30s`, `0s`.

/// Parses a duration into milliseconds; the error says what is wrong with the text.
pub fn parse_ms(text: &str) -> Result<u64, String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid duration {text:?}: {why} (expected e.g. \"1s\", \"500ms\", \"1m30s\")"
        ))
    };
    if text.is_empty() {
        return bad("empty");
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut parts = 0;
    let mut total: u64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &text[start..i];
        if digits.is_empty() {
            return bad("a number must come before each unit");
        }
        if digits.len() > 5 {
            return bad("at most 5 digits per part");
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        let unit_ms = if text[i..].starts_with("ms") {
            i += 2;
            1
        } else if text[i..].starts_with('h') {
            i += 1;
            3_600_000
        } else if text[i..].starts_with('m') {
            i += 1;
            60_000
        } else if text[i..].starts_with('s') {
            i += 1;
            1_000
        } else {
            return bad("unit must be h, m, s or ms");
        };
        parts += 1;
        if parts > 4 {
            return bad("at most 4 parts");
        }
        total += n * unit_ms;
    }
    Ok(total)
}

/// A timeout: `Ok(None)` for `0s` (disabled), otherwise the milliseconds.
pub fn parse_timeout_ms(text: &str) -> Result<Option<u64>, String> {
    parse_ms(text).map(|ms| (ms > 0).then_some(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_durations() {
        assert_eq!(parse_ms("1s"), Ok(1000));
        assert_eq!(parse_ms("500ms"), Ok(500));
        assert_eq!(parse_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_ms("1h2m3s4ms"), Ok(3_723_004));
        assert_eq!(parse_ms("0s"), Ok(0));
        assert_eq!(parse_ms("99999ms"), Ok(99_999));
        assert_eq!(parse_timeout_ms("0s"), Ok(None));
        assert_eq!(parse_timeout_ms("10s"), Ok(Some(10_000)));
    }

    #[test]
    fn invalid_durations() {
        for t in [
            "",
            "1",
            "s",
            "1.5s",
            "100000s",
            "1d",
            "-1s",
            "1s2s3s4s5s",
            "1 s",
            "1us",
        ] {
            let e = parse_ms(t).unwrap_err();
            assert!(e.contains("invalid duration"), "{t}: {e}");
        }
    }
}
