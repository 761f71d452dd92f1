//! A PostgreSQL restart under load, on a throwaway cluster of this test's own (the machine's
//! PostgreSQL is never touched), so it runs in the normal suite.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::helpers::{
    holds_eventually, spawn_app_with, unique, wait_until, AppOptions, Backend, PgCluster,
};

/// Where the restart is when a request starts or ends.
const BEFORE: u8 = 0;
/// `pg_ctl stop` issued, not returned: the server may still answer.
const STOPPING: u8 = 1;
/// `pg_ctl stop` returned: the server is down.
const DOWN: u8 = 2;
/// `pg_ctl start` issued, not returned.
const STARTING: u8 = 3;
/// `pg_ctl start` returned: the server accepts connections.
const UP: u8 = 4;

/// One request of the load: the phase when it started and when it ended, and its status (0: no
/// HTTP answer).
#[derive(Clone, Copy, Debug)]
struct Seen {
    started: u8,
    ended: u8,
    status: u16,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgresql_restart_under_load() {
    let cluster = Arc::new(tokio::task::spawn_blocking(PgCluster::start).await.unwrap());
    let app = spawn_app_with(AppOptions {
        backend: Backend::Postgres,
        pg_server: Some(cluster.admin_url()),
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

    let phase = Arc::new(AtomicU8::new(BEFORE));
    let stop_load = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let request = app.get("/acme/github/binb-token").as_superadmin();
        let (phase, stop_load, seen) = (phase.clone(), stop_load.clone(), seen.clone());
        workers.spawn(async move {
            while !stop_load.load(Ordering::SeqCst) {
                let started = phase.load(Ordering::SeqCst);
                let status = match request.try_clone().unwrap().try_send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                let ended = phase.load(Ordering::SeqCst);
                seen.lock().unwrap().push(Seen {
                    started,
                    ended,
                    status,
                });
            }
        });
    }
    let count = |seen: &Arc<Mutex<Vec<Seen>>>, f: &dyn Fn(&Seen) -> bool| {
        seen.lock().unwrap().iter().filter(|s| f(s)).count()
    };
    wait_until("load before the restart", || {
        count(&seen, &|s| s.status == 200) >= 100
    })
    .await;

    // Stop; wait until requests met the stopped server; start. The load goes on throughout.
    phase.store(STOPPING, Ordering::SeqCst);
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop_server())
        .await
        .unwrap();
    phase.store(DOWN, Ordering::SeqCst);
    wait_until("requests answered while the database was down", || {
        count(&seen, &|s| s.started == DOWN && s.ended == DOWN) >= 3
    })
    .await;
    phase.store(STARTING, Ordering::SeqCst);
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_server())
        .await
        .unwrap();
    phase.store(UP, Ordering::SeqCst);
    // Some load after the restart returned, then stop it.
    let after_restart = count(&seen, &|s| s.started == UP);
    wait_until("load after the restart", || {
        count(&seen, &|s| s.started == UP) >= after_restart + 20
    })
    .await;
    stop_load.store(true, Ordering::SeqCst);
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }

    let all = seen.lock().unwrap().clone();
    let in_window = all
        .iter()
        .filter(|s| (STOPPING..=STARTING).contains(&s.started))
        .count();
    let during_outage: Vec<Seen> = all
        .iter()
        .filter(|s| s.started == DOWN && s.ended == DOWN)
        .copied()
        .collect();
    let ok = all.iter().filter(|s| s.status == 200).count();
    let unavailable = all.iter().filter(|s| s.status == 503).count();
    eprintln!(
        "postgres restart: {} requests, {ok} x 200, {unavailable} x 503, {in_window} started \
         between the stop and the restart's return, {} within the outage",
        all.len(),
        during_outage.len()
    );
    assert!(in_window >= 1, "no request overlapped the restart");
    // A request made while the database was down is answered 503, not 500 and not hung.
    assert!(
        during_outage.iter().all(|s| s.status == 503),
        "requests made while the database was down: {during_outage:?}"
    );
    assert_eq!(
        ok + unavailable,
        all.len(),
        "every request answered 200 or 503: {:?}",
        all.iter()
            .filter(|s| s.status != 200 && s.status != 503)
            .take(5)
            .collect::<Vec<_>>()
    );

    // Service comes back once the database is, and then every request succeeds.
    assert!(
        holds_eventually(|| async { app.get_token("acme", "github", "").await.status() == 200 })
            .await,
        "the service did not come back after the database restart"
    );
    for _ in 0..20 {
        assert_eq!(app.get_token("acme", "github", "").await.status(), 200);
    }
    let ready = app.get("/readyz").send().await;
    assert_eq!(ready.status(), 200);
    drop(app);
}
