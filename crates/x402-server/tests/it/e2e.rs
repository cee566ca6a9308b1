//! End to end on real sockets (127.0.0.1, port 0): a real WebSocket client,
//! real HTTP, real EIP-3009 signatures, the embedded facilitator. The paid
//! stream's life: open, events, renew, resume, eviction, expiry, sweeping,
//! sources and shutdown.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCode;
use x402_server::{Limits, SourceConfig};
use x402_types::{Amount, ErrorBody, ErrorCode, PathVersion, RenewResponse, ServerMessage};

use crate::harness::{close_code, error_of, next_event_seq, next_msg, start, start_with, stream};

async fn paid_open_events_renew_resume(v: PathVersion) {
    let t = start().await;
    let q = t.schema(v, "s").await;
    assert_eq!(
        q.schema.payment_details.max_amount_required,
        Amount::from(60_000)
    );
    let (mut ws, hello) = t.open(&q).await;
    assert_eq!(hello.slice_seconds, 60);
    assert!(!hello.resumed);
    t.publish(3);
    let first = next_event_seq(&mut ws).await;
    assert_eq!(first, hello.next_seq);
    assert_eq!(next_event_seq(&mut ws).await, first + 1);
    assert_eq!(t.credited(), 1);

    // Renew, then repeat the same payload: same answer, no second extension.
    let h = t.pay(&q);
    let r1 = t.renew(&hello.renew_url, v, Some(&h)).await;
    assert_eq!(r1.status(), 200);
    assert!(r1.headers().get(v.payment_response_header()).is_some());
    let r1: RenewResponse = r1.json().await.unwrap();
    assert_eq!(r1.slices, 2);
    assert_eq!(r1.expires_at, hello.expires_at + 60);
    let r2: RenewResponse = t
        .renew(&hello.renew_url, v, Some(&h))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r2, r1);
    assert_eq!(t.credited(), 2);
    // The socket hears about it.
    loop {
        if let ServerMessage::Renewed { slices, .. } = next_msg(&mut ws).await {
            assert_eq!(slices, 2);
            break;
        }
    }
    // Horizon: a third slice now would be three slices ahead.
    let r3 = t.renew(&hello.renew_url, v, Some(&t.pay(&q))).await;
    assert_eq!(r3.status(), 409);
    assert_eq!(
        r3.json::<ErrorBody>().await.unwrap().error,
        ErrorCode::HorizonExceeded
    );
    assert_eq!(t.credited(), 2);

    // Drop and resume without payment from where we were.
    t.publish(1);
    let next = next_event_seq(&mut ws).await + 1;
    drop(ws);
    t.publish(2);
    let url = format!("{}&from={next}", q.schema.websocket_endpoint);
    let (mut ws2, _) = t.connect(&url, None).await.unwrap();
    let ServerMessage::Hello(h2) = next_msg(&mut ws2).await else {
        panic!()
    };
    assert!(h2.resumed);
    assert_eq!(h2.next_seq, next);
    assert_eq!(next_event_seq(&mut ws2).await, next);
    assert_eq!(t.credited(), 2, "resume must not pay");

    // Ping is answered.
    ws2.send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    loop {
        if next_msg(&mut ws2).await == ServerMessage::Pong {
            break;
        }
    }
    // A second socket with the same token supersedes the first: 4409.
    let (mut ws3, _) = t.connect(&q.schema.websocket_endpoint, None).await.unwrap();
    assert_eq!(close_code(&mut ws2).await, Some(4409));
    let ServerMessage::Hello(h3) = next_msg(&mut ws3).await else {
        panic!()
    };
    assert!(h3.resumed);
}

#[tokio::test]
async fn v1_paid_open_events_renew_resume() {
    paid_open_events_renew_resume(PathVersion::V1).await;
}

#[tokio::test]
async fn v2_paid_open_events_renew_resume() {
    paid_open_events_renew_resume(PathVersion::V2).await;
}

#[tokio::test]
async fn events_lost_after_eviction() {
    let limits = Limits {
        replay_buffer: 4,
        ..Limits::default()
    };
    let t = start_with(limits, vec![stream("s", 60, 60)]).await;
    let q = t.schema(PathVersion::V2, "s").await;
    let (ws, hello) = t.open(&q).await;
    drop(ws);
    t.publish(10);
    let url = format!("{}&from={}", q.schema.websocket_endpoint, hello.next_seq);
    let (mut ws, _) = t.connect(&url, None).await.unwrap();
    let ServerMessage::Hello(_) = next_msg(&mut ws).await else {
        panic!()
    };
    match next_msg(&mut ws).await {
        ServerMessage::Error { code, count, .. } => {
            assert_eq!(code, ErrorCode::EventsLost);
            assert_eq!(count, Some(6));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next_event_seq(&mut ws).await, hello.next_seq + 6);
}

/// A burst larger than the live queue, published while two paid sockets read:
/// batched writes, the lagged fallback to the replay buffer and the live path
/// together deliver every event once, in order, and nothing else.
#[tokio::test]
async fn a_burst_beyond_the_live_queue_arrives_whole_and_in_order() {
    let limits = Limits {
        replay_buffer: 5_000,
        send_queue: 16,
        ..Limits::default()
    };
    let t = start_with(limits, vec![stream("s", 60, 60)]).await;
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let q = t.schema(PathVersion::V2, "s").await;
        sockets.push(t.open(&q).await);
    }
    let first = sockets[0].1.next_seq;
    let publisher = t.publisher.clone();
    let burst = std::thread::spawn(move || {
        for i in 0..3_000u64 {
            publisher
                .publish(&serde_json::json!({"i": i, "pad": "x".repeat((i % 7) as usize * 100)}));
        }
    });
    for (ws, _) in &mut sockets {
        for i in 0..3_000u64 {
            match next_msg(ws).await {
                ServerMessage::Event(e) => {
                    assert_eq!(e.seq, first + i, "in order, none missing, none twice");
                    let data: serde_json::Value = serde_json::from_str(e.data.get()).unwrap();
                    assert_eq!(data["i"], i);
                }
                other => panic!("only events expected, got {other:?}"),
            }
        }
    }
    burst.join().unwrap();
}

/// On an idle socket (no events to wake its task) every ping is answered and
/// every renewal reaches the socket: the task hears its client and its mailbox
/// on their own wakes, not only when an event arrives.
#[tokio::test]
async fn an_idle_socket_answers_every_ping_and_hears_every_renewal() {
    let t = start_with(Limits::default(), vec![stream("s", 3600, 60)]).await;
    let q = t.schema(PathVersion::V2, "s").await;
    let (mut ws, hello) = t.open(&q).await;
    for round in 0..20u64 {
        ws.send(Message::Text(r#"{"type":"ping"}"#.into()))
            .await
            .unwrap();
        assert_eq!(
            next_msg(&mut ws).await,
            ServerMessage::Pong,
            "round {round}"
        );
        if round == 10 {
            let r = t
                .renew(&hello.renew_url, PathVersion::V2, Some(&t.pay(&q)))
                .await;
            assert_eq!(r.status(), 200);
            match next_msg(&mut ws).await {
                ServerMessage::Renewed { slices, .. } => assert_eq!(slices, 2),
                other => panic!("expected renewed, got {other:?}"),
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn expiry_sends_expired_then_closes_4402() {
    let t = start_with(Limits::default(), vec![stream("s", 2, 60)]).await;
    let q = t.schema(PathVersion::V2, "s").await;
    let (mut ws, _) = t.open(&q).await;
    // Events are published all along, before and after the paid time ends.
    let hub = t.state.streams["s"].hub.clone();
    let publisher = tokio::spawn(async move {
        for n in 0u64.. {
            hub.publish(&serde_json::json!({ "n": n }));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let (mut saw, mut events) = ((false, false), 0);
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(txt))) => match ServerMessage::parse(txt.as_str()).unwrap() {
                ServerMessage::Expiring { .. } => saw.0 = true,
                ServerMessage::Expired { .. } => saw.1 = true,
                ServerMessage::Event(_) if saw.1 => panic!("event delivered after expiry"),
                ServerMessage::Event(_) => events += 1,
                _ => {}
            },
            Some(Ok(Message::Close(c))) => break c.map(|f| u16::from(f.code)),
            other => panic!("{other:?}"),
        }
    };
    publisher.abort();
    assert_eq!(saw, (true, true));
    assert!(events > 5, "events flowed while paid: {events}");
    assert_eq!(code, Some(4402));
    // Without payment the token no longer opens a socket: 402 with fresh accepts.
    let (status, body) = error_of(
        t.connect(&q.schema.websocket_endpoint, None)
            .await
            .unwrap_err(),
    );
    assert_eq!((status, body.error), (402, ErrorCode::PaymentRequired));
    assert!(body.accepts.is_some());
}

#[tokio::test(start_paused = true)]
async fn expired_quote_is_gone() {
    let t = start_with(Limits::default(), vec![stream("s", 60, 1)]).await;
    let q = t.schema(PathVersion::V2, "s").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let h = t.pay(&q);
    let (s, b) = error_of(
        t.connect(
            &q.schema.websocket_endpoint,
            Some(("PAYMENT-SIGNATURE", &h)),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((s, b.error), (410, ErrorCode::QuoteExpired));
    assert_eq!(t.credited(), 0);
}

#[tokio::test]
async fn oversized_frame_closes_1009() {
    let limits = Limits {
        max_frame_bytes: 64 * 1024,
        ..Limits::default()
    };
    let t = start_with(limits, vec![stream("s", 60, 60)]).await;
    let q = t.schema(PathVersion::V2, "s").await;
    let (mut ws, _) = t.open(&q).await;
    ws.send(Message::Text("x".repeat(100 * 1024).into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(u16::from(WsCode::Size)));
}

#[tokio::test]
async fn renew_endpoint_buys_the_first_slice_for_browsers() {
    let t = start().await;
    let q = t.schema(PathVersion::V2, "s").await;
    let renew = q
        .schema
        .websocket_endpoint
        .replace("ws://", "http://")
        .replace("/stream/", "/renew/");
    let r = t.renew(&renew, PathVersion::V2, None).await;
    assert_eq!(r.status(), 402);
    assert!(r.headers().get("PAYMENT-REQUIRED").is_some());
    let r = t.renew(&renew, PathVersion::V2, Some(&t.pay(&q))).await;
    assert_eq!(r.status(), 200);
    // The token alone now opens the socket.
    let (mut ws, _) = t.connect(&q.schema.websocket_endpoint, None).await.unwrap();
    let ServerMessage::Hello(h) = next_msg(&mut ws).await else {
        panic!()
    };
    assert!(!h.resumed);
    assert_eq!(t.credited(), 1);
}

#[tokio::test(start_paused = true)]
async fn expired_sessions_are_swept() {
    let limits = Limits {
        session_linger_secs: 1,
        sweep_interval_ms: 100,
        ..Limits::default()
    };
    let t = start_with(limits, vec![stream("s", 1, 7)]).await;
    let q = t.schema(PathVersion::V2, "s").await;
    let (mut ws, _) = t.open(&q).await;
    assert_eq!(t.state.endpoint_stats().sessions, 1);
    assert_eq!(close_code(&mut ws).await, Some(4402));
    drop(ws);
    // Once the quote (7 s) and paid time (1 s) + linger (1 s) are over; the sweeper runs every 100 ms.
    let mut left = usize::MAX;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        left = t.state.endpoint_stats().sessions;
        if left == 0 {
            break;
        }
    }
    assert_eq!(left, 0, "the expired session was not swept");
}

#[tokio::test]
async fn replay_source_publishes_a_jsonl_file() {
    let file = std::env::temp_dir().join(format!("replay-{}.jsonl", std::process::id()));
    std::fs::write(&file, "{\"n\":1}\nnot json\n\n{\"n\":2}\n[3]\n").unwrap();
    let mut sc = stream("r", 60, 60);
    sc.source = SourceConfig::Replay {
        file: file.clone(),
        rate: 50.0,
        looping: true,
    };
    let t = start_with(Limits::default(), vec![stream("s", 60, 60), sc]).await;
    let q = t.schema(PathVersion::V2, "r").await;
    let url = q.schema.websocket_endpoint.clone();
    let (mut ws, _) = t
        .connect(&url, Some(("PAYMENT-SIGNATURE", &t.pay(&q))))
        .await
        .unwrap();
    let mut data = Vec::new();
    while data.len() < 6 {
        if let ServerMessage::Event(e) = next_msg(&mut ws).await {
            data.push(e.data.get().to_string());
        }
    }
    // The invalid line is skipped; the file loops.
    let cycle = ["{\"n\":1}", "{\"n\":2}", "[3]"];
    let start = cycle
        .iter()
        .position(|c| *c == data[0])
        .expect("a line of the file");
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d, cycle[(start + i) % 3]);
    }
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1012_so_clients_resume_elsewhere() {
    let t = start().await;
    let q = t.schema(PathVersion::V2, "s").await;
    let (mut ws, _) = t.open(&q).await;
    t.state.shutdown();
    assert_eq!(close_code(&mut ws).await, Some(1012));
}

/// A client that closes gets the close handshake completed (1000 echoed),
/// not a dropped connection (1006 on the client's side).
#[tokio::test]
async fn a_client_close_is_answered_with_1000() {
    use futures::SinkExt;
    let t = start().await;
    let q = t.schema(PathVersion::V2, "s").await;
    let (mut ws, _hello) = t.open(&q).await;
    ws.send(tokio_tungstenite::tungstenite::Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        },
    )))
    .await
    .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1000));
}
