//! The dry-run record: numbered steps with time estimates, and the rendering
//! `rollscript plan` prints. Steps arrive from the effects layer in the order
//! the script would run them, so the plan is exact, not a guess at the script.

use std::sync::Mutex;
use std::time::Duration;

use crate::config::format_duration;

/// How long one step may take: what usually happens and the bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    pub typical: Duration,
    pub worst: Duration,
}

impl Estimate {
    pub fn new(typical: Duration, worst: Duration) -> Self {
        Self { typical, worst }
    }
    pub fn exact(d: Duration) -> Self {
        Self::new(d, d)
    }
    fn add(&mut self, other: Estimate) {
        self.typical += other.typical;
        self.worst += other.worst;
    }
}

/// One line of the plan, compact (a plan of 100,000 instances holds
/// 700,000 of them): its text lives in the recorder's one `arena` string.
#[derive(Debug, Clone, Copy)]
struct Line {
    kind: Kind,
    /// Nesting depth: 0 for top level, +1 inside each shown `parallel`.
    depth: u32,
    /// `arena[at..at + len]`.
    at: u32,
    len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// A numbered step and its bound (nanoseconds; 0 = none shown).
    Step {
        number: u32,
        worst_ns: u64,
    },
    /// A `parallel` group header.
    Group {
        items: u32,
        limit: u32,
    },
    Note,
}

enum Frame {
    Seq(Estimate),
    /// `shown`: a group of one item, or one at a time, reads as plain sequence.
    Group {
        limit: usize,
        branches: Vec<Estimate>,
        shown: bool,
    },
}

struct State {
    lines: Vec<Line>,
    arena: String,
    stack: Vec<Frame>,
    steps: usize,
}

impl State {
    fn line(&mut self, kind: Kind, depth: usize, text: &str) -> Line {
        let at = self.arena.len() as u32;
        self.arena.push_str(text);
        Line {
            kind,
            depth: depth as u32,
            at,
            len: text.len() as u32,
        }
    }

    fn text(&self, l: &Line) -> &str {
        &self.arena[l.at as usize..(l.at + l.len) as usize]
    }

    fn is_note(&self, l: Option<&Line>, text: &str) -> bool {
        l.is_some_and(|l| l.kind == Kind::Note && self.text(l) == text)
    }
}

/// Collects steps during a dry run. `parallel` runs its items one after
/// another in a dry run (so numbering is stable), and the recorder schedules
/// their estimates onto `limit` lanes to get the wall time right.
pub struct Recorder {
    state: Mutex<State>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                lines: Vec::new(),
                arena: String::new(),
                stack: vec![Frame::Seq(Estimate::default())],
                steps: 0,
            }),
        }
    }

    fn depth(st: &State) -> usize {
        st.stack
            .iter()
            .filter(|f| matches!(f, Frame::Group { shown: true, .. }))
            .count()
    }

    pub fn step(&self, text: impl AsRef<str>, estimate: Estimate) {
        let mut st = self.state.lock().unwrap();
        st.steps += 1;
        let depth = Self::depth(&st);
        let kind = Kind::Step {
            number: st.steps as u32,
            worst_ns: estimate.worst.as_nanos().min(u64::MAX as u128) as u64,
        };
        let line = st.line(kind, depth, text.as_ref());
        st.lines.push(line);
        if let Some(Frame::Seq(e)) = st.stack.last_mut() {
            e.add(estimate);
        }
    }

    pub fn note(&self, text: impl AsRef<str>) {
        let mut st = self.state.lock().unwrap();
        let depth = Self::depth(&st);
        let line = st.line(Kind::Note, depth, text.as_ref());
        st.lines.push(line);
    }

    /// A note where `rollscript pause` would hold: not in a later branch
    /// of a parallel group (its first branch is the batch's start, the
    /// others run beside it), and not twice in a row.
    pub fn safe_point(&self, text: &str) {
        let mut st = self.state.lock().unwrap();
        let beside = st.stack.iter().any(
            |f| matches!(f, Frame::Group { shown: true, branches, .. } if !branches.is_empty()),
        );
        if beside || st.is_note(st.lines.last(), text) {
            return;
        }
        // At the start of a batch's first branch: before the batch's header.
        if let Some(&Line {
            kind: Kind::Group { .. },
            depth,
            ..
        }) = st.lines.last()
        {
            let at = st.lines.len() - 1;
            let before = at.checked_sub(1).map(|i| st.lines[i]);
            if !st.is_note(before.as_ref(), text) {
                let line = st.line(Kind::Note, depth as usize, text);
                st.lines.insert(at, line);
            }
            return;
        }
        let depth = Self::depth(&st);
        let line = st.line(Kind::Note, depth, text);
        st.lines.push(line);
    }

    pub fn begin_group(&self, items: usize, limit: usize) {
        let mut st = self.state.lock().unwrap();
        let depth = Self::depth(&st);
        let shown = items > 1 && limit > 1;
        if shown {
            let kind = Kind::Group {
                items: items as u32,
                limit: limit as u32,
            };
            let line = st.line(kind, depth, "");
            st.lines.push(line);
        }
        st.stack.push(Frame::Group {
            limit: limit.max(1),
            branches: Vec::new(),
            shown,
        });
    }

    pub fn begin_branch(&self) {
        self.state
            .lock()
            .unwrap()
            .stack
            .push(Frame::Seq(Estimate::default()));
    }

    pub fn end_branch(&self) {
        let mut st = self.state.lock().unwrap();
        if let Some(Frame::Seq(e)) = st.stack.pop() {
            if let Some(Frame::Group { branches, .. }) = st.stack.last_mut() {
                branches.push(e);
            }
        }
    }

    pub fn end_group(&self) {
        let mut st = self.state.lock().unwrap();
        if let Some(Frame::Group {
            limit, branches, ..
        }) = st.stack.pop()
        {
            let total = Estimate {
                typical: schedule(branches.iter().map(|b| b.typical), limit),
                worst: schedule(branches.iter().map(|b| b.worst), limit),
            };
            if let Some(Frame::Seq(e)) = st.stack.last_mut() {
                e.add(total);
            }
        }
    }

    /// In the innermost `parallel` group, how many earlier branches would
    /// still be running when the current one starts (branches go one after
    /// another in a dry run; live, up to `limit` run at once).
    pub fn concurrent_siblings(&self) -> usize {
        let st = self.state.lock().unwrap();
        for f in st.stack.iter().rev() {
            if let Frame::Group {
                limit, branches, ..
            } = f
            {
                return branches.len().min(limit.saturating_sub(1));
            }
        }
        0
    }

    /// Caps the innermost group's concurrency (the capacity guard lets at
    /// most `lanes` branches be out at once).
    pub fn cap_lanes(&self, lanes: usize) {
        let mut st = self.state.lock().unwrap();
        for f in st.stack.iter_mut().rev() {
            if let Frame::Group { limit, .. } = f {
                *limit = (*limit).min(lanes.max(1));
                return;
            }
        }
    }

    pub fn total(&self) -> Estimate {
        recorder_total(&self.state.lock().unwrap())
    }

    pub fn step_count(&self) -> usize {
        self.state.lock().unwrap().steps
    }
}

/// Wall time of running `jobs` in order on `lanes` workers, each job going to
/// the lane that frees up first (what `parallel` does).
fn schedule(jobs: impl Iterator<Item = Duration>, lanes: usize) -> Duration {
    let mut free_at = vec![Duration::ZERO; lanes.max(1)];
    for job in jobs {
        let lane = free_at.iter_mut().min().expect("at least one lane");
        *lane += job;
    }
    free_at.into_iter().max().unwrap_or_default()
}

/// Renders the plan as `rollscript plan` prints it.
pub fn render(header: &str, recorder: &Recorder, assumptions: &[String]) -> String {
    let mut out = Vec::new();
    write(&mut out, header, recorder, assumptions).expect("writing to memory");
    String::from_utf8(out).expect("the plan is UTF-8")
}

/// Writes the plan to `out` line by line, from the recorder's own lines
/// (a plan of 100,000 instances is 600,000 lines: neither copied nor
/// rendered whole in memory first).
pub fn write(
    out: &mut impl std::io::Write,
    header: &str,
    recorder: &Recorder,
    assumptions: &[String],
) -> std::io::Result<()> {
    writeln!(out, "{header}")?;
    let st = recorder.state.lock().unwrap();
    let width = st.steps.to_string().len();
    // Most steps share a few bounds: each is formatted once, not per line.
    let mut bound = (0, String::new());
    // One buffer for every line: 700,000 lines at 100,000 instances.
    use std::fmt::Write as _;
    let mut buf = String::with_capacity(256);
    for line in &st.lines {
        buf.clear();
        for _ in 0..line.depth {
            buf.push_str("   ");
        }
        match line.kind {
            Kind::Step { number, worst_ns } => {
                let text = st.text(line);
                let _ = write!(buf, "{number:>width$}. ");
                buf.push_str(text);
                // Providers may state the bound themselves.
                if worst_ns > 0 && !text.contains("(≤") {
                    if bound.0 != worst_ns {
                        bound = (worst_ns, format_duration(Duration::from_nanos(worst_ns)));
                    }
                    buf.push_str(" (≤ ");
                    buf.push_str(&bound.1);
                    buf.push(')');
                }
            }
            Kind::Group { items, limit } => {
                let _ = write!(
                    buf,
                    "{:>width$}  parallel: {items} item{}, up to {limit} at once",
                    "",
                    if items == 1 { "" } else { "s" },
                );
            }
            Kind::Note => {
                buf.extend(std::iter::repeat_n(' ', width));
                buf.push_str("  # ");
                buf.push_str(st.text(line));
            }
        }
        buf.push('\n');
        out.write_all(buf.as_bytes())?;
    }
    if st.lines.is_empty() {
        writeln!(out, "(no steps: the script changes nothing)")?;
    }
    let (steps, total) = (st.steps, recorder_total(&st));
    drop(st);
    writeln!(
        out,
        "\n{steps} steps. Estimated duration: typical {}, worst case {}.",
        format_duration_long(total.typical),
        format_duration_long(total.worst)
    )?;
    if !assumptions.is_empty() {
        writeln!(out, "Assumptions:")?;
        for a in assumptions {
            writeln!(out, "  - {a}")?;
        }
    }
    Ok(())
}

fn recorder_total(st: &State) -> Estimate {
    match st.stack.first() {
        Some(Frame::Seq(e)) => *e,
        _ => Estimate::default(),
    }
}

/// `1h 02m 05s`, `4m 10s`, `12s`: totals read better in mixed units.
pub fn format_duration_long(d: Duration) -> String {
    let secs = d.as_secs_f64().round() as u64;
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else if d < Duration::from_secs(1) && d > Duration::ZERO {
        format!("{}ms", d.as_millis())
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn parallel_estimates_use_lanes() {
        let r = Recorder::new();
        r.step("before", Estimate::exact(s(1)));
        r.begin_group(3, 2);
        for d in [10, 10, 10] {
            r.begin_branch();
            r.step("work", Estimate::exact(s(d)));
            r.end_branch();
        }
        r.end_group();
        // 3 jobs of 10s on 2 lanes: 20s, plus the 1s before.
        assert_eq!(r.total(), Estimate::exact(s(21)));
        assert_eq!(r.step_count(), 4);
    }

    #[test]
    fn schedule_is_list_scheduling_in_order() {
        assert_eq!(schedule([s(5), s(1), s(1), s(1)].into_iter(), 2), s(5));
        assert_eq!(schedule([s(5), s(1)].into_iter(), 1), s(6));
        assert_eq!(schedule(std::iter::empty(), 3), s(0));
    }

    #[test]
    fn long_durations_read_in_mixed_units() {
        assert_eq!(format_duration_long(s(3725)), "1h 02m 05s");
        assert_eq!(format_duration_long(s(250)), "4m 10s");
        assert_eq!(format_duration_long(s(12)), "12s");
    }
}
