//! The `k8s` resolver against an HTTP server on loopback that speaks the Kubernetes list
//! and watch protocol for EndpointSlices, with objects shaped as the API serves them: a
//! router follows the Service's ready endpoints as slices change, and an endpoint that is
//! not ready or is terminating has left.

mod common;

use std::sync::{Arc, Mutex};

use serde_json::json;
use tailgate::router::config::parse_router;
use tailgate::router::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// An EndpointSlice of Service `workers` in namespace `fleet`: `(address, ready,
/// terminating)` per endpoint.
fn slice(name: &str, version: u32, endpoints: &[(&str, bool, bool)]) -> serde_json::Value {
    json!({
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": name,
            "generateName": "workers-",
            "namespace": "fleet",
            "uid": format!("uid-{name}"),
            "resourceVersion": version.to_string(),
            "generation": 1,
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "labels": {
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "kubernetes.io/service-name": "workers"
            },
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "workers", "uid": "svc-uid", "controller": true, "blockOwnerDeletion": true}]
        },
        "addressType": "IPv4",
        "endpoints": endpoints.iter().map(|(address, ready, terminating)| json!({
            "addresses": [address],
            "conditions": {"ready": ready, "serving": true, "terminating": terminating},
            "nodeName": "node-1",
            "targetRef": {"kind": "Pod", "namespace": "fleet", "name": format!("worker-{address}"), "uid": format!("pod-{address}")}
        })).collect::<Vec<_>>(),
        "ports": [{"name": "otlp-grpc", "protocol": "TCP", "port": 4317}]
    })
}

/// Serves the list (`slices`) and one watch whose events come from `events`, as HTTP/1.1
/// responses (the watch's body ends when the connection closes, as the API's does).
async fn api_server(
    slices: Vec<serde_json::Value>,
    events: mpsc::Receiver<serde_json::Value>,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let paths = Arc::new(Mutex::new(Vec::new()));
    let seen = paths.clone();
    let events = Arc::new(tokio::sync::Mutex::new(events));
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let (slices, events, seen) = (slices.clone(), events.clone(), seen.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = conn.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8_lossy(&request);
                let path = text.split(' ').nth(1).unwrap_or("").to_owned();
                seen.lock().unwrap().push(path.clone());
                if path.contains("watch=true") {
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
                    conn.write_all(head.as_bytes()).await.unwrap();
                    let mut events = events.lock().await;
                    while let Some(event) = events.recv().await {
                        let line = format!("{event}\n");
                        if conn.write_all(line.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                } else {
                    let body = json!({
                        "kind": "EndpointSliceList",
                        "apiVersion": "discovery.k8s.io/v1",
                        "metadata": {"resourceVersion": "100"},
                        "items": slices
                    })
                    .to_string();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    conn.write_all(response.as_bytes()).await.unwrap();
                }
            });
        }
    });
    (addr, paths)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_follows_the_ready_endpoints_of_a_service() {
    let (tx, rx) = mpsc::channel(8);
    let initial = slice(
        "workers-abc",
        100,
        &[
            ("10.0.0.1", true, false),
            ("10.0.0.2", true, false),
            ("10.0.0.3", false, false),
        ],
    );
    let (api, paths) = api_server(vec![initial], rx).await;
    let text = format!(
        r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0"}}}}}}}}
exporters:
  loadbalancing:
    protocol: {{otlp: {{tls: {{insecure: true}}}}}}
    resolver:
      k8s: {{service: workers.fleet, ports: [4317], api_server: "http://{api}"}}
admin: {{endpoint: "127.0.0.1:0"}}
"#
    );
    let router = Router::start(parse_router(&text).unwrap()).await.unwrap();
    let backends = |want: f64| {
        common::wait_metric(
            router.admin_addr,
            "otelcol_loadbalancer_num_backends",
            &[("resolver", "k8s")],
            move |v| v == want,
        )
    };
    // Two ready endpoints; the third is not ready.
    assert_eq!(backends(2.0).await, 2.0);
    // One starts terminating: it leaves.
    let changed = slice(
        "workers-abc",
        101,
        &[
            ("10.0.0.1", true, false),
            ("10.0.0.2", false, true),
            ("10.0.0.3", false, false),
        ],
    );
    tx.send(json!({"type": "MODIFIED", "object": changed}))
        .await
        .unwrap();
    assert_eq!(backends(1.0).await, 1.0);
    // A second slice of the same Service, then the first one goes.
    let more = slice(
        "workers-def",
        102,
        &[("10.0.0.4", true, false), ("10.0.0.5", true, false)],
    );
    tx.send(json!({"type": "ADDED", "object": more}))
        .await
        .unwrap();
    assert_eq!(backends(3.0).await, 3.0);
    let gone = slice("workers-abc", 103, &[]);
    tx.send(json!({"type": "DELETED", "object": gone}))
        .await
        .unwrap();
    assert_eq!(backends(2.0).await, 2.0);
    let paths = paths.lock().unwrap().clone();
    let selector = "/apis/discovery.k8s.io/v1/namespaces/fleet/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dworkers";
    // One list: the first answer's, which the watch continues from.
    assert_eq!(
        paths.iter().filter(|p| p.as_str() == selector).count(),
        1,
        "{paths:?}"
    );
    assert!(
        paths.iter().any(|p| p.starts_with(selector)
            && p.contains("watch=true")
            && p.contains("resourceVersion=100")),
        "{paths:?}"
    );
    router.shutdown().await;
}
