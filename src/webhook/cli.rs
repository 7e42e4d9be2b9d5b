//! `avr-core webhooks test|replay [FILE]`: the operator's tools for the receiver.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use serde_json::json;

use super::client::{Client, Message, MAX_ANSWER_BYTES};
use super::dead_letter::{self, DeadLetter, ReplayLock};
use super::{Event, EventKind};
use crate::cli::{is_help, Flags, Parsed, UsageError};
use crate::config::WebhookConfig;

pub const USAGE: &str = "\
USAGE:
    avr-core webhooks test           send one sample call_started event to WEBHOOK_URL with the
                                     real headers and print the receiver's answer (exit 0 on 2xx)
    avr-core webhooks replay [FILE]  send every dead letter in FILE (default:
                                     WEBHOOK_DEAD_LETTER_FILE) once more, with its original
                                     webhook-id; keep only those that still fail (exit 0 if none);
                                     refuses while another replay of FILE runs

Both read only the WEBHOOK_* variables from the environment (STS_URL is not needed).
";

/// What `avr-core webhooks` runs.
#[derive(Debug, PartialEq)]
pub enum Command {
    Test,
    /// Re-send the dead letters in this file, or in `WEBHOOK_DEAD_LETTER_FILE`.
    Replay(Option<PathBuf>),
}

/// Parses the words after `webhooks`.
pub fn parse_args(args: &[String]) -> Result<Parsed<Command>, UsageError> {
    const COMMANDS: &str = "test or replay";
    let mut flags = Flags::new(args);
    let mut command = match flags.next_arg() {
        None => return Err(UsageError::MissingCommand { expected: COMMANDS }),
        Some(arg) if is_help(arg) || arg == "help" => return Ok(Parsed::Help),
        Some("test") => Command::Test,
        Some("replay") => Command::Replay(None),
        Some(word) => {
            return Err(UsageError::UnknownCommand {
                word: word.into(),
                expected: COMMANDS,
            })
        }
    };
    while let Some(arg) = flags.next_arg() {
        match &mut command {
            _ if is_help(arg) => return Ok(Parsed::Help),
            Command::Replay(file @ None) => *file = Some(PathBuf::from(flags.arg())),
            _ => return Err(flags.unknown("")),
        }
    }
    Ok(Parsed::Run(command))
}

/// Runs `command` with the webhook variables from the environment only: the tools run
/// where the server's STS_URL is not set.
pub fn run(command: Command) -> ExitCode {
    let config = match WebhookConfig::from_env() {
        Ok(c) => c,
        Err(e) => return fail(&format!("configuration error: {e}")),
    };
    let Some(client) = Client::new(&config) else {
        return fail("WEBHOOK_URL is not set: there is no receiver to send to");
    };
    match command {
        Command::Test => test(&client),
        Command::Replay(file) => replay(&client, file.unwrap_or(config.dead_letter_file)),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("avr-core webhooks: {message}");
    ExitCode::FAILURE
}

/// Sends a sample `call_started` and prints what came back.
fn test(client: &Client) -> ExitCode {
    let uuid = uuid::Uuid::new_v4().hyphenated().to_string();
    let event = Event::new(&uuid, EventKind::CallStarted, json!({}));
    let msg = Message::new(&uuid, event.kind.as_str(), event.body());
    println!("POST {}", client.masked_url());
    println!("webhook-id: {}", msg.webhook_id);
    println!("{}", msg.body);
    println!();
    match client.send(&msg, client.timeout()) {
        Ok(answer) => {
            println!("HTTP {} {}", answer.status, answer.reason);
            let headers = [
                ("Content-Type", &answer.content_type),
                ("Location", &answer.location),
            ];
            for (name, value) in headers {
                if let Some(value) = value {
                    println!("{name}: {value}");
                }
            }
            if let Some(wait) = answer.retry_after {
                println!("Retry-After: {} s", wait.as_secs());
            }
            println!();
            println!("{}", String::from_utf8_lossy(&answer.body));
            if answer.body.len() as u64 >= MAX_ANSWER_BYTES {
                println!("(answer cut at {MAX_ANSWER_BYTES} bytes)");
            }
            if (200..300).contains(&answer.status) {
                println!("OK: the receiver accepted the event");
                ExitCode::SUCCESS
            } else {
                println!("FAILED: the receiver did not answer 2xx");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            println!("FAILED: {e} (Code: {})", e.code());
            ExitCode::FAILURE
        }
    }
}

/// Re-delivers each dead letter once and rewrites the file with those that still fail.
/// Holds the replay lock for its whole run: a second replay started meanwhile refuses at
/// once, rather than sending every dead letter a second time (docs/webhooks.md §5.7).
fn replay(client: &Client, path: PathBuf) -> ExitCode {
    let _lock = match ReplayLock::take(&path) {
        Ok(lock) => lock,
        Err(e) => return fail(&format!("{}: {e}", path.display())),
    };
    let snapshot = match dead_letter::read(&path) {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot read {}: {e}", path.display())),
    };
    let (mut delivered, mut failing, mut unreadable) = (0usize, 0usize, 0usize);
    let mut keep = Vec::new();
    for line in &snapshot.lines {
        let mut record: DeadLetter = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                // A record torn by a crash mid-write is a line of its own (dead_letter.rs):
                // it is kept for the operator, and the records after it replay as usual.
                println!("kept an unreadable line ({e}): {line}");
                unreadable += 1;
                keep.push(line.clone());
                continue;
            }
        };
        let msg = record.message();
        match client.attempt(&msg, client.timeout()) {
            Ok(answer) => {
                delivered += 1;
                println!(
                    "delivered [{}] {} {}: HTTP {}",
                    msg.uuid, msg.kind, msg.webhook_id, answer.status
                );
            }
            Err(e) => {
                failing += 1;
                println!(
                    "still failing [{}] {} {}: {e} (Code: {})",
                    msg.uuid,
                    msg.kind,
                    msg.webhook_id,
                    e.code()
                );
                record.attempts += 1;
                record.last_error = e.to_string();
                record.failed_at = crate::time::iso8601_millis(SystemTime::now());
                record.url = client.masked_url();
                keep.push(record.to_line());
            }
        }
    }
    if !snapshot.lines.is_empty() {
        match dead_letter::replace(&path, &snapshot, &keep) {
            Ok(0) => {}
            Ok(n) => println!("kept {n} dead letters that arrived during the replay"),
            Err(e) => {
                return fail(&format!(
                    "cannot rewrite {}: {e}; it still holds every dead letter it had, so the \
                     {delivered} delivered ones will be sent again by the next replay",
                    path.display()
                ))
            }
        }
    }
    let mut summary = format!(
        "replayed {}: delivered {delivered}, still failing {failing}",
        delivered + failing
    );
    if unreadable > 0 {
        summary.push_str(&format!(", unreadable lines kept {unreadable}"));
    }
    println!("{summary}");
    if failing == 0 && unreadable == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
