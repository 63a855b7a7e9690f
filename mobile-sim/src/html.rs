//! The HTML report: one self-contained page (inline CSS and SVG, no scripts, nothing fetched)
//! with the summary, connections over time, bytes per second over time, and the handshake
//! latency distribution. The charts come from the samples taken once a second during the run.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::report::{group, Report};

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 280.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 40.0;

pub fn render(report: &Report) -> String {
    let mut o = String::new();
    let title = format!("mobile-sim {}: {} devices", report.mode, group(report.devices));
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>{}</style></head><body>\n",
        escape(&title),
        CSS
    );
    let _ = writeln!(o, "<h1>{}</h1>", escape(&title));
    let _ = writeln!(o, "<pre class=\"summary\">{}</pre>", escape(&report.to_text()));

    let t: Vec<f64> = report.timeline.iter().map(|s| s.t).collect();
    let connected: Vec<f64> = report.timeline.iter().map(|s| s.connected as f64).collect();
    let failing: Vec<f64> = report.timeline.iter().map(|s| s.failing as f64).collect();
    let _ = writeln!(o, "<h2>Connections over time</h2>");
    o.push_str(&line_chart(
        &t,
        &[("connected", "#1f77b4", &connected), ("failing", "#d62728", &failing)],
        "seconds",
        "connections",
    ));
    let sent: Vec<f64> = report.timeline.iter().map(|s| s.sent_per_s).collect();
    let durable: Vec<f64> = report.timeline.iter().map(|s| s.durable_per_s).collect();
    let _ = writeln!(o, "<h2>Bytes per second</h2>");
    o.push_str(&line_chart(
        &t,
        &[("sent", "#2ca02c", &sent), ("confirmed durable", "#9467bd", &durable)],
        "seconds",
        "bytes / s",
    ));
    let _ = writeln!(o, "<h2>Handshake latency (TCP connect to WebSocket upgraded)</h2>");
    match &report.histogram {
        Some(h) if !h.is_empty() => o.push_str(&latency_chart(h)),
        _ => o.push_str("<p>No handshake completed.</p>\n"),
    }
    o.push_str("</body></html>\n");
    o
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
pre.summary{background:#f6f6f6;padding:1em;overflow-x:auto}\
svg{background:#fff;border:1px solid #ddd;margin-bottom:1em}\
svg text{font-size:12px;fill:#444}.legend text{font-size:13px}";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A round step near `range / 5`.
fn nice_step(range: f64) -> f64 {
    if range <= 0.0 || !range.is_finite() {
        return 1.0;
    }
    let raw = range / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn label(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn line_chart(x: &[f64], series: &[(&str, &str, &[f64])], x_label: &str, y_label: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "<svg width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" xmlns=\"http://www.w3.org/2000/svg\">");
    if x.len() < 2 {
        let _ = writeln!(
            o,
            "<text x=\"{LEFT}\" y=\"{}\">not enough samples (the run was shorter than 2 s)</text></svg>",
            HEIGHT / 2.0
        );
        return o;
    }
    let x_max = x.iter().copied().fold(0.0, f64::max).max(1.0);
    let y_max = series.iter().flat_map(|(_, _, ys)| ys.iter().copied()).fold(0.0, f64::max).max(1.0);
    let y_step = nice_step(y_max);
    let y_top = (y_max / y_step).ceil() * y_step;
    let x_step = nice_step(x_max);
    let pw = WIDTH - LEFT - RIGHT;
    let ph = HEIGHT - TOP - BOTTOM;
    let sx = |v: f64| LEFT + v / x_max * pw;
    let sy = |v: f64| TOP + ph - v / y_top * ph;
    // Grid and axes.
    let mut v = 0.0;
    while v <= y_top + y_step / 2.0 {
        let y = sy(v);
        let _ = writeln!(
            o,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>",
            LEFT + pw
        );
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT - 6.0,
            y + 4.0,
            label(v)
        );
        v += y_step;
    }
    let mut v = 0.0;
    while v <= x_max + 1e-9 {
        let xx = sx(v);
        let _ = writeln!(
            o,
            "<line x1=\"{xx:.1}\" y1=\"{TOP}\" x2=\"{xx:.1}\" y2=\"{:.1}\" stroke=\"#f3f3f3\"/>",
            TOP + ph
        );
        let _ = writeln!(
            o,
            "<text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            TOP + ph + 16.0,
            label(v)
        );
        v += x_step;
    }
    let _ = writeln!(
        o,
        "<line x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>",
        TOP + ph,
        LEFT + pw,
        TOP + ph
    );
    let _ = writeln!(
        o,
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{:.1}\" stroke=\"#888\"/>",
        TOP + ph
    );
    let _ = writeln!(
        o,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        LEFT + pw / 2.0,
        HEIGHT - 6.0,
        escape(x_label)
    );
    let _ = writeln!(
        o,
        "<text x=\"14\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {:.1})\">{}</text>",
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        escape(y_label)
    );
    for (name, color, ys) in series {
        let points: Vec<String> =
            x.iter().zip(ys.iter()).map(|(&a, &b)| format!("{:.1},{:.1}", sx(a), sy(b))).collect();
        let _ = writeln!(
            o,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>",
            points.join(" "),
            escape(name)
        );
    }
    let _ = writeln!(o, "<g class=\"legend\">");
    for (i, (name, color, _)) in series.iter().enumerate() {
        let lx = LEFT + 10.0 + i as f64 * 170.0;
        let _ = writeln!(
            o,
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"14\" height=\"4\" fill=\"{color}\"/>",
            TOP + 4.0
        );
        let _ = writeln!(o, "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>", lx + 20.0, TOP + 10.0, escape(name));
    }
    let _ = writeln!(o, "</g></svg>");
    o
}

/// Bars over logarithmic latency bins (in ms), each labelled with its count.
fn latency_chart(h: &Histogram<u64>) -> String {
    let lo = (h.min().max(1) as f64 / 1000.0).log10().floor();
    let hi = (h.max().max(1) as f64 / 1000.0).log10().ceil().max(lo + 1.0);
    const PER_DECADE: usize = 8;
    let bins = ((hi - lo) as usize * PER_DECADE).max(1);
    let edge = |i: usize| 10f64.powf(lo + i as f64 / PER_DECADE as f64);
    let mut counts = vec![0u64; bins];
    for v in h.iter_recorded() {
        let ms = v.value_iterated_to() as f64 / 1000.0;
        let i = (((ms.log10() - lo) * PER_DECADE as f64).floor().max(0.0) as usize).min(bins - 1);
        counts[i] += v.count_at_value();
    }
    let max = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let pw = WIDTH - LEFT - RIGHT;
    let ph = HEIGHT - TOP - BOTTOM;
    let bw = pw / bins as f64;
    let mut o = String::new();
    let _ = writeln!(o, "<svg width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" xmlns=\"http://www.w3.org/2000/svg\">");
    for (i, &c) in counts.iter().enumerate() {
        let bh = c as f64 / max * ph;
        let x = LEFT + i as f64 * bw;
        let _ = writeln!(
            o,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#ff7f0e\"><title>{:.3}-{:.3} ms: {}</title></rect>",
            TOP + ph - bh,
            (bw - 1.0).max(1.0),
            edge(i),
            edge(i + 1),
            c
        );
    }
    for d in 0..=((hi - lo) as usize) {
        let x = LEFT + (d * PER_DECADE) as f64 * bw;
        let v = 10f64.powf(lo + d as f64);
        let text = if v < 1.0 { format!("{v} ms") } else { format!("{v:.0} ms") };
        let _ = writeln!(
            o,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{text}</text>",
            TOP + ph + 16.0
        );
    }
    let _ = writeln!(
        o,
        "<line x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>",
        TOP + ph,
        LEFT + pw,
        TOP + ph
    );
    let _ = writeln!(
        o,
        "<text x=\"{LEFT}\" y=\"{:.1}\">handshakes per bin (max {}); hover a bar for its range</text>",
        TOP + 10.0,
        group(max as u64)
    );
    let quantiles = [0.5, 0.9, 0.99];
    let q: Vec<String> = quantiles
        .iter()
        .map(|&q| format!("p{} {:.2} ms", (q * 100.0) as u32, h.value_at_quantile(q) as f64 / 1000.0))
        .collect();
    let _ = writeln!(
        o,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}; max {}</text>",
        LEFT + pw,
        TOP + 10.0,
        q.join(", "),
        human_ms(h.max())
    );
    let _ = writeln!(o, "</svg>");
    o
}

fn human_ms(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(100.0), 20.0);
        assert_eq!(nice_step(7.0), 2.0);
        assert_eq!(nice_step(0.0), 1.0);
    }

    #[test]
    fn chart_has_no_external_references() {
        let x = [0.0, 1.0, 2.0];
        let y = [0.0, 5.0, 3.0];
        let svg = line_chart(&x, &[("a", "#000", &y)], "s", "n");
        assert!(svg.contains("<polyline"));
        assert!(!svg.contains("href"));
        let mut h = crate::stats::new_histogram();
        for v in [500, 1_000, 1_200, 40_000] {
            h.record(v).unwrap();
        }
        let svg = latency_chart(&h);
        assert!(svg.contains("<rect"));
    }
}
