//! Protobuf messages of `gateway_api_conformance.echo_basic.grpcecho` (see
//! `conformance/proto/grpcecho.proto`), written as prost types by hand so no protoc is needed.
//! Field numbers match the upstream definition.

/// One request header (gRPC metadata entry).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Header {
    /// Lower-case header name.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// Identity of the echo instance.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Context {
    /// Namespace.
    #[prost(string, tag = "1")]
    pub namespace: String,
    /// Ingress name.
    #[prost(string, tag = "2")]
    pub ingress: String,
    /// Service name.
    #[prost(string, tag = "3")]
    pub service_name: String,
    /// Pod name.
    #[prost(string, tag = "4")]
    pub pod: String,
}

/// TLS facts of the connection the RPC arrived on.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TlsAssertions {
    /// `TLSv1.3`, ...
    #[prost(string, tag = "1")]
    pub version: String,
    /// ALPN protocol.
    #[prost(string, tag = "2")]
    pub negotiated_protocol: String,
    /// SNI.
    #[prost(string, tag = "3")]
    pub server_name: String,
    /// Go cipher suite name.
    #[prost(string, tag = "4")]
    pub cipher_suite: String,
    /// Client certificates, PEM.
    #[prost(string, repeated, tag = "5")]
    pub peer_certificates: Vec<String>,
}

/// What the server saw.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Assertions {
    /// `/<service>/<method>`.
    #[prost(string, tag = "1")]
    pub fully_qualified_method: String,
    /// Request metadata.
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<Header>,
    /// `:authority`.
    #[prost(string, tag = "3")]
    pub authority: String,
    /// Server identity.
    #[prost(message, optional, tag = "4")]
    pub context: Option<Context>,
    /// TLS facts (TLS port only).
    #[prost(message, optional, tag = "5")]
    pub tls_assertions: Option<TlsAssertions>,
}

/// Empty request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {}

/// Echo answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoResponse {
    /// What the server saw.
    #[prost(message, optional, tag = "1")]
    pub assertions: Option<Assertions>,
    /// The request, echoed.
    #[prost(message, optional, tag = "2")]
    pub request: Option<EchoRequest>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn wire_format_uses_upstream_field_numbers() {
        let msg = EchoResponse {
            assertions: Some(Assertions {
                fully_qualified_method: "/a/B".into(),
                headers: vec![Header {
                    key: "k".into(),
                    value: "v".into(),
                }],
                authority: "h".into(),
                context: Some(Context {
                    namespace: "ns".into(),
                    ingress: String::new(),
                    service_name: "svc".into(),
                    pod: "p".into(),
                }),
                tls_assertions: None,
            }),
            request: Some(EchoRequest {}),
        };
        let bytes = msg.encode_to_vec();
        // field 1 (assertions), wire type 2 (length-delimited): tag byte 0x0a.
        assert_eq!(bytes[0], 0x0a);
        // inside: field 1 string "/a/B" -> 0x0a 0x04.
        assert_eq!(&bytes[2..4], &[0x0a, 0x04]);
        // request: field 2, empty message -> trailing 0x12 0x00.
        assert_eq!(&bytes[bytes.len() - 2..], &[0x12, 0x00]);
        assert_eq!(EchoResponse::decode(bytes.as_slice()).ok(), Some(msg));
    }
}
