//! Property-based fuzzing of the parsers that read what a hostile peer (or
//! a hand-edited file) sends: the PDU reader, DIMSE command decoding, C-FIND
//! identifier parsing, the structural walker (plain and deflated) and the
//! rules parser. Stable Rust, so proptest rather than libFuzzer.
//!
//! Each target takes arbitrary bytes and structure-aware mutations of valid
//! inputs (built by generators, then bytes flipped, lengths changed to
//! hostile values such as 0xFFFFFFF0, cut short, nested deeply) and checks,
//! per case:
//!
//! - it never panics: it returns a value or an error;
//! - it never hangs: the case runs on a thread of its own and must answer
//!   within [`CASE_TIMEOUT`] (generous: we look for endless loops on a
//!   loaded machine, not for speed);
//! - it never allocates beyond its bound: a counting global allocator,
//!   armed only on the case's thread, records the largest single
//!   allocation and the peak of live bytes, and both must stay within the
//!   target's bound (a multiple of the input length plus a fixed slack,
//!   plus whatever limit the code documents, such as the PDU length
//!   limit). An allocation beyond [`HARD_CEILING`] is refused outright, so a
//!   broken bound aborts the test binary instead of exhausting the machine.
//!
//! The number of cases per target is each target's default (together about
//! a minute in a debug build), or `IMAGESERVER_FUZZ_CASES` for all of them;
//! docs/fuzzing.md has the command of a longer run. Failures are shrunk and
//! printed, never persisted into the source tree.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Debug;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

mod command;
mod dataset;
mod identifier;
mod mutate;
mod pdu;
mod rules;
mod walker;

/// How long one case may take before it counts as a hang.
const CASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Stack of the thread a case runs on: an association thread's.
const CASE_STACK: usize = 8 * 1024 * 1024;

/// No single allocation on an armed thread may exceed this: the allocator
/// refuses it (the process aborts with "memory allocation of N bytes
/// failed") rather than let a broken bound take the machine's memory.
const HARD_CEILING: usize = 256 * 1024 * 1024;

// ---------------------------------------------------------------------------
// The counting allocator.

/// A thin wrapper over the system allocator that, on threads that armed it,
/// tracks the largest single allocation and the peak of live bytes. On
/// every other thread (the whole rest of the test binary) it only reads one
/// thread-local flag.
struct CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

thread_local! {
    // `const` initialisers without destructors: reading them never
    // allocates, so the allocator may use them.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn armed() -> bool {
    ARMED.try_with(Cell::get).unwrap_or(false)
}

/// Records an allocation of `size` bytes (the growth of a reallocation);
/// false when it is beyond the hard ceiling.
fn record_alloc(size: usize, growth: isize) -> bool {
    if size > HARD_CEILING {
        return false;
    }
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    let _ = LIVE.try_with(|live| {
        let now = live.get() + growth;
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
    true
}

fn record_free(size: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get() - size as isize));
}

// SAFETY: every call is forwarded to `System` with the same arguments; the
// bookkeeping touches only `Copy` thread-locals without destructors.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if armed() && !record_alloc(layout.size(), layout.size() as isize) {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if armed() && !record_alloc(layout.size(), layout.size() as isize) {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if armed() {
            record_free(layout.size());
        }
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if armed() && !record_alloc(new_size, new_size as isize - layout.size() as isize) {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
}

/// What the allocator saw while a case ran.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    /// The largest single allocation (or reallocation), in bytes.
    largest: usize,
    /// The peak of bytes allocated and not yet freed since arming.
    peak_live: usize,
}

/// Runs `f` with the allocator armed on this thread.
fn measured<T>(f: impl FnOnce() -> T) -> (T, Usage) {
    LARGEST.with(|c| c.set(0));
    LIVE.with(|c| c.set(0));
    PEAK.with(|c| c.set(0));
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    let usage = Usage {
        largest: LARGEST.with(Cell::get),
        peak_live: PEAK.with(Cell::get).max(0) as usize,
    };
    (out, usage)
}

// ---------------------------------------------------------------------------
// The harness.

/// The allocation bound of one case: `per_byte * len + fixed`, for the
/// largest single allocation and for the peak of live bytes alike.
#[derive(Debug, Clone, Copy)]
struct Bound {
    /// Allowed bytes per byte of (effective) input.
    per_byte: usize,
    /// Input length the bound is proportional to.
    len: usize,
    /// Fixed slack (buffers, decoder state, error messages).
    fixed: usize,
}

impl Bound {
    fn bytes(&self) -> usize {
        self.per_byte
            .saturating_mul(self.len)
            .saturating_add(self.fixed)
    }
}

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Runs one case of a target on a thread of its own: a panic, a case
/// slower than [`CASE_TIMEOUT`] or an allocation beyond `bound` fails the
/// case (and proptest shrinks the input). Returns what `f` returned.
fn run_case<T, F>(bound: Bound, f: F) -> Result<T, TestCaseError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    run_case_within(CASE_TIMEOUT, bound, f)
}

fn run_case_within<T, F>(timeout: Duration, bound: Bound, f: F) -> Result<T, TestCaseError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let handle = std::thread::Builder::new()
        .name("fuzz-case".into())
        .stack_size(CASE_STACK)
        .spawn(move || {
            let result = measured(f);
            let _ = tx.send(result);
        })
        .map_err(|e| TestCaseError::fail(format!("cannot spawn the case thread: {e}")))?;
    match rx.recv_timeout(timeout) {
        Ok((out, usage)) => {
            let _ = handle.join();
            let limit = bound.bytes();
            if usage.largest > limit || usage.peak_live > limit {
                return Err(TestCaseError::fail(format!(
                    "allocation beyond the bound: largest single allocation {} bytes, \
                     peak live {} bytes, bound {limit} bytes ({bound:?})",
                    usage.largest, usage.peak_live
                )));
            }
            Ok(out)
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let message = match handle.join() {
                Err(payload) => payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string payload".into()),
                Ok(()) => "no result".into(),
            };
            Err(TestCaseError::fail(format!("panicked: {message}")))
        }
        // The thread is left running (it cannot be stopped); the case fails.
        Err(mpsc::RecvTimeoutError::Timeout) => Err(TestCaseError::fail(format!(
            "hang: no answer after {:?}",
            started.elapsed()
        ))),
    }
}

/// Cases for a target: `IMAGESERVER_FUZZ_CASES` when set, else its default.
fn cases(default: u32) -> u32 {
    match std::env::var("IMAGESERVER_FUZZ_CASES") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("IMAGESERVER_FUZZ_CASES={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Runs a property over `strategy` for [`cases`]`(default_cases)` cases and
/// panics with the shrunk input when it fails. Nothing is persisted.
fn check<S>(
    name: &str,
    default_cases: u32,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let config = Config {
        cases: cases(default_cases),
        failure_persistence: None,
        // Rejections are not used; shrinking is bounded in time because a
        // hanging input costs CASE_TIMEOUT per try.
        max_shrink_time: 120_000,
        ..Config::default()
    };
    let started = Instant::now();
    let mut runner = TestRunner::new(config.clone());
    match runner.run(&strategy, property) {
        Ok(()) => eprintln!(
            "fuzz {name}: {} cases in {:.1?}",
            config.cases,
            started.elapsed()
        ),
        Err(TestError::Fail(reason, input)) => {
            panic!("fuzz {name} failed: {reason}\nminimal input: {input:?}")
        }
        Err(TestError::Abort(reason)) => panic!("fuzz {name} aborted: {reason}"),
    }
}

/// The harness itself: a case that panics, hangs or over-allocates fails.
#[cfg(test)]
mod harness_tests {
    use super::*;

    fn small() -> Bound {
        Bound {
            per_byte: 0,
            len: 0,
            fixed: MIB,
        }
    }

    #[test]
    fn a_panic_fails_the_case() {
        let err = run_case(small(), || panic!("boom")).unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
    }

    #[test]
    fn an_allocation_beyond_the_bound_fails_the_case() {
        let err = run_case(small(), || vec![0u8; 2 * MIB].len()).unwrap_err();
        assert!(err.to_string().contains("beyond the bound"), "{err}");
        // Many small live allocations count too.
        let err = run_case(small(), || {
            let v: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 32 * KIB]).collect();
            v.len()
        })
        .unwrap_err();
        assert!(err.to_string().contains("peak live"), "{err}");
        assert_eq!(
            run_case(small(), || vec![0u8; MIB / 2].len()).unwrap(),
            MIB / 2
        );
    }

    #[test]
    fn a_hang_fails_the_case() {
        // A sleeping thread stands for an endless loop; it ends by itself.
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        let err =
            run_case_within(timeout, small(), move || std::thread::sleep(timeout * 5)).unwrap_err();
        assert!(err.to_string().contains("hang"), "{err}");
        assert!(started.elapsed() >= timeout);
    }
}
