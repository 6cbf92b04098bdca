//! The thread-per-core daemon (`Daemon::start_threaded`): new connections are spread evenly over
//! the serving threads whatever their source ports, each thread streams through its own upstream
//! pools, and a closed connection frees its thread's place. In its own test binary because
//! the serving-thread count is process-wide.

mod common;

use std::time::Duration;

use common::*;

/// A keep-alive client connection that each request goes through, via a one-connection client.
fn one_connection_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_evenly_over_serving_threads_and_each_one_proxies() {
    let m = mock("m", &["llama3"]).await;
    let yaml = config(
        &[endpoint("m", &m.url(), "openai-compatible", 100, "")],
        "server: {host: 127.0.0.1, port: 0, shutdown_timeout: 5s}",
    );
    let cfg = olla::config::parse(&yaml, &|_| None).expect("config parses");
    let rt = olla::config::resolve(&cfg).expect("config resolves");
    let d = Daemon::start_threaded(rt, 2).await.expect("daemon starts");
    wait_routable(&d, &["m"], true).await;
    let base = d.url();

    // Six clients, one keep-alive connection each, opened one after another.
    let mut clients = Vec::new();
    for _ in 0..6 {
        let c = one_connection_client();
        let (status, ep, body) = post_chat(&c, &base, "llama3").await;
        assert_eq!((status, ep.as_str()), (200, "m"), "{body}");
        clients.push(c);
    }
    assert_eq!(d.connections_per_thread(), vec![3, 3]);

    // Streams work on every connection, i.e. on both threads.
    for c in &clients {
        let r = c
            .post(format!("{base}/olla/proxy/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(chat("llama3", true))
            .send()
            .await
            .expect("stream request");
        assert_eq!(r.status(), 200);
        let text = r.text().await.expect("stream body");
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    }

    // Closing connections frees their places.
    clients.truncate(2);
    wait_until(
        Duration::from_secs(5),
        "closed connections to be counted out",
        || {
            let live: usize = d.connections_per_thread().iter().sum();
            async move { live == 2 }
        },
    )
    .await;
    // The next connections go to the emptier thread first.
    let c = one_connection_client();
    assert_eq!(post_chat(&c, &base, "llama3").await.0, 200);
    let live = d.connections_per_thread();
    assert!(
        live.iter().max().unwrap() - live.iter().min().unwrap() <= 1,
        "{live:?}"
    );
    drop((c, clients));
    d.stop().await;
}
