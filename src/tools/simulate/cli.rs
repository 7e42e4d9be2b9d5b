//! `avr-core simulate`: its flags, turned into [`SimOptions`] for one call or [`LoadOptions`]
//! for many (`--calls`), and what it prints.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::load::MAX_MARKED;
use super::runner::is_dtmf;
use super::{
    run_call, run_load, wav, AudioSource, EndMode, LoadOptions, SimCodec, SimError, SimOptions,
};
use crate::cli::{is_help, Flags, Parsed, UsageError};
use crate::proto::audiosocket::CallId;
use crate::tools::echo_sts;
use crate::tools::rates::{self, khz, SLIN_RATE_HZ};

/// Where Asterisk's AudioSocket server listens by default (avr-core's `PORT`).
const DEFAULT_ADDR: &str = "127.0.0.1:5001";
/// `--end await`: how long the CLI waits for the server's hangup after `--seconds`.
const CLI_AWAIT: Duration = Duration::from_secs(15);
/// `--tone` amplitude: loud enough to see, far from clipping.
const CLI_TONE_AMPLITUDE: i16 = 8000;
/// `--tone` without a value is not possible; this is the tone when no audio is chosen.
const DEFAULT_TONE_HZ: f64 = 440.0;
/// Load mode: each call is a receiver thread and a socket here, and as much in the server;
/// beyond this a single machine measures itself, not the server.
const MAX_LOAD_CALLS: u64 = 10_000;
/// Load mode: the longest spread of call starts, 10 minutes.
const MAX_RAMP_MS: u64 = 600_000;

pub const USAGE: &str = "\
avr-core simulate — act as Asterisk's AudioSocket(): place one call, report what came back

USAGE:
    avr-core simulate [OPTIONS]

OPTIONS:
    --addr HOST:PORT   AudioSocket server to call (default 127.0.0.1:5001)
    --uuid UUID        call id, 8-4-4-4-12 hex (default: random)
    --rate HZ          the caller's rate: 8000 (kind 0x10, default), or a wideband one as
                       Dial(AudioSocket/.../c(slin16)) and the like send (Asterisk 20.17+):
                       12000, 16000, 24000, 32000, 44100, 48000, 96000, 192000 (kinds
                       0x11-0x18); every frame carries 20 ms at that rate (640 bytes at 16000)
    --tone HZ          send a sine tone at amplitude 8000 (default: 440 Hz), below half the rate
    --wav FILE         send a WAV file (PCM 16-bit mono at the --rate); silence follows its end
    --raw FILE         send raw 16-bit little-endian mono PCM at the --rate; silence follows
    --seconds S        how long to send caller audio (default 5; fractions allowed)
    --codec C          slin (320-byte frames at 8000, default), ulaw or alaw (160-byte frames,
                       8000 only); all labelled 0x10, as Dial(AudioSocket/...) without c(slin)
    --dtmf T:D[,T:D]   send DTMF digit D (0-9 * # A-D) T seconds after the UUID; repeatable
    --record FILE      write the audio received from the server as a WAV (mono 16-bit at the
                       --rate)
    --end MODE         close: FIN after --seconds (default)
                       reset: close with unread data, so the server sees a reset
                       await: keep sending silence until the server hangs up (up to 15 s more)
    -h, --help         show this text

The report covers frames, pacing, time to the first frame and every protocol violation that
would make current Asterisk drop the call. Replies must be in the caller's kind, 20 ms each; a
wideband caller may first get 8 kHz frames (0x10, 320 bytes), for at most 1 s after the UUID,
until the server's first frame in its kind, and only its kind after that. Anything else is
reported as a violation.

EXIT STATUS: 0 no violations, 1 violations found, 2 usage or connection error

LOAD MODE (many calls at once, against avr-core running with `echo-sts` as its agent):
    avr-core simulate --calls N [--seconds S] [--addr HOST:PORT] [--rate HZ] [--ramp-ms M]
                      [--echo-delay-ms D] [--show K]
    --calls N          concurrent calls (at most 10000)
    --rate HZ          the callers' rate, as above (default 8000); slin
    --seconds S        marked caller audio per call (default 10); then silence for the echo
                       delay + 1 s so the last echoes come back, then the caller closes
    --ramp-ms M        spread the call starts over M ms (default 1000)
    --echo-delay-ms D  the agent's delay (echo-sts --delay-ms; default 200), taken out of the
                       round trip
    --show K           list at most K calls (failed first, then the worst paced; default 20)
  Every caller frame carries its sequence number in its samples, so each echo is matched to
  the frame it repeats: the report gives pacing at the caller, the round trip without the
  agent's delay, frames never echoed, unexpected hangups and protocol violations, per call
  and in aggregate. Exit 0 when all calls were clean, 1 otherwise, 2 on a usage error.
";

/// What `avr-core simulate` runs.
#[derive(Debug)]
pub enum Command {
    /// One call; `record` is where to write the audio that came back.
    Call {
        opts: SimOptions,
        record: Option<PathBuf>,
    },
    /// `--calls N`: many marked calls at once; `show` caps the per-call lines.
    Load { opts: LoadOptions, show: usize },
}

/// The flags after `simulate`. `--calls` anywhere selects load mode, with its own flags.
pub fn parse_args(args: &[String]) -> Result<Parsed<Command>, UsageError> {
    if args
        .iter()
        .any(|a| a == "--calls" || a.starts_with("--calls="))
    {
        parse_load(args)
    } else {
        parse_call(args)
    }
}

/// Runs the command and prints its report. Exit 0 = no violations (load mode: every call
/// clean), 1 = violations or failed calls; an `Err` is a call that could not be placed or a
/// recording that could not be written (`main` exits 2 for those, as documented).
pub fn run(command: Command) -> Result<ExitCode, SimError> {
    let clean = match command {
        Command::Call { opts, record } => {
            let report = run_call(&opts)?;
            print!("{}", report.summary());
            if let Some(path) = record {
                let wav = wav::wav_bytes(&report.received, report.rate_hz);
                std::fs::write(&path, wav).map_err(|source| SimError::Record {
                    path: path.clone(),
                    source,
                })?;
                println!("  recorded:    {}", path.display());
            }
            report.violations.is_empty()
        }
        Command::Load { opts, show } => {
            println!(
                "placing {} calls to {} over {} ms, {:.1} s of marked audio each{} …",
                opts.calls,
                opts.addr,
                opts.ramp.as_millis(),
                opts.duration.as_secs_f64(),
                match opts.rate_hz {
                    SLIN_RATE_HZ => String::new(),
                    rate => format!(" at {} kHz", khz(rate)),
                }
            );
            let report = run_load(&opts);
            print!("{}", report.text(show));
            report.summary().clean()
        }
    };
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `--tone`, `--wav` or `--raw` as given: read once the whole line (and so the rate) is known.
enum AudioChoice<'a> {
    Tone(&'a str),
    Wav(&'a str),
    Raw(&'a str),
}

fn parse_call(args: &[String]) -> Result<Parsed<Command>, UsageError> {
    let mut addr = DEFAULT_ADDR;
    let mut uuid = None;
    let mut audio: Option<(&str, AudioChoice)> = None;
    let mut seconds = 5.0;
    let mut rate_hz = SLIN_RATE_HZ;
    let mut codec = SimCodec::Slin;
    let mut dtmf = Vec::new();
    let mut record = None;
    let mut end = EndMode::Close;

    let mut flags = Flags::new(args);
    while let Some(flag) = flags.next_arg() {
        match flag {
            _ if is_help(flag) => return Ok(Parsed::Help),
            "--addr" => addr = flags.value("HOST:PORT")?,
            "--uuid" => {
                uuid = Some(flags.value_as(
                    "a UUID (8-4-4-4-12 hex digits, e.g. 1b4e28ba-2fa1-11d2-883f-0016d3cca427)",
                    |v| CallId::parse(v).map(|id| *id.as_bytes()),
                )?)
            }
            "--tone" | "--wav" | "--raw" => {
                if let Some((other, _)) = audio {
                    return Err(UsageError::Invalid(format!(
                        "{flag} and {other} both choose the audio; give one of --tone, --wav, --raw"
                    )));
                }
                let choice = match flag {
                    "--tone" => AudioChoice::Tone(flags.value("a frequency in Hz")?),
                    "--wav" => AudioChoice::Wav(flags.value("a WAV file")?),
                    _ => AudioChoice::Raw(flags.value("a raw s16le file")?),
                };
                audio = Some((flag, choice));
            }
            "--seconds" => {
                seconds = flags.value_as("a positive number of seconds (e.g. 5 or 2.5)", |v| {
                    parse_seconds(v).filter(|s| *s > 0.0)
                })?
            }
            "--rate" => rate_hz = rates::caller_rate(&mut flags)?,
            "--codec" => {
                codec = flags.value_as("one of slin, ulaw, alaw", |v| {
                    match v.to_ascii_lowercase().as_str() {
                        "slin" => Some(SimCodec::Slin),
                        "ulaw" | "mulaw" => Some(SimCodec::Ulaw),
                        "alaw" => Some(SimCodec::Alaw),
                        _ => None,
                    }
                })?
            }
            "--dtmf" => dtmf.extend(parse_dtmf(flags.value("OFFSET:DIGIT[,OFFSET:DIGIT]")?)?),
            "--record" => record = Some(PathBuf::from(flags.value("a WAV file to write")?)),
            "--end" => {
                end = flags.value_as("one of close, reset, await", |v| match v {
                    "close" => Some(EndMode::Close),
                    "reset" => Some(EndMode::Reset),
                    "await" => Some(EndMode::AwaitHangup(CLI_AWAIT)),
                    _ => None,
                })?
            }
            _ => return Err(flags.unknown("")),
        }
    }

    if codec != SimCodec::Slin && rate_hz != SLIN_RATE_HZ {
        return Err(UsageError::Invalid(format!(
            "--codec {}: G.711 is 8 kHz audio, so it cannot come at --rate {rate_hz}; a wideband \
             caller sends slin (leave out --codec)",
            codec.name()
        )));
    }
    let addr = resolve(addr)?;
    let duration = Duration::from_secs_f64(seconds);
    let last_offset = match end {
        EndMode::AwaitHangup(wait) => duration + wait,
        _ => duration,
    };
    if let Some((at, digit)) = dtmf.iter().find(|(at, _)| *at >= last_offset) {
        return Err(UsageError::Invalid(format!(
            "--dtmf: digit {digit} at {} s falls after the call ends (--seconds {seconds})",
            at.as_secs_f64()
        )));
    }
    let mut opts = SimOptions::new(addr);
    if let Some(uuid) = uuid {
        opts.uuid = uuid;
    }
    opts.audio = match audio {
        Some((_, choice)) => audio_source(choice, rate_hz)?,
        None => AudioSource::Tone {
            hz: DEFAULT_TONE_HZ,
            amplitude: CLI_TONE_AMPLITUDE,
        },
    };
    opts.duration = duration;
    opts.rate_hz = rate_hz;
    opts.codec = codec;
    opts.dtmf = dtmf;
    opts.end = end;
    Ok(Parsed::Run(Command::Call { opts, record }))
}

/// The caller's audio at `rate_hz`: a tone below half the rate, or a file at that rate.
fn audio_source(choice: AudioChoice, rate_hz: u32) -> Result<AudioSource, UsageError> {
    let samples = match choice {
        AudioChoice::Tone(value) => {
            let nyquist = f64::from(rate_hz) / 2.0;
            let hz = value
                .parse::<f64>()
                .ok()
                .filter(|hz| *hz > 0.0 && *hz < nyquist)
                .ok_or_else(|| UsageError::BadValue {
                    flag: "--tone".into(),
                    value: value.into(),
                    expected: format!(
                        "a frequency between 0 and {nyquist} Hz ({} kHz audio)",
                        khz(rate_hz)
                    ),
                })?;
            return Ok(AudioSource::Tone {
                hz,
                amplitude: CLI_TONE_AMPLITUDE,
            });
        }
        AudioChoice::Wav(path) => wav::load_wav(&PathBuf::from(path), rate_hz)
            .map_err(|e| UsageError::Invalid(format!("--wav: {e}")))?,
        AudioChoice::Raw(path) => wav::load_raw(&PathBuf::from(path), rate_hz)
            .map_err(|e| UsageError::Invalid(format!("--raw: {e}")))?,
    };
    Ok(AudioSource::Pcm(Arc::new(samples)))
}

fn parse_load(args: &[String]) -> Result<Parsed<Command>, UsageError> {
    let mut addr = DEFAULT_ADDR;
    let mut calls = 0;
    let mut rate_hz = SLIN_RATE_HZ;
    let mut seconds = 10.0;
    let mut ramp_ms = 1000;
    let mut delay_ms = 200;
    let mut show = 20;
    let max_delay_ms = echo_sts::MAX_DELAY.as_millis() as u64;
    let mut flags = Flags::new(args);
    while let Some(flag) = flags.next_arg() {
        match flag {
            _ if is_help(flag) => return Ok(Parsed::Help),
            "--addr" => addr = flags.value("HOST:PORT")?,
            "--calls" => calls = flags.number("a number of calls", MAX_LOAD_CALLS)?,
            "--rate" => rate_hz = rates::caller_rate(&mut flags)?,
            "--seconds" => {
                let expected = format!(
                    "a number of seconds between 0 and {} (frame numbers must fit the marker)",
                    MAX_MARKED.as_secs()
                );
                seconds = flags.value_as(&expected, |v| {
                    parse_seconds(v).filter(|s| *s > 0.0 && *s <= MAX_MARKED.as_secs_f64())
                })?;
            }
            "--ramp-ms" => ramp_ms = flags.number("milliseconds", MAX_RAMP_MS)?,
            "--echo-delay-ms" => delay_ms = flags.number("milliseconds", max_delay_ms)?,
            "--show" => show = flags.number("a number of calls", MAX_LOAD_CALLS)?,
            _ => return Err(flags.unknown(
                "load mode takes --calls, --seconds, --addr, --rate, --ramp-ms, --echo-delay-ms, \
                 --show",
            )),
        }
    }
    if calls == 0 {
        return Err(UsageError::Invalid("--calls: give at least 1 call".into()));
    }
    let mut opts = LoadOptions::new(
        resolve(addr)?,
        calls as usize,
        Duration::from_secs_f64(seconds),
    );
    opts.rate_hz = rate_hz;
    opts.ramp = Duration::from_millis(ramp_ms);
    opts.echo_delay = Duration::from_millis(delay_ms);
    Ok(Parsed::Run(Command::Load {
        opts,
        show: show as usize,
    }))
}

/// `--addr`: the first address `HOST:PORT` resolves to.
fn resolve(addr: &str) -> Result<SocketAddr, UsageError> {
    let mut resolved = addr.to_socket_addrs().map_err(|e| {
        UsageError::Invalid(format!(
            "--addr: cannot resolve {addr:?} ({e}); expected HOST:PORT, e.g. {DEFAULT_ADDR}"
        ))
    })?;
    resolved
        .next()
        .ok_or_else(|| UsageError::Invalid(format!("--addr: {addr:?} resolves to no address")))
}

/// Finite, non-negative, and small enough for a `Duration` (a day is plenty for a test call).
fn parse_seconds(s: &str) -> Option<f64> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && (0.0..=86_400.0).contains(v))
}

/// `1.5:5,2.0:#` → digits at offsets (seconds from the UUID). Lowercase a-d are accepted.
fn parse_dtmf(arg: &str) -> Result<Vec<(Duration, char)>, UsageError> {
    arg.split(',')
        .map(|item| {
            let bad = |why: &str| {
                UsageError::Invalid(format!(
                    "--dtmf: {item:?} {why}; expected OFFSET:DIGIT like 1.5:5, digits 0-9 * # A-D"
                ))
            };
            let (offset, digit) = item
                .trim()
                .split_once(':')
                .ok_or_else(|| bad("has no ':'"))?;
            let offset =
                parse_seconds(offset).ok_or_else(|| bad("has no valid offset in seconds"))?;
            let mut chars = digit.chars();
            let digit = match (chars.next(), chars.next()) {
                (Some(c), None) if is_dtmf(c.to_ascii_uppercase()) => c.to_ascii_uppercase(),
                _ => return Err(bad("has no valid digit")),
            };
            Ok((Duration::from_secs_f64(offset), digit))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::audiosocket;
    use crate::tools::simulate::fake_server::{
        echo_frames, fake_server, frame, read_frame, read_hello,
    };
    use crate::tools::simulate::SAMPLES_PER_FRAME;
    use std::io::Write as _;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    /// Runs a command line that parses; its exit status.
    fn run_line(line: &str) -> ExitCode {
        match parse_args(&args(line)) {
            Ok(Parsed::Run(command)) => run(command).unwrap(),
            other => panic!("{line}: {other:?}"),
        }
    }

    /// The options of a single-call command line.
    fn call(s: &str) -> (SimOptions, Option<PathBuf>) {
        match parse_args(&args(s)).unwrap() {
            Parsed::Run(Command::Call { opts, record }) => (opts, record),
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn dtmf_arguments() {
        assert_eq!(
            parse_dtmf("1.5:5,2.0:#").unwrap(),
            vec![(d(1500), '5'), (d(2000), '#')]
        );
        assert_eq!(parse_dtmf("0:a").unwrap(), vec![(d(0), 'A')]);
        for bad in ["5", "x:5", "1:E", "1:55", "-1:5", "1:"] {
            let e = parse_dtmf(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("--dtmf") && e.contains("0-9 * # A-D"),
                "{bad}: {e}"
            );
        }
        let (opts, _) = call("--dtmf 1:1 --dtmf=0.5:*,2:D --seconds 3");
        assert_eq!(opts.dtmf, [(d(1000), '1'), (d(500), '*'), (d(2000), 'D')]);
        let e = parse_args(&args("--dtmf 6:1")).unwrap_err().to_string();
        assert!(e.contains("after the call ends"), "{e}");
        assert!(parse_args(&args("--dtmf 6:1 --end await")).is_ok());
    }

    #[test]
    fn cli_defaults_and_errors() {
        let (opts, record) = call("");
        assert_eq!(record, None);
        assert_eq!(opts.addr, "127.0.0.1:5001".parse().unwrap());
        assert_eq!(opts.duration, d(5000));
        assert_eq!(opts.codec, SimCodec::Slin);
        assert_eq!(opts.end, EndMode::Close);
        assert!(matches!(opts.audio, AudioSource::Tone { hz, amplitude: 8000 } if hz == 440.0));
        let (opts, record) = call(
            "--addr 127.0.0.1:9 --uuid 1B4E28BA-2FA1-11D2-883F-0016D3CCA427 --seconds 0.25 \
             --codec alaw --end await --record /tmp/x.wav --tone 1000",
        );
        assert_eq!(
            audiosocket::CallId::from_bytes(opts.uuid).to_string(),
            "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
        );
        assert_eq!(opts.duration, d(250));
        assert_eq!(opts.codec, SimCodec::Alaw);
        assert_eq!(opts.end, EndMode::AwaitHangup(CLI_AWAIT));
        assert_eq!(record, Some(PathBuf::from("/tmp/x.wav")));
        assert!(matches!(parse_args(&args("--help")), Ok(Parsed::Help)));
        for (line, needle) in [
            ("--seconds", "--seconds needs a value"),
            ("--seconds abc", "--seconds: \"abc\""),
            ("--seconds 0", "positive number"),
            (
                "--codec g729",
                "--codec: \"g729\" is not one of slin, ulaw, alaw",
            ),
            (
                "--end hang",
                "--end: \"hang\" is not one of close, reset, await",
            ),
            ("--uuid 123", "--uuid: \"123\" is not a UUID"),
            ("--tone 5000", "--tone"),
            ("--tone 440 --raw x", "give one of --tone, --wav, --raw"),
            (
                "--wav /nonexistent/x.wav",
                "--wav: /nonexistent/x.wav: cannot read it",
            ),
            ("--addr nonsense", "--addr"),
            ("--bogus", "unknown option \"--bogus\""),
        ] {
            let e = parse_args(&args(line)).unwrap_err().to_string();
            assert!(e.contains(needle), "{line}: {e}");
        }
    }

    #[test]
    fn cli_runs_a_call_and_records_it() {
        let (addr, server) = fake_server(|mut s| {
            read_hello(&mut s);
            let mut digits = Vec::new();
            while let Some((kind, payload)) = read_frame(&mut s) {
                match kind {
                    0x10 => s.write_all(&frame(&payload)).unwrap(),
                    _ => digits.push((kind, payload)),
                }
            }
            digits
        });
        let path = std::env::temp_dir().join(format!("sim-record-{}.wav", std::process::id()));
        let line = format!(
            "--addr {addr} --seconds 0.1 --dtmf 0.05:7 --record {}",
            path.display()
        );
        assert_eq!(run_line(&line), ExitCode::SUCCESS);
        assert_eq!(server.join().unwrap(), [(0x03, b"7".to_vec())]);
        let recorded = wav::parse_wav(&std::fs::read(&path).unwrap(), 8000).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(recorded.len(), 5 * SAMPLES_PER_FRAME);
        assert!(
            recorded.iter().any(|&s| s != 0),
            "the 440 Hz tone came back"
        );
        assert!(parse_args(&args("--codec opus")).is_err());
    }

    #[test]
    fn load_mode_flags_and_errors() {
        let (opts, show) = match parse_args(&args(
            "--calls=3 --seconds 1.5 --addr 127.0.0.1:9 --ramp-ms 0 --echo-delay-ms 50 --show 2",
        )) {
            Ok(Parsed::Run(Command::Load { opts, show })) => (opts, show),
            other => panic!("{other:?}"),
        };
        assert_eq!(opts.calls, 3);
        assert_eq!(opts.duration, d(1500));
        assert_eq!(opts.addr, "127.0.0.1:9".parse().unwrap());
        assert_eq!((opts.ramp, opts.echo_delay, show), (d(0), d(50), 2));
        let defaults = match parse_args(&args("--calls 1")) {
            Ok(Parsed::Run(Command::Load { opts, show })) => (opts, show),
            other => panic!("{other:?}"),
        };
        assert_eq!(defaults.0.duration, d(10_000));
        assert_eq!((defaults.0.ramp, defaults.0.echo_delay), (d(1000), d(200)));
        assert_eq!(defaults.1, 20);
        assert!(matches!(
            parse_args(&args("--calls 2 --help")),
            Ok(Parsed::Help)
        ));
        for (line, needle) in [
            ("--calls 0", "--calls: give at least 1 call"),
            (
                "--calls 10001",
                "--calls: \"10001\" is not a number of calls (0 to 10000)",
            ),
            ("--calls 2 --seconds 700", "between 0 and 600"),
            ("--calls 2 --echo-delay-ms 60001", "(0 to 60000)"),
            (
                "--calls 2 --tone 440",
                "unknown option \"--tone\" (load mode takes --calls",
            ),
            ("--calls", "--calls needs a value"),
        ] {
            let e = parse_args(&args(line)).unwrap_err().to_string();
            assert!(e.contains(needle), "{line}: {e}");
        }
    }

    #[test]
    fn rate_chooses_the_callers_kind_and_bounds_its_audio() {
        assert_eq!(call("").0.rate_hz, 8_000);
        let (opts, _) = call("--rate 16000");
        assert_eq!((opts.rate_hz, opts.codec), (16_000, SimCodec::Slin));
        let (opts, _) = call("--tone 20000 --rate=44100");
        assert_eq!(opts.rate_hz, 44_100);
        assert!(matches!(opts.audio, AudioSource::Tone { hz, .. } if hz == 20000.0));
        let dir = std::env::temp_dir().join(format!("sim-rate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let wide = dir.join("wide.wav");
        std::fs::write(&wide, wav::wav_bytes(&[1, 0, 2, 0, 3, 0], 16_000)).unwrap();
        let (opts, _) = call(&format!("--wav {} --rate 16000", wide.display()));
        assert!(matches!(&opts.audio, AudioSource::Pcm(pcm) if **pcm == [1, 2, 3]));
        let raw = dir.join("wide.raw");
        std::fs::write(&raw, [1, 0, 2]).unwrap();
        for (line, needle) in [
            (
                "--rate 11025".to_string(),
                "--rate: \"11025\" is not an AudioSocket rate in Hz: 8000, 12000, 16000, 24000, \
                 32000, 44100, 48000, 96000 or 192000",
            ),
            (
                "--rate 16k".into(),
                "--rate: \"16k\" is not an AudioSocket rate",
            ),
            ("--rate".into(), "--rate needs a value"),
            (
                "--rate 16000 --codec ulaw".into(),
                "--codec ulaw: G.711 is 8 kHz audio, so it cannot come at --rate 16000",
            ),
            (
                "--codec alaw --rate 48000".into(),
                "--codec alaw: G.711 is 8 kHz audio, so it cannot come at --rate 48000",
            ),
            (
                "--tone 5000".into(),
                "--tone: \"5000\" is not a frequency between 0 and 4000 Hz (8 kHz audio)",
            ),
            (
                "--rate 16000 --tone 8000".into(),
                "--tone: \"8000\" is not a frequency between 0 and 8000 Hz (16 kHz audio)",
            ),
            (
                format!("--wav {}", wide.display()),
                "wide.wav: is a mono 16000 Hz 16-bit PCM WAV; send it with --rate 16000",
            ),
            (
                format!("--rate 24000 --raw {}", raw.display()),
                "raw audio must be 24 kHz 16-bit little-endian mono",
            ),
        ] {
            let e = parse_args(&args(&line)).unwrap_err().to_string();
            assert!(e.contains(needle), "{line}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();

        let load = |line: &str| match parse_args(&args(line)) {
            Ok(Parsed::Run(Command::Load { opts, .. })) => opts,
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(load("--calls 2").rate_hz, 8_000);
        assert_eq!(load("--calls 2 --rate 24000").rate_hz, 24_000);
        let e = parse_args(&args("--calls 2 --rate 8001"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not an AudioSocket rate"), "{e}");
    }

    #[test]
    fn cli_records_a_wideband_call_at_its_rate() {
        let (addr, server) = fake_server(|mut s| {
            read_hello(&mut s);
            echo_frames(&mut s)
        });
        let path = std::env::temp_dir().join(format!("sim-record16-{}.wav", std::process::id()));
        let line = format!(
            "--addr {addr} --rate 16000 --seconds 0.1 --record {}",
            path.display()
        );
        assert_eq!(run_line(&line), ExitCode::SUCCESS);
        assert!(server.join().unwrap().iter().all(|&f| f == (0x12, 640)));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let recorded = wav::parse_wav(&bytes, 16_000).unwrap();
        assert_eq!(recorded.len(), 5 * 320);
        assert!(recorded.iter().any(|&s| s != 0), "the tone came back");
    }
}
