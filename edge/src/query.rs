//! URL query strings, read one way for every route and protocol.

/// The first value of `name` in `query`, decoded.
pub fn param(query: Option<&str>, name: &str) -> Option<String> {
    param_of(query, &[name])
}

/// The first value of any of `names` in `query` (whichever comes first),
/// decoded.
pub fn param_of(query: Option<&str>, names: &[&str]) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| names.contains(&k.as_ref()))
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_value_decoded() {
        let q = Some("a=1&token=x%20y&access_token=z&token=w");
        assert_eq!(param(q, "token").as_deref(), Some("x y"));
        assert_eq!(param_of(q, &["access_token", "token"]).as_deref(), Some("x y"), "query order wins");
        assert_eq!(param(q, "missing"), None);
        assert_eq!(param(None, "a"), None);
    }
}
