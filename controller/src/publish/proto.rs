//! The snapshot stream's wire messages, written by hand as prost messages (no `.proto`
//! compiler at build time). Service `sluice.v1.Publisher`, one bidirectional method
//! `Subscribe(stream AgentMessage) returns (stream SnapshotMessage)`:
//!
//! ```text
//! message AgentMessage {            // agent -> controller
//!   string node = 1;                // node or pod name, for logs
//!   uint64 version = 2;             // version applied (ack) or served (first message); 0 = none
//!   string fingerprint = 3;         // fingerprint of the snapshot being served
//!   bool applied = 4;               // false: `version` was rejected
//!   repeated string errors = 5;     // why it was rejected
//!   map<string, string> listener_errors = 6;  // listener name -> why it could not be bound
//! }
//! message SnapshotMessage {         // controller -> agent
//!   uint64 version = 1;
//!   string fingerprint = 2;
//!   bytes snapshot = 3;             // IR snapshot JSON; empty when the agent already serves it
//!   bytes status = 4;               // StatusReport JSON for the agent's admin API
//!   string scope = 5;               // "shared" or "gateway:<namespace>/<name>"
//! }
//! ```

use std::collections::BTreeMap;

/// gRPC service name.
pub const SERVICE: &str = "sluice.v1.Publisher";
/// gRPC path of the one method.
pub const SUBSCRIBE_PATH: &str = "/sluice.v1.Publisher/Subscribe";

/// Agent to controller: the first message says what the agent serves; every later one
/// acknowledges (or rejects) a snapshot.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AgentMessage {
    /// Node (DaemonSet agent) or pod (dedicated proxy) name, for logs and status messages.
    #[prost(string, tag = "1")]
    pub node: String,
    /// Snapshot version acknowledged, or in the first message the one being served (0 = none).
    #[prost(uint64, tag = "2")]
    pub version: u64,
    /// Fingerprint of the snapshot being served (empty = none).
    #[prost(string, tag = "3")]
    pub fingerprint: String,
    /// True when `version` is serving; false when the agent rejected it.
    #[prost(bool, tag = "4")]
    pub applied: bool,
    /// Why the snapshot was rejected (one entry per error).
    #[prost(string, repeated, tag = "5")]
    pub errors: Vec<String>,
    /// Listeners (IR listener name) that could not be bound, with the reason.
    #[prost(btree_map = "string, string", tag = "6")]
    pub listener_errors: BTreeMap<String, String>,
}

/// Controller to agent: a complete snapshot (never a patch) and the status to show.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotMessage {
    /// Snapshot version; strictly increases with every change of this scope's snapshot.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// Fingerprint of the snapshot (FNV-1a of its JSON with version 0).
    #[prost(string, tag = "2")]
    pub fingerprint: String,
    /// The IR snapshot as JSON; empty when the agent already serves `fingerprint`.
    #[prost(bytes = "vec", tag = "3")]
    pub snapshot: Vec<u8>,
    /// The status report (JSON) of the objects this scope serves, for the agent's `/status`.
    #[prost(bytes = "vec", tag = "4")]
    pub status: Vec<u8>,
    /// The scope the agent was authenticated for.
    #[prost(string, tag = "5")]
    pub scope: String,
}
