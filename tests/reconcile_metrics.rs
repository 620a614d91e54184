//! Reconcile metrics measure every reconcile, also one that stops half-way with an error (an
//! early `?`): `reconciliations_total` and `reconcile_duration_seconds` never fall behind
//! `reconcile_errors_total`.

mod support;

use dbt_cloud_operator::metrics::Metrics;
use support::*;

/// The value of one sample line (`name{labels} value`) of the Prometheus text.
fn sample(metrics: &Metrics, series: &str) -> u64 {
    let text = metrics.encode();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test]
async fn a_reconcile_that_fails_half_way_is_still_measured() {
    let env = Env::new().await;
    // Every status write of the credentials fails: each of their reconciles validates the key,
    // then stops with an error at the write.
    env.faults.fail_next(
        http::Method::PATCH,
        "/dbtcloudcredentials/creds/status",
        500,
        u32::MAX,
    );
    let op = env.start_operator();
    env.valid_credentials().await;
    let kind = "{kind=\"DbtCloudCredentials\"}";
    let errors = || {
        sample(
            &op.metrics,
            "dbt_cloud_operator_reconcile_errors_total{kind=\"DbtCloudCredentials\",error=\"kube\"}",
        )
    };
    env.wait_until("a credentials reconcile failed at its status write", || {
        errors() >= 1
    })
    .await;
    let failed = errors();
    let counted = sample(
        &op.metrics,
        &format!("dbt_cloud_operator_reconciliations_total{kind}"),
    );
    let timed = sample(
        &op.metrics,
        &format!("dbt_cloud_operator_reconcile_duration_seconds_count{kind}"),
    );
    assert!(
        counted >= failed && timed >= failed,
        "{failed} failed reconciles, but {counted} counted and {timed} timed:\n{}",
        op.metrics.encode()
    );
    assert!(
        env.requests()
            .iter()
            .any(|r| r.method == http::Method::PATCH
                && r.path.ends_with("/dbtcloudcredentials/creds/status")
                && r.status == 500),
        "the status write was the failure"
    );
}
