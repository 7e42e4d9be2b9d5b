//! The AudioSocket listener: accepts connections, enforces `MAX_CALLS`, starts calls.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread;

use crate::call::{self, CallContext, CallSlot};
use crate::proto::audiosocket;
use crate::sys::StopSignal;

/// Accepts calls until `stop` is triggered; each call runs on its own thread. Returns with
/// the listener closed, so new connections are refused while live calls finish: `true` when
/// stopped, `false` when the listener failed.
pub fn serve(listener: TcpListener, ctx: Arc<CallContext>, stop: &StopSignal) -> bool {
    let max = ctx.config.max_calls as u64;
    if let Err(e) = listener.set_nonblocking(true) {
        log::error!("AudioSocket listener: cannot make it non-blocking: {e}");
        return false;
    }
    let on_error = |e: &std::io::Error| log::warn!("AudioSocket accept failed: {e}");
    while let Some((stream, peer)) = stop.accept(&listener, &on_error) {
        let Some(slot) = CallSlot::take(&ctx.metrics, max) else {
            ctx.metrics.calls_rejected.fetch_add(1, Relaxed);
            log::warn!(
                "Rejecting AudioSocket connection from {peer}: MAX_CALLS ({max}) calls in \
                 progress; sent a hangup so the dialplan continues"
            );
            reject(stream);
            continue;
        };
        let call_ctx = ctx.clone();
        let spawned = thread::Builder::new()
            .name("call-new".into())
            .stack_size(call::THREAD_STACK)
            .spawn(move || call::run(stream, peer, &call_ctx, slot));
        if let Err(e) = spawned {
            log::error!("Cannot start a thread for the call from {peer}: {e}");
        }
    }
    // Closed before it is said to be: from this line on, connections are refused.
    drop(listener);
    log::info!("AudioSocket listener closed: no new calls are accepted");
    true
}

/// Hangs up a connection that cannot be served, without blocking the accept loop.
fn reject(mut stream: TcpStream) {
    let _ = stream.write_all(&audiosocket::HANGUP);
    let _ = stream.shutdown(Shutdown::Write);
    // Read what already arrived (the UUID) so closing sends FIN, not a reset that could
    // discard the hangup frame before Asterisk reads it.
    let _ = stream.set_nonblocking(true);
    let mut sink = [0u8; 512];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}
