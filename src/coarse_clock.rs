//! The coarse real-time clock that file timestamps come from, and waiting for it to pass
//! a time: after that, any change to a file gives it a later ctime than the time waited
//! for (what the RUN snapshot's record relies on).

/// A time as (seconds, nanoseconds).
pub type Stamp = (i64, i64);

/// Sleeps until the coarse real-time clock is past `t` (at most about a second).
pub fn wait_past(t: Stamp) {
    for _ in 0..1000 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
        if (ts.tv_sec, ts.tv_nsec) > t {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
