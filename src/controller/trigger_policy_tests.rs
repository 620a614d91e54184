//! Exhaustive tests of the pure trigger decision: no client, no clock, no IO.

use super::*;
use crate::crd::job_trigger::DbtCloudJobTriggerSpec;

const UID: &str = "6c1f3a9e-2b7d-4e55-8a10-3f2d9c4b7e01";
const NAME: &str = "nightly";

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// 2026-11-25T00:00:00Z plus `secs`.
fn t(secs: i64) -> Timestamp {
    at("2026-11-25T00:00:00Z") + SignedDuration::from_secs(secs)
}

fn spec(extra: serde_json::Value) -> DbtCloudJobTriggerSpec {
    let mut base = serde_json::json!({
        "runTemplate": {"spec": {"credentialsRef": {"name": "creds"}, "job": {"id": 42}}}
    });
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    serde_json::from_value(base).unwrap()
}

struct World {
    spec: DbtCloudJobTriggerSpec,
    status: DbtCloudJobTriggerStatus,
    generation: i64,
    created: Timestamp,
    children: Vec<Child>,
}

impl World {
    fn new(extra: serde_json::Value) -> Self {
        World {
            spec: spec(extra),
            status: DbtCloudJobTriggerStatus::default(),
            generation: 1,
            created: t(0),
            children: Vec::new(),
        }
    }

    fn view(&self) -> TriggerView<'_> {
        TriggerView {
            name: NAME,
            namespace: "analytics",
            uid: UID,
            generation: Some(self.generation),
            created: self.created,
            spec: &self.spec,
            status: &self.status,
        }
    }

    fn decide(&self, now: Timestamp) -> Decision {
        decide(self.view(), &self.children, now)
    }

    /// Decides at `now` and performs the decision as the reconciler does when every call
    /// succeeds: cancels, creates (children appear, Pending), deletes, status written.
    fn step(&mut self, now: Timestamp) -> Decision {
        let d = self.decide(now);
        for name in &d.cancel {
            self.child_mut(name).cancel_requested = true;
        }
        let mut status = d.status.clone();
        for s in &d.start {
            assert!(
                !self.children.iter().any(|c| c.name == s.name),
                "started {} twice",
                s.name
            );
            self.children.push(Child {
                name: s.name.clone(),
                created: now,
                scheduled_at: match s.cause {
                    StartCause::Schedule(slot) => Some(slot),
                    _ => None,
                },
                phase: RunPhase::Pending,
                finished_at: None,
                cancel_requested: false,
                deleting: false,
            });
            record_start(&mut status, s);
        }
        self.children.retain(|c| !d.delete.contains(&c.name));
        self.status = status;
        d
    }

    fn child_mut(&mut self, name: &str) -> &mut Child {
        self.children
            .iter_mut()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no child {name}"))
    }

    fn finish(&mut self, name: &str, phase: RunPhase, at: Timestamp) {
        let c = self.child_mut(name);
        c.phase = phase;
        c.finished_at = Some(at);
    }

    fn finish_all(&mut self, phase: RunPhase, at: Timestamp) {
        for c in self.children.iter_mut().filter(|c| !c.phase.is_terminal()) {
            c.phase = phase;
            c.finished_at = Some(at);
        }
    }

    fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.children.iter().map(|c| c.name.clone()).collect();
        n.sort();
        n
    }
}

fn started(d: &Decision) -> Vec<String> {
    d.start.iter().map(|s| s.name.clone()).collect()
}

fn reasons(d: &Decision) -> Vec<&'static str> {
    d.events.iter().map(|e| e.reason.as_str()).collect()
}

fn cond(status: &DbtCloudJobTriggerStatus, type_: &str) -> (String, String) {
    let c = conditions::find(&status.conditions, type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", status.conditions));
    (c.status.clone(), c.reason.clone())
}

fn child(name: &str, created: Timestamp, phase: RunPhase, finished: Option<Timestamp>) -> Child {
    Child {
        name: name.into(),
        created,
        scheduled_at: None,
        phase,
        finished_at: finished,
        cancel_requested: false,
        deleting: false,
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

#[test]
fn schedules_parse_as_five_fields_or_macros() {
    for ok in [
        "* * * * *",
        "0 2 * * *",
        "*/15 9-17 * * 1-5",
        "0 0 1 JAN *",
        "30 4 * * MON,FRI",
        "0 0 L * *",
        "0 12 * * 5#2",
        "@hourly",
        "@daily",
        "@weekly",
        "@monthly",
        "@yearly",
    ] {
        assert!(Schedule::parse(ok, None).is_ok(), "{ok} should parse");
    }
}

#[test]
fn bad_schedules_and_time_zones_say_what_to_fix() {
    for (bad, fragment) in [
        ("0 0 2 * * *", "6 fields, not 5"),
        ("* * * *", "4 fields, not 5"),
        ("75 * * * *", "spec.schedule"),
        ("0 25 * * *", "spec.schedule"),
        ("0 0 30 2 *", "never matches"),
        ("every day", "spec.schedule"),
        ("@fortnightly", "spec.schedule"),
    ] {
        let e = Schedule::parse(bad, None).expect_err(bad);
        assert_eq!(e.reason, REASON_INVALID_SCHEDULE, "{bad}");
        assert!(e.message.contains(fragment), "{bad}: {}", e.message);
        assert!(e.message.contains("e.g. \"0 2 * * *\""), "{}", e.message);
    }
    let e = Schedule::parse("0 2 * * *", Some("Mars/Olympus_Mons")).unwrap_err();
    assert_eq!(e.reason, REASON_INVALID_TIME_ZONE);
    assert!(e.message.contains("Europe/Berlin"), "{}", e.message);
    assert!(Schedule::parse("0 2 * * *", Some("Europe/Berlin")).is_ok());
    assert!(Schedule::parse("0 2 * * *", Some("UTC")).is_ok());
}

#[test]
fn invalid_spec_is_stalled_with_one_event_and_starts_nothing() {
    let mut w = World::new(serde_json::json!({"schedule": "61 * * * *", "revision": "abc"}));
    let d = w.step(t(3600));
    assert!(d.start.is_empty() && d.requeue_at.is_none());
    assert_eq!(
        cond(&d.status, "Ready"),
        ("False".into(), "InvalidSchedule".into())
    );
    assert_eq!(
        cond(&d.status, "Stalled"),
        ("True".into(), "InvalidSchedule".into())
    );
    assert_eq!(cond(&d.status, "Reconciling").0, "False");
    assert_eq!(reasons(&d), vec!["InvalidSchedule"]);
    assert_eq!(d.status.observed_generation, Some(1));
    // Decided again (a requeue, a child event): no second Event.
    let d = w.step(t(7200));
    assert!(reasons(&d).is_empty(), "{:?}", d.events);
    // A time zone typo after a fix: a new reason, a new Event.
    w.spec.schedule = Some("0 * * * *".into());
    w.spec.time_zone = Some("Europe/Berlinn".into());
    w.generation = 2;
    let d = w.step(t(7300));
    assert_eq!(reasons(&d), vec!["InvalidTimeZone"]);
    assert!(d.start.is_empty());
    // Fixed: Ready, and the revision's run starts.
    w.spec.time_zone = Some("Europe/Berlin".into());
    w.generation = 3;
    let d = w.step(t(7400));
    assert_eq!(
        cond(&d.status, "Ready"),
        ("True".into(), "Scheduled".into())
    );
    assert_eq!(cond(&d.status, "Stalled").0, "False");
    let causes: Vec<&str> = d.start.iter().map(|s| s.cause.as_str()).collect();
    assert_eq!(causes, vec!["Revision", "Schedule"]);
}

#[test]
fn a_name_without_room_for_the_suffix_is_stalled() {
    let w = World::new(serde_json::json!({"schedule": "* * * * *"}));
    let long = "a".repeat(241);
    let view = TriggerView {
        name: &long,
        ..w.view()
    };
    let d = decide(view, &[], t(600));
    assert!(d.start.is_empty());
    assert_eq!(
        cond(&d.status, "Stalled"),
        ("True".into(), "NameTooLong".into())
    );
    // 240 fits: every suffix keeps the run's name within 253 characters.
    let ok = "a".repeat(240);
    let d = decide(
        TriggerView {
            name: &ok,
            ..w.view()
        },
        &[],
        t(600),
    );
    assert_eq!(d.start.len(), 1);
    assert!(d.start[0].name.len() <= MAX_NAME_LEN);
    assert!(revision_run_name(&ok, UID, 0, "x").len() <= MAX_NAME_LEN);
    assert!(manual_run_prefix(&ok).len() + 5 <= MAX_NAME_LEN);
}

// ---------------------------------------------------------------------------------------------
// Schedule slots
// ---------------------------------------------------------------------------------------------

#[test]
fn nothing_is_due_before_the_first_slot_after_creation() {
    let mut w = World::new(serde_json::json!({"schedule": "0 2 * * *"}));
    w.created = t(3 * 3600); // 03:00, after today's 02:00
    let d = w.step(t(3 * 3600 + 10));
    assert!(d.start.is_empty());
    assert_eq!(d.status.next_schedule_time, Some(Time(t(26 * 3600))));
    assert_eq!(d.requeue_at, Some(t(26 * 3600)));
    assert_eq!(
        cond(&d.status, "Ready"),
        ("True".into(), "Scheduled".into())
    );
    let (_, msg) = (
        (),
        conditions::find(&d.status.conditions, "Ready")
            .unwrap()
            .message
            .clone(),
    );
    assert!(msg.contains("next run at 2026-11-26T02:00:00Z"), "{msg}");
}

#[test]
fn each_slot_starts_exactly_one_run_with_a_name_from_its_time() {
    let mut w = World::new(serde_json::json!({"schedule": "* * * * *"}));
    let mut all = Vec::new();
    // Decided many times per minute (child events, requeues, restarts), across five minutes.
    for second in (5..300).step_by(7) {
        let d = w.step(t(second));
        all.extend(started(&d));
    }
    let minutes = t(0).as_second() / 60;
    let want: Vec<String> = (1..=4)
        .map(|m| format!("nightly-{}", minutes + m))
        .collect();
    assert_eq!(all, want);
    assert_eq!(w.status.last_schedule_time, Some(Time(t(240))));
    assert_eq!(w.status.next_schedule_time, Some(Time(t(300))));
    assert_eq!(w.status.active_count, 4);
    assert_eq!(w.status.last_run_name.as_deref(), Some(want[3].as_str()));
}

#[test]
fn a_slot_is_due_at_its_exact_time_and_not_before() {
    let mut w = World::new(serde_json::json!({"schedule": "*/5 * * * *"}));
    assert!(w.step(t(299)).start.is_empty());
    let d = w.step(t(300));
    assert_eq!(d.start.len(), 1);
    assert_eq!(d.start[0].cause, StartCause::Schedule(t(300)));
    assert_eq!(d.start[0].name, scheduled_run_name(NAME, t(300)));
}

#[test]
fn a_crash_after_the_create_does_not_start_the_slot_again() {
    let mut w = World::new(serde_json::json!({"schedule": "* * * * *"}));
    let d = w.decide(t(61));
    assert_eq!(d.start.len(), 1);
    // The run was created, then the operator died before writing status.
    w.children.push(Child {
        scheduled_at: Some(t(60)),
        ..child(&d.start[0].name, t(61), RunPhase::Pending, None)
    });
    let again = w.decide(t(62));
    assert!(again.start.is_empty(), "{again:?}");
    assert_eq!(again.status.last_schedule_time, Some(Time(t(60))));
    assert_eq!(again.status.active_count, 1);
    // A crash before the create: decided again, the same name (a create of it answers 409).
    let fresh = World::new(serde_json::json!({"schedule": "* * * * *"}));
    assert_eq!(started(&fresh.decide(t(61))), started(&fresh.decide(t(75))));
}

#[test]
fn after_downtime_only_the_latest_missed_slot_is_started_without_a_deadline() {
    let mut w = World::new(serde_json::json!({"schedule": "*/10 * * * *"}));
    w.step(t(600)); // 00:10 started
                    // Down from 00:10 to 02:05: 00:20 … 02:00 missed (11 slots, 10 before the latest).
    let d = w.step(t(2 * 3600 + 300));
    assert_eq!(started(&d), vec![scheduled_run_name(NAME, t(7200))]);
    assert_eq!(reasons(&d), vec!["MissedSchedule"]);
    assert!(
        d.events[0].note.contains("10 earlier slot(s)"),
        "{}",
        d.events[0].note
    );
    // And not again.
    assert!(w.step(t(2 * 3600 + 400)).start.is_empty());
}

#[test]
fn catch_up_happens_within_the_starting_deadline_only() {
    // Within: the 02:00 slot, 4 minutes late with a 5-minute deadline.
    let mut w =
        World::new(serde_json::json!({"schedule": "0 * * * *", "startingDeadlineSeconds": 300}));
    let d = w.step(t(2 * 3600 + 240));
    assert_eq!(started(&d), vec![scheduled_run_name(NAME, t(7200))]);

    // Outside: 6 minutes late. Nothing starts; the slot is recorded as missed, once.
    let mut w =
        World::new(serde_json::json!({"schedule": "0 * * * *", "startingDeadlineSeconds": 300}));
    let d = w.step(t(2 * 3600 + 360));
    assert!(d.start.is_empty());
    assert_eq!(reasons(&d), vec!["MissedSchedule"]);
    let skipped = d.status.last_skipped.clone().unwrap();
    assert_eq!(skipped.reason, "MissedDeadline");
    assert_eq!(skipped.schedule_time, Some(Time(t(7200))));
    assert!(skipped.message.contains("360s late"), "{}", skipped.message);
    // 01:00 was missed too (00:00, the creation time, is not a slot of this trigger).
    assert!(
        skipped.message.contains("1 earlier slot(s)"),
        "{}",
        skipped.message
    );
    let d = w.step(t(2 * 3600 + 500));
    assert!(d.start.is_empty() && d.events.is_empty(), "{d:?}");
    // The next slot starts on time.
    let d = w.step(t(3 * 3600 + 1));
    assert_eq!(started(&d), vec![scheduled_run_name(NAME, t(3 * 3600))]);

    // Exactly at the deadline is still in time.
    let mut w =
        World::new(serde_json::json!({"schedule": "0 * * * *", "startingDeadlineSeconds": 300}));
    assert_eq!(w.step(t(3600 + 300)).start.len(), 1);
}

#[test]
fn schedules_follow_the_time_zone_across_daylight_saving_changes() {
    // 02:30 every day in Berlin. On 2026-03-29 the clock jumps 02:00 → 03:00: the run is
    // right after the gap (03:00 CEST = 01:00 UTC); on 2026-10-25 02:30 happens twice: one run.
    let mut w =
        World::new(serde_json::json!({"schedule": "30 2 * * *", "timeZone": "Europe/Berlin"}));
    w.created = at("2026-03-27T12:00:00Z");
    let mut starts = Vec::new();
    let mut now = w.created;
    while now < at("2026-03-31T12:00:00Z") {
        now += SignedDuration::from_mins(10);
        for s in w.step(now).start {
            if let StartCause::Schedule(slot) = s.cause {
                starts.push(slot);
            }
        }
    }
    assert_eq!(
        starts,
        vec![
            at("2026-03-28T01:30:00Z"), // 02:30 CET
            at("2026-03-29T01:00:00Z"), // 02:30 does not exist: 03:00 CEST
            at("2026-03-30T00:30:00Z"), // 02:30 CEST
            at("2026-03-31T00:30:00Z"),
        ]
    );
    let mut w =
        World::new(serde_json::json!({"schedule": "30 2 * * *", "timeZone": "Europe/Berlin"}));
    w.created = at("2026-10-24T12:00:00Z");
    let mut starts = Vec::new();
    let mut now = w.created;
    while now < at("2026-10-26T12:00:00Z") {
        now += SignedDuration::from_mins(10);
        for s in w.step(now).start {
            if let StartCause::Schedule(slot) = s.cause {
                starts.push(slot);
            }
        }
    }
    assert_eq!(
        starts,
        vec![
            at("2026-10-25T00:30:00Z"), // the first 02:30 (CEST) only
            at("2026-10-26T01:30:00Z"), // 02:30 CET
        ]
    );
}

#[test]
fn next_schedule_time_is_in_utc_and_the_message_shows_local_time() {
    let mut w =
        World::new(serde_json::json!({"schedule": "0 2 * * *", "timeZone": "America/New_York"}));
    w.created = at("2026-07-01T12:00:00Z");
    let d = w.step(at("2026-07-01T12:00:00Z"));
    // EDT (UTC-4) in July.
    assert_eq!(
        d.status.next_schedule_time,
        Some(Time(at("2026-07-02T06:00:00Z")))
    );
    let msg = &conditions::find(&d.status.conditions, "Ready")
        .unwrap()
        .message;
    assert!(msg.contains("2026-07-02 02:00 America/New_York"), "{msg}");
    // EST (UTC-5) in December.
    let d = w.step(at("2026-12-01T12:00:00Z"));
    assert_eq!(
        d.status.next_schedule_time,
        Some(Time(at("2026-12-02T07:00:00Z")))
    );
}

// ---------------------------------------------------------------------------------------------
// Revisions
// ---------------------------------------------------------------------------------------------

#[test]
fn each_revision_change_starts_one_run_and_an_unchanged_one_none() {
    let mut w = World::new(serde_json::json!({"revision": "a1"}));
    let d = w.step(t(10));
    assert_eq!(started(&d), vec![revision_run_name(NAME, UID, 0, "a1")]);
    assert!(d.start[0].name.starts_with("nightly-r-") && d.start[0].name.len() == 18);
    assert_eq!(w.status.last_revision.as_deref(), Some("a1"));
    assert_eq!(w.status.revision_changes, 1);
    // Re-applied unchanged (a new generation from another field, or none): nothing.
    w.generation = 2;
    for s in 11..20 {
        assert!(w.step(t(s)).start.is_empty());
    }
    // A → B → A: three changes, three runs, three names.
    w.spec.revision = Some("b2".into());
    assert_eq!(w.step(t(30)).start.len(), 1);
    w.spec.revision = Some("a1".into());
    let d = w.step(t(40));
    assert_eq!(d.start.len(), 1);
    assert_eq!(w.children.len(), 3);
    assert_eq!(w.status.revision_changes, 3);
    assert_ne!(d.start[0].name, revision_run_name(NAME, UID, 0, "a1"));
    // Unset or empty: nothing, and setting the last value again is no change.
    w.spec.revision = Some(String::new());
    assert!(w.step(t(50)).start.is_empty());
    w.spec.revision = None;
    assert!(w.step(t(60)).start.is_empty());
    w.spec.revision = Some("a1".into());
    assert!(w.step(t(70)).start.is_empty());
}

#[test]
fn n_revision_changes_start_n_runs() {
    let mut w = World::new(serde_json::json!({}));
    for i in 0..25 {
        w.spec.revision = Some(format!("sha-{i}"));
        w.step(t(i * 10));
        w.step(t(i * 10 + 5));
    }
    assert_eq!(w.children.len(), 25);
    assert_eq!(w.names().len(), 25);
}

#[test]
fn a_crash_after_a_revision_run_was_created_adopts_it() {
    let mut w = World::new(serde_json::json!({"revision": "a1"}));
    let d = w.decide(t(10));
    w.children
        .push(child(&d.start[0].name, t(10), RunPhase::Queued, None));
    let again = w.decide(t(11));
    assert!(again.start.is_empty(), "{again:?}");
    assert_eq!(again.status.last_revision.as_deref(), Some("a1"));
    assert_eq!(again.status.revision_changes, 1);
}

#[test]
fn revision_names_depend_on_the_trigger_uid() {
    assert_ne!(
        revision_run_name(NAME, UID, 0, "a1"),
        revision_run_name(NAME, "another-uid", 0, "a1")
    );
    assert_eq!(
        revision_run_name(NAME, UID, 3, "a1"),
        revision_run_name(NAME, UID, 3, "a1")
    );
}

#[test]
fn suspend_holds_schedule_and_revision_and_resume_catches_up() {
    let mut w = World::new(serde_json::json!({
        "schedule": "0 * * * *", "suspend": true, "revision": "r1", "startingDeadlineSeconds": 600
    }));
    let d = w.step(t(3 * 3600 + 60));
    assert!(d.start.is_empty());
    assert_eq!(d.status.next_schedule_time, None);
    assert_eq!(d.requeue_at, None);
    assert_eq!(
        cond(&d.status, "Ready"),
        ("True".into(), "Suspended".into())
    );
    // Resumed 3 minutes after 04:00: the revision run and the 04:00 slot start.
    w.spec.suspend = false;
    w.generation = 2;
    let d = w.step(t(4 * 3600 + 180));
    let causes: Vec<&str> = d.start.iter().map(|s| s.cause.as_str()).collect();
    assert_eq!(causes, vec!["Revision", "Schedule"]);
    assert_eq!(d.start[1].cause, StartCause::Schedule(t(4 * 3600)));
    // Resumed too late for the slot: only the deadline rule applies.
    let mut w = World::new(serde_json::json!({
        "schedule": "0 * * * *", "suspend": true, "startingDeadlineSeconds": 600
    }));
    w.step(t(3 * 3600 + 60));
    w.spec.suspend = false;
    let d = w.step(t(4 * 3600 + 900));
    assert!(d.start.is_empty());
    assert_eq!(d.status.last_skipped.unwrap().reason, "MissedDeadline");
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

#[test]
fn allow_starts_runs_side_by_side() {
    let mut w = World::new(serde_json::json!({"schedule": "* * * * *"}));
    w.step(t(60));
    let d = w.step(t(120));
    assert_eq!(d.start.len(), 1);
    assert!(d.cancel.is_empty());
    assert_eq!(w.status.active_count, 2);
}

#[test]
fn forbid_skips_a_slot_while_a_run_is_active_and_does_not_start_it_later() {
    let mut w =
        World::new(serde_json::json!({"schedule": "* * * * *", "concurrencyPolicy": "Forbid"}));
    let first = started(&w.step(t(60)));
    let d = w.step(t(120));
    assert!(d.start.is_empty());
    assert_eq!(reasons(&d), vec!["RunSkipped"]);
    assert!(d.events[0].note.contains(&first[0]), "{}", d.events[0].note);
    let skipped = w.status.last_skipped.clone().unwrap();
    assert_eq!(
        (skipped.reason.as_str(), skipped.schedule_time),
        ("Forbidden", Some(Time(t(120))))
    );
    // The active run ends: the skipped slot is not started late; the next one is.
    w.finish_all(RunPhase::Succeeded, t(150));
    assert!(w.step(t(170)).start.is_empty());
    let d = w.step(t(180));
    assert_eq!(started(&d), vec![scheduled_run_name(NAME, t(180))]);
}

#[test]
fn forbid_skips_a_revision_change_while_a_run_is_active() {
    let mut w = World::new(serde_json::json!({"revision": "a", "concurrencyPolicy": "Forbid"}));
    w.step(t(1));
    w.spec.revision = Some("b".into());
    let d = w.step(t(2));
    assert!(d.start.is_empty());
    assert_eq!(w.status.last_revision.as_deref(), Some("b"));
    assert_eq!(
        w.status.last_skipped.as_ref().unwrap().revision.as_deref(),
        Some("b")
    );
    w.finish_all(RunPhase::Failed, t(3));
    assert!(w.step(t(4)).start.is_empty(), "b was skipped, not deferred");
    w.spec.revision = Some("c".into());
    assert_eq!(w.step(t(5)).start.len(), 1);
}

#[test]
fn replace_cancels_the_active_runs_then_starts() {
    let mut w =
        World::new(serde_json::json!({"schedule": "* * * * *", "concurrencyPolicy": "Replace"}));
    let first = started(&w.step(t(60)));
    let d = w.step(t(120));
    assert_eq!(d.cancel, first);
    assert_eq!(d.start.len(), 1);
    assert_eq!(reasons(&d), vec!["RunReplaced"]);
    // The cancelled run is still active until the run controller ends it: listed, not cancelled
    // again.
    let d = w.step(t(180));
    assert_eq!(d.cancel, vec![scheduled_run_name(NAME, t(120))]);
    assert_eq!(w.status.active_count, 3);
    w.finish(&first[0], RunPhase::Cancelled, t(185));
    let d = w.step(t(190));
    assert!(d.cancel.is_empty() && d.start.is_empty());
    assert_eq!(w.status.active_count, 2);
}

#[test]
fn with_a_slot_and_a_revision_due_at_once_the_policy_decides() {
    let both = |policy: &str| {
        let mut w = World::new(serde_json::json!({
            "schedule": "* * * * *", "revision": "r1", "concurrencyPolicy": policy
        }));
        w.created = t(-30);
        let d = w.step(t(5));
        (w, d)
    };
    let (_, d) = both("Allow");
    assert_eq!(d.start.len(), 2);
    // Forbid and Replace: the revision's run starts, the slot is skipped (consumed).
    for policy in ["Forbid", "Replace"] {
        let (mut w, d) = both(policy);
        assert_eq!(d.start.len(), 1, "{policy}");
        assert_eq!(d.start[0].cause.as_str(), "Revision");
        let skipped = w.status.last_skipped.clone().unwrap();
        assert_eq!(skipped.schedule_time, Some(Time(t(0))), "{policy}");
        assert!(w.step(t(30)).start.is_empty(), "{policy}");
    }
}

// ---------------------------------------------------------------------------------------------
// History
// ---------------------------------------------------------------------------------------------

#[test]
fn history_limits_keep_the_newest_finished_runs_of_each_kind() {
    let mut w = World::new(serde_json::json!({}));
    for i in 0..5 {
        w.children.push(child(
            &format!("ok-{i}"),
            t(i),
            RunPhase::Succeeded,
            Some(t(100 + i)),
        ));
    }
    for (i, phase) in [RunPhase::Failed, RunPhase::TimedOut, RunPhase::Cancelled]
        .into_iter()
        .enumerate()
    {
        let i = i as i64;
        w.children
            .push(child(&format!("bad-{i}"), t(i), phase, Some(t(200 + i))));
    }
    w.children
        .push(child("running", t(0), RunPhase::Running, None));
    w.children
        .push(child("pending", t(0), RunPhase::Pending, None));
    let d = w.step(t(300));
    let mut deleted = d.delete.clone();
    deleted.sort();
    assert_eq!(deleted, vec!["bad-0", "bad-1", "ok-0", "ok-1"]);
    assert_eq!(reasons(&d), vec!["RunsDeleted"]);
    assert_eq!(
        w.names(),
        vec!["bad-2", "ok-2", "ok-3", "ok-4", "pending", "running"]
    );
    // Stable: nothing more to delete.
    assert!(w.step(t(301)).delete.is_empty());
    // Limits of 0 delete every finished run, never an active one.
    w.spec.successful_runs_history_limit = 0;
    w.spec.failed_runs_history_limit = 0;
    w.step(t(302));
    assert_eq!(w.names(), vec!["pending", "running"]);
}

#[test]
fn history_orders_by_finish_time_and_ignores_runs_being_deleted() {
    let mut w = World::new(serde_json::json!({"successfulRunsHistoryLimit": 1}));
    // Created first, finished last: kept.
    w.children
        .push(child("early-long", t(0), RunPhase::Succeeded, Some(t(500))));
    w.children.push(child(
        "late-short",
        t(100),
        RunPhase::Succeeded,
        Some(t(200)),
    ));
    w.children.push(Child {
        deleting: true,
        ..child("going", t(300), RunPhase::Succeeded, Some(t(900)))
    });
    let d = w.decide(t(1000));
    assert_eq!(d.delete, vec!["late-short"]);
}

#[test]
fn defaults_keep_three_successful_and_one_failed_run() {
    let mut w = World::new(serde_json::json!({"schedule": "* * * * *"}));
    for m in 1..=10 {
        w.step(t(m * 60));
        let phase = if m % 2 == 0 {
            RunPhase::Succeeded
        } else {
            RunPhase::Failed
        };
        w.finish_all(phase, t(m * 60 + 30));
    }
    w.step(t(10 * 60 + 45));
    let ok = w
        .children
        .iter()
        .filter(|c| c.phase == RunPhase::Succeeded)
        .count();
    let failed = w
        .children
        .iter()
        .filter(|c| c.phase == RunPhase::Failed)
        .count();
    assert_eq!((ok, failed), (3, 1));
    assert_eq!(w.status.last_successful_time, Some(Time(t(10 * 60 + 30))));
}

// ---------------------------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------------------------

#[test]
fn status_lists_active_runs_oldest_first_and_keeps_the_last_success() {
    let mut w = World::new(serde_json::json!({}));
    w.status.last_successful_time = Some(Time(t(50)));
    w.children.push(child("b", t(20), RunPhase::Running, None));
    w.children.push(child("a", t(10), RunPhase::Queued, None));
    w.children
        .push(child("c", t(30), RunPhase::Succeeded, Some(t(40))));
    let d = w.decide(t(100));
    let names: Vec<&str> = d.status.active.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, vec!["a", "b"]);
    assert_eq!(d.status.active_count, 2);
    assert_eq!(d.status.last_run_name.as_deref(), Some("c"));
    // The finished run's time is older than the recorded one (a deleted run's): kept.
    assert_eq!(d.status.last_successful_time, Some(Time(t(50))));
    assert_eq!(cond(&d.status, "Ready"), ("True".into(), "Waiting".into()));
}

#[test]
fn rejected_template_holds_starts_until_the_spec_changes() {
    let mut w = World::new(serde_json::json!({"schedule": "* * * * *", "revision": "r1"}));
    let d = w.decide(t(61));
    assert_eq!(d.start.len(), 2);
    let mut status = d.status.clone();
    let note = record_rejected(
        &mut status,
        &d.start[0],
        "metadata.labels: Invalid value",
        Some(1),
        t(61),
    );
    assert!(note.warning);
    assert_eq!(note.reason, REASON_TEMPLATE_REJECTED);
    assert!(note.note.contains("fix spec.runTemplate"), "{}", note.note);
    w.status = status;
    assert_eq!(
        cond(&w.status, "Stalled"),
        ("True".into(), REASON_TEMPLATE_REJECTED.into())
    );
    // Requeues and later slots: nothing is tried, nothing is written anew.
    for s in [62, 130, 190, 250] {
        let d = w.decide(t(s));
        assert!(d.start.is_empty(), "{d:?}");
        assert_eq!(d.requeue_at, None);
        assert_eq!(cond(&d.status, "Stalled").1, REASON_TEMPLATE_REJECTED);
        assert_eq!(d.status.next_schedule_time, None);
    }
    // Fixed (a new generation): the revision and the latest slot start.
    w.generation = 2;
    let d = w.step(t(251));
    assert_eq!(d.start.len(), 2);
    assert_eq!(cond(&d.status, "Ready").0, "True");
}

#[test]
fn a_name_taken_by_another_owner_consumes_the_slot_with_a_warning() {
    let mut w = World::new(serde_json::json!({"schedule": "* * * * *"}));
    let d = w.decide(t(60));
    let mut status = d.status.clone();
    let note = record_name_taken(&mut status, &d.start[0], t(60));
    assert_eq!(note.reason, "RunNameTaken");
    assert!(note.warning);
    w.status = status;
    assert!(w.decide(t(70)).start.is_empty());
    assert_eq!(w.status.last_skipped.as_ref().unwrap().reason, "NameTaken");
    assert_eq!(w.status.active_count, 0);
}

// ---------------------------------------------------------------------------------------------
// The run object
// ---------------------------------------------------------------------------------------------

#[test]
fn runs_are_built_from_the_template_with_owner_and_annotations() {
    let mut w = World::new(serde_json::json!({
        "revision": "0123abc", "revisionAsGitSha": true,
        "runTemplate": {
            "metadata": {"labels": {"team": "data"}, "annotations": {"note": "x"}},
            "spec": {"credentialsRef": {"name": "creds"}, "job": {"id": 42},
                     "trigger": {"threadsOverride": 4}, "retry": {"maxAttempts": 2}}
        }
    }));
    w.status.revision_changes = 0;
    let run = build_run(
        w.view(),
        Some("nightly-r-1"),
        &StartCause::Revision("0123abc".into()),
    );
    let m = &run.metadata;
    assert_eq!(m.name.as_deref(), Some("nightly-r-1"));
    assert_eq!(m.namespace.as_deref(), Some("analytics"));
    let labels = m.labels.clone().unwrap();
    assert_eq!(labels["team"], "data");
    assert_eq!(labels[TRIGGER_LABEL], NAME);
    let ann = m.annotations.clone().unwrap();
    assert_eq!(ann["note"], "x");
    assert_eq!(ann[STARTED_BY_ANNOTATION], "Revision");
    assert_eq!(ann[REVISION_ANNOTATION], "0123abc");
    let owner = &m.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (
            owner.kind.as_str(),
            owner.name.as_str(),
            owner.uid.as_str(),
            owner.controller
        ),
        ("DbtCloudJobTrigger", NAME, UID, Some(true))
    );
    let trig = run.spec.trigger.clone().unwrap();
    assert_eq!(trig.git_sha.as_deref(), Some("0123abc"));
    assert_eq!(trig.threads_override, Some(4));
    assert_eq!(
        trig.cause.as_deref(),
        Some("DbtCloudJobTrigger analytics/nightly: revision 0123abc")
    );
    assert_eq!(run.spec.retry.max_attempts, 2);

    // A scheduled run: its slot annotated; a manual one gets generateName.
    let run = build_run(w.view(), Some("nightly-1"), &StartCause::Schedule(t(60)));
    assert_eq!(
        run.metadata.annotations.unwrap()[SCHEDULED_AT_ANNOTATION],
        "2026-11-25T00:01:00Z"
    );
    let manual = build_run(w.view(), None, &StartCause::Manual);
    assert_eq!(manual.metadata.name, None);
    assert_eq!(
        manual.metadata.generate_name.as_deref(),
        Some("nightly-manual-")
    );
    // The child view reads back what was written.
    let mut scheduled = build_run(w.view(), Some("nightly-1"), &StartCause::Schedule(t(60)));
    scheduled.metadata.creation_timestamp = Some(Time(t(61)));
    let c = child_of(&scheduled, t(0));
    assert_eq!(c.scheduled_at, Some(t(60)));
    assert_eq!(c.created, t(61));
    assert_eq!(c.phase, RunPhase::Pending);
    // Without revisionAsGitSha the template's own git settings are untouched.
    w.spec.revision_as_git_sha = false;
    let run = build_run(w.view(), Some("n"), &StartCause::Manual);
    assert_eq!(run.spec.trigger.unwrap().git_sha, None);
}

#[test]
fn a_long_trigger_name_gets_no_label_but_keeps_its_owner() {
    let w = World::new(serde_json::json!({}));
    let long = "n".repeat(64);
    let run = build_run(
        TriggerView {
            name: &long,
            ..w.view()
        },
        Some("x"),
        &StartCause::Manual,
    );
    assert!(!run.metadata.labels.unwrap().contains_key(TRIGGER_LABEL));
    assert_eq!(run.metadata.owner_references.unwrap()[0].name, long);
}
