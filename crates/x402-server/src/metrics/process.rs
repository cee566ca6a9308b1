//! The standard `process_*` metrics (CPU, memory, file descriptors, start
//! time), read from `/proc/self` at each scrape. Where `/proc` is absent
//! (not Linux), only the start time is shown.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// `/proc/[pid]/stat` counts CPU time in `USER_HZ` ticks, 100 per second on
/// every Linux architecture (the kernel's ABI, whatever its internal HZ).
const USER_HZ: f64 = 100.0;

#[derive(Debug)]
struct Process {
    /// Unix seconds when the metrics were created (the server's start).
    start: f64,
}

/// Registers the collector (unprefixed, as Prometheus names them).
pub(super) fn register(registry: &mut Registry) {
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    registry.register_collector(Box::new(Process { start }));
}

/// What `/proc/self` says now.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<i64>,
    virtual_bytes: Option<i64>,
    open_fds: Option<i64>,
    max_fds: Option<i64>,
}

fn sample() -> Sample {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let status = read("/proc/self/status");
    Sample {
        cpu_seconds: read("/proc/self/stat").and_then(|s| cpu_seconds(&s)),
        resident_bytes: status.as_deref().and_then(|s| status_kb(s, "VmRSS:")),
        virtual_bytes: status.as_deref().and_then(|s| status_kb(s, "VmSize:")),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| i64::try_from(d.count()).unwrap_or(i64::MAX)),
        max_fds: read("/proc/self/limits").and_then(|s| max_open_files(&s)),
    }
}

/// User plus system time from `/proc/self/stat` (fields 14 and 15, counted
/// after the parenthesised command name, which may itself hold spaces).
fn cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state): utime is field 14, the 12th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// A `kB` line of `/proc/self/status`, in bytes.
fn status_kb(status: &str, key: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: i64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    kb.checked_mul(1024)
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = sample();
        if let Some(v) = s.cpu_seconds {
            let c = ConstCounter::new(v);
            let e = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?;
            c.encode(e)?;
        }
        let gauges: [(&str, &str, Option<i64>); 4] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                s.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                let e = encoder.encode_descriptor(name, help, None, g.metric_type())?;
                g.encode(e)?;
            }
        }
        let g = ConstGauge::new(self.start);
        let e = encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            None,
            g.metric_type(),
        )?;
        g.encode(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        // A command name with spaces and parentheses must not shift the fields.
        let stat = "4242 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 8 0 99 123456 789";
        assert_eq!(cpu_seconds(stat), Some(4.0));
        assert_eq!(cpu_seconds("garbage"), None);
        assert_eq!(cpu_seconds("1 (x) S 1 2"), None);
        let status = "Name:\tx\nVmSize:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kb(status, "VmRSS:"), Some(1024 * 1024));
        assert_eq!(status_kb(status, "VmSize:"), Some(2048 * 1024));
        assert_eq!(status_kb(status, "VmSwap:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn samples_this_process() {
        let s = sample();
        assert!(s.cpu_seconds.is_some_and(|c| c >= 0.0));
        assert!(s.resident_bytes.is_some_and(|r| r > 0));
        assert!(s.open_fds.is_some_and(|n| n > 0));
    }
}
