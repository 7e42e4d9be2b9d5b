//! The resampler benchmark: `cargo bench --bench resample`. Prints Markdown tables (for
//! BENCHMARKS.md) comparing converter designs on what issue #11 asks of them:
//! - cost: ns of CPU per 20 ms frame for 8k→16k, 16k→8k, 8k→48k, 48k→8k and 24k→8k (the
//!   best of several runs over a second of speech, pushed frame by frame as a call does),
//!   and heap allocations per frame in steady state (a counting allocator);
//! - quality: image and alias rejection, passband gain, round-trip SNR, delay
//!   (`avr_core::audio::quality`, the same measurements the unit tests assert on).
//!
//! The designs: avr-core's streaming converter with three filter lengths (the shipped
//! `Filter::SPEECH` and one shorter, one longer), and rubato's own chunked resamplers
//! (`Async` sinc with the same filter, `Fft`) fed 20 ms chunks, for comparison.
//!
//! `AVR_BENCH_ROUNDS` (timing runs per cell, default 500) shortens a trial run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use avr_core::audio::quality::{self, Signal};
use avr_core::audio::{Filter, Resampler};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, Fft, FixedAsync, FixedSync, SincInterpolationParameters, SincInterpolationType,
};

/// Counts heap allocations, to show that a converter allocates nothing per frame.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The directions timed: the budget is for 8k ⇄ 16k; the others are the widest
/// AudioSocket rate and a common agent rate.
const DIRECTIONS: [(u32, u32); 5] = [
    (8_000, 16_000),
    (16_000, 8_000),
    (8_000, 48_000),
    (48_000, 8_000),
    (24_000, 8_000),
];

/// Timing runs per cell: a run is 1 s of audio (≈ 0.2 ms of CPU), and the best of many
/// is what the converter costs when the machine's other work does not interrupt it.
const ROUNDS: usize = 500;

/// Frames per timing run: one second of audio.
const FRAMES: usize = 50;

/// How far a delay is searched, in ms: beyond the FFT resampler's.
const MAX_DELAY_MS: f64 = 60.0;

/// A converter design under comparison.
#[derive(Clone, Copy)]
enum Design {
    /// avr-core's `Resampler` with this filter.
    Ours(Filter),
    /// rubato's `Async` sinc resampler with the same filter, fed whole 20 ms frames.
    RubatoAsync(Filter),
    /// rubato's synchronous `Fft` resampler, 20 ms chunks in and out.
    RubatoFft,
}

impl Design {
    fn name(self) -> String {
        let filter = |f: Filter| format!("{} taps, {:?}, cutoff {}", f.taps, f.window, f.cutoff);
        match self {
            Design::Ours(f) if f == Filter::SPEECH => format!("avr-core, {} (shipped)", filter(f)),
            Design::Ours(f) => format!("avr-core, {}", filter(f)),
            Design::RubatoAsync(f) => format!("rubato Async sinc, {}", filter(f)),
            Design::RubatoFft => "rubato Fft, 20 ms chunks".to_string(),
        }
    }
}

/// One stream through a design: s16le frames in, s16le out, as a call would use it.
enum Converter {
    Ours(Resampler),
    Rubato {
        inner: Box<dyn rubato::Resampler<f32>>,
        input: Vec<f32>,
        output: Vec<f32>,
    },
}

impl Converter {
    fn new(design: Design, from: u32, to: u32) -> Converter {
        let ratio = f64::from(to) / f64::from(from);
        let frame = from as usize / 50;
        let inner: Box<dyn rubato::Resampler<f32>> = match design {
            Design::Ours(filter) => {
                return Converter::Ours(Resampler::with_filter(from, to, filter))
            }
            Design::RubatoAsync(filter) => {
                let g = gcd(from, to);
                let taps = (filter.taps * from.max(to) as usize).div_ceil(to as usize);
                let params = SincInterpolationParameters::new(taps, filter.window)
                    .f_cutoff(filter.cutoff)
                    .oversampling_factor((to / g) as usize)
                    .interpolation(SincInterpolationType::Nearest);
                let r = Async::<f32>::new_sinc(ratio, 1.0, &params, frame, 1, FixedAsync::Input);
                Box::new(r.expect("valid Async parameters"))
            }
            Design::RubatoFft => Box::new(
                Fft::<f32>::new(from as usize, to as usize, frame, 1, FixedSync::Both)
                    .expect("valid Fft parameters"),
            ),
        };
        let output = vec![0.0; inner.output_frames_max()];
        Converter::Rubato {
            inner,
            input: Vec::with_capacity(frame),
            output,
        }
    }

    /// Converts one 20 ms frame (s16le), appending the result to `out` (s16le).
    fn push(&mut self, frame: &[u8], out: &mut Vec<u8>) {
        match self {
            Converter::Ours(r) => r.push(frame, out),
            Converter::Rubato {
                inner,
                input,
                output,
            } => {
                input.clear();
                input.extend(
                    frame
                        .chunks_exact(2)
                        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]]))),
                );
                let frames_out = output.len();
                let buf_in = InterleavedSlice::new(&input[..], 1, input.len()).expect("input");
                let mut buf_out =
                    InterleavedSlice::new_mut(&mut output[..], 1, frames_out).expect("output");
                let (_, written) = inner
                    .process_into_buffer(&buf_in, &mut buf_out, None)
                    .expect("a whole frame in");
                for &v in &output[..written] {
                    out.extend_from_slice(&(v.round() as i16).to_le_bytes());
                }
            }
        }
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `design` as a converter under test for `quality`: the signal pushed in 20 ms frames.
fn convert(design: Design) -> impl FnMut(u32, u32, &[i16]) -> Vec<i16> {
    move |from, to, input| {
        if let Design::Ours(filter) = design {
            return quality::through(filter, from, to, input);
        }
        let mut c = Converter::new(design, from, to);
        let bytes: Vec<u8> = input.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut out = Vec::new();
        for frame in bytes.chunks_exact(from as usize / 50 * 2) {
            c.push(frame, &mut out);
        }
        quality::samples(&out)
    }
}

/// Cost of `design` converting `from → to`: (best ns per 20 ms frame, allocations per frame
/// in steady state).
fn cost(design: Design, from: u32, to: u32, rounds: usize) -> (f64, f64) {
    let speech: Vec<u8> = Signal::Speech
        .input(from)
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    let frame_len = from as usize / 50 * 2;
    let frames: Vec<&[u8]> = speech
        .chunks_exact(frame_len)
        .cycle()
        .take(FRAMES)
        .collect();
    let mut c = Converter::new(design, from, to);
    let mut out = Vec::with_capacity(4 * frame_len * to as usize / from as usize + 64);
    // Warm up: buffers reach their steady size, caches and branch predictors fill.
    for frame in &frames {
        out.clear();
        c.push(frame, &mut out);
    }
    let mut best = Duration::MAX;
    let mut allocations = 0;
    for _ in 0..rounds {
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let start = Instant::now();
        for frame in &frames {
            out.clear();
            c.push(black_box(frame), &mut out);
            black_box(&out);
        }
        best = best.min(start.elapsed());
        allocations += ALLOCATIONS.load(Ordering::Relaxed) - before;
    }
    (
        best.as_nanos() as f64 / FRAMES as f64,
        allocations as f64 / (rounds * FRAMES) as f64,
    )
}

/// Formats a rejection in dB; when what is rejected rounds to silence in 16 bits (infinite
/// rejection), the bound that shows: more than half an LSB below the tone.
fn dbs(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        format!(
            "> {:.0} (0 LSB)",
            quality::db(quality::TONE_AMPLITUDE / 0.5)
        )
    }
}

fn main() {
    let rounds = std::env::var("AVR_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS);
    // Wake the CPU up to its working clock before the first timing.
    let spin = Instant::now();
    while spin.elapsed() < Duration::from_millis(300) {
        black_box(cost(Design::Ours(Filter::SPEECH), 8_000, 16_000, 1));
    }
    let designs = [
        Design::Ours(Filter::SPEECH),
        Design::Ours(Filter {
            taps: 64,
            cutoff: 0.905,
            ..Filter::SPEECH
        }),
        Design::Ours(Filter {
            taps: 80,
            cutoff: 0.925,
            ..Filter::SPEECH
        }),
        Design::RubatoAsync(Filter::SPEECH),
        Design::RubatoFft,
    ];

    println!("## Resampler: CPU per 20 ms frame (ns; allocations per frame in steady state)\n");
    print!("| design |");
    for (from, to) in DIRECTIONS {
        print!(" {}k→{}k |", from / 1000, to / 1000);
    }
    println!();
    println!("|---|{}", "---:|".repeat(DIRECTIONS.len()));
    for design in designs {
        print!("| {} |", design.name());
        for (from, to) in DIRECTIONS {
            let (ns, allocs) = cost(design, from, to, rounds);
            print!(" {ns:.0} ({allocs:.0}) |");
        }
        println!();
    }

    // Building the filter table happens once per call and direction.
    print!("\nBuilding a converter (`Resampler::new`, best of 20):");
    for (from, to) in [
        (8_000, 16_000),
        (16_000, 8_000),
        (8_000, 44_100),
        (44_100, 8_000),
    ] {
        let best = (0..20)
            .map(|_| {
                let start = Instant::now();
                black_box(Resampler::new(from, to));
                start.elapsed()
            })
            .min()
            .unwrap_or_default();
        print!(" {from}→{to} {:.0} µs;", best.as_secs_f64() * 1e6);
    }
    println!();

    println!("\n## Resampler: quality\n");
    println!(
        "| design | image 8k→16k, 3.9 kHz (dB) | image 8k→48k, 3.9 kHz (dB) \
         | alias 16k→8k, 5 kHz (dB) | alias 48k→8k, 5 kHz (dB) \
         | gain 16k→8k at 1 kHz / 3.4 kHz (dB) | SNR 16k→8k→16k, 1 kHz / speech (dB) \
         | delay 8k→16k / 16k→8k (ms) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for design in designs {
        let mut c = convert(design);
        let image16 = quality::image_rejection_db(&mut c, 8_000, 16_000, 3_900.0);
        let image48 = quality::image_rejection_db(&mut c, 8_000, 48_000, 3_900.0);
        let alias16 = quality::alias_rejection_db(&mut c, 16_000, 8_000, 5_000.0);
        let alias48 = quality::alias_rejection_db(&mut c, 48_000, 8_000, 5_000.0);
        let gain1k = quality::gain_db(&mut c, 16_000, 8_000, 1_000.0);
        let gain34 = quality::gain_db(&mut c, 16_000, 8_000, 3_400.0);
        let snr_tone =
            quality::round_trip_snr_db(&mut c, 16_000, 8_000, Signal::Tone(1_000.0), MAX_DELAY_MS);
        let snr_speech =
            quality::round_trip_snr_db(&mut c, 16_000, 8_000, Signal::Speech, MAX_DELAY_MS);
        let up = quality::delay_ms(&mut c, 8_000, 16_000, MAX_DELAY_MS);
        let down = quality::delay_ms(&mut c, 16_000, 8_000, MAX_DELAY_MS);
        println!(
            "| {} | {} | {} | {} | {} | {gain1k:.3} / {gain34:.2} | {snr_tone:.1} / {snr_speech:.1} | {up:.2} / {down:.2} |",
            design.name(),
            dbs(image16),
            dbs(image48),
            dbs(alias16),
            dbs(alias48),
        );
    }
}
