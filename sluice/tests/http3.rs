//! HTTP/3 through `sluice standalone` with a real HTTP/3 client (Python's aioquic, which
//! `cargo xtask test` installs): an HTTPS listener with `tls.options["sluice.dev/http3"]:
//! "true"` answers GETs over QUIC on its port, HTTP/1.1 responses advertise it in `Alt-Svc`
//! (curl), and switching the option off stops QUIC and the advertisement.

mod common;

use common::{Gateway, curl, echo, gateway_with_listeners, route_yaml, service_yaml};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A CA and a leaf for `www.example.com` signed by it, with openssl; returns (ca, cert, key).
fn certificates(dir: &Path) -> (String, String, String) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl is installed (cargo xtask test installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=Sluice test CA",
            "-days",
            "2",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=www.example.com",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:www.example.com\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    (read("ca.crt"), read("leaf.crt"), read("leaf.key"))
}

fn base64(text: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}

fn gateway(port: u16, http3: &str) -> String {
    gateway_with_listeners(&format!(
        "  - name: https
    protocol: HTTPS
    port: {port}
    tls:
      certificateRefs: [{{name: www-cert}}]
      options: {{sluice.dev/http3: \"{http3}\"}}
"
    ))
}

/// Runs the aioquic client; `Ok(json)` or `Err(stderr)`.
fn h3_get(ip: &str, port: u16, ca: &Path, paths: &[&str]) -> Result<serde_json::Value, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/h3_get.py");
    let out = Command::new("python3")
        .arg(script)
        .args([ip, &port.to_string(), "www.example.com"])
        .arg(ca)
        .arg(format!("www.example.com:{port}"))
        .args(paths)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "aioquic is missing: `cargo xtask test` installs it (or `python3 -m pip install aioquic`)\n{stderr}"
    );
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("h3_get prints JSON"))
    } else {
        Err(stderr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aioquic_fetches_over_http3_and_alt_svc_follows_the_listener_option() {
    let ip = "127.0.71.1";
    let port = 8443;
    let certs = tempfile::tempdir().unwrap();
    let (_ca, cert, key) = certificates(certs.path());
    let ca_path = certs.path().join("ca.crt");
    let secret = format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: www-cert, namespace: default}}
type: kubernetes.io/tls
data:
  tls.crt: {}
  tls.key: {}
",
        base64(&cert),
        base64(&key)
    );
    let (_e, b) = echo(ip, "web-0").await;
    let gw = Gateway::start(
        ip,
        &[
            ("gateway.yaml", gateway(port, "true")),
            ("secret.yaml", secret),
            ("svc.yaml", service_yaml("web", b)),
            ("route.yaml", route_yaml("web", "/", "web", "h3")),
        ],
    );
    gw.ready().await;
    let url = format!("https://www.example.com:{port}/over-tcp");
    let resolve = format!("www.example.com:{port}:{ip}");
    let ca_arg = ca_path.to_string_lossy().to_string();
    // HTTP/1.1 and HTTP/2 (ALPN) over TCP, status line and headers.
    let tcp_headers = |version: &str| {
        curl(&[
            "-sS",
            version,
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--cacert",
            &ca_arg,
            "--resolve",
            &resolve,
            &url,
        ])
        .1
    };
    let mut headers = String::new();
    for _ in 0..100 {
        headers = tcp_headers("--http1.1");
        if headers.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        headers.starts_with("HTTP/1.1 200"),
        "HTTPS over TCP: {headers:?}\n{}",
        gw.log_text()
    );
    let alt_svc = format!("alt-svc: h3=\":{port}\"");
    assert!(
        headers.to_ascii_lowercase().contains(&alt_svc),
        "HTTP/1.1 responses advertise HTTP/3:\n{headers}"
    );
    let h2 = tcp_headers("--http2");
    assert!(h2.starts_with("HTTP/2 200"), "{h2}");
    assert!(
        h2.to_ascii_lowercase().contains(&alt_svc),
        "HTTP/2 responses advertise HTTP/3:\n{h2}"
    );

    // Two requests on one QUIC connection, through the same route as TCP traffic.
    let got = h3_get(ip, port, &ca_path, &["/one", "/two?x=1"]).expect("HTTP/3 GET works");
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), 2);
    for (r, path) in got.iter().zip(["/one", "/two?x=1"]) {
        assert_eq!(r["alpn"], "h3");
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(
            r["headers"]["x-version"], "h3",
            "the route's filter applied: {r}"
        );
        let echoed: serde_json::Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        assert_eq!(echoed["path"], path);
        assert_eq!(echoed["host"], format!("www.example.com:{port}"));
        assert_eq!(echoed["pod"], "web-0");
    }

    // Switched off: no QUIC on the port, no advertisement; HTTPS over TCP keeps serving.
    gw.write("gateway.yaml", &gateway(port, "false"));
    gw.wait_for("Alt-Svc to disappear", Duration::from_secs(20), |_| async {
        let h = tcp_headers("--http2");
        h.starts_with("HTTP/2 200") && !h.to_ascii_lowercase().contains("alt-svc")
    })
    .await;
    let err = h3_get(ip, port, &ca_path, &["/off"]).expect_err("no HTTP/3 once switched off");
    assert!(!err.is_empty());
}
