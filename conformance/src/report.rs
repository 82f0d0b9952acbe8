//! Upstream's ConformanceReport (`gateway.networking.k8s.io/v1`, kind ConformanceReport) and the
//! human summary printed at the end of a run.

use crate::cases::{Claims, Profile, TestCase};
use serde::Serialize;
use std::collections::BTreeSet;

/// Outcome of one test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every step held.
    Passed,
    /// A step failed: why.
    Failed(String),
    /// Not run on purpose (not selected, listed in skipTests, or a step the runner cannot
    /// evaluate): why.
    Skipped(String),
    /// A needed feature is not claimed (not counted, as upstream).
    NotSupported(String),
}

impl Outcome {
    /// Short label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Passed => "pass",
            Outcome::Failed(_) => "FAIL",
            Outcome::Skipped(_) => "skip",
            Outcome::NotSupported(_) => "unsupported",
        }
    }
}

/// A test and its outcome.
#[derive(Debug, Clone)]
pub struct TestResult {
    /// The test.
    pub test: TestCase,
    /// Outcome.
    pub outcome: Outcome,
    /// Seconds spent.
    pub seconds: f64,
}

/// `implementation:`.
#[derive(Debug, Clone, Serialize)]
pub struct Implementation {
    /// Contact URLs.
    pub contact: Vec<String>,
    /// Organization.
    pub organization: String,
    /// Project.
    pub project: String,
    /// Project URL.
    pub url: String,
    /// Version.
    pub version: String,
}

/// Statistics of a support level.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Statistics {
    /// Failed tests.
    #[serde(rename = "Failed")]
    pub failed: u32,
    /// Passed tests.
    #[serde(rename = "Passed")]
    pub passed: u32,
    /// Skipped tests.
    #[serde(rename = "Skipped")]
    pub skipped: u32,
}

/// Core or extended status.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `success`, `partial` or `failure`.
    pub result: String,
    /// Counts.
    pub statistics: Statistics,
    /// Skipped test names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_tests: Vec<String>,
    /// Failed test names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_tests: Vec<String>,
    /// Extended only: claimed features of the profile.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub supported_features: Vec<String>,
    /// Extended only: unclaimed features of the profile.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unsupported_features: Vec<String>,
}

/// One profile's report.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileReport {
    /// Core status.
    pub core: Status,
    /// Extended status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extended: Option<Status>,
    /// Profile name.
    pub name: String,
    /// One-line summary.
    pub summary: String,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConformanceReport {
    /// `gateway.networking.k8s.io/v1`.
    pub api_version: String,
    /// RFC 3339 date.
    pub date: String,
    /// `experimental`.
    #[serde(rename = "gatewayAPIChannel")]
    pub gateway_api_channel: String,
    /// `v1.6.1`.
    #[serde(rename = "gatewayAPIVersion")]
    pub gateway_api_version: String,
    /// Implementation.
    pub implementation: Implementation,
    /// `ConformanceReport`.
    pub kind: String,
    /// `default`.
    pub mode: String,
    /// Profiles whose core features are claimed.
    pub profiles: Vec<ProfileReport>,
    /// Provisional tests that passed.
    #[serde(
        rename = "succeededProvisionalTests",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub succeeded_provisional_tests: Vec<String>,
}

fn result_of(s: &Status) -> String {
    if s.statistics.failed > 0 {
        "failure"
    } else if s.statistics.skipped > 0 {
        "partial"
    } else {
        "success"
    }
    .to_string()
}

fn summary_of(s: &Status) -> String {
    match s.result.as_str() {
        "failure" => format!("failed with {} test failures", s.statistics.failed),
        "partial" => format!(
            "partially succeeded with {} test skips",
            s.statistics.skipped
        ),
        _ => "succeeded".to_string(),
    }
}

/// The current time as RFC 3339 UTC in whole seconds (`metav1.Time` precision).
pub(crate) fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Builds the report from results (tests sorted by name, as upstream).
pub fn build(
    results: &[TestResult],
    profiles: &[Profile],
    claims: &Claims,
    version: &str,
) -> ConformanceReport {
    let mut sorted: Vec<&TestResult> = results.iter().collect();
    sorted.sort_by(|a, b| a.test.name.cmp(&b.test.name));
    let mut reports = Vec::new();
    for p in profiles.iter().filter(|p| claims.claims_profile(p)) {
        let mut core = Status::default();
        let mut ext = Status::default();
        let mut any_ext = false;
        for r in &sorted {
            if !r.test.profiles.iter().any(|n| n == p.name) {
                continue;
            }
            let extended = p.test_is_extended(&r.test);
            let s = if extended { &mut ext } else { &mut core };
            match &r.outcome {
                Outcome::Passed => s.statistics.passed += 1,
                Outcome::Failed(_) => {
                    s.statistics.failed += 1;
                    s.failed_tests.push(r.test.name.clone());
                }
                Outcome::Skipped(_) => {
                    s.statistics.skipped += 1;
                    s.skipped_tests.push(r.test.name.clone());
                }
                Outcome::NotSupported(_) => continue,
            }
            any_ext |= extended;
        }
        core.result = result_of(&core);
        ext.result = result_of(&ext);
        let supported: Vec<String> = p
            .extended
            .iter()
            .filter(|f| claims.supported_features.contains(**f))
            .map(|f| f.to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let unsupported: Vec<String> = p
            .extended
            .iter()
            .filter(|f| !claims.supported_features.contains(**f))
            .map(|f| f.to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        ext.supported_features = supported;
        ext.unsupported_features = unsupported;
        let mut summary = format!("Core tests {}", summary_of(&core));
        let extended = (any_ext || !ext.supported_features.is_empty()).then_some(ext);
        if let Some(e) = &extended {
            summary.push_str(&format!(". Extended tests {}", summary_of(e)));
        }
        summary.push('.');
        reports.push(ProfileReport {
            core,
            extended,
            name: p.name.to_string(),
            summary,
        });
    }
    let succeeded_provisional_tests = sorted
        .iter()
        .filter(|r| r.test.provisional && r.outcome == Outcome::Passed)
        .map(|r| r.test.name.clone())
        .collect();
    ConformanceReport {
        api_version: "gateway.networking.k8s.io/v1".into(),
        date: now_rfc3339(),
        gateway_api_channel: "experimental".into(),
        gateway_api_version: "v1.6.1".into(),
        implementation: Implementation {
            contact: vec!["https://github.com/sluice-dev/sluice/issues".into()],
            organization: "sluice-dev".into(),
            project: "sluice".into(),
            url: "https://github.com/sluice-dev/sluice".into(),
            version: version.to_string(),
        },
        kind: "ConformanceReport".into(),
        mode: "default".into(),
        profiles: reports,
        succeeded_provisional_tests,
    }
}

/// The human summary: per profile, core passed/total and extended features claimed/passing.
pub fn summary_table(report: &ConformanceReport, results: &[TestResult]) -> String {
    let mut out = String::from(
        "\nprofile        core (passed/run)   extended tests (passed/run)   extended features (passing/claimed)\n",
    );
    for p in &report.profiles {
        let core_run =
            p.core.statistics.passed + p.core.statistics.failed + p.core.statistics.skipped;
        let (ep, er, claimed, passing) = match &p.extended {
            Some(e) => {
                let failing: BTreeSet<&str> = results
                    .iter()
                    .filter(|r| matches!(r.outcome, Outcome::Failed(_) | Outcome::Skipped(_)))
                    .flat_map(|r| r.test.features.iter().map(String::as_str))
                    .collect();
                let passing = e
                    .supported_features
                    .iter()
                    .filter(|f| !failing.contains(f.as_str()))
                    .count();
                (
                    e.statistics.passed,
                    e.statistics.passed + e.statistics.failed + e.statistics.skipped,
                    e.supported_features.len(),
                    passing,
                )
            }
            None => (0, 0, 0, 0),
        };
        out.push_str(&format!(
            "{:<14} {:>3}/{:<3} {:<11} {:>3}/{:<3}                      {:>3}/{:<3}\n",
            p.name, p.core.statistics.passed, core_run, p.core.result, ep, er, passing, claimed
        ));
    }
    out
}
