//! Supervision over real sockets: a backend actor that panics or fails is restarted with a new
//! actor id while requests keep succeeding; a backend that exhausts its restart budget is
//! quarantined alone (siblings and the BackendSupervisor untouched) and retried after its
//! backoff; a root child (the router) that exhausts the root's budget stops the tree and the
//! daemon reports it.

mod common;

use std::time::Duration;

use common::*;
use olla_actors::BackendMsg;

async fn actor_id(d: &Daemon, name: &str) -> Option<ractor::ActorId> {
    d.app.tree.backend_actor(name).await.map(|a| a.get_id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_backend_actor_is_restarted_and_traffic_goes_on() {
    let m = mock("only", &["m"]).await;
    let d = daemon(&config(
        &[endpoint("only", &m.url(), "openai", 100, "")],
        "",
    ))
    .await;
    wait_routable(&d, &["only"], true).await;
    let load = SteadyLoad::start(&d.url(), 3, 20_000);
    for (i, msg) in ["panic", "error", "panic"].into_iter().enumerate() {
        let before = actor_id(&d, "only").await.expect("actor running");
        let actor = d.app.tree.backend_actor("only").await.unwrap();
        let sent = if msg == "panic" {
            actor.cast(BackendMsg::Panic(format!("test {i}")))
        } else {
            actor.cast(BackendMsg::Crash(format!("test {i}")))
        };
        sent.unwrap();
        let dd = &d;
        wait_until(
            Duration::from_secs(5),
            "restarted with a new actor id",
            || async move { actor_id(dd, "only").await.is_some_and(|id| id != before) },
        )
        .await;
        // The restarted actor published a fresh handle and probes again.
        wait_routable(&d, &["only"], true).await;
    }
    let served_before = load.served();
    wait_until(
        Duration::from_secs(5),
        "traffic continues after restarts",
        || async { load.served() > served_before + 20 },
    )
    .await;
    assert_eq!(load.finish().await, 0);
    assert!(d.app.tree.is_running());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_backend_budget_quarantines_that_backend_only() {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m"]).await;
    let eps = [
        endpoint("a", &a.url(), "openai", 100, ""),
        endpoint("b", &b.url(), "openai", 100, ""),
    ];
    let sup = "supervision: {backend_max_restarts: 2, backend_restart_window: 60s, root_max_restarts: 3, root_restart_window: 60s, quarantine_backoff: 2s, quarantine_max_backoff: 4s}";
    let d = daemon(&config(&eps, sup)).await;
    wait_routable(&d, &["a", "b"], true).await;
    let sup_before = d.app.tree.backend_supervisor().await.unwrap().get_id();
    let b_before = actor_id(&d, "b").await.unwrap();
    let load = SteadyLoad::start(&d.url(), 2, 20_000);
    // Two failures within budget, the third exhausts it.
    let mut crashed = None;
    for round in 0..3 {
        let dd = &d;
        // A running actor other than the one just crashed.
        wait_until(Duration::from_secs(5), "a running", || async move {
            actor_id(dd, "a")
                .await
                .is_some_and(|id| Some(id) != crashed)
        })
        .await;
        let actor = d.app.tree.backend_actor("a").await.unwrap();
        crashed = Some(actor.get_id());
        actor
            .cast(BackendMsg::Crash(format!("round {round}")))
            .unwrap();
    }
    let dd = &d;
    let slot = d
        .app
        .tree
        .published
        .slot_of("a")
        .expect("a still configured");
    wait_until(Duration::from_secs(5), "a quarantined", || async {
        slot.routing().quarantined.is_some()
    })
    .await;
    assert!(
        actor_id(dd, "a").await.is_none(),
        "no actor while quarantined"
    );
    let handle = d.app.tree.published.table().get("a").cloned().unwrap();
    assert!(!handle.is_routable(tokio::time::Instant::now()));
    let status: serde_json::Value = client()
        .get(format!("{}/internal/status/endpoints", d.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let a_status = status["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "a")
        .unwrap()
        .clone();
    assert_eq!(a_status["status"], "failed", "{a_status}");
    assert!(
        a_status["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("round 2"),
        "{a_status}"
    );
    // The sibling and the backend supervisor were never restarted; traffic went to b.
    assert_eq!(actor_id(&d, "b").await, Some(b_before));
    assert_eq!(
        d.app.tree.backend_supervisor().await.unwrap().get_id(),
        sup_before
    );
    // The quarantine ends after its backoff: a comes back with a fresh actor and budget.
    wait_until(
        Duration::from_secs(10),
        "a back after quarantine",
        || async { slot.routing().quarantined.is_none() },
    )
    .await;
    wait_routable(&d, &["a", "b"], true).await;
    assert_eq!(
        load.finish().await,
        0,
        "no request failed while a was quarantined"
    );
    assert!(d.app.tree.is_running());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_root_budget_stops_the_tree_and_the_daemon_reports_it() {
    let a = mock("a", &["m"]).await;
    let sup = "supervision: {backend_max_restarts: 0, backend_restart_window: 60s, root_max_restarts: 1, root_restart_window: 60s}";
    let d = daemon(&config(&[endpoint("a", &a.url(), "openai", 100, "")], sup)).await;
    wait_routable(&d, &["a"], true).await;
    let app = d.app.clone();
    // A backend that exhausts its budget (0) is quarantined; the tree stays up.
    app.tree
        .backend_actor("a")
        .await
        .unwrap()
        .cast(BackendMsg::Crash("backend".into()))
        .unwrap();
    let slot = app.tree.published.slot_of("a").unwrap();
    wait_until(Duration::from_secs(5), "a quarantined", || async {
        slot.routing().quarantined.is_some()
    })
    .await;
    assert!(app.tree.is_running());
    let run = tokio::spawn(d.run_until(std::future::pending()));
    // The router is a root child: the root may restart it once; the second failure in the
    // window stops the tree and the daemon.
    for round in 0..2 {
        let before = app.tree.router().await.map(|r| r.get_id());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let router = loop {
            if let Some(r) = app.tree.router().await {
                break r;
            }
            assert!(tokio::time::Instant::now() < deadline, "router available");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        router
            .cast(olla_actors::router::RouterMsg::Crash(format!(
                "round {round}"
            )))
            .unwrap();
        if round == 0 {
            let app2 = app.clone();
            wait_until(Duration::from_secs(5), "router restarted once", || {
                let app2 = app2.clone();
                async move {
                    app2.tree
                        .router()
                        .await
                        .is_some_and(|r| Some(r.get_id()) != before)
                }
            })
            .await;
        }
    }
    let exit = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("daemon ends")
        .unwrap();
    assert_eq!(exit, olla::Exit::TreeFailed);
    assert!(!app.tree.is_running());
}
