//! Join tokens: Kubernetes' bootstrap tokens, in their format and where
//! Kubernetes keeps them, so that the habits (and `kubeadm token`-style
//! tooling) carry over. A token is `<id>.<secret>` (6 and 16 characters of
//! `[a-z0-9]`), kept as the Secret `kube-system/bootstrap-token-<id>` of
//! type `bootstrap.kubernetes.io/token`. Whoever presents it is
//! `system:bootstrap:<id>` in `system:bootstrappers`, until the token's
//! `expiration` or until the Secret is deleted (revoked).

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;

pub const NAMESPACE: &str = "kube-system";
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const SECRET_PREFIX: &str = "bootstrap-token-";
pub const GROUP: &str = "system:bootstrappers";
pub const USER_PREFIX: &str = "system:bootstrap:";

const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;

fn token_chars(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// `(id, secret)` of a token in the right shape.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    (token_chars(id, ID_LEN) && token_chars(secret, SECRET_LEN)).then_some((id, secret))
}

pub fn secret_name(id: &str) -> String {
    format!("{SECRET_PREFIX}{id}")
}

/// A new token from `random` (any source of random bytes; 22 are used).
pub fn generate(random: &mut dyn FnMut() -> u8) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| {
                // Rejection sampling: no bias towards the first letters.
                loop {
                    let b = random();
                    if (b as usize) < 252 {
                        return ALPHABET[b as usize % ALPHABET.len()] as char;
                    }
                }
            })
            .collect()
    };
    let id = pick(ID_LEN);
    let secret = pick(SECRET_LEN);
    format!("{id}.{secret}")
}

/// The Secret that makes `token` valid until `expires` (never, if `None`).
pub fn secret(token: &str, expires: Option<Timestamp>, description: &str) -> Option<Secret> {
    let (id, secret) = parse(token)?;
    let mut data: BTreeMap<String, ByteString> = BTreeMap::new();
    let mut put = |k: &str, v: &str| data.insert(k.into(), ByteString(v.as_bytes().to_vec()));
    put("token-id", id);
    put("token-secret", secret);
    put("usage-bootstrap-authentication", "true");
    put("usage-bootstrap-signing", "true");
    if let Some(at) = expires {
        put("expiration", &at.to_string());
    }
    if !description.is_empty() {
        put("description", description);
    }
    Some(Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(id)),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        type_: Some(SECRET_TYPE.into()),
        data: Some(data),
        ..Default::default()
    })
}

/// A Secret's field as text.
pub fn field<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    let value = secret.data.as_ref()?.get(key)?;
    std::str::from_utf8(&value.0).ok()
}

/// When the token expires, if it does (`None` for a malformed time too:
/// such a token is refused by `authenticate`).
pub fn expiration(secret: &Secret) -> Option<Timestamp> {
    field(secret, "expiration")?.parse().ok()
}

/// Equal in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The identity `id.secret` logs in as, if `stored` makes it valid at `now`:
/// the right type, the same secret, usable for authentication, not expired.
/// Returns (user, groups).
pub fn authenticate(
    stored: &Secret,
    id: &str,
    secret: &str,
    now: Timestamp,
) -> Option<(String, Vec<String>)> {
    if stored.type_.as_deref() != Some(SECRET_TYPE) {
        return None;
    }
    if field(stored, "token-id") != Some(id) {
        return None;
    }
    if !same(field(stored, "token-secret")?.as_bytes(), secret.as_bytes()) {
        return None;
    }
    if field(stored, "usage-bootstrap-authentication") != Some("true") {
        return None;
    }
    if let Some(text) = field(stored, "expiration") {
        match text.parse::<Timestamp>() {
            Ok(at) if at > now => {}
            _ => return None,
        }
    }
    let mut groups = vec![GROUP.to_string()];
    // Extra groups must stay under system:bootstrappers: (as Kubernetes).
    if let Some(extra) = field(stored, "auth-extra-groups") {
        groups.extend(
            extra
                .split(',')
                .map(str::trim)
                .filter(|g| g.starts_with("system:bootstrappers:"))
                .map(str::to_string),
        );
    }
    Some((format!("{USER_PREFIX}{id}"), groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_kubernetes_shape_and_expire() {
        let mut n = 0u8;
        let token = generate(&mut || {
            n = n.wrapping_add(37);
            n
        });
        let (id, secret) = parse(&token).expect("well formed");
        assert!(parse("abc.def").is_none());
        assert!(parse("ABCDEF.0123456789abcdef").is_none());
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let later: Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        let s = super::secret(&token, Some(later), "test").unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some(&*secret_name(id)));
        let (user, groups) = authenticate(&s, id, secret, now).unwrap();
        assert_eq!(user, format!("system:bootstrap:{id}"));
        assert_eq!(groups, [GROUP]);
        assert!(authenticate(&s, id, "0000000000000000", now).is_none());
        assert!(authenticate(&s, id, secret, later).is_none(), "expired");
    }
}
