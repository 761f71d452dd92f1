//! A PostgreSQL restart under load. It restarts the machine's PostgreSQL server, so it is
//! ignored in the parallel run and run alone by scripts/test.sh.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::{spawn_app_with, unique, AppOptions, Backend};

fn restart_postgres() {
    let clusters = std::process::Command::new("pg_lsclusters")
        .arg("--no-header")
        .output()
        .expect("pg_lsclusters");
    let line = String::from_utf8_lossy(&clusters.stdout).to_string();
    let mut fields = line.split_whitespace();
    let (version, cluster) = (fields.next().unwrap(), fields.next().unwrap());
    let status = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", version, cluster, "restart"])
        .status()
        .expect("pg_ctlcluster");
    assert!(status.success(), "restart failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "restarts the PostgreSQL server: scripts/test.sh runs it alone"]
async fn a_postgresql_restart_during_a_load_of_1000_requests() {
    let app = spawn_app_with(AppOptions {
        backend: Backend::Postgres,
        // Every request reads the database.
        extra_config: "cache_ttl_seconds = 0\nrequest_timeout_seconds = 10\n".into(),
        ..AppOptions::default()
    })
    .await;
    app.import_ok(
        "acme",
        "github",
        &serde_json::json!({"access_token": unique("t"), "expires_in": 3600}),
    )
    .await;

    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let request = app.get("/acme/github/binb-token").as_superadmin();
        let (next, done) = (next.clone(), done.clone());
        workers.spawn(async move {
            let mut seen = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < 1000 {
                let started = Instant::now();
                let status = match request.try_clone().unwrap().try_send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                seen.push((status, started.elapsed()));
                done.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        });
    }
    while done.load(Ordering::SeqCst) < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::task::spawn_blocking(restart_postgres).await.unwrap();
    let restarted = Instant::now();

    let mut all = Vec::new();
    while let Some(seen) = workers.join_next().await {
        all.extend(seen.unwrap());
    }
    assert_eq!(all.len(), 1000);
    let ok = all.iter().filter(|(s, _)| *s == 200).count();
    let unavailable = all.iter().filter(|(s, _)| *s == 503).count();
    let slowest = all.iter().map(|(_, d)| *d).max().unwrap();
    assert_eq!(
        ok + unavailable,
        1000,
        "every request answered 200 or 503: {:?}",
        all.iter()
            .filter(|(s, _)| *s != 200 && *s != 503)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(
        slowest < Duration::from_secs(11),
        "slowest request {slowest:?}"
    );

    // Service is back within seconds after the database is.
    let back = loop {
        if app.get_token("acme", "github", "").await.status() == 200 {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "not back after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("postgres restart: {ok} x 200, {unavailable} x 503, slowest {slowest:?}, back {back:?} after the restart command returned");
    let ready = app.get("/readyz").send().await;
    assert_eq!(ready.status(), 200);
}
