//! Small time charts as inline SVG: the status page draws them itself, so it
//! needs no script, no library and nothing fetched from elsewhere.
//!
//! One chart is a time axis over the page's window and a value axis from
//! zero; each series is a line through its points, and every point is a
//! circle with a `<title>` (the tooltip, and what a screen reader says).
//! A failed point is a cross instead, and its title says FAILED.

use std::fmt::Write as _;

use jiff::Timestamp;

use crate::report::html::escape;

/// One value at one time.
#[derive(Debug, Clone)]
pub struct Point {
    pub at: Timestamp,
    pub value: f64,
    /// What the tooltip says of it (escaped here).
    pub label: String,
    pub failed: bool,
}

#[derive(Debug, Clone)]
pub struct Series {
    /// Its name in the legend, and in the points' `data-series`.
    pub name: &'static str,
    /// A CSS colour; the legend names it too, so colour is not needed.
    pub colour: &'static str,
    pub points: Vec<Point>,
}

/// How the value axis is labelled.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    Bytes,
    Seconds,
    Count,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Bytes => crate::report::bytes_human(v.max(0.0) as u64),
            // Below a minute show_duration says "under 1s" or whole
            // seconds: too coarse for an axis of short runs.
            Unit::Seconds if v < 1.0 => format!("{:.2} s", v.max(0.0)),
            Unit::Seconds if v < 60.0 => format!("{v:.1} s"),
            Unit::Seconds => crate::time::show_seconds(v),
            Unit::Count => crate::model::show_number(v.round()),
        }
    }
}

const WIDTH: f64 = 520.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 30.0;

/// A chart over `from` .. `to`, with `id` on the `<svg>` (for tests and links).
pub fn chart(
    id: &str,
    title: &str,
    unit: Unit,
    series: &[Series],
    from: Timestamp,
    to: Timestamp,
) -> String {
    let max = series
        .iter()
        .flat_map(|s| &s.points)
        .map(|p| p.value)
        .fold(0.0_f64, f64::max);
    // An all-zero or empty chart still has an axis to draw.
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let span = to.duration_since(from).as_secs_f64().max(1.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |t: Timestamp| {
        let f = (t.duration_since(from).as_secs_f64() / span).clamp(0.0, 1.0);
        LEFT + f * plot_w
    };
    let y = |v: f64| TOP + plot_h - (v.max(0.0) / top).min(1.0) * plot_h;

    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg id=\"{}\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         role=\"img\" aria-label=\"{}\">",
        escape(id),
        escape(title)
    );
    let _ = write!(svg, "<title>{}</title>", escape(title));
    // Axes, and three value lines with their labels.
    let _ = write!(
        svg,
        "<g stroke=\"#999\" stroke-width=\"1\"><line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b}\"/>\
         <line x1=\"{LEFT}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\"/></g>",
        b = TOP + plot_h,
        r = WIDTH - RIGHT
    );
    svg.push_str("<g font-size=\"10\" fill=\"#444\">");
    for step in 0..=2 {
        let v = top * f64::from(step) / 2.0;
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT - 4.0,
            y(v) + 3.0,
            escape(&unit.show(v))
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{LEFT}\" y=\"{}\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
        HEIGHT - 8.0,
        from.strftime("%Y-%m-%d"),
        WIDTH - RIGHT,
        HEIGHT - 8.0,
        to.strftime("%Y-%m-%d")
    );
    svg.push_str("</g>");
    for s in series {
        let mut points: Vec<&Point> = s.points.iter().collect();
        points.sort_by_key(|p| p.at);
        if points.len() > 1 {
            let line: Vec<String> = points
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(p.at), y(p.value)))
                .collect();
            let _ = write!(
                svg,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
                s.colour,
                line.join(" ")
            );
        }
        for p in points {
            let tip = format!(
                "{}{}: {} at {}",
                if p.failed { "FAILED " } else { "" },
                s.name,
                unit.show(p.value),
                p.at.strftime("%Y-%m-%d %H:%M UTC")
            );
            let tip = if p.label.is_empty() {
                tip
            } else {
                format!("{tip} ({})", p.label)
            };
            let (cx, cy) = (x(p.at), y(p.value));
            if p.failed {
                let _ = write!(
                    svg,
                    "<path class=\"point failed\" data-series=\"{}\" d=\"M{:.1} {:.1}l8 8m0 -8l-8 8\" \
                     stroke=\"#b00020\" stroke-width=\"2\"><title>{}</title></path>",
                    escape(s.name),
                    cx - 4.0,
                    cy - 4.0,
                    escape(&tip)
                );
            } else {
                let _ = write!(
                    svg,
                    "<circle class=\"point\" data-series=\"{}\" cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"3\" \
                     fill=\"{}\"><title>{}</title></circle>",
                    escape(s.name),
                    s.colour,
                    escape(&tip)
                );
            }
        }
    }
    svg.push_str("</svg>");
    let legend: Vec<String> = series
        .iter()
        .map(|s| {
            format!(
                "<span style=\"color:{}\">&#9679;</span> {} ({} point{})",
                s.colour,
                escape(s.name),
                s.points.len(),
                if s.points.len() == 1 { "" } else { "s" }
            )
        })
        .collect();
    format!(
        "<figure>{svg}<figcaption>{}: {}</figcaption></figure>\n",
        escape(title),
        legend.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hours: i64) -> Timestamp {
        "2026-12-01T00:00:00Z".parse::<Timestamp>().unwrap()
            + jiff::SignedDuration::from_hours(hours)
    }

    #[test]
    fn each_point_is_drawn_once_and_its_text_is_escaped() {
        let series = Series {
            name: "stored",
            colour: "#1f5fa8",
            points: vec![
                Point {
                    at: at(0),
                    value: 1024.0,
                    label: "<b>".into(),
                    failed: false,
                },
                Point {
                    at: at(24),
                    value: 2048.0,
                    label: String::new(),
                    failed: false,
                },
                Point {
                    at: at(48),
                    value: 0.0,
                    label: String::new(),
                    failed: true,
                },
            ],
        };
        let svg = chart(
            "size-<x>",
            "size & more",
            Unit::Bytes,
            &[series],
            at(-24),
            at(72),
        );
        assert_eq!(svg.matches("<circle class=\"point\"").count(), 2);
        assert_eq!(svg.matches("class=\"point failed\"").count(), 1);
        assert!(svg.contains("id=\"size-&lt;x&gt;\""));
        assert!(svg.contains("(&lt;b&gt;)"));
        assert!(svg.contains("FAILED stored"));
        assert!(svg.contains("size &amp; more"));
        assert!(!svg.contains("<b>"));
        // Inside the plot, oldest left.
        assert!(svg.contains("cx=\"180.0\""), "{svg}");
    }

    #[test]
    fn an_empty_chart_still_draws_its_axes() {
        let svg = chart("d", "duration", Unit::Seconds, &[], at(0), at(0));
        assert!(svg.contains("<line"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }
}
