//! A stateful, fault-injecting simulator of the dbt Cloud Administrative API (v2/v3) and a sliver of
//! the Discovery API, served on 127.0.0.1. Request and response shapes follow dbt Labs' OpenAPI
//! descriptions (`shared/dbt-cloud-api/`): the `{status, data, extra}` envelope, run objects with
//! their status codes and flags, steps only with `include_related=run_steps`, raw artifacts shaped
//! by dbt's published schemas (manifest v12, run_results v6).
//!
//! State: accounts, tokens (each limited to some accounts), projects, environments, jobs and runs.
//! Runs move Queued → Starting → Running → Success/Error/Cancelled over per-job durations, one run
//! at a time per job (later triggers queue), computed lazily from the clock. Like dbt Cloud's, every
//! run's steps are three setup steps (clone, profile, `dbt deps`) and then the job's commands, so
//! a job's first command is step 4. Native retry runs the setup steps and only the failed and
//! skipped commands. Faults on demand: 401/429/5xx, slow responses, runs invisible for a
//! while after their trigger, and a trigger whose run is created but whose response is lost (the
//! connection is closed without a response). Hostile answers too: any `Retry-After` value (huge,
//! HTTP-date, garbage), bodies padded to any size (with or without `Content-Length`), and step logs
//! of any length ([`Simulator::set_step_log_bytes`]; jobs may have thousands of steps).
//!
//! Absent values (a running run's `finished_at`, unrequested `trigger`/`job`, …) are sent as `null`
//! and unrequested `run_steps` as `[]`, as the live service does, although the OpenAPI schemas
//! declare no property nullable; `set_live_nulls(false)` ([`Simulator::set_live_nulls`]) switches
//! to the sparse form that omits them.
//! The Discovery API sliver parses the GraphQL selection and answers unknown fields with the usual
//! `Cannot query field …` error (HTTP 200). Every request is logged ([`Simulator::requests`]) with
//! its `Authorization` header redacted.

#![warn(missing_docs)]

mod artifacts;
mod discovery;
mod render;
mod server;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How the runs of a job behave.
#[derive(Clone, Debug)]
pub struct JobBehavior {
    /// Minimum time a run waits in the queue.
    pub queued: Duration,
    /// Time spent starting.
    pub starting: Duration,
    /// Time spent running dbt.
    pub running: Duration,
    /// Outcome of triggered runs.
    pub outcome: Outcome,
    /// Outcome of native retries (`/retry/`, `/rerun/`).
    pub retry_outcome: Outcome,
}

impl Default for JobBehavior {
    fn default() -> Self {
        Self {
            queued: Duration::from_millis(50),
            starting: Duration::from_millis(50),
            running: Duration::from_millis(200),
            outcome: Outcome::Success,
            retry_outcome: Outcome::Success,
        }
    }
}

/// Outcome of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every step succeeds.
    Success,
    /// The job's own dbt command at this 1-based index fails: an index into [`JobSpec::steps`]
    /// (or the trigger's `steps_override`), not counting the setup steps every run starts with
    /// (clone, profile, `dbt deps`), so `FailAtStep(n)` is run step `3 + n` in `run_steps`. For a
    /// retry's outcome the index still counts the job's commands from its first one, although the
    /// retry runs only the failed and later ones; an index outside the commands a run executes
    /// means the run succeeds.
    FailAtStep(usize),
    /// The run ends cancelled.
    Cancelled,
}

/// A job definition.
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// Job id.
    pub id: i64,
    /// Project id.
    pub project_id: i64,
    /// Environment id.
    pub environment_id: i64,
    /// Job name.
    pub name: String,
    /// dbt commands, e.g. `["dbt seed", "dbt build"]`.
    pub steps: Vec<String>,
    /// How its runs behave.
    pub behavior: JobBehavior,
}

/// Which requests a fault applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultScope {
    /// Every request.
    Any,
    /// `POST .../jobs/{j}/run/`.
    Trigger,
    /// `GET .../runs/`.
    ListRuns,
    /// `GET .../runs/{r}/`.
    GetRun,
    /// `POST .../runs/{r}/cancel/`.
    Cancel,
    /// `GET /api/v3/accounts/` and `GET /api/v2/accounts/{a}/`.
    Accounts,
    /// Any request whose path contains the string.
    PathContains(String),
}

/// A fault to inject, consumed request by request (`count` times).
#[derive(Clone, Debug)]
pub enum Fault {
    /// 429 with a `Retry-After` header and an error envelope.
    RateLimit {
        /// How many matching requests get it.
        count: u32,
        /// `Retry-After` value in seconds.
        retry_after_secs: u64,
        /// Which requests it applies to.
        scope: FaultScope,
    },
    /// A 5xx error envelope (the request is not processed).
    ServerError {
        /// How many matching requests get it.
        count: u32,
        /// HTTP status to answer, e.g. 500, 502, 503.
        status: u16,
        /// Which requests it applies to.
        scope: FaultScope,
    },
    /// Answer after `delay` (the request is processed after the delay).
    Delay {
        /// How many matching requests are delayed.
        count: u32,
        /// How long.
        delay: Duration,
        /// Which requests it applies to.
        scope: FaultScope,
    },
    /// Process the request at once, then hold the response for `delay` (a trigger's run exists
    /// while the caller still waits for the answer).
    SlowResponse {
        /// How many matching requests are slowed.
        count: u32,
        /// How long the response is held.
        delay: Duration,
        /// Which requests it applies to.
        scope: FaultScope,
    },
    /// The run is created, then the connection is closed before any response byte.
    LoseTriggerResponse {
        /// How many triggers lose their response.
        count: u32,
    },
    /// Runs created by the next trigger, retry or rerun answer 404 on GET and are absent from
    /// lists for `duration` after their creation (eventual consistency).
    HideNewRuns {
        /// How long each such run stays invisible.
        duration: Duration,
    },
    /// 429 whose `Retry-After` header is sent verbatim: an HTTP-date, a huge number, a negative
    /// or garbage value (hostile-input tests). Must be a valid header value (visible ASCII).
    RateLimitRaw {
        /// How many matching requests get it.
        count: u32,
        /// The `Retry-After` header value, as sent.
        retry_after: String,
        /// Which requests it applies to.
        scope: FaultScope,
    },
    /// The request is processed normally, then its (JSON) body is padded with trailing whitespace
    /// to at least `bytes` bytes: still valid JSON, just huge. With `chunked`, the body goes out
    /// with `Transfer-Encoding: chunked` and no `Content-Length`, so only a client that counts
    /// while reading can stop early.
    OversizedBody {
        /// How many matching requests get it.
        count: u32,
        /// Body size to reach.
        bytes: usize,
        /// Send without `Content-Length`.
        chunked: bool,
        /// Which requests it applies to.
        scope: FaultScope,
    },
    /// 401 as for an invalid token.
    Unauthorized {
        /// How many matching requests get it.
        count: u32,
        /// Which requests it applies to.
        scope: FaultScope,
    },
}

/// Seeded random faults for chaos tests.
#[derive(Clone, Debug, Default)]
pub struct RandomFaults {
    /// RNG seed.
    pub seed: u64,
    /// Probability of a 429 per request.
    pub rate_429: f64,
    /// Probability of a 503 per request.
    pub rate_5xx: f64,
    /// Probability that a trigger's response is lost (the run is created).
    pub rate_lost_trigger: f64,
    /// `Retry-After` seconds sent with random 429s.
    pub retry_after_secs: u64,
}

/// One request as the simulator saw it (the `Authorization` header is never stored).
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Status answered; 0 when the connection was dropped without a response.
    pub status: u16,
    /// The `Authorization` header with the secret replaced, e.g. `Token <redacted>` (the scheme
    /// is kept so tests can check it); `None` when the request had no such header.
    pub authorization: Option<String>,
    /// When it arrived.
    pub at: std::time::Instant,
}

/// A run created by `POST .../run/` (including ones whose response was lost).
#[derive(Clone, Debug)]
pub struct TriggerRecord {
    /// Account.
    pub account: i64,
    /// Job.
    pub job_id: i64,
    /// Run created.
    pub run_id: i64,
    /// The `cause` sent.
    pub cause: String,
    /// When.
    pub at: std::time::Instant,
}

/// Demo data for the binary and quick experiments.
#[derive(Clone, Debug, Default)]
pub struct Seed {
    accounts: Vec<(i64, String)>,
    tokens: Vec<(String, Vec<i64>)>,
    projects: Vec<(i64, i64, String)>,
    environments: Vec<(i64, i64, i64, String)>,
    jobs: Vec<(i64, JobSpec)>,
}

impl Seed {
    /// An empty seed (the same as `Seed::default()`); fill it with the builder methods.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an account.
    pub fn account(mut self, id: i64, name: &str) -> Self {
        self.accounts.push((id, name.into()));
        self
    }

    /// Adds a token that may access `accounts`.
    pub fn token(mut self, token: &str, accounts: &[i64]) -> Self {
        self.tokens.push((token.into(), accounts.to_vec()));
        self
    }

    /// Adds a project to an account.
    pub fn project(mut self, account: i64, id: i64, name: &str) -> Self {
        self.projects.push((account, id, name.into()));
        self
    }

    /// Adds an environment to a project.
    pub fn environment(mut self, account: i64, project: i64, id: i64, name: &str) -> Self {
        self.environments.push((account, project, id, name.into()));
        self
    }

    /// Adds a job to an account.
    pub fn job(mut self, account: i64, job: JobSpec) -> Self {
        self.jobs.push((account, job));
        self
    }

    /// Account 1 "Demo account" (token `dbtc_demo_token`), project "analytics" (id 10),
    /// environments "production" (20) and "staging" (21), jobs 100 "nightly" (succeeds, 5 s),
    /// 101 "hourly" (succeeds, 2 s), 102 "broken" (fails at `dbt build`, retry succeeds).
    pub fn demo() -> Self {
        let job =
            |id: i64, env: i64, name: &str, steps: &[&str], running: u64, outcome: Outcome| {
                JobSpec {
                    id,
                    project_id: 10,
                    environment_id: env,
                    name: name.into(),
                    steps: steps.iter().map(|s| s.to_string()).collect(),
                    behavior: JobBehavior {
                        queued: Duration::from_secs(1),
                        starting: Duration::from_secs(1),
                        running: Duration::from_secs(running),
                        outcome,
                        retry_outcome: Outcome::Success,
                    },
                }
            };
        Self {
            accounts: vec![(1, "Demo account".into())],
            tokens: vec![("dbtc_demo_token".into(), vec![1])],
            projects: vec![(1, 10, "analytics".into())],
            environments: vec![
                (1, 10, 20, "production".into()),
                (1, 10, 21, "staging".into()),
            ],
            jobs: vec![
                (
                    1,
                    job(
                        100,
                        20,
                        "nightly",
                        &["dbt seed", "dbt build"],
                        5,
                        Outcome::Success,
                    ),
                ),
                (
                    1,
                    job(
                        101,
                        21,
                        "hourly",
                        &["dbt build -s tag:hourly"],
                        2,
                        Outcome::Success,
                    ),
                ),
                (
                    1,
                    job(
                        102,
                        20,
                        "broken",
                        &["dbt seed", "dbt build"],
                        3,
                        Outcome::FailAtStep(2),
                    ),
                ),
            ],
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct RunState {
    pub id: i64,
    pub account: i64,
    pub job_id: i64,
    pub project_id: i64,
    pub environment_id: i64,
    pub trigger: Value,
    pub created: Instant,
    pub created_wall: jiff::Timestamp,
    /// dbt commands of this run.
    pub commands: Vec<String>,
    /// Index into the job's commands of `commands[0]` (retries start at the failed step).
    pub first_command: usize,
    pub outcome: Outcome,
    pub behavior: JobBehavior,
    pub retrying_run_id: Option<i64>,
    pub dequeue_at: Instant,
    pub finish_at: Instant,
    /// Forced end (cancel / finish_run): outcome and when.
    pub forced: Option<(Outcome, Instant)>,
    pub hidden_until: Option<Instant>,
    pub trigger_id: i64,
    /// Status code reported instead of the computed one ([`Simulator::set_run_status`]).
    pub status_override: Option<i64>,
}

#[derive(Default)]
pub(crate) struct State {
    pub accounts: BTreeMap<i64, String>,
    pub tokens: HashMap<String, Vec<i64>>,
    pub projects: BTreeMap<(i64, i64), String>,
    pub environments: BTreeMap<(i64, i64), (i64, String)>,
    pub jobs: BTreeMap<(i64, i64), JobSpec>,
    pub runs: BTreeMap<i64, RunState>,
    pub next_run_id: i64,
    pub requests: Vec<RequestRecord>,
    pub triggers: Vec<TriggerRecord>,
    pub faults: VecDeque<Fault>,
    pub random: Option<(RandomFaults, StdRng)>,
    pub hide_new_runs: Option<Duration>,
    /// Render absent run fields as `null` and unrequested `run_steps` as `[]` (as the live
    /// service does) instead of omitting them. On unless the sparse form is asked for.
    pub live_nulls: bool,
    /// Pad every run step's `logs` to at least this many bytes (0: short logs).
    pub step_log_bytes: usize,
}

impl State {
    /// Recomputes queue and finish times of a job's runs (one run at a time per job).
    pub fn reschedule(&mut self, account: i64, job_id: i64) {
        let mut free_at: Option<Instant> = None;
        for run in self
            .runs
            .values_mut()
            .filter(|r| r.account == account && r.job_id == job_id)
        {
            let earliest = run.created + run.behavior.queued;
            run.dequeue_at = free_at.map_or(earliest, |f| f.max(earliest));
            run.finish_at = run.dequeue_at + run.behavior.starting + run.behavior.running;
            if let Some((_, at)) = run.forced {
                run.finish_at = run.finish_at.min(at).max(run.created);
                run.dequeue_at = run.dequeue_at.min(run.finish_at);
            }
            free_at = Some(run.finish_at);
        }
    }

    /// Creates a run (trigger, retry or rerun) and schedules it.
    #[allow(clippy::too_many_arguments)]
    pub fn create_run(
        &mut self,
        account: i64,
        job: &JobSpec,
        trigger: Value,
        commands: Vec<String>,
        first_command: usize,
        outcome: Outcome,
        retrying_run_id: Option<i64>,
    ) -> i64 {
        self.next_run_id += 1;
        let id = 70_000_000 + self.next_run_id;
        let now = Instant::now();
        let hidden_until = self.hide_new_runs.take().map(|d| now + d);
        self.runs.insert(
            id,
            RunState {
                id,
                account,
                job_id: job.id,
                project_id: job.project_id,
                environment_id: job.environment_id,
                trigger,
                created: now,
                created_wall: jiff::Timestamp::now(),
                commands,
                first_command,
                outcome,
                behavior: job.behavior.clone(),
                retrying_run_id,
                dequeue_at: now,
                finish_at: now,
                forced: None,
                hidden_until,
                trigger_id: 50_000_000 + self.next_run_id,
                status_override: None,
            },
        );
        self.reschedule(account, job.id);
        id
    }
}

pub(crate) struct Inner {
    pub state: Mutex<State>,
    pub addr: SocketAddr,
    pub shutdown: Notify,
}

/// A running simulator (cheap clone; stops when [`Simulator::shutdown`] is called).
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

impl Simulator {
    /// Starts an empty simulator on 127.0.0.1 (a free port).
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(Seed::default(), SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a simulator with `seed` data on `addr`.
    pub async fn start_with(seed: Seed, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                live_nulls: true,
                ..State::default()
            }),
            addr,
            shutdown: Notify::new(),
        });
        let sim = Self {
            inner: inner.clone(),
        };
        for (id, name) in seed.accounts {
            sim.add_account(id, &name);
        }
        for (token, accounts) in seed.tokens {
            sim.add_token(&token, &accounts);
        }
        for (a, id, name) in seed.projects {
            sim.add_project(a, id, &name);
        }
        for (a, p, id, name) in seed.environments {
            sim.add_environment(a, p, id, &name);
        }
        for (a, job) in seed.jobs {
            sim.add_job(a, job);
        }
        tokio::spawn(server::serve(listener, inner));
        Ok(sim)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// Stops accepting connections.
    pub fn shutdown(&self) {
        self.inner.shutdown.notify_waiters();
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("simulator state")
    }

    /// Adds an account.
    pub fn add_account(&self, id: i64, name: &str) {
        self.state().accounts.insert(id, name.into());
    }

    /// Adds a token that may access `accounts`.
    pub fn add_token(&self, token: &str, accounts: &[i64]) {
        self.state().tokens.insert(token.into(), accounts.to_vec());
    }

    /// Adds a project.
    pub fn add_project(&self, account: i64, id: i64, name: &str) {
        self.state().projects.insert((account, id), name.into());
    }

    /// Adds an environment.
    pub fn add_environment(&self, account: i64, project: i64, id: i64, name: &str) {
        self.state()
            .environments
            .insert((account, id), (project, name.into()));
    }

    /// Adds a job.
    pub fn add_job(&self, account: i64, job: JobSpec) {
        self.state().jobs.insert((account, job.id), job);
    }

    /// Changes how future runs of a job behave.
    pub fn set_job_behavior(&self, account: i64, job_id: i64, behavior: JobBehavior) {
        if let Some(job) = self.state().jobs.get_mut(&(account, job_id)) {
            job.behavior = behavior;
        }
    }

    /// A run as the API would render it (with trigger and steps), ignoring hiding faults.
    pub fn run(&self, account: i64, run_id: i64) -> Option<Value> {
        let state = self.state();
        let run = state.runs.get(&run_id).filter(|r| r.account == account)?;
        Some(render::run(
            run,
            &state,
            Instant::now(),
            &["trigger", "run_steps"],
        ))
    }

    /// Every run of an account, oldest first.
    pub fn runs(&self, account: i64) -> Vec<Value> {
        let state = self.state();
        let now = Instant::now();
        state
            .runs
            .values()
            .filter(|r| r.account == account)
            .map(|r| render::run(r, &state, now, &["trigger"]))
            .collect()
    }

    /// Runs created by `POST .../jobs/{job}/run/` (not retries), including lost responses.
    pub fn trigger_count(&self, account: i64, job_id: i64) -> usize {
        self.state()
            .triggers
            .iter()
            .filter(|t| t.account == account && t.job_id == job_id)
            .count()
    }

    /// Every trigger, in order.
    pub fn triggers(&self) -> Vec<TriggerRecord> {
        self.state().triggers.clone()
    }

    /// Every request, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state().requests.clone()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    /// Queues a fault.
    pub fn inject(&self, fault: Fault) {
        let mut state = self.state();
        match fault {
            Fault::HideNewRuns { duration } => state.hide_new_runs = Some(duration),
            other => state.faults.push_back(other),
        }
    }

    /// Removes every queued fault and random fault setting.
    pub fn clear_faults(&self) {
        let mut state = self.state();
        state.faults.clear();
        state.random = None;
        state.hide_new_runs = None;
    }

    /// `true` (the default): renders absent run fields (`finished_at` of a running run,
    /// `retrying_run_id`, unrequested `trigger`/`job`, …) as JSON `null` and unrequested
    /// `run_steps` as `[]`, as the live service does. `false`: the sparse form, which omits them
    /// (what the OpenAPI files, which declare none of these properties nullable, describe).
    /// Clients must cope with both.
    pub fn set_live_nulls(&self, on: bool) {
        self.state().live_nulls = on;
    }

    /// Makes every run step's `logs` at least `bytes` long (huge-log tests); 0 restores short logs.
    pub fn set_step_log_bytes(&self, bytes: usize) {
        self.state().step_log_bytes = bytes;
    }

    /// Enables seeded random faults (or disables them with rates of 0).
    pub fn set_random_faults(&self, faults: RandomFaults) {
        use rand::SeedableRng;
        let rng = StdRng::seed_from_u64(faults.seed);
        self.state().random = Some((faults, rng));
    }

    /// Reports `code` as the run's `status` (any integer, e.g. one the OpenAPI file does not list:
    /// `status_humanized` is then "Unknown") until called again with `None`. The run's own
    /// schedule goes on underneath; the simulator's own checks (cancel, retry, filters) see the
    /// reported code, and treat codes of 10 and more as finished.
    pub fn set_run_status(&self, account: i64, run_id: i64, code: Option<i64>) {
        if let Some(run) = self
            .state()
            .runs
            .get_mut(&run_id)
            .filter(|r| r.account == account)
        {
            run.status_override = code;
        }
    }

    /// Ends a run now with `outcome` (only if it is not finished yet).
    pub fn finish_run(&self, account: i64, run_id: i64, outcome: Outcome) {
        let mut state = self.state();
        let now = Instant::now();
        let Some(run) = state.runs.get_mut(&run_id).filter(|r| r.account == account) else {
            return;
        };
        if run.forced.is_some() || run.finish_at <= now {
            return;
        }
        run.forced = Some((outcome, now));
        let job = run.job_id;
        state.reschedule(account, job);
    }
}
