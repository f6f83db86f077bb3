//! DNS cookie secrets (`dns_xdp_common::cookies`): read from the file the DNS server
//! takes its own from, so both compute the same server cookies.

use std::path::Path;

use anyhow::{Context as _, bail, ensure};
use dns_xdp_common::CookieSecrets;

/// Secrets a file may hold: the current one, then the previous one during a rotation.
pub const MAX_SECRETS: usize = 2;

/// The secrets in `text`: one per line, 32 hexadecimal digits (a 128-bit SipHash-2-4
/// key), either alone or as BIND writes them (`cookie-secret "…";`); blank lines and
/// comments (`#`, `//`) are skipped. The first is the one the server makes cookies
/// with, a second one is still accepted.
pub fn parse_secrets(text: &str) -> anyhow::Result<Vec<[u8; 16]>> {
    let mut secrets = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split(['#']).next().unwrap_or("");
        let line = line.split("//").next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let hex = line.strip_prefix("cookie-secret").map_or(line, |rest| {
            rest.trim().trim_end_matches(';').trim().trim_matches('"')
        });
        let secret = parse_hex(hex)
            .with_context(|| format!("line {}: {line:?} is not a cookie secret", number + 1))?;
        secrets.push(secret);
    }
    ensure!(!secrets.is_empty(), "no cookie secret in it");
    ensure!(
        secrets.len() <= MAX_SECRETS,
        "{} secrets: at most {MAX_SECRETS} (the current one, then the previous one)",
        secrets.len()
    );
    Ok(secrets)
}

fn parse_hex(hex: &str) -> anyhow::Result<[u8; 16]> {
    if hex.len() != 32 {
        bail!(
            "{} hexadecimal digits; a SipHash-2-4 secret has 32 (128 bits)",
            hex.len()
        );
    }
    let mut secret = [0u8; 16];
    for (byte, pair) in secret.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair)?;
        *byte =
            u8::from_str_radix(pair, 16).with_context(|| format!("{pair:?} is not hexadecimal"))?;
    }
    Ok(secret)
}

/// The secrets of the file at `path`.
pub fn read_secrets(path: &Path) -> anyhow::Result<Vec<[u8; 16]>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--cookie-secrets: reading {}", path.display()))?;
    parse_secrets(&text).with_context(|| format!("--cookie-secrets {}", path.display()))
}

/// The kernel form of `secrets`, with this host's TAI-to-UNIX offset.
pub fn kernel_secrets(secrets: &[[u8; 16]]) -> CookieSecrets {
    CookieSecrets::new(secrets, tai_to_unix_s())
}

/// Seconds to add to CLOCK_TAI for UNIX time (the kernel's clock for the timestamp
/// window is TAI, which NTP steps never move): -37 where the kernel was told the TAI
/// offset, 0 where it was not.
pub fn tai_to_unix_s() -> i32 {
    let read = |clock| {
        let mut time = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id and a timespec to write.
        unsafe { libc::clock_gettime(clock, &mut time) };
        time.tv_sec as f64 + time.tv_nsec as f64 / 1e9
    };
    let (tai, unix) = (read(libc::CLOCK_TAI), read(libc::CLOCK_REALTIME));
    (unix - tai).round() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_bare_or_as_bind_writes_them() {
        let text = "# rotated 2026-12-07\n\
                    cookie-secret \"0123456789abcdef0123456789ABCDEF\";\n\
                    \n\
                    00112233445566778899aabbccddeeff // previous\n";
        let secrets = parse_secrets(text).unwrap();
        assert_eq!(secrets.len(), 2);
        assert_eq!(secrets[0][..3], [0x01, 0x23, 0x45]);
        assert_eq!(secrets[0][15], 0xef);
        assert_eq!(secrets[1][15], 0xff);
    }

    #[test]
    fn bad_secrets_are_named() {
        let short = parse_secrets("0123").unwrap_err();
        assert!(format!("{short:#}").contains("line 1"), "{short:#}");
        assert!(format!("{short:#}").contains("32"), "{short:#}");
        let three = "00112233445566778899aabbccddeeff\n".repeat(3);
        assert!(format!("{:#}", parse_secrets(&three).unwrap_err()).contains("at most 2"));
        assert!(
            format!("{:#}", parse_secrets("# none\n").unwrap_err()).contains("no cookie secret")
        );
        let not_hex = parse_secrets("0123456789abcdef0123456789abcdeg").unwrap_err();
        assert!(
            format!("{not_hex:#}").contains("not hexadecimal"),
            "{not_hex:#}"
        );
    }

    #[test]
    fn the_tai_offset_is_whole_and_small() {
        let offset = tai_to_unix_s();
        assert!((-40..=0).contains(&offset), "{offset}");
    }
}
