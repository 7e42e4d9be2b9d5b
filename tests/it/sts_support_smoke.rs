//! The scriptable STS server behaves like a WebSocket agent (driven here by a plain client).

use std::net::TcpStream;
use std::time::Duration;

use crate::support::sts::{Received, StsServer};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

const WAIT: Duration = Duration::from_secs(3);

fn connect(server: &StsServer, path: &str) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (ws, _) = tungstenite::client(format!("{}{path}", server.url()), stream).unwrap();
    ws
}

fn read_text(ws: &mut WebSocket<TcpStream>) -> String {
    match ws.read().unwrap() {
        Message::Text(text) => text.as_str().to_owned(),
        other => panic!("expected text, got {other:?}"),
    }
}

fn read_json(ws: &mut WebSocket<TcpStream>) -> Value {
    serde_json::from_str(&read_text(ws)).unwrap()
}

#[test]
fn messages_flow_both_ways_and_close_is_proper() {
    let server = StsServer::start();
    let mut client = connect(&server, "/?from=2000");
    let mut conn = server.accept(WAIT).expect("a connection");
    assert_eq!(conn.path(), "/?from=2000");

    client
        .send(Message::text(r#"{"type":"init","uuid":"u"}"#))
        .unwrap();
    client
        .send(Message::text(r#"{"type":"audio","audio":"AAA="}"#))
        .unwrap();
    client.send(Message::binary(vec![1, 2])).unwrap();
    client
        .send(Message::text(r#"{"type":"dtmf_digit","digit":"5"}"#))
        .unwrap();
    assert_eq!(conn.recv_json(WAIT).unwrap()["type"], "init");
    let dtmf = conn
        .recv_until(WAIT, |v| v["type"] == "dtmf_digit")
        .unwrap();
    assert_eq!(dtmf["digit"], "5");

    conn.send_audio(&[1, 2, 3, 4]);
    conn.send_binary(&[5, 6]);
    conn.send_text_raw("garbage");
    conn.send_json(&json!({"type": "interruption"}));
    assert_eq!(
        read_json(&mut client),
        json!({"type": "audio", "audio": "AQIDBA=="})
    );
    assert_eq!(client.read().unwrap(), Message::binary(vec![5, 6]));
    assert_eq!(read_text(&mut client), "garbage");
    assert_eq!(read_json(&mut client), json!({"type": "interruption"}));

    conn.close();
    assert!(matches!(client.read().unwrap(), Message::Close(_)));
    assert!(matches!(
        client.read(),
        Err(tungstenite::Error::ConnectionClosed)
    ));
}

#[test]
fn drop_tcp_sends_no_close_frame_and_client_close_is_seen() {
    let server = StsServer::start();
    let mut abrupt = connect(&server, "/");
    let conn = server.accept(WAIT).expect("first connection");
    conn.drop_tcp();
    match abrupt.read() {
        Err(tungstenite::Error::Protocol(_)) => {} // reset without closing handshake
        other => panic!("expected an abrupt end, got {other:?}"),
    }

    let mut polite = connect(&server, "/second");
    let mut conn = server.accept(WAIT).expect("second connection");
    assert_eq!(conn.path(), "/second");
    polite.close(None).unwrap();
    assert_eq!(conn.recv(WAIT), Some(Received::Closed));
    assert_eq!(conn.recv(WAIT), Some(Received::Closed));
    assert!(conn.recv(Duration::ZERO).is_some());

    drop(server);
    assert!(TcpStream::connect(polite.get_ref().peer_addr().unwrap()).is_err());
}
