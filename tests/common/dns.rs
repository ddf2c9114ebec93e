//! A DNS server on loopback whose answer a test changes, as a headless Service's does.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

/// What the DNS server answers for every A query: these addresses, or SERVFAIL.
#[derive(Clone, Default)]
pub struct Zone(Arc<Mutex<Option<Vec<Ipv4Addr>>>>);

impl Zone {
    pub fn set(&self, answer: Option<Vec<Ipv4Addr>>) {
        *self.0.lock().unwrap() = answer;
    }
}

/// A DNS server over UDP on 127.0.0.1, answering from `zone` with a TTL of 1 s.
pub async fn dns_server(zone: Zone) -> std::net::SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let answer = zone.0.lock().unwrap().clone();
            let mut response = match &answer {
                Some(_) => Message::response(query.metadata.id, query.metadata.op_code),
                None => Message::error_msg(
                    query.metadata.id,
                    query.metadata.op_code,
                    ResponseCode::ServFail,
                ),
            };
            response.metadata.recursion_desired = query.metadata.recursion_desired;
            response.metadata.recursion_available = true;
            response.metadata.authoritative = true;
            for q in &query.queries {
                response.add_query(q.clone());
                if let (Some(ips), RecordType::A) = (&answer, q.query_type()) {
                    for ip in ips {
                        response.add_answer(Record::from_rdata(
                            q.name().clone(),
                            1,
                            RData::A(A(*ip)),
                        ));
                    }
                }
            }
            let _ = socket.send_to(&response.to_vec().unwrap(), peer).await;
        }
    });
    addr
}
