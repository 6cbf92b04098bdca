//! Inbound API keys over real sockets: the three ways to present a key, 401 for a missing,
//! wrong or expired key (Anthropic-shaped on `/olla/anthropic`), 403 for a model the key may
//! not use, hashed and file keys, per-key requests/min and tokens/min limits and their refill,
//! keys added and revoked over the admin API and by reload without a restart, the key never
//! reaching a backend, and the `/internal/*` access option.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const CHAT: &str = "/olla/proxy/v1/chat/completions";
const TOKEN: &str = "admin-t0ken";
/// SHA-256 of `sk-hashed-0002`.
const HASHED: &str = "sk-hashed-0002";

fn sha256_hex(s: &str) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .expect("sha256sum runs");
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

fn temp_file(tag: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "olla-gate-{tag}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&p, text).unwrap();
    p
}

fn keys_config(be: &MockServer, key_file: &Path, extra_keys: &str) -> String {
    config(
        &[endpoint("a", &be.url(), "openai-compatible", 100, "")],
        &format!(
            "admin: {{enabled: true, listen: \"127.0.0.1:0\", token: {TOKEN}}}\nauth:\n  keys:\n    - {{name: alice, key: sk-alice-0001}}\n    - {{name: hashed, key_hash: {}}}\n    - {{name: filed, key_file: \"{}\"}}\n    - {{name: limited, key: sk-limited-0003, models: [\"m*\"], requests_per_minute: 2}}\n    - {{name: old, key: sk-old-0004, expires: \"2001-01-01T00:00:00Z\"}}\n    - {{name: tokens, key: sk-tokens-0005, tokens_per_minute: 600}}\n{extra_keys}",
            sha256_hex(HASHED),
            key_file.display()
        ),
    )
}

async fn start(yaml: &str, path: Option<&Path>) -> Daemon {
    let d = daemon(yaml).await;
    if let Some(p) = path {
        let cfg = olla::config::parse(yaml, &|_| None).unwrap();
        d.set_origin(cfg, Some(p.to_path_buf()));
    }
    d
}

async fn chat_as(
    d: &Daemon,
    path: &str,
    model: &str,
    auth: Option<(&str, &str)>,
) -> reqwest::Response {
    let mut r = client()
        .post(format!("http://{}{path}", d.addr))
        .header("content-type", "application/json")
        .body(chat(model, false));
    if let Some((h, v)) = auth {
        r = r.header(h, v);
    }
    r.send().await.expect("olla answers")
}

async fn status_of(d: &Daemon, model: &str, auth: Option<(&str, &str)>) -> u16 {
    chat_as(d, CHAT, model, auth).await.status().as_u16()
}

async fn admin(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = client()
        .request(
            method.parse().unwrap(),
            format!("{}{path}", d.admin_url().unwrap()),
        )
        .header("authorization", format!("Bearer {TOKEN}"));
    if let Some(b) = body {
        r = r
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn no_credentials_reached(be: &MockServer) {
    let req = be.last_request().expect("the backend saw a request");
    for (name, value) in &req.headers {
        assert!(
            !["authorization", "x-api-key", "api-key"].contains(&name.as_str()),
            "{name} reached the backend"
        );
        assert!(
            !value.contains("sk-"),
            "a key reached the backend in {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_accepted_in_three_headers_refused_otherwise_and_never_forwarded() {
    let be = mock("a", &["m", "other"]).await;
    let key_file = temp_file("key", "sk-filed-0009\n");
    let d = start(&keys_config(&be, &key_file, ""), None).await;
    wait_routable(&d, &["a"], true).await;
    for auth in [
        ("authorization", "Bearer sk-alice-0001"),
        ("x-api-key", "sk-alice-0001"),
        ("api-key", "sk-alice-0001"),
        ("x-api-key", HASHED),
        ("authorization", "Bearer sk-filed-0009"),
    ] {
        assert_eq!(status_of(&d, "m", Some(auth)).await, 200, "{auth:?}");
        no_credentials_reached(&be);
    }
    let r = chat_as(&d, CHAT, "m", None).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("x-olla-request-id"));
    assert!(r.headers().contains_key("www-authenticate"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("missing"));
    for auth in [
        ("authorization", "Bearer sk-alice-0002"),
        ("x-api-key", "sk-alice"),
        ("authorization", "Basic c2stYWxpY2UtMDAwMQ=="),
    ] {
        assert_eq!(status_of(&d, "m", Some(auth)).await, 401, "{auth:?}");
    }
    let r = chat_as(&d, CHAT, "m", Some(("x-api-key", "sk-old-0004"))).await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("expired"));
    // Anthropic routes answer in Anthropic's shape.
    let r = chat_as(&d, "/olla/anthropic/v1/messages", "m", None).await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    // Model lists need a key too; health and status do not.
    let r = client()
        .get(format!("http://{}/olla/models", d.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for p in ["/internal/health", "/internal/status"] {
        let r = client()
            .get(format!("http://{}{p}", d.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{p}");
    }
    assert!(
        d.app.gate.stats.status_json()["auth_failures"]
            .as_u64()
            .unwrap()
            >= 6
    );
    d.stop().await;
    be.stop().await;
    let _ = std::fs::remove_file(key_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_request_budgets_are_enforced_per_key() {
    let be = mock("a", &["m", "other"]).await;
    let key_file = temp_file("key", "sk-filed-0009\n");
    let d = start(&keys_config(&be, &key_file, ""), None).await;
    wait_routable(&d, &["a"], true).await;
    let limited = Some(("authorization", "Bearer sk-limited-0003"));
    let r = chat_as(&d, CHAT, "other", limited).await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("other"),
        "{v}"
    );
    assert_eq!(chats(&be), 0, "a forbidden model never reaches a backend");
    let r = chat_as(&d, "/olla/anthropic/v1/messages", "other", limited).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "permission_error"
    );
    // The 403s above spent the key's two requests for this minute.
    let r = chat_as(&d, CHAT, "m", limited).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=31).contains(&retry), "{retry}");
    assert!(r.text().await.unwrap().contains("requests per minute"));
    // Other keys are not affected.
    assert_eq!(
        status_of(&d, "other", Some(("x-api-key", "sk-alice-0001"))).await,
        200
    );
    d.stop().await;
    be.stop().await;
    let _ = std::fs::remove_file(key_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_token_budget_gets_429_until_the_window_refills() {
    let be = mock("a", &["m"]).await;
    let key_file = temp_file("key", "sk-filed-0009\n");
    let d = start(&keys_config(&be, &key_file, ""), None).await;
    wait_routable(&d, &["a"], true).await;
    let auth = Some(("x-api-key", "sk-tokens-0005"));
    assert_eq!(status_of(&d, "m", auth).await, 200);
    // 600 tokens/min = 10 a second back; 605 spent leaves the budget 5 short.
    d.app.gate.keys.get("tokens").unwrap().charge_tokens(605);
    let r = chat_as(&d, CHAT, "m", auth).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.text().await.unwrap().contains("tokens per minute"));
    wait_until(
        Duration::from_secs(5),
        "the token budget refills",
        || async { status_of(&d, "m", auth).await == 200 },
    )
    .await;
    assert!(
        d.app.gate.stats.status_json()["key_token_limits"]
            .as_u64()
            .unwrap()
            >= 1
    );
    d.stop().await;
    be.stop().await;
    let _ = std::fs::remove_file(key_file);
}

/// The whole path: the response's usage charges the key when the response finishes. This
/// needs the request finisher (telemetry) to charge the key that admitted the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reported_by_the_backend_is_charged_to_the_key() {
    let be = MockServer::start(MockConfig {
        name: "a".into(),
        models: vec!["m".into()],
        tokens: 700,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let key_file = temp_file("key", "sk-filed-0009\n");
    let d = start(&keys_config(&be, &key_file, ""), None).await;
    wait_routable(&d, &["a"], true).await;
    let auth = Some(("x-api-key", "sk-tokens-0005"));
    let r = chat_as(&d, CHAT, "m", auth).await;
    assert_eq!(r.status(), 200);
    let _ = r.text().await.unwrap();
    wait_until(
        Duration::from_secs(5),
        "usage charged: the key is over budget",
        || async { status_of(&d, "m", auth).await == 429 },
    )
    .await;
    d.stop().await;
    be.stop().await;
    let _ = std::fs::remove_file(key_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_added_and_revoked_over_admin_and_by_reload_without_restart() {
    let be = mock("a", &["m"]).await;
    let key_file = temp_file("key", "sk-filed-0009\n");
    let yaml = keys_config(&be, &key_file, "");
    let path = temp_file("config.yaml", &yaml);
    let d = start(&yaml, Some(&path)).await;
    wait_routable(&d, &["a"], true).await;
    let bob = Some(("authorization", "Bearer sk-bob-secret-77"));
    assert_eq!(status_of(&d, "m", bob).await, 401);
    let (status, v) = admin(
        &d,
        "POST",
        "/admin/keys",
        Some(json!({"name": "bob", "key": "sk-bob-secret-77", "models": ["m"]})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["name"], "bob");
    assert_eq!(status_of(&d, "m", bob).await, 200);
    let (status, v) = admin(
        &d,
        "POST",
        "/admin/keys",
        Some(json!({"name": "bob", "key": "sk-another-88"})),
    )
    .await;
    assert_eq!(status, 409, "{v}");
    let (status, v) = admin(
        &d,
        "POST",
        "/admin/keys",
        Some(json!({"name": "x", "key": "sk-x-0000001", "colour": 1})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = admin(&d, "GET", "/admin/keys", None).await;
    assert_eq!(status, 200);
    let text = v.to_string();
    assert!(
        text.contains("\"bob\"") && text.contains("\"alice\""),
        "{text}"
    );
    for secret in ["sk-bob", "sk-alice", "sk-hashed", &sha256_hex(HASHED)] {
        assert!(!text.contains(secret), "GET /admin/keys shows {secret}");
    }
    let (status, _) = admin(&d, "DELETE", "/admin/keys/bob", None).await;
    assert_eq!(status, 200);
    assert_eq!(status_of(&d, "m", bob).await, 401, "revoked at once");
    let (status, _) = admin(&d, "DELETE", "/admin/keys/bob", None).await;
    assert_eq!(status, 404);
    // A reload loads the file's keys: alice revoked, carol added.
    let alice = Some(("x-api-key", "sk-alice-0001"));
    assert_eq!(status_of(&d, "m", alice).await, 200);
    let newer = yaml.replace(
        "{name: alice, key: sk-alice-0001}",
        "{name: carol, key: sk-carol-0010}",
    );
    std::fs::write(&path, &newer).unwrap();
    let (status, v) = admin(&d, "POST", "/admin/reload", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(status_of(&d, "m", alice).await, 401);
    assert_eq!(
        status_of(&d, "m", Some(("x-api-key", "sk-carol-0010"))).await,
        200
    );
    // A broken key entry fails the reload and keeps the running keys.
    std::fs::write(
        &path,
        newer.replace("key: sk-carol-0010", "key_hash: nothex"),
    )
    .unwrap();
    let (status, v) = admin(&d, "POST", "/admin/reload", None).await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("key_hash"), "{v}");
    assert_eq!(
        status_of(&d, "m", Some(("x-api-key", "sk-carol-0010"))).await,
        200
    );
    d.stop().await;
    be.stop().await;
    let _ = std::fs::remove_file(key_file);
    let _ = std::fs::remove_file(path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_routes_can_be_restricted_by_network_or_key() {
    let be = mock("a", &["m"]).await;
    let d = daemon(&config(
        &[endpoint("a", &be.url(), "openai-compatible", 100, "")],
        "server:\n  host: 127.0.0.1\n  port: 0\n  internal_access: {allowed_cidrs: [10.0.0.0/8]}\n",
    ))
    .await;
    let r = client()
        .get(format!("http://{}/internal/status", d.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().contains_key("x-olla-request-id"));
    let r = client()
        .get(format!("http://{}/olla/models", d.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "only /internal is restricted");
    d.stop().await;
    let d = daemon(&config(
        &[endpoint("a", &be.url(), "openai-compatible", 100, "")],
        "server:\n  host: 127.0.0.1\n  port: 0\n  internal_access: {allowed_cidrs: [127.0.0.0/8], require_api_key: true}\nauth:\n  keys: [{name: ops, key: sk-ops-000001}]\n",
    ))
    .await;
    let get = |p: &'static str, key: Option<&'static str>| {
        let mut r = client().get(format!("http://{}{p}", d.addr));
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get("/internal/status", None).await, 401);
    assert_eq!(get("/internal/status", Some("sk-ops-000001")).await, 200);
    assert_eq!(
        get("/internal/health", None).await,
        200,
        "health stays open for probes"
    );
    d.stop().await;
    // require_api_key without keys is a config error.
    let cfg = olla::config::parse(
        "server: {internal_access: {require_api_key: true}}\n",
        &|_| None,
    )
    .unwrap();
    let e = olla::config::resolve(&cfg).unwrap_err();
    assert!(e.iter().any(|m| m.contains("require_api_key")), "{e:?}");
    be.stop().await;
}
