//! A fake DNS server answering from zone text.

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::net::UdpSocket;

/// A UDP DNS server answering from zone text, one record per line:
/// `example.net. MX 10 mx.example.net.`, `mx.example.net. A 127.0.0.1`,
/// `null.example. MX 0 .`, `broken.example. SERVFAIL`,
/// `_mta-sts.sts.test. TXT v=STSv1; id=1` (the rest of the line after `TXT` is the text).
/// Names with no records are NXDOMAIN; a known name without the asked type is NOERROR with
/// no answers.
pub struct FakeDns {
    pub addr: SocketAddr,
}

impl FakeDns {
    pub async fn start(zone: &str) -> FakeDns {
        use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
        use hickory_proto::rr::rdata::{A, AAAA, MX, TXT};
        use hickory_proto::rr::{Name, RData, Record, RecordType};

        let mut records: HashMap<(String, RecordType), Vec<RData>> = HashMap::new();
        let mut names: HashMap<String, bool> = HashMap::new(); // name → SERVFAIL?
        for line in zone
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with(';'))
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            let name = f[0].to_ascii_lowercase();
            match f[1] {
                "SERVFAIL" => {
                    names.insert(name, true);
                    continue;
                }
                "MX" => records
                    .entry((name.clone(), RecordType::MX))
                    .or_default()
                    .push(RData::MX(MX::new(
                        f[2].parse().unwrap(),
                        Name::from_ascii(f[3]).unwrap(),
                    ))),
                "A" => records
                    .entry((name.clone(), RecordType::A))
                    .or_default()
                    .push(RData::A(A(f[2].parse().unwrap()))),
                "AAAA" => records
                    .entry((name.clone(), RecordType::AAAA))
                    .or_default()
                    .push(RData::AAAA(AAAA(f[2].parse().unwrap()))),
                "TXT" => {
                    // Everything after the type, split into character-strings of at most
                    // 255 octets (RFC 1035 §3.3.14); readers concatenate them.
                    let text = line[f[0].len()..].trim_start()["TXT".len()..].trim_start();
                    let strings = text
                        .as_bytes()
                        .chunks(255)
                        .map(|c| String::from_utf8(c.to_vec()).expect("ASCII TXT text"))
                        .collect();
                    records
                        .entry((name.clone(), RecordType::TXT))
                        .or_default()
                        .push(RData::TXT(TXT::new(strings)))
                }
                other => panic!("fake DNS: unknown record type {other}"),
            }
            names.entry(name).or_insert(false);
        }
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
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
                let mut response =
                    Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
                response.metadata.authoritative = true;
                response.metadata.recursion_desired = query.metadata.recursion_desired;
                response.metadata.recursion_available = true;
                if let Some(q) = query.queries.first() {
                    response.add_query(q.clone());
                    let name = q.name().to_ascii().to_ascii_lowercase();
                    match names.get(&name) {
                        None => response.metadata.response_code = ResponseCode::NXDomain,
                        Some(true) => response.metadata.response_code = ResponseCode::ServFail,
                        Some(false) => {
                            for rdata in records
                                .get(&(name.clone(), q.query_type()))
                                .into_iter()
                                .flatten()
                            {
                                response.add_answer(Record::from_rdata(
                                    q.name().clone(),
                                    60,
                                    rdata.clone(),
                                ));
                            }
                        }
                    }
                }
                if let Ok(bytes) = response.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        FakeDns { addr }
    }
}
