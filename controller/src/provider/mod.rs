//! Providers: sources of [`crate::Resources`] (a directory of YAML files; the Kubernetes API).

pub mod file;
pub mod kubernetes;
pub mod schema;
pub mod yaml;
