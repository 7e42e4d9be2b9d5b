//! The command line of `avr-core echo-pipeline`: its flags, its usage, and the loop that
//! serves until the process is stopped.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use super::{EchoPipeline, PipelineOptions, DEFAULT_LISTEN, MAX_DELAY};
use crate::cli::{is_help, Flags, Parsed, UsageError};

/// Blocks forever serving as `command` says.
pub fn run(command: PipelineCommand) -> io::Result<()> {
    let mut server = EchoPipeline::start(command.listen, command.opts)?;
    let [asr, llm, tts] = server.urls();
    log::info!("Echo pipeline listening on {}", server.local_addr());
    println!("ASR_URL={asr} LLM_URL={llm} TTS_URL={tts}");
    let accept = server
        .accept_thread
        .take()
        .expect("a started server accepts");
    accept
        .join()
        .map_err(|_| io::Error::other("the echo pipeline accept loop panicked"))
}

/// Usage of `avr-core echo-pipeline`.
pub const USAGE: &str = "\
avr-core echo-pipeline — fake ASR, LLM and TTS services for pipeline mode, on one port

USAGE:
    avr-core echo-pipeline [--listen ADDR] [--answer TEXT] [--transcript-every MS]
                           [--tts-first-byte MS] [--tts-jitter MS] [--llm-first-byte MS]

    --listen ADDR          address and port to listen on (default 127.0.0.1:6100)
    --answer TEXT          the LLM's answer; {message} is replaced by the caller's words
                           (default \"You said: {message}. This is the echo pipeline
                           speaking. Goodbye for now!\")
    --transcript-every MS  a transcript per this much non-silent caller audio (default 1000)
    --tts-first-byte MS    TTS delay before the first audio byte (default 0)
    --tts-jitter MS        plus a random delay up to this, per sentence (default 0)
    --llm-first-byte MS    LLM delay before the first byte (default 0)

Every delay is at most 60000 ms. At start it prints the three URLs to give avr-core:
    ASR_URL=http://…/speech-to-text-stream LLM_URL=http://…/prompt-stream
    TTS_URL=http://…/text-to-speech-stream
";

/// What `avr-core echo-pipeline` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineCommand {
    pub listen: SocketAddr,
    pub opts: PipelineOptions,
}

/// Parses the flags after `echo-pipeline`.
pub fn parse_args(args: &[String]) -> Result<Parsed<PipelineCommand>, UsageError> {
    let mut listen = DEFAULT_LISTEN;
    let mut opts = PipelineOptions::default();
    let mut flags = Flags::new(args);
    let max = MAX_DELAY.as_millis() as u64;
    while let Some(flag) = flags.next_arg() {
        let millis =
            |flags: &mut Flags| flags.number("milliseconds", max).map(Duration::from_millis);
        match flag {
            _ if is_help(flag) => return Ok(Parsed::Help),
            "--listen" => listen = flags.parse("an address and port such as 0.0.0.0:6100")?,
            "--answer" => opts.answer = Some(flags.value("the answer's text")?.to_owned()),
            "--transcript-every" => {
                let expected = format!("milliseconds (1 to {max})");
                opts.transcript_every = flags.value_as(&expected, |v| {
                    let n: u64 = v.parse().ok()?;
                    (1..=max).contains(&n).then(|| Duration::from_millis(n))
                })?;
            }
            "--tts-first-byte" => opts.tts_first_byte = millis(&mut flags)?,
            "--tts-jitter" => opts.tts_jitter = millis(&mut flags)?,
            "--llm-first-byte" => opts.llm_first_byte = millis(&mut flags)?,
            _ => {
                return Err(flags.unknown(
                    "expected --listen, --answer, --transcript-every, --tts-first-byte, \
                     --tts-jitter, --llm-first-byte",
                ))
            }
        }
    }
    Ok(Parsed::Run(PipelineCommand { listen, opts }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parse_args_defaults_flags_and_errors() {
        let run = |line: &str| match parse_args(&args(line)) {
            Ok(Parsed::Run(command)) => command,
            other => panic!("{line}: {other:?}"),
        };
        let command = run("");
        assert_eq!(command.listen, "127.0.0.1:6100".parse().unwrap());
        assert_eq!(command.opts, PipelineOptions::default());
        let command = run(
            "--listen 0.0.0.0:7000 --answer=Hi --transcript-every 500 --tts-first-byte 20 \
             --tts-jitter=30 --llm-first-byte 40",
        );
        assert_eq!(command.listen, "0.0.0.0:7000".parse().unwrap());
        let opts = command.opts;
        assert_eq!(opts.answer.as_deref(), Some("Hi"));
        assert_eq!(opts.transcript_every, Duration::from_millis(500));
        assert_eq!(opts.tts_first_byte, Duration::from_millis(20));
        assert_eq!(opts.tts_jitter, Duration::from_millis(30));
        assert_eq!(opts.llm_first_byte, Duration::from_millis(40));
        assert_eq!(parse_args(&args("--help")), Ok(Parsed::Help));
        for (bad, flag) in [
            ("--listen 127.0.0.1", "--listen"),
            ("--transcript-every 0", "--transcript-every"),
            ("--tts-jitter 60001", "--tts-jitter"),
            ("--llm-first-byte", "--llm-first-byte"),
            ("--answer", "--answer"),
            ("--port 1", "--port"),
        ] {
            let err = parse_args(&args(bad)).unwrap_err().to_string();
            assert!(err.contains(flag), "{bad}: {err}");
        }
    }
}
