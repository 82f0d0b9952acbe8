//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go does it: the holder
//! renews `renewTime` every `retry_period`; another candidate takes the Lease over only after
//! it has seen the same Lease record unchanged for `lease_duration` (measured on its own clock,
//! so clock skew between nodes does not matter); every update is a compare-and-swap on the
//! Lease's resourceVersion, so two candidates can never both win. A holder that cannot renew
//! for `renew_deadline` (shorter than `lease_duration`) steps down before anyone else can
//! take over. On shutdown the holder releases the Lease so the next one takes over at once.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Leader election settings.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Lease name (default `sluice-controller`).
    pub name: String,
    /// This candidate's identity (the pod name).
    pub identity: String,
    /// How long a Lease record must stay unrenewed before it can be taken over (default 15 s).
    pub lease_duration: Duration,
    /// How long the holder keeps acting without a successful renewal (default 10 s).
    pub renew_deadline: Duration,
    /// Period of acquire and renew attempts (default 2 s).
    pub retry_period: Duration,
}

impl LeaseOptions {
    /// Options with client-go's default timings.
    pub fn new(namespace: &str, identity: &str) -> Self {
        LeaseOptions {
            namespace: namespace.to_string(),
            name: "sluice-controller".to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Errors talking to the API server about the Lease (all retried).
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// API request failed.
    #[error("lease {name}: {source}")]
    Api {
        /// Lease name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

/// Runs the election until `shutdown` resolves; `leader` says whether this candidate holds
/// the Lease. Releases the Lease on shutdown if held.
pub async fn run(
    client: Client,
    opts: LeaseOptions,
    leader: watch::Sender<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &opts.namespace);
    let mut observed: Option<(String, Instant)> = None; // (record fingerprint, first seen)
    let mut last_renew = Instant::now();
    tokio::pin!(shutdown);
    loop {
        match try_acquire_or_renew(&api, &opts, &mut observed).await {
            Ok(true) => {
                last_renew = Instant::now();
                if !*leader.borrow() {
                    tracing::info!(identity = %opts.identity, lease = %opts.name, "became the leader");
                    leader.send_replace(true);
                }
            }
            Ok(false) => {
                if *leader.borrow() {
                    tracing::warn!(identity = %opts.identity, "lost the lease to another candidate; stepping down");
                    leader.send_replace(false);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease update failed");
                if *leader.borrow() && last_renew.elapsed() >= opts.renew_deadline {
                    tracing::warn!(identity = %opts.identity, "could not renew the lease in time; stepping down");
                    leader.send_replace(false);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.retry_period) => {}
            _ = &mut shutdown => break,
        }
    }
    if *leader.borrow() {
        leader.send_replace(false);
        match release(&api, &opts).await {
            Ok(()) => tracing::info!(identity = %opts.identity, "lease released"),
            Err(e) => {
                tracing::warn!(error = %e, "could not release the lease; it expires on its own")
            }
        }
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn record(lease: &Lease) -> String {
    let s = lease.spec.clone().unwrap_or_default();
    format!(
        "{:?}|{:?}|{:?}|{}",
        s.holder_identity,
        s.renew_time.map(|t| t.0.to_string()),
        s.lease_transitions,
        lease.resource_version().unwrap_or_default()
    )
}

/// One attempt: Ok(true) when this candidate holds the Lease afterwards.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    opts: &LeaseOptions,
    observed: &mut Option<(String, Instant)>,
) -> Result<bool, LeaseError> {
    let err = |source| LeaseError::Api {
        name: opts.name.clone(),
        source,
    };
    let secs = opts.lease_duration.as_secs().max(1) as i32;
    let Some(current) = api.get_opt(&opts.name).await.map_err(err)? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(opts.name.clone()),
                namespace: Some(opts.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(opts.identity.clone()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(err(e)),
        };
    };
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let mine = holder == opts.identity;
    if !mine && !holder.is_empty() {
        // Someone else holds it: take over only when the record stayed the same for a full
        // lease duration (of the holder's choosing, or ours if unset).
        let rec = record(&current);
        let seen = match observed {
            Some((r, t)) if *r == rec => *t,
            _ => {
                *observed = Some((rec, Instant::now()));
                Instant::now()
            }
        };
        let duration = spec
            .lease_duration_seconds
            .filter(|s| *s > 0)
            .map_or(opts.lease_duration, |s| Duration::from_secs(s as u64));
        if seen.elapsed() < duration {
            return Ok(false);
        }
        tracing::info!(previous = %holder, "the lease expired; taking over");
    }
    let mut next = current.clone();
    let mut s = spec;
    if !mine {
        s.holder_identity = Some(opts.identity.clone());
        s.acquire_time = Some(now());
        s.lease_transitions = Some(s.lease_transitions.unwrap_or(0) + 1);
    }
    s.lease_duration_seconds = Some(secs);
    s.renew_time = Some(now());
    next.spec = Some(s);
    next.metadata.managed_fields = None;
    match api.replace(&opts.name, &PostParams::default(), &next).await {
        Ok(_) => {
            *observed = None;
            Ok(true)
        }
        // Someone else updated it first.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(err(e)),
    }
}

async fn release(api: &Api<Lease>, opts: &LeaseOptions) -> Result<(), LeaseError> {
    let err = |source| LeaseError::Api {
        name: opts.name.clone(),
        source,
    };
    let Some(mut current) = api.get_opt(&opts.name).await.map_err(err)? else {
        return Ok(());
    };
    let mut s = current.spec.clone().unwrap_or_default();
    if s.holder_identity.as_deref() != Some(opts.identity.as_str()) {
        return Ok(());
    }
    s.holder_identity = None;
    s.lease_duration_seconds = Some(1);
    s.renew_time = Some(now());
    current.spec = Some(s);
    current.metadata.managed_fields = None;
    api.replace(&opts.name, &PostParams::default(), &current)
        .await
        .map_err(err)?;
    Ok(())
}
