//! Helpers for `metav1.Condition` lists, following the Kubernetes API conventions:
//! one condition per `type`, CamelCase `reason`, and a `lastTransitionTime` that only
//! moves when `status` changes.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::reasons::Reason;

/// Condition type that summarises whether the object is usable / done (`kubectl wait --for=condition=Ready`).
pub const READY: &str = "Ready";
/// kstatus: the controller is still working towards the desired state.
pub const RECONCILING: &str = "Reconciling";
/// kstatus: the controller cannot make progress without a change from the user.
pub const STALLED: &str = "Stalled";
/// Batch-Job style: the run finished successfully (`kubectl wait --for=condition=Complete`).
pub const COMPLETE: &str = "Complete";
/// Batch-Job style: the run finished unsuccessfully (`kubectl wait --for=condition=Failed`).
pub const FAILED: &str = "Failed";

/// `"True"` or `"False"` as Kubernetes writes condition status.
pub fn status_str(value: bool) -> String {
    if value { "True" } else { "False" }.to_string()
}

/// The conditions of one object, updated at one moment for one generation: the generation and
/// the time are captured once, so each condition is set with what differs (type, status, reason,
/// message).
///
/// ```
/// # use dbt_cloud_operator::crd::conditions::{Conditions, READY};
/// # use dbt_cloud_operator::crd::reasons::Reason;
/// let mut list = Vec::new();
/// let mut c = Conditions::new(&mut list, Some(1), jiff::Timestamp::UNIX_EPOCH);
/// c.set(READY, false, Reason::Pending, "waiting");
/// assert_eq!(list[0].reason, "Pending");
/// ```
pub struct Conditions<'a> {
    list: &'a mut Vec<Condition>,
    generation: Option<i64>,
    now: Timestamp,
}

impl<'a> Conditions<'a> {
    /// Updates `list` as of `now`, for the spec of `generation`.
    pub fn new(list: &'a mut Vec<Condition>, generation: Option<i64>, now: Timestamp) -> Self {
        Self {
            list,
            generation,
            now,
        }
    }

    /// Sets (inserts or updates) a condition, keeping `lastTransitionTime` when the status is
    /// unchanged. Returns true when anything about the condition changed.
    pub fn set(&mut self, type_: &str, status: bool, reason: Reason, message: &str) -> bool {
        let status = status_str(status);
        let reason = reason.as_str();
        let message = truncate_message(message);
        let (generation, now) = (self.generation, self.now);
        if let Some(existing) = self.list.iter_mut().find(|c| c.type_ == type_) {
            let changed = existing.status != status
                || existing.reason != reason
                || existing.message != message
                || existing.observed_generation != generation;
            if existing.status != status {
                existing.last_transition_time = Time(now);
            }
            existing.status = status;
            existing.reason = reason.to_string();
            existing.message = message;
            existing.observed_generation = generation;
            changed
        } else {
            self.list.push(Condition {
                type_: type_.to_string(),
                status,
                reason: reason.to_string(),
                message,
                observed_generation: generation,
                last_transition_time: Time(now),
            });
            true
        }
    }

    /// Removes the condition of the given type; returns true when one was removed.
    pub fn remove(&mut self, type_: &str) -> bool {
        remove_condition(self.list, type_)
    }

    /// The conditions as they are now.
    pub fn list(&self) -> &[Condition] {
        self.list
    }
}

/// Removes a condition of the given type; returns true when one was removed.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    before != conditions.len()
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition exists with status `"True"`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Condition messages are capped (the API server allows 32 KiB; status is cached for every object,
/// so we keep them short).
pub const MAX_MESSAGE_LEN: usize = 1024;

/// Truncates a message to [`MAX_MESSAGE_LEN`] bytes on a character boundary.
pub fn truncate_message(message: &str) -> String {
    truncate_str(message, MAX_MESSAGE_LEN)
}

/// Truncates a string to at most `max` bytes on a character boundary, marking the cut with `…`.
pub fn truncate_str(value: &str, max: usize) -> String {
    if value.len() <= max {
        return value.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut conds = Vec::new();
        assert!(Conditions::new(&mut conds, Some(1), ts(10)).set(
            READY,
            false,
            Reason::Pending,
            "a"
        ));
        assert!(Conditions::new(&mut conds, Some(1), ts(20)).set(
            READY,
            false,
            Reason::Waiting,
            "b"
        ));
        assert_eq!(conds[0].last_transition_time.0, ts(10));
        assert!(!Conditions::new(&mut conds, Some(1), ts(30)).set(
            READY,
            false,
            Reason::Waiting,
            "b"
        ));
        assert!(Conditions::new(&mut conds, Some(2), ts(40)).set(
            READY,
            true,
            Reason::Succeeded,
            "c"
        ));
        assert_eq!(conds[0].last_transition_time.0, ts(40));
        assert_eq!(conds[0].observed_generation, Some(2));
        assert_eq!(conds.len(), 1);
        assert!(is_true(&conds, READY));
        let mut c = Conditions::new(&mut conds, Some(2), ts(50));
        assert!(c.remove(READY));
        assert!(!c.remove(READY));
        assert!(c.list().is_empty());
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let s = "é".repeat(10);
        let t = truncate_str(&s, 7);
        assert!(t.len() <= 7, "{t}");
        assert!(t.ends_with('…'));
        assert_eq!(truncate_str("short", 10), "short");
    }
}
