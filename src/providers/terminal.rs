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
}
