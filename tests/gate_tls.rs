//! TLS termination over real sockets with certificates the test makes (openssl CLI): curl over
//! HTTP/2 and HTTP/1.1, `X-Forwarded-Proto: https` upstream, mTLS accept and reject, the admin
//! listener over TLS, a bad certificate at reload keeping the old one, and the binary rotating
//! its certificate on SIGHUP while a stream is in flight (the stream survives; new connections
//! get the new certificate).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A directory of test certificates; removed on drop.
struct Pki(PathBuf);

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is installed (see .ci/run)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "olla-tls-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki(dir);
        std::fs::write(
            pki.path("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(
            pki.path("client.ext"),
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        pki.ca("ca1");
        pki.ca("ca2");
        pki.ca("clientca");
        pki.ca("rogueca");
        pki.leaf("server1", "ca1", "server.ext");
        pki.leaf("server2", "ca2", "server.ext");
        pki.leaf("client", "clientca", "client.ext");
        pki.leaf("rogue", "rogueca", "client.ext");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn ca(&self, name: &str) {
        openssl(
            &self.0,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=olla test {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }

    fn leaf(&self, name: &str, ca: &str, ext: &str) {
        openssl(
            &self.0,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            &self.0,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                ext,
            ],
        );
    }
}

/// Runs curl; returns (exit success, stdout).
async fn curl(args: Vec<String>) -> (bool, String) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .args(&args)
            .output()
            .expect("curl is installed")
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn chat_args(url: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    v.extend([
        "-H".into(),
        "content-type: application/json".into(),
        "-d".into(),
        chat("m", false),
        "-w".into(),
        "\n%{http_code} %{http_version}".into(),
        url.into(),
    ]);
    v
}

fn tls_server(pki: &Pki, cert: &str, extra: &str) -> String {
    format!(
        "server:\n  host: 127.0.0.1\n  port: 0\n  tls: {{cert_file: \"{}\", key_file: \"{}\"{extra}}}\n",
        pki.p(&format!("{cert}.pem")),
        pki.p(&format!("{cert}.key"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_http2_and_http1_over_tls_and_the_backend_sees_https() {
    let pki = Pki::new("h2");
    let be = mock("a", &["m"]).await;
    let d = daemon(&config(
        &[endpoint("a", &be.url(), "openai-compatible", 100, "")],
        &tls_server(&pki, "server1", ""),
    ))
    .await;
    wait_routable(&d, &["a"], true).await;
    let url = format!(
        "https://127.0.0.1:{}/olla/proxy/v1/chat/completions",
        d.addr.port()
    );
    let ca1 = pki.p("ca1.pem");
    let (ok, out) = curl(chat_args(&url, &["--http2", "--cacert", &ca1])).await;
    assert!(ok, "{out}");
    assert!(out.trim_end().ends_with("200 2"), "HTTP/2 over TLS: {out}");
    let req = be.last_request().unwrap();
    let proto = req.headers.iter().find(|(k, _)| k == "x-forwarded-proto");
    assert_eq!(proto.map(|(_, v)| v.as_str()), Some("https"));
    let (ok, out) = curl(chat_args(&url, &["--http1.1", "--cacert", &ca1])).await;
    assert!(ok && out.trim_end().ends_with("200 1.1"), "{out}");
    // The wrong CA is refused by the client; plain HTTP on the TLS port gets nothing useful.
    let (ok, _) = curl(chat_args(&url, &["--cacert", &pki.p("ca2.pem")])).await;
    assert!(!ok);
    let plain = client()
        .get(format!("http://{}/internal/health", d.addr))
        .send()
        .await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));
    d.stop().await;
    be.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_accepts_clients_of_the_ca_and_rejects_others() {
    let pki = Pki::new("mtls");
    let be = mock("a", &["m"]).await;
    let d = daemon(&config(
        &[endpoint("a", &be.url(), "openai-compatible", 100, "")],
        &tls_server(
            &pki,
            "server1",
            &format!(", client_ca_file: \"{}\"", pki.p("clientca.pem")),
        ),
    ))
    .await;
    wait_routable(&d, &["a"], true).await;
    let url = format!(
        "https://127.0.0.1:{}/olla/proxy/v1/chat/completions",
        d.addr.port()
    );
    let ca1 = pki.p("ca1.pem");
    let (ok, out) = curl(chat_args(
        &url,
        &[
            "--cacert",
            &ca1,
            "--cert",
            &pki.p("client.pem"),
            "--key",
            &pki.p("client.key"),
        ],
    ))
    .await;
    assert!(ok && out.trim_end().ends_with("200 2"), "{out}");
    let (ok, out) = curl(chat_args(&url, &["--cacert", &ca1])).await;
    assert!(!ok, "no client certificate: {out}");
    let (ok, out) = curl(chat_args(
        &url,
        &[
            "--cacert",
            &ca1,
            "--cert",
            &pki.p("rogue.pem"),
            "--key",
            &pki.p("rogue.key"),
        ],
    ))
    .await;
    assert!(!ok, "a certificate of another CA: {out}");
    assert_eq!(chats(&be), 1);
    d.stop().await;
    be.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_over_tls_and_a_bad_certificate_at_reload_keeps_the_old_one() {
    let pki = Pki::new("admin");
    let be = mock("a", &["m"]).await;
    // The served files are copies the test can break.
    std::fs::copy(pki.path("server1.pem"), pki.path("live.pem")).unwrap();
    std::fs::copy(pki.path("server1.key"), pki.path("live.key")).unwrap();
    let yaml = config(
        &[endpoint("a", &be.url(), "openai-compatible", 100, "")],
        &format!(
            "{}admin: {{enabled: true, listen: \"127.0.0.1:0\", token: tok-123456, tls: {{cert_file: \"{}\", key_file: \"{}\"}}}}\n",
            tls_server(&pki, "live", ""),
            pki.p("server1.pem"),
            pki.p("server1.key")
        ),
    );
    let path = pki.path("olla.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let d = daemon(&yaml).await;
    d.set_origin(
        olla::config::parse(&yaml, &|_| None).unwrap(),
        Some(path.clone()),
    );
    wait_routable(&d, &["a"], true).await;
    let admin = format!(
        "https://127.0.0.1:{}/admin/reload",
        d.admin_addr.unwrap().port()
    );
    let ca1 = pki.p("ca1.pem");
    let reload = || {
        curl(vec![
            "--cacert".into(),
            ca1.clone(),
            "-X".into(),
            "POST".into(),
            "-H".into(),
            "authorization: Bearer tok-123456".into(),
            "-w".into(),
            "\n%{http_code}".into(),
            admin.clone(),
        ])
    };
    let (ok, out) = reload().await;
    assert!(
        ok && out.trim_end().ends_with("200"),
        "admin over TLS: {out}"
    );
    // olla ctl speaks https with --cacert.
    let ctl_url = format!("https://127.0.0.1:{}", d.admin_addr.unwrap().port());
    let ctl = tokio::task::spawn_blocking({
        let ca1 = ca1.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_olla"))
                .args([
                    "ctl",
                    "--admin-url",
                    &ctl_url,
                    "--cacert",
                    &ca1,
                    "--token",
                    "tok-123456",
                    "--json",
                    "backends",
                ])
                .env_remove("OLLA_ADMIN_URL")
                .env_remove("OLLA_CONFIG_FILE")
                .current_dir(std::env::temp_dir())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&ctl.stdout);
    assert!(
        ctl.status.success() && text.contains("\"a\""),
        "olla ctl over TLS: {text} {}",
        String::from_utf8_lossy(&ctl.stderr)
    );
    std::fs::write(
        pki.path("live.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let (ok, out) = reload().await;
    assert!(ok && out.trim_end().ends_with("400"), "{out}");
    assert!(
        out.contains("server.tls") && out.contains("live.pem"),
        "{out}"
    );
    let url = format!(
        "https://127.0.0.1:{}/olla/proxy/v1/chat/completions",
        d.addr.port()
    );
    let (ok, out) = curl(chat_args(&url, &["--cacert", &ca1])).await;
    assert!(
        ok && out.trim_end().ends_with("200 2"),
        "the old certificate still serves: {out}"
    );
    d.stop().await;
    be.stop().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed on drop if still running.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_certificate_while_a_stream_is_in_flight() {
    let pki = Pki::new("rotate");
    let be = paced_mock("a", 30, 100).await; // a 3 s stream
    std::fs::copy(pki.path("server1.pem"), pki.path("live.pem")).unwrap();
    std::fs::copy(pki.path("server1.key"), pki.path("live.key")).unwrap();
    let port = free_port();
    let yaml = format!(
        "server:\n  host: 127.0.0.1\n  port: {port}\n  threads: 1\n  shutdown_timeout: 2s\n  tls: {{cert_file: \"{}\", key_file: \"{}\"}}\nlogging: {{level: warn}}\n{}",
        pki.p("live.pem"),
        pki.p("live.key"),
        config(&[endpoint("a", &be.url(), "openai", 100, "")], "server: {}").trim_start_matches("server: {}\n")
    );
    let path = pki.path("olla.yaml");
    std::fs::write(&path, yaml).unwrap();
    let olla = Child(
        Command::new(env!("CARGO_BIN_EXE_olla"))
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("https://127.0.0.1:{port}/olla/proxy/v1/chat/completions");
    let (ca1, ca2) = (pki.p("ca1.pem"), pki.p("ca2.pem"));
    wait_until(Duration::from_secs(15), "olla up over TLS", || {
        let args = chat_args(&url, &["--cacert", &ca1]);
        async move { curl(args).await.1.trim_end().ends_with("200 2") }
    })
    .await;
    // A stream over a connection made with the first certificate.
    let mut stream = Child(
        Command::new("curl")
            .args(["-sSN", "--http2", "--max-time", "30", "--cacert", &ca1])
            .args([
                "-H",
                "content-type: application/json",
                "-d",
                &chat("m", true),
                &url,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = stream.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the stream starts");
    assert!(first.starts_with("data: "), "{first}");
    // Rotate: the files now hold the second certificate; SIGHUP reloads.
    std::fs::copy(pki.path("server2.pem"), pki.path("live.pem")).unwrap();
    std::fs::copy(pki.path("server2.key"), pki.path("live.key")).unwrap();
    // SAFETY: plain kill(2) on a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(olla.0.id() as i32, libc::SIGHUP) }, 0);
    wait_until(
        Duration::from_secs(10),
        "new connections get the new certificate",
        || {
            let args = chat_args(&url, &["--cacert", &ca2]);
            async move { curl(args).await.1.trim_end().ends_with("200 2") }
        },
    )
    .await;
    let (ok, _) = curl(chat_args(&url, &["--cacert", &ca1])).await;
    assert!(!ok, "the old certificate is no longer offered");
    // The stream opened before the rotation runs to its end.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = vec![first];
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => lines.push(l),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(_) => break,
        }
    }
    let status = stream.0.wait().unwrap();
    let _ = reader.join();
    assert!(status.success(), "curl ended with {status:?}");
    assert!(
        lines.iter().any(|l| l.contains("[DONE]")),
        "the in-flight stream completed: {lines:?}"
    );
    assert!(
        lines.iter().filter(|l| l.starts_with("data: {")).count() >= 30,
        "{lines:?}"
    );
    drop(olla);
    be.stop().await;
}
