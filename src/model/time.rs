//! Timestamps as Kubernetes writes them (RFC 3339), in Unix seconds.

/// Unix seconds of an RFC 3339 time: `2024-05-01T12:34:56Z`, with an
/// optional fraction and a `Z` or `±HH:MM` offset (Go's RFC3339Nano, as
/// the EndpointSlice controller writes `last-change-trigger-time`). None
/// for anything else.
pub fn rfc3339_unix(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac = 0.0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        frac = format!("0.{}", &s[start..i]).parse().ok()?;
    }
    let offset = match s.get(i..)? {
        "Z" | "z" => 0,
        o if o.len() == 6 && matches!(&o[..1], "+" | "-") && &o[3..4] == ":" => {
            let sign = if &o[..1] == "-" { -1 } else { 1 };
            sign * (num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset) as f64 + frac)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Now, in Unix seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_timestamps() {
        assert_eq!(rfc3339_unix("1970-01-01T00:00:00Z"), Some(0.0));
        // `date -u -d 2024-05-01T12:34:56Z +%s`
        assert_eq!(rfc3339_unix("2024-05-01T12:34:56Z"), Some(1_714_566_896.0));
        assert_eq!(
            rfc3339_unix("2024-05-01T12:34:56.25Z"),
            Some(1_714_566_896.25)
        );
        assert_eq!(
            rfc3339_unix("2024-05-01T14:34:56+02:00"),
            Some(1_714_566_896.0)
        );
        assert_eq!(rfc3339_unix("2000-02-29T00:00:00Z"), Some(951_782_400.0));
        for bad in [
            "",
            "2024-05-01",
            "2024-05-01 12:34:56Z",
            "2024-13-01T12:34:56Z",
            "2024-05-01T12:34:56",
            "2024-05-01T12:34:56.Z",
            "2024-05-01T12:34:56+0200",
            "２024-05-01T12:34:56Z",
        ] {
            assert_eq!(rfc3339_unix(bad), None, "{bad}");
        }
    }
}
