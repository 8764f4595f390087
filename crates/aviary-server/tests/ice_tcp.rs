//! ICE over TCP: a client that can only reach the server over TCP (RFC 4571 framing on the
//! ICE/TCP port) connects its subscriber transport, through the real worker threads and
//! sockets on loopback.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use aviary_server::worker::{MediaEvent, PeerKey, WorkerCommand, WorkerConfig, WorkerPool};
use str0m::change::SdpOffer;
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Input, Output, Rtc};

#[test]
fn subscriber_connects_over_tcp_only() {
    let pool = WorkerPool::start(&WorkerConfig {
        threads: 1,
        bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        first_udp_port: 0,
        node_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        tcp_port: Some(0),
        metrics: aviary_server::metrics::Metrics::new(1),
        congestion_control: None,
    })
    .expect("workers start");
    let tcp_addr = pool.tcp_addr.expect("ICE/TCP enabled");
    let server_tcp = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), tcp_addr.port());

    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    pool.get(0).send(WorkerCommand::OpenRoom {
        room: "RM_test".into(),
        events: events_tx,
    });
    pool.get(0).send(WorkerCommand::AddPeer {
        key: PeerKey {
            room: "RM_test".into(),
            participant: "PA_test".into(),
        },
        identity: "tcp-client".into(),
        can_publish_data: true,
        last_reliable_seq: Default::default(),
    });
    let offer = match events.blocking_recv() {
        Some(MediaEvent::SubscriberOffer { sdp, .. }) => sdp,
        other => panic!("expected an offer, got {other:?}"),
    };
    assert!(
        offer.contains("tcptype passive"),
        "offer lacks a passive TCP candidate"
    );

    // The client: only an active TCP candidate, so ICE can pair nothing else.
    let mut rtc = Rtc::builder().build(Instant::now());
    let mut stream = TcpStream::connect(server_tcp).expect("tcp connect");
    let local = stream.local_addr().unwrap();
    let candidate = Candidate::builder()
        .tcp()
        .host(local)
        .tcptype(TcpType::Active)
        .build()
        .unwrap();
    rtc.add_local_candidate(candidate);
    let answer = rtc
        .sdp_api()
        .accept_offer(SdpOffer::from_sdp_string(&offer).unwrap())
        .unwrap();
    pool.get(0).send(WorkerCommand::SubscriberAnswer {
        key: PeerKey {
            room: "RM_test".into(),
            participant: "PA_test".into(),
        },
        sdp: answer.to_sdp_string(),
    });

    stream
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let mut rbuf = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client_connected = false;
    let mut server_connected = false;
    while Instant::now() < deadline && !(client_connected && server_connected) {
        // Drain the client.
        loop {
            match rtc.poll_output().unwrap() {
                Output::Transmit(t) => {
                    assert_eq!(t.proto, Protocol::Tcp, "the client only speaks TCP");
                    let mut framed = (t.contents.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&t.contents);
                    stream.write_all(&framed).unwrap();
                }
                Output::Event(str0m::Event::Connected) => client_connected = true,
                Output::Event(_) => {}
                Output::Timeout(_) => break,
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => panic!("server closed the connection"),
            Ok(n) => rbuf.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        while rbuf.len() >= 2 {
            let len = u16::from_be_bytes([rbuf[0], rbuf[1]]) as usize;
            if rbuf.len() < 2 + len {
                break;
            }
            let frame: Vec<u8> = rbuf.drain(..2 + len).skip(2).collect();
            if let Ok(r) = Receive::new(Protocol::Tcp, server_tcp, local, &frame) {
                rtc.handle_input(Input::Receive(Instant::now(), r)).unwrap();
            }
        }
        rtc.handle_input(Input::Timeout(Instant::now())).unwrap();
        while let Ok(e) = events.try_recv() {
            if let MediaEvent::Connected {
                direction: aviary_sfu::TransportDirection::Subscriber,
                ..
            } = e
            {
                server_connected = true;
            }
        }
    }
    assert!(client_connected, "client did not connect over TCP");
    assert!(
        server_connected,
        "server did not report the transport connected"
    );
    pool.shutdown();
}
