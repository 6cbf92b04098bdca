//! `olla demo`: runs the daemon in front of two in-process mock backends (an Ollama-dialect one
//! at priority 100 and an OpenAI-compatible one at priority 50, sharing one model), so a fresh
//! machine has something to serve, and prints the requests to try and the dashboard's address.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use olla_actors::kind::BackendKind;
use olla_actors::spec::BackendSpec;
use olla_actors::{RoutingPolicy, TreeConfig};
use olla_mock::{MockConfig, MockServer};
use tokio::net::TcpListener;

use crate::config::ServerSettings;
use crate::Daemon;

/// Starts the mocks and the daemon on `127.0.0.1:port`, prints instructions, runs until `stop`.
pub async fn run(port: u16, stop: impl Future<Output = ()>) -> Result<(), String> {
    let gpu = MockServer::start(MockConfig {
        name: "local-gpu".into(),
        models: vec!["llama3.2:3b".into(), "qwen2.5-coder:7b".into()],
        tokens: 24,
        token_delay_ms: 40,
        ..MockConfig::default()
    })
    .await
    .map_err(|e| format!("cannot start the first mock backend: {e}"))?;
    let cloud = MockServer::start(MockConfig {
        name: "cloud-spillover".into(),
        models: vec!["llama3.2:3b".into(), "gpt-4o-mini".into()],
        tokens: 24,
        token_delay_ms: 20,
        ..MockConfig::default()
    })
    .await
    .map_err(|e| format!("cannot start the second mock backend: {e}"))?;

    let spec = |name: &str, url: String, kind, priority| -> Result<Arc<BackendSpec>, String> {
        let mut s = BackendSpec::new(name, url.parse().map_err(|e| format!("{e}"))?, kind);
        s.priority = priority;
        s.check_interval = Duration::from_secs(2);
        s.check_timeout = Duration::from_secs(1);
        s.discovery.interval = Duration::from_secs(30);
        Ok(Arc::new(s))
    };
    let runtime = crate::config::Runtime {
        server: ServerSettings {
            host: "127.0.0.1".into(),
            port,
            threads: 0,
            read_header_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::ZERO,
            idle_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            shutdown_timeout: Duration::from_secs(5),
            max_body_size: 100 << 20,
            max_header_size: 1 << 20,
            request_logging: true,
            metrics_enabled: true,
            proxy_engine: "olla".into(),
            proxy_profile: "auto".into(),
            trusted_proxies: Vec::new(),
            anthropic: Default::default(),
            gate: Default::default(),
            otlp: None,
            inject_stream_usage: false,
        },
        tree: TreeConfig {
            specs: vec![
                spec("local-gpu", gpu.url(), BackendKind::Ollama, 100)?,
                spec(
                    "cloud-spillover",
                    cloud.url(),
                    BackendKind::OpenAiCompatible,
                    50,
                )?,
            ],
            policy: RoutingPolicy::default(),
            model_aliases: Default::default(),
            stale_threshold: Duration::from_secs(86400),
            supervision: Default::default(),
        },
        admin: crate::config::admin::AdminSettings::disabled(),
        dashboard: crate::dashboard::DashboardSettings::default(),
    };
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e} (try --port 0)"))?;
    let daemon = Daemon::start(runtime, listener).await?;
    let base = daemon.url();
    println!("{}", instructions(&base, &gpu.url(), &cloud.url()));
    let exit = daemon.run_until(stop).await;
    gpu.stop().await;
    cloud.stop().await;
    match exit {
        crate::Exit::Stopped => Ok(()),
        crate::Exit::TreeFailed => Err("the supervision tree failed".into()),
    }
}

/// The lines the demo prints: commands and a Python snippet a newcomer pastes as they are.
/// Built line by line so the snippet keeps its indentation.
pub fn instructions(base: &str, gpu: &str, cloud: &str) -> String {
    let chat =
        r#"{"model":"llama3.2:3b","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    [
        String::new(),
        format!("olla demo is running on {base}"),
        format!("dashboard: {base}/internal/ui/"),
        format!(
            "backends: local-gpu ({gpu}, ollama, priority 100) and cloud-spillover ({cloud}, openai-compatible, priority 50)"
        ),
        String::new(),
        "try:".into(),
        format!("curl -s {base}/internal/status/endpoints"),
        format!("curl -s {base}/olla/models"),
        format!("curl -s {base}/olla/proxy/v1/models"),
        format!(
            "curl -sN {base}/olla/proxy/v1/chat/completions -H 'content-type: application/json' -d '{chat}'"
        ),
        format!("curl -s {base}/olla/ollama/api/tags"),
        String::new(),
        "python (pip install openai):".into(),
        python_snippet(base),
        String::new(),
        "Ctrl-C to stop.".into(),
    ]
    .join("\n")
}

/// The streaming OpenAI SDK example, indented as Python needs.
fn python_snippet(base: &str) -> String {
    [
        "from openai import OpenAI".to_string(),
        format!("c = OpenAI(base_url=\"{base}/olla/proxy/v1\", api_key=\"unused\")"),
        r#"for ch in c.chat.completions.create(model="llama3.2:3b", stream=True, messages=[{"role": "user", "content": "hi"}]):"#.to_string(),
        r#"    if ch.choices:"#.to_string(),
        r#"        print(ch.choices[0].delta.content or "", end="", flush=True)"#.to_string(),
        "print()".to_string(),
    ]
    .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_python_snippet_compiles() {
        let code = python_snippet("http://127.0.0.1:40114");
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys; compile(sys.stdin.read(), 'demo', 'exec')",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("stdin is piped")
                    .write_all(code.as_bytes())?;
                child.wait_with_output()
            })
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}\n{code}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn the_instructions_name_the_base_and_both_backends() {
        let text = instructions("http://h:1", "http://g:2", "http://c:3");
        assert!(text.contains("curl -s http://h:1/olla/models"));
        assert!(text.contains("dashboard: http://h:1/internal/ui/"));
        assert!(text.contains("local-gpu (http://g:2"));
        assert!(text.contains("cloud-spillover (http://c:3"));
        assert!(text.contains("\n    if ch.choices:\n        print("));
    }
}
