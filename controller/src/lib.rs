//! Cluster or file state to IR and status: providers fill one [`Resources`] store, the pure
//! [`translate()`] turns it into a [`Translation`] (IR snapshot plus status).
#![forbid(unsafe_code)]

pub mod install;
pub mod provider;
pub mod provision;
pub mod publish;
pub mod resources;
pub mod status;
pub mod translate;

pub use resources::{Key, Object, Resources};
pub use translate::{TranslateOptions, Translation, translate};

/// The GatewayClass `spec.controllerName` Sluice implements.
pub const CONTROLLER_NAME: &str = "sluice.dev/gateway-controller";
/// The IngressClass name (and `spec.controller` suffix) Sluice serves.
pub const INGRESS_CLASS: &str = "sluice";
/// IngressClass `spec.controller` value Sluice serves.
pub const INGRESS_CONTROLLER: &str = "sluice.dev/ingress-controller";
