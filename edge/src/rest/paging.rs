//! Query parameters `page`, `limit` and `before`, parsed with stable errors
//! (the module's defaults: page 1, limit 20 for lists and 50 for history).

use crate::error::ChatError;
use crate::query::param;
use natter_shared::store::PageBy;

pub const MAX_LIMIT: u64 = 100;

pub fn number(query: Option<&str>, name: &str, default: u64, min: u64, max: u64) -> Result<u64, ChatError> {
    match param(query, name) {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| ChatError::InvalidPayload(format!("{name} must be a number from {min} to {max}"))),
    }
}

/// `page` and `limit` of a list.
pub fn page_limit(query: Option<&str>, default_limit: u64) -> Result<(u64, u64), ChatError> {
    Ok((number(query, "page", 1, 1, 1_000_000)?, number(query, "limit", default_limit, 1, MAX_LIMIT)?))
}

/// History paging: `before=<seq>` wins over `page`.
pub fn history(query: Option<&str>) -> Result<(PageBy, u64, u64), ChatError> {
    let (page, limit) = page_limit(query, 50)?;
    if param(query, "before").is_some() {
        let before = number(query, "before", 0, 1, i64::MAX as u64)?;
        return Ok((PageBy::Before { before: before as i64, limit }, page, limit));
    }
    Ok((PageBy::Page { page, limit }, page, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        assert_eq!(page_limit(None, 20).unwrap(), (1, 20));
        assert_eq!(page_limit(Some("page=3&limit=10"), 20).unwrap(), (3, 10));
        assert!(page_limit(Some("page=0"), 20).is_err());
        assert!(page_limit(Some("limit=1000"), 20).is_err());
        assert!(page_limit(Some("page=x"), 20).is_err());
        assert!(matches!(history(Some("before=10&limit=5")).unwrap().0, PageBy::Before { before: 10, limit: 5 }));
        assert!(history(Some("before=-1")).is_err());
    }
}
