//! The audit trail loses no token read: identical reads are written as one row with their
//! count, and the counts add up exactly to the reads that were served.

use serde_json::{json, Value};

use crate::helpers::{eventually, json_of, now, Backend};

const APPS: usize = 3;
const CALLERS: usize = 20;
const READS_PER_CALLER: usize = 100;

/// The value of an OpenMetrics sample line `name value` (`None` when absent).
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// 2,000 reads from 20 concurrent callers over 3 apps: the `token.read` rows of the audit
/// trail count exactly the reads that were served, in far fewer rows than reads, and nothing
/// is dropped.
pub async fn audit_counts_add_up_to_the_served_reads(backend: Backend) {
    let app = crate::helpers::spawn_app_with(crate::helpers::AppOptions {
        backend,
        extra_config: "audit_coalesce_seconds = 1\n".into(),
        ..Default::default()
    })
    .await;
    for i in 0..APPS {
        app.import_ok(
            &format!("counted-{i}"),
            "github",
            &json!({"access_token": format!("counted-at-{i}"), "expires_at": now() + 86_400}),
        )
        .await;
    }
    let app = std::sync::Arc::new(app);
    let mut callers = tokio::task::JoinSet::new();
    for c in 0..CALLERS {
        let app = app.clone();
        callers.spawn(async move {
            let mut served = [0usize; APPS];
            for r in 0..READS_PER_CALLER {
                let i = (c + r) % APPS;
                let response = app.get_token(&format!("counted-{i}"), "github", "").await;
                if response.status() == 200 {
                    served[i] += 1;
                }
            }
            served
        });
    }
    let mut served = [0usize; APPS];
    while let Some(done) = callers.join_next().await {
        for (total, n) in served.iter_mut().zip(done.unwrap()) {
            *total += n;
        }
    }
    assert_eq!(
        served.iter().sum::<usize>(),
        CALLERS * READS_PER_CALLER,
        "every read is served"
    );

    // Every read is written, once: per app, the counts of its rows reach the served reads.
    let reads_of = |events: &Value, i: usize| -> (usize, i64) {
        let rows: Vec<&Value> = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["action"] == "token.read"
                    && e["outcome"] == "ok"
                    && e["app_id"] == format!("counted-{i}").as_str()
            })
            .collect();
        let count = rows.iter().map(|e| e["count"].as_i64().unwrap_or(1)).sum();
        (rows.len(), count)
    };
    let events = eventually("the audit rows to count every served read", || async {
        let events = json_of(app.get("/audit?limit=1000").as_superadmin().send().await).await;
        (0..APPS)
            .all(|i| reads_of(&events, i).1 >= served[i] as i64)
            .then_some(events)
    })
    .await;
    let mut rows = 0;
    for (i, &served) in served.iter().enumerate() {
        let (n, count) = reads_of(&events, i);
        assert_eq!(
            count, served as i64,
            "the audit rows of counted-{i} count {count} reads, {served} were served"
        );
        rows += n;
    }
    assert!(
        rows < CALLERS * READS_PER_CALLER / 10,
        "{rows} rows for {} reads: identical reads are coalesced",
        CALLERS * READS_PER_CALLER
    );
    // A row that counts reads of several seconds says when the last one was.
    for row in events.as_array().unwrap() {
        if let Some(last) = row["last_at"].as_i64() {
            assert!(last > row["at"].as_i64().unwrap(), "{row}");
        }
    }

    let metrics = app.get("/metrics").send().await.text().await.unwrap();
    assert_eq!(
        sample(&metrics, "tokenbox_audit_dropped"),
        Some(0.0),
        "no audit event is dropped: {metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "tokenbox_token_requests_total{outcome=\"served\"}"
        ),
        Some((CALLERS * READS_PER_CALLER) as f64),
    );

    // The command line shows the count of a coalesced row.
    let table = crate::helpers::cli_ok(&app.config_path, &["audit", "--app", "counted-0"], None);
    assert!(
        table
            .lines()
            .any(|l| l.contains("token.read") && l.contains(" x")),
        "tokenbox audit shows the counts:\n{table}"
    );
}
