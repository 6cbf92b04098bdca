//! `olla-hold`: a load tool that holds N concurrent SSE streams open against one URL and reports
//! what they cost: time to first token per stream (p50/p99), failed streams, and the peak and
//! idle resident memory of a server process (read from `/proc/<pid>/status` while the streams
//! are open). `benches/load.sh` runs it against the mock directly and through each proxy.
//!
//! Each stream is one HTTP/1.1 connection (`Connection: close`) carrying one streaming
//! chat-completion POST; the stream counts as done when the server closes the connection after
//! `data: [DONE]`. Output is one JSON object on stdout. Loopback only, bounded by `--timeout`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(
    name = "olla-hold",
    about = "Hold N concurrent SSE streams and report TTFT and server RSS"
)]
struct Args {
    /// Target address (host:port, loopback).
    #[arg(long)]
    addr: SocketAddr,
    /// Request path.
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    /// Model to ask for.
    #[arg(long, default_value = "m")]
    model: String,
    /// Concurrent streams.
    #[arg(short = 'n', long, default_value_t = 1000)]
    streams: usize,
    /// Time over which the streams are opened, in ms.
    #[arg(long, default_value_t = 2000)]
    ramp_ms: u64,
    /// Server process whose resident memory is sampled (repeatable: the sum is reported).
    #[arg(long)]
    pid: Vec<u32>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// Outcome of one stream.
struct Stream {
    ttft: Option<Duration>,
    ok: bool,
}

/// Resident set size of `pid` in KiB, or 0 when it cannot be read.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn total_rss(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| rss_kib(p)).sum()
}

/// Runs one stream: connect, send, wait for the first `data:` event, read to the end.
async fn one_stream(addr: SocketAddr, request: Arc<Vec<u8>>, open: Arc<AtomicUsize>) -> Stream {
    let start = Instant::now();
    let mut failed = Stream {
        ttft: None,
        ok: false,
    };
    let Ok(mut sock) = TcpStream::connect(addr).await else {
        return failed;
    };
    let _ = sock.set_nodelay(true);
    if sock.write_all(&request).await.is_err() {
        return failed;
    }
    let mut buf = vec![0u8; 16 * 1024];
    // The last bytes seen, so a marker split across reads is still found.
    let mut tail: Vec<u8> = Vec::with_capacity(64);
    let mut head_done = false;
    let mut status_ok = false;
    let mut done = false;
    let mut counted = false;
    loop {
        let n = match sock.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut window = std::mem::take(&mut tail);
        window.extend_from_slice(&buf[..n]);
        if !head_done {
            if let Some(end) = find(&window, b"\r\n\r\n") {
                head_done = true;
                status_ok = window.starts_with(b"HTTP/1.1 200");
                window.drain(..end + 4);
            }
        }
        if head_done && failed.ttft.is_none() && find(&window, b"data:").is_some() {
            failed.ttft = Some(start.elapsed());
            open.fetch_add(1, Ordering::Relaxed);
            counted = true;
        }
        if find(&window, b"[DONE]").is_some() {
            done = true;
        }
        let keep = window.len().min(16);
        tail = window.split_off(window.len() - keep);
    }
    if counted {
        open.fetch_sub(1, Ordering::Relaxed);
    }
    failed.ok = status_ok && done;
    failed
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    if !args.addr.ip().is_loopback() {
        eprintln!("olla-hold: only loopback addresses are allowed");
        std::process::exit(2);
    }
    let body = format!(
        "{{\"model\":\"{}\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"hold\"}}]}}",
        args.model
    );
    let request = Arc::new(
        format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            args.path,
            args.addr,
            body.len(),
            body
        )
        .into_bytes(),
    );
    let idle_rss = total_rss(&args.pid);
    let open = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let gap = Duration::from_micros(args.ramp_ms * 1000 / args.streams.max(1) as u64);
    let mut tasks = tokio::task::JoinSet::new();
    let sampler_pids = args.pid.clone();
    let sampler_open = open.clone();
    let sampler = tokio::spawn(async move {
        let mut peak = 0u64;
        let mut peak_open = 0usize;
        loop {
            let rss = total_rss(&sampler_pids);
            peak = peak.max(rss);
            peak_open = peak_open.max(sampler_open.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(100)).await;
            if Instant::now() > deadline {
                break;
            }
            if peak_open > 0 && sampler_open.load(Ordering::Relaxed) == 0 {
                break;
            }
        }
        (peak, peak_open)
    });
    // Each stream starts at its own point of the ramp (`sleep_until`, not `sleep(gap)`): a
    // timer rounds every sleep up to the next millisecond, so sleeping the gap each time
    // stretched a 3 s ramp of 3,000 streams past the streams' own length, and the first had
    // ended before the last opened.
    let ramp_start = tokio::time::Instant::now();
    for i in 0..args.streams {
        tasks.spawn(one_stream(args.addr, request.clone(), open.clone()));
        if !gap.is_zero() {
            tokio::time::sleep_until(ramp_start + gap * (i as u32 + 1)).await;
        }
    }
    let mut ttfts = Vec::with_capacity(args.streams);
    let mut ok = 0usize;
    let mut failed = 0usize;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tasks.join_next()).await {
            Ok(Some(Ok(s))) => {
                if s.ok {
                    ok += 1;
                } else {
                    failed += 1;
                }
                if let Some(t) = s.ttft {
                    ttfts.push(t.as_secs_f64() * 1000.0);
                }
            }
            Ok(Some(Err(_))) => failed += 1,
            Ok(None) => break,
            Err(_) => {
                failed += tasks.len();
                tasks.abort_all();
                break;
            }
        }
    }
    let (peak_rss, peak_open) = sampler.await.unwrap_or((0, 0));
    ttfts.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{{\"streams\":{},\"ok\":{},\"failed\":{},\"peak_open\":{},\"ttft_p50_ms\":{:.3},\"ttft_p99_ms\":{:.3},\"idle_rss_kib\":{},\"peak_rss_kib\":{}}}",
        args.streams,
        ok,
        failed,
        peak_open,
        percentile(&ttfts, 0.5),
        percentile(&ttfts, 0.99),
        idle_rss,
        peak_rss
    );
}
