//! Reading a command's stdout/stderr: streamed to the log line by line with a
//! host prefix as it arrives, and kept in memory only up to a bound, so a
//! command printing gigabytes neither exhausts memory nor blocks on a full pipe.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tracing::info;

/// Bytes of each stream kept for the result; beyond it the middle is dropped
/// and the last part kept (the end of stderr is what explains a failure).
pub const KEEP_BYTES: usize = 4 * 1024 * 1024;

/// Bounded capture: the first half of the budget and a rolling tail.
#[derive(Default)]
pub struct Capture {
    head: String,
    tail: std::collections::VecDeque<String>,
    tail_bytes: usize,
    dropped: usize,
}

impl Capture {
    pub fn push_line(&mut self, line: &str) {
        if self.head.len() + line.len() <= KEEP_BYTES / 2 && self.tail.is_empty() {
            self.head.push_str(line);
            return;
        }
        self.tail.push_back(line.to_string());
        self.tail_bytes += line.len();
        while self.tail_bytes > KEEP_BYTES / 2 {
            let gone = self.tail.pop_front().unwrap_or_default();
            self.tail_bytes -= gone.len();
            self.dropped += gone.len();
        }
    }

    pub fn finish(self) -> String {
        let mut s = self.head;
        if self.dropped > 0 {
            s.push_str(&format!(
                "\n[… {} bytes of output omitted …]\n",
                self.dropped
            ));
        }
        for l in self.tail {
            s.push_str(&l);
        }
        s
    }
}

/// Reads `r` to the end, logging each line as `host| line` (or `host!| line` for stderr).
pub async fn drain<R: AsyncRead + Unpin>(r: R, host: &str, is_err: bool) -> String {
    let mut reader = BufReader::new(r);
    let mut cap = Capture::default();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let shown = line.trim_end_matches(['\n', '\r']);
                if is_err {
                    info!(target: "output", instance = %host, stream = "stderr", "{host}!| {shown}");
                } else {
                    info!(target: "output", instance = %host, stream = "stdout", "{host}| {shown}");
                }
                cap.push_line(&line);
            }
        }
    }
    cap.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_head_and_tail_within_budget() {
        let mut c = Capture::default();
        let line = "x".repeat(1023) + "\n";
        for _ in 0..(KEEP_BYTES / 1024 * 3) {
            c.push_line(&line);
        }
        c.push_line("the last line\n");
        let s = c.finish();
        assert!(s.len() <= KEEP_BYTES + 200, "kept {} bytes", s.len());
        assert!(s.contains("bytes of output omitted"));
        assert!(s.ends_with("the last line\n"));
    }
}
