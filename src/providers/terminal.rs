//! The live [`Operator`]: questions on the terminal rollscript runs in, with
//! the progress bars hidden while the operator reads and answers.

use std::io::{BufRead, IsTerminal, Write};

use crate::primitives::Operator;

pub struct TerminalOperator;

impl Operator for TerminalOperator {
    fn interactive(&self) -> bool {
        std::io::stdin().is_terminal()
    }

    fn ask(&self, question: &str) -> Option<String> {
        crate::ui::suspend(|| {
            let mut err = std::io::stderr();
            let _ = write!(err, "{question}");
            let _ = err.flush();
            let mut line = String::new();
            match std::io::stdin().lock().read_line(&mut line) {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(line.trim().to_ascii_lowercase()),
            }
        })
    }

    fn ask_until(&self, question: &str, stop: &(dyn Fn() -> bool + Send + Sync)) -> Option<String> {
        // Not inside `ui::suspend`: the control channel must be able to log
        // while the question waits (and its answer ends the wait).
        let mut err = std::io::stderr();
        let _ = write!(err, "{question}");
        let _ = err.flush();
        loop {
            if stop() {
                let _ = writeln!(err);
                return None;
            }
            let mut fds = libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut fds, 1, 200) };
            if n > 0 {
                let mut line = String::new();
                return match std::io::stdin().lock().read_line(&mut line) {
                    Ok(0) | Err(_) => None,
                    Ok(_) => Some(line.trim().to_ascii_lowercase()),
                };
            }
        }
    }
}
