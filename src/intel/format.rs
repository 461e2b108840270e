//! Reading a feed's text into networks, in the formats of common lists.

use super::settings::FeedFormat;
use crate::wire::acl::{parse_cidr, CidrError, CidrSet};

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not UTF-8 text")]
    NotText,
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: CidrError },
    #[error("line {line}: not a JSON object: {reason}")]
    Json { line: usize, reason: String },
    #[error("more than {cap} entries")]
    TooMany { cap: usize },
}

/// The networks of `body`, at most `cap` of them. One bad line refuses the whole copy: a list silently
/// shortened would leave holes nobody notices, and the last good copy is still there.
pub fn parse(body: &[u8], format: FeedFormat, cap: usize) -> Result<CidrSet, FormatError> {
    let text = std::str::from_utf8(body).map_err(|_| FormatError::NotText)?;
    let comment = match format {
        FeedFormat::Plain => '#',
        FeedFormat::Spamhaus => ';',
        FeedFormat::SpamhausJson => return parse_json_lines(text, cap),
    };
    let mut set = CidrSet::default();
    for (idx, raw) in text.lines().enumerate() {
        let entry = raw.split(comment).next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let net = parse_cidr(entry).map_err(|reason| FormatError::Line { line: idx + 1, reason })?;
        set.insert(net, ());
        if set.len() > cap {
            return Err(FormatError::TooMany { cap });
        }
    }
    Ok(set)
}

/// One line of Spamhaus's JSON lists; only the network is read.
#[derive(serde::Deserialize)]
struct JsonEntry<'a> {
    #[serde(borrow)]
    cidr: Option<&'a str>,
}

fn parse_json_lines(text: &str, cap: usize) -> Result<CidrSet, FormatError> {
    let mut set = CidrSet::default();
    for (idx, raw) in text.lines().enumerate() {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let line = idx + 1;
        let e: JsonEntry = serde_json::from_str(raw).map_err(|e| FormatError::Json {
            line,
            reason: e.to_string(),
        })?;
        // The metadata line (`"type":"metadata"`) carries no network.
        let Some(cidr) = e.cidr else { continue };
        set.insert(
            parse_cidr(cidr).map_err(|reason| FormatError::Line { line, reason })?,
            (),
        );
        if set.len() > cap {
            return Err(FormatError::TooMany { cap });
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spamhaus_drop_lines_and_plain_comments() {
        let drop = b"; Spamhaus DROP List 2026/12/07\n; Last-Modified: Mon, 07 Dec 2026\n1.10.16.0/20 ; SBL256894\n2.56.192.0/22 ; SBL459831\n";
        let set = parse(drop, FeedFormat::Spamhaus, 10).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.contains("1.10.17.1".parse().unwrap()));
        let plain = b"# firehol\n192.0.2.0/24 # docs\n\n2001:db8::/32\n198.51.100.7\n";
        assert_eq!(parse(plain, FeedFormat::Plain, 10).unwrap().len(), 3);
    }

    #[test]
    fn spamhaus_json_lines_and_their_metadata_line() {
        let json = br#"{"cidr":"1.10.16.0/20","sblid":"SBL256894","rir":"apnic"}
{"cidr":"2a06:e480::/29","sblid":"SBL301771","rir":"ripencc"}
{"type":"metadata","timestamp":1796600000,"size":2,"records":2,"copyright":"(c) 2026 The Spamhaus Project SLU"}
"#;
        let set = parse(json, FeedFormat::SpamhausJson, 10).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.contains("2a06:e480::1".parse().unwrap()));
        let e = parse(b"{\"cidr\":\"1.10.16.0/20\"}\nnot json\n", FeedFormat::SpamhausJson, 10).unwrap_err();
        assert!(e.to_string().starts_with("line 2: not a JSON object"), "{e}");
        let e = parse(b"{\"cidr\":\"1.10.16.0/33\"}\n", FeedFormat::SpamhausJson, 10).unwrap_err();
        assert!(e.to_string().starts_with("line 1: prefix length `33`"), "{e}");
    }

    #[test]
    fn a_bad_line_or_too_many_entries_refuse_the_copy() {
        let e = parse(b"192.0.2.0/24\nexample.com\n", FeedFormat::Plain, 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 2: invalid IP address `example.com` in `example.com`"
        );
        let e = parse(b"192.0.2.1\n192.0.2.2\n192.0.2.3\n", FeedFormat::Plain, 2).unwrap_err();
        assert_eq!(e.to_string(), "more than 2 entries");
        assert!(matches!(
            parse(&[0xff, 0xfe], FeedFormat::Plain, 2),
            Err(FormatError::NotText)
        ));
    }
}
