//! Reliable data to a receiver that stops reading is never dropped silently: once its
//! channel has backed up, the worker closes the receiver's subscriber connection (its room
//! asks it to rejoin) and counts it. Real worker threads and sockets on loopback, a str0m
//! client.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use aviary_server::worker::{MediaEvent, PeerKey, WorkerCommand, WorkerConfig, WorkerPool};
use aviary_sfu::{DataKind, TransportDirection};
use str0m::change::SdpOffer;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, Output, Rtc};

#[test]
fn a_receiver_whose_reliable_data_backs_up_is_disconnected() {
    let metrics = aviary_server::metrics::Metrics::new(1);
    let pool = WorkerPool::start(&WorkerConfig {
        threads: 1,
        bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        first_udp_port: 0,
        node_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        tcp_port: None,
        metrics: metrics.clone(),
        congestion_control: None,
    })
    .expect("workers start");
    let server = pool.get(0).udp_addr;
    let key = PeerKey {
        room: "RM_test".into(),
        participant: "PA_slow".into(),
    };
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    pool.get(0).send(WorkerCommand::OpenRoom {
        room: "RM_test".into(),
        events: events_tx,
    });
    pool.get(0).send(WorkerCommand::AddPeer {
        key: key.clone(),
        identity: "slow".into(),
        can_publish_data: true,
        last_reliable_seq: Default::default(),
    });
    let offer = match events.blocking_recv() {
        Some(MediaEvent::SubscriberOffer { sdp, .. }) => sdp,
        other => panic!("expected an offer, got {other:?}"),
    };

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let local = socket.local_addr().unwrap();
    let mut rtc = Rtc::builder().build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
    let answer = rtc
        .sdp_api()
        .accept_offer(SdpOffer::from_sdp_string(&offer).unwrap())
        .unwrap();
    pool.get(0).send(WorkerCommand::SubscriberAnswer {
        key: key.clone(),
        sdp: answer.to_sdp_string(),
    });

    // Until the server's reliable channel is open at the client.
    let mut open = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline && !open {
        loop {
            match rtc.poll_output().unwrap() {
                Output::Transmit(t) => {
                    socket.send_to(&t.contents, t.destination).unwrap();
                }
                Output::Event(str0m::Event::ChannelOpen(_, label)) if label == "_reliable" => {
                    open = true
                }
                Output::Event(_) => {}
                Output::Timeout(_) => break,
            }
        }
        if let Ok((n, from)) = socket.recv_from(&mut buf)
            && let Ok(r) = Receive::new(Protocol::Udp, from, local, &buf[..n])
        {
            rtc.handle_input(Input::Receive(Instant::now(), r)).unwrap();
        }
        rtc.handle_input(Input::Timeout(Instant::now())).unwrap();
    }
    assert!(open, "the reliable channel did not open");
    let _ = server;

    // The client stops reading; the server keeps sending reliable data.
    let chunk = vec![7u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut closed = false;
    let mut sent = 0;
    while Instant::now() < deadline && !closed {
        for _ in 0..16 {
            pool.get(0).send(WorkerCommand::SendData {
                room: "RM_test".into(),
                packet: chunk.clone(),
                kind: DataKind::Reliable,
                to: vec![key.participant.clone()],
            });
            sent += chunk.len();
        }
        std::thread::sleep(Duration::from_millis(20));
        while let Ok(e) = events.try_recv() {
            if let MediaEvent::Closed {
                participant,
                direction: TransportDirection::Subscriber,
            } = e
            {
                assert_eq!(participant, key.participant);
                closed = true;
            }
        }
    }
    assert!(
        closed,
        "the backed-up receiver was not disconnected after {sent} bytes"
    );
    // Counted (the worker adds its counts to the metrics every second).
    let deadline = Instant::now() + Duration::from_secs(5);
    while metrics.workers[0].data_receivers_dropped.get() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metrics.workers[0].data_receivers_dropped.get(), 1);
    assert!(metrics.workers[0].data_reliable_delivered.get() > 0);
    let _: SocketAddr = local;
    pool.shutdown();
}
