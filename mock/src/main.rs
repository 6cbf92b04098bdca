//! The `olla-mock` binary: parses flags into a [`MockConfig`], binds, prints
//! `olla-mock <name> listening on http://HOST:PORT` (tests read this line to learn the port
//! when `--port 0`), and runs until SIGINT/SIGTERM. All behaviour lives in the library.

use std::io::Write as _;
use std::net::SocketAddr;

use clap::Parser;
use olla_mock::{Fault, MockConfig, MockServer};

/// mimalloc: measurably cheaper than glibc malloc for the many small per-request allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A fake LLM backend speaking OpenAI, Ollama, LM Studio, llama.cpp, vLLM and Anthropic,
/// with fault modes. Everything here can also be changed at run time with
/// `POST /_mock/config`.
#[derive(Parser, Debug)]
#[command(name = "olla-mock", version)]
struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 11434)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Backend name (sent as X-Mock-Name and in response bodies).
    #[arg(long, default_value = "olla-mock")]
    name: String,
    /// Model ids served, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "mock-model")]
    models: Vec<String>,
    /// Tokens per completion.
    #[arg(long, default_value_t = 8)]
    tokens: usize,
    /// Delay before the first byte of a generation response, in ms.
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,
    /// Delay between streamed tokens, in ms.
    #[arg(long, default_value_t = 0)]
    token_delay_ms: u64,
    /// Fault on generation routes: none, error:STATUS, hang, drop:N, malformed.
    #[arg(long, default_value = "none")]
    fault: Fault,
    /// Fault on model-list routes (same syntax as --fault).
    #[arg(long, default_value = "none")]
    models_fault: Fault,
    /// Status of the health routes.
    #[arg(long, default_value_t = 200)]
    health_status: u16,
    /// Delay of the health routes, in ms.
    #[arg(long, default_value_t = 0)]
    health_delay_ms: u64,
    /// Retry-After value sent with fault errors and a health 429.
    #[arg(long)]
    retry_after: Option<String>,
    /// Models reported loaded (`/api/ps`, LM Studio `state`), comma-separated; default: all.
    #[arg(long, value_delimiter = ',')]
    loaded: Option<Vec<String>>,
}

impl Args {
    fn config(&self) -> MockConfig {
        MockConfig {
            name: self.name.clone(),
            models: self
                .models
                .iter()
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty())
                .collect(),
            tokens: self.tokens,
            ttft_ms: self.ttft_ms,
            token_delay_ms: self.token_delay_ms,
            fault: self.fault.clone(),
            health_status: self.health_status,
            health_delay_ms: self.health_delay_ms,
            retry_after: self.retry_after.clone(),
            models_fault: self.models_fault.clone(),
            loaded: self.loaded.clone(),
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let cfg = args.config();
    let listener = match bind(&args.host, args.port).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "olla-mock: cannot listen on {}:{}: {e}",
                args.host, args.port
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    let server = match MockServer::start_on(listener, cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("olla-mock: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "olla-mock {} listening on http://{}",
            args.name,
            server.addr()
        );
        let _ = out.flush();
    }
    shutdown_signal().await;
    server.stop().await;
    std::process::ExitCode::SUCCESS
}

async fn bind(host: &str, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    // Accept both "127.0.0.1" / "::1" and names like "localhost".
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => tokio::net::TcpListener::bind(SocketAddr::new(ip, port)).await,
        Err(_) => tokio::net::TcpListener::bind((host, port)).await,
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
