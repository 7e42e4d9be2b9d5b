//! Wideband callers (kinds 0x11–0x18) and agents at other rates than 8 kHz
//! (`STS_SAMPLE_RATE`), over real sockets: the agent hears the caller at its own rate with the
//! spectrum intact, the caller hears the agent in its own kind and frame size, equal rates
//! pass bit-exact (docs/audiosocket.md §10.2, §10.4; docs/sts.md §6).

use std::f64::consts::TAU;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::support::avr::Avr;
use crate::support::sts::{Received, StsConn, StsServer};
use crate::support::{assert_audio, new_uuid, non_silent, to_bytes, to_samples, WAIT};
use avr_core::audio::Resampler;
use avr_core::proto::audiosocket::{self, audio_kind, frame_bytes, Frame, FrameBuffer};

/// A caller speaking AudioSocket at one rate, as Asterisk's channel driver does with
/// `c(slinNN)`.
struct Caller {
    s: TcpStream,
    frames: FrameBuffer,
    rate: u32,
    uuid: String,
}

/// One frame from avr-core: its kind and payload.
type Got = (u8, Vec<u8>);

impl Caller {
    fn call(avr: &Avr, rate: u32) -> Caller {
        let (uuid_bytes, uuid) = new_uuid();
        let mut s = TcpStream::connect(avr.addr()).unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(&audiosocket::encode(0x01, &uuid_bytes).unwrap())
            .unwrap();
        Caller {
            s,
            frames: FrameBuffer::new(audiosocket::MAX_PAYLOAD),
            rate,
            uuid,
        }
    }

    /// Sends `samples` as 20 ms frames of the caller's kind.
    fn send(&mut self, samples: &[i16]) {
        let kind = audio_kind(self.rate).unwrap();
        let mut out = Vec::new();
        for chunk in to_bytes(samples).chunks(frame_bytes(self.rate)) {
            out.extend(audiosocket::encode(kind, chunk).unwrap());
        }
        self.s.write_all(&out).unwrap();
    }

    /// Reads frames until `enough` says so (given all frames so far) or `WAIT` passes.
    fn read_until(&mut self, enough: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        while !enough(&got) && Instant::now() < deadline {
            self.s
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            match self.frames.read_from(&mut self.s) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => continue,
            }
            while let Ok(Some(frame)) = self.frames.next_frame() {
                match frame {
                    Frame::Audio { rate_hz, payload } => {
                        got.push((audio_kind(rate_hz).unwrap(), payload.to_vec()))
                    }
                    other => got.push((0xEE, format!("{other:?}").into_bytes())),
                }
            }
        }
        got
    }
}

/// Asserts what the caller received: 8 kHz frames until its own kind starts, then only its
/// own kind, 20 ms each. Returns the payloads of its own kind, joined.
fn own_kind_audio(got: &[Got], rate: u32) -> Vec<i16> {
    let kind = audio_kind(rate).unwrap();
    let first = got
        .iter()
        .position(|(k, _)| *k == kind)
        .expect("no frame of the caller's kind");
    for (k, payload) in &got[..first] {
        assert_eq!(
            (*k, payload.len()),
            (0x10, 320),
            "before the caller's rate is known"
        );
    }
    let mut out = Vec::new();
    for (k, payload) in &got[first..] {
        assert_eq!(
            (*k, payload.len()),
            (kind, frame_bytes(rate)),
            "every frame after the first of kind 0x{kind:02x}"
        );
        out.extend(to_samples(payload));
    }
    out
}

/// The agent's audio until at least `bytes` arrived.
fn agent_audio(conn: &mut StsConn, bytes: usize) -> Vec<u8> {
    let deadline = Instant::now() + WAIT;
    let mut pcm = Vec::new();
    while pcm.len() < bytes {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.recv(left) {
            Some(Received::Text(text)) => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                if v["type"] == "audio" {
                    let b64 = v["audio"].as_str().unwrap();
                    pcm.extend(
                        base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .unwrap(),
                    );
                }
            }
            other => panic!("agent audio: got {other:?} after {} bytes", pcm.len()),
        }
    }
    pcm
}

/// A tone of `amplitude` at `hz`, `secs` long, sampled at `rate`.
fn tone(rate: u32, hz: f64, amplitude: f64, secs: f64) -> Vec<f64> {
    (0..(secs * f64::from(rate)) as usize)
        .map(|n| amplitude * (TAU * hz * n as f64 / f64::from(rate)).sin())
        .collect()
}

fn quantise(v: &[f64]) -> Vec<i16> {
    v.iter().map(|x| x.round() as i16).collect()
}

/// Amplitude of the `hz` component of `samples` at `rate` (Goertzel over the whole slice).
fn level(samples: &[i16], rate: u32, hz: f64) -> f64 {
    let w = TAU * hz / f64::from(rate);
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
    2.0 * power.sqrt() / samples.len() as f64
}

/// `audio` from its first non-zero sample on: what was played after the silence before it.
/// (Not [`non_silent`]: a tone's own zero crossings must stay, or its frequency moves.)
fn from_first_sound(audio: &[i16]) -> Vec<i16> {
    let first = audio.iter().position(|&s| s != 0).unwrap_or(audio.len());
    audio[first..].to_vec()
}

fn db(ratio: f64) -> f64 {
    20.0 * ratio.log10()
}

/// Amplitude of the test tones: loud, well clear of clipping when two are summed.
const A: f64 = 8_000.0;

#[test]
fn a_slin16_caller_and_an_8_khz_agent_hear_each_other_with_the_spectrum_intact() {
    let sts = StsServer::start();
    let avr = Avr::start(&[("STS_URL", &sts.url())]);
    let mut caller = Caller::call(&avr, 16_000);
    let mut conn = sts.accept(WAIT).expect("agent connection");
    let init = conn.recv_json(WAIT).unwrap();
    assert_eq!(init["type"], "init");
    assert_eq!(conn.path(), "/", "the default rate is not announced");

    // 1 s of a 1 kHz tone plus a 5 kHz one, which an 8 kHz agent must not hear at all
    // (it would alias to 3 kHz).
    let mix: Vec<f64> = tone(16_000, 1_000.0, A, 1.0)
        .iter()
        .zip(tone(16_000, 5_000.0, A, 1.0))
        .map(|(a, b)| a + b)
        .collect();
    caller.send(&quantise(&mix));
    let heard = to_samples(&agent_audio(&mut conn, 15_000));
    // Skip the first 20 ms (the filter's start), judge 0.8 s.
    let steady = &heard[160..160 + 6_400];
    let one_k = level(steady, 8_000, 1_000.0);
    assert!(
        db(one_k / A).abs() <= 1.0,
        "1 kHz at {:.2} dB",
        db(one_k / A)
    );
    let alias = level(steady, 8_000, 3_000.0);
    assert!(
        db(alias / A) <= -55.0,
        "the 5 kHz tone aliased at {:.1} dB",
        db(alias / A)
    );

    // The agent answers with 1 s of a 1 kHz tone at 8 kHz; the caller hears it at 16 kHz
    // in its own kind, with no image at 7 kHz.
    conn.send_audio(&to_bytes(&quantise(&tone(8_000, 1_000.0, A, 1.0))));
    let got = caller.read_until(|got| {
        got.iter()
            .filter(|(k, p)| *k == 0x12 && p.iter().any(|&b| b != 0))
            .count()
            >= 50
    });
    let played = from_first_sound(&own_kind_audio(&got, 16_000));
    assert!(played.len() >= 15_000, "{} samples played", played.len());
    let steady = &played[320..320 + 12_800];
    let one_k = level(steady, 16_000, 1_000.0);
    assert!(
        db(one_k / A).abs() <= 1.0,
        "1 kHz at {:.2} dB",
        db(one_k / A)
    );
    let image = level(steady, 16_000, 7_000.0);
    assert!(
        db(image / A) <= -55.0,
        "image at 7 kHz: {:.1} dB",
        db(image / A)
    );

    let logs = avr.call_logs(&caller.uuid);
    assert!(
        logs.iter().any(|l| l.contains(
            "Caller audio is slin16 (16000 Hz), the agent's 8000 Hz: resampling both ways"
        )),
        "{logs:#?}"
    );
}

#[test]
fn a_slin16_caller_and_a_16_khz_agent_pass_bit_exact() {
    let sts = StsServer::start();
    let avr = Avr::start(&[("STS_URL", &sts.url()), ("STS_SAMPLE_RATE", "16000")]);
    let mut caller = Caller::call(&avr, 16_000);
    let mut conn = sts.accept(WAIT).expect("agent connection");
    assert_eq!(
        conn.path(),
        "/?sample_rate=16000",
        "the agent is told its rate"
    );
    conn.recv_until(WAIT, |m| m["type"] == "init").unwrap();

    // Never zero, so silence and padding can be told apart from it.
    let pattern: Vec<i16> = (0..16_000).map(|i| (i % 7_000 + 1) as i16).collect();
    caller.send(&pattern);
    let heard = to_samples(&agent_audio(&mut conn, 32_000));
    assert_audio(&heard, &pattern, false, 0, "caller → agent");

    conn.send_audio(&to_bytes(&pattern));
    let got = caller.read_until(|got| {
        let heard: usize = got
            .iter()
            .map(|(_, p)| non_silent(&to_samples(p)).len())
            .sum();
        heard >= pattern.len()
    });
    let played = non_silent(&own_kind_audio(&got, 16_000));
    assert_audio(&played, &pattern, false, 0, "agent → caller");
}

#[test]
fn slin48_and_slin12_callers_get_their_own_frames_back() {
    for rate in [48_000, 12_000] {
        let sts = StsServer::start();
        let avr = Avr::start(&[("STS_URL", &sts.url())]);
        let mut caller = Caller::call(&avr, rate);
        let mut conn = sts.accept(WAIT).expect("agent connection");
        conn.recv_until(WAIT, |m| m["type"] == "init").unwrap();

        // 0.5 s of 1 kHz reaches the agent as 0.5 s at 8 kHz (less the filter's delay).
        caller.send(&quantise(&tone(rate, 1_000.0, A, 0.5)));
        let heard = to_samples(&agent_audio(&mut conn, 7_600));
        let one_k = level(&heard[160..3_800], 8_000, 1_000.0);
        assert!(
            db(one_k / A).abs() <= 1.0,
            "{rate}: 1 kHz at {:.2} dB",
            db(one_k / A)
        );

        conn.send_audio(&to_bytes(&quantise(&tone(8_000, 1_000.0, A, 0.5))));
        let kind = audio_kind(rate).unwrap();
        let got = caller.read_until(|got| {
            got.iter()
                .filter(|(k, p)| *k == kind && p.iter().any(|&b| b != 0))
                .count()
                >= 25
        });
        let played = from_first_sound(&own_kind_audio(&got, rate));
        let n = rate as usize / 4;
        let one_k = level(&played[rate as usize / 50..n], rate, 1_000.0);
        assert!(
            db(one_k / A).abs() <= 1.0,
            "{rate}: played 1 kHz at {:.2} dB",
            db(one_k / A)
        );
    }
}

#[test]
fn an_8_khz_caller_with_a_24_khz_agent() {
    let sts = StsServer::start();
    let avr = Avr::start(&[("STS_URL", &sts.url()), ("STS_SAMPLE_RATE", "24000")]);
    let mut caller = Caller::call(&avr, 8_000);
    let mut conn = sts.accept(WAIT).expect("agent connection");
    assert_eq!(conn.path(), "/?sample_rate=24000");
    conn.recv_until(WAIT, |m| m["type"] == "init").unwrap();

    caller.send(&quantise(&tone(8_000, 1_000.0, A, 0.5)));
    let heard = to_samples(&agent_audio(&mut conn, 23_000));
    let one_k = level(&heard[480..11_000], 24_000, 1_000.0);
    assert!(
        db(one_k / A).abs() <= 1.0,
        "1 kHz at {:.2} dB",
        db(one_k / A)
    );
    // Nothing between 4 kHz and 12 kHz: an 8 kHz caller has nothing there.
    let image = level(&heard[480..11_000], 24_000, 7_000.0);
    assert!(
        db(image / A) <= -55.0,
        "image at 7 kHz: {:.1} dB",
        db(image / A)
    );

    // The agent speaks 24 kHz with 12 kHz of content an 8 kHz caller cannot carry: removed.
    let mix: Vec<f64> = tone(24_000, 1_000.0, A, 0.5)
        .iter()
        .zip(tone(24_000, 6_000.0, A, 0.5))
        .map(|(a, b)| a + b)
        .collect();
    conn.send_audio(&to_bytes(&quantise(&mix)));
    let got = caller.read_until(|got| {
        got.iter()
            .filter(|(k, p)| *k == 0x10 && p.iter().any(|&b| b != 0))
            .count()
            >= 25
    });
    assert!(got.iter().all(|(k, p)| (*k, p.len()) == (0x10, 320)));
    let played = from_first_sound(
        &got.iter()
            .flat_map(|(_, p)| to_samples(p))
            .collect::<Vec<_>>(),
    );
    let steady = &played[160..3_800];
    let one_k = level(steady, 8_000, 1_000.0);
    assert!(
        db(one_k / A).abs() <= 1.0,
        "1 kHz at {:.2} dB",
        db(one_k / A)
    );
    let alias = level(steady, 8_000, 2_000.0);
    assert!(
        db(alias / A) <= -55.0,
        "6 kHz aliased at 2 kHz: {:.1} dB",
        db(alias / A)
    );
}

/// The agent's stream cut in ragged, odd-length chunks plays exactly as the same stream
/// converted in one piece: no byte lost or shifted at any rate.
#[test]
fn ragged_odd_agent_chunks_play_intact_at_every_rate() {
    // Every caller kind with the default agent; then agents at other rates.
    let pairs: Vec<(u32, u32)> = audiosocket::audio_rates()
        .map(|caller| (caller, 8_000))
        .chain([(8_000, 16_000), (16_000, 16_000), (48_000, 24_000)])
        .collect();
    for agent_hz in [8_000, 16_000, 24_000] {
        let sts = StsServer::start();
        let rate = agent_hz.to_string();
        let avr = Avr::start(&[("STS_URL", &sts.url()), ("STS_SAMPLE_RATE", &rate)]);
        for &(caller_hz, _) in pairs.iter().filter(|(_, a)| *a == agent_hz) {
            ragged_call(&avr, &sts, caller_hz, agent_hz);
        }
    }
}

/// One call of [`ragged_odd_agent_chunks_play_intact_at_every_rate`].
fn ragged_call(avr: &Avr, sts: &StsServer, caller_hz: u32, agent_hz: u32) {
    let mut caller = Caller::call(avr, caller_hz);
    let mut conn = sts.accept(WAIT).expect("agent connection");
    conn.recv_until(WAIT, |m| m["type"] == "init").unwrap();
    // One caller frame fixes the rate of playout.
    caller.send(&vec![0; caller_hz as usize / 50]);

    // 0.5 s, never zero, in chunks of 1, 3, 7, 333, 1001 bytes.
    let stream = to_bytes(
        &(0..agent_hz as usize / 2)
            .map(|i| (i % 3_000 + 500) as i16)
            .collect::<Vec<_>>(),
    );
    let mut at = 0;
    for size in [1usize, 3, 7, 333, 1_001].iter().cycle() {
        if at >= stream.len() {
            break;
        }
        let end = (at + size).min(stream.len());
        conn.send_audio(&stream[at..end]);
        at = end;
    }
    let mut expected = Vec::new();
    if caller_hz == agent_hz {
        expected.extend_from_slice(&stream);
    } else {
        let mut r = Resampler::new(agent_hz, caller_hz);
        r.push(&stream, &mut expected);
    }
    let expected = non_silent(&to_samples(&expected));
    let got = caller.read_until(|got| {
        let heard: usize = got
            .iter()
            .map(|(_, p)| non_silent(&to_samples(p)).len())
            .sum();
        heard >= expected.len()
    });
    let played = non_silent(&own_kind_audio(&got, caller_hz));
    assert_audio(
        &played[..expected.len().min(played.len())],
        &expected,
        false,
        0,
        &format!("caller {caller_hz} Hz, agent {agent_hz} Hz"),
    );
}
