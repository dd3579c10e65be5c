//! Kubernetes resource quantities (`100m`, `2`, `128Mi`, `1G`, `1e3`), read
//! as integers: CPU in millicores (`milli`), memory in bytes (`units`).
//! Written by hand: k8s-openapi keeps a `Quantity` as its string, and no
//! well-kept crate parses it.

/// The value of `text` times 1000 (milli-units), rounded up as Kubernetes
/// rounds requests; `None` when it is not a quantity.
pub fn milli(text: &str) -> Option<i128> {
    scaled(text, 3)
}

/// The value of `text` in whole units (bytes for memory), rounded up.
pub fn units(text: &str) -> Option<i128> {
    scaled(text, 0)
}

/// `text` × 10^`extra`, rounded up.
fn scaled(text: &str, extra: i32) -> Option<i128> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() || number == "+" || number == "-" {
        return None;
    }
    let (negative, number) = match number.strip_prefix('-') {
        Some(n) => (true, n),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if !whole.chars().all(|c| c.is_ascii_digit()) || !fraction.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    // The number as an integer and a power of ten: 1.5 = 15 × 10^-1.
    let digits = format!("{whole}{fraction}");
    let mantissa: i128 = digits.parse().ok()?;
    let mut exp10 = -(fraction.len() as i32) + extra;
    let mut exp2 = 0;
    match suffix {
        "" => {}
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        s if s.starts_with(['e', 'E']) => exp10 += s[1..].parse::<i32>().ok()?,
        _ => return None,
    }
    let mut value = mantissa.checked_mul(1i128.checked_shl(exp2 as u32)?)?;
    if exp10 >= 0 {
        value = value.checked_mul(10i128.checked_pow(exp10 as u32)?)?;
    } else {
        let divisor = 10i128.checked_pow((-exp10) as u32)?;
        value = (value + divisor - 1) / divisor;
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_forms() {
        assert_eq!(milli("100m"), Some(100));
        assert_eq!(milli("2"), Some(2000));
        assert_eq!(milli("0.5"), Some(500));
        assert_eq!(milli("1.5k"), Some(1_500_000));
        assert_eq!(units("128Mi"), Some(128 << 20));
        assert_eq!(units("1G"), Some(1_000_000_000));
        assert_eq!(units("1e3"), Some(1000));
        assert_eq!(units("1.5Gi"), Some(3 << 29));
        assert_eq!(units("1m"), Some(1), "rounded up");
        assert_eq!(units("x"), None);
        assert_eq!(units("10Qi"), None);
        assert_eq!(units(""), None);
    }
}
