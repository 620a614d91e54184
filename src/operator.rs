//! The operator process: the controllers (behind leader election when enabled), the probes and
//! metrics server, and graceful shutdown on SIGTERM. `dbt-cloud-operator run` turns its flags into
//! [`Settings`] and calls [`run`]; every rule a combination of settings must follow is checked by
//! [`Settings::validate`] before anything starts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::controller::{self, Config};
use crate::leader::{self, LeaderConfig, LeaderError, Outcome};
use crate::metrics::Metrics;
use crate::probes::{self, Role};

/// Everything the operator process needs to run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The controllers' configuration.
    pub controllers: Config,
    /// Address of the probes and metrics server (`/metrics`, `/healthz`, `/readyz`).
    pub http_addr: SocketAddr,
    /// The leader Lease; `None` runs the controllers at once (a single replica).
    pub leader_election: Option<LeaderConfig>,
    /// How long running reconciles may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
}

/// A rule a combination of settings breaks. The message names the flags to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A run from a trigger whose answer was lost can appear in dbt Cloud as late as the request
    /// timeout; a window that does not exceed it would send the trigger again too early.
    #[error(
        "--trigger-confirm-window-seconds ({window:?}) must exceed twice \
         --request-timeout-seconds ({timeout:?}): a trigger is sent up to one request timeout \
         after it is recorded and may take another to be answered, so a run whose answer was \
         lost may appear that late, and would be triggered a second time; raise the window or \
         lower the timeout"
    )]
    ConfirmWindowNotAboveRequestTimeout {
        /// The trigger confirm window.
        window: Duration,
        /// The timeout of one dbt Cloud request.
        timeout: Duration,
    },
    /// The leader renews the Lease `grace` seconds before it expires: the grace period must be at
    /// least a second and shorter than the Lease.
    #[error(
        "--lease-grace-seconds ({grace}) must be at least 1 and less than \
         --lease-duration-seconds ({duration}): the leader renews the Lease that long before it \
         expires"
    )]
    LeaseGraceOutOfRange {
        /// Lease grace period, seconds.
        grace: u64,
        /// Lease duration, seconds.
        duration: u64,
    },
}

impl Settings {
    /// Checks every rule the settings must follow together (pure: no IO).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let window = self.controllers.lifecycle.ambiguity_window;
        let timeout = self.controllers.client.request_timeout;
        if window <= timeout * 2 {
            return Err(ConfigError::ConfirmWindowNotAboveRequestTimeout { window, timeout });
        }
        if let Some(lease) = &self.leader_election {
            if lease.grace == 0 || lease.grace >= lease.duration {
                return Err(ConfigError::LeaseGraceOutOfRange {
                    grace: lease.grace,
                    duration: lease.duration,
                });
            }
        }
        Ok(())
    }
}

/// Why the operator stopped other than by a requested shutdown.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The settings break a rule (nothing was started).
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// No Kubernetes client could be built.
    #[error(
        "cannot build a Kubernetes client (no in-cluster config and no usable kubeconfig): {0}"
    )]
    KubeClient(#[source] kube::Error),
    /// The probes and metrics server could not listen.
    #[error("cannot bind the HTTP address {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// Leader election failed.
    #[error(transparent)]
    Leader(#[from] LeaderError),
    /// Another replica took the Lease; this one stopped its controllers.
    #[error(
        "lost the leader lease; exiting so that Kubernetes restarts this replica as a standby"
    )]
    LostLease,
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    info!("shutdown requested");
}

/// Runs the operator until SIGTERM (`Ok`), a fatal error or a lost Lease.
pub async fn run(settings: Settings) -> Result<(), OperatorError> {
    settings.validate()?;
    let Settings {
        controllers: config,
        http_addr,
        leader_election,
        shutdown_grace: grace,
    } = settings;
    let client = kube::Client::try_default()
        .await
        .map_err(OperatorError::KubeClient)?;
    let metrics = Arc::new(Metrics::new());
    let (role_tx, role_rx) = watch::channel(Role::Starting);
    let addr = probes::serve(http_addr, metrics.clone(), role_rx)
        .await
        .map_err(|source| OperatorError::Bind {
            addr: http_addr,
            source,
        })?;
    info!(%addr, "serving /metrics, /healthz, /readyz");
    let shutdown = shutdown_signal().shared();
    let role_tx = Arc::new(role_tx);

    // Runs the controllers until `stop` resolves; bounded by the shutdown grace period after it.
    let controllers = {
        let client = client.clone();
        let metrics = metrics.clone();
        let role_tx = role_tx.clone();
        move |stop: futures::future::BoxFuture<'static, ()>| async move {
            let _ = role_tx.send(Role::LeaderSyncing);
            let (ready_tx, mut ready_rx) = watch::channel(false);
            let role = role_tx.clone();
            tokio::spawn(async move {
                if ready_rx.wait_for(|r| *r).await.is_ok() {
                    let _ = role.send(Role::Leader);
                }
            });
            let stop = stop.shared();
            let stopped = stop.clone();
            let run = controller::run(client, config, metrics, stop, Some(ready_tx));
            tokio::pin!(run);
            let result = tokio::select! {
                r = &mut run => r,
                _ = stopped => match tokio::time::timeout(grace, &mut run).await {
                    Ok(r) => r,
                    Err(_) => {
                        warn!("reconciles did not finish within the shutdown grace period");
                        Ok(())
                    }
                },
            };
            if let Err(e) = result {
                error!(error = %e, "controllers failed");
            }
        }
    };

    match leader_election {
        Some(lease) => {
            let _ = role_tx.send(Role::Standby);
            match leader::run_as_leader(client, lease, metrics, shutdown, controllers).await? {
                Outcome::Shutdown => Ok(()),
                Outcome::LostLease => Err(OperatorError::LostLease),
            }
        }
        None => {
            controllers(Box::pin(shutdown)).await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(window: u64, timeout: u64, lease: Option<(u64, u64)>) -> Settings {
        let mut controllers = Config::default();
        controllers.lifecycle.ambiguity_window = Duration::from_secs(window);
        controllers.client.request_timeout = Duration::from_secs(timeout);
        Settings {
            controllers,
            http_addr: "127.0.0.1:0".parse().unwrap(),
            leader_election: lease.map(|(duration, grace)| LeaderConfig {
                lease_name: "lease".into(),
                namespace: "ns".into(),
                identity: "me".into(),
                duration,
                grace,
            }),
            shutdown_grace: Duration::from_secs(20),
        }
    }

    #[test]
    fn the_defaults_are_valid() {
        let defaults = settings(90, 30, Some((15, 5)));
        assert_eq!(
            defaults.controllers.lifecycle.ambiguity_window,
            controller::lifecycle::Settings::default().ambiguity_window
        );
        assert_eq!(
            defaults.controllers.client.request_timeout,
            crate::dbt_cloud::ClientConfig::default().request_timeout
        );
        assert_eq!(defaults.validate(), Ok(()));
    }

    #[test]
    fn the_confirm_window_must_exceed_the_request_timeout() {
        assert_eq!(settings(61, 30, None).validate(), Ok(()));
        for window in [0, 10, 30, 31, 60] {
            let e = settings(window, 30, None).validate().unwrap_err();
            assert_eq!(
                e,
                ConfigError::ConfirmWindowNotAboveRequestTimeout {
                    window: Duration::from_secs(window),
                    timeout: Duration::from_secs(30)
                }
            );
            let text = e.to_string();
            assert!(
                text.contains("--trigger-confirm-window-seconds")
                    && text.contains("--request-timeout-seconds"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_lease_grace_must_be_positive_and_below_the_duration() {
        assert_eq!(settings(90, 30, Some((2, 1))).validate(), Ok(()));
        for (duration, grace) in [(15, 0), (5, 5), (5, 9), (0, 0)] {
            let e = settings(90, 30, Some((duration, grace)))
                .validate()
                .unwrap_err();
            assert_eq!(e, ConfigError::LeaseGraceOutOfRange { grace, duration });
            assert!(e.to_string().contains("--lease-grace-seconds"), "{e}");
        }
        // Without leader election the Lease settings do not exist.
        assert_eq!(settings(90, 30, None).validate(), Ok(()));
    }
}
