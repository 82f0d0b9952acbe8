//! The Kubernetes provider and the cluster controller built on it: kube-rs watchers fill the
//! same [`Resources`](crate::Resources) store as the file provider ([`watch`]), only
//! referenced Secrets and ConfigMaps are kept ([`refs`]), one replica leads through a Lease
//! ([`leader`]), and [`controller`] translates, publishes, writes status and provisions.

pub mod controller;
pub mod leader;
pub mod refs;
pub mod watch;

pub use controller::{Controller, ControllerError, ControllerOptions, Observed};
pub use leader::LeaseOptions;
pub use refs::References;
pub use watch::{KubeStore, MANAGED_BY, MANAGED_BY_LABEL, Shelves, WatchOptions};
