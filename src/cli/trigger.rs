//! `trigger NAME`: starts a run of a `DbtCloudJobTrigger` now, from its template (like
//! `kubectl create job --from=cronjob/NAME`), and prints the new run's name.

use clap::Args;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};

use super::error::{is_not_found, CliError, CliResult};
use super::objects::FIELD_MANAGER;
use super::terminal::Ctx;
use crate::controller::trigger_policy::{build_run, StartCause, TriggerView};
use crate::crd::{DbtCloudJobRun, DbtCloudJobTrigger};

/// Flags of `trigger`.
#[derive(Debug, Clone, Args)]
pub struct TriggerArgs {
    /// Name of the DbtCloudJobTrigger.
    pub trigger: String,
    /// Namespace of the trigger (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
}

/// Runs `trigger`: creates a `DbtCloudJobRun` from the trigger's template, owned by the trigger
/// (so its history limits apply), named `<trigger>-manual-<random>`; prints the name on standard
/// output. `suspend` and `concurrencyPolicy` do not apply to a run started by hand.
pub async fn trigger(args: TriggerArgs, client: kube::Client, ctx: &mut Ctx<'_>) -> CliResult {
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let triggers: Api<DbtCloudJobTrigger> = Api::namespaced(client.clone(), &ns);
    let trigger = match triggers.get(&args.trigger).await {
        Ok(t) => t,
        Err(e) if is_not_found(&e) => {
            return Err(CliError::new(format!(
                "DbtCloudJobTrigger {ns}/{} not found (list them with `kubectl get dbttrigger -n {ns}`)",
                args.trigger
            )))
        }
        Err(e) => return Err(e.into()),
    };
    if trigger.meta().deletion_timestamp.is_some() {
        return Err(CliError::new(format!(
            "DbtCloudJobTrigger {ns}/{} is being deleted",
            args.trigger
        )));
    }
    let uid = trigger
        .uid()
        .ok_or_else(|| CliError::new("the trigger has no UID"))?;
    let status = trigger.status.clone().unwrap_or_default();
    let name = trigger.name_any();
    let view = TriggerView {
        name: &name,
        namespace: &ns,
        uid: &uid,
        generation: trigger.meta().generation,
        created: jiff::Timestamp::now(),
        spec: &trigger.spec,
        status: &status,
    };
    let run = build_run(view, None, &StartCause::Manual);
    let runs: Api<DbtCloudJobRun> = Api::namespaced(client, &ns);
    let post = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    let created = match runs.create(&post, &run).await {
        Ok(r) => r,
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
            return Err(CliError::new(format!(
                "the API server refused a run made from DbtCloudJobTrigger {ns}/{name}: {}; fix \
                 its spec.runTemplate",
                s.message
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let run_name = created.name_any();
    writeln!(ctx.out, "{run_name}")?;
    ctx.note(format!(
        "Started DbtCloudJobRun {ns}/{run_name} from DbtCloudJobTrigger {name}. Follow it with: \
         kubectl get dbtrun -n {ns} {run_name} -w"
    ))?;
    Ok(())
}
