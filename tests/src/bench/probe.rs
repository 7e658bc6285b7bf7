//! What the processes cost: CPU time from /proc/<pid>/stat, peak RSS from
//! /proc/<pid>/status, machine-wide CPU from /proc/stat, and handler timings
//! from each service's /metrics.

use std::collections::BTreeMap;

/// Clock ticks per second for /proc times (USER_HZ; 100 on Linux everywhere
/// that matters, checked with `getconf CLK_TCK` when available).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Fields of /proc/<pid>/stat after the command name.
fn stat_fields(pid: u32) -> Option<(String, Vec<String>)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    Some((comm, text[close + 2..].split_whitespace().map(str::to_owned).collect()))
}

/// User + system CPU seconds a process has used so far.
pub fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let (_, fields) = stat_fields(pid)?;
    // After the name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// A /proc/<pid>/status value in kB (VmHWM, VmRSS).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Children of this process whose command name is `comm` (the broker, the
/// gateway simulator).
pub fn children_named(comm: &str) -> Vec<u32> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat_fields(*pid).is_some_and(|(name, fields)| name == comm && fields.get(1).is_some_and(|p| *p == me))
        })
        .collect()
}

/// All processes named `comm` (PostgreSQL's backends), wherever they come from.
pub fn all_named(comm: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat_fields(*pid).is_some_and(|(name, _)| name == comm))
        .collect()
}

/// Busy and total jiffies of the whole machine.
pub fn machine_jiffies() -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else { return (0, 0) };
    let Some(line) = text.lines().next() else { return (0, 0) };
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// `handler_duration_seconds` sum and count by event type, from one service's /metrics.
pub type HandlerTimes = BTreeMap<String, (f64, f64)>;

pub async fn handler_times(client: &reqwest::Client, port: u16) -> HandlerTimes {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let Ok(response) = client.get(url).send().await else { return HandlerTimes::new() };
    let Ok(text) = response.text().await else { return HandlerTimes::new() };
    parse_handler_times(&text)
}

pub fn parse_handler_times(text: &str) -> HandlerTimes {
    let mut times = HandlerTimes::new();
    for line in text.lines() {
        let (is_sum, rest) = if let Some(rest) = line.strip_prefix("handler_duration_seconds_sum{") {
            (true, rest)
        } else if let Some(rest) = line.strip_prefix("handler_duration_seconds_count{") {
            (false, rest)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let Some(event_type) =
            labels.split(',').find_map(|l| l.strip_prefix("event_type=\"")).map(|v| v.trim_end_matches('"').to_owned())
        else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let entry = times.entry(event_type).or_default();
        if is_sum {
            entry.0 = value;
        } else {
            entry.1 = value;
        }
    }
    times
}

/// `after - before`, per event type.
pub fn delta(before: &HandlerTimes, after: &HandlerTimes) -> HandlerTimes {
    after
        .iter()
        .map(|(k, (sum, count))| {
            let (s0, c0) = before.get(k).copied().unwrap_or_default();
            (k.clone(), (sum - s0, count - c0))
        })
        .filter(|(_, (_, count))| *count > 0.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_summary_lines() {
        let text = "handler_duration_seconds_bucket{service=\"order-svc\",event_type=\"PlaceOrder\",le=\"0.001\"} 3\n\
                    handler_duration_seconds_sum{service=\"order-svc\",event_type=\"PlaceOrder\"} 0.25\n\
                    handler_duration_seconds_count{service=\"order-svc\",event_type=\"PlaceOrder\"} 10\n";
        let times = parse_handler_times(text);
        assert_eq!(times.get("PlaceOrder"), Some(&(0.25, 10.0)));
    }
}
