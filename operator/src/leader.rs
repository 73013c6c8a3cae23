//! Leader election over a `coordination.k8s.io/v1` Lease, so a Deployment can run two
//! petrel replicas while only one of them reconciles.
//!
//! The Lease bookkeeping (acquire, renew before expiry, take over an expired lock,
//! release on shutdown) is `kube-lease-manager`'s; this module decides what petrel does
//! around it: wait as a standby until leading, run the controller while leading, and stop
//! the process when the lease is lost, as controller-runtime operators do, so a replica
//! that may have been partitioned away never keeps writing next to the new leader.

use std::future::Future;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use tracing::{info, warn};

/// Where the Lease lives and how long a holder keeps it without renewing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElection {
    pub namespace: String,
    pub lease_name: String,
    /// This replica's name in the Lease's `holderIdentity`.
    pub identity: String,
    /// Seconds a lease stays valid without renewal: how long a standby waits after the
    /// leader died before taking over.
    pub lease_duration_seconds: u64,
    /// Seconds before expiry at which the holder renews.
    pub renew_before_seconds: u64,
}

/// Why leader election could not run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "--leader-election-renew-before ({renew_before}s) must be greater than zero and smaller than --leader-election-lease-duration ({duration}s)"
    )]
    InvalidTiming { duration: u64, renew_before: u64 },
    #[error("preparing Lease {namespace}/{name}: {source}")]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    #[error("lost the leadership of Lease {namespace}/{name}; stopping so that only the new leader writes")]
    Lost { namespace: String, name: String },
    #[error("the leader election task of Lease {namespace}/{name} ended unexpectedly")]
    TaskEnded { namespace: String, name: String },
}

impl LeaderElection {
    /// Checks the timing before the lease manager sees it (its constructor panics on
    /// values it cannot use). Pure.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let (duration, renew_before) = (self.lease_duration_seconds, self.renew_before_seconds);
        if renew_before == 0 || renew_before >= duration {
            return Err(LeaderError::InvalidTiming { duration, renew_before });
        }
        Ok(())
    }

    fn lost(&self) -> LeaderError {
        LeaderError::Lost { namespace: self.namespace.clone(), name: self.lease_name.clone() }
    }
}

/// The Lease holder name of this replica: the Pod name when running in a Pod (the
/// Downward API sets `POD_NAME`), else host name and process id, unique on a machine. Pure.
pub fn identity(pod_name: Option<&str>, host_name: Option<&str>, pid: u32) -> String {
    match pod_name.filter(|name| !name.is_empty()) {
        Some(pod) => pod.to_string(),
        None => format!("{}-{pid}", host_name.filter(|h| !h.is_empty()).unwrap_or("petrel")),
    }
}

/// The default Lease name of a mode, so a hub and a member in the same namespace do not
/// take each other's lock. Pure.
pub fn default_lease_name(mode: &str) -> String {
    format!("petrel-{mode}")
}

/// Waits until this replica holds the Lease, then runs `work` while it does.
///
/// Returns `work`'s result when it ends first (a shutdown signal), releasing the Lease so
/// a standby takes over at once; returns [`LeaderError::Lost`] when the Lease is lost,
/// dropping `work` mid-flight (every reconcile keeps its progress in the status, so the
/// next leader continues where this one stopped).
pub async fn run_while_leading<W, T>(client: Client, election: &LeaderElection, work: W) -> Result<T, LeaderError>
where
    W: Future<Output = T>,
{
    election.validate()?;
    let lease_error = |source| LeaderError::Lease {
        namespace: election.namespace.clone(),
        name: election.lease_name.clone(),
        source,
    };
    // validate() proved 0 < renew_before < duration, the only way LeaseParams::new panics.
    let params = LeaseParams::new(&election.identity, election.lease_duration_seconds, election.renew_before_seconds)
        .with_field_manager(format!("petrel-leader-{}", election.identity));
    let manager = LeaseManagerBuilder::new(client, &election.lease_name)
        .with_namespace(&election.namespace)
        .with_parameters(params)
        .build()
        .await
        .map_err(lease_error)?;
    let (mut leading, task) = manager.watch().await;

    info!(lease = %election.lease_name, namespace = %election.namespace, identity = %election.identity, "waiting for leadership");
    while !*leading.borrow_and_update() {
        if leading.changed().await.is_err() {
            return Err(LeaderError::TaskEnded {
                namespace: election.namespace.clone(),
                name: election.lease_name.clone(),
            });
        }
    }
    info!(lease = %election.lease_name, identity = %election.identity, "leading");

    let lost = async {
        loop {
            if leading.changed().await.is_err() || !*leading.borrow_and_update() {
                return;
            }
        }
    };
    let outcome = tokio::select! {
        result = work => Ok(result),
        () = lost => Err(election.lost()),
    };
    // Closing the channel makes the manager's task release the Lease and end.
    drop(leading);
    match task.await {
        Ok(Ok(_)) => info!(lease = %election.lease_name, "released the lease"),
        Ok(Err(e)) => {
            warn!(lease = %election.lease_name, error = %e, "could not release the lease; it expires on its own")
        }
        Err(e) => warn!(lease = %election.lease_name, error = %e, "leader election task failed"),
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn election(duration: u64, renew_before: u64) -> LeaderElection {
        LeaderElection {
            namespace: "petrel-system".into(),
            lease_name: "petrel-member".into(),
            identity: "petrel-0".into(),
            lease_duration_seconds: duration,
            renew_before_seconds: renew_before,
        }
    }

    #[test]
    fn timing_that_would_panic_the_lease_manager_is_an_error() {
        assert!(election(15, 5).validate().is_ok());
        for (duration, renew_before) in [(15, 0), (15, 15), (5, 10), (0, 0)] {
            let error = election(duration, renew_before).validate().unwrap_err().to_string();
            assert!(
                error.contains(&format!("({renew_before}s)")) && error.contains(&format!("({duration}s)")),
                "{error}"
            );
        }
    }

    #[test]
    fn identity_prefers_the_pod_name() {
        assert_eq!(identity(Some("petrel-7d9f-abcde"), Some("node-1"), 42), "petrel-7d9f-abcde");
        assert_eq!(identity(None, Some("laptop"), 42), "laptop-42");
        assert_eq!(identity(Some(""), None, 7), "petrel-7");
    }

    #[test]
    fn hub_and_member_take_different_leases() {
        assert_ne!(default_lease_name("hub"), default_lease_name("member"));
        assert_eq!(default_lease_name("member"), "petrel-member");
    }
}
