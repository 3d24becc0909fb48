//! A small SVG chart: a time axis (unix seconds, labelled in UTC), a linear value axis
//! with round ticks, and the marks the report draws (lines, steps, bands, interval bars,
//! dots, reference lines), each with a CSS class and an optional `<title>` tooltip. Pure:
//! numbers in, markup out; no script, no external resource.

use super::escape;
use std::fmt::Write;

/// The drawing area and the plot inside it, in SVG user units.
const WIDTH: f64 = 960.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;
/// Marks are clipped this far outside the plot, so a dot on its edge stays whole.
const CLIP_MARGIN: f64 = 7.0;

/// One chart: the domain of both axes and the marks drawn so far.
pub struct Chart {
    /// Unique within the page (the clip path's id).
    id: String,
    height: f64,
    t: (f64, f64),
    v: (f64, f64),
    format: fn(f64) -> String,
    marks: String,
    /// Drawn over the plot, unclipped (labels).
    labels: String,
}

impl Chart {
    /// A chart of `height` units over times `t` (unix seconds) and values `v`, whose
    /// value ticks are written by `format`. An empty or reversed range is widened.
    pub fn new(
        id: &str,
        height: f64,
        t: (f64, f64),
        v: (f64, f64),
        format: fn(f64) -> String,
    ) -> Chart {
        Chart {
            id: id.to_string(),
            height,
            t: widen(t),
            v: widen(v),
            format,
            marks: String::new(),
            labels: String::new(),
        }
    }

    /// The x coordinate of time `t`.
    pub fn x(&self, t: f64) -> f64 {
        LEFT + (t - self.t.0) / (self.t.1 - self.t.0) * (WIDTH - LEFT - RIGHT)
    }

    /// The y coordinate of value `v` (clamped a little outside the plot, so that a
    /// clipped mark still leaves it at the edge).
    pub fn y(&self, v: f64) -> f64 {
        let plot = self.height - TOP - BOTTOM;
        let y = TOP + (1.0 - (v - self.v.0) / (self.v.1 - self.v.0)) * plot;
        y.clamp(TOP - 4.0, self.height - BOTTOM + 4.0)
    }

    /// A polyline through `points` (time, value).
    pub fn line(&mut self, points: &[(f64, f64)], class: &str) {
        if points.is_empty() {
            return;
        }
        let pts = self.points(points);
        let _ = write!(self.marks, r#"<polyline class="{class}" points="{pts}"/>"#);
    }

    /// A step function: each value holds from its time until the next one, the last
    /// until `end`.
    pub fn steps(&mut self, points: &[(f64, f64)], end: f64, class: &str) {
        let mut stepped = Vec::with_capacity(points.len() * 2 + 1);
        for (i, &(t, v)) in points.iter().enumerate() {
            if i > 0 {
                stepped.push((t, points[i - 1].1));
            }
            stepped.push((t, v));
        }
        if let Some(&(_, v)) = points.last() {
            stepped.push((end, v));
        }
        self.line(&stepped, class);
    }

    /// A filled band between `lower` and `upper`, both given at the same times.
    pub fn band(&mut self, times: &[f64], lower: &[f64], upper: &[f64], class: &str) {
        if times.is_empty() || times.len() != lower.len() || times.len() != upper.len() {
            return;
        }
        let mut pts: Vec<(f64, f64)> = times.iter().copied().zip(upper.iter().copied()).collect();
        pts.extend(times.iter().rev().copied().zip(lower.iter().rev().copied()));
        let pts = self.points(&pts);
        let _ = write!(self.marks, r#"<polygon class="{class}" points="{pts}"/>"#);
    }

    /// A horizontal reference line at `v`, labelled at the right end.
    pub fn hline(&mut self, v: f64, class: &str, label: &str) {
        let y = self.y(v);
        let (x0, x1) = (LEFT, WIDTH - RIGHT);
        let _ = write!(
            self.marks,
            r#"<line class="{class}" x1="{x0:.1}" y1="{y:.1}" x2="{x1:.1}" y2="{y:.1}"/>"#
        );
        if !label.is_empty() {
            let _ = write!(
                self.labels,
                r#"<text class="ref" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                x1 - 2.0,
                y - 3.0,
                escape(label)
            );
        }
    }

    /// A vertical bar from `lo` to `hi` at time `t`, with a tick at `mid`.
    pub fn interval(&mut self, t: f64, lo: f64, mid: f64, hi: f64, class: &str, tip: &str) {
        let x = self.x(t);
        let (y0, y1, ym) = (self.y(lo), self.y(hi), self.y(mid));
        let _ = write!(
            self.marks,
            r#"<g class="{class}"><title>{}</title><line x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{y1:.1}"/><line x1="{:.1}" y1="{ym:.1}" x2="{:.1}" y2="{ym:.1}"/></g>"#,
            escape(tip),
            x - 3.0,
            x + 3.0
        );
    }

    /// A dot of radius `r` at (`t`, `v`).
    pub fn dot(&mut self, t: f64, v: f64, r: f64, class: &str, tip: &str) {
        let (x, y) = (self.x(t), self.y(v));
        let _ = write!(
            self.marks,
            r#"<circle class="{class}" cx="{x:.1}" cy="{y:.1}" r="{r}"><title>{}</title></circle>"#,
            escape(tip)
        );
    }

    /// A text label just above (`t`, `v`).
    /// Near the right edge the label ends at the point instead of starting there.
    pub fn label(&mut self, t: f64, v: f64, text: &str, class: &str) {
        let (x, y) = (self.x(t), self.y(v));
        let (x, anchor) = if x > WIDTH - RIGHT - 100.0 {
            (x - 8.0, "end")
        } else {
            (x + 4.0, "start")
        };
        let _ = write!(
            self.labels,
            r#"<text class="{class}" x="{x:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"#,
            (y - 6.0).max(TOP + 8.0),
            escape(text)
        );
    }

    /// The whole `<svg>`: grid, ticks, the marks clipped to the plot, the labels.
    pub fn finish(self, title: &str) -> String {
        let (h, id) = (self.height, &self.id);
        let (px0, px1, py0, py1) = (LEFT, WIDTH - RIGHT, TOP, h - BOTTOM);
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg class="chart" viewBox="0 0 {WIDTH} {h}" role="img" aria-label="{}"><title>{}</title><defs><clipPath id="{id}"><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"/></clipPath></defs>"#,
            escape(title),
            escape(title),
            px0 - CLIP_MARGIN,
            py0 - CLIP_MARGIN,
            px1 - px0 + 2.0 * CLIP_MARGIN,
            py1 - py0 + 2.0 * CLIP_MARGIN
        );
        for v in ticks(self.v.0, self.v.1, 5) {
            let y = self.y(v);
            let _ = write!(
                s,
                r#"<line class="grid" x1="{px0}" y1="{y:.1}" x2="{px1}" y2="{y:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                px0 - 6.0,
                y + 4.0,
                escape(&(self.format)(v))
            );
        }
        for t in time_ticks(self.t.0, self.t.1, 6) {
            let x = self.x(t);
            let _ = write!(
                s,
                r#"<line class="grid" x1="{x:.1}" y1="{py0}" x2="{x:.1}" y2="{py1}"/><text class="tick" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                py1 + 18.0,
                clock(t)
            );
        }
        let _ = write!(
            s,
            r#"<rect class="frame" x="{px0}" y="{py0}" width="{:.1}" height="{:.1}"/><g clip-path="url(#{id})">{}</g>{}</svg>"#,
            px1 - px0,
            py1 - py0,
            self.marks,
            self.labels
        );
        s
    }

    fn points(&self, points: &[(f64, f64)]) -> String {
        let mut s = String::new();
        for &(t, v) in points {
            let _ = write!(s, "{:.1},{:.1} ", self.x(t), self.y(v));
        }
        s.trim_end().to_string()
    }
}

/// `(lo, hi)` made usable as a domain: finite, and `hi > lo`.
fn widen((lo, hi): (f64, f64)) -> (f64, f64) {
    let lo = if lo.is_finite() { lo } else { 0.0 };
    let hi = if hi.is_finite() { hi } else { lo + 1.0 };
    if hi > lo {
        (lo, hi)
    } else {
        (lo, lo + lo.abs().max(1.0))
    }
}

/// Round tick values (1, 2 or 5 × 10^k apart) inside `[lo, hi]`, about `n` of them.
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let (lo, hi) = widen((lo, hi));
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Time ticks at round seconds (1, 2, 5, 10, 15, 30 s, 1, 2, 5, 10, 15, 30 min, 1, 2,
/// 6, 12 h, 1 day apart) inside `[lo, hi]`, about `n` of them.
pub fn time_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let (lo, hi) = widen((lo, hi));
    let raw = (hi - lo) / n.max(1) as f64;
    const STEPS: [f64; 17] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        21600.0, 43200.0, 86400.0,
    ];
    let step = STEPS
        .iter()
        .copied()
        .find(|s| *s >= raw)
        .unwrap_or_else(|| (raw / 86400.0).ceil() * 86400.0);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// `HH:MM:SS` (UTC) of unix seconds `t`.
pub fn clock(t: f64) -> String {
    let s = t.max(0.0) as u64 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside_the_range() {
        assert_eq!(ticks(0.0, 100.0, 5), [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        let t = ticks(0.0, 0.031, 5);
        assert_eq!(t.len(), 4, "{t:?}");
        assert!((t[1] - 0.01).abs() < 1e-12, "{t:?}");
        assert_eq!(ticks(-0.02, 0.03, 5).len(), 6);
        // A degenerate range still gives ticks.
        assert!(!ticks(5.0, 5.0, 5).is_empty());
        assert!(!ticks(f64::NAN, f64::INFINITY, 5).is_empty());
    }

    #[test]
    fn time_ticks_fall_on_round_seconds() {
        assert_eq!(
            time_ticks(100.0, 160.0, 6),
            [100.0, 110.0, 120.0, 130.0, 140.0, 150.0, 160.0]
        );
        let t = time_ticks(1_700_000_000.0, 1_700_003_600.0, 6);
        assert!(t.windows(2).all(|w| w[1] - w[0] == 600.0), "{t:?}");
        assert_eq!(clock(1_700_000_000.0), "22:13:20");
    }

    #[test]
    fn marks_land_in_the_plot_and_text_is_escaped() {
        let mut c = Chart::new("c1", 200.0, (0.0, 10.0), (0.0, 1.0), |v| format!("{v}"));
        assert_eq!(c.x(0.0), LEFT);
        assert_eq!(c.x(10.0), WIDTH - RIGHT);
        assert_eq!(c.y(1.0), TOP);
        assert_eq!(c.y(0.0), 200.0 - BOTTOM);
        // Far outside: held at the edge of the plot.
        assert_eq!(c.y(1e9), TOP - 4.0);
        c.dot(5.0, 0.5, 3.0, "pass", "a <b> & \"c\"");
        c.steps(&[(0.0, 0.1), (5.0, 0.5)], 10.0, "share");
        let (x0, x5, y1) = (c.x(0.0), c.x(5.0), c.y(0.1));
        let svg = c.finish("t<1>");
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>"), "{svg}");
        assert!(svg.contains("a &lt;b&gt; &amp; &quot;c&quot;"), "{svg}");
        assert!(svg.contains("<title>t&lt;1&gt;</title>"), "{svg}");
        // The step function: 0.1 until t = 5, then 0.5 until the end.
        assert!(
            svg.contains(&format!("{x0:.1},{y1:.1} {x5:.1},{y1:.1}")),
            "{svg}"
        );
        assert!(svg.contains(r#"clip-path="url(#c1)""#), "{svg}");
    }
}
