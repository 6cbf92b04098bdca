//! Supervision over real sockets: a backend actor that panics or fails is restarted with a new
//! actor id while requests keep succeeding; a backend that exhausts its restart budget escalates
//! (the BackendSupervisor is restarted with every backend); a root that exhausts its budget
//! stops the tree and the daemon reports it.

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
async fn an_exhausted_backend_budget_escalates_to_a_backend_supervisor_restart() {
    let a = mock("a", &["m"]).await;
    let b = mock("b", &["m"]).await;
    let eps = [
        endpoint("a", &a.url(), "openai", 100, ""),
        endpoint("b", &b.url(), "openai", 100, ""),
    ];
    let sup = "supervision: {backend_max_restarts: 2, backend_restart_window: 60s, root_max_restarts: 3, root_restart_window: 60s}";
    let d = daemon(&config(&eps, sup)).await;
    wait_routable(&d, &["a", "b"], true).await;
    let sup_before = d.app.tree.backend_supervisor().await.unwrap().get_id();
    let b_before = actor_id(&d, "b").await.unwrap();
    let load = SteadyLoad::start(&d.url(), 2, 20_000);
    // Within budget: two restarts of "a" keep the supervisor.
    for _ in 0..2 {
        let before = actor_id(&d, "a").await.unwrap();
        d.app
            .tree
            .backend_actor("a")
            .await
            .unwrap()
            .cast(BackendMsg::Crash("budget".into()))
            .unwrap();
        let dd = &d;
        wait_until(Duration::from_secs(5), "a restarted", || async move {
            actor_id(dd, "a").await.is_some_and(|id| id != before)
        })
        .await;
    }
    assert_eq!(
        d.app.tree.backend_supervisor().await.unwrap().get_id(),
        sup_before
    );
    // The third failure in the window exhausts the budget: the backend supervisor fails and the
    // root restarts it, with fresh actors for every backend.
    d.app
        .tree
        .backend_actor("a")
        .await
        .unwrap()
        .cast(BackendMsg::Crash("over budget".into()))
        .unwrap();
    let dd = &d;
    wait_until(
        Duration::from_secs(10),
        "backend supervisor restarted",
        || async move {
            dd.app
                .tree
                .backend_supervisor()
                .await
                .is_some_and(|s| s.get_id() != sup_before)
        },
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "both backends have fresh actors",
        || async move {
            actor_id(dd, "b").await.is_some_and(|id| id != b_before)
                && actor_id(dd, "a").await.is_some()
        },
    )
    .await;
    wait_routable(&d, &["a", "b"], true).await;
    assert_eq!(
        load.finish().await,
        0,
        "no request failed while the tree healed"
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
    let run = tokio::spawn(d.run_until(std::future::pending()));
    // Each crash exhausts the backend budget (0) and fails the backend supervisor; the root may
    // restart it once, the second time it gives up.
    for round in 0..2 {
        let before = app.tree.backend_supervisor().await.map(|s| s.get_id());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let actor = loop {
            if let Some(a) = app.tree.backend_actor("a").await {
                break a;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "backend actor available"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        actor
            .cast(BackendMsg::Crash(format!("round {round}")))
            .unwrap();
        if round == 0 {
            let app2 = app.clone();
            wait_until(
                Duration::from_secs(5),
                "backend supervisor restarted once",
                || {
                    let app2 = app2.clone();
                    async move {
                        app2.tree
                            .backend_supervisor()
                            .await
                            .map(|s| s.get_id())
                            .is_some_and(|id| Some(id) != before)
                    }
                },
            )
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
