//! The dispatcher: per-call order, the retry timer, and the hand-off to workers.
//!
//! ```text
//! emit ──try_send──> queue ──> [dispatcher] ──jobs──> [worker × N] ──ureq──> receiver
//!                                 ▲  │  └── retry heap (due times)
//!                        results ─┘  └────> [dead-letter writer] ──> file
//! ```
//! [`Scheduler`] is the bookkeeping alone (no threads, no clock), so ordering and retry rules
//! are tested with a fake attempt function; [`run`] is the thread around it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, Receiver, Sender};

use super::client::{Client, Message};
use super::dead_letter::{DeadLetter, PendingLetter};
use super::policy::{self, AttemptError};
use super::Outbox;

/// An event between acceptance and its final outcome.
#[derive(Debug)]
pub struct Delivery {
    pub msg: Arc<Message>,
    /// Attempts made so far.
    pub attempts: u32,
    pub last_error: Option<AttemptError>,
}

/// A job for a worker: one attempt at `msg`.
pub struct Job {
    pub id: u64,
    pub msg: Arc<Message>,
}

/// A worker's report.
pub struct Done {
    pub id: u64,
    pub result: Result<u16, AttemptError>,
}

/// What became of an event after an attempt.
#[derive(Debug)]
pub enum Outcome {
    Delivered {
        delivery: Delivery,
        status: u16,
    },
    /// Another attempt is scheduled after `delay`.
    Retrying {
        msg: Arc<Message>,
        attempts: u32,
        error: String,
        delay: Duration,
    },
    /// No attempts left, or the error is final: dead-letter it.
    Failed(Delivery),
}

/// Per-call order and retry bookkeeping.
///
/// An event is *active* from the moment it is ready until its final outcome; each call has at
/// most one active event, and the call's later events wait behind it in `waiting`. Active
/// events are in exactly one of `ready`, `in_flight` or `retries`. A retrying event sits in the
/// heap and occupies no worker, so other calls' events keep flowing.
pub struct Scheduler {
    max_attempts: u32,
    /// Calls with an active event → their later events, in emission order.
    waiting: HashMap<String, VecDeque<Delivery>>,
    ready: VecDeque<Delivery>,
    in_flight: HashMap<u64, Delivery>,
    retries: BinaryHeap<Reverse<(Instant, u64)>>,
    retrying: HashMap<u64, Delivery>,
    next_id: u64,
    /// While draining for shutdown: retries due after this are failed at once.
    pub deadline: Option<Instant>,
}

impl Scheduler {
    /// `max_attempts` = 1 + `WEBHOOK_RETRY`.
    pub fn new(max_attempts: u32) -> Scheduler {
        Scheduler {
            max_attempts: max_attempts.max(1),
            waiting: HashMap::new(),
            ready: VecDeque::new(),
            in_flight: HashMap::new(),
            retries: BinaryHeap::new(),
            retrying: HashMap::new(),
            next_id: 0,
            deadline: None,
        }
    }

    /// A new event: ready at once, unless an earlier event of its call is still active.
    pub fn push(&mut self, msg: Arc<Message>) {
        let delivery = Delivery {
            msg,
            attempts: 0,
            last_error: None,
        };
        match self.waiting.get_mut(&delivery.msg.uuid) {
            Some(queue) => queue.push_back(delivery),
            None => {
                self.waiting
                    .insert(delivery.msg.uuid.clone(), VecDeque::new());
                self.ready.push_back(delivery);
            }
        }
    }

    /// The next attempt to hand to a worker, if any event is ready.
    pub fn start_next(&mut self) -> Option<Job> {
        let mut delivery = self.ready.pop_front()?;
        delivery.attempts += 1;
        let id = self.next_id;
        self.next_id += 1;
        let job = Job {
            id,
            msg: delivery.msg.clone(),
        };
        self.in_flight.insert(id, delivery);
        Some(job)
    }

    /// Records a worker's result. `jitter` is a random number in [0, 1) for the backoff.
    pub fn finish(&mut self, done: Done, now: Instant, jitter: f64) -> Option<Outcome> {
        let mut delivery = self.in_flight.remove(&done.id)?;
        let error = match done.result {
            Ok(status) => {
                self.release(&delivery.msg.uuid);
                return Some(Outcome::Delivered { delivery, status });
            }
            Err(e) => e,
        };
        let delay = policy::retry_delay(delivery.attempts, error.retry_after(), jitter);
        let due = now + delay;
        let in_time = self.deadline.is_none_or(|d| due < d);
        let retry = error.retryable() && delivery.attempts < self.max_attempts && in_time;
        let outcome = Outcome::Retrying {
            msg: delivery.msg.clone(),
            attempts: delivery.attempts,
            error: error.to_string(),
            delay,
        };
        delivery.last_error = Some(error);
        if retry {
            self.retries.push(Reverse((due, done.id)));
            self.retrying.insert(done.id, delivery);
            Some(outcome)
        } else {
            self.release(&delivery.msg.uuid);
            Some(Outcome::Failed(delivery))
        }
    }

    /// Moves retries that are due to the ready queue.
    pub fn promote(&mut self, now: Instant) {
        while let Some(Reverse((due, id))) = self.retries.peek().copied() {
            if due > now {
                break;
            }
            self.retries.pop();
            if let Some(delivery) = self.retrying.remove(&id) {
                self.ready.push_back(delivery);
            }
        }
    }

    /// When the earliest retry is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.retries.peek().map(|Reverse((due, _))| *due)
    }

    /// Fails, at once, retries that would not be due before `deadline` (shutdown).
    pub fn expire_retries_after(&mut self, deadline: Instant) -> Vec<Delivery> {
        let late: Vec<u64> = self
            .retries
            .iter()
            .filter(|Reverse((due, _))| *due >= deadline)
            .map(|Reverse((_, id))| *id)
            .collect();
        self.retries.retain(|Reverse((due, _))| *due < deadline);
        let mut failed = Vec::new();
        for id in late {
            if let Some(delivery) = self.retrying.remove(&id) {
                self.release(&delivery.msg.uuid);
                failed.push(delivery);
            }
        }
        failed
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Nothing accepted is left unfinished.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Everything unfinished, in flight included, for the dead-letter file at the deadline.
    /// Each call's events stay in order.
    pub fn take_all(&mut self) -> Vec<Delivery> {
        let mut active: Vec<Delivery> = self
            .ready
            .drain(..)
            .chain(self.in_flight.drain().map(|(_, d)| d))
            .chain(self.retrying.drain().map(|(_, d)| d))
            .collect();
        self.retries.clear();
        let mut all = Vec::new();
        for delivery in active.drain(..) {
            let later = self.waiting.remove(&delivery.msg.uuid).unwrap_or_default();
            all.push(delivery);
            all.extend(later);
        }
        all.extend(self.waiting.drain().flat_map(|(_, q)| q));
        all
    }

    /// The call's active event is finished: its next event, if any, becomes ready.
    fn release(&mut self, uuid: &str) {
        let next = self.waiting.get_mut(uuid).and_then(VecDeque::pop_front);
        match next {
            Some(delivery) => self.ready.push_back(delivery),
            None => {
                self.waiting.remove(uuid);
            }
        }
    }
}

/// Asks the dispatcher to drain until `deadline`, then reply.
pub struct Drain {
    pub deadline: Instant,
    pub done: Sender<()>,
}

/// The dispatcher thread. `recovered` are the spool's undelivered events from the last run, in
/// the order written, so each call's order holds; they go before anything new.
pub fn run(
    outbox: Arc<Outbox>,
    recovered: Vec<Message>,
    events: Receiver<Message>,
    control: Receiver<Drain>,
    jobs: Sender<Job>,
    results: Receiver<Done>,
    workers: usize,
) {
    let mut sched = Scheduler::new(outbox.max_attempts);
    for msg in recovered {
        sched.push(Arc::new(msg));
    }
    let mut drain: Option<Drain> = None;
    let mut events_open = true;
    let mut control_open = true;
    let (no_events, no_control) = (crossbeam_channel::never(), crossbeam_channel::never());
    loop {
        let now = Instant::now();
        sched.promote(now);
        while sched.in_flight() < workers {
            let Some(job) = sched.start_next() else { break };
            if let Err(unsent) = jobs.send(job) {
                // All workers are gone (they only exit if this thread does): report it as
                // a failed attempt so the event still reaches the dead-letter file.
                let done = Done {
                    id: unsent.0.id,
                    result: Err(AttemptError::Request("no webhook worker is running".into())),
                };
                handle(&outbox, &mut sched, done);
            }
        }
        if let Some(d) = &drain {
            // The queue closes once the spool writer has forwarded every accepted event.
            if sched.is_empty() && !events_open {
                break;
            }
            if now >= d.deadline {
                let late = events.try_iter().map(|msg| Delivery {
                    msg: Arc::new(msg),
                    attempts: 0,
                    last_error: None,
                });
                for delivery in sched.take_all().into_iter().chain(late) {
                    let why = match &delivery.last_error {
                        Some(e) => format!("shut down before delivery (last error: {e})"),
                        None => "shut down before delivery".to_string(),
                    };
                    dead_letter_unfinished(&outbox, &delivery, &why);
                    outbox.settle();
                }
                break;
            }
        } else if !events_open && !control_open && sched.is_empty() {
            // Every `Webhooks` handle is gone without a shutdown: nothing more can come.
            break;
        }

        let wake = [sched.next_due(), drain.as_ref().map(|d| d.deadline)]
            .into_iter()
            .flatten()
            .min();
        let timeout = wake.map_or(Duration::from_secs(3600), |w| {
            w.saturating_duration_since(now)
        });
        let events_rx = if events_open { &events } else { &no_events };
        let control_rx = if control_open { &control } else { &no_control };
        select! {
            recv(events_rx) -> msg => match msg {
                Ok(msg) => sched.push(Arc::new(msg)),
                Err(_) => events_open = false,
            },
            recv(results) -> done => {
                if let Ok(done) = done {
                    handle(&outbox, &mut sched, done);
                }
            },
            recv(control_rx) -> req => match req {
                Ok(req) => {
                    // `shutdown` closed the queue before asking: what was accepted is in it
                    // or in the spool writer, which closes it once it has forwarded the rest.
                    sched.deadline = Some(req.deadline);
                    for delivery in sched.expire_retries_after(req.deadline) {
                        final_failure(
                            &outbox,
                            &delivery.msg,
                            delivery.attempts,
                            delivery.last_error.as_ref(),
                        );
                        outbox.settle();
                    }
                    drain = Some(req);
                }
                Err(_) => control_open = false,
            },
            default(timeout) => {}
        }
    }
    // Workers exit once `jobs` is dropped; the writer drains its queue before replying.
    drop(jobs);
    outbox.flush_writer();
    if let Some(d) = drain {
        let _ = d.done.send(());
    }
}

fn handle(outbox: &Outbox, sched: &mut Scheduler, done: Done) {
    let Some(outcome) = sched.finish(done, Instant::now(), policy::random_unit()) else {
        return;
    };
    match outcome {
        Outcome::Delivered { delivery, status } => {
            outbox.delivered(&delivery.msg, delivery.attempts, status);
            outbox.settle();
        }
        Outcome::Retrying {
            msg,
            attempts,
            error,
            delay,
        } => {
            outbox.note_retry(&msg, attempts, &error, delay);
        }
        Outcome::Failed(delivery) => {
            final_failure(
                outbox,
                &delivery.msg,
                delivery.attempts,
                delivery.last_error.as_ref(),
            );
            outbox.settle();
        }
    }
}

/// All attempts failed (or the error was final): the upstream failure line and a dead letter.
fn final_failure(outbox: &Outbox, msg: &Message, attempts: u32, last_error: Option<&AttemptError>) {
    outbox.failed(failure_letter(outbox, msg, attempts, last_error));
}

/// The dead letter of a final failure, and its log line in the upstream shape.
pub fn failure_letter(
    outbox: &Outbox,
    msg: &Message,
    attempts: u32,
    last_error: Option<&AttemptError>,
) -> PendingLetter {
    let url = outbox.client.masked_url();
    let (message, code, status) = match last_error {
        Some(e) => (
            e.to_string(),
            e.code(),
            e.status().map(|s| s.to_string()).unwrap_or_default(),
        ),
        None => ("unknown error".into(), "EUNKNOWN".into(), String::new()),
    };
    let note = format!(
        "[{}] {} Retry failed: Message: {message} Code: {code} URL: {url} Method: POST \
         Status: {status}",
        msg.uuid,
        msg.tag(),
    );
    let record = DeadLetter::new(msg, &url, attempts, &message, SystemTime::now());
    PendingLetter {
        msg: msg.clone(),
        record,
        note,
        level: log::Level::Error,
    }
}

/// An event the deadline caught before its final outcome.
fn dead_letter_unfinished(outbox: &Outbox, delivery: &Delivery, why: &str) {
    let msg = &delivery.msg;
    let url = outbox.client.masked_url();
    let note = format!(
        "[{}] {} Not delivered: {why}; written to the dead-letter file",
        msg.uuid,
        msg.tag()
    );
    let record = DeadLetter::new(msg, &url, delivery.attempts, why, SystemTime::now());
    outbox.failed(PendingLetter {
        msg: (**msg).clone(),
        record,
        note,
        level: log::Level::Warn,
    });
}

/// A worker thread: attempts only, no waiting between them.
pub fn worker(client: Arc<Client>, jobs: Receiver<Job>, results: Sender<Done>) {
    for job in jobs {
        let result = client
            .attempt(&job.msg, client.timeout())
            .map(|answer| answer.status);
        if results.send(Done { id: job.id, result }).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(uuid: &str, n: u32) -> Arc<Message> {
        Arc::new(Message {
            uuid: uuid.into(),
            kind: "transcription".into(),
            body: format!("{uuid}-{n}"),
            webhook_id: format!("msg_{uuid}_{n}"),
        })
    }

    fn unavailable() -> AttemptError {
        AttemptError::Status {
            status: 503,
            retry_after: None,
            location: None,
        }
    }

    /// What the fake receiver saw and what became of each event.
    #[derive(Default, Debug)]
    struct Trace {
        /// (simulated ms, body, attempt number) of every attempt, in order.
        attempts: Vec<(u64, String, u32)>,
        delivered: Vec<String>,
        failed: Vec<String>,
    }

    /// Runs the scheduler to completion on a simulated clock. Attempts started together run
    /// "concurrently": all of a round's attempts start before any result is reported.
    /// `answer(body, attempt)` plays the receiver.
    fn simulate(
        sched: &mut Scheduler,
        workers: usize,
        mut answer: impl FnMut(&str, u32) -> Result<u16, AttemptError>,
    ) -> Trace {
        let start = Instant::now();
        let mut now = start;
        let mut trace = Trace::default();
        for _ in 0..10_000 {
            sched.promote(now);
            let mut round = Vec::new();
            while sched.in_flight() < workers {
                let Some(job) = sched.start_next() else { break };
                let attempt = trace
                    .attempts
                    .iter()
                    .filter(|(_, b, _)| *b == job.msg.body)
                    .count() as u32
                    + 1;
                let ms = now.duration_since(start).as_millis() as u64;
                trace.attempts.push((ms, job.msg.body.clone(), attempt));
                round.push(Done {
                    id: job.id,
                    result: answer(&job.msg.body, attempt),
                });
            }
            for done in round {
                match sched.finish(done, now, 0.5) {
                    Some(Outcome::Delivered { delivery, .. }) => {
                        trace.delivered.push(delivery.msg.body.clone())
                    }
                    Some(Outcome::Failed(d)) => trace.failed.push(d.msg.body.clone()),
                    Some(Outcome::Retrying { .. }) | None => {}
                }
            }
            if sched.is_empty() {
                return trace;
            }
            if sched.in_flight() == 0 && sched.ready.is_empty() {
                now = sched.next_due().expect("a retry is pending");
            }
        }
        panic!("the scheduler did not finish: {trace:?}");
    }

    #[test]
    fn one_call_is_delivered_in_order_and_a_failing_call_holds_up_no_other() {
        let mut sched = Scheduler::new(4);
        for n in 1..=3 {
            sched.push(msg("a", n));
        }
        for n in 1..=2 {
            sched.push(msg("b", n));
        }
        // a-1 fails twice; everything else succeeds at once. One worker only: a retrying
        // event must not occupy it.
        let trace = simulate(&mut sched, 1, |body, attempt| {
            if body == "a-1" && attempt <= 2 {
                Err(unavailable())
            } else {
                Ok(200)
            }
        });
        assert_eq!(trace.failed, Vec::<String>::new());
        let order: Vec<&str> = trace.delivered.iter().map(String::as_str).collect();
        // b's events go out while a-1 waits for its retry; a's keep their order.
        assert_eq!(order, ["b-1", "b-2", "a-1", "a-2", "a-3"]);
        let a1: Vec<u64> = trace
            .attempts
            .iter()
            .filter(|(_, b, _)| b == "a-1")
            .map(|(t, _, _)| *t)
            .collect();
        assert_eq!(a1.len(), 3);
        // Backoff with jitter 0.5: 375 ms, then 750 ms.
        assert_eq!(a1, [0, 375, 1125]);
    }

    #[test]
    fn final_errors_are_not_retried_and_release_the_call() {
        let mut sched = Scheduler::new(5);
        sched.push(msg("a", 1));
        sched.push(msg("a", 2));
        let trace = simulate(&mut sched, 4, |body, _| {
            if body == "a-1" {
                Err(AttemptError::Status {
                    status: 400,
                    retry_after: None,
                    location: None,
                })
            } else {
                Ok(204)
            }
        });
        assert_eq!(trace.attempts.len(), 2, "{trace:?}");
        assert_eq!(trace.failed, ["a-1"]);
        assert_eq!(trace.delivered, ["a-2"]);
    }

    #[test]
    fn attempts_stop_at_one_plus_retry() {
        let mut sched = Scheduler::new(3);
        sched.push(msg("a", 1));
        let trace = simulate(&mut sched, 2, |_, _| Err(unavailable()));
        assert_eq!(trace.attempts.len(), 3);
        assert_eq!(trace.failed, ["a-1"]);

        // WEBHOOK_RETRY=0: one attempt.
        let mut sched = Scheduler::new(1);
        sched.push(msg("a", 1));
        let trace = simulate(&mut sched, 2, |_, _| Err(unavailable()));
        assert_eq!(trace.attempts.len(), 1);
    }

    #[test]
    fn retry_after_sets_the_next_attempt_time() {
        let mut sched = Scheduler::new(2);
        sched.push(msg("a", 1));
        let trace = simulate(&mut sched, 1, |_, attempt| {
            if attempt == 1 {
                Err(AttemptError::Status {
                    status: 429,
                    retry_after: Some(Duration::from_secs(7)),
                    location: None,
                })
            } else {
                Ok(200)
            }
        });
        let times: Vec<u64> = trace.attempts.iter().map(|(t, _, _)| *t).collect();
        assert_eq!(times, [0, 7000]);
    }

    #[test]
    fn many_calls_use_all_workers() {
        let mut sched = Scheduler::new(1);
        for c in 0..10 {
            sched.push(msg(&format!("c{c}"), 1));
        }
        let mut started = 0;
        while sched.in_flight() < 4 {
            if sched.start_next().is_none() {
                break;
            }
            started += 1;
        }
        assert_eq!(started, 4);
    }

    #[test]
    fn shutdown_fails_late_retries_and_takes_everything_in_order() {
        let mut sched = Scheduler::new(10);
        for n in 1..=3 {
            sched.push(msg("a", n));
        }
        sched.push(msg("b", 1));
        let now = Instant::now();
        let job = sched.start_next().unwrap();
        assert_eq!(job.msg.body, "a-1");
        let retrying = sched.finish(
            Done {
                id: job.id,
                result: Err(AttemptError::Timeout(Duration::from_secs(3))),
            },
            now,
            0.0,
        );
        assert!(matches!(retrying, Some(Outcome::Retrying { .. })));

        // The retry is due in 250 ms; a deadline before that fails it and frees a-2.
        let failed = sched.expire_retries_after(now + Duration::from_millis(100));
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].msg.body, "a-1");
        assert_eq!(failed[0].attempts, 1);

        let left: Vec<String> = sched
            .take_all()
            .iter()
            .map(|d| d.msg.body.clone())
            .collect();
        let a: Vec<&String> = left.iter().filter(|b| b.starts_with('a')).collect();
        assert_eq!(a, ["a-2", "a-3"]);
        assert!(left.contains(&"b-1".to_string()));
        assert!(sched.is_empty());
    }

    #[test]
    fn a_retry_that_would_end_after_the_deadline_fails_now() {
        let mut sched = Scheduler::new(10);
        sched.push(msg("a", 1));
        let now = Instant::now();
        sched.deadline = Some(now + Duration::from_millis(100));
        let job = sched.start_next().unwrap();
        let out = sched.finish(
            Done {
                id: job.id,
                result: Err(unavailable()),
            },
            now,
            0.0,
        );
        assert!(matches!(out, Some(Outcome::Failed(_))));
        assert!(sched.is_empty());
    }
}
