//! `show stat`: the CSV rows of a backend's servers, and HAProxy's status
//! words reduced to what rollscript acts on ([`Status`], [`MemberState`]).

use std::collections::HashMap;

use crate::primitives::MemberState;

/// One server's row of `show stat`, the fields rollscript reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct ServerStat {
    pub(super) backend: String,
    pub(super) server: String,
    /// `UP`, `UP 1/2`, `DOWN`, `DOWN 1/2`, `DRAIN`, `MAINT`, `NOLB`, `no check`, …
    pub(super) status: String,
    /// `127.0.0.1:4001`
    pub(super) addr: String,
    pub(super) sessions: u64,
    pub(super) queue: u64,
    pub(super) total: u64,
    pub(super) weight: u64,
    pub(super) http_2xx: u64,
    pub(super) http_4xx: u64,
    pub(super) http_5xx: u64,
    pub(super) response_ms: u64,
    pub(super) connect_errors: u64,
    pub(super) response_errors: u64,
    /// `L7OK`, `L4CON`, `L7STS`; `* ` in front while a check runs.
    pub(super) check_status: String,
    pub(super) check_code: String,
    /// `Layer4 connection problem`
    pub(super) check_desc: String,
    /// `Connection refused`, or what the check got back.
    pub(super) last_chk: String,
}

impl ServerStat {
    /// A check is under way: its fields show the half-done attempt.
    pub(super) fn check_running(&self) -> bool {
        self.check_status.starts_with("* ")
    }

    pub(super) fn check_failed(&self) -> bool {
        let s = self.check_status.trim_start_matches("* ");
        !(s.is_empty() || s.starts_with("INI") || s == "UNK" || s.contains("OK"))
    }

    /// `Layer4 connection problem (L4CON: Connection refused)`.
    pub(super) fn check_text(&self) -> String {
        let status = self.check_status.trim_start_matches("* ");
        if status.is_empty() {
            return "no check has run".into();
        }
        let mut detail = status.to_string();
        if !self.check_code.is_empty() {
            detail.push_str(&format!(" {}", self.check_code));
        }
        if !self.last_chk.is_empty() {
            detail.push_str(&format!(": {}", self.last_chk));
        }
        if self.check_desc.is_empty() {
            detail
        } else {
            format!("{} ({detail})", self.check_desc)
        }
    }
}

/// Server rows of `show stat` CSV; `Err(reply)` when the reply is not CSV
/// (HAProxy's refusal, e.g. `No such proxy.`).
pub(super) fn parse_show_stat(text: &str) -> Result<Vec<ServerStat>, String> {
    let mut lines = text.lines();
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .ok_or_else(|| text.trim().to_string())?;
    let names = split_csv(header);
    let col = |name: &str| names.iter().position(|n| n == name);
    let (pxname, svname, kind) = match (col("pxname"), col("svname"), col("type")) {
        (Some(p), Some(s), Some(t)) => (p, s, t),
        _ => return Err(format!("unexpected `show stat` header: {header}")),
    };
    let idx: HashMap<&str, usize> = [
        "status",
        "addr",
        "scur",
        "qcur",
        "stot",
        "weight",
        "hrsp_2xx",
        "hrsp_4xx",
        "hrsp_5xx",
        "rtime",
        "econ",
        "eresp",
        "check_status",
        "check_code",
        "check_desc",
        "last_chk",
    ]
    .into_iter()
    .filter_map(|n| col(n).map(|i| (n, i)))
    .collect();
    let mut rows = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let f = split_csv(line);
        let get = |name: &str| -> String {
            idx.get(name)
                .and_then(|&i| f.get(i))
                .cloned()
                .unwrap_or_default()
        };
        let num = |name: &str| get(name).parse::<u64>().unwrap_or(0);
        // type 2 = server (0 frontend, 1 backend, 3 listener).
        if f.get(kind).map(String::as_str) != Some("2") {
            continue;
        }
        rows.push(ServerStat {
            backend: f.get(pxname).cloned().unwrap_or_default(),
            server: f.get(svname).cloned().unwrap_or_default(),
            status: get("status"),
            addr: get("addr"),
            sessions: num("scur"),
            queue: num("qcur"),
            total: num("stot"),
            weight: num("weight"),
            http_2xx: num("hrsp_2xx"),
            http_4xx: num("hrsp_4xx"),
            http_5xx: num("hrsp_5xx"),
            response_ms: num("rtime"),
            connect_errors: num("econ"),
            response_errors: num("eresp"),
            check_status: get("check_status"),
            check_code: get("check_code"),
            check_desc: get("check_desc"),
            last_chk: get("last_chk"),
        });
    }
    Ok(rows)
}

/// HAProxy quotes a CSV field (`"…"`, `""` for a quote) when it holds a comma.
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

/// The status words of `show stat`, reduced to what rollscript acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    /// `UP`, `no check`: full health.
    Up,
    /// `UP 1/2`: up, but one failed check from DOWN (also right after `ready`).
    Falling,
    /// `DOWN 1/2`: checks passing, not yet `rise` of them.
    Rising,
    Down,
    Drain,
    Maint,
    Other,
}

impl Status {
    pub(super) fn of(s: &str) -> Self {
        let words: Vec<&str> = s.split_whitespace().collect();
        match words.as_slice() {
            ["UP"] | ["no", "check"] | ["UP", "(agent)"] => Self::Up,
            ["UP", n] if n.contains('/') => Self::Falling,
            ["DOWN", n] if n.contains('/') => Self::Rising,
            ["DOWN", ..] => Self::Down,
            ["DRAIN", ..] | ["NOLB", ..] => Self::Drain,
            ["MAINT", ..] => Self::Maint,
            _ => Self::Other,
        }
    }
}

/// `UP`-ish and `no check` servers get new sessions; DRAIN/NOLB/MAINT/DOWN do not.
pub(super) fn takes_new_traffic(status: &str) -> bool {
    matches!(Status::of(status), Status::Up | Status::Falling)
}

pub(super) fn member_state(status: &str) -> MemberState {
    match Status::of(status) {
        Status::Up | Status::Falling => MemberState::InService,
        Status::Rising => MemberState::Starting,
        Status::Down => MemberState::Unhealthy,
        Status::Drain => MemberState::Draining,
        Status::Maint => MemberState::OutOfService,
        Status::Other => MemberState::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo
be1,web-1,0,0,2,3,,17,0,0,,0,,1,0,0,0,UP,7,1,0,1,1,1,1,,1,3,1,,0,,2,0,,0,L7OK,200,2,0,15,0,1,1,0,,,,0,0,0,,,,,-1,,,0,0,12,0,,,,Layer7 check passed,,2,2,3,,,,127.0.0.1:18081,,http,
be1,web-2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,1,1,1,1,,1,3,2,,0,,2,0,,0,L4CON,,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,\"Connection refused, twice\",,0,0,0,0,,,,Layer4 connection problem,,2,2,0,,,,127.0.0.1:18082,,http,
be1,BACKEND,0,0,2,3,,17,0,0,,0,,1,0,0,0,UP,8,1,0,1,1,1,1,,1,3,0,,0,,1,0,,0,,,,0,15,0,1,1,0,,,,0,0,0,,,,,-1,,,0,0,12,0,,,,,,,,,,,,,,http,roundrobin
";

    #[test]
    fn show_stat_rows_are_servers_with_their_numbers() {
        let rows = parse_show_stat(STAT).unwrap();
        assert_eq!(rows.len(), 2, "the BACKEND row is not a server");
        let web1 = &rows[0];
        assert_eq!(
            (
                web1.backend.as_str(),
                web1.server.as_str(),
                web1.status.as_str()
            ),
            ("be1", "web-1", "UP")
        );
        assert_eq!(web1.addr, "127.0.0.1:18081");
        assert_eq!((web1.sessions, web1.total, web1.weight), (2, 17, 7));
        assert_eq!((web1.http_2xx, web1.http_4xx, web1.http_5xx), (15, 1, 1));
        assert_eq!((web1.response_ms, web1.connect_errors), (12, 1));
        assert!(!web1.check_failed());
        let web2 = &rows[1];
        assert!(web2.check_failed());
        assert_eq!(
            web2.check_text(),
            "Layer4 connection problem (L4CON: Connection refused, twice)"
        );
    }

    #[test]
    fn a_refusal_is_not_csv() {
        assert_eq!(
            parse_show_stat("No such proxy.\n\n"),
            Err("No such proxy.".into())
        );
    }

    #[test]
    fn statuses_map_to_member_states() {
        for (status, state) in [
            ("UP", MemberState::InService),
            ("UP 1/2", MemberState::InService),
            ("no check", MemberState::InService),
            ("DOWN 1/2", MemberState::Starting),
            ("DOWN", MemberState::Unhealthy),
            ("DRAIN", MemberState::Draining),
            ("NOLB", MemberState::Draining),
            ("MAINT", MemberState::OutOfService),
            ("MAINT (via be/x)", MemberState::OutOfService),
        ] {
            assert_eq!(member_state(status), state, "{status}");
        }
        assert!(takes_new_traffic("UP 1/2"));
        assert!(!takes_new_traffic("DRAIN"));
    }
}

#[cfg(test)]
mod stat_properties {
    use super::parse_show_stat;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The `show stat` parser meets whatever a socket returns (truncated
        /// output, an error text, garbage) with an error, never a panic.
        #[test]
        fn arbitrary_replies_never_panic(text in "\\PC{0,600}") {
            let _ = parse_show_stat(&text);
        }

        /// Real-looking CSV with random fields and truncation never panics either.
        #[test]
        fn truncated_csv_never_panics(cut in 0usize..400, scur in 0u32..1000) {
            let full = format!(
                "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\n\
                 be,web-1,0,0,{scur},5,,100,0,0,,0,,0,0,0,0,UP,1\n"
            );
            let cut = cut.min(full.len());
            let _ = parse_show_stat(&full[..cut]);
        }
    }
}
