//! The validity dates of an X.509 certificate, read from its DER.
//!
//! Only the path to them is walked: `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE {
//! [0] version OPTIONAL, serialNumber, signature, issuer, validity SEQUENCE { notBefore,
//! notAfter }, … } … }`, each time a `UTCTime` (years 1950–2049) or a `GeneralizedTime`
//! (RFC 5280 §4.1.2.5: both in UTC, with seconds, ending in `Z`). Every length is checked
//! against what is left, so a damaged file gives an error, never a panic. rustls verifies
//! certificates during handshakes; this reader only learns their dates, for the start-up
//! check and the expiry gauge.

/// Why the dates could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed certificate: {0}")]
pub struct DerError(&'static str);

/// One DER element: its tag and contents; `rest` follows it.
struct Element<'a> {
    tag: u8,
    contents: &'a [u8],
    rest: &'a [u8],
}

fn element(input: &[u8]) -> Result<Element<'_>, DerError> {
    let (&tag, after_tag) = input.split_first().ok_or(DerError("truncated tag"))?;
    let (&first, mut after_len) = after_tag
        .split_first()
        .ok_or(DerError("truncated length"))?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || after_len.len() < octets {
            return Err(DerError("bad length"));
        }
        let mut len = 0usize;
        for &b in &after_len[..octets] {
            len = (len << 8) | usize::from(b);
        }
        after_len = &after_len[octets..];
        len
    };
    if after_len.len() < len {
        return Err(DerError("element longer than its container"));
    }
    Ok(Element {
        tag,
        contents: &after_len[..len],
        rest: &after_len[len..],
    })
}

const SEQUENCE: u8 = 0x30;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// `(notBefore, notAfter)` of a DER certificate, Unix seconds.
pub fn validity(cert: &[u8]) -> Result<(i64, i64), DerError> {
    let certificate = element(cert)?;
    if certificate.tag != SEQUENCE {
        return Err(DerError("not a SEQUENCE"));
    }
    let tbs = element(certificate.contents)?;
    if tbs.tag != SEQUENCE {
        return Err(DerError("tbsCertificate is not a SEQUENCE"));
    }
    let mut fields = tbs.contents;
    let first = element(fields)?;
    if first.tag == VERSION {
        fields = first.rest;
    }
    // serialNumber, signature, issuer
    for _ in 0..3 {
        fields = element(fields)?.rest;
    }
    let validity = element(fields)?;
    if validity.tag != SEQUENCE {
        return Err(DerError("validity is not a SEQUENCE"));
    }
    let not_before = element(validity.contents)?;
    let not_after = element(not_before.rest)?;
    Ok((time(&not_before)?, time(&not_after)?))
}

fn time(element: &Element<'_>) -> Result<i64, DerError> {
    let text = std::str::from_utf8(element.contents).map_err(|_| DerError("time not ASCII"))?;
    let text = text.strip_suffix('Z').ok_or(DerError("time not in UTC"))?;
    let (year, rest) = match element.tag {
        UTC_TIME if text.len() == 12 => {
            let yy = digits(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        GENERALIZED_TIME if text.len() == 14 => (digits(&text[..4])?, &text[4..]),
        _ => return Err(DerError("unsupported time format")),
    };
    let field = |i: usize| digits(&rest[i..i + 2]);
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(DerError("time out of range"));
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

fn digits(text: &str) -> Result<i64, DerError> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DerError("time has non-digits"));
    }
    text.parse().map_err(|_| DerError("time has non-digits"))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds as RFC 3339 (UTC), for messages.
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} s since 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_dates_rcgen_wrote() {
        for (from, until) in [
            ((1999, 12, 31), (2049, 12, 31)),
            ((2024, 2, 29), (2051, 1, 1)),
        ] {
            let mut params = rcgen::CertificateParams::new(vec!["node".to_owned()]).unwrap();
            params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
            params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            let (before, after) = validity(cert.der()).unwrap();
            assert_eq!(before, params.not_before.unix_timestamp());
            assert_eq!(after, params.not_after.unix_timestamp());
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["node".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        for cut in 0..der.len() {
            // A cut past the validity leaves the dates readable but the outer length wrong.
            assert!(validity(&der[..cut]).is_err(), "cut at {cut}");
        }
        assert!(validity(b"\x30\x84\xff\xff\xff\xff").is_err());
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }
}
