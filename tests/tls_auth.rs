//! TLS, mTLS and bearer tokens on the receivers, with certificates made at test time, and
//! certificate and token files replaced under a running worker.

mod common;

use std::path::Path;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tailgate::worker::config::parse_worker;
use tailgate::worker::Worker;
use tailgate_testkit::{request, roots};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

struct Ca {
    pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        cert,
        key,
    }
}

/// A certificate for `localhost` signed by `ca`: (cert PEM, key PEM).
fn leaf(ca: &Ca) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca.cert, &ca.key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    // Write then rename, as a certificate manager does, so a reload never reads half a file.
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path.display().to_string()
}

async fn grpc(
    port: u16,
    ca: &Ca,
    identity: Option<&(String, String)>,
) -> Result<TraceServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(TraceServiceClient::new(channel))
}

async fn export(client: &mut TraceServiceClient<Channel>, token: Option<&str>) -> Result<(), Code> {
    let mut r = tonic::Request::new(request("svc", roots([1])));
    if let Some(token) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    client.export(r).await.map(|_| ()).map_err(|s| s.code())
}

fn https(ca: &Ca, identity: &(String, String)) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .identity(
            reqwest::Identity::from_pem(format!("{}{}", identity.0, identity.1).as_bytes())
                .unwrap(),
        )
        .build()
        .unwrap()
}

async fn post(client: &reqwest::Client, port: u16, token: &str) -> u16 {
    client
        .post(format!("https://localhost:{port}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .bearer_auth(token)
        .body(request("svc", roots([2])).encode_to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls `check` until it holds (bounded; reloads happen on a 50 ms interval).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} never happened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_require_tls_client_certificates_and_the_token_and_reload_them() {
    let (server_ca, client_ca) = (ca(), ca());
    let server = leaf(&server_ca);
    let client = leaf(&client_ca);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cert, key) = (
        write(d, "server.pem", &server.0),
        write(d, "server.key", &server.1),
    );
    let client_ca_file = write(d, "client-ca.pem", &client_ca.pem);
    let token_file = write(d, "token", "first-token\n");
    let tls = format!(
        "{{cert_file: {cert:?}, key_file: {key:?}, client_ca_file: {client_ca_file:?}, reload_interval: 50ms}}"
    );
    let worker = Worker::start(
        parse_worker(&format!(
            r#"
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:0", tls: {tls}, auth: {{authenticator: bearertokenauth}}}}
      http: {{endpoint: "127.0.0.1:0", tls: {tls}, auth: {{authenticator: bearertokenauth}}}}
extensions:
  bearertokenauth: {{filename: {token_file:?}}}
tail_sampling: {{decision_wait: 1h, policies: [{{name: all, type: always_sample}}]}}
exporters: {{debug: {{}}}}
admin: {{endpoint: "127.0.0.1:0"}}
"#
        ))
        .unwrap(),
    )
    .await
    .unwrap();
    let grpc_port = worker.grpc_addr.unwrap().port();
    let http_port = worker.http_addr.unwrap().port();

    // gRPC: the right CA, a client certificate and the token get in.
    let mut ok = grpc(grpc_port, &server_ca, Some(&client)).await.unwrap();
    assert_eq!(export(&mut ok, Some("first-token")).await, Ok(()));
    assert_eq!(
        export(&mut ok, Some("wrong")).await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(export(&mut ok, None).await, Err(Code::Unauthenticated));
    // No client certificate, or one from another CA: the handshake fails.
    let refused = |r: Result<(), Code>| r.is_err();
    for identity in [None, Some(leaf(&server_ca))] {
        if let Ok(mut c) = grpc(grpc_port, &server_ca, identity.as_ref()).await {
            assert!(refused(export(&mut c, Some("first-token")).await));
        }
    }
    // Plain text does not get a gRPC answer at all.
    let plain = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc_port}")).await;
    if let Ok(mut c) = plain {
        assert!(c.export(request("svc", roots([3]))).await.is_err());
    }

    // HTTP: the same rules, 401 without the token.
    let https_client = https(&server_ca, &client);
    assert_eq!(post(&https_client, http_port, "first-token").await, 200);
    assert_eq!(post(&https_client, http_port, "wrong").await, 401);

    // The token file changes: the new token works and the old one stops working.
    write(d, "token", "second-token");
    eventually("the new token accepted", async || {
        post(&https_client, http_port, "second-token").await == 200
    })
    .await;
    assert_eq!(post(&https_client, http_port, "first-token").await, 401);

    // The certificate is replaced by one from another CA: new connections get it.
    let new_ca = ca();
    let renewed = leaf(&new_ca);
    write(d, "server.key", &renewed.1);
    write(d, "server.pem", &renewed.0);
    eventually("the renewed certificate served", async || {
        match grpc(grpc_port, &new_ca, Some(&client)).await {
            Ok(mut c) => export(&mut c, Some("second-token")).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    let https_new = https(&new_ca, &client);
    assert_eq!(post(&https_new, http_port, "second-token").await, 200);

    let text = common::scrape(worker.admin_addr).await;
    let accepted = tailgate_testkit::metric(&text, "otelcol_receiver_accepted_spans_total", &[]);
    assert_eq!(
        accepted, 5.0,
        "only authorised requests are counted as accepted"
    );
    worker.shutdown().await;
}

#[test]
fn auth_and_tls_config_errors_name_their_paths() {
    let err = parse_worker(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {auth: {authenticator: bearertokenauth/missing}, tls: {cert_file: a, key_file: b, reload_interval: 0s}}
extensions:
  bearertokenauth: {token: a, filename: b}
  oauth2client: {}
tail_sampling: {policies: [{name: all, type: always_sample}]}
exporters: {debug: {}}
"#,
    )
    .unwrap_err()
    .to_string();
    for expected in [
        "receivers.otlp.protocols.grpc.auth.authenticator",
        "receivers.otlp.protocols.grpc.tls.reload_interval",
        "extensions.bearertokenauth: set exactly one of token and filename",
        "extensions.oauth2client: unsupported extension",
    ] {
        assert!(err.contains(expected), "{expected} not in:\n{err}");
    }
}

#[tokio::test]
async fn a_missing_certificate_fails_the_start_with_the_file_named() {
    let config = parse_worker(
        r#"
receivers: {otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0", tls: {cert_file: /nonexistent/cert.pem, key_file: /nonexistent/key.pem}}}}}
tail_sampling: {policies: [{name: all, type: always_sample}]}
exporters: {debug: {}}
admin: {endpoint: "127.0.0.1:0"}
"#,
    )
    .unwrap();
    let err = Worker::start(config)
        .await
        .err()
        .expect("start fails")
        .to_string();
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}
