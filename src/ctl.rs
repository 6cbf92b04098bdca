//! `olla ctl`: the admin endpoint's command-line client. One subcommand per admin command,
//! human tables by default and the server's JSON with `--json`; a failed command exits
//! non-zero with the server's message. Speaks plain HTTP/1.1 to the admin listener; never
//! prints the token.

use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map, Value};

/// Connection options shared by every subcommand.
#[derive(Args, Debug, Clone)]
pub struct CtlOptions {
    /// Admin endpoint base URL (default: from the config's `admin.listen`, else
    /// http://127.0.0.1:40115).
    #[arg(long, env = "OLLA_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// Bearer token (default: the config's `admin.token` / `admin.token_file`).
    #[arg(long, env = "OLLA_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// PEM CA certificate(s) to trust for an https:// admin URL (default: the public web roots).
    #[arg(long, env = "OLLA_ADMIN_CACERT")]
    pub cacert: Option<String>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum CtlCommand {
    /// List the backends.
    Backends,
    /// Add a backend (same fields as a config file endpoint).
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        url: String,
        #[arg(long = "type")]
        kind: String,
        #[arg(long)]
        priority: Option<i64>,
        #[arg(long)]
        weight: Option<u32>,
        #[arg(long)]
        check_interval: Option<String>,
        #[arg(long)]
        check_timeout: Option<String>,
        #[arg(long)]
        max_concurrency: Option<usize>,
        /// Any other endpoint fields, as a JSON object merged into the body.
        #[arg(long)]
        extra: Option<String>,
    },
    /// Change a backend's priority, weight, limits, timeouts or enabled flag.
    Set {
        name: String,
        #[arg(long)]
        priority: Option<i64>,
        #[arg(long)]
        weight: Option<u32>,
        #[arg(long)]
        max_concurrency: Option<usize>,
        #[arg(long)]
        queue_size: Option<usize>,
        #[arg(long)]
        queue_timeout: Option<String>,
        #[arg(long)]
        enabled: Option<bool>,
        #[arg(long)]
        connect_timeout: Option<String>,
        #[arg(long)]
        first_byte_timeout: Option<String>,
        #[arg(long)]
        idle_timeout: Option<String>,
        #[arg(long)]
        total_timeout: Option<String>,
    },
    /// Drain then remove a backend.
    Remove {
        name: String,
        /// Cut remaining streams after this long (e.g. 30s).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Stop sending new requests to a backend (in-flight ones finish).
    Drain { name: String },
    /// Make a backend routable again (ends drain and disable).
    Enable { name: String },
    /// Stop routing to a backend.
    Disable { name: String },
    /// Health-probe a backend now.
    Probe { name: String },
    /// Re-fetch a backend's models now.
    Discover { name: String },
    /// Restart a backend's actor through its supervisor.
    Restart { name: String },
    /// Re-read the config file and apply the difference.
    Reload,
    /// Show the effective config (secrets redacted).
    Config,
    /// Show the supervision tree.
    Actors,
}

/// Where and how to reach the admin endpoint.
pub struct Target {
    pub base: String,
    pub token: Option<String>,
    /// CA file for https (`--cacert`).
    pub cacert: Option<String>,
}

/// Resolves the URL and token: flags and environment first, then the config's `admin`
/// section, then the default address.
pub fn target(opts: &CtlOptions, config: Option<&crate::config::Config>) -> Target {
    let admin = config.map(|c| &c.admin);
    let base = opts
        .admin_url
        .clone()
        .or_else(|| {
            admin.map(|a| {
                let scheme = if a.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{}", a.listen)
            })
        })
        .unwrap_or_else(|| "http://127.0.0.1:40115".into());
    let token = opts.token.clone().filter(|t| !t.is_empty()).or_else(|| {
        let a = admin?;
        a.token.clone().filter(|t| !t.is_empty()).or_else(|| {
            a.token_file
                .as_ref()
                .and_then(|f| std::fs::read_to_string(f).ok())
                .map(|s| s.trim().to_string())
        })
    });
    Target {
        base: base.trim_end_matches('/').to_string(),
        token,
        cacert: opts.cacert.clone(),
    }
}

/// The request a subcommand sends (pure).
pub fn request_for(cmd: &CtlCommand) -> Result<(Method, String, Option<Value>), String> {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let action = |name: &str, a: &str| {
        (
            Method::POST,
            format!("/admin/backends/{}/{a}", enc(name)),
            None,
        )
    };
    Ok(match cmd {
        CtlCommand::Backends => (Method::GET, "/admin/backends".into(), None),
        CtlCommand::Add {
            name,
            url,
            kind,
            priority,
            weight,
            check_interval,
            check_timeout,
            max_concurrency,
            extra,
        } => {
            let mut body = Map::new();
            if let Some(extra) = extra {
                match serde_json::from_str::<Value>(extra) {
                    Ok(Value::Object(m)) => body.extend(m),
                    _ => return Err("--extra must be a JSON object".into()),
                }
            }
            body.insert("name".into(), json!(name));
            body.insert("url".into(), json!(url));
            body.insert("type".into(), json!(kind));
            let opt = [
                ("priority", priority.map(|v| json!(v))),
                ("weight", weight.map(|v| json!(v))),
                ("check_interval", check_interval.as_ref().map(|v| json!(v))),
                ("check_timeout", check_timeout.as_ref().map(|v| json!(v))),
                ("max_concurrency", max_concurrency.map(|v| json!(v))),
            ];
            for (k, v) in opt {
                if let Some(v) = v {
                    body.insert(k.into(), v);
                }
            }
            (
                Method::POST,
                "/admin/backends".into(),
                Some(Value::Object(body)),
            )
        }
        CtlCommand::Set {
            name,
            priority,
            weight,
            max_concurrency,
            queue_size,
            queue_timeout,
            enabled,
            connect_timeout,
            first_byte_timeout,
            idle_timeout,
            total_timeout,
        } => {
            let mut body = Map::new();
            let opt = [
                ("priority", priority.map(|v| json!(v))),
                ("weight", weight.map(|v| json!(v))),
                ("max_concurrency", max_concurrency.map(|v| json!(v))),
                ("queue_size", queue_size.map(|v| json!(v))),
                ("queue_timeout", queue_timeout.as_ref().map(|v| json!(v))),
                ("enabled", enabled.map(|v| json!(v))),
            ];
            for (k, v) in opt {
                if let Some(v) = v {
                    body.insert(k.into(), v);
                }
            }
            let mut timeouts = Map::new();
            for (k, v) in [
                ("connect", connect_timeout),
                ("first_byte", first_byte_timeout),
                ("idle", idle_timeout),
                ("total", total_timeout),
            ] {
                if let Some(v) = v {
                    timeouts.insert(k.into(), json!(v));
                }
            }
            if !timeouts.is_empty() {
                body.insert("timeouts".into(), Value::Object(timeouts));
            }
            if body.is_empty() {
                return Err("nothing to set: give at least one option (see --help)".into());
            }
            (
                Method::PATCH,
                format!("/admin/backends/{}", enc(name)),
                Some(Value::Object(body)),
            )
        }
        CtlCommand::Remove { name, timeout } => {
            let q = timeout
                .as_ref()
                .map(|t| format!("?timeout={}", enc(t)))
                .unwrap_or_default();
            (
                Method::DELETE,
                format!("/admin/backends/{}{q}", enc(name)),
                None,
            )
        }
        CtlCommand::Drain { name } => action(name, "drain"),
        CtlCommand::Enable { name } => action(name, "enable"),
        CtlCommand::Disable { name } => action(name, "disable"),
        CtlCommand::Probe { name } => action(name, "probe"),
        CtlCommand::Discover { name } => action(name, "discover"),
        CtlCommand::Restart { name } => action(name, "restart"),
        CtlCommand::Reload => (Method::POST, "/admin/reload".into(), None),
        CtlCommand::Config => (Method::GET, "/admin/config".into(), None),
        CtlCommand::Actors => (Method::GET, "/admin/actors".into(), None),
    })
}

/// An HTTP and HTTPS connector; https trusts `cacert` (PEM) if given, else the public web roots.
fn connector(
    cacert: Option<&str>,
) -> Result<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, String>
{
    use rustls_pki_types::pem::PemObject;
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match cacert {
        Some(file) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(file)
                .map_err(|e| format!("--cacert {file:?}: {e}"))?;
            for c in certs {
                let c = c.map_err(|e| format!("--cacert {file:?}: {e}"))?;
                roots
                    .add(c)
                    .map_err(|e| format!("--cacert {file:?}: {e}"))?;
            }
            let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
            builder.with_tls_config(config)
        }
        None => builder
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| e.to_string())?,
    };
    Ok(builder.https_or_http().enable_http1().build())
}

/// Sends one request; returns the status and the JSON body.
async fn send(
    target: &Target,
    method: Method,
    path: &str,
    body: Option<Value>,
    timeout: Duration,
) -> Result<(StatusCode, Value), String> {
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector(target.cacert.as_deref())?);
    let uri = format!("{}{path}", target.base);
    let mut req = Request::builder().method(method).uri(&uri);
    if let Some(t) = &target.token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let bytes = match &body {
        Some(b) => {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(serde_json::to_vec(b).map_err(|e| e.to_string())?)
        }
        None => Bytes::new(),
    };
    let req = req
        .body(Full::new(bytes))
        .map_err(|e| format!("invalid admin URL {:?}: {e}", target.base))?;
    let call = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("cannot reach the admin endpoint at {}: {e}", target.base))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 64 << 20)
            .collect()
            .await
            .map_err(|e| format!("cannot read the admin response: {e}"))?
            .to_bytes();
        let value = serde_json::from_slice(&body).unwrap_or_else(|_| {
            json!({"error": {"message": String::from_utf8_lossy(&body).chars().take(500).collect::<String>()}})
        });
        Ok((status, value))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("the admin endpoint did not answer within {timeout:?}"))?
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Formats rows as an aligned table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.clone()));
    }
    out
}

fn backend_row(b: &Value) -> Vec<String> {
    let models = b["models"].as_array().map_or(0, |m| m.len());
    vec![
        s(&b["name"]),
        s(&b["status"]),
        s(&b["enabled"]),
        s(&b["draining"]),
        s(&b["priority"]),
        s(&b["weight"]),
        s(&b["in_flight"]),
        models.to_string(),
        s(&b["restarts"]),
        s(&b["url"]),
    ]
}

const BACKEND_HEADERS: &[&str] = &[
    "NAME",
    "STATUS",
    "ENABLED",
    "DRAINING",
    "PRIORITY",
    "WEIGHT",
    "IN_FLIGHT",
    "MODELS",
    "RESTARTS",
    "URL",
];

fn actor_lines(a: &Value, depth: usize, out: &mut Vec<Vec<String>>) {
    out.push(vec![
        format!("{}{}", "  ".repeat(depth), s(&a["name"])),
        s(&a["id"]),
        s(&a["state"]),
        s(&a["restarts"]),
        s(&a["last_failure"]),
    ]);
    for c in a["children"].as_array().into_iter().flatten() {
        actor_lines(c, depth + 1, out);
    }
}

/// Human output for a successful answer (pure).
pub fn render(cmd: &CtlCommand, v: &Value) -> String {
    match cmd {
        CtlCommand::Backends => {
            let rows: Vec<Vec<String>> = v["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .map(backend_row)
                .collect();
            table(BACKEND_HEADERS, &rows)
        }
        CtlCommand::Actors => {
            let mut rows = Vec::new();
            actor_lines(&v["root"], 0, &mut rows);
            table(&["ACTOR", "ID", "STATE", "RESTARTS", "LAST_FAILURE"], &rows)
        }
        CtlCommand::Config => serde_json::to_string_pretty(v).unwrap_or_default(),
        CtlCommand::Reload => {
            let list = |k: &str| {
                let names: Vec<String> = v[k].as_array().into_iter().flatten().map(s).collect();
                if names.is_empty() {
                    "-".to_string()
                } else {
                    names.join(", ")
                }
            };
            format!(
                "reloaded {}\nadded:   {}\nremoved: {}\nchanged: {}",
                s(&v["reloaded"]),
                list("added"),
                list("removed"),
                list("changed")
            )
        }
        CtlCommand::Remove { .. } => format!(
            "removed {} ({})",
            s(&v["removed"]),
            if v["drained"].as_bool() == Some(true) {
                "drained".to_string()
            } else {
                format!("{} request(s) cut", s(&v["in_flight_at_removal"]))
            }
        ),
        _ if v.get("name").is_some() => table(BACKEND_HEADERS, &[backend_row(v)]),
        _ => serde_json::to_string_pretty(v).unwrap_or_default(),
    }
}

/// The server's error message from an error body.
pub fn error_message(v: &Value) -> String {
    let e = &v["error"];
    let mut msg = e["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string());
    if let Some(list) = e["errors"].as_array() {
        for item in list {
            msg.push_str("\n  - ");
            msg.push_str(&s(item));
        }
    }
    msg
}

/// Runs one subcommand: `Ok(output)` or `Err(message)` for a non-zero exit.
pub async fn run(opts: &CtlOptions, target: &Target, cmd: &CtlCommand) -> Result<String, String> {
    let (method, path, body) = request_for(cmd)?;
    let timeout = Duration::from_secs(opts.timeout_secs.max(1));
    let (status, value) = send(target, method, &path, body, timeout).await?;
    if !status.is_success() {
        return Err(format!("{}: {}", status.as_u16(), error_message(&value)));
    }
    Ok(if opts.json {
        serde_json::to_string_pretty(&value).unwrap_or_default()
    } else {
        render(cmd, &value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subcommands_map_to_the_admin_routes() {
        let (m, p, b) = request_for(&CtlCommand::Remove {
            name: "gpu 1".into(),
            timeout: Some("1s".into()),
        })
        .unwrap();
        assert_eq!(
            (m, p.as_str(), b),
            (Method::DELETE, "/admin/backends/gpu%201?timeout=1s", None)
        );
        let (m, p, b) = request_for(&CtlCommand::Set {
            name: "a".into(),
            priority: Some(5),
            weight: None,
            max_concurrency: None,
            queue_size: None,
            queue_timeout: None,
            enabled: Some(false),
            connect_timeout: None,
            first_byte_timeout: None,
            idle_timeout: Some("3s".into()),
            total_timeout: None,
        })
        .unwrap();
        assert_eq!((m, p.as_str()), (Method::PATCH, "/admin/backends/a"));
        assert_eq!(
            b.unwrap(),
            json!({"priority": 5, "enabled": false, "timeouts": {"idle": "3s"}})
        );
        assert_eq!(
            request_for(&CtlCommand::Drain { name: "a".into() })
                .unwrap()
                .1,
            "/admin/backends/a/drain"
        );
        assert!(request_for(&CtlCommand::Add {
            name: "a".into(),
            url: "http://h".into(),
            kind: "vllm".into(),
            priority: None,
            weight: None,
            check_interval: None,
            check_timeout: None,
            max_concurrency: None,
            extra: Some("[1]".into()),
        })
        .is_err());
    }

    #[test]
    fn tables_align_and_errors_carry_the_server_message() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y");
        let e = json!({"error": {"message": "bad", "errors": ["one", "two"]}});
        assert_eq!(error_message(&e), "bad\n  - one\n  - two");
    }
}
