//! Fault isolation: a backend whose actor keeps crashing (admin fault injection, over and over
//! for a minute) beside a healthy one, under steady load. The healthy backend never fails a
//! request and its actor is never restarted, the process stays up, and the crashing backend is
//! quarantined and shown as `failed` with its last panic in `/internal/status/endpoints`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;

const TOKEN: &str = "q-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_keeps_crashing_is_quarantined_and_its_sibling_serves_on() {
    let bad = mock("bad", &["m"]).await;
    let good = mock("good", &["m"]).await;
    let extra = format!(
        "supervision: {{backend_max_restarts: 3, backend_restart_window: 60s, quarantine_backoff: 2s, quarantine_max_backoff: 8s}}\nadmin: {{enabled: true, listen: \"127.0.0.1:0\", token: {TOKEN}, fault_injection: true}}\n"
    );
    let d = daemon(&config(
        &[
            endpoint("bad", &bad.url(), "openai", 100, ""),
            endpoint("good", &good.url(), "openai", 100, ""),
        ],
        &extra,
    ))
    .await;
    wait_routable(&d, &["bad", "good"], true).await;
    let good_actor = d.app.tree.backend_actor("good").await.unwrap().get_id();
    let sup = d.app.tree.backend_supervisor().await.unwrap().get_id();
    let load = SteadyLoad::start(&d.url(), 3, 100_000);

    // The crasher: whenever `bad` has a running actor, panic it (as a probe that always
    // panics would), for 60 s.
    let admin = d.admin_url().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let crashes = Arc::new(AtomicUsize::new(0));
    let crasher = {
        let (stop, crashes, admin) = (stop.clone(), crashes.clone(), admin.clone());
        tokio::spawn(async move {
            let c = client();
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r = c
                    .post(format!("{admin}/admin/backends/bad/crash"))
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 202) {
                    crashes.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut seen_failed = None;
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let v: Value = client()
            .get(format!("{}/internal/status/endpoints", d.url()))
            .send()
            .await
            .expect("the daemon stays up")
            .json()
            .await
            .unwrap();
        if let Some(e) = v["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "bad" && e["status"] == "failed")
        {
            seen_failed = Some(e.clone());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::Relaxed);
    crasher.await.unwrap();
    let failed = seen_failed.expect("bad was shown as failed");
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("fault injection"),
        "{failed}"
    );
    assert!(
        crashes.load(Ordering::Relaxed) >= 6,
        "several quarantine cycles ran"
    );
    let served_good = load.served_by("good");
    assert_eq!(load.finish().await, 0, "no request failed");
    assert!(served_good > 100, "good served: {served_good}");
    assert_eq!(
        d.app.tree.backend_actor("good").await.map(|a| a.get_id()),
        Some(good_actor),
        "the healthy sibling's actor was never restarted"
    );
    assert_eq!(
        d.app.tree.backend_supervisor().await.map(|s| s.get_id()),
        Some(sup)
    );
    assert!(d.app.tree.is_running());
    d.stop().await;
}
