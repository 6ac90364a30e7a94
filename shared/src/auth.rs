//! JWT authentication. HS256 only (pinned), `exp` required, `nbf` honoured,
//! a small leeway. Claims follow the NestJS module: the user id in `id` (or
//! `sub`), roles in `roles` (array) or `role` (string).

use crate::config::Secret;
use crate::ids::UserId;
use crate::v1::error::ErrorCode;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};

/// Who is calling, as proven by the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
    pub roles: Vec<String>,
    /// Display name from `name` or `username`, used for typing indicators.
    pub name: Option<String>,
}

impl Identity {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
    #[error("token does not name a valid user id")]
    BadSubject,
}

impl AuthError {
    /// Stable wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Missing => ErrorCode::MissingToken,
            AuthError::Expired => ErrorCode::TokenExpired,
            AuthError::Invalid => ErrorCode::InvalidToken,
            AuthError::BadSubject => ErrorCode::InvalidUserId,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    roles: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Verifies (and, for dev tooling and tests, issues) tokens.
#[derive(Clone)]
pub struct Jwt {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl Jwt {
    pub fn new(secret: &Secret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp"]);
        Jwt {
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        })?;
        let c = data.claims;
        let raw = c.id.or(c.sub).ok_or(AuthError::BadSubject)?;
        let user: UserId = raw.parse().map_err(|_| AuthError::BadSubject)?;
        let roles = match c.roles.or(c.role) {
            None => vec![],
            Some(OneOrMany::One(r)) => vec![r],
            Some(OneOrMany::Many(v)) => v,
        };
        Ok(Identity { user, roles, name: c.name.or(c.username) })
    }

    /// Signs a token for `who`, valid for `ttl_secs`.
    pub fn issue(&self, who: &Identity, ttl_secs: u64) -> String {
        let now = now_secs();
        let claims = Claims {
            id: Some(who.user.hex()),
            sub: Some(who.user.hex()),
            roles: Some(OneOrMany::Many(who.roles.clone())),
            role: None,
            name: who.name.clone(),
            username: None,
            exp: now + ttl_secs,
            nbf: None,
            iat: Some(now),
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).unwrap_or_default()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::oid::ObjectId;

    fn jwt() -> Jwt {
        Jwt::new(&Secret::new("test-secret-0123456789"))
    }

    fn who() -> Identity {
        Identity { user: UserId(ObjectId::new()), roles: vec!["Admin".into()], name: Some("Ann".into()) }
    }

    #[test]
    fn round_trip() {
        let j = jwt();
        let w = who();
        assert_eq!(j.verify(&j.issue(&w, 60)).unwrap(), w);
    }

    #[test]
    fn wrong_secret_and_garbage_are_invalid() {
        let other = Jwt::new(&Secret::new("another-secret-0123456789"));
        assert_eq!(jwt().verify(&other.issue(&who(), 60)), Err(AuthError::Invalid));
        assert_eq!(jwt().verify("a.b.c"), Err(AuthError::Invalid));
        assert_eq!(jwt().verify(""), Err(AuthError::Missing));
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64(format!(r#"{{"id":"{}","exp":9999999999}}"#, ObjectId::new().to_hex()).as_bytes());
        assert_eq!(jwt().verify(&format!("{header}.{body}.")), Err(AuthError::Invalid));
    }

    #[test]
    fn role_string_and_sub_claims() {
        let j = jwt();
        let uid = ObjectId::new().to_hex();
        let claims = serde_json::json!({"sub": uid, "role": "Supervisor", "exp": now_secs() + 60});
        let t = encode(&Header::new(Algorithm::HS256), &claims, &j.encoding).unwrap();
        let id = j.verify(&t).unwrap();
        assert_eq!(id.user.hex(), uid);
        assert_eq!(id.roles, vec!["Supervisor".to_string()]);
    }

    #[test]
    fn expired_and_missing_exp() {
        let j = jwt();
        let uid = ObjectId::new().to_hex();
        let expired = serde_json::json!({"id": uid, "exp": now_secs() - 3600});
        let t = encode(&Header::new(Algorithm::HS256), &expired, &j.encoding).unwrap();
        assert_eq!(j.verify(&t), Err(AuthError::Expired));
        let no_exp = serde_json::json!({"id": uid});
        let t = encode(&Header::new(Algorithm::HS256), &no_exp, &j.encoding).unwrap();
        assert_eq!(j.verify(&t), Err(AuthError::Invalid));
        let bad_id = serde_json::json!({"id": "alice", "exp": now_secs() + 60});
        let t = encode(&Header::new(Algorithm::HS256), &bad_id, &j.encoding).unwrap();
        assert_eq!(j.verify(&t), Err(AuthError::BadSubject));
    }
}
