//! Pipeline mode (issue #12): turn latency through ASR → LLM → TTS.

use avr_core::sys::lock;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use avr_core::tools::demo::HookSink;

use crate::child::{binary, cpu_percent, Avr, Sample};
use crate::report::{git_commit, machine, verdict};
use crate::tap::{ms, pct};

/// Pipeline calls by default: the 100.
pub const PIPELINE_CALLS: usize = 100;
/// Each pipeline call: the caller speaks at 0.5 s and 4.5 s, then listens until 10 s.
pub const PIPELINE_CALL: Duration = Duration::from_secs(10);
pub const TURN_STARTS: [Duration; 2] = [Duration::from_millis(500), Duration::from_millis(4500)];
/// A little more than the fake ASR's second of non-silent audio per transcript.
pub const TURN_SPEECH: Duration = Duration::from_millis(1100);
/// Short, so each answer (1.5 s of audio) is over before the caller's next turn.
pub const PIPELINE_ANSWER: &str = "You said: {message}. Goodbye!";
/// Calls start this far apart: setup stays out of the turns' latencies.
pub const PIPELINE_RAMP_STEP: Duration = Duration::from_millis(10);

/// What the pipeline section reports.
pub struct PipelineRun {
    pub calls: usize,
    pub failed: usize,
    pub turns: usize,
    /// Transcript written → first loud frame at the caller, µs, ascending.
    pub total: Vec<u32>,
    /// Transcript written → LLM request received by the fake.
    pub to_llm: Vec<u32>,
    /// LLM request received → first sentence's TTS request received.
    pub llm_to_tts: Vec<u32>,
    /// First TTS request received → first loud frame at the caller.
    pub tts_to_caller: Vec<u32>,
    pub cpu: f64,
    pub idle: Sample,
    pub peak: Sample,
    /// `/proc/loadavg` as the calls began: how busy the shared machine was.
    pub load: String,
}

/// `calls` concurrent pipeline calls against one in-process EchoPipeline answering as fast as
/// it can (no LLM gaps, no TTS first-byte delay), avr-core sampled over the calls.
pub fn pipeline_bench(calls: usize) -> PipelineRun {
    use avr_core::tools::demo::pipeline::{loud_arrivals, speech};
    use avr_core::tools::echo_pipeline::{EchoPipeline, PipelineEvent, PipelineOptions};
    use avr_core::tools::simulate::{run_call, AudioSource, EndMode, SimOptions};

    let services = EchoPipeline::start(
        ([127, 0, 0, 1], 0).into(),
        PipelineOptions {
            answer: Some(PIPELINE_ANSWER.into()),
            llm_gap: Duration::ZERO,
            tts_first_byte: Duration::ZERO,
            ..PipelineOptions::default()
        },
    )
    .expect("start the pipeline services");
    // Each event stamped as this process sees it (the transcript carries its own time).
    let events: Arc<Mutex<Vec<(Instant, PipelineEvent)>>> = Arc::default();
    let rx = services.events();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = {
        let (events, stop) = (events.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(e) = rx.recv_timeout(Duration::from_millis(50)) {
                    let at = match &e {
                        PipelineEvent::Transcript { at, .. } => *at,
                        _ => Instant::now(),
                    };
                    lock(&events).push((at, e));
                }
            }
        })
    };
    let sink = HookSink::start(|_, _| {}).expect("start the webhook receiver");
    let dead_letters =
        std::env::temp_dir().join(format!("avr-bench-pipeline-{}.jsonl", std::process::id()));
    let [asr, llm, tts] = services.urls();
    let avr = Avr::start_with("", &sink.url(), &dead_letters, |cmd| {
        cmd.env_remove("STS_URL")
            .env("ASR_URL", &asr)
            .env("LLM_URL", &llm)
            .env("TTS_URL", &tts);
    });
    thread::sleep(Duration::from_millis(500));
    let idle = avr.sample();

    let mut audio = Vec::new();
    for at in TURN_STARTS {
        let lead = at.saturating_sub(Duration::from_millis(audio.len() as u64 / 8));
        audio.extend(speech(lead, TURN_SPEECH));
    }
    let audio = Arc::new(audio);
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let start = Instant::now();
    let callers: Vec<_> = (0..calls)
        .map(|i| {
            let mut opts = SimOptions::new(avr.addr);
            opts.audio = AudioSource::Pcm(audio.clone());
            opts.duration = PIPELINE_CALL;
            opts.end = EndMode::Close;
            let begin = start + PIPELINE_RAMP_STEP * i as u32;
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    thread::sleep(begin.saturating_duration_since(Instant::now()));
                    run_call(&opts)
                })
                .expect("start a caller")
        })
        .collect();
    // Steady state: all calls up, until shortly before the first ones end.
    let ramp = PIPELINE_RAMP_STEP * calls as u32;
    thread::sleep(ramp + Duration::from_millis(200));
    let first = avr.sample();
    let mut peak = first;
    let mut last = first;
    let window_end = start + PIPELINE_CALL - Duration::from_millis(300);
    while Instant::now() + Duration::from_millis(500) < window_end {
        thread::sleep(Duration::from_millis(500));
        last = avr.sample();
        peak.rss_kib = peak.rss_kib.max(last.rss_kib);
        peak.threads = peak.threads.max(last.threads);
    }
    let over = last.at.unwrap().duration_since(first.at.unwrap());
    let cpu = cpu_percent(last.cpu_ticks - first.cpu_ticks, over);
    let reports: Vec<_> = callers
        .into_iter()
        .map(|c| c.join().expect("a caller panicked"))
        .collect();
    thread::sleep(Duration::from_millis(500)); // the last events of the calls
    stop.store(true, Ordering::SeqCst);
    let _ = collector.join();
    drop(avr);
    drop(services);
    let _ = std::fs::remove_file(&dead_letters);

    let events = std::mem::take(&mut *lock(&events));
    let mut by_call: HashMap<String, Vec<(Instant, PipelineEvent)>> = HashMap::new();
    for (at, e) in events {
        let uuid = match &e {
            PipelineEvent::Transcript { uuid, .. }
            | PipelineEvent::LlmRequest { uuid, .. }
            | PipelineEvent::TtsRequest { uuid, .. } => uuid.clone(),
            _ => continue,
        };
        by_call.entry(uuid).or_default().push((at, e));
    }
    let mut run = PipelineRun {
        calls,
        failed: 0,
        turns: 0,
        total: Vec::new(),
        to_llm: Vec::new(),
        llm_to_tts: Vec::new(),
        tts_to_caller: Vec::new(),
        cpu,
        idle,
        peak,
        load,
    };
    let us = |a: Instant, b: Instant| b.saturating_duration_since(a).as_micros() as u32;
    for report in reports {
        let Ok(report) = report else {
            run.failed += 1;
            continue;
        };
        let mut events = by_call.remove(&report.uuid).unwrap_or_default();
        events.sort_by_key(|(at, _)| *at);
        let loud: Vec<Instant> = loud_arrivals(&report)
            .into_iter()
            .map(|d| report.started + d)
            .collect();
        let said: Vec<Instant> = events
            .iter()
            .filter(|(_, e)| matches!(e, PipelineEvent::Transcript { .. }))
            .map(|(at, _)| *at)
            .collect();
        if !report.violations.is_empty() || said.len() != TURN_STARTS.len() {
            run.failed += 1;
        }
        for &t in &said {
            let after = |want: fn(&PipelineEvent) -> bool, from: Instant| {
                events
                    .iter()
                    .find(|(at, e)| *at >= from && want(e))
                    .map(|(at, _)| *at)
            };
            let asked = after(|e| matches!(e, PipelineEvent::LlmRequest { .. }), t);
            let spoken =
                asked.and_then(|a| after(|e| matches!(e, PipelineEvent::TtsRequest { .. }), a));
            let heard = loud.iter().copied().find(|&a| a > t);
            let (Some(asked), Some(spoken), Some(heard)) = (asked, spoken, heard) else {
                continue;
            };
            run.turns += 1;
            run.total.push(us(t, heard));
            run.to_llm.push(us(t, asked));
            run.llm_to_tts.push(us(asked, spoken));
            run.tts_to_caller.push(us(spoken, heard));
        }
    }
    for v in [
        &mut run.total,
        &mut run.to_llm,
        &mut run.llm_to_tts,
        &mut run.tts_to_caller,
    ] {
        v.sort_unstable();
    }
    println!(
        "pipeline: {} calls, {} failed, {} turns measured; transcript→heard p50 {} p99 {} max {} ms; \
         avr-core CPU {:.0}%, RSS/call {:.0} KiB",
        run.calls,
        run.failed,
        run.turns,
        ms(pct(&run.total, 50.0)),
        ms(pct(&run.total, 99.0)),
        ms(pct(&run.total, 100.0)),
        run.cpu,
        run.rss_per_call()
    );
    run
}

impl PipelineRun {
    pub fn rss_per_call(&self) -> f64 {
        self.peak.rss_kib.saturating_sub(self.idle.rss_kib) as f64 / self.calls as f64
    }
}

/// The "## Pipeline mode" section, with its own command, date and commit: it may be
/// re-run alone (`AVR_BENCH_ONLY=pipeline`).
pub fn pipeline_section(r: &PipelineRun) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Pipeline mode\n");
    let _ = writeln!(
        md,
        "- command: `AVR_BENCH_ONLY=pipeline cargo bench --bench load` (`AVR_BENCH_PIPELINE_CALLS` \
         = {}); binary {}; {}; commit {}",
        r.calls,
        binary().display(),
        avr_core::time::iso8601_millis(SystemTime::now()),
        git_commit()
    );
    let _ = writeln!(
        md,
        "- machine: {}, shared with other builds and tests while it ran (load average {} as the \
         calls began): the figures are bounds, not speeds",
        machine(),
        r.load
    );
    let _ = writeln!(
        md,
        "- setup: {} concurrent calls, started {} ms apart, against one in-process \
         `EchoPipeline` (llm_gap 0, tts_first_byte 0: the services answer as fast as they can; \
         answer \"{}\", two sentences); each call {} s, the caller speaking a faded 1 kHz tone for \
         {} ms at {} s and {} s (two turns), silent otherwise; avr-core the release build as a \
         child, webhooks to a local receiver\n",
        r.calls,
        PIPELINE_RAMP_STEP.as_millis(),
        PIPELINE_ANSWER,
        PIPELINE_CALL.as_secs(),
        TURN_SPEECH.as_millis(),
        TURN_STARTS[0].as_secs_f64(),
        TURN_STARTS[1].as_secs_f64(),
    );
    let _ = writeln!(
        md,
        "| per turn ({} turns, {} calls, {} failed) | p50 | p99 | max |",
        r.turns, r.calls, r.failed
    );
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for (what, v) in [
        (
            "transcript written → first loud answer frame at the caller",
            &r.total,
        ),
        (
            "of which: transcript written → LLM request received",
            &r.to_llm,
        ),
        (
            "of which: LLM request received → first sentence's TTS request received",
            &r.llm_to_tts,
        ),
        (
            "of which: TTS request received → first loud frame at the caller",
            &r.tts_to_caller,
        ),
    ] {
        let _ = writeln!(
            md,
            "| {what} | {} ms | {} ms | {} ms |",
            ms(pct(v, 50.0)),
            ms(pct(v, 99.0)),
            ms(pct(v, 100.0))
        );
    }
    let p99 = pct(&r.total, 99.0);
    let _ = writeln!(
        md,
        "\n- avr-core over the calls: CPU {:.0}% of one core ({:.3}% per call), RSS {:.1} MiB \
         peak ({:.0} KiB per call over idle {} KiB), {} threads peak",
        r.cpu,
        r.cpu / r.calls as f64,
        r.peak.rss_kib as f64 / 1024.0,
        r.rss_per_call(),
        r.idle.rss_kib,
        r.peak.threads
    );
    let _ = writeln!(
        md,
        "- the 20 ms playout grid: agent audio leaves on the call's clock tick, so the first \
         frame of an answer waits 0–20 ms (10 ms on average) for the next tick after its audio \
         arrives; that wait is inside the last row and the total.\n\
         - the services' own time: the fake answers at once (no configured delay), so its time \
         is its socket work only, which the event stamps cannot separate from avr-core's: the \
         rows (stamped when this process saw each event, a channel hop after the fake) hold \
         both, and the total is an upper bound on avr-core's added latency.\n\
         - target (issue #12): p99 ≤ 30 ms beyond the services' own time: {} ms measured, {}",
        ms(p99),
        verdict(p99 <= Duration::from_millis(30))
    );
    md.push('\n');
    md
}

/// `old` with its "## Pipeline mode" section replaced by `section` (or inserted before
/// "## Analysis", or appended).
pub fn replace_section(old: &str, section: &str) -> String {
    const HEAD: &str = "## Pipeline mode\n";
    if let Some(at) = old.find(HEAD) {
        let rest = &old[at + HEAD.len()..];
        let end = rest
            .find("\n## ")
            .map_or(old.len(), |e| at + HEAD.len() + e + 1);
        return format!("{}{section}{}", &old[..at], &old[end..]);
    }
    match old.find("\n## Analysis") {
        Some(at) => format!("{}\n{section}{}", &old[..at], &old[at + 1..]),
        None => format!("{old}\n{section}"),
    }
}
