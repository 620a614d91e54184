//! Deleting a `DbtCloudJobRun` whose trigger's outcome is unknown: the finalizer stays until the
//! run is found and cancelled (or the deletion timeout lets go).

mod support;

use std::time::Duration;

use dbt_cloud_simulator::Fault;
use serde_json::json;
use support::*;

fn by_id(job: i64) -> serde_json::Value {
    json!({"credentialsRef": {"name": "creds"}, "job": {"id": job}, "pollIntervalSeconds": 1})
}

/// Triggers the operator sent (their cause carries its marker).
fn operator_triggers(env: &Env) -> Vec<i64> {
    env.sim
        .triggers()
        .into_iter()
        .filter(|t| t.cause.contains("[dco:"))
        .map(|t| t.run_id)
        .collect()
}

#[tokio::test]
async fn deletion_waits_for_a_run_that_is_not_visible_yet_and_cancels_it() {
    let env = Env::new().await;
    let _op = env.start_operator();
    env.valid_credentials().await;
    // The trigger's answer is lost and its run stays invisible for a while (eventual consistency).
    env.sim.inject(Fault::HideNewRuns {
        duration: Duration::from_secs(1),
    });
    env.sim.inject(Fault::LoseTriggerResponse { count: 1 });
    env.create_run("hidden", by_id(JOB_SLOW)).await;
    env.wait_until("the trigger reached dbt Cloud", || {
        operator_triggers(&env).len() == 1
    })
    .await;
    let ours = operator_triggers(&env)[0];
    env.runs()
        .delete("hidden", &Default::default())
        .await
        .unwrap();
    env.wait_gone("hidden").await;
    let run = env.sim.run(ACCOUNT, ours).unwrap();
    assert_eq!(
        run["status"],
        30,
        "the object was let go before its run could be found and cancelled: {:?}",
        env.event_reasons("hidden")
    );
}
