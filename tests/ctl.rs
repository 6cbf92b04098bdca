//! `olla ctl` end to end against a running daemon (tables and `--json`, errors with the
//! server's message and a non-zero exit), and the daemon binary's signals: SIGHUP reloads the
//! config file, SIGTERM lets an in-flight stream run up to `server.shutdown_timeout`, then cuts
//! it and exits 0 within that bound.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TOKEN: &str = "ctl-token";

async fn ctl(admin_url: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_olla"));
    cmd.arg("ctl")
        .arg("--admin-url")
        .arg(admin_url)
        .args(args)
        .env("OLLA_ADMIN_TOKEN", TOKEN)
        .env_remove("OLLA_ADMIN_URL")
        .env_remove("OLLA_CONFIG_FILE")
        .current_dir(std::env::temp_dir());
    tokio::task::spawn_blocking(move || cmd.output().expect("olla ctl runs"))
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_mirrors_the_admin_commands_with_tables_and_json() {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m"]).await;
    let d = daemon(&config(
        &[endpoint("a", &a.url(), "openai", 100, "")],
        &format!("admin: {{enabled: true, listen: \"127.0.0.1:0\", token: {TOKEN}}}\n"),
    ))
    .await;
    wait_routable(&d, &["a"], true).await;
    let url = d.admin_url().unwrap();

    let o = ctl(&url, &["backends"]).await;
    assert!(o.status.success(), "{o:?}");
    let table = stdout(&o);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("STATUS"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("a ") && lines[1].contains("healthy"),
        "{table}"
    );

    let o = ctl(&url, &["--json", "backends"]).await;
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).expect("--json prints JSON");
    assert_eq!(v["backends"][0]["name"], "a");

    let o = ctl(
        &url,
        &[
            "add",
            "--name",
            "b",
            "--url",
            &b.url(),
            "--type",
            "openai",
            "--priority",
            "10",
            "--check-interval",
            "200ms",
            "--check-timeout",
            "500ms",
        ],
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("b "), "{}", stdout(&o));
    wait_routable(&d, &["b"], true).await;

    let o = ctl(
        &url,
        &[
            "--json",
            "set",
            "b",
            "--weight",
            "4",
            "--idle-timeout",
            "9s",
        ],
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["weight"], 4);

    for cmd in ["drain", "enable", "disable", "probe", "discover", "restart"] {
        let o = ctl(&url, &[cmd, "b"]).await;
        assert!(o.status.success(), "{cmd}: {o:?}");
    }
    let o = ctl(&url, &["actors"]).await;
    assert!(
        o.status.success() && stdout(&o).contains("backend:b"),
        "{o:?}"
    );
    let o = ctl(&url, &["--json", "config"]).await;
    assert!(o.status.success(), "{o:?}");
    assert!(!stdout(&o).contains(TOKEN));
    let o = ctl(&url, &["remove", "b", "--timeout", "2s"]).await;
    assert!(
        o.status.success() && stdout(&o).contains("removed b"),
        "{o:?}"
    );

    // Failures: non-zero exit with the server's message.
    let o = ctl(&url, &["drain", "nosuch"]).await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("404") && err.contains("nosuch"), "{err}");
    let o = ctl(&url, &["reload"]).await;
    assert!(!o.status.success(), "no config file to reload");
    let mut bad = Command::new(env!("CARGO_BIN_EXE_olla"));
    bad.args(["ctl", "--admin-url", &url, "--token", "wrong", "backends"]);
    let o = tokio::task::spawn_blocking(move || bad.output().unwrap())
        .await
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("401"), "{o:?}");
    d.stop().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon binary on a config file; killed on drop if still running.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(p: &Proc, sig: i32) {
    // SAFETY: plain kill(2) on a child we started and have not reaped.
    let rc = unsafe { libc::kill(p.0.id() as i32, sig) };
    assert_eq!(rc, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_on_sighup_and_exits_zero_within_the_shutdown_bound() {
    let a = paced_mock("a", 300, 100).await; // a 30 s stream
    let b = mock("b", &["m", "b-only"]).await;
    let (port, admin_port) = (free_port(), free_port());
    let text = |eps: &[String]| {
        format!(
            "server: {{host: 127.0.0.1, port: {port}, threads: 1, shutdown_timeout: 2s}}\nadmin: {{enabled: true, listen: \"127.0.0.1:{admin_port}\", token: {TOKEN}}}\nlogging: {{level: warn}}\n{}",
            config(eps, "server: {}").trim_start_matches("server: {}\n")
        )
    };
    let path = std::env::temp_dir().join(format!("olla-ctl-{}-{port}.yaml", std::process::id()));
    std::fs::write(&path, text(&[endpoint("a", &a.url(), "openai", 100, "")])).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_olla"))
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    let base = format!("http://127.0.0.1:{port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    wait_until(Duration::from_secs(15), "daemon up with a routable", || {
        let base = base.clone();
        async move { post_chat(&client(), &base, "m").await.0 == 200 }
    })
    .await;

    // SIGHUP: the file now also has b.
    std::fs::write(
        &path,
        text(&[
            endpoint("a", &a.url(), "openai", 100, ""),
            endpoint("b", &b.url(), "openai", 100, ""),
        ]),
    )
    .unwrap();
    signal(&proc, libc::SIGHUP);
    wait_until(
        Duration::from_secs(15),
        "b added by SIGHUP and serving",
        || {
            let base = base.clone();
            async move { post_chat(&client(), &base, "b-only").await.0 == 200 }
        },
    )
    .await;
    let o = ctl(&admin, &["--json", "backends"]).await;
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["backends"].as_array().unwrap().len(), 2, "{v}");

    // SIGTERM with a 30 s stream in flight: exit 0 within shutdown_timeout (2 s) plus slack.
    let mut stream = client()
        .post(format!("{base}/olla/proxy/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat("m", true))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    stream.chunk().await.unwrap();
    let started = Instant::now();
    signal(&proc, libc::SIGTERM);
    let mut proc = proc;
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = proc.0.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap()
    .expect("the daemon exits");
    let took = started.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    assert!(
        took >= Duration::from_millis(1500),
        "the stream had its grace period: {took:?}"
    );
    let _ = std::fs::remove_file(&path);
}
