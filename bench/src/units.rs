//! How figures are written in the progress lines and the tables: counts with thousands
//! separators, milliseconds, MiB.

pub const MIB: f64 = 1024.0 * 1024.0;

pub fn fmt_count(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if x < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// Milliseconds, one decimal; "unanswered" for a command that got no reply in time.
pub fn fmt_ms(ms: f64) -> String {
    if ms.is_infinite() {
        "unanswered".into()
    } else {
        format!("{ms:.1} ms")
    }
}

pub fn fmt_mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}
