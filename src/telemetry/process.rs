//! `/internal/process` in Olla's shape (`memory`, `garbage_collection`, `goroutines`,
//! `runtime`, `allocations`, `timestamp`), filled with what a Rust process has: memory from
//! `/proc/self/status` (there is no garbage collector: those fields are zero), the alive tasks
//! of the serving runtime in place of goroutines, threads and open file descriptors from
//! `/proc`. Reading `/proc` is bounded (a few small files); off Linux the values are zero.

use std::time::{Instant, SystemTime};

use http::{Response, StatusCode};
use serde_json::json;

use crate::app::App;
use crate::format;
use crate::http_util::{json_response, Body};

/// Values from `/proc/self/status`, in bytes (0 when unknown).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ProcStatus {
    pub rss: u64,
    pub rss_anon: u64,
    pub vm_data: u64,
    pub vm_size: u64,
    pub vm_stack: u64,
    pub vm_hwm: u64,
    pub threads: u64,
}

/// Parses the text of `/proc/self/status` (pure).
pub fn parse_status(text: &str) -> ProcStatus {
    let mut s = ProcStatus::default();
    for line in text.lines().take(200) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let mut parts = v.split_whitespace();
        let n = parts
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        let bytes = if parts.next() == Some("kB") {
            n * 1024
        } else {
            n
        };
        match k {
            "VmRSS" => s.rss = bytes,
            "RssAnon" => s.rss_anon = bytes,
            "VmData" => s.vm_data = bytes,
            "VmSize" => s.vm_size = bytes,
            "VmStk" => s.vm_stack = bytes,
            "VmHWM" => s.vm_hwm = bytes,
            "Threads" => s.threads = n,
            _ => {}
        }
    }
    s
}

/// Open file descriptors (bounded count of `/proc/self/fd`).
fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.take(1 << 20).count() as u64)
}

/// Memory pressure as Olla grades it, from resident memory against the machine's memory.
fn pressure(rss: u64, total: u64) -> &'static str {
    if total == 0 {
        return "LOW";
    }
    let pct = rss as f64 * 100.0 / total as f64;
    if pct > 80.0 {
        "HIGH"
    } else if pct > 50.0 {
        "MEDIUM"
    } else {
        "LOW"
    }
}

fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Grades a task count as Olla grades goroutines.
fn task_health(n: u64) -> &'static str {
    match n {
        0..=100 => "HEALTHY",
        101..=1000 => "NORMAL",
        1001..=10000 => "ELEVATED",
        _ => "CONCERNING",
    }
}

pub fn response(app: &App) -> Response<Body> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map(|t| parse_status(&t))
        .unwrap_or_default();
    let tasks = tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_alive_tasks() as u64)
        .unwrap_or(0);
    let workers = tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_workers())
        .unwrap_or(0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let uptime = Instant::now().duration_since(app.started);
    let body = json!({
        "memory": {
            "heap_alloc": format::bytes(status.rss_anon),
            "heap_sys": format::bytes(status.vm_data),
            "heap_inuse": format::bytes(status.rss_anon),
            "heap_released": format::bytes(0),
            "stack_inuse": format::bytes(status.vm_stack),
            "total_alloc": format::bytes(status.vm_hwm),
            "memory_pressure": pressure(status.rss, mem_total()),
            "rss": format::bytes(status.rss),
            "rss_bytes": status.rss,
            "virtual": format::bytes(status.vm_size),
        },
        "garbage_collection": {
            "last_gc": format::rfc3339(SystemTime::UNIX_EPOCH),
            "total_gc_time": "0ms",
            "avg_gc_pause": "0ms",
            "gc_cpu_fraction": 0.0,
            "num_gc_cycles": 0,
        },
        "goroutines": {
            "health_status": task_health(tasks),
            "count": tasks,
            "cgo_calls": 0,
        },
        "tasks": {
            "alive_on_this_runtime": tasks,
            "runtime_workers": workers,
            "serving_threads": app.settings.threads,
        },
        "threads": status.threads,
        "open_fds": open_fds(),
        "runtime": {
            "uptime": format::uptime(uptime),
            "uptime_seconds": uptime.as_secs(),
            "go_version": concat!("rust (olla v", env!("CARGO_PKG_VERSION"), ")"),
            "num_cpu": cpus,
            "gomaxprocs": cpus,
        },
        "allocations": {"total_mallocs": 0, "total_frees": 0, "net_objects": 0},
        "timestamp": format::rfc3339(SystemTime::now()),
    });
    json_response(StatusCode::OK, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let text = "Name:\tolla\nVmSize:\t  100 kB\nVmRSS:\t   20 kB\nRssAnon:\t 10 kB\nVmData:\t 50 kB\nVmStk:\t 4 kB\nThreads:\t7\nbogus line\n";
        let s = parse_status(text);
        assert_eq!(s.vm_size, 100 * 1024);
        assert_eq!(s.rss, 20 * 1024);
        assert_eq!(s.rss_anon, 10 * 1024);
        assert_eq!(s.threads, 7);
        assert_eq!(parse_status(""), ProcStatus::default());
    }

    #[test]
    fn grades() {
        assert_eq!(pressure(10, 100), "LOW");
        assert_eq!(pressure(60, 100), "MEDIUM");
        assert_eq!(pressure(90, 100), "HIGH");
        assert_eq!(task_health(5), "HEALTHY");
        assert_eq!(task_health(20_000), "CONCERNING");
    }
}
