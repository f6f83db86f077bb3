//! `dig` (BIND 9's client, Debian's bind9-dnsutils) as the DNS cookie client: one UDP
//! query with a COOKIE option, and what came back, read from dig's text.

use std::{net::IpAddr, process::Stdio};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// What dig made of the COOKIE option of a response. It judges only the client half
/// (whether the server echoed the client cookie it sent); whether the server verified a
/// server cookie, only the server knows (for BIND: `servers::bind_queries`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieNote {
    /// Our client cookie came back, with a server cookie (`(good)`).
    Good,
    /// Our client cookie came back alone (`(echoed)`).
    Echoed,
    /// Another client cookie, or one too short (`(bad)`).
    Bad,
    /// No note.
    None,
}

/// The COOKIE option of a response: client cookie (8 bytes) then server cookie (8 to 32).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigCookie {
    /// The whole option, lower-case hex.
    pub hex: String,
    pub note: CookieNote,
}

impl DigCookie {
    /// The client cookie, 16 hex digits (fewer if the option is shorter).
    pub fn client(&self) -> &str {
        &self.hex[..self.hex.len().min(16)]
    }

    /// The server cookie in hex, empty if there is none.
    pub fn server(&self) -> &str {
        &self.hex[self.hex.len().min(16)..]
    }
}

/// One dig query's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigResult {
    /// The response's RCODE as dig names it (`NOERROR`, `REFUSED`, `BADCOOKIE`...);
    /// `None` when no response came.
    pub rcode: Option<String>,
    /// Why no response came: dig's communications error (`timed out`, `connection
    /// refused`).
    pub error: Option<String>,
    /// Records in the ANSWER section.
    pub answers: u16,
    /// The response had the TC flag (dig was told not to retry over TCP).
    pub truncated: bool,
    /// The response's COOKIE option.
    pub cookie: Option<DigCookie>,
}

impl DigResult {
    /// A response with NOERROR and at least one answer record.
    pub fn answered(&self) -> bool {
        self.rcode.as_deref() == Some("NOERROR") && self.answers > 0
    }
}

/// Asks `server`:53 for `name`'s A record with dig in `netns`: one try over UDP, waiting
/// 1 s, with a COOKIE option: a fresh client cookie, or `cookie` (hex: the client cookie,
/// and the server cookie to send back). TC and BADCOOKIE responses are reported, not
/// retried.
pub fn dig_cookie(
    netns: &Netns,
    server: IpAddr,
    name: &str,
    cookie: Option<&str>,
) -> anyhow::Result<DigResult> {
    let cookie = match cookie {
        Some(hex) => format!("+cookie={hex}"),
        None => "+cookie".to_owned(),
    };
    let output = netns
        .command("dig")
        .args([
            "+tries=1",
            "+time=1",
            "+notcp",
            "+ignore",
            "+nobadcookie",
            "+noadflag",
            &cookie,
            &format!("@{server}"),
            name,
            "A",
        ])
        .stdin(Stdio::null())
        .output()
        .context("running dig (bind9-dnsutils)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // 9: no reply; anything else but 0 is dig's own failure (usage, internal error).
    match output.status.code() {
        Some(0 | 9) => parse_dig(&stdout),
        _ => bail!(
            "dig failed ({}): {} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            stdout.trim()
        ),
    }
}

/// Reads dig's output (with its default comments): the header, flags and counts line,
/// the OPT pseudosection's COOKIE, or the communications error.
pub fn parse_dig(text: &str) -> anyhow::Result<DigResult> {
    let mut result = DigResult {
        rcode: None,
        error: None,
        answers: 0,
        truncated: false,
        cookie: None,
    };
    for line in text.lines() {
        if let Some(header) = line.strip_prefix(";; ->>HEADER<<-") {
            let status = header
                .split(',')
                .find_map(|field| field.trim().strip_prefix("status: "))
                .context("dig's header without a status")?;
            result.rcode = Some(status.to_owned());
        } else if let Some(flags) = line.strip_prefix(";; flags:") {
            let (flags, counts) = flags
                .split_once(';')
                .context("dig's flags without counts")?;
            result.truncated = flags.split_whitespace().any(|flag| flag == "tc");
            result.answers = counts
                .split(',')
                .find_map(|count| count.trim().strip_prefix("ANSWER: "))
                .context("dig's counts without ANSWER")?
                .parse()?;
        } else if let Some(cookie) = line.strip_prefix("; COOKIE: ") {
            let mut words = cookie.split_whitespace();
            let hex = words
                .next()
                .context("an empty COOKIE")?
                .to_ascii_lowercase();
            if !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                bail!("COOKIE {hex:?} is not hex");
            }
            let note = match words.next() {
                Some("(good)") => CookieNote::Good,
                Some("(echoed)") => CookieNote::Echoed,
                Some("(bad)") => CookieNote::Bad,
                _ => CookieNote::None,
            };
            result.cookie = Some(DigCookie { hex, note });
        } else if let Some(error) = line.strip_prefix(";; communications error to ") {
            let reason = error.split_once(": ").map_or(error, |(_, reason)| reason);
            result.error = Some(reason.trim().to_owned());
        }
    }
    if result.rcode.is_some() {
        result.error = None;
    } else if result.error.is_none() {
        bail!(
            "dig printed neither a response nor an error: {}",
            text.trim()
        );
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from dig 9.18.49 (Debian 12) against `servers::start_bind`.

    /// A fresh client cookie, answered with a server cookie.
    const FIRST: &str = "
; <<>> DiG 9.18.49-1~deb12u3-Debian <<>> +cookie +tries=1 +time=1 +notcp +noadflag @198.18.0.1 www.example.com A
; (1 server found)
;; global options: +cmd
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 8085
;; flags: qr aa rd; QUERY: 1, ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 1
;; WARNING: recursion requested but not available

;; OPT PSEUDOSECTION:
; EDNS: version: 0, flags:; udp: 1232
; COOKIE: f99d43744bf13eab010000006b173caf6f9ba4ae35258335 (good)
;; QUESTION SECTION:
;www.example.com.\t\tIN\tA

;; ANSWER SECTION:
www.example.com.\t300\tIN\tA\t198.18.0.80

;; Query time: 4 msec
;; SERVER: 198.18.0.1#53(198.18.0.1) (UDP)
;; WHEN: Mon Dec 07 23:09:35 UTC 2026
;; MSG SIZE  rcvd: 88
";

    /// `require-server-cookie yes`, a client cookie alone.
    const BADCOOKIE: &str = "
; <<>> DiG 9.18.49-1~deb12u3-Debian <<>> +tries=1 +time=1 +notcp +noadflag +ignore +nobadcookie @198.18.0.1 +cookie www.example.com A
; (1 server found)
;; global options: +cmd
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: BADCOOKIE, id: 63659
;; flags: qr rd; QUERY: 1, ANSWER: 0, AUTHORITY: 0, ADDITIONAL: 1
;; WARNING: recursion requested but not available

;; OPT PSEUDOSECTION:
; EDNS: version: 0, flags:; udp: 1232
; COOKIE: 641ddb8dd9a77807010000006b173ccad18b5ec708821c68 (good)
;; QUESTION SECTION:
;www.example.com.\t\tIN\tA

;; Query time: 0 msec
;; SERVER: 198.18.0.1#53(198.18.0.1) (UDP)
;; WHEN: Mon Dec 07 23:10:02 UTC 2026
;; MSG SIZE  rcvd: 72
";

    /// An answer larger than the 1232 bytes BIND sends over UDP, cookie sent back.
    const TRUNCATED: &str = "
; <<>> DiG 9.18.49-1~deb12u3-Debian <<>> +tries=1 +time=1 +notcp +noadflag +ignore +nobadcookie @198.18.0.1 +cookie=809632bf007f20e0010000006b173ccc2bf357e8126be66d big.example.com TXT
; (1 server found)
;; global options: +cmd
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 58605
;; flags: qr aa tc rd; QUERY: 1, ANSWER: 0, AUTHORITY: 0, ADDITIONAL: 1
;; WARNING: recursion requested but not available

;; OPT PSEUDOSECTION:
; EDNS: version: 0, flags:; udp: 1232
; COOKIE: 809632bf007f20e0010000006b173ccc2bf357e8126be66d (good)
;; QUESTION SECTION:
;big.example.com.\t\tIN\tTXT

;; Query time: 4 msec
;; SERVER: 198.18.0.1#53(198.18.0.1) (UDP)
;; WHEN: Mon Dec 07 23:10:04 UTC 2026
;; MSG SIZE  rcvd: 72
";

    /// `+nocookie`: no COOKIE option either way.
    const NO_COOKIE: &str = "
; <<>> DiG 9.18.49-1~deb12u3-Debian <<>> +tries=1 +time=1 +notcp +noadflag +ignore +nobadcookie @198.18.0.1 +nocookie www.example.com A
; (1 server found)
;; global options: +cmd
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 37647
;; flags: qr aa rd; QUERY: 1, ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 1
;; WARNING: recursion requested but not available

;; OPT PSEUDOSECTION:
; EDNS: version: 0, flags:; udp: 1232
;; QUESTION SECTION:
;www.example.com.\t\tIN\tA

;; ANSWER SECTION:
www.example.com.\t300\tIN\tA\t198.18.0.80

;; Query time: 0 msec
;; SERVER: 198.18.0.1#53(198.18.0.1) (UDP)
;; WHEN: Mon Dec 07 23:10:04 UTC 2026
;; MSG SIZE  rcvd: 60
";

    /// The query dropped (exit status 9).
    const TIMED_OUT: &str = ";; communications error to 198.18.0.1#53: timed out

; <<>> DiG 9.18.49-1~deb12u3-Debian <<>> +tries=1 +time=1 +notcp +noadflag +ignore +nobadcookie +cookie @198.18.0.1 www.example.com A
; (1 server found)
;; global options: +cmd
;; no servers could be reached
";

    /// No server on the port (exit status 9).
    const REFUSED: &str = ";; communications error to 198.18.0.1#53: connection refused

; <<>> DiG 9.18.49-1~deb12u3-Debian <<>> +tries=1 +time=1 +notcp +cookie @198.18.0.1 www.example.com A
; (1 server found)
;; global options: +cmd
;; no servers could be reached
";

    #[test]
    fn reads_an_answer_and_its_server_cookie() {
        let result = parse_dig(FIRST).unwrap();
        assert!(result.answered());
        assert_eq!(result.rcode.as_deref(), Some("NOERROR"));
        assert_eq!(result.answers, 1);
        assert!(!result.truncated);
        let cookie = result.cookie.unwrap();
        assert_eq!(cookie.note, CookieNote::Good);
        assert_eq!(cookie.hex.len(), 48);
        assert_eq!(cookie.client(), "f99d43744bf13eab");
        assert_eq!(cookie.server(), "010000006b173caf6f9ba4ae35258335");
    }

    #[test]
    fn reads_badcookie_and_truncation() {
        let bad = parse_dig(BADCOOKIE).unwrap();
        assert!(!bad.answered());
        assert_eq!(bad.rcode.as_deref(), Some("BADCOOKIE"));
        assert_eq!(bad.answers, 0);
        assert_eq!(bad.cookie.unwrap().server().len(), 32);

        let truncated = parse_dig(TRUNCATED).unwrap();
        assert!(truncated.truncated);
        assert!(!truncated.answered());
        assert_eq!(truncated.rcode.as_deref(), Some("NOERROR"));
        assert_eq!(
            truncated.cookie.unwrap().hex,
            "809632bf007f20e0010000006b173ccc2bf357e8126be66d"
        );
    }

    #[test]
    fn reads_a_response_without_a_cookie() {
        let result = parse_dig(NO_COOKIE).unwrap();
        assert!(result.answered());
        assert_eq!(result.cookie, None);
    }

    #[test]
    fn reads_no_response() {
        let dropped = parse_dig(TIMED_OUT).unwrap();
        assert_eq!(dropped.rcode, None);
        assert_eq!(dropped.error.as_deref(), Some("timed out"));
        assert!(!dropped.answered());
        assert_eq!(dropped.cookie, None);

        let refused = parse_dig(REFUSED).unwrap();
        assert_eq!(refused.error.as_deref(), Some("connection refused"));
    }

    #[test]
    fn refuses_what_is_not_dig_output() {
        assert!(parse_dig("").is_err());
        assert!(parse_dig("; COOKIE: zz (good)\n").is_err());
    }
}
