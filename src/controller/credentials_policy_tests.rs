//! Every branch of the credentials policy, without a client or an API server.

use super::*;
use crate::crd::SecretKeyRef;
use k8s_openapi::ByteString;

const FP: &str = "sha256:000000000001";
const OTHER_FP: &str = "sha256:000000000002";

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn target() -> CredentialsTarget {
    CredentialsTarget {
        account_id: 1,
        host: "cloud.getdbt.com".into(),
        secret: SecretKeyRef {
            name: "dbt".into(),
            key: "apiKey".into(),
        },
        secret_namespace: "ns".into(),
    }
}

fn secret(pairs: &[(&str, &[u8])]) -> Secret {
    Secret {
        data: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// A status validated at `validated` (seconds) with key [`FP`], generation 1.
fn valid_status(validated: i64) -> CredentialsStatus {
    let facts = Facts {
        target: &target(),
        old: &CredentialsStatus::default(),
        generation: Some(1),
        now: ts(validated),
    };
    let a = assess(
        &facts,
        &Observed::Key {
            fingerprint: FP.into(),
            validation: Validation::Valid {
                account_name: Some("Acme".into()),
            },
        },
    );
    status_for(&facts, &a)
}

fn facts<'a>(target: &'a CredentialsTarget, old: &'a CredentialsStatus, now: i64) -> Facts<'a> {
    Facts {
        target,
        old,
        generation: Some(1),
        now: ts(now),
    }
}

fn failure(kind: FailureKind) -> CallFailure {
    CallFailure {
        kind,
        error: "dbt Cloud said no.".into(),
    }
}

fn failed(kind: FailureKind, accessible: Option<Vec<String>>) -> Observed {
    Observed::Key {
        fingerprint: FP.into(),
        validation: Validation::Failed {
            failure: failure(kind),
            accessible,
        },
    }
}

#[test]
fn secret_key_problems_are_explained() {
    let p = key_from_secret(&secret(&[("token", b"x")]), &target()).unwrap_err();
    assert_eq!(p.reason, Reason::SecretKeyMissing);
    assert!(p.message.contains("keys present: token"), "{}", p.message);
    for bad in [&b"  "[..], &[0xff, 0xfe], b"Token dbtc_x"] {
        assert_eq!(
            key_from_secret(&secret(&[("apiKey", bad)]), &target())
                .unwrap_err()
                .reason,
            Reason::SecretKeyInvalid
        );
    }
    assert_eq!(
        key_from_secret(&secret(&[("apiKey", b"dbtc_abc\n")]), &target()).unwrap(),
        "dbtc_abc"
    );
    let p = key_from_secret(&Secret::default(), &target()).unwrap_err();
    assert_eq!(p.reason, Reason::SecretKeyMissing);
    assert!(p.message.contains("keys present: none"), "{}", p.message);
}

#[test]
fn problems_before_dbt_cloud_is_asked() {
    let t = target();
    let old = CredentialsStatus::default();
    let f = facts(&t, &old, 0);
    let cases = [
        (
            Observed::InvalidHost("not allowed".into()),
            Reason::InvalidHost,
            true,
            "spec.host: not allowed",
            None,
        ),
        (
            Observed::SecretMissing,
            Reason::SecretNotFound,
            true,
            "Secret 'dbt' not found in namespace 'ns'. Create it: kubectl create secret generic dbt -n ns --from-literal=apiKey=<dbt Cloud API token>",
            None,
        ),
        (
            Observed::SecretUnreadable("forbidden".into()),
            Reason::SecretUnreadable,
            false,
            "Cannot read Secret 'dbt' in namespace 'ns': forbidden",
            None,
        ),
        (
            Observed::BadKey(SecretProblem {
                reason: Reason::SecretKeyInvalid,
                message: "empty".into(),
            }),
            Reason::SecretKeyInvalid,
            true,
            "empty",
            None,
        ),
        (
            Observed::InvalidClient {
                fingerprint: FP.into(),
                error: "bad header".into(),
            },
            Reason::InvalidCredentials,
            true,
            "bad header",
            Some(FP),
        ),
    ];
    for (observed, reason, stalled, message, fingerprint) in cases {
        let a = assess(&f, &observed);
        assert!(!a.ready, "{observed:?}");
        assert_eq!(a.reason, reason);
        assert_eq!(a.stalled, stalled, "{observed:?}");
        assert_eq!(a.message, message);
        assert_eq!(a.fingerprint.as_deref(), fingerprint);
        assert_eq!(a.validated_at, None);
        // A user's fix waits for the Secret refresh; a passing problem is retried sooner.
        let expected = if stalled { 60 } else { 5 };
        assert_eq!(
            requeue_after(&a, Duration::from_secs(60), Duration::from_secs(5)),
            Duration::from_secs(expected)
        );
    }
}

#[test]
fn a_valid_key_is_ready_with_the_account_name() {
    let t = target();
    let old = CredentialsStatus::default();
    let f = facts(&t, &old, 10);
    let a = assess(
        &f,
        &Observed::Key {
            fingerprint: FP.into(),
            validation: Validation::Valid {
                account_name: Some("Acme".into()),
            },
        },
    );
    assert!(a.ready && !a.stalled);
    assert_eq!(a.reason, Reason::Valid);
    assert_eq!(
        a.message,
        "API key validated for dbt Cloud account 1 (Acme) on cloud.getdbt.com"
    );
    assert_eq!(a.validated_at, Some(ts(10)));
    let s = status_for(&f, &a);
    assert_eq!(s.account_name.as_deref(), Some("Acme"));
    assert_eq!(s.key_fingerprint.as_deref(), Some(FP));
    assert_eq!(s.last_validated_time, Some(Time(ts(10))));
    assert_eq!(s.observed_generation, Some(1));
    assert!(conditions::is_true(&s.conditions, conditions::READY));
    assert!(!conditions::is_true(&s.conditions, conditions::RECONCILING));
    assert!(!conditions::is_true(&s.conditions, conditions::STALLED));
    let e = event_for(&old, &s, &a).unwrap();
    assert_eq!((e.warning, e.reason), (false, Reason::Validated));
    assert_eq!(
        requeue_after(&a, Duration::from_secs(60), Duration::from_secs(5)),
        Duration::from_secs(60)
    );
    // Without a name.
    let a = assess(
        &f,
        &Observed::Key {
            fingerprint: FP.into(),
            validation: Validation::Valid { account_name: None },
        },
    );
    assert_eq!(
        a.message,
        "API key validated for dbt Cloud account 1 on cloud.getdbt.com"
    );
}

#[test]
fn validation_is_skipped_only_for_the_same_recent_ready_key_and_spec() {
    let t = target();
    let revalidate = Duration::from_secs(3600);
    let old = valid_status(0);
    assert!(!needs_validation(&facts(&t, &old, 100), FP, revalidate));
    assert!(needs_validation(
        &facts(&t, &old, 100),
        OTHER_FP,
        revalidate
    ));
    assert!(needs_validation(&facts(&t, &old, 3600), FP, revalidate));
    let mut newer_spec = facts(&t, &old, 100);
    newer_spec.generation = Some(2);
    assert!(needs_validation(&newer_spec, FP, revalidate));
    let never = CredentialsStatus::default();
    assert!(needs_validation(&facts(&t, &never, 100), FP, revalidate));
    // The skipped check keeps the earlier result as it was: nothing to write, no Event.
    let f = facts(&t, &old, 100);
    let a = assess(
        &f,
        &Observed::Key {
            fingerprint: FP.into(),
            validation: Validation::Recent,
        },
    );
    assert!(a.ready);
    assert_eq!(a.validated_at, Some(ts(0)));
    assert_eq!(a.account_name.as_deref(), Some("Acme"));
    let s = status_for(&f, &a);
    assert_eq!(s, old);
    assert_eq!(event_for(&old, &s, &a), None);
}

#[test]
fn failed_validations_are_explained() {
    let t = target();
    let old = CredentialsStatus::default();
    let f = facts(&t, &old, 0);
    let a = assess(&f, &failed(FailureKind::Unauthorized, None));
    assert_eq!(
        (a.ready, a.reason, a.stalled),
        (false, Reason::Unauthorized, true)
    );
    assert_eq!(
        a.message,
        "dbt Cloud said no. Ensure the credentials are correct and unexpired"
    );
    assert_eq!(a.fingerprint.as_deref(), Some(FP));

    assert!(wants_accessible_accounts(&failure(FailureKind::NoAccess)));
    assert!(!wants_accessible_accounts(&failure(
        FailureKind::Unauthorized
    )));
    for (accessible, tail) in [
        (None, ""),
        (Some(vec![]), " Accounts this key can access: none."),
        (
            Some(vec!["2 (Other)".to_string(), "3 ()".to_string()]),
            " Accounts this key can access: 2 (Other), 3 ().",
        ),
    ] {
        let a = assess(&f, &failed(FailureKind::NoAccess, accessible));
        assert_eq!(
            (a.ready, a.reason, a.stalled),
            (false, Reason::AccountNotAccessible, true)
        );
        assert_eq!(a.message, format!("The key cannot access dbt Cloud account 1 (check spec.accountId and the token's permissions).{tail}"));
    }

    let a = assess(&f, &failed(FailureKind::RateLimited, None));
    assert_eq!((a.reason, a.stalled), (Reason::RateLimited, false));
    assert_eq!(a.message, "dbt Cloud said no.; will retry");
    let a = assess(&f, &failed(FailureKind::Unreachable, None));
    assert_eq!((a.reason, a.stalled), (Reason::Unreachable, false));
    assert_eq!(
        a.message,
        "Cannot reach dbt Cloud: dbt Cloud said no.; will retry"
    );
    assert_eq!(
        requeue_after(&a, Duration::from_secs(60), Duration::from_secs(5)),
        Duration::from_secs(5)
    );
    let a = assess(&f, &failed(FailureKind::Other(Reason::Redirect), None));
    assert_eq!((a.reason, a.stalled), (Reason::Redirect, true));
    assert_eq!(a.message, "dbt Cloud said no.");

    // Not ready: Reconciling while it may pass, Stalled when a user must act; a Warning Event.
    let s = status_for(&f, &a);
    assert!(conditions::is_true(&s.conditions, conditions::STALLED));
    assert!(!conditions::is_true(&s.conditions, conditions::RECONCILING));
    assert_eq!(s.account_name, None);
    let e = event_for(&old, &s, &a).unwrap();
    assert_eq!((e.warning, e.reason), (true, Reason::Redirect));
    let a = assess(&f, &failed(FailureKind::Unreachable, None));
    let s = status_for(&f, &a);
    assert!(conditions::is_true(&s.conditions, conditions::RECONCILING));
    assert!(!conditions::is_true(&s.conditions, conditions::STALLED));
}

#[test]
fn a_transient_failure_keeps_a_key_that_was_valid() {
    let t = target();
    let old = valid_status(0);
    let f = facts(&t, &old, 7200);
    for kind in [FailureKind::RateLimited, FailureKind::Unreachable] {
        assert!(keeps_valid(&f, FP, &failure(kind.clone())));
        let a = assess(&f, &failed(kind, None));
        assert!(a.ready);
        assert_eq!(a.reason, Reason::Valid);
        assert_eq!(a.validated_at, Some(ts(0)));
        assert_eq!(status_for(&f, &a), old);
    }
    // Not for a permanent failure, another key, or a key that was not ready.
    assert!(!keeps_valid(&f, FP, &failure(FailureKind::Unauthorized)));
    assert!(!keeps_valid(
        &f,
        OTHER_FP,
        &failure(FailureKind::Unreachable)
    ));
    let never = CredentialsStatus::default();
    assert!(!keeps_valid(
        &facts(&t, &never, 0),
        FP,
        &failure(FailureKind::Unreachable)
    ));
    // A key that stops working loses Ready, with a Warning.
    let a = assess(&f, &failed(FailureKind::Unauthorized, None));
    let s = status_for(&f, &a);
    assert!(!conditions::is_true(&s.conditions, conditions::READY));
    assert_eq!(s.account_name, None);
    assert_eq!(s.last_validated_time, old.last_validated_time);
    assert_eq!(
        event_for(&old, &s, &a).map(|e| (e.warning, e.reason)),
        Some((true, Reason::Unauthorized))
    );
}

#[test]
fn a_rotated_key_is_announced_once() {
    let t = target();
    let old = valid_status(0);
    let f = facts(&t, &old, 100);
    let a = assess(
        &f,
        &Observed::Key {
            fingerprint: OTHER_FP.into(),
            validation: Validation::Valid {
                account_name: Some("Acme".into()),
            },
        },
    );
    let s = status_for(&f, &a);
    assert_eq!(s.key_fingerprint.as_deref(), Some(OTHER_FP));
    let e = event_for(&old, &s, &a).unwrap();
    assert_eq!((e.warning, e.reason), (false, Reason::KeyRotated));
    // Revalidating the same key later changes the time only: no Event.
    let f2 = facts(&t, &s, 5000);
    let a2 = assess(
        &f2,
        &Observed::Key {
            fingerprint: OTHER_FP.into(),
            validation: Validation::Valid {
                account_name: Some("Acme".into()),
            },
        },
    );
    let s2 = status_for(&f2, &a2);
    assert_ne!(s2, s);
    assert_eq!(event_for(&s, &s2, &a2), None);
}
