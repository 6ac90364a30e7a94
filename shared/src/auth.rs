//! JWT authentication. HS256 only (pinned), `exp` required, `nbf` honoured,
//! a small leeway; optionally bound to an audience and an issuer, and to a
//! longest lifetime. Claims follow the NestJS module: the user id in `id`
//! (or `sub`), roles in `roles` (array) or `role` (string).

use crate::config::JwtConfig;
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

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
    #[error("token does not name a valid user id")]
    BadSubject,
    #[error("token is valid for longer than the server allows")]
    TooLong,
}

impl AuthError {
    /// Stable wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Missing => ErrorCode::MissingToken,
            AuthError::Expired => ErrorCode::TokenExpired,
            AuthError::Invalid | AuthError::TooLong => ErrorCode::InvalidToken,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
}

/// Seconds of clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 5;

/// Verifies (and, for dev tooling and tests, issues) tokens.
#[derive(Clone)]
pub struct Jwt {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    audience: Option<String>,
    issuer: Option<String>,
    max_ttl: Option<u64>,
}

/// A verified token: who it proves, and until when (`exp`, Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub who: Identity,
    pub expires_at: u64,
}

impl Jwt {
    pub fn new(config: &JwtConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let mut required = vec!["exp"];
        match &config.audience {
            Some(a) => {
                validation.set_audience(&[a]);
                required.push("aud");
            }
            // Without a configured audience, a token's `aud` is not checked.
            None => validation.validate_aud = false,
        }
        if let Some(i) = &config.issuer {
            validation.set_issuer(&[i]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let key = config.secret.expose().as_bytes();
        Jwt {
            decoding: DecodingKey::from_secret(key),
            encoding: EncodingKey::from_secret(key),
            validation,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            max_ttl: config.max_ttl,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_token(token).map(|v| v.who)
    }

    /// Verifies `token` and says until when it holds: a connection it
    /// opened is closed then.
    pub fn verify_token(&self, token: &str) -> Result<Verified, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        })?;
        let c = data.claims;
        if let Some(max) = self.max_ttl {
            // From when it was issued, or from now for a token that claims
            // to be issued later: never valid for longer than `max`.
            let now = now_secs();
            let from = c.iat.unwrap_or(now).min(now);
            if c.exp > from.saturating_add(max).saturating_add(LEEWAY_SECS) {
                return Err(AuthError::TooLong);
            }
        }
        let expires_at = c.exp;
        let raw = c.id.or(c.sub).ok_or(AuthError::BadSubject)?;
        let user: UserId = raw.parse().map_err(|_| AuthError::BadSubject)?;
        let roles = match c.roles.or(c.role) {
            None => vec![],
            Some(OneOrMany::One(r)) => vec![r],
            Some(OneOrMany::Many(v)) => v,
        };
        Ok(Verified { who: Identity { user, roles, name: c.name.or(c.username) }, expires_at })
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
            aud: self.audience.clone().map(OneOrMany::One),
            iss: self.issuer.clone(),
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
        Jwt::new(&JwtConfig::with_secret("test-secret-0123456789-0123456789"))
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
        let other = Jwt::new(&JwtConfig::with_secret("another-secret-0123456789-0123456789"));
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

    fn sign(j: &Jwt, claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &j.encoding).unwrap()
    }

    #[test]
    fn audience_and_issuer_when_configured() {
        let cfg = JwtConfig {
            audience: Some("natter".into()),
            issuer: Some("https://id.example".into()),
            ..JwtConfig::with_secret("test-secret-0123456789-0123456789")
        };
        let j = Jwt::new(&cfg);
        let w = who();
        assert_eq!(j.verify(&j.issue(&w, 60)).unwrap(), w, "issued tokens carry the audience and issuer");
        let uid = ObjectId::new().to_hex();
        let exp = now_secs() + 60;
        let cases = [
            serde_json::json!({"id": uid, "exp": exp}),
            serde_json::json!({"id": uid, "exp": exp, "aud": "natter"}),
            serde_json::json!({"id": uid, "exp": exp, "iss": "https://id.example"}),
            serde_json::json!({"id": uid, "exp": exp, "aud": "other", "iss": "https://id.example"}),
            serde_json::json!({"id": uid, "exp": exp, "aud": "natter", "iss": "https://evil.example"}),
        ];
        for c in cases {
            assert_eq!(j.verify(&sign(&j, c.clone())), Err(AuthError::Invalid), "{c}");
        }
        let ok = serde_json::json!({"id": uid, "exp": exp, "aud": ["x", "natter"], "iss": "https://id.example"});
        assert_eq!(j.verify(&sign(&j, ok)).unwrap().user.hex(), uid);
        // Unconfigured, `aud` is not checked.
        let plain = jwt();
        let t = sign(&plain, serde_json::json!({"id": uid, "exp": exp, "aud": "anything"}));
        assert!(plain.verify(&t).is_ok());
    }

    #[test]
    fn lifetime_is_bounded_when_configured() {
        let cfg = JwtConfig { max_ttl: Some(3600), ..JwtConfig::with_secret("test-secret-0123456789-0123456789") };
        let j = Jwt::new(&cfg);
        let uid = ObjectId::new().to_hex();
        let now = now_secs();
        let v = j.verify_token(&sign(&j, serde_json::json!({"id": uid, "iat": now, "exp": now + 3600}))).unwrap();
        assert_eq!(v.expires_at, now + 3600);
        for c in [
            serde_json::json!({"id": uid, "iat": now, "exp": now + 7200}),
            serde_json::json!({"id": uid, "exp": now + 7200}),
            // Issued "later" does not stretch it.
            serde_json::json!({"id": uid, "iat": now + 5000, "exp": now + 7200}),
            serde_json::json!({"id": uid, "iat": now - 3000, "exp": now + 1000}),
        ] {
            assert_eq!(j.verify(&sign(&j, c.clone())), Err(AuthError::TooLong), "{c}");
        }
        assert_eq!(AuthError::TooLong.code(), ErrorCode::InvalidToken);
    }
}
