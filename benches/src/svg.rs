//! Hand-written SVG bar charts: one group of horizontal bars per scenario, each group scaled to
//! its own largest value (scenarios have different units and magnitudes), the value printed
//! next to each bar.

use std::fmt::Write as _;

/// One bar: stacked segments (drawn left to right) and the text printed after it.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Series name (colour key), e.g. the peer.
    pub series: String,
    /// Segment lengths in the group's unit; the bar's length is their sum.
    pub segments: Vec<f64>,
    /// Text after the bar.
    pub label: String,
}

/// A labelled group of bars.
#[derive(Debug, Clone)]
pub struct Group {
    /// Group label (scenario).
    pub label: String,
    /// Its bars.
    pub bars: Vec<Bar>,
}

/// Colour of a series.
fn color(series: &str) -> &'static str {
    match series {
        "sluice" => "#1f77b4",
        "nginx" => "#2ca02c",
        "haproxy" => "#d62728",
        _ => "#7f7f7f",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const LABEL_W: f64 = 250.0;
const BAR_W: f64 = 380.0;
const VALUE_W: f64 = 170.0;
const BAR_H: f64 = 14.0;
const GAP: f64 = 12.0;

/// Renders a chart. `segment_names` names the stacked segments (legend), when there are
/// several.
pub fn bar_chart(title: &str, subtitle: &str, groups: &[Group], segment_names: &[&str]) -> String {
    let mut series: Vec<String> = vec![];
    for g in groups {
        for b in &g.bars {
            if !series.contains(&b.series) {
                series.push(b.series.clone());
            }
        }
    }
    let width = LABEL_W + BAR_W + VALUE_W + 20.0;
    let top = 70.0;
    let body: f64 = groups
        .iter()
        .map(|g| g.bars.len().max(1) as f64 * (BAR_H + 2.0) + GAP)
        .sum();
    let height = top + body + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r##"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="15" font-weight="bold">{}</text><text x="10" y="38" fill="#555">{}</text>"##,
        esc(title),
        esc(subtitle)
    );
    // Legend.
    let mut x = 10.0;
    for name in &series {
        let _ = write!(
            s,
            r#"<rect x="{x}" y="48" width="12" height="12" fill="{}"/><text x="{}" y="58">{}</text>"#,
            color(name),
            x + 16.0,
            esc(name)
        );
        x += 30.0 + 7.0 * name.len() as f64;
    }
    if segment_names.len() > 1 {
        for (k, name) in segment_names.iter().enumerate() {
            let _ = write!(
                s,
                r##"<rect x="{x}" y="48" width="12" height="12" fill="#444" fill-opacity="{}"/><text x="{}" y="58">{}</text>"##,
                opacity(k),
                x + 16.0,
                esc(name)
            );
            x += 30.0 + 7.0 * name.len() as f64;
        }
    }
    s.push('\n');
    let mut y = top;
    for g in groups {
        let max = g
            .bars
            .iter()
            .map(|b| b.segments.iter().sum::<f64>())
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let gh = g.bars.len().max(1) as f64 * (BAR_H + 2.0);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            LABEL_W - 8.0,
            y + gh / 2.0 + 4.0,
            esc(&g.label)
        );
        for b in &g.bars {
            let mut bx = LABEL_W;
            for (k, v) in b.segments.iter().enumerate() {
                if !v.is_finite() || max <= 0.0 {
                    continue;
                }
                let w = v / max * BAR_W;
                let _ = write!(
                    s,
                    r#"<rect x="{bx:.1}" y="{y:.1}" width="{w:.1}" height="{BAR_H}" fill="{}" fill-opacity="{}"/>"#,
                    color(&b.series),
                    opacity(k)
                );
                bx += w;
            }
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                bx + 4.0,
                y + BAR_H - 3.0,
                esc(&b.label)
            );
            y += BAR_H + 2.0;
        }
        if g.bars.is_empty() {
            y += BAR_H + 2.0;
        }
        y += GAP;
        let _ = writeln!(
            s,
            r##"<line x1="10" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            width - 10.0,
            y - GAP / 2.0,
            y - GAP / 2.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn opacity(segment: usize) -> f64 {
    if segment == 0 { 1.0 } else { 0.45 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_in_their_group() {
        let g = vec![Group {
            label: "h1 <64>".into(),
            bars: vec![
                Bar {
                    series: "sluice".into(),
                    segments: vec![2.0, 2.0],
                    label: "4".into(),
                },
                Bar {
                    series: "nginx".into(),
                    segments: vec![2.0],
                    label: "2".into(),
                },
            ],
        }];
        let svg = bar_chart("t", "s", &g, &["user", "system"]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        // The full bar spans BAR_W (two halves), the half-size bar half of it.
        assert_eq!(svg.matches(r#"width="190.0""#).count(), 3);
        assert!(svg.contains("h1 &lt;64&gt;"), "labels are escaped");
        assert!(svg.contains(">user<") && svg.contains(">system<"));
    }
}
