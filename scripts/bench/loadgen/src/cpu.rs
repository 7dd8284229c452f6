//! The generator's own CPU use, from `/proc/self/stat` (Linux only; `None`
//! elsewhere), so a report shows when the generator itself was the limit.

use std::time::Instant;

/// `USER_HZ`: the unit of the times in `/proc/<pid>/stat`; 100 on every
/// Linux architecture the project builds for (see proc(5)).
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU seconds used so far by this process (all threads).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // Field 3 (state) is the first here; utime and stime are fields 14 and 15.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// CPU used between `from` and `to`, in cores (1.0 = one core busy all along).
pub(crate) async fn measure(from: Instant, to: Instant) -> Option<f64> {
    tokio::time::sleep_until(from.into()).await;
    let (t0, c0) = (Instant::now(), process_cpu_seconds()?);
    tokio::time::sleep_until(to.into()).await;
    let (t1, c1) = (Instant::now(), process_cpu_seconds()?);
    let wall = (t1 - t0).as_secs_f64();
    (wall > 0.0).then(|| (c1 - c0) / wall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        let before = process_cpu_seconds().expect("/proc/self/stat is readable on Linux");
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed().as_millis() < 50 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(process_cpu_seconds().unwrap() >= before);
    }
}
