//! Providers: sources of [`crate::Resources`] (a directory of YAML files; the Kubernetes API).
