//! The report: rows with their baselines and targets, medians and spreads, and printing
//! it (a table on stdout, JSON for `target/bench/report.json`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Rounds each throughput comparison runs, alternating ours and the baseline.
pub(crate) const ROUNDS: usize = 5;

/// One row of the report.
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    pub(crate) baseline: Option<(String, f64)>,
    pub(crate) ratio: Option<f64>,
    pub(crate) target: String,
    pub(crate) met: Option<bool>,
}

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
}

impl Report {
    /// A row against its baseline; the target is `ratio >= min_ratio`.
    pub(crate) fn ratio(
        &mut self,
        name: &str,
        value: f64,
        unit: &'static str,
        base_name: &str,
        base: f64,
        min_ratio: f64,
    ) {
        let r = value / base;
        self.against(
            name,
            value,
            unit,
            base_name,
            base,
            format!("ratio >= {min_ratio}"),
            r >= min_ratio,
        );
    }

    /// A cost row (lower is better): `value` at most `max_ratio` times the baseline's.
    pub(crate) fn cost_ratio(
        &mut self,
        name: &str,
        value: f64,
        unit: &'static str,
        base_name: &str,
        base: f64,
        max_ratio: f64,
    ) {
        let r = value / base;
        self.against(
            name,
            value,
            unit,
            base_name,
            base,
            format!("ratio <= {max_ratio}"),
            r <= max_ratio,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn against(
        &mut self,
        name: &str,
        value: f64,
        unit: &'static str,
        base_name: &str,
        base: f64,
        target: String,
        met: bool,
    ) {
        self.rows.push(Row {
            name: name.into(),
            value,
            unit,
            baseline: Some((base_name.into(), base)),
            ratio: Some(value / base),
            target,
            met: Some(met),
        });
    }

    /// A throughput row from alternating rounds: medians of both sides, and the
    /// spread of the per-round ratios in the baseline's name.
    pub(crate) fn rounds(
        &mut self,
        name: &str,
        ours: &[f64],
        unit: &'static str,
        base_name: &str,
        bare: &[f64],
        min_ratio: f64,
    ) {
        let ratios: Vec<f64> = ours.iter().zip(bare).map(|(o, b)| o / b).collect();
        let (lo, hi) = spread(&ratios);
        self.ratio(
            name,
            percentile(&mut ours.to_vec(), 0.5),
            unit,
            &format!(
                "{base_name} (median of {} rounds; round ratios {lo:.2}-{hi:.2})",
                ratios.len()
            ),
            percentile(&mut bare.to_vec(), 0.5),
            min_ratio,
        );
    }

    pub(crate) fn plain(
        &mut self,
        name: &str,
        value: f64,
        unit: &'static str,
        target: &str,
        met: Option<bool>,
    ) {
        self.rows.push(Row {
            name: name.into(),
            value,
            unit,
            baseline: None,
            ratio: None,
            target: target.into(),
            met,
        });
    }
    /// p50 (with an overhead target in ms) and p99 of two latency samples in ms.
    pub(crate) fn latency_pair(
        &mut self,
        name: &str,
        ours: Vec<f64>,
        base_name: &str,
        base: Vec<f64>,
        p50_target_ms: f64,
    ) {
        // The samples were taken in order: split them into rounds for the spread.
        let per = (ours.len() / ROUNDS).max(1);
        let round_overheads = |p: f64| -> (f64, f64) {
            let v: Vec<f64> = ours
                .chunks(per)
                .zip(base.chunks(per))
                .map(|(o, b)| percentile(&mut o.to_vec(), p) - percentile(&mut b.to_vec(), p))
                .collect();
            spread(&v)
        };
        for (p, target) in [(0.5, Some(p50_target_ms)), (0.99, None)] {
            let label = format!("p{}", (p * 100.0) as u32);
            let (lo, hi) = round_overheads(p);
            let (o, b) = (
                percentile(&mut ours.clone(), p),
                percentile(&mut base.clone(), p),
            );
            self.overhead(
                &format!("{name}, {label}"),
                o,
                &format!(
                    "{base_name}, {label} ({} samples; overhead per round of {per}: {lo:.2}-{hi:.2} ms)",
                    ours.len()
                ),
                b,
                target,
            );
        }
    }

    fn overhead(
        &mut self,
        name: &str,
        value: f64,
        base_name: &str,
        base: f64,
        max_overhead_ms: Option<f64>,
    ) {
        let o = value - base;
        self.rows.push(Row {
            name: name.into(),
            value,
            unit: "ms",
            baseline: Some((base_name.into(), base)),
            ratio: Some(value / base),
            target: max_overhead_ms
                .map_or("report".into(), |m| format!("overhead {o:.3} ms < {m} ms")),
            met: max_overhead_ms.map(|m| o < m),
        });
    }
}

pub(crate) fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn spread(v: &[f64]) -> (f64, f64) {
    (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(0.0, f64::max),
    )
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default();
    json!({"cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "memory": mem})
}

pub(crate) fn print(report: &Report) -> Value {
    println!(
        "{:<52} {:>14} {:<9} {:>14}  {:>7}  target",
        "benchmark", "value", "unit", "baseline", "ratio"
    );
    let mut rows = Vec::new();
    for r in &report.rows {
        let base = r
            .baseline
            .as_ref()
            .map_or(String::from("-"), |(_, b)| format!("{b:.1}"));
        let ratio = r.ratio.map_or(String::from("-"), |x| format!("{x:.3}"));
        let met = match r.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        println!(
            "{:<52} {:>14.1} {:<9} {:>14}  {:>7}  {} {met}",
            r.name, r.value, r.unit, base, ratio, r.target
        );
        let mut m = BTreeMap::new();
        m.insert("name", json!(r.name));
        m.insert("value", json!(r.value));
        m.insert("unit", json!(r.unit));
        m.insert(
            "baseline_name",
            json!(r.baseline.as_ref().map(|b| b.0.clone())),
        );
        m.insert("baseline", json!(r.baseline.as_ref().map(|b| b.1)));
        m.insert("ratio", json!(r.ratio));
        m.insert("target", json!(r.target));
        m.insert("met", json!(r.met));
        rows.push(json!(m));
    }
    json!({"machine": machine(), "rows": rows})
}
