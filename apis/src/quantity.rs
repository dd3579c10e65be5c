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
    // Every step checked: a quantity is client input, and one too large
    // for i128 is simply not a quantity here.
    let (decimal, exp2): (i32, u32) = match suffix {
        "" => (0, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        s if s.starts_with(['e', 'E']) => (s[1..].parse::<i32>().ok()?, 0),
        _ => return None,
    };
    let exp10 = extra
        .checked_sub(i32::try_from(fraction.len()).ok()?)?
        .checked_add(decimal)?;
    let mut value = mantissa.checked_mul(1i128.checked_shl(exp2)?)?;
    if exp10 >= 0 {
        value = value.checked_mul(10i128.checked_pow(u32::try_from(exp10).ok()?)?)?;
    } else {
        let divisor = 10i128.checked_pow(exp10.checked_neg()?.try_into().ok()?)?;
        // Rounded up, without overflowing on the way.
        value = value / divisor + i128::from(value % divisor != 0);
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
        // Too large or too small for the arithmetic: not a quantity, no panic.
        assert_eq!(milli("1e2147483647"), None);
        assert_eq!(units("1e-2147483648"), None);
        assert_eq!(units("1e-100"), None);
        assert_eq!(
            units("170141183460469231731687303715884105727m"),
            Some(170141183460469231731687303715884106)
        );
        assert_eq!(milli("-1"), Some(-1000));
    }
}
