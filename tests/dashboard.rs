//! The web dashboard over real sockets: Olla's access gate (peer CIDR, `Host`, exact 403 text),
//! 307 / 405 / 404, security headers and CSP, strong ETags with 304, `dashboard.enabled: false`,
//! the supervision-tree JSON it reads, and the admin UI on the admin listener (static files
//! open, the status JSON it reads behind the admin token).

mod common;

use common::*;
use serde_json::Value;

const TOKEN: &str = "t0ken-for-dashboard";
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn no_redirect() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn start(extra: &str) -> (MockServer, Daemon) {
    let m = mock("gpu1", &["m"]).await;
    let d = daemon(&config(
        &[endpoint("gpu1", &m.url(), "openai", 100, "")],
        extra,
    ))
    .await;
    (m, d)
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn assert_security_headers(r: &reqwest::Response) {
    assert_eq!(header(r, "x-content-type-options"), "nosniff");
    assert_eq!(header(r, "x-frame-options"), "DENY");
    assert_eq!(header(r, "referrer-policy"), "no-referrer");
    assert_eq!(header(r, "content-security-policy"), CSP);
}

#[tokio::test]
async fn serves_the_page_with_security_headers_etags_and_304() {
    let (m, d) = start("").await;
    let c = no_redirect();
    let base = d.url();

    let r = c.get(format!("{base}/internal/ui")).send().await.unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(header(&r, "location"), "/internal/ui/");
    assert_security_headers(&r);

    let r = c.get(format!("{base}/internal/ui/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_security_headers(&r);
    assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&r, "cache-control"), "no-cache");
    let etag = header(&r, "etag").to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong: {etag}"
    );
    let html = r.text().await.unwrap();
    assert!(html.contains("<script src=\"app.js\""), "{html}");

    let r = c
        .get(format!("{base}/internal/ui/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, "etag"), etag);
    assert_security_headers(&r);
    assert!(r.bytes().await.unwrap().is_empty());

    let r = c
        .get(format!("{base}/internal/ui/"))
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let r = c
        .get(format!("{base}/internal/ui/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/javascript; charset=utf-8");
    assert_eq!(header(&r, "cache-control"), "max-age=3600");
    assert_ne!(header(&r, "etag"), etag);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("/internal/status/endpoints"));

    let r = c
        .get(format!("{base}/internal/ui/app.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-type"), "text/css; charset=utf-8");

    // A page path falls back to the index; a missing file is a 404 (with the headers).
    let r = c
        .get(format!("{base}/internal/ui/endpoints"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "etag"), etag);
    let r = c
        .get(format!("{base}/internal/ui/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_security_headers(&r);

    let r = c.head(format!("{base}/internal/ui/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "etag"), etag);

    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = c
            .request(method.parse().unwrap(), format!("{base}/internal/ui/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method}");
        assert_eq!(header(&r, "allow"), "GET, HEAD");
        assert_security_headers(&r);
    }
    d.stop().await;
    m.stop().await;
}

#[tokio::test]
async fn the_gate_turns_away_other_hosts_and_peers_with_ollas_text() {
    let (m, d) = start("").await;
    let c = no_redirect();
    let port = d.addr.port();
    let url = format!("{}/internal/ui/", d.url());

    for host in [
        format!("localhost:{port}"),
        "LocalHost".into(),
        format!("127.0.0.1:{port}"),
    ] {
        let r = c.get(&url).header("host", &host).send().await.unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
    let r = c
        .get(&url)
        .header("host", "evil.example:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(header(&r, "content-type"), "text/plain; charset=utf-8");
    assert_security_headers(&r);
    assert_eq!(
        r.text().await.unwrap(),
        "403 forbidden: host not accepted (ip=127.0.0.1, host=evil.example:8080). Adjust dashboard.access_policy.allowed_hosts (or allowed_cidrs) in your config.\n"
    );
    // The redirect is gated too.
    let r = c
        .get(format!("{}/internal/ui", d.url()))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The JSON status routes are not gated (as in Olla).
    let r = c
        .get(format!("{}/internal/status", d.url()))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    d.stop().await;
    m.stop().await;

    // A peer outside allowed_cidrs; forwarding headers are not believed.
    let (m, d) = start(
        "dashboard:\n  access_policy: {allowed_cidrs: [\"10.0.0.0/8\"], allowed_hosts: [dash.lan]}\n",
    )
    .await;
    let r = c
        .get(format!("{}/internal/ui/", d.url()))
        .header("host", "dash.lan")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-real-ip", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.text().await.unwrap(),
        "403 forbidden: ip not in allowed range (ip=127.0.0.1, host=dash.lan). Adjust dashboard.access_policy.allowed_hosts (or allowed_cidrs) in your config.\n"
    );
    d.stop().await;
    m.stop().await;
}

#[tokio::test]
async fn disabled_dashboard_is_a_plain_404_and_an_empty_cidr_list_a_startup_error() {
    let (m, d) = start("dashboard: {enabled: false}\n").await;
    let c = no_redirect();
    for path in ["/internal/ui", "/internal/ui/", "/internal/ui/app.js"] {
        let r = c.get(format!("{}{path}", d.url())).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert!(r.headers().get("content-security-policy").is_none());
    }
    d.stop().await;
    m.stop().await;

    let cfg = olla::config::parse(
        "dashboard:\n  access_policy: {allowed_cidrs: []}\n",
        &|_| None,
    )
    .unwrap();
    let errors = olla::config::resolve(&cfg).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("dashboard.access_policy.allowed_cidrs")),
        "{errors:?}"
    );
    let cfg = olla::config::parse(
        "dashboard:\n  access_policy: {allowed_cidrs: [\"300.1.1.1/8\"]}\n",
        &|_| None,
    )
    .unwrap();
    assert!(olla::config::resolve(&cfg).is_err());
    let cfg = olla::config::parse(
        "dashboard:\n  enabled: false\n  access_policy: {allowed_cidrs: []}\n",
        &|_| None,
    )
    .unwrap();
    assert!(olla::config::resolve(&cfg).is_ok());
}

#[tokio::test]
async fn the_supervision_tree_is_served_as_json() {
    let (m, d) = start("").await;
    wait_routable(&d, &["gpu1"], false).await;
    let r = client()
        .get(format!("{}/internal/status/supervision", d.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["root"]["name"], "root");
    assert_eq!(v["root"]["state"], "running");
    let children = v["root"]["children"].as_array().expect("children");
    let backends = children
        .iter()
        .find(|c| c["name"] == "backends")
        .expect("backends supervisor");
    let gpu = backends["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "backend:gpu1")
        .expect("backend actor");
    assert_eq!(gpu["state"], "running");
    assert_eq!(gpu["restarts"], 0);
    let r = client()
        .post(format!("{}/internal/status/supervision", d.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    d.stop().await;
    m.stop().await;
}

#[tokio::test]
async fn the_admin_ui_is_served_on_the_admin_listener_and_its_data_needs_the_token() {
    let (m, d) = start(&format!(
        "admin: {{enabled: true, listen: \"127.0.0.1:0\", token: {TOKEN}}}\n"
    ))
    .await;
    let admin = d.admin_url().unwrap();
    let c = no_redirect();
    let r = c.get(format!("{admin}/admin/ui")).send().await.unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(header(&r, "location"), "/admin/ui/");
    let r = c.get(format!("{admin}/admin/ui/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_security_headers(&r);
    assert!(r.text().await.unwrap().contains("app.js"));

    for path in [
        "/internal/status",
        "/internal/status/endpoints",
        "/internal/status/supervision",
    ] {
        let r = c.get(format!("{admin}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without the token");
        let r = c
            .get(format!("{admin}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with the token");
        let _: Value = r.json().await.unwrap();
    }
    // Only reads are passed through.
    let r = c
        .post(format!("{admin}/internal/status"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The proxy port does not serve the admin UI.
    let r = c
        .get(format!("{}/admin/ui/", d.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    d.stop().await;
    m.stop().await;

    let (m, d) = start(&format!(
        "admin: {{enabled: true, listen: \"127.0.0.1:0\", token: {TOKEN}}}\ndashboard: {{enabled: false}}\n"
    ))
    .await;
    let r = c
        .get(format!("{}/admin/ui/", d.admin_url().unwrap()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    d.stop().await;
    m.stop().await;
}
