//! `wss://` agents: rustls with the ring provider, a private CA from SSL_CERT_FILE.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::support::avr::Avr;
use crate::support::{assert_heard, call_hung_up_by_server, call_options, signal, to_bytes, WAIT};
use avr_core::tools::simulate::{run_call, EndMode};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use tungstenite::Message;

/// A private CA and a `localhost` certificate it signed.
struct Pki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        chain: vec![leaf.der().clone()],
        key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
    }
}

/// A one-connection wss:// agent: checks `init`, says `hello`, reads until the call closes.
fn tls_agent(pki: &Pki, hello: Vec<u8>) -> (u16, thread::JoinHandle<Option<Value>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), pki.key.clone_key())
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (tcp, _) = listener.accept().ok()?;
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let tls = rustls::StreamOwned::new(rustls::ServerConnection::new(config).ok()?, tcp);
        let mut ws = tungstenite::accept(tls).ok()?;
        let init = match ws.read().ok()? {
            Message::Text(t) => serde_json::from_str::<Value>(t.as_str()).ok()?,
            _ => return None,
        };
        ws.send(Message::Binary(hello.into())).ok()?;
        while let Ok(msg) = ws.read() {
            if msg.is_close() {
                break;
            }
        }
        Some(init)
    });
    (port, handle)
}

fn ca_file(pem: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("avr-core-test-ca-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&path, pem).unwrap();
    path
}

#[test]
fn a_wss_agent_behind_a_private_ca_carries_the_call() {
    let pki = pki();
    let hello = signal(4000);
    let (port, agent) = tls_agent(&pki, to_bytes(&hello));
    let ca = ca_file(&pki.ca_pem);
    let url = format!("wss://localhost:{port}");
    let avr = Avr::start(&[("STS_URL", &url), ("SSL_CERT_FILE", ca.to_str().unwrap())]);

    let (uuid, opts) = call_options(avr.addr(), Duration::from_millis(1500), EndMode::Close);
    let report = run_call(&opts).expect("call");
    let _ = std::fs::remove_file(&ca);

    assert!(report.violations.is_empty(), "{}", report.summary());
    assert_heard(&report, &hello);
    let init = agent.join().unwrap().expect("the agent got init over TLS");
    assert_eq!(init, json!({"type": "init", "uuid": uuid}));
    avr.wait_call_ended(&uuid, WAIT);
}

#[test]
fn an_untrusted_certificate_ends_the_call_with_a_clear_reason() {
    let pki = pki();
    let (port, _agent) = tls_agent(&pki, Vec::new());
    let url = format!("wss://localhost:{port}");
    let avr = Avr::start(&[("STS_URL", &url)]);

    let (uuid, _report) = call_hung_up_by_server(avr.addr(), Duration::from_secs(20));
    let why = avr
        .wait_log(
            |l| l.contains(&format!("[{uuid}] Call ending: agent unreachable")),
            WAIT,
        )
        .unwrap();
    assert!(why.contains(&url), "{why}");
    assert!(why.to_lowercase().contains("certificate"), "{why}");
}
